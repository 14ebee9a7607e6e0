//! Training metrics: what a run shows and leaves behind about its progress.
//!
//! The trainer calls [`MetricsLogger::log_step`] once per optimizer step; the logger fans the step
//! out to
//! - the console ([`progress`]): an `indicatif` bar on a terminal, plain lines in CI logs;
//! - `<output_dir>/loss_data.jsonl` ([`jsonl`]): one line per step, always written;
//! - `<output_dir>/tensorboard/events.out.tfevents.*` ([`tensorboard`]) when `report_to` asks;
//!
//! and [`MetricsLogger::finish`] draws `<output_dir>/loss_curve.png` ([`plot`]).
//!
//! Invariants: every line and event is handed to the kernel before `log_step` returns, so a crash
//! (even `kill -9`) loses no logged step; a resumed run first drops what the crashed run logged
//! after its checkpoint, so each step appears once; console output is best effort and never fails
//! a run, file I/O errors are returned (naming the file), never panicked on. The module knows
//! nothing of tensors or models: it takes plain numbers.

pub mod jsonl;
pub mod plot;
pub mod progress;
pub mod tensorboard;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use jsonl::{read_records, JsonlWriter, StepRecord, LOSS_DATA_FILE};
pub use plot::{plot_loss_curve, plot_loss_curve_from_jsonl, LOSS_CURVE_FILE};
pub use progress::{Progress, ProgressLine, ProgressMode};
pub use tensorboard::TbWriter;

/// The folder of the event files inside the output directory.
pub const TENSORBOARD_DIR: &str = "tensorboard";

/// EMA weight of the smoothed loss shown on the console.
const CONSOLE_EMA: f64 = 0.9;

// ---- errors -------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Creating, reading or writing a metrics file or folder failed at the OS level.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The loss curve could not be drawn.
    #[error("{}: cannot draw the loss curve: {msg}", path.display())]
    Plot { path: PathBuf, msg: String },
    /// `report_to` names a logger this crate does not have.
    #[error("report_to: unknown logger `{name}`; use \"tensorboard\" or \"none\"")]
    UnknownReporter { name: String },
    /// An extra scalar of a step reuses the name of a fixed field of `loss_data.jsonl`.
    #[error(
        "metric `{name}`: the name is a fixed field of loss_data.jsonl; give the extra scalar \
         another name"
    )]
    ReservedName { name: String },
    /// A field of [`MetricsConfig`] that cannot be used.
    #[error("{field}: {msg}")]
    InvalidConfig { field: &'static str, msg: String },
}

impl MetricsError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        MetricsError::Io {
            path: path.into(),
            source,
        }
    }
}

// ---- configuration ------------------------------------------------------------------------------

/// Which loggers besides `loss_data.jsonl` a run writes to. Parsed from the seed's `report_to`
/// string: `""` or `"none"` (nothing), `"tensorboard"`, `"all"`; several names may be joined by
/// commas, `|` or spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ReportTo {
    pub tensorboard: bool,
}

impl FromStr for ReportTo {
    type Err = MetricsError;
    fn from_str(s: &str) -> Result<Self, MetricsError> {
        let mut report = ReportTo::default();
        for name in s
            .split([',', '|', ' '])
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            match name.to_ascii_lowercase().as_str() {
                "none" => {}
                "tensorboard" | "all" => report.tensorboard = true,
                _ => {
                    return Err(MetricsError::UnknownReporter {
                        name: name.to_string(),
                    })
                }
            }
        }
        Ok(report)
    }
}

impl TryFrom<String> for ReportTo {
    type Error = MetricsError;
    fn try_from(s: String) -> Result<Self, MetricsError> {
        s.parse()
    }
}

impl From<ReportTo> for String {
    fn from(r: ReportTo) -> String {
        r.to_string()
    }
}

impl fmt::Display for ReportTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.tensorboard {
            "tensorboard"
        } else {
            "none"
        })
    }
}

/// What [`MetricsLogger::new`] needs; built by the trainer from its validated config.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// Where `loss_data.jsonl`, `tensorboard/` and `loss_curve.png` go (created if missing).
    pub output_dir: PathBuf,
    pub report_to: ReportTo,
    /// Optimizer steps of the whole run (0: unknown, then no ETA).
    pub total_steps: u64,
    /// A plain console line every this many steps (files get every step).
    pub log_every: u64,
    pub progress: ProgressMode,
    /// `Some(step)` when resuming from a checkpoint taken after `step`: the logs are continued
    /// instead of started afresh.
    pub resume_step: Option<u64>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            output_dir: PathBuf::from("output"),
            report_to: ReportTo::default(),
            total_steps: 0,
            log_every: 1,
            progress: ProgressMode::Auto,
            resume_step: None,
        }
    }
}

/// What the trainer knows about one optimizer step; the logger adds the timing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepMetrics {
    /// Optimizer step, counted from 1 over the whole run.
    pub step: u64,
    pub epoch: u64,
    /// Mean loss of the step (NaN for a skipped non-finite step is fine: it is logged as `null`).
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: Option<f64>,
    /// Tokens processed by the step.
    pub tokens: u64,
    /// Further named scalars (e.g. `l2wrap`, `loss_scale`): JSONL keys and TensorBoard
    /// `train/<name>` tags.
    pub extra: BTreeMap<String, f64>,
}

// ---- the logger ---------------------------------------------------------------------------------

/// Fans each step out to the console, `loss_data.jsonl` and TensorBoard; draws the loss curve at
/// the end.
pub struct MetricsLogger {
    output_dir: PathBuf,
    total_steps: u64,
    jsonl: JsonlWriter,
    tensorboard: Option<TbWriter>,
    progress: Progress,
    /// (step, loss) of the whole run, resumed part included, for the loss curve.
    history: Vec<(u64, f64)>,
    loss_ema: f64,
    loss_ema_n: i32,
    /// Clock of this process's part of the run.
    started: Instant,
    last_step_at: Instant,
    steps_this_session: u64,
    /// Elapsed seconds and tokens of the run before a resume.
    elapsed_before: f64,
    total_tokens: u64,
}

impl MetricsLogger {
    /// Opens the logs of a run: fresh files, or for `config.resume_step = Some(step)` the old
    /// `loss_data.jsonl` cut back to `step`. TensorBoard always gets a new event file, which hides
    /// the steps from `step + 1` on (from 1 on for a fresh run) logged by older files of the
    /// directory (see [`TbWriter::create`]).
    ///
    /// Create it right before the first step: the first step's time (hence its tokens/s) is
    /// counted from here.
    pub fn new(config: &MetricsConfig) -> Result<Self, MetricsError> {
        if config.log_every == 0 {
            return Err(MetricsError::InvalidConfig {
                field: "log_every",
                msg: "must be at least 1".to_string(),
            });
        }
        let dir = &config.output_dir;
        std::fs::create_dir_all(dir).map_err(|e| MetricsError::io(dir, e))?;
        let jsonl_path = dir.join(LOSS_DATA_FILE);
        let tb_dir = dir.join(TENSORBOARD_DIR);
        let (jsonl, kept) = match config.resume_step {
            None => (JsonlWriter::create(&jsonl_path)?, Vec::new()),
            Some(step) => JsonlWriter::resume(&jsonl_path, step)?,
        };
        let start_step = config.resume_step.unwrap_or(0);
        let tensorboard = if config.report_to.tensorboard {
            Some(TbWriter::create(&tb_dir, start_step + 1)?)
        } else {
            None
        };
        let now = Instant::now();
        let mut logger = MetricsLogger {
            output_dir: dir.clone(),
            total_steps: config.total_steps,
            jsonl,
            tensorboard,
            progress: Progress::new(
                config.progress,
                config.total_steps,
                start_step,
                config.log_every,
            ),
            history: Vec::with_capacity(config.total_steps.min(1 << 20) as usize),
            loss_ema: 0.0,
            loss_ema_n: 0,
            started: now,
            last_step_at: now,
            steps_this_session: 0,
            elapsed_before: 0.0,
            total_tokens: 0,
        };
        for r in &kept {
            logger.history.push((r.step, r.loss));
            logger.smooth(r.loss);
        }
        if let Some(last) = kept.last() {
            logger.elapsed_before = if last.elapsed.is_finite() {
                last.elapsed
            } else {
                0.0
            };
            logger.total_tokens = last.total_tokens;
        }
        Ok(logger)
    }

    /// Records one optimizer step everywhere and returns the line written to `loss_data.jsonl`.
    pub fn log_step(&mut self, m: &StepMetrics) -> Result<StepRecord, MetricsError> {
        if let Some(name) = m
            .extra
            .keys()
            .find(|k| jsonl::RESERVED_KEYS.contains(&k.as_str()))
        {
            return Err(MetricsError::ReservedName { name: name.clone() });
        }
        let now = Instant::now();
        // The step's wall time runs from the previous step's end, so data loading is included.
        let step_secs = (now - self.last_step_at).as_secs_f64().max(1e-9);
        self.last_step_at = now;
        self.steps_this_session += 1;
        self.total_tokens += m.tokens;
        let tokens_per_sec = m.tokens as f64 / step_secs;
        let session_secs = (now - self.started).as_secs_f64();
        let record = StepRecord {
            step: m.step,
            epoch: m.epoch,
            loss: m.loss,
            lr: m.lr,
            grad_norm: m.grad_norm,
            tokens: m.tokens,
            total_tokens: self.total_tokens,
            tokens_per_sec,
            kt_s: tokens_per_sec / 1000.0,
            elapsed: self.elapsed_before + session_secs,
            timestamp: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            extra: m.extra.clone(),
        };
        self.jsonl.append(&record)?;
        if let Some(tb) = &mut self.tensorboard {
            let mut scalars: Vec<(String, f64)> = vec![
                ("train/loss".into(), m.loss),
                ("train/lr".into(), m.lr),
                // The Python tool's tag, so dashboards built for it keep working.
                ("train/throughput_kt_s".into(), record.kt_s),
                ("train/epoch".into(), m.epoch as f64),
            ];
            if let Some(g) = m.grad_norm {
                scalars.push(("train/grad_norm".into(), g));
            }
            scalars.extend(m.extra.iter().map(|(k, v)| (format!("train/{k}"), *v)));
            // A NaN point adds nothing to a chart but can wreck its y-axis; loss_data.jsonl keeps
            // the record of skipped steps.
            let scalars: Vec<(&str, f64)> = scalars
                .iter()
                .filter(|(_, v)| v.is_finite())
                .map(|(k, v)| (k.as_str(), *v))
                .collect();
            tb.add_scalars_at(record.timestamp, m.step, &scalars)?;
        }
        self.history.push((m.step, m.loss));
        self.smooth(m.loss);

        let eta = (self.total_steps > 0).then(|| {
            let per_step = session_secs / self.steps_this_session as f64;
            per_step * self.total_steps.saturating_sub(m.step) as f64
        });
        self.progress.update(&ProgressLine {
            step: m.step,
            total_steps: self.total_steps,
            epoch: m.epoch,
            loss: m.loss,
            loss_avg: self.smoothed_loss(),
            lr: m.lr,
            tokens_per_sec,
            elapsed: record.elapsed,
            eta,
        });
        Ok(record)
    }

    /// Prints a one-off message above the progress bar (or as its own line): a skipped NaN step,
    /// a checkpoint saved, an epoch finished.
    pub fn event(&mut self, msg: impl AsRef<str>) {
        self.progress.event(msg.as_ref());
    }

    /// (step, loss) of every step logged in this run, resumed part included.
    pub fn history(&self) -> &[(u64, f64)] {
        &self.history
    }

    /// The `loss_data.jsonl` being written.
    pub fn jsonl_path(&self) -> &Path {
        self.jsonl.path()
    }

    /// The TensorBoard event file being written, when `report_to` asked for one.
    pub fn tensorboard_path(&self) -> Option<&Path> {
        self.tensorboard.as_ref().map(TbWriter::path)
    }

    /// Ends the run's logging: leaves the bar drawn and writes `<output_dir>/loss_curve.png` from
    /// the whole run's losses. Returns the image's path, `None` when no step had a finite loss.
    pub fn finish(mut self) -> Result<Option<PathBuf>, MetricsError> {
        self.progress.finish();
        let path = self.output_dir.join(LOSS_CURVE_FILE);
        let name = self
            .output_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let title = if name.is_empty() {
            "Training loss".to_string()
        } else {
            format!("Training loss — {name}")
        };
        Ok(plot_loss_curve(&self.history, &path, &title)?.then_some(path))
    }

    fn smooth(&mut self, loss: f64) {
        if loss.is_finite() {
            self.loss_ema = CONSOLE_EMA * self.loss_ema + (1.0 - CONSOLE_EMA) * loss;
            self.loss_ema_n += 1;
        }
    }

    /// The debiased EMA of the finite losses so far (NaN before the first).
    fn smoothed_loss(&self) -> f64 {
        if self.loss_ema_n == 0 {
            f64::NAN
        } else {
            self.loss_ema / (1.0 - CONSOLE_EMA.powi(self.loss_ema_n))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_to_parses_the_seed_strings() {
        let tb = ReportTo { tensorboard: true };
        assert_eq!("".parse::<ReportTo>().unwrap(), ReportTo::default());
        assert_eq!("none".parse::<ReportTo>().unwrap(), ReportTo::default());
        assert_eq!("tensorboard".parse::<ReportTo>().unwrap(), tb);
        assert_eq!("none, TensorBoard".parse::<ReportTo>().unwrap(), tb);
        let err = "swanlab".parse::<ReportTo>().unwrap_err().to_string();
        assert!(
            err.contains("`swanlab`") && err.contains("tensorboard"),
            "{err}"
        );
        let json: ReportTo = serde_json::from_str("\"tensorboard\"").unwrap();
        assert_eq!(json, tb);
        assert_eq!(serde_json::to_string(&tb).unwrap(), "\"tensorboard\"");
    }

    #[test]
    fn reserved_extra_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = MetricsConfig {
            output_dir: dir.path().to_path_buf(),
            progress: ProgressMode::Off,
            ..Default::default()
        };
        let mut logger = MetricsLogger::new(&config).unwrap();
        let m = StepMetrics {
            step: 1,
            extra: BTreeMap::from([("loss".to_string(), 1.0)]),
            ..Default::default()
        };
        let err = logger.log_step(&m).unwrap_err();
        assert!(matches!(err, MetricsError::ReservedName { .. }), "{err}");
    }

    #[test]
    fn zero_log_every_is_refused() {
        let config = MetricsConfig {
            log_every: 0,
            ..Default::default()
        };
        let err = MetricsLogger::new(&config).err().unwrap().to_string();
        assert_eq!(err, "log_every: must be at least 1");
    }
}
