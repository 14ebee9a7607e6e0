//! Validation of results and the failure policy, shared by native closures and Wasm plugins so
//! both behave identically: count, NaN/inf, shapes, vocabulary; then `on_error`, the counters and
//! the log line (plugin name, call, sample index, cause).

use std::time::Duration;

use super::config::OnError;
use super::error::{FailureKind, PluginError};
use super::log::{LogLevel, LogRecord, LogSink};
use super::stats::PluginStats;
use super::tokenizer::PluginTokenizer;
use super::types::{Edit, PluginInfo, Processed, RewardValue, RolloutBatch, TokenMatrix};

/// A failed call (or sample), before the policy decides what it means.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub kind: FailureKind,
    pub message: String,
    pub sample: Option<usize>,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
            sample: None,
        }
    }

    fn at(mut self, sample: usize) -> Self {
        self.sample = Some(sample);
        self
    }
}

/// Policy, counters and logging of one plugin (native or Wasm).
pub(crate) struct Guard {
    pub info: PluginInfo,
    pub on_error: OnError,
    pub max_consecutive_failures: Option<u32>,
    pub stats: PluginStats,
    pub log: LogSink,
}

impl Guard {
    pub fn new(
        info: PluginInfo,
        on_error: OnError,
        max_consecutive: Option<u32>,
        log: LogSink,
    ) -> Self {
        Guard {
            info,
            on_error,
            max_consecutive_failures: max_consecutive,
            stats: PluginStats::default(),
            log,
        }
    }

    /// Checks the batch before a call: a malformed batch is a caller bug, never the plugin's.
    pub fn check_batch(&self, batch: &RolloutBatch) -> Result<(), PluginError> {
        batch.check().map_err(|reason| PluginError::BadBatch {
            plugin: self.info.name.clone(),
            reason,
        })
    }

    /// Rewards after validation and the policy. `raw` is the plugin's answer for `n` samples.
    pub fn rewards(
        &mut self,
        n: usize,
        elapsed: Duration,
        raw: Result<Vec<Option<f32>>, Failure>,
    ) -> Result<Vec<RewardValue>, PluginError> {
        self.stats.record_call(elapsed);
        let call = self.stats.calls;
        let values = raw.and_then(|v| {
            if v.len() == n {
                Ok(v)
            } else {
                Err(Failure::new(
                    FailureKind::WrongCount,
                    format!("returned {} rewards for {n} completions", v.len()),
                ))
            }
        });
        let values = match values {
            Ok(v) => v,
            Err(failure) => {
                self.fail(call, n, &failure)?;
                return Ok(vec![self.policy_value(); n]);
            }
        };
        let mut out = Vec::with_capacity(n);
        let mut any_failed = false;
        for (i, v) in values.into_iter().enumerate() {
            match v {
                Some(x) if !x.is_finite() => {
                    any_failed = true;
                    let f = Failure::new(FailureKind::InvalidValue, format!("reward is {x}")).at(i);
                    self.fail_sample(call, &f)?;
                    out.push(self.policy_value());
                }
                other => out.push(RewardValue::from(other)),
            }
        }
        if any_failed {
            self.bump_consecutive(call)?;
        } else {
            self.stats.consecutive_failures = 0;
        }
        Ok(out)
    }

    /// A normalised post-processed batch; under `zero`/`skip` a failed call passes the input
    /// through unchanged.
    pub fn processed(
        &mut self,
        batch: &RolloutBatch,
        tokenizer: &dyn PluginTokenizer,
        elapsed: Duration,
        raw: Result<Edit, Failure>,
    ) -> Result<Processed, PluginError> {
        self.stats.record_call(elapsed);
        let call = self.stats.calls;
        match raw.and_then(|edit| normalise(batch, tokenizer, edit)) {
            Ok(p) => {
                self.stats.consecutive_failures = 0;
                Ok(p)
            }
            Err(failure) => {
                self.fail(call, batch.len(), &failure)?;
                Ok(Processed {
                    completions: batch.completions.clone(),
                    tokens: batch.tokens.clone(),
                })
            }
        }
    }

    fn policy_value(&self) -> RewardValue {
        match self.on_error {
            OnError::Skip => RewardValue::Failed,
            OnError::Zero | OnError::Abort => RewardValue::Value(0.0),
        }
    }

    fn error(&self, call: u64, f: &Failure) -> PluginError {
        PluginError::Call {
            plugin: self.info.name.clone(),
            call,
            kind: f.kind,
            sample: f.sample,
            message: f.message.clone(),
        }
    }

    /// A whole-batch failure: counted, logged, and an error under `abort`.
    fn fail(&mut self, call: u64, n: usize, f: &Failure) -> Result<(), PluginError> {
        self.stats.record_failure(f.kind, n);
        if self.on_error == OnError::Abort {
            return Err(self.error(call, f));
        }
        let scope = match f.sample {
            Some(i) => format!("sample {i}"),
            None => format!("all {n} samples"),
        };
        self.emit(format!(
            "call {call} failed ({}), {scope} get {:?}: {}",
            f.kind, self.on_error, f.message
        ));
        self.bump_consecutive(call)
    }

    fn fail_sample(&mut self, call: u64, f: &Failure) -> Result<(), PluginError> {
        self.stats.record_failure(f.kind, 1);
        if self.on_error == OnError::Abort {
            return Err(self.error(call, f));
        }
        let i = f.sample.unwrap_or(0);
        self.emit(format!(
            "call {call} sample {i} invalid ({}), gets {:?}: {}",
            f.kind, self.on_error, f.message
        ));
        Ok(())
    }

    fn bump_consecutive(&mut self, call: u64) -> Result<(), PluginError> {
        self.stats.consecutive_failures += 1;
        match self.max_consecutive_failures {
            Some(max) if self.stats.consecutive_failures >= max => Err(PluginError::Call {
                plugin: self.info.name.clone(),
                call,
                kind: self
                    .stats
                    .failures
                    .iter()
                    .max_by_key(|(_, n)| **n)
                    .map_or(FailureKind::PluginError, |(k, _)| *k),
                sample: None,
                message: format!(
                    "{max} calls in a row failed; giving up (raise limits.max_consecutive_failures \
                     or fix the plugin)"
                ),
            }),
            _ => Ok(()),
        }
    }

    fn emit(&self, message: String) {
        (self.log)(&LogRecord {
            plugin: self.info.name.clone(),
            level: LogLevel::Warn,
            message,
        });
    }
}

/// Turns an [`Edit`] into texts + ids/mask of the input's [N, C] shape, or says what is wrong.
pub(crate) fn normalise(
    batch: &RolloutBatch,
    tokenizer: &dyn PluginTokenizer,
    edit: Edit,
) -> Result<Processed, Failure> {
    let (n, cols) = (batch.len(), batch.tokens.cols);
    match edit {
        Edit::Texts(texts) => {
            if texts.len() != n {
                return Err(Failure::new(
                    FailureKind::WrongCount,
                    format!("returned {} completions for {n}", texts.len()),
                ));
            }
            let mut rows = Vec::with_capacity(n);
            for (i, t) in texts.iter().enumerate() {
                let ids = tokenizer.encode(t).map_err(|e| {
                    Failure::new(FailureKind::InvalidOutput, format!("cannot tokenize: {e}")).at(i)
                })?;
                rows.push(ids);
            }
            Ok(Processed {
                completions: texts,
                tokens: TokenMatrix::from_rows(&rows, cols),
            })
        }
        Edit::Tokens(mut m) => {
            if m.rows != n || m.cols != cols {
                return Err(Failure::new(
                    FailureKind::InvalidOutput,
                    format!(
                        "returned a [{} x {}] token matrix for a [{n} x {cols}] batch",
                        m.rows, m.cols
                    ),
                ));
            }
            m.check_shape()
                .map_err(|e| Failure::new(FailureKind::InvalidOutput, e))?;
            let vocab = tokenizer.vocab_size();
            for (pos, (id, mask)) in m.ids.iter_mut().zip(&m.mask).enumerate() {
                let row = pos / cols.max(1);
                match *mask {
                    0 => *id = 0, // padding is 0 whatever the plugin left there
                    1 if (*id as usize) < vocab => {}
                    1 => {
                        return Err(Failure::new(
                            FailureKind::InvalidOutput,
                            format!("token id {id} is outside the vocabulary (size {vocab})"),
                        )
                        .at(row))
                    }
                    other => {
                        return Err(Failure::new(
                            FailureKind::InvalidOutput,
                            format!("mask value {other} (must be 0 or 1)"),
                        )
                        .at(row))
                    }
                }
            }
            let completions = (0..n).map(|r| tokenizer.decode(&m.real_ids(r))).collect();
            Ok(Processed {
                completions,
                tokens: m,
            })
        }
    }
}
