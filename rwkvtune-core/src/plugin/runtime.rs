//! The plugin runtime: one wasmtime `Engine` (with its epoch ticker), the sandbox's `Linker`, and
//! the compiled-component cache. Create one per process and load every plugin through it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine};

use super::bindings::v0_1::{postprocess, reward};
use super::bindings::{parse_export_name, Role, WitVersion};
use super::cache::{compile, default_cache_dir, CacheOutcome, ComponentCache};
use super::error::PluginError;
use super::host_state::HostState;
use super::log::LogSink;
use super::sandbox::{Binding, Sandbox, SandboxParts};
use super::tokenizer::PluginTokenizer;
use super::wasm::{WasmPostprocessor, WasmReward};
use super::PluginSpec;

/// Process-wide plugin settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeOptions {
    /// Compiled-component cache; `None` = compile on every load.
    pub cache_dir: Option<PathBuf>,
    /// Build the engine with fuel metering, so `PluginLimits::fuel` can be used (slower code:
    /// every plugin pays for the counting).
    pub fuel: bool,
    /// Epoch tick: the resolution of `call_timeout_ms`.
    pub epoch_tick_ms: u64,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            cache_dir: default_cache_dir(),
            fuel: false,
            epoch_tick_ms: 10,
        }
    }
}

/// A compiled component and what it exports.
#[derive(Clone)]
pub struct LoadedComponent {
    pub path: PathBuf,
    pub component: Component,
    pub cache: CacheOutcome,
    /// Read + hash + compile-or-deserialise.
    pub load_time: Duration,
    /// The plugin roles found, with their WIT versions (supported versions only).
    pub roles: Vec<(Role, WitVersion)>,
    /// All export and import names (for `plugin check`).
    pub exports: Vec<String>,
    pub imports: Vec<String>,
}

impl LoadedComponent {
    pub fn version_of(&self, role: Role) -> Option<WitVersion> {
        self.roles.iter().find(|(r, _)| *r == role).map(|(_, v)| *v)
    }
}

#[derive(Clone)]
pub struct PluginRuntime {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    cache: Option<ComponentCache>,
    options: RuntimeOptions,
}

impl PluginRuntime {
    pub fn new(options: RuntimeOptions) -> Result<Self, PluginError> {
        if options.epoch_tick_ms == 0 {
            return Err(PluginError::Config(
                "epoch_tick_ms must be at least 1".into(),
            ));
        }
        let mut cfg = Config::new();
        cfg.wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(options.fuel)
            // A deep-recursion guest traps with "stack overflow" instead of using host stack.
            .max_wasm_stack(1 << 20);
        let engine = Engine::new(&cfg).map_err(|e| PluginError::Runtime(format!("{e:#}")))?;
        spawn_ticker(&engine, Duration::from_millis(options.epoch_tick_ms))?;

        let mut linker = Linker::<HostState>::new(&engine);
        let runtime_err = |e: wasmtime::Error| PluginError::Runtime(format!("{e:#}"));
        // WASI p2, sandboxed by the context each store gets (see host_state.rs).
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(runtime_err)?;
        // Both worlds import the same `host` interface: linking it once serves both.
        reward::RewardPlugin::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(runtime_err)?;
        Ok(PluginRuntime {
            engine,
            linker: Arc::new(linker),
            cache: options.cache_dir.clone().map(ComponentCache::new),
            options,
        })
    }

    pub fn options(&self) -> &RuntimeOptions {
        &self.options
    }

    /// Reads and compiles (or fetches from the cache) a component, and detects its roles and
    /// WIT versions.
    pub fn load(&self, path: &Path) -> Result<LoadedComponent, PluginError> {
        let start = Instant::now();
        let wasm = std::fs::read(path).map_err(|source| PluginError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let (component, cache) = match &self.cache {
            Some(cache) => cache.load_or_compile(&self.engine, &wasm, path)?,
            None => (compile(&self.engine, &wasm, path)?, CacheOutcome::Compiled),
        };
        let load_time = start.elapsed();
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let mut roles = Vec::new();
        for name in &exports {
            let Some((iface, version)) = parse_export_name(name) else {
                continue;
            };
            let role = match iface {
                "reward" => Role::Reward,
                "postprocess" => Role::Postprocess,
                _ => continue,
            };
            let version = WitVersion::parse(version).ok_or_else(|| PluginError::Incompatible {
                path: path.to_path_buf(),
                reason: format!(
                    "exports `{name}`, built against rwkvtune:plugin@{version}; this rwkvtune \
                     loads versions {}: rebuild the plugin against one of them or upgrade rwkvtune",
                    supported_list()
                ),
            })?;
            roles.push((role, version));
        }
        Ok(LoadedComponent {
            path: path.to_path_buf(),
            component,
            cache,
            load_time,
            roles,
            exports,
            imports,
        })
    }

    /// Loads a reward plugin (compile/cache, link, instantiate, `init`).
    pub fn reward(
        &self,
        spec: &PluginSpec,
        tokenizer: Arc<dyn PluginTokenizer>,
        log: LogSink,
    ) -> Result<WasmReward, PluginError> {
        let (sandbox, info, loaded) =
            self.start::<reward::RewardPlugin>(spec, tokenizer, log.clone())?;
        Ok(WasmReward::new(sandbox, info, spec, loaded, log))
    }

    /// Loads a completion post-processor.
    pub fn postprocessor(
        &self,
        spec: &PluginSpec,
        tokenizer: Arc<dyn PluginTokenizer>,
        log: LogSink,
    ) -> Result<WasmPostprocessor, PluginError> {
        let (sandbox, info, loaded) =
            self.start::<postprocess::PostprocessPlugin>(spec, tokenizer.clone(), log.clone())?;
        Ok(WasmPostprocessor::new(
            sandbox, info, spec, loaded, tokenizer, log,
        ))
    }

    fn start<B: Binding>(
        &self,
        spec: &PluginSpec,
        tokenizer: Arc<dyn PluginTokenizer>,
        log: LogSink,
    ) -> Result<(Sandbox<B>, super::PluginInfo, LoadedComponent), PluginError> {
        spec.validate()?;
        if spec.limits.fuel.is_some() && !self.options.fuel {
            return Err(PluginError::Config(format!(
                "plugin {}: limits.fuel is set but the plugin runtime was built without fuel \
                 metering; enable `fuel` in the runtime options",
                spec.path.display()
            )));
        }
        let loaded = self.load(&spec.path)?;
        if loaded.version_of(B::ROLE).is_none() {
            let found: Vec<&str> = loaded.roles.iter().map(|(r, _)| r.interface()).collect();
            return Err(PluginError::Incompatible {
                path: spec.path.clone(),
                reason: format!(
                    "is not a {} plugin: it exports no `rwkvtune:plugin/{}@<version>` (its plugin \
                     roles: {}); build it for the `{}-plugin` world",
                    B::ROLE.interface(),
                    B::ROLE.interface(),
                    if found.is_empty() {
                        "none".to_string()
                    } else {
                        found.join(", ")
                    },
                    B::ROLE.interface(),
                ),
            });
        }
        let parts = SandboxParts {
            engine: self.engine.clone(),
            path: spec.path.clone(),
            config: spec.config.clone(),
            limits: spec.limits.clone(),
            fuel_enabled: self.options.fuel,
            tick_ms: self.options.epoch_tick_ms,
            tokenizer,
            log,
        };
        let (sandbox, info) = Sandbox::<B>::start(parts, &self.linker, &loaded.component)?;
        Ok((sandbox, info, loaded))
    }
}

fn supported_list() -> String {
    WitVersion::SUPPORTED
        .iter()
        .map(|(v, _)| *v)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Advances the engine's epoch every `tick`; ends when the engine is dropped.
fn spawn_ticker(engine: &Engine, tick: Duration) -> Result<(), PluginError> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("rwkvtune-plugin-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(tick);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => break,
            }
        })
        .map(drop)
        // Without the ticker no call could ever time out: refuse to run plugins at all.
        .map_err(|e| PluginError::Runtime(format!("cannot start the epoch ticker thread: {e}")))
}
