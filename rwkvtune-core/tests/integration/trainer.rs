//! The training loop: infctx gradients, checkpoints (rotation, exact resume), bad-step handling.

use crate::common::*;
use rwkvtune_core::data::{load_dataset, Batch, DataOptions, Dataset, TaskKind};
use rwkvtune_core::hub::AutoModel;
use rwkvtune_core::model::Rwkv7;
use rwkvtune_core::tokenizer::AutoTokenizer;
use rwkvtune_core::train::{forward_backward, Task, TrainConfig, Trainer};
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn small_model() -> Rwkv7 {
    AutoModel::from_pretrained(&model_dir("u3x96h32"), Device::Cpu, Kind::Float).unwrap()
}

/// Pre-tokenized rows for the 1000-token model: `n` samples of `len` positions, prompt masked.
fn write_rows(path: &Path, n: usize, len: usize, seed: u64) {
    let mut x = seed;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) % 999 + 1
    };
    let mut text = String::new();
    for _ in 0..n {
        let ids: Vec<u64> = (0..len).map(|_| next()).collect();
        let labels: Vec<i64> = (0..len)
            .map(|t| if t < 3 { -100 } else { next() as i64 })
            .collect();
        text += &serde_json::json!({"input_ids": ids, "labels": labels}).to_string();
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

fn dataset(path: &Path, ctx: usize) -> Dataset {
    let opts = DataOptions {
        ctx_len: ctx,
        ..DataOptions::default()
    };
    load_dataset(path, TaskKind::Sft, &AutoTokenizer::builtin(), 1000, &opts).unwrap()
}

fn config(proj: &Path) -> TrainConfig {
    let mut c = TrainConfig::sft();
    c.proj_dir = proj.display().to_string();
    c.ctx_len = 32;
    c.micro_bsz = 2;
    c.epoch_count = 2;
    c.lr_init = 1e-3;
    c.lr_final = 1e-4;
    c.warmup_steps = 2;
    c.save_every_n_batches = 2;
    c.save_total_limit = 0;
    c
}

fn grads_of(model: &Rwkv7) -> Vec<(String, Tensor)> {
    model
        .named_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.grad().copy()))
        .collect()
}

fn reset(model: &Rwkv7) {
    for (_, mut t) in model.named_tensors() {
        t.zero_grad();
        let _ = t.set_requires_grad(true);
    }
}

#[test]
fn full_bptt_infctx_gradients_equal_normal_mode() {
    let model = small_model();
    let (b, t) = (2usize, 40usize);
    let ids: Vec<i64> = (0..b * t)
        .map(|i| ((i * 37 + 11) % 999) as i64 + 1)
        .collect();
    let mut labels: Vec<i64> = ids.iter().map(|i| (i * 7) % 1000).collect();
    for l in labels.iter_mut().take(5) {
        *l = -100;
    }
    let batch = Batch {
        input_ids: ids,
        labels,
        batch: b,
        seq_len: t,
        example_indices: vec![0, 1],
        lengths: vec![t, t],
    };
    let mut cfg = TrainConfig::sft();
    reset(&model);
    let normal = forward_backward(&model, &batch, &cfg, 1.0).unwrap();
    let g_normal = grads_of(&model);

    cfg.train_type = "infctx".into();
    cfg.chunk_ctx = 16; // 16 + 16 + 8: uneven last chunk
    cfg.truncated_bptt = false;
    reset(&model);
    let full = forward_backward(&model, &batch, &cfg, 1.0).unwrap();
    let g_full = grads_of(&model);
    assert!(
        (full.loss - normal.loss).abs() < 1e-5,
        "{} vs {}",
        full.loss,
        normal.loss
    );
    for ((name, a), (_, c)) in g_normal.iter().zip(&g_full) {
        let scale = a.abs().max().double_value(&[]).max(1e-12);
        let d = max_abs_diff(a, c);
        assert!(
            d <= 1e-4 * scale,
            "{name}: full-BPTT infctx gradient differs by {d:e} (scale {scale:e})"
        );
    }

    cfg.truncated_bptt = true;
    reset(&model);
    let trunc = forward_backward(&model, &batch, &cfg, 1.0).unwrap();
    let g_trunc = grads_of(&model);
    assert!((trunc.loss - normal.loss).abs() < 1e-5);
    let differs = g_normal
        .iter()
        .zip(&g_trunc)
        .any(|((_, a), (_, c))| max_abs_diff(a, c) > 1e-4 * a.abs().max().double_value(&[]));
    assert!(
        differs,
        "truncated BPTT must cut gradients at chunk borders"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn final_weights(dir: &Path) -> Vec<(String, Tensor)> {
    AutoModel::from_pretrained(dir, Device::Cpu, Kind::Float)
        .unwrap()
        .named_tensors()
}

#[test]
fn resumed_run_matches_uninterrupted_run_bit_for_bit_and_rotation_holds() {
    tch::set_num_threads(1);
    let tmp = tempfile::tempdir().unwrap();
    let data_path = tmp.path().join("rows.jsonl");
    write_rows(&data_path, 12, 24, 1);
    let ds = dataset(&data_path, 32);

    // Uninterrupted: 2 epochs x 6 batches = 12 steps.
    let a = tmp.path().join("a");
    let mut t = Trainer::new(
        config(&a),
        small_model(),
        AutoTokenizer::builtin(),
        ds.clone(),
    )
    .unwrap();
    t.progress = false;
    let out = t.train().unwrap();
    assert_eq!(out.steps, 12);

    // Resumed: a fresh process state picks up run A's mid-epoch checkpoint at step 4 (the
    // CLI test does the same after a real SIGKILL).
    let b = tmp.path().join("b");
    std::fs::create_dir_all(&b).unwrap();
    copy_dir(&a.join("rwkv7-batch4"), &b.join("rwkv7-batch4"));
    std::fs::copy(a.join("loss_data.jsonl"), b.join("loss_data.jsonl")).unwrap();
    let mut c2 = config(&b);
    c2.resume_from_checkpoint = Some("latest".into());
    let mut t = Trainer::new(c2, small_model(), AutoTokenizer::builtin(), ds.clone()).unwrap();
    t.progress = false;
    assert_eq!(t.train().unwrap().steps, 12);
    for ((n, x), (_, y)) in final_weights(&a.join("final"))
        .iter()
        .zip(final_weights(&b.join("final")).iter())
    {
        assert!(
            x.equal(y),
            "{n} differs between the uninterrupted and the resumed run"
        );
    }
    // Every checkpoint is a loadable model directory with trainer state.
    let ck = b.join("rwkv7-batch6");
    assert!(
        ck.join("model.pth").is_file()
            && ck.join("trainer_state/state.json").is_file()
            && ck.join("tokenizer_config.json").is_file()
    );
    // loss_data.jsonl holds each step exactly once after the resume.
    let steps: Vec<u64> = std::fs::read_to_string(b.join("loss_data.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, (1..=12).collect::<Vec<_>>());

    // Rotation: a limit of 2 keeps the two newest, across a restart too.
    let r = tmp.path().join("r");
    let mut c = config(&r);
    c.epoch_count = 1;
    c.save_every_n_batches = 1;
    c.save_total_limit = 2;
    let mut t = Trainer::new(
        c.clone(),
        small_model(),
        AutoTokenizer::builtin(),
        ds.clone(),
    )
    .unwrap();
    t.progress = false;
    t.train().unwrap();
    let names = |dir: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("rwkv7-"))
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&r), ["rwkv7-batch6", "rwkv7-epoch1"]);
    c.epoch_count = 2;
    c.resume_from_checkpoint = Some("latest".into());
    let mut t = Trainer::new(c, small_model(), AutoTokenizer::builtin(), ds).unwrap();
    t.progress = false;
    t.train().unwrap();
    assert_eq!(names(&r), ["rwkv7-batch12", "rwkv7-epoch2"]);
}

#[test]
fn non_finite_steps_are_skipped_recorded_and_finally_abort() {
    let tmp = tempfile::tempdir().unwrap();
    let data_path = tmp.path().join("rows.jsonl");
    write_rows(&data_path, 8, 16, 2);
    let ds = dataset(&data_path, 32);
    let model = small_model();
    {
        let _g = tch::no_grad_guard();
        let _ = model.blocks[1]
            .ffn
            .value
            .weight
            .shallow_clone()
            .fill_(f64::NAN);
    }
    let mut c = config(&tmp.path().join("nan"));
    c.max_bad_steps = 2;
    let mut t = Trainer::new(c, model, AutoTokenizer::builtin(), ds).unwrap();
    t.progress = false;
    let err = t.train().unwrap_err().to_string();
    assert!(
        err.contains("3 consecutive steps") && err.contains("bad_batches.jsonl"),
        "{err}"
    );
    let dump = std::fs::read_to_string(tmp.path().join("nan/bad_batches.jsonl")).unwrap();
    assert_eq!(dump.lines().count(), 3);
    assert!(dump.contains("\"examples\""));
}

#[test]
fn config_and_data_mismatch_on_resume_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data_path = tmp.path().join("rows.jsonl");
    write_rows(&data_path, 8, 16, 3);
    let proj = tmp.path().join("p");
    let mut c = config(&proj);
    c.epoch_count = 1;
    let mut t = Trainer::new(
        c.clone(),
        small_model(),
        AutoTokenizer::builtin(),
        dataset(&data_path, 32),
    )
    .unwrap();
    t.progress = false;
    t.train().unwrap();
    write_rows(&data_path, 8, 16, 4);
    c.resume_from_checkpoint = Some("latest".into());
    c.epoch_count = 2;
    let mut t = Trainer::new(
        c,
        small_model(),
        AutoTokenizer::builtin(),
        dataset(&data_path, 32),
    )
    .unwrap();
    t.progress = false;
    let err = t.train().unwrap_err().to_string();
    assert!(err.contains("data") && err.contains("rwkv7-"), "{err}");
    let _ = Task::Sft;
}

#[test]
fn several_devices_without_rank_variables_are_refused_with_the_way_out() {
    assert!(
        std::env::var_os("WORLD_SIZE").is_none(),
        "the test needs a process that is not a rank"
    );
    let tmp = tempfile::tempdir().unwrap();
    let data_path = tmp.path().join("rows.jsonl");
    write_rows(&data_path, 4, 16, 3);
    let mut c = config(&tmp.path().join("p"));
    c.devices = 2;
    let err = Trainer::new(
        c,
        small_model(),
        AutoTokenizer::builtin(),
        dataset(&data_path, 32),
    )
    .err()
    .expect("devices = 2 in a lone process")
    .to_string();
    assert!(
        err.contains("one process per device") && err.contains("WORLD_SIZE"),
        "{err}"
    );
}

#[test]
fn gradient_checkpointing_gives_the_same_gradients() {
    let (b, t) = (2usize, 24usize);
    let ids: Vec<i64> = (0..b * t)
        .map(|i| ((i * 53 + 7) % 999) as i64 + 1)
        .collect();
    let labels: Vec<i64> = ids.iter().map(|i| (i * 11) % 1000).collect();
    let batch = Batch {
        input_ids: ids,
        labels,
        batch: b,
        seq_len: t,
        example_indices: vec![0, 1],
        lengths: vec![t, t],
    };
    for infctx in [false, true] {
        let mut cfg = TrainConfig::sft();
        if infctx {
            (cfg.train_type, cfg.chunk_ctx, cfg.truncated_bptt) = ("infctx".into(), 10, false);
        }
        let mut model = small_model();
        reset(&model);
        let plain = forward_backward(&model, &batch, &cfg, 1.0).unwrap();
        let g_plain = grads_of(&model);
        model.grad_checkpointing = true;
        reset(&model);
        let ck = forward_backward(&model, &batch, &cfg, 1.0).unwrap();
        assert_eq!(plain.loss, ck.loss);
        for ((name, a), (_, c)) in g_plain.iter().zip(&grads_of(&model)) {
            let d = max_abs_diff(a, c);
            assert!(
                d <= 1e-6 * a.abs().max().double_value(&[]).max(1e-12),
                "{name} (infctx {infctx}): {d:e}"
            );
        }
    }
}

#[test]
fn mixed_precision_keeps_fp32_masters_and_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let data_path = tmp.path().join("rows.jsonl");
    write_rows(&data_path, 8, 16, 5);
    let ds = dataset(&data_path, 32);
    for precision in ["bf16", "fp16"] {
        let proj = tmp.path().join(precision);
        let mut c = config(&proj);
        (
            c.precision,
            c.epoch_count,
            c.save_every_n_batches,
            c.lr_init,
        ) = (precision.into(), 2, 0, 3e-3);
        let mut t = Trainer::new(c, small_model(), AutoTokenizer::builtin(), ds.clone()).unwrap();
        t.progress = false;
        let want = if precision == "bf16" {
            Kind::BFloat16
        } else {
            Kind::Half
        };
        assert_eq!(t.model.kind(), want);
        let out = t.train().unwrap();
        assert_eq!(out.skipped_steps, 0, "{precision}");
        let losses: Vec<f64> = std::fs::read_to_string(proj.join("loss_data.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                    .as_f64()
                    .unwrap()
            })
            .collect();
        assert!(
            losses.iter().all(|l| l.is_finite()),
            "{precision}: {losses:?}"
        );
        assert!(
            losses.last().unwrap() < losses.first().unwrap(),
            "{precision}: {losses:?}"
        );
        // The hub weights are in the training dtype; the trainer state keeps fp32 masters.
        let saved = rwkvtune_core::hub::read_weights(&proj.join("rwkv7-epoch2/model.pth")).unwrap();
        assert!(saved.iter().all(|(_, t)| t.kind() == want));
        let masters = rwkvtune_core::hub::read_weights(
            &proj.join("rwkv7-epoch2/trainer_state/trainable.safetensors"),
        )
        .unwrap();
        assert!(masters.iter().all(|(_, t)| t.kind() == Kind::Float));
        if precision == "fp16" {
            let line = std::fs::read_to_string(proj.join("loss_data.jsonl")).unwrap();
            assert!(line.contains("loss_scale"), "fp16 logs its loss scale");
        }
    }
}
