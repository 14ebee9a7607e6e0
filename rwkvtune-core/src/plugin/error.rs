//! Plugin errors: what went wrong, in which plugin (file or name), and what to do about it.

use std::path::PathBuf;

/// Why one plugin call (or one sample of it) failed; the key of the per-plugin failure counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// The guest trapped: a panic, `unreachable`, a stack overflow, an uncaught exception.
    Trap,
    /// The per-call wall-clock limit (epoch interruption) ran out.
    Timeout,
    /// The per-call fuel budget ran out.
    OutOfFuel,
    /// The guest tried to grow its memory past the cap.
    OutOfMemory,
    /// The plugin returned `err(message)` (or a native closure returned `Err`).
    PluginError,
    /// The result has the wrong number of entries for the batch.
    WrongCount,
    /// A reward is NaN or infinite.
    InvalidValue,
    /// A post-processor's output has the wrong shape, a mask value other than 0/1, or ids outside
    /// the vocabulary.
    InvalidOutput,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::Timeout => "timeout",
            FailureKind::OutOfFuel => "out_of_fuel",
            FailureKind::OutOfMemory => "out_of_memory",
            FailureKind::PluginError => "plugin_error",
            FailureKind::WrongCount => "wrong_count",
            FailureKind::InvalidValue => "invalid_value",
            FailureKind::InvalidOutput => "invalid_output",
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    // --- loading -------------------------------------------------------------------------------
    /// The `.wasm` file could not be read.
    #[error("plugin {path}: cannot read the file: {source}; check the path passed as a plugin")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The bytes are not a component wasmtime can compile.
    #[error(
        "plugin {path}: not a loadable WebAssembly component: {reason}; build Rust plugins with \
         `cargo build --release --target wasm32-wasip2` (see plugins/README.md)"
    )]
    NotAComponent { path: PathBuf, reason: String },
    /// The component does not export the interface this role needs, or exports an interface
    /// version this build does not know.
    #[error("plugin {path}: {reason}")]
    Incompatible { path: PathBuf, reason: String },
    /// The component imports something the sandbox does not offer (e.g. `wasi:http`).
    #[error(
        "plugin {path}: cannot link: {reason}; plugins may import only rwkvtune:plugin/host and \
         WASI 0.2 cli/io/clocks/random/filesystem/sockets (all sandboxed)"
    )]
    Link { path: PathBuf, reason: String },
    /// `init(config)` failed (a plugin error or a trap).
    #[error("plugin {plugin}: init failed: {message}; check the plugin's JSON config")]
    Init { plugin: String, message: String },

    // --- calls ---------------------------------------------------------------------------------
    /// A call failed and the plugin's policy is `on_error = abort` (or it failed too many times
    /// in a row).
    #[error("plugin {plugin}: call {call} failed ({kind}){}: {message}", sample_suffix(*.sample))]
    Call {
        plugin: String,
        call: u64,
        kind: FailureKind,
        sample: Option<usize>,
        message: String,
    },
    /// The batch handed to a plugin is inconsistent (a trainer bug, not a plugin bug).
    #[error("plugin {plugin}: invalid input batch: {reason}")]
    BadBatch { plugin: String, reason: String },

    // --- set-up --------------------------------------------------------------------------------
    /// The compiled-component cache could not be used.
    #[error("plugin cache {path}: {source}; pass another cache directory or disable the cache")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A `PluginLimits` / `PluginSpec` / reward-weights setting is invalid.
    #[error("invalid plugin settings: {0}")]
    Config(String),
    /// wasmtime could not build its engine or linker.
    #[error("plugin runtime: {0}")]
    Runtime(String),
}

fn sample_suffix(sample: Option<usize>) -> String {
    sample
        .map(|i| format!(" at sample {i}"))
        .unwrap_or_default()
}
