//! `loss_data.jsonl`: one JSON object per optimizer step, appended and flushed line by line.
//!
//! The name and the `loss` / `kt_s` fields follow the Python tool (spec §11.7), so scripts written
//! for its file keep working; the other fields are ours. A line looks like
//!
//! ```text
//! {"step":12,"epoch":0,"loss":2.31,"lr":0.0001,"grad_norm":0.84,"tokens":1024,"total_tokens":12288,
//!  "tokens_per_sec":5120.0,"kt_s":5.12,"elapsed":2.4,"timestamp":1764250000.5,"l2wrap":0.01}
//! ```
//!
//! with any extra named scalars of the step (`l2wrap` here) as further top-level keys. Non-finite
//! numbers (a NaN loss) are written as `null`, since JSON has no NaN, and read back as NaN.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::MetricsError;

/// The file name inside the output directory, as in the Python tool.
pub const LOSS_DATA_FILE: &str = "loss_data.jsonl";

/// One line of `loss_data.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    /// Optimizer step, counted from 1 over the whole run (resumes included).
    pub step: u64,
    /// Epoch as the trainer counts it.
    pub epoch: u64,
    /// Training loss of the step (the mean over its micro-batches when accumulating).
    pub loss: f64,
    /// Learning rate of the step (of the base parameter group).
    pub lr: f64,
    /// Global gradient norm before clipping, when the trainer computed it.
    pub grad_norm: Option<f64>,
    /// Tokens processed by this step.
    pub tokens: u64,
    /// Tokens processed since the start of the run (resumes included).
    pub total_tokens: u64,
    /// `tokens` over the wall time of the step (data loading included).
    pub tokens_per_sec: f64,
    /// `tokens_per_sec / 1000`: the Python tool's field, kept for scripts that read it.
    pub kt_s: f64,
    /// Seconds of training since the start of the run (time between a crash and its resume is not
    /// counted).
    pub elapsed: f64,
    /// Wall-clock time of the line, seconds since the Unix epoch.
    pub timestamp: f64,
    /// Further named scalars of the step, written as top-level keys.
    #[serde(flatten)]
    pub extra: BTreeMap<String, f64>,
}

/// The keys of the fixed fields: an extra scalar must not reuse one, or the line would hold the
/// key twice.
pub const RESERVED_KEYS: [&str; 11] = [
    "step",
    "epoch",
    "loss",
    "lr",
    "grad_norm",
    "tokens",
    "total_tokens",
    "tokens_per_sec",
    "kt_s",
    "elapsed",
    "timestamp",
];

impl StepRecord {
    /// Parses one line; `None` when it is not a JSON object with an unsigned integer `step` (a
    /// line cut short by a crash, or foreign content). Missing fields take neutral values, so files
    /// with fewer fields (such as the Python tool's) still load.
    pub fn from_json_line(line: &str) -> Option<StepRecord> {
        let Value::Object(map) = serde_json::from_str::<Value>(line).ok()? else {
            return None;
        };
        let num = |key: &str| match map.get(key) {
            Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
            _ => f64::NAN,
        };
        let int = |key: &str| map.get(key).and_then(Value::as_u64).unwrap_or(0);
        let extra = map
            .iter()
            .filter(|(k, _)| !RESERVED_KEYS.contains(&k.as_str()))
            .filter_map(|(k, v)| match v {
                Value::Number(n) => Some((k.clone(), n.as_f64()?)),
                Value::Null => Some((k.clone(), f64::NAN)),
                _ => None,
            })
            .collect();
        Some(StepRecord {
            step: map.get("step")?.as_u64()?,
            epoch: int("epoch"),
            loss: num("loss"),
            lr: num("lr"),
            grad_norm: map.get("grad_norm").and_then(Value::as_f64),
            tokens: int("tokens"),
            total_tokens: int("total_tokens"),
            tokens_per_sec: num("tokens_per_sec"),
            kt_s: num("kt_s"),
            elapsed: num("elapsed"),
            timestamp: num("timestamp"),
            extra,
        })
    }

    fn to_json_line(&self) -> String {
        // Cannot fail: only numbers and string keys. serde_json writes non-finite floats as null.
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }
}

/// Appends [`StepRecord`]s to a JSON Lines file.
#[derive(Debug)]
pub struct JsonlWriter {
    path: PathBuf,
    file: File,
}

impl JsonlWriter {
    /// Starts a fresh file at `path`, replacing any old one (a new run owns its log, as in the
    /// Python tool, which deletes it at start).
    pub fn create(path: &Path) -> Result<Self, MetricsError> {
        let file = File::create(path).map_err(|e| MetricsError::io(path, e))?;
        Ok(JsonlWriter {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Reopens `path` for a run resumed after `resumed_step`: lines with a greater step (written
    /// after the checkpoint, about to be redone) and unreadable lines (the half line a crash can
    /// leave) are dropped, so the finished file has each step once. Returns the kept records, in
    /// file order. A missing file is created empty.
    ///
    /// The kept lines go to a temporary file renamed over the old one, so a crash during the
    /// rewrite leaves either the old file or the new one, never a mix.
    pub fn resume(path: &Path, resumed_step: u64) -> Result<(Self, Vec<StepRecord>), MetricsError> {
        let text = match std::fs::read(path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(MetricsError::io(path, e)),
        };
        let mut kept_text = String::with_capacity(text.len());
        let mut kept = Vec::new();
        for line in text.lines() {
            if let Some(record) = StepRecord::from_json_line(line) {
                if record.step <= resumed_step {
                    kept_text.push_str(line);
                    kept_text.push('\n');
                    kept.push(record);
                }
            }
        }
        let tmp = path.with_extension("jsonl.tmp");
        std::fs::write(&tmp, kept_text).map_err(|e| MetricsError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| MetricsError::io(path, e))?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| MetricsError::io(path, e))?;
        let writer = JsonlWriter {
            path: path.to_path_buf(),
            file,
        };
        Ok((writer, kept))
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line with a single `write_all` and no user-space buffer: once this returns the
    /// line is in the kernel's hands and survives a crash (even `kill -9`) of this process.
    pub fn append(&mut self, record: &StepRecord) -> Result<(), MetricsError> {
        self.file
            .write_all(record.to_json_line().as_bytes())
            .map_err(|e| MetricsError::io(&self.path, e))
    }
}

/// Reads every readable record of a `loss_data.jsonl` file (unreadable lines are skipped), e.g. to
/// plot a finished run.
pub fn read_records(path: &Path) -> Result<Vec<StepRecord>, MetricsError> {
    let bytes = std::fs::read(path).map_err(|e| MetricsError::io(path, e))?;
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(StepRecord::from_json_line)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(step: u64, loss: f64) -> StepRecord {
        StepRecord {
            step,
            epoch: 0,
            loss,
            lr: 1e-4,
            grad_norm: Some(0.5),
            tokens: 100,
            total_tokens: 100 * step,
            tokens_per_sec: 1000.0,
            kt_s: 1.0,
            elapsed: step as f64,
            timestamp: 1.7e9,
            extra: BTreeMap::from([("l2wrap".to_string(), 0.25)]),
        }
    }

    #[test]
    fn round_trips_with_extras_flattened() {
        let r = record(3, 2.5);
        let line = r.to_json_line();
        assert!(line.ends_with('\n') && !line.trim_end().contains('\n'));
        assert!(
            line.starts_with(r#"{"step":3,"epoch":0,"loss":2.5,"#),
            "{line}"
        );
        assert!(line.contains(r#""l2wrap":0.25"#), "{line}");
        assert_eq!(StepRecord::from_json_line(&line), Some(r));
    }

    #[test]
    fn nan_is_written_as_null_and_read_back_as_nan() {
        let mut r = record(1, f64::NAN);
        r.grad_norm = None;
        let line = r.to_json_line();
        assert!(line.contains(r#""loss":null"#), "{line}");
        let back = StepRecord::from_json_line(&line).unwrap();
        assert!(back.loss.is_nan());
        assert_eq!(back.grad_norm, None);
    }

    #[test]
    fn reads_the_python_tools_lines() {
        let r =
            StepRecord::from_json_line(r#"{"step": 4, "loss": 3.0, "t_cost": 0.5, "kt_s": 2.0}"#)
                .unwrap();
        assert_eq!((r.step, r.loss, r.kt_s), (4, 3.0, 2.0));
        assert_eq!(r.extra.get("t_cost"), Some(&0.5));
        // The Python file has no step field; such lines cannot be placed and are not records.
        assert_eq!(StepRecord::from_json_line(r#"{"loss": 3.0}"#), None);
        assert_eq!(StepRecord::from_json_line(r#"{"step": 4, "lo"#), None);
    }

    #[test]
    fn resume_drops_later_steps_and_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOSS_DATA_FILE);
        let mut w = JsonlWriter::create(&path).unwrap();
        for step in 1..=5 {
            w.append(&record(step, 1.0 / step as f64)).unwrap();
        }
        drop(w);
        // A crash in the middle of a write leaves a torn line.
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(r#"{"step":6,"epo"#);
        std::fs::write(&path, text).unwrap();

        let (mut w, kept) = JsonlWriter::resume(&path, 3).unwrap();
        assert_eq!(kept.iter().map(|r| r.step).collect::<Vec<_>>(), [1, 2, 3]);
        for step in 4..=6 {
            w.append(&record(step, 0.1)).unwrap();
        }
        let steps: Vec<u64> = read_records(&path)
            .unwrap()
            .iter()
            .map(|r| r.step)
            .collect();
        assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
        assert!(!path.with_extension("jsonl.tmp").exists());
    }

    #[test]
    fn resume_without_a_file_starts_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOSS_DATA_FILE);
        let (mut w, kept) = JsonlWriter::resume(&path, 10).unwrap();
        assert!(kept.is_empty());
        w.append(&record(11, 1.0)).unwrap();
        assert_eq!(read_records(&path).unwrap().len(), 1);
    }

    #[test]
    fn io_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join(LOSS_DATA_FILE);
        let err = JsonlWriter::create(&path).unwrap_err();
        assert!(err.to_string().contains("missing-dir"), "{err}");
    }
}
