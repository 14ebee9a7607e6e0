//! `sft`, `pretrain` and `eval`.

use super::launch;
use anyhow::{bail, Context, Result};
use clap::Args;
use rwkvtune_core::data::{load_dataset, DataOptions};
use rwkvtune_core::dist::{rank_device, RankEnv};
use rwkvtune_core::hub::{parse_device, AutoModel};
use rwkvtune_core::model::Rwkv7;
use rwkvtune_core::tokenizer::AutoTokenizer;
use rwkvtune_core::train::{evaluate, Task, TrainConfig, Trainer};
use std::path::PathBuf;
use tch::Kind;

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Model directory to train (its weights are the starting point).
    #[arg(long)]
    pub model: PathBuf,
    /// Dataset: .jsonl, .parquet, .arrow or a `datasets.save_to_disk` directory.
    #[arg(long)]
    pub data: PathBuf,
    /// Where checkpoints, logs and the final model go (config field proj_dir).
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// A config file (.toml or .json; a run_config.json written by a run reproduces it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override one config field, e.g. --set lr_init=1e-5 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Resume from a checkpoint directory, or `latest` in the output directory.
    #[arg(long)]
    pub resume: Option<String>,
    #[arg(long)]
    pub ctx_len: Option<usize>,
    #[arg(long)]
    pub micro_bsz: Option<usize>,
    #[arg(long)]
    pub epoch_count: Option<usize>,
    #[arg(long)]
    pub epoch_steps: Option<usize>,
    #[arg(long)]
    pub lr_init: Option<f64>,
    #[arg(long)]
    pub lr_final: Option<f64>,
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// fp32, bf16 or fp16.
    #[arg(long)]
    pub precision: Option<String>,
    /// normal or infctx.
    #[arg(long)]
    pub train_type: Option<String>,
    #[arg(long)]
    pub chunk_ctx: Option<usize>,
    #[arg(long)]
    pub device: Option<String>,
    /// Data-parallel processes, one per device (config field `devices`): each gets its own
    /// micro-batches, and gradients are summed before every optimizer step.
    #[arg(long)]
    pub devices: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Pre-training only: start from the official fresh initialisation of the model's shape
    /// instead of its weights.
    #[arg(long)]
    pub from_scratch: bool,
    /// Train LoRA adapters instead of all weights (settings: --lora-r, --lora-alpha, or the
    /// `[lora]` table / `--set lora.FIELD=...`).
    #[arg(long)]
    pub lora: bool,
    #[arg(long)]
    pub lora_r: Option<usize>,
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// lora_only, full or both.
    #[arg(long)]
    pub lora_save_mode: Option<String>,
    /// No progress bar (plain lines only).
    #[arg(long)]
    pub quiet: bool,
}

impl TrainArgs {
    /// File < --set < dedicated flags.
    fn config(&self, task: Task) -> Result<TrainConfig> {
        let mut sets = self.set.clone();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                sets.push(format!("{k}={v}"));
            }
        };
        put("ctx_len", self.ctx_len.map(|v| v.to_string()));
        put("micro_bsz", self.micro_bsz.map(|v| v.to_string()));
        put("epoch_count", self.epoch_count.map(|v| v.to_string()));
        put("epoch_steps", self.epoch_steps.map(|v| v.to_string()));
        put("lr_init", self.lr_init.map(|v| format!("{v:e}")));
        put("lr_final", self.lr_final.map(|v| format!("{v:e}")));
        put("warmup_steps", self.warmup_steps.map(|v| v.to_string()));
        put("precision", self.precision.clone());
        put("train_type", self.train_type.clone());
        put("chunk_ctx", self.chunk_ctx.map(|v| v.to_string()));
        put("device", self.device.clone());
        put("devices", self.devices.map(|v| v.to_string()));
        put("seed", self.seed.map(|v| v.to_string()));
        put("use_lora", self.lora.then(|| "true".to_string()));
        put("lora.r", self.lora_r.map(|v| v.to_string()));
        put("lora.lora_alpha", self.lora_alpha.map(|v| v.to_string()));
        put("lora_save_mode", self.lora_save_mode.clone());
        put(
            "base_model",
            Some(serde_json::to_string(&self.model.display().to_string()).unwrap_or_default()),
        );
        put(
            "proj_dir",
            self.output_dir
                .as_ref()
                .map(|p| serde_json::to_string(&p.display().to_string()).unwrap_or_default()),
        );
        put(
            "resume_from_checkpoint",
            self.resume
                .as_ref()
                .map(|r| serde_json::to_string(r).unwrap_or_default()),
        );
        Ok(TrainConfig::resolve(task, self.config.as_deref(), &sets)?)
    }
}

pub fn run(task: Task, a: TrainArgs, threads: Option<i32>) -> Result<()> {
    let cfg = a.config(task)?;
    if a.from_scratch && task != Task::Pretrain {
        bail!("--from-scratch is for `rwkvtune pretrain`");
    }
    let rank_env = RankEnv::from_env()?;
    if cfg.devices > 1 && rank_env.is_none() {
        return launch::run_ranks(cfg.devices, threads);
    }
    // Rank 0 of a launched run, or a single process: the one that talks to the user.
    let lead = rank_env.as_ref().is_none_or(|e| e.rank == 0);
    let device = rank_device(&cfg.device, rank_env.as_ref())?;
    let loaded = AutoModel::from_pretrained(&a.model, device, Kind::Float)
        .with_context(|| format!("loading model {}", a.model.display()))?;
    let model = if a.from_scratch {
        Rwkv7::init(&loaded.config, cfg.seed as i64, device, Kind::Float)?
    } else {
        loaded
    };
    let tok = AutoTokenizer::from_pretrained(&a.model)
        .with_context(|| format!("loading the tokenizer of {}", a.model.display()))?;
    let opts = DataOptions {
        ctx_len: cfg.ctx_len,
        packing: cfg.packing,
        ..DataOptions::default()
    };
    let data = load_dataset(
        &a.data,
        task.data_kind(),
        &tok,
        model.dims.vocab_size,
        &opts,
    )?;
    if lead {
        eprintln!(
            "data: {} examples ({} tokens, {} trained) from {}",
            data.len(),
            data.stats.tokens,
            data.stats.trained_tokens,
            a.data.display()
        );
    }
    let mut trainer = Trainer::new(cfg, model, tok, data)?;
    trainer.progress = !a.quiet;
    let out = trainer.train()?;
    if !lead {
        return Ok(());
    }
    println!(
        "trained {} steps ({} skipped); last loss {:.4}; final model in {}",
        out.steps,
        out.skipped_steps,
        out.last_loss,
        out.final_dir.display()
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub data: PathBuf,
    /// Evaluate with this LoRA adapter applied.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// `sft` (prompt tokens masked) or `pretrain` (every token scored) tokenization of raw data.
    #[arg(long, default_value = "sft", value_parser = ["sft", "pretrain"])]
    pub task: String,
    #[arg(long, default_value_t = 4096)]
    pub ctx_len: usize,
    #[arg(long, default_value_t = 4)]
    pub micro_bsz: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run_eval(a: EvalArgs) -> Result<()> {
    let model = AutoModel::from_pretrained(&a.model, parse_device(&a.device)?, Kind::Float)
        .with_context(|| format!("loading model {}", a.model.display()))?;
    let mut model = model;
    if let Some(adapter) = &a.lora {
        rwkvtune_core::lora::load_adapter(&mut model, adapter)
            .with_context(|| format!("loading adapter {}", adapter.display()))?;
    }
    // An adapter directory written by training carries the tokenizer it was trained with.
    let tok_dir = a
        .lora
        .as_deref()
        .filter(|d| d.join("tokenizer_config.json").is_file())
        .unwrap_or(&a.model);
    let tok = AutoTokenizer::from_pretrained(tok_dir)?;
    let task = if a.task == "pretrain" {
        Task::Pretrain
    } else {
        Task::Sft
    };
    let opts = DataOptions {
        ctx_len: a.ctx_len,
        ..DataOptions::default()
    };
    let data = load_dataset(
        &a.data,
        task.data_kind(),
        &tok,
        model.dims.vocab_size,
        &opts,
    )?;
    let r = evaluate(&model, &data, a.micro_bsz)?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}
