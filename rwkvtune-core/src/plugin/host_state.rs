//! The per-store host state: the WASI context (stdout/stderr only, captured into our log), the
//! memory cap, and the `rwkvtune:plugin/host` imports (the run's tokenizer, logging).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::v0_1::{host, types};
use super::log::{LogLevel, LogRecord, LogSink};
use super::tokenizer::PluginTokenizer;

/// The name records are tagged with; becomes the plugin's own name once `init` returned it.
pub(crate) type Label = Arc<Mutex<String>>;

fn label_of(label: &Label) -> String {
    label.lock().map(|l| l.clone()).unwrap_or_default()
}

pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: MemoryCap,
    tokenizer: Arc<dyn PluginTokenizer>,
    log: LogSink,
    label: Label,
}

impl HostState {
    /// A sandbox with no filesystem (no preopens), no environment, no arguments, no network
    /// (sockets denied), and stdout/stderr as log lines. Clocks and random stay: WASI always
    /// offers them and guest runtimes (Rust's HashMap, CPython) need random.
    pub fn new(
        tokenizer: Arc<dyn PluginTokenizer>,
        log: LogSink,
        label: Label,
        memory_bytes: usize,
    ) -> Self {
        let out = |level| CaptureStdio {
            level,
            log: log.clone(),
            label: label.clone(),
        };
        let wasi = WasiCtxBuilder::new()
            .stdout(out(LogLevel::Info))
            .stderr(out(LogLevel::Warn))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryCap {
                max_bytes: memory_bytes,
                exceeded: false,
            },
            tokenizer,
            log,
            label,
        }
    }

    fn emit(&self, level: LogLevel, message: String) {
        (self.log)(&LogRecord {
            plugin: label_of(&self.label),
            level,
            message,
        });
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

impl host::Host for HostState {
    fn get_tokenizer_info(&mut self) -> types::TokenizerInfo {
        types::TokenizerInfo {
            vocab_size: u32::try_from(self.tokenizer.vocab_size()).unwrap_or(u32::MAX),
            eos_id: self.tokenizer.eos_id(),
            pad_id: self.tokenizer.pad_id(),
        }
    }

    fn tokenize(&mut self, texts: Vec<String>) -> Result<Vec<Vec<u32>>, String> {
        texts.iter().map(|t| self.tokenizer.encode(t)).collect()
    }

    fn detokenize(&mut self, ids: Vec<Vec<u32>>) -> Result<Vec<String>, String> {
        let vocab = self.tokenizer.vocab_size();
        ids.iter()
            .enumerate()
            .map(
                |(row, ids)| match ids.iter().find(|id| **id as usize >= vocab) {
                    Some(bad) => Err(format!(
                        "detokenize: row {row} has id {bad}, outside the vocabulary (size {vocab})"
                    )),
                    None => Ok(self.tokenizer.decode(ids)),
                },
            )
            .collect()
    }

    fn log(&mut self, level: types::LogLevel, message: String) {
        let level = match level {
            types::LogLevel::Debug => LogLevel::Debug,
            types::LogLevel::Info => LogLevel::Info,
            types::LogLevel::Warn => LogLevel::Warn,
            types::LogLevel::Error => LogLevel::Error,
        };
        self.emit(level, message);
    }
}

// ---------------------------------------------------------------------------------------------
// Memory cap
// ---------------------------------------------------------------------------------------------

/// Caps each linear memory; remembers whether the cap was hit so the trap that follows is
/// reported as out-of-memory rather than a generic trap.
pub(crate) struct MemoryCap {
    max_bytes: usize,
    pub exceeded: bool,
}

/// Tables only hold function references; a million is far beyond any real guest.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.exceeded = true;
            // An error (not `Ok(false)`) traps at once with a clear cause, instead of letting
            // the guest's allocator abort somewhere else.
            wasmtime::bail!(
                "memory limit exceeded: the plugin tried to grow a memory to {desired} bytes, the \
                 cap is {} bytes (limits.memory_mib)",
                self.max_bytes
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }

    fn tables(&self) -> usize {
        64
    }
}

// ---------------------------------------------------------------------------------------------
// stdout / stderr capture
// ---------------------------------------------------------------------------------------------

/// A partial line longer than this is flushed as is, so a plugin cannot grow host memory by
/// never printing a newline.
const MAX_LINE_BYTES: usize = 16 * 1024;

/// The WASI stdout/stderr of one plugin: complete lines become log records.
#[derive(Clone)]
struct CaptureStdio {
    level: LogLevel,
    log: LogSink,
    label: Label,
}

impl IsTerminal for CaptureStdio {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CaptureStdio {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineStream {
            sink: self.clone(),
            pending: Vec::new(),
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASIp3 asks for this, and the linker offers p2 alone: a closed pipe suffices.
        Box::new(wasmtime_wasi::p2::pipe::MemoryOutputPipe::new(0))
    }
}

/// Buffers bytes until a newline, then emits the line.
struct LineStream {
    sink: CaptureStdio,
    pending: Vec<u8>,
}

impl LineStream {
    fn emit(&mut self, upto: usize) {
        let line: Vec<u8> = self.pending.drain(..upto).collect();
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        (self.sink.log)(&LogRecord {
            plugin: label_of(&self.sink.label),
            level: self.sink.level,
            message: text.to_string(),
        });
    }
}

impl OutputStream for LineStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.pending.extend_from_slice(&bytes);
        while let Some(nl) = self.pending.iter().position(|b| *b == b'\n') {
            self.emit(nl + 1);
        }
        if self.pending.len() > MAX_LINE_BYTES {
            self.emit(self.pending.len());
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_LINE_BYTES)
    }
}

impl Drop for LineStream {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit(self.pending.len());
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineStream {
    async fn ready(&mut self) {}
}
