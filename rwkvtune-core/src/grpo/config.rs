//! `GrpoConfig`: the fields and defaults of the Python rwkvtune `GRPOConfig` (plus the upstream
//! additions `repetition_penalty`, `advantage_clip`, `low_reward_threshold`, `low_reward_scale`),
//! layered like the supervised config (defaults ← file ← `--set`), validated once.
//!
//! Fields the Python tool accepts but never uses are not silently ignored: they are accepted only
//! at their inert default value and otherwise rejected with the reason ([`INERT`]).

use crate::error::{Error, Result};
use crate::train::config::layered;
use crate::train::{Task, TrainConfig};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpoConfig {
    // ---- rollout ----
    /// Completions per prompt (G); at least 2, since advantages compare a group's members.
    pub num_generations: usize,
    /// Times each rollout slice is trained on (μ); > 1 makes later passes off-policy (clipped).
    pub num_iterations: usize,
    /// Training micro-batches each rollout is split into.
    pub steps_per_generation: usize,
    /// Prompts per rollout.
    pub micro_bsz: usize,
    /// Longer prompts keep their last `max_prompt_length` tokens (for generation and scoring alike).
    pub max_prompt_length: usize,
    pub max_completion_length: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub repetition_penalty: f64,
    /// `{token id: bias}` added to the logits while sampling (after the temperature division).
    pub logit_bias: Option<BTreeMap<String, f32>>,
    /// Stop strings (besides the EOS token and the length limit).
    pub stop: Vec<String>,
    pub prefill_chunk_size: usize,
    /// Caps on prompts per prefill forward and rows per decode forward (-1 = no cap).
    pub max_prefill_batch_size: i64,
    pub max_decode_batch_size: i64,
    /// Rows per log-prob forward (memory bound); `None` = a whole micro-batch.
    pub logprob_batch_size: Option<usize>,
    /// Completions cut by `max_completion_length` get no loss.
    pub mask_truncated_completions: bool,

    // ---- rewards and advantages ----
    /// One weight per reward function (default all 1).
    pub reward_weights: Option<Vec<f32>>,
    /// `group`, `batch` or `none` (see [`advantages`](super::advantages)).
    pub scale_rewards: String,
    pub advantage_clip: Option<f64>,
    pub low_reward_threshold: Option<f64>,
    pub low_reward_scale: f64,

    // ---- loss ----
    /// `grpo`, `bnpo`, `dr_grpo` or `dapo` (see [`loss`](super::loss)).
    pub loss_type: String,
    pub epsilon: f64,
    pub epsilon_high: Option<f64>,
    /// Upper bound on the unclipped ratio (two-sided clipping); `None` = off.
    pub delta: Option<f64>,
    /// KL coefficient against the reference policy.
    pub beta: f64,
    /// `k1`, `k2`, `k3` (`schulman` = k3).
    pub kl_approximator: String,
    /// `token` or `sequence` (GSPO).
    pub importance_sampling_level: String,
    /// Train only on the tokens whose entropy is in this top fraction (1.0 = all).
    pub top_entropy_quantile: f64,
    /// Shuffle a rollout's rows before splitting it into micro-batches.
    pub shuffle_buffer: bool,
    /// A separate reference model (full fine-tuning with beta > 0); default: the starting weights.
    pub ref_model_path: Option<String>,
    /// TR-DPO style reference refresh: every `ref_model_sync_steps` steps
    /// `ref ← α·policy + (1−α)·ref` with α = `ref_model_mixup_alpha` (full fine-tuning only).
    pub sync_ref_model: bool,
    pub ref_model_sync_steps: usize,
    pub ref_model_mixup_alpha: f64,

    // ---- optimisation (as in supervised training) ----
    pub lr_init: f64,
    pub lr_final: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub adam_eps: f64,
    pub grad_clip: f64,
    /// Micro-batches per optimizer step; must divide `steps_per_generation · num_iterations`.
    pub accumulate_grad_batches: usize,
    pub grad_cp: u8,
    /// Alias of `grad_cp = 1` (the Python name).
    pub gradient_checkpointing: bool,
    pub epoch_count: usize,
    /// Training micro-batches per epoch (a multiple of `steps_per_generation · num_iterations`);
    /// `None` = one pass over the prompts.
    pub epoch_steps: Option<usize>,
    pub max_bad_steps: usize,

    // ---- hardware ----
    pub device: String,
    pub devices: usize,
    pub strategy: String,
    /// `fp32` or `bf16` (fp32 master weights).
    pub precision: String,

    // ---- output ----
    pub proj_dir: String,
    pub seed: u64,
    /// Save `rwkv7-batch{N}` at the first rollout boundary after every this many steps.
    pub save_every_n_batches: usize,
    pub save_total_limit: usize,
    pub save_optimizer_state: bool,
    pub resume_from_checkpoint: Option<String>,
    /// Console line every this many steps.
    pub log_steps: usize,
    pub report_to: String,
    pub run_name: String,
    pub save_format: String,
    /// Dump a rollout as JSONL every this many steps (0 = never).
    pub save_rollout_steps: usize,
    /// Default `proj_dir/rollouts`.
    pub save_rollout_path: Option<String>,
    pub use_lora: bool,
    pub lora_save_mode: String,
    pub lora: crate::lora::LoraConfig,
    pub base_model: Option<String>,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        let lora = crate::lora::LoraConfig::default();
        GrpoConfig {
            num_generations: 8,
            num_iterations: 1,
            steps_per_generation: 1,
            micro_bsz: 1,
            max_prompt_length: 512,
            max_completion_length: 256,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            repetition_penalty: 1.0,
            logit_bias: None,
            stop: Vec::new(),
            prefill_chunk_size: 2048,
            max_prefill_batch_size: -1,
            max_decode_batch_size: -1,
            logprob_batch_size: None,
            mask_truncated_completions: false,
            reward_weights: None,
            scale_rewards: "group".into(),
            advantage_clip: None,
            low_reward_threshold: None,
            low_reward_scale: 0.01,
            loss_type: "dapo".into(),
            epsilon: 0.2,
            epsilon_high: None,
            delta: None,
            beta: 0.0,
            kl_approximator: "schulman".into(),
            importance_sampling_level: "token".into(),
            top_entropy_quantile: 1.0,
            shuffle_buffer: true,
            ref_model_path: None,
            sync_ref_model: false,
            ref_model_sync_steps: 512,
            ref_model_mixup_alpha: 0.6,
            lr_init: 1e-6,
            lr_final: 1e-7,
            warmup_steps: 50,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.99,
            adam_eps: 1e-8,
            grad_clip: 1.0,
            accumulate_grad_batches: 1,
            grad_cp: 0,
            gradient_checkpointing: false,
            epoch_count: 1,
            epoch_steps: None,
            max_bad_steps: 5,
            device: "cpu".into(),
            devices: 1,
            strategy: "auto".into(),
            precision: "bf16".into(),
            proj_dir: "output_grpo".into(),
            seed: 42,
            save_every_n_batches: 0,
            save_total_limit: 2,
            save_optimizer_state: true,
            resume_from_checkpoint: None,
            log_steps: 10,
            report_to: String::new(),
            run_name: String::new(),
            save_format: "pth".into(),
            save_rollout_steps: 0,
            save_rollout_path: None,
            use_lora: false,
            lora_save_mode: "lora_only".into(),
            lora,
            base_model: None,
        }
    }
}

/// Python `GRPOConfig` fields that have no effect there: accepted at this value (or null),
/// rejected otherwise, with what to do instead.
pub const INERT: &[(&str, &str, &str)] = &[
    (
        "use_torch_compile",
        "false",
        "there is no torch.compile here; remove it",
    ),
    (
        "generation_batch_mode",
        "\"sequential\"",
        "rollouts are always batched; cap them with max_decode_batch_size",
    ),
    (
        "generation_batch_size",
        "8",
        "cap rollout batches with max_decode_batch_size / max_prefill_batch_size",
    ),
    (
        "layerwise_lr",
        "1",
        "the RWKV parameter groups (att.w0 at 2x) are always used",
    ),
    (
        "num_workers",
        "0",
        "prompts are held in memory; there are no loader workers",
    ),
    (
        "train_type",
        "\"normal\"",
        "GRPO scores whole sequences; long prompts are prefilled in prefill_chunk_size chunks",
    ),
    (
        "chunk_ctx",
        "512",
        "GRPO does not use chunked BPTT; use prefill_chunk_size",
    ),
    ("truncated_bptt", "true", "GRPO does not use chunked BPTT"),
    (
        "accelerator",
        "\"gpu\"",
        "choose the device with `device` (cpu, cuda, cuda:N)",
    ),
    ("log_entropy", "true", "entropy is always logged"),
    ("n_layer", "null", "the architecture comes from the model"),
    ("n_embd", "null", "the architecture comes from the model"),
    (
        "vocab_size",
        "null",
        "the architecture comes from the model",
    ),
    (
        "head_size_a",
        "null",
        "the architecture comes from the model",
    ),
    (
        "dim_att_lora",
        "null",
        "the architecture comes from the model",
    ),
    (
        "dim_gate_lora",
        "null",
        "the architecture comes from the model",
    ),
    (
        "dim_mv_lora",
        "null",
        "the architecture comes from the model",
    ),
    (
        "ctx_len",
        "null",
        "it is max_prompt_length + max_completion_length",
    ),
];

fn strip_inert(map: &mut serde_json::Map<String, Value>, source: &Path) -> Result<()> {
    for (name, inert, why) in INERT {
        if let Some(v) = map.remove(*name) {
            let inert: Value = serde_json::from_str(inert).unwrap_or(Value::Null);
            if !(v.is_null() || v == inert) {
                return Err(Error::json(
                    source,
                    format!("`{name}` = {v} has no effect in rwkvtune ({why})"),
                ));
            }
        }
    }
    Ok(())
}

impl GrpoConfig {
    /// Layers a config file (`.toml` or `.json`; a `run_config.json` of an earlier GRPO run
    /// reproduces it) and `key=value` overrides over the defaults.
    pub fn resolve(file: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let cfg: GrpoConfig = layered(&Self::default(), file, overrides, |path, map| {
            strip_inert(map, path)
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Micro-batches trained per rollout.
    pub fn generate_every(&self) -> usize {
        self.steps_per_generation * self.num_iterations
    }

    pub fn epsilon_high(&self) -> f64 {
        self.epsilon_high.unwrap_or(self.epsilon)
    }

    /// The `logit_bias` table as ids.
    pub fn logit_bias_ids(&self) -> Result<Vec<(u32, f32)>> {
        let mut out = Vec::new();
        for (k, v) in self.logit_bias.iter().flatten() {
            let id: u32 = k.trim().parse().map_err(|_| {
                Error::InvalidArgument(format!("config: logit_bias key `{k}` is not a token id"))
            })?;
            out.push((id, *v));
        }
        Ok(out)
    }

    /// Every rule about field values, in one place.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("config: {m}")));
        for (name, v) in [
            ("num_iterations", self.num_iterations),
            ("steps_per_generation", self.steps_per_generation),
            ("micro_bsz", self.micro_bsz),
            ("max_prompt_length", self.max_prompt_length),
            ("max_completion_length", self.max_completion_length),
            ("prefill_chunk_size", self.prefill_chunk_size),
            ("accumulate_grad_batches", self.accumulate_grad_batches),
            ("epoch_count", self.epoch_count),
            ("log_steps", self.log_steps),
        ] {
            if v == 0 {
                return bad(format!("`{name}` must be at least 1"));
            }
        }
        if self.num_generations < 2 {
            return bad(format!(
                "num_generations must be at least 2 (advantages compare the completions of a prompt), got {}",
                self.num_generations
            ));
        }
        if self.micro_bsz * self.num_generations < self.steps_per_generation {
            return bad(format!(
                "a rollout has micro_bsz x num_generations = {} rows, fewer than steps_per_generation = {}",
                self.micro_bsz * self.num_generations,
                self.steps_per_generation
            ));
        }
        if !self
            .generate_every()
            .is_multiple_of(self.accumulate_grad_batches)
        {
            return bad(format!(
                "accumulate_grad_batches ({}) must divide steps_per_generation x num_iterations ({}), so optimizer steps end with rollouts",
                self.accumulate_grad_batches,
                self.generate_every()
            ));
        }
        if let Some(e) = self.epoch_steps {
            if e == 0 || e % self.generate_every() != 0 {
                return bad(format!(
                    "epoch_steps ({e}) counts training micro-batches: use a positive multiple of steps_per_generation x num_iterations ({})",
                    self.generate_every()
                ));
            }
        }
        if self.logprob_batch_size == Some(0) {
            return bad("logprob_batch_size must be at least 1 (or absent)".into());
        }
        for (name, v) in [
            ("max_prefill_batch_size", self.max_prefill_batch_size),
            ("max_decode_batch_size", self.max_decode_batch_size),
        ] {
            if v == 0 || v < -1 {
                return bad(format!("{name} must be -1 (no cap) or positive, got {v}"));
            }
        }
        if !matches!(self.scale_rewards.as_str(), "group" | "batch" | "none") {
            return bad(format!(
                "scale_rewards `{}`: use group, batch or none",
                self.scale_rewards
            ));
        }
        if !matches!(
            self.loss_type.as_str(),
            "grpo" | "bnpo" | "dr_grpo" | "dapo"
        ) {
            return bad(format!(
                "loss_type `{}`: use grpo, bnpo, dr_grpo or dapo",
                self.loss_type
            ));
        }
        if !matches!(
            self.kl_approximator.as_str(),
            "k1" | "k2" | "k3" | "schulman"
        ) {
            return bad(format!(
                "kl_approximator `{}`: use k1, k2 or k3 (schulman = k3)",
                self.kl_approximator
            ));
        }
        if !matches!(
            self.importance_sampling_level.as_str(),
            "token" | "sequence"
        ) {
            return bad(format!(
                "importance_sampling_level `{}`: use token or sequence",
                self.importance_sampling_level
            ));
        }
        if !(self.epsilon >= 0.0 && self.epsilon < 1.0 && self.epsilon_high() >= 0.0) {
            return bad("epsilon must be in [0, 1) and epsilon_high >= 0".into());
        }
        if let Some(d) = self.delta {
            if d <= 1.0 {
                return bad(format!(
                    "delta must be > 1 (an upper bound on the ratio), got {d}"
                ));
            }
        }
        if self.beta < 0.0 {
            return bad(format!("beta must be >= 0, got {}", self.beta));
        }
        if !(self.top_entropy_quantile > 0.0 && self.top_entropy_quantile <= 1.0) {
            return bad(format!(
                "top_entropy_quantile must be in (0, 1], got {}",
                self.top_entropy_quantile
            ));
        }
        if let Some(c) = self.advantage_clip {
            if c <= 0.0 {
                return bad(format!("advantage_clip must be > 0, got {c}"));
            }
        }
        if self.precision == "fp16" {
            return bad("precision fp16 is not supported for GRPO (no loss scaling of the policy loss); use bf16 or fp32".into());
        }
        if self.sync_ref_model && self.use_lora {
            return bad("sync_ref_model applies to full fine-tuning; with LoRA the reference is the base model (adapters off)".into());
        }
        if self.sync_ref_model
            && (self.ref_model_sync_steps == 0
                || !(0.0..=1.0).contains(&self.ref_model_mixup_alpha))
        {
            return bad("sync_ref_model needs ref_model_sync_steps >= 1 and ref_model_mixup_alpha in [0, 1]".into());
        }
        if self.ref_model_path.is_some() && self.use_lora {
            return bad("ref_model_path is for full fine-tuning; with LoRA the reference is the base model (adapters off)".into());
        }
        self.logit_bias_ids()?;
        if let Some(w) = &self.reward_weights {
            if w.iter().any(|x| !x.is_finite()) {
                return bad("reward_weights must be finite".into());
            }
        }
        crate::generate::SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            repetition_penalty: self.repetition_penalty,
            seed: 0,
            logit_bias: Vec::new(),
        }
        .validate()
        .map_err(|m| Error::InvalidArgument(format!("config: {m}")))?;
        if self.devices != 1 {
            return bad(format!(
                "devices = {}: GRPO runs on one device (data-parallel training covers sft and pretrain)",
                self.devices
            ));
        }
        // The shared fields follow the supervised rules (precision, LoRA, ...).
        self.train_config().validate()
    }

    /// The settings shared with supervised training (optimizer, saving, LoRA, hardware), as the
    /// checkpoint code and the optimizer expect them.
    pub fn train_config(&self) -> TrainConfig {
        let mut t = TrainConfig::for_task(Task::Sft);
        t.ctx_len = self.max_prompt_length + self.max_completion_length;
        t.micro_bsz = self.micro_bsz;
        t.epoch_count = self.epoch_count;
        t.epoch_steps = self.epoch_steps;
        t.save_every_n_batches = self.save_every_n_batches;
        t.save_total_limit = self.save_total_limit;
        t.save_optimizer_state = self.save_optimizer_state;
        t.resume_from_checkpoint = self.resume_from_checkpoint.clone();
        t.accumulate_grad_batches = self.accumulate_grad_batches;
        t.grad_cp = if self.gradient_checkpointing {
            1
        } else {
            self.grad_cp
        };
        (t.lr_init, t.lr_final, t.warmup_steps) = (self.lr_init, self.lr_final, self.warmup_steps);
        (t.weight_decay, t.beta1, t.beta2, t.adam_eps) =
            (self.weight_decay, self.beta1, self.beta2, self.adam_eps);
        t.grad_clip = self.grad_clip;
        t.device = self.device.clone();
        t.devices = self.devices;
        t.strategy = self.strategy.clone();
        t.precision = self.precision.clone();
        t.proj_dir = self.proj_dir.clone();
        t.seed = self.seed;
        t.report_to = self.report_to.clone();
        t.run_name = self.run_name.clone();
        t.log_every_n_steps = self.log_steps;
        t.save_format = self.save_format.clone();
        t.max_bad_steps = self.max_bad_steps;
        t.use_lora = self.use_lora;
        t.lora_save_mode = self.lora_save_mode.clone();
        t.lora = self.lora.clone();
        t.base_model = self.base_model.clone();
        t
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| json!({}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_python_tool_and_unknown_or_inert_fields_are_named() {
        let c = GrpoConfig::default();
        assert_eq!(
            (
                c.num_generations,
                c.loss_type.as_str(),
                c.epsilon,
                c.beta,
                c.lr_init
            ),
            (8, "dapo", 0.2, 0.0, 1e-6)
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.json");
        std::fs::write(
            &p,
            r#"{"use_torch_compile": false, "num_workers": 0, "beta": 0.04}"#,
        )
        .unwrap();
        assert_eq!(GrpoConfig::resolve(Some(&p), &[]).unwrap().beta, 0.04);
        std::fs::write(&p, r#"{"use_torch_compile": true}"#).unwrap();
        let err = GrpoConfig::resolve(Some(&p), &[]).unwrap_err().to_string();
        assert!(
            err.contains("g.json") && err.contains("use_torch_compile"),
            "{err}"
        );
        std::fs::write(&p, r#"{"num_generation": 4}"#).unwrap();
        let err = GrpoConfig::resolve(Some(&p), &[]).unwrap_err().to_string();
        assert!(err.contains("num_generation"), "{err}");
        for (set, word) in [
            ("num_generations=1", "num_generations"),
            ("loss_type=ppo", "ppo"),
            ("accumulate_grad_batches=3", "accumulate_grad_batches"),
            ("kl_approximator=k4", "k4"),
            ("scale_rewards=rank", "rank"),
            ("devices=2", "GRPO runs on one device"),
        ] {
            let err = GrpoConfig::resolve(None, &[set.into()])
                .unwrap_err()
                .to_string();
            assert!(err.contains(word), "{set}: {err}");
        }
    }

    #[test]
    fn written_config_reproduces_the_run() {
        let c = GrpoConfig::resolve(
            None,
            &["beta=0.1".into(), "logit_bias={\"5\": -100}".into()],
        )
        .unwrap();
        assert_eq!(c.logit_bias_ids().unwrap(), [(5, -100.0)]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run_config.json");
        std::fs::write(&p, serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(GrpoConfig::resolve(Some(&p), &[]).unwrap(), c);
    }
}
