//! Wasm plugins behind the trainer-facing traits: batch conversion to the WIT types, the call
//! through the [`Sandbox`], then the same [`Guard`] native closures use.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::bindings::v0_1::{postprocess, reward, types};
use super::bindings::{Role, WitVersion};
use super::error::PluginError;
use super::guard::Guard;
use super::log::LogSink;
use super::runtime::LoadedComponent;
use super::sandbox::Sandbox;
use super::stats::PluginStats;
use super::tokenizer::PluginTokenizer;
use super::traits::{CompletionPostprocessor, RewardFn};
use super::types::{Edit, PluginInfo, Processed, RewardValue, RolloutBatch, TokenMatrix};
use super::{CacheOutcome, PluginSpec};

/// Where a Wasm plugin came from (for logs, rollout dumps and `plugin check`).
#[derive(Clone, Debug)]
pub struct WasmOrigin {
    pub path: PathBuf,
    pub wit_version: WitVersion,
    pub cache: CacheOutcome,
    pub load_time: std::time::Duration,
}

impl WasmOrigin {
    fn new(loaded: &LoadedComponent, role: Role) -> Self {
        WasmOrigin {
            path: loaded.path.clone(),
            wit_version: loaded.version_of(role).unwrap_or(WitVersion::V0_1_0),
            cache: loaded.cache,
            load_time: loaded.load_time,
        }
    }
}

fn to_wit_matrix(m: &TokenMatrix) -> Option<types::TokenMatrix> {
    Some(types::TokenMatrix {
        rows: u32::try_from(m.rows).ok()?,
        cols: u32::try_from(m.cols).ok()?,
        ids: m.ids.clone(),
        mask: m.mask.clone(),
    })
}

fn from_wit_matrix(m: types::TokenMatrix) -> TokenMatrix {
    TokenMatrix {
        rows: m.rows as usize,
        cols: m.cols as usize,
        ids: m.ids,
        mask: m.mask,
    }
}

fn too_large(guard: &Guard) -> PluginError {
    PluginError::BadBatch {
        plugin: guard.info.name.clone(),
        reason: "token matrix dimensions exceed u32".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Reward
// ---------------------------------------------------------------------------------------------

/// A reward plugin loaded from a `.wasm` component.
pub struct WasmReward {
    sandbox: Sandbox<reward::RewardPlugin>,
    guard: Guard,
    origin: WasmOrigin,
}

impl WasmReward {
    pub(crate) fn new(
        sandbox: Sandbox<reward::RewardPlugin>,
        info: PluginInfo,
        spec: &PluginSpec,
        loaded: LoadedComponent,
        log: LogSink,
    ) -> Self {
        WasmReward {
            sandbox,
            guard: Guard::new(
                info,
                spec.on_error,
                spec.limits.max_consecutive_failures,
                log,
            ),
            origin: WasmOrigin::new(&loaded, Role::Reward),
        }
    }

    pub fn origin(&self) -> &WasmOrigin {
        &self.origin
    }

    pub fn path(&self) -> &Path {
        &self.origin.path
    }
}

impl RewardFn for WasmReward {
    fn info(&self) -> &PluginInfo {
        &self.guard.info
    }

    fn compute(&mut self, batch: &RolloutBatch) -> Result<Vec<RewardValue>, PluginError> {
        self.guard.check_batch(batch)?;
        let wit = types::RewardBatch {
            prompts: batch.prompts.clone(),
            completions: batch.completions.clone(),
            tokens: to_wit_matrix(&batch.tokens).ok_or_else(|| too_large(&self.guard))?,
            extras: batch.extras.clone(),
        };
        let start = Instant::now();
        let raw = self
            .sandbox
            .call(|p, store| p.rwkvtune_plugin_reward().call_compute_rewards(store, &wit));
        let elapsed = start.elapsed();
        self.guard.stats.rebuilds = self.sandbox.rebuilds;
        self.guard.rewards(batch.len(), elapsed, raw)
    }

    fn stats(&self) -> &PluginStats {
        &self.guard.stats
    }
}

// ---------------------------------------------------------------------------------------------
// Post-processor
// ---------------------------------------------------------------------------------------------

/// A completion post-processor loaded from a `.wasm` component.
pub struct WasmPostprocessor {
    sandbox: Sandbox<postprocess::PostprocessPlugin>,
    guard: Guard,
    origin: WasmOrigin,
    tokenizer: Arc<dyn PluginTokenizer>,
}

impl WasmPostprocessor {
    pub(crate) fn new(
        sandbox: Sandbox<postprocess::PostprocessPlugin>,
        info: PluginInfo,
        spec: &PluginSpec,
        loaded: LoadedComponent,
        tokenizer: Arc<dyn PluginTokenizer>,
        log: LogSink,
    ) -> Self {
        WasmPostprocessor {
            sandbox,
            guard: Guard::new(
                info,
                spec.on_error,
                spec.limits.max_consecutive_failures,
                log,
            ),
            origin: WasmOrigin::new(&loaded, Role::Postprocess),
            tokenizer,
        }
    }

    pub fn origin(&self) -> &WasmOrigin {
        &self.origin
    }
}

impl CompletionPostprocessor for WasmPostprocessor {
    fn info(&self) -> &PluginInfo {
        &self.guard.info
    }

    fn process(&mut self, batch: &RolloutBatch) -> Result<Processed, PluginError> {
        self.guard.check_batch(batch)?;
        let wit = types::PostprocessBatch {
            prompts: batch.prompts.clone(),
            completions: batch.completions.clone(),
            tokens: to_wit_matrix(&batch.tokens).ok_or_else(|| too_large(&self.guard))?,
            extras: batch.extras.clone(),
        };
        let start = Instant::now();
        let raw = self
            .sandbox
            .call(|p, store| p.rwkvtune_plugin_postprocess().call_process(store, &wit))
            .map(|out| match out {
                types::PostprocessOutput::Texts(t) => Edit::Texts(t),
                types::PostprocessOutput::Tokens(m) => Edit::Tokens(from_wit_matrix(m)),
            });
        let elapsed = start.elapsed();
        self.guard.stats.rebuilds = self.sandbox.rebuilds;
        self.guard
            .processed(batch, self.tokenizer.as_ref(), elapsed, raw)
    }

    fn stats(&self) -> &PluginStats {
        &self.guard.stats
    }
}
