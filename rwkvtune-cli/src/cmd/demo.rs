//! The built-in demo: everything runs on embedded defaults (a small model shape and the bundled
//! example data compiled into the binary), no files needed.
//!
//! fresh model → pre-training from scratch (loss vs. the corpus's unigram entropy) → LoRA SFT on
//! instructions (held-out loss before/after) → merge the adapter → generation with the merged
//! model → GRPO on arithmetic with an exact-match reward (mean reward of the first and last
//! rollouts), with timings.

use anyhow::{Context, Result};
use clap::Args;
use rwkvtune_core::data::{load_dataset, DataOptions, Dataset};
use rwkvtune_core::generate::{generate, GenerateOptions, SamplingParams};
use rwkvtune_core::grpo::{GrpoConfig, GrpoTrainer, PromptDataset};
use rwkvtune_core::hub::{create_hub, AutoModel, CreateHubOptions};
use rwkvtune_core::model::Rwkv7;
use rwkvtune_core::plugin::{
    stderr_sink, NativeReward, OnError, PluginRuntime, PluginSpec, RewardFn, RolloutBatch,
    RuntimeOptions,
};
use rwkvtune_core::tokenizer::AutoTokenizer;
use rwkvtune_core::train::{evaluate, Task, TrainConfig, Trainer};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind};

const PRETRAIN_TRAIN: &str = include_str!("../../../examples/data/pretrain_train.jsonl");
const PRETRAIN_EVAL: &str = include_str!("../../../examples/data/pretrain_eval.jsonl");
const SFT_TRAIN: &str = include_str!("../../../examples/data/sft_train.jsonl");
const SFT_EVAL: &str = include_str!("../../../examples/data/sft_eval.jsonl");
const GRPO_PROMPTS: &str = include_str!("../../../examples/data/grpo_arith.jsonl");

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo writes its models, logs and data.
    #[arg(long, default_value = "runs/demo")]
    pub output_dir: PathBuf,
    /// Optimizer steps of pre-training from scratch.
    #[arg(long, default_value_t = 80)]
    pub pretrain_steps: usize,
    /// Optimizer steps of SFT.
    #[arg(long, default_value_t = 160)]
    pub sft_steps: usize,
    #[arg(long, default_value = "User: What is 4 + 3?\n\nAssistant:")]
    pub prompt: String,
    #[arg(long, default_value_t = 24)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// GRPO rollouts (8 prompts x 16 completions each) on the arithmetic prompts.
    #[arg(long, default_value_t = 80)]
    pub grpo_rollouts: usize,
    /// The exact-match reward as a WebAssembly plugin (plugins/math-reward; `scripts/demo` builds
    /// it); without it the same rule runs as a native Rust closure.
    #[arg(long)]
    pub reward_plugin: Option<PathBuf>,
}

fn data(
    path: &Path,
    task: Task,
    tok: &AutoTokenizer,
    model: &Rwkv7,
    ctx: usize,
    packing: bool,
) -> Result<Dataset> {
    let opts = DataOptions {
        ctx_len: ctx,
        packing,
        ..DataOptions::default()
    };
    Ok(load_dataset(
        path,
        task.data_kind(),
        tok,
        model.dims.vocab_size,
        &opts,
    )?)
}

/// Entropy (nats) of the corpus's unigram token distribution: the loss of the best model that
/// ignores context.
fn unigram_entropy(ds: &Dataset) -> f64 {
    let mut counts = std::collections::HashMap::new();
    let mut n = 0.0;
    for ex in &ds.examples {
        for &l in ex.labels.iter().filter(|&&l| l >= 0) {
            *counts.entry(l).or_insert(0.0) += 1.0;
            n += 1.0;
        }
    }
    counts.values().map(|c: &f64| -(c / n) * (c / n).ln()).sum()
}

fn train(cfg: TrainConfig, model: Rwkv7, tok: &AutoTokenizer, ds: Dataset) -> Result<PathBuf> {
    let mut t = Trainer::new(cfg, model, tok.clone(), ds)?;
    t.progress = true;
    Ok(t.train()?.final_dir)
}

pub fn run(a: DemoArgs) -> Result<()> {
    let out = &a.output_dir;
    let data_dir = out.join("data");
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    for (name, text) in [
        ("pretrain_train.jsonl", PRETRAIN_TRAIN),
        ("pretrain_eval.jsonl", PRETRAIN_EVAL),
        ("sft_train.jsonl", SFT_TRAIN),
        ("sft_eval.jsonl", SFT_EVAL),
        ("grpo_arith.jsonl", GRPO_PROMPTS),
    ] {
        std::fs::write(data_dir.join(name), text).with_context(|| format!("writing {name}"))?;
    }

    // 1. A fresh model from the built-in small shape.
    let t = Instant::now();
    let fresh = out.join("fresh");
    let mut opts = CreateHubOptions::new(&fresh);
    opts.config_name = Some("rwkv7-demo".into());
    opts.overwrite = true;
    opts.seed = a.seed as i64;
    opts.save_format = rwkvtune_core::hub::WeightFormat::Safetensors;
    let hub = create_hub(&opts).context("creating the demo model")?;
    println!(
        "[1/5] fresh RWKV-7: {} layers, n_embd {}, vocab {}, {:.1} M parameters ({:.1}s)",
        hub.config.n_layer,
        hub.config.n_embd,
        hub.config.vocab_size,
        hub.parameters as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let tok = AutoTokenizer::from_pretrained(&fresh)?;

    // 2. Pre-training from scratch on the bundled corpus.
    let t = Instant::now();
    let model = AutoModel::from_pretrained(&fresh, Device::Cpu, Kind::Float)?;
    let train_ds = data(
        &data_dir.join("pretrain_train.jsonl"),
        Task::Pretrain,
        &tok,
        &model,
        128,
        true,
    )?;
    let eval_ds = data(
        &data_dir.join("pretrain_eval.jsonl"),
        Task::Pretrain,
        &tok,
        &model,
        128,
        true,
    )?;
    let before = evaluate(&model, &eval_ds, 8)?;
    let mut cfg = TrainConfig::pretrain();
    cfg.proj_dir = out.join("pretrain").display().to_string();
    (cfg.ctx_len, cfg.micro_bsz, cfg.epoch_count, cfg.epoch_steps) =
        (128, 4, 1, Some(a.pretrain_steps));
    (
        cfg.lr_init,
        cfg.lr_final,
        cfg.warmup_steps,
        cfg.packing,
        cfg.seed,
    ) = (3e-3, 3e-4, 8, true, a.seed);
    cfg.save_format = "safetensors".into();
    let entropy = unigram_entropy(&train_ds);
    println!(
        "[2/5] pre-training from scratch: {} windows of 128 tokens, {} steps",
        train_ds.len(),
        a.pretrain_steps
    );
    let pretrained = train(cfg, model, &tok, train_ds)?;
    let after = evaluate(
        &AutoModel::from_pretrained(&pretrained, Device::Cpu, Kind::Float)?,
        &eval_ds,
        8,
    )?;
    println!(
        "      held-out loss {:.3} -> {:.3} nats/token (unigram entropy of the corpus: {:.3}) in {:.1}s",
        before.loss, after.loss, entropy, t.elapsed().as_secs_f64()
    );

    // 3. LoRA SFT of the pre-trained model on instructions, then merge the adapter.
    let t = Instant::now();
    let model = AutoModel::from_pretrained(&pretrained, Device::Cpu, Kind::Float)?;
    let sft_ds = data(
        &data_dir.join("sft_train.jsonl"),
        Task::Sft,
        &tok,
        &model,
        64,
        false,
    )?;
    let sft_eval = data(
        &data_dir.join("sft_eval.jsonl"),
        Task::Sft,
        &tok,
        &model,
        64,
        false,
    )?;
    let before = evaluate(&model, &sft_eval, 8)?;
    let mut cfg = TrainConfig::sft();
    cfg.proj_dir = out.join("sft-lora").display().to_string();
    (cfg.ctx_len, cfg.micro_bsz) = (64, 8);
    // Whole epochs over the instructions, as many as the requested steps need.
    cfg.epoch_count = a.sft_steps.div_ceil((sft_ds.len() / 8).max(1));
    (cfg.lr_init, cfg.lr_final, cfg.warmup_steps, cfg.seed) = (3e-3, 3e-4, 5, a.seed);
    (cfg.use_lora, cfg.lora.r, cfg.lora.lora_alpha) = (true, 32, 64.0);
    cfg.base_model = Some(pretrained.display().to_string());
    cfg.save_format = "safetensors".into();
    println!(
        "[3/5] LoRA SFT (r 32) on {} instructions, {} steps, then merge",
        sft_ds.len(),
        a.sft_steps
    );
    let adapter = train(cfg, model, &tok, sft_ds)?;
    let merged = out.join("merged");
    let _ = std::fs::remove_dir_all(&merged);
    rwkvtune_core::lora::merge_lora(&rwkvtune_core::lora::MergeOptions {
        base_model: pretrained.clone(),
        lora_model: adapter.clone(),
        output: merged.clone(),
        device: Device::Cpu,
        precision: Kind::Float,
        save_format: rwkvtune_core::hub::WeightFormat::Safetensors,
    })?;
    let model = AutoModel::from_pretrained(&merged, Device::Cpu, Kind::Float)?;
    let after = evaluate(&model, &sft_eval, 8)?;
    println!(
        "      held-out SFT loss {:.3} -> {:.3} (perplexity {:.1} -> {:.1}) in {:.1}s; merged model in {}",
        before.loss, after.loss, before.perplexity, after.perplexity, t.elapsed().as_secs_f64(), merged.display()
    );
    let tuned = merged;

    // 4. Generation with the tuned model.
    let prompt = tok.encode(&a.prompt)?;
    let gen = GenerateOptions {
        sampling: SamplingParams {
            temperature: 0.0,
            seed: a.seed,
            ..SamplingParams::default()
        },
        max_new_tokens: a.max_new_tokens,
        eos_ids: tok.eos_token_id.into_iter().collect(),
        stop: vec![],
    };
    println!("[4/5] greedy generation with {}:\n---", tuned.display());
    print!("{}", a.prompt);
    let g = generate(&model, &tok, &prompt, &gen, &mut |p| {
        print!("{p}");
        let _ = std::io::stdout().flush();
    })?;
    println!("\n---");
    println!(
        "prefill {} tokens: {:.1} tok/s; decode {} tokens: {:.1} tok/s",
        g.prefill_tokens,
        g.prefill_tokens as f64 / g.prefill_secs.max(1e-9),
        g.tokens.len(),
        g.tokens.len() as f64 / g.decode_secs.max(1e-9)
    );

    // 5. GRPO on arithmetic, rewarded by exact match with the answer.
    let t = Instant::now();
    let ds = PromptDataset::load(
        &data_dir.join("grpo_arith.jsonl"),
        &tok,
        64,
        model.dims.vocab_size,
    )?;
    let mut cfg = GrpoConfig {
        proj_dir: out.join("grpo").display().to_string(),
        ..GrpoConfig::default()
    };
    (
        cfg.micro_bsz,
        cfg.num_generations,
        cfg.max_completion_length,
    ) = (8, 16, 8);
    // Two optimizer steps per rollout: the second is off-policy (clipped ratio).
    (cfg.steps_per_generation, cfg.accumulate_grad_batches) = (2, 1);
    (cfg.temperature, cfg.top_k) = (0.5, 20);
    cfg.epoch_count = (a.grpo_rollouts * 8).div_ceil(ds.len()).max(1);
    (cfg.lr_init, cfg.lr_final, cfg.warmup_steps) = (1e-3, 1e-3, 0);
    (cfg.precision, cfg.seed, cfg.log_steps) = ("fp32".into(), a.seed, 4);
    (cfg.use_lora, cfg.lora.r, cfg.lora.lora_alpha) = (true, 32, 64.0);
    cfg.base_model = Some(tuned.display().to_string());
    cfg.save_format = "safetensors".into();
    let reward: Box<dyn RewardFn> = match &a.reward_plugin {
        Some(p) => {
            let rt = PluginRuntime::new(RuntimeOptions::default())?;
            Box::new(rt.reward(&PluginSpec::new(p), Arc::new(tok.clone()), stderr_sink())?)
        }
        None => Box::new(NativeReward::new(
            "exact-match",
            OnError::Abort,
            exact_match,
        )),
    };
    println!(
        "[5/5] GRPO (LoRA r 32) on {} arithmetic prompts: {} rollouts of 8 prompts x 16 completions, reward = exact match ({})",
        ds.len(),
        a.grpo_rollouts,
        a.reward_plugin.as_ref().map_or("native Rust closure".to_string(), |p| p.display().to_string())
    );
    let mut trainer = GrpoTrainer::new(cfg, model, tok.clone(), ds, vec![reward])?;
    trainer.max_rollouts = Some(a.grpo_rollouts);
    let outcome = trainer.train()?;
    super::grpo::print_summary(&outcome);
    println!("      in {:.1}s", t.elapsed().as_secs_f64());
    Ok(())
}

/// 1.0 when the last integer of the completion equals the row's `ground_truth`.
fn exact_match(batch: &RolloutBatch) -> std::result::Result<Vec<Option<f32>>, String> {
    Ok((0..batch.len())
        .map(|i| {
            let truth = batch
                .extra(i)
                .get("ground_truth")?
                .as_str()?
                .trim()
                .to_string();
            let last = batch.completions[i]
                .split(|c: char| !c.is_ascii_digit() && c != '-')
                .rfind(|w| !w.is_empty() && *w != "-")
                .map(str::to_string);
            Some(if last.as_deref() == Some(truth.as_str()) {
                1.0
            } else {
                0.0
            })
        })
        .collect())
}
