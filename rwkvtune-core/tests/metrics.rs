//! Metrics end to end: the logger's files, a resumed run's logs, and TensorBoard reading our event
//! files (through `scripts/check-tensorboard`, which uses the real `tensorboard` pip package).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use rwkvtune_core::metrics::{
    read_records, MetricsConfig, MetricsLogger, ProgressMode, ReportTo, StepMetrics, TbWriter,
    LOSS_CURVE_FILE, LOSS_DATA_FILE, TENSORBOARD_DIR,
};
use serde_json::Value;

/// Runs `scripts/check-tensorboard` on `logdir` and returns its JSON. Fails (never skips) when
/// Python or pip is missing: a check that quietly does not run proves nothing.
fn tensorboard_read(logdir: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/check-tensorboard");
    let out = Command::new(&script)
        .arg(logdir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "could not run {}: {e}\n(the TensorBoard check needs bash, python3 and pip)",
                script.display()
            )
        });
    assert!(
        out.status.success(),
        "{} failed ({}); it needs python3 with venv and pip, and PyPI to install tensorboard \
         the first time.\nstderr:\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check-tensorboard printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `(step, value)` of one tag from the script's output.
fn scalars(read: &Value, tag: &str) -> Vec<(u64, f64)> {
    read["scalars"][tag]
        .as_array()
        .unwrap_or_else(|| panic!("TensorBoard found no scalars for `{tag}`: {read}"))
        .iter()
        .map(|e| (e[0].as_u64().unwrap(), e[2].as_f64().unwrap()))
        .collect()
}

fn step(step: u64, loss: f64) -> StepMetrics {
    StepMetrics {
        step,
        epoch: (step - 1) / 10,
        loss,
        lr: 1e-4 * step as f64,
        grad_norm: Some(0.5),
        tokens: 256,
        extra: BTreeMap::from([("l2wrap".to_string(), 0.125)]),
    }
}

#[test]
fn tensorboard_reads_our_scalars_and_new_files_hide_replaced_steps() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = TbWriter::create(dir.path(), 1).unwrap();
    for s in 1..=5u64 {
        first
            .add_scalars(s, &[("train/loss", 10.0 - s as f64), ("train/lr", 0.5)])
            .unwrap();
    }
    // The run "crashed" after step 5 with its checkpoint at step 3: steps 4 and 5 are redone.
    let mut resumed = TbWriter::create(dir.path(), 4).unwrap();
    for s in 4..=6u64 {
        resumed
            .add_scalars(s, &[("train/loss", 100.0 + s as f64)])
            .unwrap();
    }
    drop((first, resumed));

    let read = tensorboard_read(dir.path());
    assert_eq!(read["file_version"].as_f64(), Some(2.0), "{read}");
    assert_eq!(
        scalars(&read, "train/loss"),
        [
            (1, 9.0),
            (2, 8.0),
            (3, 7.0),
            (4, 104.0),
            (5, 105.0),
            (6, 106.0)
        ]
    );
    assert_eq!(scalars(&read, "train/lr"), [(1, 0.5), (2, 0.5), (3, 0.5)]);

    // A fresh run into the same directory replaces the old curves instead of mixing with them.
    // (It waits for the next second: a file named in the same second would sort by pid.)
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut fresh = TbWriter::create(dir.path(), 1).unwrap();
    for s in 1..=2u64 {
        fresh.add_scalars(s, &[("train/loss", s as f64)]).unwrap();
    }
    drop(fresh);
    let read = tensorboard_read(dir.path());
    assert_eq!(scalars(&read, "train/loss"), [(1, 1.0), (2, 2.0)]);
    // The tag survives the purge, with no points left.
    let lr = read["scalars"]["train/lr"].as_array();
    assert!(lr.is_none_or(|v| v.is_empty()), "{read}");
}

#[test]
fn logger_writes_every_file_and_a_resumed_run_has_each_step_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut config = MetricsConfig {
        output_dir: out.clone(),
        report_to: "tensorboard".parse::<ReportTo>().unwrap(),
        total_steps: 30,
        log_every: 5,
        progress: ProgressMode::Off,
        resume_step: None,
    };

    // First process: 20 steps, one of them a skipped NaN step; "killed" without finish().
    let mut logger = MetricsLogger::new(&config).unwrap();
    for s in 1..=20u64 {
        let loss = if s == 7 { f64::NAN } else { 4.0 / s as f64 };
        let rec = logger.log_step(&step(s, loss)).unwrap();
        assert_eq!(rec.total_tokens, 256 * s);
        assert!(rec.tokens_per_sec > 0.0 && rec.tokens_per_sec.is_finite());
    }
    let jsonl = out.join(LOSS_DATA_FILE);
    let lines = std::fs::read_to_string(&jsonl).unwrap();
    assert_eq!(lines.lines().count(), 20);
    assert!(lines.lines().nth(6).unwrap().contains(r#""loss":null"#));
    let elapsed_at_12 = read_records(&jsonl).unwrap()[11].elapsed;
    drop(logger);

    // Second process: resumes from the checkpoint of step 12 and runs to 30.
    config.resume_step = Some(12);
    let mut logger = MetricsLogger::new(&config).unwrap();
    assert_eq!(logger.history().len(), 12);
    for s in 13..=30u64 {
        let rec = logger.log_step(&step(s, 0.1)).unwrap();
        assert_eq!(rec.total_tokens, 256 * s, "token count continues");
        assert!(rec.elapsed >= elapsed_at_12, "elapsed continues");
    }
    let png = logger.finish().unwrap().expect("a loss curve");
    assert_eq!(png, out.join(LOSS_CURVE_FILE));
    assert_eq!(&std::fs::read(&png).unwrap()[..4], b"\x89PNG");

    let records = read_records(&jsonl).unwrap();
    let steps: Vec<u64> = records.iter().map(|r| r.step).collect();
    assert_eq!(steps, (1..=30).collect::<Vec<_>>());
    assert!(records[6].loss.is_nan());
    assert_eq!(records[14].loss, 0.1, "step 15 comes from the resumed run");
    assert_eq!(records[14].extra.get("l2wrap"), Some(&0.125));
    assert_eq!(records[14].grad_norm, Some(0.5));

    let read = tensorboard_read(&out.join(TENSORBOARD_DIR));
    let loss = scalars(&read, "train/loss");
    let tb_steps: Vec<u64> = loss.iter().map(|p| p.0).collect();
    // Step 7's NaN is not sent to TensorBoard; every other step appears once.
    let want: Vec<u64> = (1..=30).filter(|&s| s != 7).collect();
    assert_eq!(tb_steps, want);
    assert!(loss.iter().all(|&(s, v)| s <= 12 || (v - 0.1).abs() < 1e-6));
    for tag in [
        "train/lr",
        "train/grad_norm",
        "train/throughput_kt_s",
        "train/epoch",
        "train/l2wrap",
    ] {
        assert_eq!(scalars(&read, tag).len(), 30, "{tag}");
    }
}

#[test]
fn logger_without_tensorboard_writes_no_event_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = MetricsConfig {
        output_dir: dir.path().to_path_buf(),
        report_to: "none".parse().unwrap(),
        progress: ProgressMode::Off,
        ..Default::default()
    };
    let mut logger = MetricsLogger::new(&config).unwrap();
    assert!(logger.tensorboard_path().is_none());
    logger.log_step(&step(1, 1.0)).unwrap();
    logger.event("checkpoint saved");
    logger.finish().unwrap();
    assert!(!dir.path().join(TENSORBOARD_DIR).exists());
    assert!(dir.path().join(LOSS_CURVE_FILE).exists());
}
