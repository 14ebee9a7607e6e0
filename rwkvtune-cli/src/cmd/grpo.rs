//! `grpo`: reinforcement learning with rewards from WebAssembly plugins.

use super::load_tokenizer;
use anyhow::{bail, Context, Result};
use clap::Args;
use rwkvtune_core::grpo::{GrpoConfig, GrpoOutcome, GrpoTrainer, PromptDataset};
use rwkvtune_core::hub::{parse_device, parse_kind, AutoModel};
use rwkvtune_core::plugin::{
    stderr_sink, CompletionPostprocessor, OnError, PluginRuntime, PluginSpec, RewardFn,
    RuntimeOptions,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct GrpoArgs {
    /// Model directory to train (the policy's starting weights).
    #[arg(long)]
    pub model: PathBuf,
    /// Prompts: .jsonl (or a .json array) of objects with `prompt`, optional `input_ids`, and
    /// any columns the reward functions read (e.g. `ground_truth`).
    #[arg(long)]
    pub data: PathBuf,
    /// A reward plugin (.wasm component); repeat for several, weighted by `reward_weights`.
    #[arg(long = "reward-plugin", value_name = "FILE.wasm", required = true)]
    pub reward_plugins: Vec<PathBuf>,
    /// A plugin's config: `NAME=JSON` or `NAME=@file.json`, NAME = the file stem (repeatable).
    #[arg(long = "plugin-config", value_name = "NAME=JSON")]
    pub plugin_configs: Vec<String>,
    /// What a failing plugin call does: abort, zero or skip.
    #[arg(long, default_value = "abort")]
    pub on_error: String,
    /// A completion post-processor plugin, run between generation and rewards.
    #[arg(long, value_name = "FILE.wasm")]
    pub postprocess_plugin: Option<PathBuf>,
    /// Where checkpoints, logs, rollouts and the final model go (config field proj_dir).
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// A config file (.toml or .json; a run_config.json written by a run reproduces it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override one config field, e.g. --set beta=0.04 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Resume from a checkpoint directory, or `latest` in the output directory.
    #[arg(long)]
    pub resume: Option<String>,
    #[arg(long)]
    pub num_generations: Option<usize>,
    /// Prompts per rollout.
    #[arg(long)]
    pub micro_bsz: Option<usize>,
    #[arg(long)]
    pub max_completion_length: Option<usize>,
    #[arg(long)]
    pub epoch_count: Option<usize>,
    #[arg(long)]
    pub lr_init: Option<f64>,
    #[arg(long)]
    pub lr_final: Option<f64>,
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    #[arg(long)]
    pub beta: Option<f64>,
    /// grpo, bnpo, dr_grpo or dapo.
    #[arg(long)]
    pub loss_type: Option<String>,
    #[arg(long)]
    pub temperature: Option<f64>,
    /// fp32 or bf16.
    #[arg(long)]
    pub precision: Option<String>,
    #[arg(long)]
    pub device: Option<String>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Train LoRA adapters (the reference policy is then the base model, adapters off).
    #[arg(long)]
    pub lora: bool,
    #[arg(long)]
    pub lora_r: Option<usize>,
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// No progress bar (plain lines only).
    #[arg(long)]
    pub quiet: bool,
}

impl GrpoArgs {
    /// File < --set < dedicated flags.
    fn config(&self) -> Result<GrpoConfig> {
        let mut sets = self.set.clone();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                sets.push(format!("{k}={v}"));
            }
        };
        let json_str = |s: &str| serde_json::to_string(s).unwrap_or_default();
        put(
            "num_generations",
            self.num_generations.map(|v| v.to_string()),
        );
        put("micro_bsz", self.micro_bsz.map(|v| v.to_string()));
        put(
            "max_completion_length",
            self.max_completion_length.map(|v| v.to_string()),
        );
        put("epoch_count", self.epoch_count.map(|v| v.to_string()));
        put("lr_init", self.lr_init.map(|v| format!("{v:e}")));
        put("lr_final", self.lr_final.map(|v| format!("{v:e}")));
        put("warmup_steps", self.warmup_steps.map(|v| v.to_string()));
        put("beta", self.beta.map(|v| v.to_string()));
        put("loss_type", self.loss_type.as_deref().map(json_str));
        put("temperature", self.temperature.map(|v| v.to_string()));
        put("precision", self.precision.as_deref().map(json_str));
        put("device", self.device.as_deref().map(json_str));
        put("seed", self.seed.map(|v| v.to_string()));
        put("use_lora", self.lora.then(|| "true".to_string()));
        put("lora.r", self.lora_r.map(|v| v.to_string()));
        put("lora.lora_alpha", self.lora_alpha.map(|v| v.to_string()));
        put(
            "base_model",
            Some(json_str(&self.model.display().to_string())),
        );
        put(
            "proj_dir",
            self.output_dir
                .as_ref()
                .map(|p| json_str(&p.display().to_string())),
        );
        put(
            "resume_from_checkpoint",
            self.resume.as_deref().map(json_str),
        );
        Ok(GrpoConfig::resolve(self.config.as_deref(), &sets)?)
    }
}

/// `NAME=JSON` / `NAME=@file` pairs by plugin file stem.
fn plugin_config(specs: &[String], plugin: &Path) -> Result<String> {
    let stem = plugin
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    for s in specs {
        let Some((name, value)) = s.split_once('=') else {
            bail!("--plugin-config `{s}`: expected NAME=JSON or NAME=@file.json");
        };
        if name.trim() == stem {
            return match value.strip_prefix('@') {
                Some(file) => std::fs::read_to_string(file)
                    .with_context(|| format!("--plugin-config {name}: reading {file}")),
                None => Ok(value.to_string()),
            };
        }
    }
    Ok("{}".to_string())
}

pub fn run(a: GrpoArgs) -> Result<()> {
    let cfg = a.config()?;
    for s in &a.plugin_configs {
        let name = s.split_once('=').map_or(s.as_str(), |(n, _)| n).trim();
        let known = a
            .reward_plugins
            .iter()
            .chain(&a.postprocess_plugin)
            .any(|p| p.file_stem().is_some_and(|st| st.to_string_lossy() == name));
        if !known {
            bail!("--plugin-config `{name}`: no --reward-plugin or --postprocess-plugin has that file stem");
        }
    }
    let on_error: OnError =
        serde_json::from_value(serde_json::Value::String(a.on_error.clone()))
            .map_err(|_| anyhow::anyhow!("--on-error `{}`: use abort, zero or skip", a.on_error))?;
    let tok = load_tokenizer(Some(&a.model))?;
    let model = AutoModel::from_pretrained(
        &a.model,
        parse_device(&cfg.device)?,
        parse_kind(&cfg.precision)?,
    )
    .with_context(|| format!("loading model {}", a.model.display()))?;
    let dataset = PromptDataset::load(&a.data, &tok, cfg.max_prompt_length, model.dims.vocab_size)?;
    let rt = PluginRuntime::new(RuntimeOptions::default())?;
    let shared_tok = Arc::new(tok.clone());
    let mut rewards: Vec<Box<dyn RewardFn>> = Vec::new();
    for p in &a.reward_plugins {
        let spec = PluginSpec::new(p)
            .with_config(plugin_config(&a.plugin_configs, p)?)
            .with_on_error(on_error);
        let r = rt
            .reward(&spec, shared_tok.clone(), stderr_sink())
            .with_context(|| format!("loading reward plugin {}", p.display()))?;
        eprintln!(
            "reward plugin {} {} ({})",
            r.info().name,
            r.info().version,
            p.display()
        );
        rewards.push(Box::new(r));
    }
    let postprocessor: Option<Box<dyn CompletionPostprocessor>> = match &a.postprocess_plugin {
        Some(p) => {
            let spec = PluginSpec::new(p)
                .with_config(plugin_config(&a.plugin_configs, p)?)
                .with_on_error(on_error);
            Some(Box::new(
                rt.postprocessor(&spec, shared_tok.clone(), stderr_sink())
                    .with_context(|| format!("loading post-processor {}", p.display()))?,
            ))
        }
        None => None,
    };
    let mut trainer = GrpoTrainer::new(cfg, model, tok, dataset, rewards)?;
    if let Some(p) = postprocessor {
        trainer = trainer.with_postprocessor(p);
    }
    trainer.progress = !a.quiet;
    let out = trainer.train()?;
    print_summary(&out);
    Ok(())
}

/// Mean reward of the first and last quarter of the rollouts: the number a user checks first.
pub fn print_summary(out: &GrpoOutcome) {
    let r = &out.rollout_rewards;
    let k = (r.len() / 4).max(1).min(r.len());
    let mean = |xs: &[f64]| {
        let v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    if !r.is_empty() {
        println!(
            "mean reward: first {k} rollouts {:.3} -> last {k} rollouts {:.3} ({} steps; final model {})",
            mean(&r[..k]),
            mean(&r[r.len() - k..]),
            out.steps,
            out.final_dir.display()
        );
    }
}
