//! What trainers see: [`RewardFn`] and [`CompletionPostprocessor`] trait objects. Native Rust
//! closures ([`NativeReward`], [`NativePostprocessor`]) and Wasm plugins
//! ([`WasmReward`](super::WasmReward), [`WasmPostprocessor`](super::WasmPostprocessor)) implement
//! them with the same validation, failure policy and metrics, so a trainer never knows which it got.

use std::sync::Arc;
use std::time::Instant;

use super::config::OnError;
use super::error::{FailureKind, PluginError};
use super::guard::{Failure, Guard};
use super::log::{stderr_sink, LogSink};
use super::stats::PluginStats;
use super::tokenizer::PluginTokenizer;
use super::types::{Edit, PluginInfo, Processed, RewardValue, RolloutBatch};

/// A reward function over a rollout batch: one [`RewardValue`] per completion.
///
/// `Err` only when the policy is `abort` (or too many calls failed in a row); under `zero`/`skip`
/// failures become values and are counted in [`stats`](Self::stats).
pub trait RewardFn: Send {
    fn info(&self) -> &PluginInfo;
    fn compute(&mut self, batch: &RolloutBatch) -> Result<Vec<RewardValue>, PluginError>;
    fn stats(&self) -> &PluginStats;
}

/// Edits completions after generation, before rewards; the output keeps the batch's [N, C].
pub trait CompletionPostprocessor: Send {
    fn info(&self) -> &PluginInfo;
    fn process(&mut self, batch: &RolloutBatch) -> Result<Processed, PluginError>;
    fn stats(&self) -> &PluginStats;
}

// ---------------------------------------------------------------------------------------------
// Native closures
// ---------------------------------------------------------------------------------------------

/// A reward written in Rust: `f(batch) -> Ok(one Option<f32> per completion)` or `Err(message)`.
pub struct NativeReward<F> {
    f: F,
    guard: Guard,
}

impl<F> NativeReward<F>
where
    F: FnMut(&RolloutBatch) -> Result<Vec<Option<f32>>, String> + Send,
{
    pub fn new(name: &str, on_error: OnError, f: F) -> Self {
        NativeReward {
            f,
            guard: Guard::new(
                PluginInfo::new(name, "native", ""),
                on_error,
                None,
                stderr_sink(),
            ),
        }
    }

    /// Sends this function's failure reports to `log` instead of stderr.
    pub fn with_log(mut self, log: LogSink) -> Self {
        self.guard.log = log;
        self
    }
}

impl<F> RewardFn for NativeReward<F>
where
    F: FnMut(&RolloutBatch) -> Result<Vec<Option<f32>>, String> + Send,
{
    fn info(&self) -> &PluginInfo {
        &self.guard.info
    }

    fn compute(&mut self, batch: &RolloutBatch) -> Result<Vec<RewardValue>, PluginError> {
        self.guard.check_batch(batch)?;
        let start = Instant::now();
        let raw = (self.f)(batch).map_err(|m| Failure::new(FailureKind::PluginError, m));
        self.guard.rewards(batch.len(), start.elapsed(), raw)
    }

    fn stats(&self) -> &PluginStats {
        &self.guard.stats
    }
}

/// A post-processor written in Rust; edited texts are re-tokenised with `tokenizer`.
pub struct NativePostprocessor<F> {
    f: F,
    tokenizer: Arc<dyn PluginTokenizer>,
    guard: Guard,
}

impl<F> NativePostprocessor<F>
where
    F: FnMut(&RolloutBatch) -> Result<Edit, String> + Send,
{
    pub fn new(name: &str, tokenizer: Arc<dyn PluginTokenizer>, on_error: OnError, f: F) -> Self {
        NativePostprocessor {
            f,
            tokenizer,
            guard: Guard::new(
                PluginInfo::new(name, "native", ""),
                on_error,
                None,
                stderr_sink(),
            ),
        }
    }

    pub fn with_log(mut self, log: LogSink) -> Self {
        self.guard.log = log;
        self
    }
}

impl<F> CompletionPostprocessor for NativePostprocessor<F>
where
    F: FnMut(&RolloutBatch) -> Result<Edit, String> + Send,
{
    fn info(&self) -> &PluginInfo {
        &self.guard.info
    }

    fn process(&mut self, batch: &RolloutBatch) -> Result<Processed, PluginError> {
        self.guard.check_batch(batch)?;
        let start = Instant::now();
        let raw = (self.f)(batch).map_err(|m| Failure::new(FailureKind::PluginError, m));
        self.guard
            .processed(batch, self.tokenizer.as_ref(), start.elapsed(), raw)
    }

    fn stats(&self) -> &PluginStats {
        &self.guard.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::types::TokenMatrix;

    fn batch(n: usize) -> RolloutBatch {
        RolloutBatch {
            prompts: vec!["p".into(); n],
            completions: vec!["c".into(); n],
            tokens: TokenMatrix::from_rows(&vec![vec![5]; n], 2),
            extras: vec!["{}".into(); n],
        }
    }

    #[test]
    fn native_reward_validates_like_a_plugin() {
        let mut nan = NativeReward::new("nan", OnError::Zero, |b: &RolloutBatch| {
            Ok((0..b.len())
                .map(|i| Some(if i == 1 { f32::NAN } else { 1.0 }))
                .collect())
        })
        .with_log(Arc::new(|_: &_| {}));
        let out = nan.compute(&batch(3)).unwrap();
        assert_eq!(
            out,
            [
                RewardValue::Value(1.0),
                RewardValue::Value(0.0),
                RewardValue::Value(1.0)
            ]
        );
        assert_eq!(nan.stats().failures_of(FailureKind::InvalidValue), 1);

        let mut short =
            NativeReward::new("short", OnError::Abort, |_: &RolloutBatch| Ok(vec![None]));
        let err = short.compute(&batch(2)).unwrap_err().to_string();
        assert!(
            err.contains("short") && err.contains("1 rewards for 2"),
            "{err}"
        );
    }

    #[test]
    fn skip_marks_failed_samples_and_consecutive_failures_abort() {
        let mut f = NativeReward::new("err", OnError::Skip, |_: &RolloutBatch| {
            Err("no".to_string())
        })
        .with_log(Arc::new(|_: &_| {}));
        f.guard.max_consecutive_failures = Some(2);
        assert_eq!(f.compute(&batch(2)).unwrap(), [RewardValue::Failed; 2]);
        let err = f.compute(&batch(2)).unwrap_err().to_string();
        assert!(err.contains("2 calls in a row"), "{err}");
    }
}
