//! `sft`, `pretrain` and `eval` as processes: a real SIGKILL and resume, and learning that shows.

use crate::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Pre-tokenized rows for the 1000-token reference model.
fn write_rows(path: &Path, n: usize, len: usize) {
    let mut x: u64 = 12345;
    let mut text = String::new();
    for _ in 0..n {
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % 999 + 1
        };
        let ids: Vec<u64> = (0..len).map(|_| next()).collect();
        let labels: Vec<i64> = (0..len)
            .map(|t| {
                if t < 2 {
                    -100
                } else {
                    (ids[t] as i64 * 3) % 1000
                }
            })
            .collect();
        text += &serde_json::json!({"input_ids": ids, "labels": labels}).to_string();
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

fn sft_args(data: &Path, out: &Path) -> Vec<String> {
    let model = reference().join("models/u3x96h32");
    [
        "--threads",
        "1",
        "sft",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--ctx-len",
        "32",
        "--micro-bsz",
        "2",
        "--epoch-count",
        "2",
        "--lr-init",
        "1e-3",
        "--lr-final",
        "1e-4",
        "--warmup-steps",
        "3",
        "--set",
        "save_every_n_batches=3",
        "--set",
        "save_total_limit=3",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Runs `args(dir)` as a process and requires success; returns stdout.
fn run_ok(args: &[String]) -> String {
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The kill -9 experiment: `args(a)` runs uninterrupted; `args(b)` is SIGKILLed as soon as its
/// first checkpoint (`rwkv7-batch3`) exists, `after_kill(b)` runs, and `b` resumes with
/// `--resume latest`. Returns (a, b).
fn uninterrupted_and_killed_then_resumed(
    tmp: &Path,
    args: impl Fn(&Path) -> Vec<String>,
    after_kill: impl Fn(&Path),
) -> (PathBuf, PathBuf) {
    let a = tmp.join("a");
    run_ok(&args(&a));

    let b = tmp.join("b");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rwkvtune"))
        .args(args(&b))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !b.join("rwkv7-batch3").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL: no cleanup, no flush
    child.wait().unwrap();
    after_kill(&b);
    assert!(
        !b.join("final").exists(),
        "the run finished before it was killed; the test proves nothing"
    );

    let mut resume = args(&b);
    resume.extend(["--resume".to_string(), "latest".to_string()]);
    run_ok(&resume);
    (a, b)
}

#[test]
fn kill_dash_nine_then_resume_gives_bit_identical_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("rows.jsonl");
    write_rows(&data, 60, 24); // 30 steps per epoch, 60 in all
    let (a, b) =
        uninterrupted_and_killed_then_resumed(tmp.path(), |out| sft_args(&data, out), |_| {});
    let wa = std::fs::read(a.join("final/model.pth")).unwrap();
    let wb = std::fs::read(b.join("final/model.pth")).unwrap();
    assert!(
        wa == wb,
        "weights after kill -9 + resume differ from the uninterrupted run"
    );
    // The interrupted run's log has every step once.
    let lines = std::fs::read_to_string(b.join("loss_data.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 60);
}

#[test]
fn sft_on_the_bundled_instructions_lowers_held_out_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    ok(&[
        "create-hub",
        "--output-dir",
        model.to_str().unwrap(),
        "--config-name",
        "rwkv7-demo",
        "--save-format",
        "safetensors",
    ]);
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/data");
    let eval = |m: &Path| -> f64 {
        let out = ok(&[
            "eval",
            "--model",
            m.to_str().unwrap(),
            "--data",
            data.join("sft_eval.jsonl").to_str().unwrap(),
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(v["perplexity"].as_f64().unwrap() > 1.0 && v["tokens"].as_u64().unwrap() > 0);
        v["loss"].as_f64().unwrap()
    };
    let before = eval(&model);
    let out_dir = tmp.path().join("sft");
    ok(&[
        "sft",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.join("sft_train.jsonl").to_str().unwrap(),
        "--output-dir",
        out_dir.to_str().unwrap(),
        "--ctx-len",
        "64",
        "--micro-bsz",
        "4",
        "--epoch-count",
        "1",
        "--epoch-steps",
        "20",
        "--lr-init",
        "3e-3",
        "--lr-final",
        "3e-4",
        "--warmup-steps",
        "3",
        "--quiet",
        "--set",
        "report_to=tensorboard",
    ]);
    let after = eval(&out_dir.join("final"));
    assert!(
        after < before - 3.0,
        "held-out loss {before:.3} -> {after:.3}"
    );
    for f in [
        "loss_data.jsonl",
        "loss_curve.png",
        "run_config.json",
        "rwkv7-epoch1/trainer_state/state.json",
    ] {
        assert!(out_dir.join(f).exists(), "{f} missing");
    }
    assert!(std::fs::read_dir(out_dir.join("tensorboard"))
        .unwrap()
        .next()
        .is_some());
    // run_config.json reproduces the run's settings as a --config input.
    let cfg = out_dir.join("run_config.json");
    let err = fails(&[
        "sft",
        "--model",
        model.to_str().unwrap(),
        "--data",
        "/no/data.jsonl",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(err.contains("/no/data.jsonl"), "{err}");
}

#[test]
fn training_refuses_bad_data_and_bad_config_before_starting() {
    let tmp = tempfile::tempdir().unwrap();
    let model = reference().join("models/u3x96h32");
    let data = tmp.path().join("bad.jsonl");
    std::fs::write(&data, "{\"input_ids\": [1, 2, 3], \"labels\": [2, 3, 4]}\n{\"input_ids\": [1, 2], \"labels\": [2]}\n").unwrap();
    let out = tmp.path().join("o");
    let err = fails(&[
        "sft",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("bad.jsonl") && err.contains("line 2"), "{err}");
    assert!(!out.exists(), "nothing may be written for a refused run");
    std::fs::write(
        &data,
        "{\"input_ids\": [1, 2, 3], \"labels\": [2, 3, 4000]}\n",
    )
    .unwrap();
    let err = fails(&[
        "sft",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("4000"), "{err}");
    let err = fails(&[
        "sft",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--set",
        "lr_intt=3",
    ]);
    assert!(err.contains("lr_intt"), "{err}");
}

#[test]
fn lora_sft_then_merge_gives_the_adapter_model_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("rows.jsonl");
    write_rows(&data, 16, 24);
    let model = reference().join("models/u3x96h32");
    let out = tmp.path().join("lora");
    ok(&[
        "sft",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--ctx-len",
        "32",
        "--micro-bsz",
        "4",
        "--epoch-count",
        "2",
        "--lr-init",
        "1e-2",
        "--lora",
        "--lora-r",
        "8",
        "--lora-alpha",
        "16",
        "--set",
        "save_format=safetensors",
        "--quiet",
    ]);
    let fin = out.join("final");
    assert!(
        fin.join("adapter_config.json").is_file()
            && fin.join("adapter_model.safetensors").is_file()
    );
    assert!(
        !fin.join("model.safetensors").exists(),
        "lora_only saves adapters only"
    );
    let eval = |args: &[&str]| -> f64 {
        let v: serde_json::Value = serde_json::from_str(&ok(args)).unwrap();
        v["loss"].as_f64().unwrap()
    };
    let d = data.to_str().unwrap();
    let base = eval(&["eval", "--model", model.to_str().unwrap(), "--data", d]);
    let adapted = eval(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--lora",
        fin.to_str().unwrap(),
        "--data",
        d,
    ]);
    assert!(
        adapted < base - 0.05,
        "LoRA training must lower the training loss: {base} -> {adapted}"
    );
    let merged = tmp.path().join("merged");
    ok(&[
        "merge-lora",
        "-b",
        model.to_str().unwrap(),
        "-l",
        fin.to_str().unwrap(),
        "-o",
        merged.to_str().unwrap(),
        "--precision",
        "fp32",
    ]);
    let m = eval(&["eval", "--model", merged.to_str().unwrap(), "--data", d]);
    assert!(
        (m - adapted).abs() < 1e-4,
        "merged {m} vs adapter {adapted}"
    );
}

/// Replaces the value of `flag` in `args`.
fn set_flag(args: &mut [String], flag: &str, value: &str) {
    let at = args.iter().position(|a| a == flag).expect("flag present");
    args[at + 1] = value.to_string();
}

/// The per-step losses of a run's `loss_data.jsonl`.
fn step_losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("loss_data.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

#[test]
fn two_data_parallel_ranks_train_exactly_like_one_process_accumulating_two_micro_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("rows.jsonl");
    write_rows(&data, 26, 24); // 13 micro-batches of 2: the 13th is left out with 2 ranks
    let run = |name: &str, extra: &[&str]| {
        let out_dir = tmp.path().join(name);
        let mut args = sft_args(&data, &out_dir);
        set_flag(&mut args, "--epoch-count", "1");
        args.extend(
            [
                "--set",
                "grad_clip=0.05",
                "--set",
                "save_every_n_batches=0",
                "--set",
                "epoch_steps=12",
            ]
            .iter()
            .chain(extra)
            .map(|s| s.to_string()),
        );
        (out_dir, run_ok(&args))
    };
    let (ddp, stdout) = run("ddp", &["--devices", "2"]);
    assert!(
        stdout.contains("trained 6 steps"),
        "rank 0 reports once: {stdout}"
    );
    let (single, _) = run("single", &["--set", "accumulate_grad_batches=2"]);
    let (l_ddp, l_single) = (step_losses(&ddp), step_losses(&single));
    assert_eq!(l_ddp.len(), 6);
    assert_eq!(l_ddp, l_single, "per-step losses differ");
    let w_ddp = std::fs::read(ddp.join("final/model.pth")).unwrap();
    let w_single = std::fs::read(single.join("final/model.pth")).unwrap();
    assert!(
        w_ddp == w_single,
        "2 ranks must give the weights of 1 process accumulating 2 micro-batches"
    );
    // Exactly one writer: one epoch checkpoint, no leftovers of a second rank.
    let names: Vec<String> = std::fs::read_dir(&ddp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("rwkv7-") || n.starts_with('.'))
        .collect();
    assert_eq!(names, vec!["rwkv7-epoch1".to_string()]);

    // A checkpoint of the 2-rank run resumes only on 2 ranks.
    let mut resume = sft_args(&data, &ddp);
    resume.extend(
        ["--set", "epoch_steps=12", "--resume", "latest"]
            .iter()
            .map(|s| s.to_string()),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_rwkvtune"))
        .args(&resume)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("resume with devices = 2"),
        "{err}"
    );
}

#[test]
fn data_parallel_refuses_what_it_cannot_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("rows.jsonl");
    write_rows(&data, 2, 24); // one micro-batch of 2: nothing for a second rank
    let mut args = sft_args(&data, &tmp.path().join("out"));
    args.extend(["--devices", "2"].iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let err = fails(&args);
    assert!(err.contains("cannot feed 2 devices"), "{err}");
    assert!(err.contains("the other ranks were stopped"), "{err}");

    let mut args = sft_args(&data, &tmp.path().join("out2"));
    args.extend(
        ["--devices", "2", "--set", "strategy=single"]
            .iter()
            .map(|s| s.to_string()),
    );
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let err = fails(&args);
    assert!(
        err.contains("strategy `single` runs on one device"),
        "{err}"
    );
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn kill_dash_nine_of_the_launcher_stops_every_rank_and_the_run_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("rows.jsonl");
    write_rows(&data, 60, 24); // 30 micro-batches: 15 steps per epoch on 2 ranks, 30 in all
    let args = |out: &Path| {
        let mut a = sft_args(&data, out);
        a.extend(["--devices", "2"].iter().map(|s| s.to_string()));
        a
    };
    // The launcher cannot stop its ranks itself after a SIGKILL.
    let ranks_die_with_the_launcher = |b: &Path| {
        let needle = b.to_str().unwrap();
        let t0 = Instant::now();
        while !processes_mentioning(needle).is_empty() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "ranks outlived their launcher: {:?}",
                processes_mentioning(needle)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (a, b) =
        uninterrupted_and_killed_then_resumed(tmp.path(), args, ranks_die_with_the_launcher);
    let wa = std::fs::read(a.join("final/model.pth")).unwrap();
    let wb = std::fs::read(b.join("final/model.pth")).unwrap();
    assert!(
        wa == wb,
        "2-rank weights after kill -9 + resume differ from the uninterrupted run"
    );
    let lines = std::fs::read_to_string(b.join("loss_data.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 30, "each step logged once");
}
