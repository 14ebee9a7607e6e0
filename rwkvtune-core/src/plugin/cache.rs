//! On-disk cache of compiled components. Compiling a Python plugin takes 15–30 s; loading its
//! cached machine code takes milliseconds. Keyed by the SHA-256 of the `.wasm` bytes and of
//! wasmtime's compatibility hash (wasmtime version + engine settings such as fuel), so a new
//! wasmtime or another engine configuration never reads a stale entry.

use std::hash::Hasher;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

use super::error::PluginError;

/// Environment variable overriding the default cache directory.
pub const CACHE_DIR_ENV: &str = "RWKVTUNE_PLUGIN_CACHE";

/// Where a component came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Deserialised from the cache.
    Hit,
    /// Compiled now (and stored, when a cache is configured).
    Compiled,
}

#[derive(Clone, Debug)]
pub(crate) struct ComponentCache {
    dir: PathBuf,
}

/// `$RWKVTUNE_PLUGIN_CACHE`, else `$XDG_CACHE_HOME/rwkvtune/plugins`, else
/// `$HOME/.cache/rwkvtune/plugins`; `None` when none of them is set.
pub fn default_cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var(CACHE_DIR_ENV)
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("rwkvtune/plugins")))
        .or_else(|| var("HOME").map(|d| d.join(".cache/rwkvtune/plugins")))
}

/// Feeds `Hash` output into SHA-256 (stable across Rust versions, unlike `DefaultHasher`).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        0 // unused: the digest is read with `finalize`
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ComponentCache {
    pub fn new(dir: PathBuf) -> Self {
        ComponentCache { dir }
    }

    /// The cache file name for these bytes under this engine.
    pub fn key(engine: &Engine, wasm: &[u8]) -> String {
        let content = Sha256::digest(wasm);
        let mut env = ShaHasher(Sha256::new());
        env.write(b"wasmtime-48.0.8");
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut env);
        let env = env.0.finalize();
        format!("{}-{}.cwasm", hex(&content[..16]), hex(&env[..8]))
    }

    /// The cached component for `wasm`, or a fresh compile that is then stored. A corrupt or
    /// incompatible entry is recompiled and overwritten; a cache that cannot be written is an
    /// error (the caller asked for a cache and would silently pay the compile on every run).
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
        origin: &Path,
    ) -> Result<(Component, CacheOutcome), PluginError> {
        let file = self.dir.join(Self::key(engine, wasm));
        // Read into memory rather than `deserialize_file` (mmap): a cache file truncated or
        // rewritten in place by some other tool while a week-long run holds it mapped would be
        // a SIGBUS. Costs ~40 ms once for a 35 MB Python component, ~1 ms for a Rust one.
        if let Ok(bytes) = std::fs::read(&file) {
            // SAFETY: `deserialize` trusts its input to be wasmtime output. Only this function
            // writes into the cache directory (created private to the user), the file name binds
            // the entry to these exact bytes and this engine, and wasmtime checks its own header
            // and version before using the code.
            if let Ok(c) = unsafe { Component::deserialize(engine, &bytes) } {
                return Ok((c, CacheOutcome::Hit));
            }
        }
        let component = compile(engine, wasm, origin)?;
        let cache_err = |source| PluginError::Cache {
            path: self.dir.clone(),
            source,
        };
        create_private_dir(&self.dir).map_err(cache_err)?;
        let bytes = component
            .serialize()
            .map_err(|e| PluginError::Runtime(e.to_string()))?;
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes).map_err(cache_err)?;
        std::fs::rename(&tmp, &file).map_err(cache_err)?;
        Ok((component, CacheOutcome::Compiled))
    }
}

/// Compiles a component (cranelift), naming the file on failure.
pub(crate) fn compile(
    engine: &Engine,
    wasm: &[u8],
    origin: &Path,
) -> Result<Component, PluginError> {
    Component::new(engine, wasm).map_err(|e| PluginError::NotAComponent {
        path: origin.to_path_buf(),
        reason: format!("{e:#}"),
    })
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}
