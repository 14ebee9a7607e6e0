//! One plugin instance in its own `Store`: arms the per-call limits, classifies traps, and
//! rebuilds the instance after one (a trapped component instance cannot be entered again).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store, Trap};

use super::bindings::v0_1::{postprocess, reward, types};
use super::bindings::Role;
use super::config::PluginLimits;
use super::error::{FailureKind, PluginError};
use super::guard::Failure;
use super::host_state::{HostState, Label};
use super::log::LogSink;
use super::tokenizer::PluginTokenizer;
use super::types::PluginInfo;

/// A role's generated bindings: how to pre-link, instantiate and `init` them.
pub(crate) trait Binding: Sized + Send + 'static {
    type Pre: Send + Sync;
    const ROLE: Role;
    fn pre(linker: &Linker<HostState>, component: &Component) -> wasmtime::Result<Self::Pre>;
    fn instantiate(pre: &Self::Pre, store: &mut Store<HostState>) -> wasmtime::Result<Self>;
    fn init(
        &self,
        store: &mut Store<HostState>,
        config: &str,
    ) -> wasmtime::Result<Result<types::PluginInfo, String>>;
}

impl Binding for reward::RewardPlugin {
    type Pre = reward::RewardPluginPre<HostState>;
    const ROLE: Role = Role::Reward;

    fn pre(linker: &Linker<HostState>, component: &Component) -> wasmtime::Result<Self::Pre> {
        reward::RewardPluginPre::new(linker.instantiate_pre(component)?)
    }

    fn instantiate(pre: &Self::Pre, store: &mut Store<HostState>) -> wasmtime::Result<Self> {
        pre.instantiate(store)
    }

    fn init(
        &self,
        store: &mut Store<HostState>,
        config: &str,
    ) -> wasmtime::Result<Result<types::PluginInfo, String>> {
        self.rwkvtune_plugin_reward().call_init(store, config)
    }
}

impl Binding for postprocess::PostprocessPlugin {
    type Pre = postprocess::PostprocessPluginPre<HostState>;
    const ROLE: Role = Role::Postprocess;

    fn pre(linker: &Linker<HostState>, component: &Component) -> wasmtime::Result<Self::Pre> {
        postprocess::PostprocessPluginPre::new(linker.instantiate_pre(component)?)
    }

    fn instantiate(pre: &Self::Pre, store: &mut Store<HostState>) -> wasmtime::Result<Self> {
        pre.instantiate(store)
    }

    fn init(
        &self,
        store: &mut Store<HostState>,
        config: &str,
    ) -> wasmtime::Result<Result<types::PluginInfo, String>> {
        self.rwkvtune_plugin_postprocess().call_init(store, config)
    }
}

/// Everything needed to (re)build an instance.
pub(crate) struct SandboxParts {
    pub engine: Engine,
    pub path: PathBuf,
    pub config: String,
    pub limits: PluginLimits,
    pub fuel_enabled: bool,
    pub tick_ms: u64,
    pub tokenizer: Arc<dyn PluginTokenizer>,
    pub log: LogSink,
}

pub(crate) struct Sandbox<B: Binding> {
    parts: SandboxParts,
    pre: B::Pre,
    label: Label,
    live: Option<(Store<HostState>, B)>,
    /// Instances rebuilt after a trap.
    pub rebuilds: u64,
}

impl<B: Binding> Sandbox<B> {
    /// Links the component for role `B`, instantiates it and calls `init`.
    pub fn start(
        parts: SandboxParts,
        linker: &Linker<HostState>,
        component: &Component,
    ) -> Result<(Self, PluginInfo), PluginError> {
        let pre = B::pre(linker, component).map_err(|e| PluginError::Link {
            path: parts.path.clone(),
            reason: format!("{e:#}"),
        })?;
        let stem = parts
            .path
            .file_stem()
            .map_or("plugin".into(), |s| s.to_string_lossy().into_owned());
        let mut sandbox = Sandbox {
            parts,
            pre,
            label: Arc::new(Mutex::new(stem.clone())),
            live: None,
            rebuilds: 0,
        };
        let info = sandbox.instantiate().map_err(|f| PluginError::Init {
            plugin: format!("{stem} ({})", sandbox.parts.path.display()),
            message: format!("{}: {}", f.kind, f.message),
        })?;
        Ok((sandbox, info))
    }

    /// A fresh store + instance + `init(config)`.
    fn instantiate(&mut self) -> Result<PluginInfo, Failure> {
        self.live = None; // drop the old store (and its memory) first
        let p = &self.parts;
        let memory = usize::try_from(p.limits.memory_mib << 20).unwrap_or(usize::MAX);
        let state = HostState::new(
            p.tokenizer.clone(),
            p.log.clone(),
            self.label.clone(),
            memory,
        );
        let mut store = Store::new(&p.engine, state);
        store.limiter(|s| &mut s.limiter);
        self.arm(&mut store)?;
        let instance =
            B::instantiate(&self.pre, &mut store).map_err(|e| self.classify(&store, &e))?;
        self.arm(&mut store)?;
        let info = match instance.init(&mut store, &p.config) {
            Ok(Ok(info)) => info,
            Ok(Err(message)) => return Err(Failure::new(FailureKind::PluginError, message)),
            Err(trap) => return Err(self.classify(&store, &trap)),
        };
        if let Ok(mut label) = self.label.lock() {
            label.clone_from(&info.name);
        }
        self.live = Some((store, instance));
        Ok(PluginInfo {
            name: info.name,
            version: info.version,
            description: info.description,
        })
    }

    /// Gives the next call its full time (and fuel) budget.
    fn arm(&self, store: &mut Store<HostState>) -> Result<(), Failure> {
        let p = &self.parts;
        // +1: the next tick may come at once, so N ticks alone could end the call up to one tick
        // early; the limit is a floor, overshot by at most one tick.
        store.set_epoch_deadline(p.limits.call_timeout_ms.div_ceil(p.tick_ms) + 1);
        store.data_mut().limiter.exceeded = false;
        if p.fuel_enabled {
            store
                .set_fuel(p.limits.fuel.unwrap_or(u64::MAX))
                .map_err(|e| Failure::new(FailureKind::Trap, e.to_string()))?;
        }
        Ok(())
    }

    fn classify(&self, store: &Store<HostState>, err: &wasmtime::Error) -> Failure {
        let limits = &self.parts.limits;
        let detail = format!("{err:#}");
        if store.data().limiter.exceeded {
            return Failure::new(
                FailureKind::OutOfMemory,
                format!(
                    "exceeded the {} MiB memory cap: {detail}",
                    limits.memory_mib
                ),
            );
        }
        match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => Failure::new(
                FailureKind::Timeout,
                format!(
                    "exceeded the {} ms per-call limit (limits.call_timeout_ms)",
                    limits.call_timeout_ms
                ),
            ),
            Some(Trap::OutOfFuel) => Failure::new(
                FailureKind::OutOfFuel,
                format!("used up its fuel budget of {:?} (limits.fuel)", limits.fuel),
            ),
            _ => Failure::new(FailureKind::Trap, detail),
        }
    }

    /// Runs one call with fresh limits; rebuilds the instance first if the last call trapped.
    /// A trap drops the instance; a plugin-level `err` keeps it.
    pub fn call<R>(
        &mut self,
        f: impl FnOnce(&B, &mut Store<HostState>) -> wasmtime::Result<Result<R, String>>,
    ) -> Result<R, Failure> {
        if self.live.is_none() {
            self.rebuilds += 1;
            self.instantiate().map_err(|mut failure| {
                failure.message = format!("rebuilding the instance failed: {}", failure.message);
                failure
            })?;
        }
        let Some((mut store, instance)) = self.live.take() else {
            return Err(Failure::new(FailureKind::Trap, "no live instance"));
        };
        self.arm(&mut store)?;
        match f(&instance, &mut store) {
            Ok(result) => {
                self.live = Some((store, instance));
                result.map_err(|m| Failure::new(FailureKind::PluginError, m))
            }
            // The instance is poisoned; the store is dropped here and rebuilt on the next call.
            Err(trap) => Err(self.classify(&store, &trap)),
        }
    }
}
