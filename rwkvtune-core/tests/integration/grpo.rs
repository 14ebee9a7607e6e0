//! Batched rollouts and GRPO on the 1000-token reference model: batching does not leak between
//! rows, scoring uses the generation context, rewards rise, and resume is exact.

use crate::common::*;
use rwkvtune_core::generate::{rollout, FinishReason, RolloutOptions, SamplingParams};
use rwkvtune_core::grpo::{
    completion_logprobs, GrpoConfig, GrpoTrainer, PromptDataset, PromptRow, ScoredRow,
};
use rwkvtune_core::hub::AutoModel;
use rwkvtune_core::model::Rwkv7;
use rwkvtune_core::plugin::{NativeReward, OnError, RewardFn, RolloutBatch};
use rwkvtune_core::tokenizer::AutoTokenizer;
use tch::{Device, Kind};

fn small() -> Rwkv7 {
    AutoModel::from_pretrained(&model_dir("u3x96h32"), Device::Cpu, Kind::Float).unwrap()
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![5, 17, 300, 2],
        vec![9, 9, 9],
        vec![5, 17, 300, 2], // a duplicate: prefilled once, still its own rows
        (1..40).map(|i| (i * 37 % 997) as u32).collect(),
    ]
}

fn opts(seed: u64) -> RolloutOptions {
    RolloutOptions {
        sampling: SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            seed,
            ..SamplingParams::default()
        },
        num_generations: 3,
        max_new_tokens: 10,
        eos_ids: vec![261],
        prefill_chunk_size: 7,
        ..RolloutOptions::default()
    }
}

/// log_softmax of a single-sequence forward over prompt + completion, at the completion's
/// positions.
fn single_sequence_logprobs(model: &Rwkv7, prompt: &[u32], completion: &[u32]) -> Vec<f64> {
    let ids: Vec<i64> = prompt
        .iter()
        .chain(&completion[..completion.len() - 1])
        .map(|&t| t as i64)
        .collect();
    let lp = model.logits(&ids).unwrap().log_softmax(-1, Kind::Double);
    completion
        .iter()
        .enumerate()
        .map(|(j, &t)| lp.double_value(&[(prompt.len() - 1 + j) as i64, t as i64]))
        .collect()
}

#[test]
fn batched_rollout_rows_match_single_sequence_runs_and_ignore_batch_caps() {
    let model = small();
    let tok = AutoTokenizer::builtin();
    let ps = prompts();
    let (rows, stats) = rollout(&model, &tok, &ps, &opts(7)).unwrap();
    assert_eq!(rows.len(), 12);
    assert_eq!(
        stats.prefill_prompts, 3,
        "duplicate prompts share one prefill"
    );
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.prompt, i / 3);
        assert_eq!(r.tokens.len(), r.logprobs.len());
        let want = single_sequence_logprobs(&model, &ps[r.prompt], &r.tokens);
        for (got, want) in r.logprobs.iter().zip(&want) {
            assert!(
                (*got as f64 - want).abs() < 2e-4,
                "row {i}: sampling log-prob {got} vs single-sequence {want}"
            );
        }
    }
    // Rows of one prompt draw different samples.
    assert!(rows[0].tokens != rows[1].tokens || rows[1].tokens != rows[2].tokens);
    // Caps on prefill and decode batches change nothing; the seed changes the samples.
    let mut capped = opts(7);
    (capped.max_prefill_batch_size, capped.max_decode_batch_size) = (1, 5);
    let (again, _) = rollout(&model, &tok, &ps, &capped).unwrap();
    assert_eq!(
        rows.iter().map(|r| &r.tokens).collect::<Vec<_>>(),
        again.iter().map(|r| &r.tokens).collect::<Vec<_>>()
    );
    // The per-row path (repetition penalty needs each row's history) obeys the same rule.
    let penalised = |caps: usize| {
        let mut o = opts(7);
        o.sampling.repetition_penalty = 1.5;
        (o.max_prefill_batch_size, o.max_decode_batch_size) = (caps, caps);
        let (rows, _) = rollout(&model, &tok, &ps, &o).unwrap();
        rows.into_iter().map(|r| r.tokens).collect::<Vec<_>>()
    };
    assert_eq!(penalised(0), penalised(2));
    let (other, _) = rollout(&model, &tok, &ps, &opts(8)).unwrap();
    assert_ne!(
        rows.iter().map(|r| &r.tokens).collect::<Vec<_>>(),
        other.iter().map(|r| &r.tokens).collect::<Vec<_>>()
    );
}

#[test]
fn eos_first_token_stop_strings_and_length_end_rows() {
    let model = small();
    let tok = AutoTokenizer::builtin();
    // A +100 bias makes the EOS id the first sample: the row stops right there.
    let mut o = opts(1);
    o.sampling.logit_bias = vec![(261, 100.0)];
    let (rows, _) = rollout(&model, &tok, &[vec![5, 6, 7]], &o).unwrap();
    for r in &rows {
        assert_eq!(
            (r.tokens.as_slice(), r.finish, r.text.as_str()),
            (&[261u32][..], FinishReason::Eos, "")
        );
    }
    // max_new_tokens = 1 gives exactly one token.
    let mut o = opts(1);
    o.max_new_tokens = 1;
    o.eos_ids.clear();
    let (rows, _) = rollout(&model, &tok, &[vec![5, 6, 7]], &o).unwrap();
    assert!(rows
        .iter()
        .all(|r| r.tokens.len() == 1 && r.finish == FinishReason::Length));
    // A stop string made of the first sampled token's text ends the row after that token.
    let mut o = opts(1);
    o.eos_ids.clear();
    o.sampling.logit_bias = vec![(65, 100.0)]; // byte token "@" (World ids 1..=256 are bytes+1)
    let first = tok.decode_lossy(&[65]);
    o.stop = vec![first.clone()];
    let (rows, _) = rollout(&model, &tok, &[vec![5, 6, 7]], &o).unwrap();
    for r in &rows {
        assert_eq!(r.finish, FinishReason::Stop, "{first:?}");
        assert_eq!((r.tokens.len(), r.text.as_str()), (1, ""));
    }
}

#[test]
fn scoring_uses_the_generation_context_with_gradients() {
    let model = small();
    let ps = prompts();
    let completions: Vec<Vec<u32>> = vec![vec![1, 2, 3], vec![4], vec![5, 6], vec![7, 8, 9, 10]];
    let rows: Vec<ScoredRow> = ps
        .iter()
        .zip(&completions)
        .map(|(p, c)| ScoredRow {
            prompt: p,
            completion: c,
        })
        .collect();
    let named = model.named_tensors();
    let emb = named
        .iter()
        .find(|(n, _)| n == "emb.weight")
        .unwrap()
        .1
        .shallow_clone();
    let emb = emb.set_requires_grad(true);
    let s = completion_logprobs(&model, &rows, 1.0, 3, true).unwrap();
    assert_eq!(s.logp.size(), [4, 4]);
    for (i, (p, c)) in ps.iter().zip(&completions).enumerate() {
        let want = single_sequence_logprobs(&model, p, c);
        for (j, w) in want.iter().enumerate() {
            let got = s.logp.double_value(&[i as i64, j as i64]);
            assert!((got - w).abs() < 2e-4, "row {i} pos {j}: {got} vs {w}");
        }
        // Padding positions score 0.
        for j in c.len()..4 {
            assert_eq!(s.logp.double_value(&[i as i64, j as i64]), 0.0);
        }
    }
    // Gradients reach the prompt's tokens (the prompt is part of the scored graph).
    s.logp.sum(Kind::Float).backward();
    let g = emb.grad();
    assert!(g.get(300).abs().sum(Kind::Float).double_value(&[]) > 0.0);
}

/// Reward: the fraction of completion tokens with an id below 500 (a random model gets about
/// half; a policy that learns prefers small ids).
fn small_ids_reward() -> Box<dyn RewardFn> {
    Box::new(NativeReward::new(
        "small-ids",
        OnError::Abort,
        |b: &RolloutBatch| {
            Ok((0..b.len())
                .map(|i| {
                    let ids = b.tokens.real_ids(i);
                    Some(ids.iter().filter(|&&t| t < 500).count() as f32 / ids.len().max(1) as f32)
                })
                .collect())
        },
    ))
}

fn dataset() -> PromptDataset {
    let rows = (0..8u32)
        .map(|i| PromptRow {
            prompt: format!("p{i}"),
            ids: vec![10 + i, 20 + i, 30],
            extras: Default::default(),
        })
        .collect();
    PromptDataset::from_rows(std::path::Path::new("<test>"), rows, 64).unwrap()
}

fn config(dir: &std::path::Path) -> GrpoConfig {
    let mut c = GrpoConfig {
        proj_dir: dir.display().to_string(),
        ..GrpoConfig::default()
    };
    (c.micro_bsz, c.num_generations, c.max_completion_length) = (4, 6, 6);
    (
        c.steps_per_generation,
        c.num_iterations,
        c.accumulate_grad_batches,
    ) = (2, 2, 2);
    (c.lr_init, c.lr_final, c.warmup_steps) = (3e-3, 3e-3, 0);
    (c.precision, c.epoch_count, c.save_format) = ("fp32".into(), 5, "safetensors".into());
    c
}

fn rewards_of(dir: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("loss_data.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["reward"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

#[test]
fn grpo_raises_the_reward_and_logs_every_metric() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    c.save_rollout_steps = 4;
    let mut t = GrpoTrainer::new(
        c,
        small(),
        AutoTokenizer::builtin(),
        dataset(),
        vec![small_ids_reward()],
    )
    .unwrap();
    t.progress = false;
    let out = t.train().unwrap();
    let r = &out.rollout_rewards;
    assert_eq!(r.len(), 10);
    let first = (r[0] + r[1]) / 2.0;
    let last = (r[8] + r[9]) / 2.0;
    assert!(last > first + 0.1, "reward did not rise: {r:?}");
    let line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(tmp.path().join("loss_data.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    for k in [
        "reward",
        "reward_std",
        "rewards/small-ids/mean",
        "rewards/small-ids/std",
        "frac_reward_zero_std",
        "advantage/std",
        "clip_ratio/low_mean",
        "clip_ratio/high_mean",
        "clip_ratio/region_mean",
        "kl",
        "entropy",
        "completions/mean_length",
        "completions/min_length",
        "completions/max_length",
        "completions/truncated_ratio",
        "time/generation",
        "time/rewards",
        "time/logprobs",
        "time/update",
        "time/reward/small-ids",
        "plugin/small-ids/mean_call_ms",
    ] {
        assert!(line.get(k).is_some(), "metric {k} missing from {line}");
    }
    // Rollout dumps: one line per completion with ids, rewards and advantage.
    let dumps: Vec<_> = std::fs::read_dir(tmp.path().join("rollouts"))
        .unwrap()
        .collect();
    assert!(dumps.len() >= 2);
    let first_dump =
        std::fs::read_to_string(tmp.path().join("rollouts/rollout_step_0.jsonl")).unwrap();
    let row: serde_json::Value = serde_json::from_str(first_dump.lines().next().unwrap()).unwrap();
    assert_eq!(first_dump.lines().count(), 24);
    for k in [
        "prompt",
        "completion",
        "completion_ids",
        "reward",
        "rewards_per_func",
        "advantage",
        "plugin_versions",
    ] {
        assert!(row.get(k).is_some(), "{k} missing from {row}");
    }
    assert!(out.final_dir.join("model.safetensors").is_file());
}

#[test]
fn resumed_grpo_run_generates_and_trains_exactly_like_an_uninterrupted_one() {
    let full = tempfile::tempdir().unwrap();
    let mut c = config(full.path());
    (c.epoch_count, c.save_every_n_batches) = (1, 2);
    let mut t = GrpoTrainer::new(
        c.clone(),
        small(),
        AutoTokenizer::builtin(),
        dataset(),
        vec![small_ids_reward()],
    )
    .unwrap();
    t.progress = false;
    t.train().unwrap();

    let split = tempfile::tempdir().unwrap();
    c.proj_dir = split.path().display().to_string();
    let mut t = GrpoTrainer::new(
        c.clone(),
        small(),
        AutoTokenizer::builtin(),
        dataset(),
        vec![small_ids_reward()],
    )
    .unwrap();
    t.progress = false;
    t.max_rollouts = Some(1);
    t.train().unwrap();
    assert!(split.path().join("rwkv7-batch2").is_dir());
    c.resume_from_checkpoint = Some(split.path().join("rwkv7-batch2").display().to_string());
    let mut t = GrpoTrainer::new(
        c,
        small(),
        AutoTokenizer::builtin(),
        dataset(),
        vec![small_ids_reward()],
    )
    .unwrap();
    t.progress = false;
    t.train().unwrap();

    assert_eq!(rewards_of(full.path()), rewards_of(split.path()));
    let a = rwkvtune_core::hub::read_weights(&full.path().join("final/model.safetensors")).unwrap();
    let b =
        rwkvtune_core::hub::read_weights(&split.path().join("final/model.safetensors")).unwrap();
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert_eq!(max_abs_diff(ta, tb), 0.0, "{na}");
    }
}

#[test]
fn every_loss_variant_kl_and_lora_reference_train() {
    for (loss, level, beta, lora) in [
        ("grpo", "token", 0.0, false),
        ("bnpo", "sequence", 0.0, false),
        ("dr_grpo", "token", 0.1, false),
        ("dapo", "token", 0.1, true),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = config(tmp.path());
        c.epoch_count = 1;
        c.epoch_steps = Some(8);
        c.loss_type = loss.into();
        c.importance_sampling_level = level.into();
        c.beta = beta;
        c.kl_approximator = "k3".into();
        c.use_lora = lora;
        c.lora.r = 4;
        let mut t = GrpoTrainer::new(
            c,
            small(),
            AutoTokenizer::builtin(),
            dataset(),
            vec![small_ids_reward()],
        )
        .unwrap();
        t.progress = false;
        let out = t.train().unwrap();
        assert_eq!(out.steps, 4, "{loss}");
        let lines: Vec<serde_json::Value> =
            std::fs::read_to_string(tmp.path().join("loss_data.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        assert!(
            lines
                .iter()
                .all(|l| l["loss"].as_f64().is_some_and(f64::is_finite)),
            "{loss}"
        );
        if beta > 0.0 {
            // After the first update the policy differs from the reference: KL > 0.
            let kl = lines.last().unwrap()["kl"].as_f64().unwrap();
            assert!(kl > 0.0, "{loss}: kl {kl}");
        }
    }
}

/// With LoRA the reference is the base model even though `modules_to_save` LayerNorms train in
/// place: after training, its log-probs are those of a fresh copy of the base.
#[test]
fn lora_reference_stays_the_base_model_after_training() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    (c.epoch_count, c.beta, c.use_lora, c.lora.r) = (1, 0.1, true, 4);
    c.lr_init = 3e-2;
    c.lr_final = 3e-2;
    assert!(c.lora.modules_to_save.contains(&"ln".to_string()));
    let mut t = GrpoTrainer::new(
        c,
        small(),
        AutoTokenizer::builtin(),
        dataset(),
        vec![small_ids_reward()],
    )
    .unwrap();
    t.progress = false;
    t.train().unwrap();
    let (p, comp) = (vec![11u32, 21, 30], vec![5u32, 900, 7]);
    let rows = [ScoredRow {
        prompt: &p,
        completion: &comp,
    }];
    let reference = t.reference_logprobs(&rows).unwrap().unwrap();
    let base = {
        let _g = tch::no_grad_guard();
        completion_logprobs(&small(), &rows, 1.0, 64, false)
            .unwrap()
            .logp
    };
    let policy = {
        let _g = tch::no_grad_guard();
        completion_logprobs(&t.model, &rows, 1.0, 64, false)
            .unwrap()
            .logp
    };
    for (j, &r) in reference[0].iter().take(3).enumerate() {
        let b = base.double_value(&[0, j as i64]);
        assert!((r as f64 - b).abs() < 1e-5, "{j}: {r} vs {b}");
    }
    // ...while the trained policy has moved away from it.
    assert!(max_abs_diff(&policy, &base) > 1e-3);
}

/// A post-processor runs between generation and rewards: rewards and training see its edits.
#[test]
fn postprocessor_edits_reach_rewards_training_and_dumps() {
    use rwkvtune_core::plugin::{Edit, NativePostprocessor, TokenMatrix};
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path());
    (c.epoch_count, c.save_rollout_steps) = (1, 1);
    let keep_first = NativePostprocessor::new(
        "first-token",
        std::sync::Arc::new(AutoTokenizer::builtin()),
        OnError::Abort,
        |b: &RolloutBatch| {
            let rows: Vec<Vec<u32>> = (0..b.len())
                .map(|i| b.tokens.real_ids(i).into_iter().take(1).collect())
                .collect();
            Ok(Edit::Tokens(TokenMatrix::from_rows(&rows, b.tokens.cols)))
        },
    );
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let reward = NativeReward::new("len", OnError::Abort, move |b: &RolloutBatch| {
        let lens: Vec<usize> = (0..b.len()).map(|i| b.tokens.real_ids(i).len()).collect();
        log.lock().unwrap().extend(lens.iter().copied());
        Ok(lens.iter().map(|&l| Some(l as f32)).collect())
    });
    let mut t = GrpoTrainer::new(
        c,
        small(),
        AutoTokenizer::builtin(),
        dataset(),
        vec![Box::new(reward)],
    )
    .unwrap()
    .with_postprocessor(Box::new(keep_first));
    t.progress = false;
    t.train().unwrap();
    assert!(seen.lock().unwrap().iter().all(|&l| l == 1));
    let dump = std::fs::read_to_string(tmp.path().join("rollouts/rollout_step_0.jsonl")).unwrap();
    for line in dump.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(row["completion_ids"].as_array().unwrap().len(), 1, "{row}");
        assert!(row["plugin_versions"].get("first-token").is_some(), "{row}");
    }
}
