//! Training configuration: the fields and defaults of the Python rwkvtune `SFTConfig` /
//! `PretrainConfig`, parsed once, validated once, then used as plain data.
//!
//! Sources are layered: defaults of the task ← a config file (TOML or JSON; a `run_config.json`
//! written by an earlier run reproduces it) ← `--set key=value` overrides. Unknown keys are errors.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What is being trained; decides defaults and how raw data is tokenized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Sft,
    Pretrain,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub task: Task,
    /// Longest sample, in tokens; longer ones are truncated.
    pub ctx_len: usize,
    pub micro_bsz: usize,
    pub epoch_count: usize,
    /// Micro-batches per epoch; `None` = one pass over the data.
    pub epoch_steps: Option<usize>,
    /// Save `rwkv7-epoch{N}` every this many epochs (0 = only the last).
    pub epoch_save: usize,
    /// Save `rwkv7-batch{N}` every this many optimizer steps (0 = never).
    pub save_every_n_batches: usize,
    /// Keep at most this many checkpoints (oldest deleted; 0 = keep all).
    pub save_total_limit: usize,
    pub save_optimizer_state: bool,
    /// A checkpoint directory, or `latest` (the newest checkpoint in `proj_dir`).
    pub resume_from_checkpoint: Option<String>,
    pub accumulate_grad_batches: usize,
    /// `normal` or `infctx` (chunked BPTT with the recurrent state carried across chunks).
    pub train_type: String,
    pub chunk_ctx: usize,
    /// infctx: backpropagate per chunk and detach the state (memory O(chunk)); `false` keeps the
    /// whole graph so gradients flow through the state into earlier chunks.
    pub truncated_bptt: bool,
    /// 1 = recompute each block in the backward pass instead of storing its activations.
    pub grad_cp: u8,
    pub lr_init: f64,
    pub lr_final: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub adam_eps: f64,
    /// Global gradient-norm clip (0 = off).
    pub grad_clip: f64,
    /// Add the L2Wrap gradient term of the official recipe.
    pub l2wrap: bool,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Data-parallel processes, one per device ([`crate::dist`]); each rank reads `RANK`,
    /// `WORLD_SIZE`, `MASTER_ADDR` and `MASTER_PORT`, which `rwkvtune sft|pretrain` sets.
    pub devices: usize,
    /// `auto` / `ddp` (data parallel when devices > 1) or `single`.
    pub strategy: String,
    /// `fp32`, `bf16` or `fp16` (bf16/fp16 keep fp32 master weights and optimizer state).
    pub precision: String,
    /// Output directory of checkpoints, logs and the final model.
    pub proj_dir: String,
    pub seed: u64,
    /// `tensorboard` to also write TensorBoard event files.
    pub report_to: String,
    pub run_name: String,
    pub log_every_n_steps: usize,
    /// Weight format of checkpoints and the final export: `pth` or `safetensors`.
    pub save_format: String,
    /// Pack short samples into full rows (pre-training).
    pub packing: bool,
    /// Abort after this many consecutive steps with a non-finite loss or gradient.
    pub max_bad_steps: usize,
    /// Train LoRA adapters (settings in `lora`) instead of every weight.
    pub use_lora: bool,
    /// What checkpoints and the final export hold with LoRA: `lora_only` (adapter files),
    /// `full` (a merged, plain model directory) or `both`.
    pub lora_save_mode: String,
    pub lora: crate::lora::LoraConfig,
    /// The base model directory (recorded in adapter_config.json).
    pub base_model: Option<String>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self::sft()
    }
}

impl TrainConfig {
    /// The seed's `SFTConfig` defaults.
    pub fn sft() -> Self {
        TrainConfig {
            task: Task::Sft,
            ctx_len: 2048,
            micro_bsz: 4,
            epoch_count: 10,
            epoch_steps: None,
            epoch_save: 1,
            save_every_n_batches: 0,
            save_total_limit: 2,
            save_optimizer_state: true,
            resume_from_checkpoint: None,
            accumulate_grad_batches: 1,
            train_type: "normal".into(),
            chunk_ctx: 512,
            truncated_bptt: true,
            grad_cp: 1,
            lr_init: 3e-4,
            lr_final: 1e-5,
            warmup_steps: 50,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.99,
            adam_eps: 1e-8,
            grad_clip: 1.0,
            l2wrap: true,
            device: "cpu".into(),
            devices: 1,
            strategy: "auto".into(),
            precision: "fp32".into(),
            proj_dir: "output_sft".into(),
            seed: 42,
            report_to: String::new(),
            run_name: String::new(),
            log_every_n_steps: 1,
            save_format: "pth".into(),
            packing: false,
            max_bad_steps: 5,
            use_lora: false,
            lora_save_mode: "lora_only".into(),
            lora: crate::lora::LoraConfig::default(),
            base_model: None,
        }
    }

    /// The seed's `PretrainConfig` defaults.
    pub fn pretrain() -> Self {
        TrainConfig {
            task: Task::Pretrain,
            epoch_save: 5,
            weight_decay: 0.01,
            proj_dir: "output_pretrain".into(),
            ..TrainConfig::sft()
        }
    }

    pub fn for_task(task: Task) -> Self {
        match task {
            Task::Sft => Self::sft(),
            Task::Pretrain => Self::pretrain(),
        }
    }

    /// Layers a config file (`.toml` or `.json`) and `key=value` overrides over the task defaults.
    pub fn resolve(task: Task, file: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let cfg: TrainConfig = layered(&Self::for_task(task), file, overrides, |_, map| {
            // A run_config.json carries the task it was written for; the command decides.
            map.remove("task");
            Ok(())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every rule about field values, in one place.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("config: {m}")));
        for (name, v) in [
            ("ctx_len", self.ctx_len),
            ("micro_bsz", self.micro_bsz),
            ("accumulate_grad_batches", self.accumulate_grad_batches),
            ("chunk_ctx", self.chunk_ctx),
            ("devices", self.devices),
        ] {
            if v == 0 {
                return bad(format!("`{name}` must be at least 1"));
            }
        }
        if !matches!(self.train_type.as_str(), "normal" | "infctx") {
            return bad(format!(
                "train_type `{}`: use `normal` or `infctx`",
                self.train_type
            ));
        }
        if !matches!(self.precision.as_str(), "fp32" | "bf16" | "fp16") {
            return bad(format!(
                "precision `{}`: use fp32, bf16 or fp16",
                self.precision
            ));
        }
        if !matches!(self.save_format.as_str(), "pth" | "safetensors") {
            return bad(format!(
                "save_format `{}`: use pth or safetensors",
                self.save_format
            ));
        }
        if self.grad_cp > 1 {
            return bad(format!("grad_cp must be 0 or 1, got {}", self.grad_cp));
        }
        if !matches!(self.report_to.as_str(), "" | "none" | "tensorboard") {
            return bad(format!(
                "report_to `{}`: use `tensorboard` or leave it empty",
                self.report_to
            ));
        }
        match self.strategy.as_str() {
            "auto" | "ddp" => {}
            "single" if self.devices == 1 => {}
            "single" => {
                return bad(format!(
                    "strategy `single` runs on one device but devices = {}; use `auto` or `ddp`",
                    self.devices
                ))
            }
            other => {
                return bad(format!(
                    "strategy `{other}` is not supported; use `auto` (one device, or data parallel over `devices` processes), `ddp` or `single`"
                ))
            }
        }
        if !(self.lr_init > 0.0 && self.lr_final >= 0.0) {
            return bad("lr_init must be > 0 and lr_final >= 0".into());
        }
        if !(0.0..1.0).contains(&self.beta1)
            || !(0.0..1.0).contains(&self.beta2)
            || self.adam_eps <= 0.0
        {
            return bad("beta1, beta2 must be in [0, 1) and adam_eps > 0".into());
        }
        if !matches!(self.lora_save_mode.as_str(), "lora_only" | "full" | "both") {
            return bad(format!(
                "lora_save_mode `{}`: use lora_only, full or both",
                self.lora_save_mode
            ));
        }
        if self.use_lora {
            self.lora
                .validate()
                .map_err(|e| Error::InvalidArgument(format!("config: lora: {e}")))?;
        }
        if self.weight_decay < 0.0 || self.grad_clip < 0.0 {
            return bad("weight_decay and grad_clip must be >= 0".into());
        }
        Ok(())
    }

    pub fn infctx(&self) -> bool {
        self.train_type == "infctx"
    }
}

/// `defaults` ← the table of `file` (after `prepare` edits it) ← `--set` overrides, parsed as
/// `T` (unknown names are errors; file errors name the file). Validation is the caller's.
pub(crate) fn layered<T: Serialize + serde::de::DeserializeOwned>(
    defaults: &T,
    file: Option<&Path>,
    overrides: &[String],
    prepare: impl FnOnce(&Path, &mut serde_json::Map<String, serde_json::Value>) -> Result<()>,
) -> Result<T> {
    let mut value =
        serde_json::to_value(defaults).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    if let Some(path) = file {
        let mut map = read_config_file(path)?;
        prepare(path, &mut map)?;
        for (k, v) in map {
            value[k] = v;
        }
        let cfg: T =
            serde_json::from_value(value.clone()).map_err(|e| Error::json(path, e.to_string()))?;
        value = serde_json::to_value(cfg).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    }
    apply_overrides(&mut value, overrides)?;
    serde_json::from_value(value).map_err(|e| Error::InvalidArgument(format!("config: {e}")))
}

/// The table of a config file (`.toml`, else JSON), errors naming the file.
fn read_config_file(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let layer: serde_json::Value = if path.extension().and_then(|e| e.to_str()) == Some("toml") {
        let t: toml::Value = toml::from_str(&text).map_err(|e| Error::json(path, e.to_string()))?;
        serde_json::to_value(t).map_err(|e| Error::json(path, e.to_string()))?
    } else {
        serde_json::from_str(&text).map_err(|e| Error::json(path, e.to_string()))?
    };
    match layer {
        serde_json::Value::Object(map) => Ok(map),
        _ => Err(Error::json(path, "expected a table of config fields")),
    }
}

/// Applies `--set key=value` overrides to a config's JSON form; `a.b=v` sets a nested field.
/// Only existing fields can be set, so a misspelt name is an error.
fn apply_overrides(value: &mut serde_json::Value, overrides: &[String]) -> Result<()> {
    for o in overrides {
        let (k, v) = o.split_once('=').ok_or_else(|| {
            Error::InvalidArgument(format!(
                "--set `{o}`: expected key=value, e.g. --set lr_init=1e-5"
            ))
        })?;
        let k = k.trim();
        // Numbers, booleans, null and arrays parse as JSON; anything else is a string.
        let v = serde_json::from_str(v.trim())
            .unwrap_or_else(|_| serde_json::Value::String(v.trim().to_string()));
        let mut slot = &mut *value;
        for part in k.split('.') {
            slot = match slot.get_mut(part) {
                Some(s) => s,
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "--set `{k}`: unknown config field"
                    )))
                }
            };
        }
        *slot = v;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_file_and_overrides_and_rejects_unknown_names() {
        let dir = tempfile::tempdir().unwrap();
        let toml_path = dir.path().join("c.toml");
        std::fs::write(&toml_path, "lr_init = 1e-4\nmicro_bsz = 2\n").unwrap();
        let c = TrainConfig::resolve(
            Task::Sft,
            Some(&toml_path),
            &["ctx_len=128".into(), "train_type=infctx".into()],
        )
        .unwrap();
        assert_eq!(
            (c.lr_init, c.micro_bsz, c.ctx_len, c.train_type.as_str()),
            (1e-4, 2, 128, "infctx")
        );
        let err = TrainConfig::resolve(Task::Sft, None, &["lr_intt=1".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("lr_intt"), "{err}");
        std::fs::write(&toml_path, "learning_rate = 1e-4\n").unwrap();
        let err = TrainConfig::resolve(Task::Sft, Some(&toml_path), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("c.toml") && err.contains("learning_rate"),
            "{err}"
        );
    }

    #[test]
    fn written_config_reproduces_the_run() {
        let c = TrainConfig::resolve(
            Task::Pretrain,
            None,
            &["lr_init=0.002".into(), "seed=7".into()],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run_config.json");
        std::fs::write(&p, serde_json::to_string_pretty(&c).unwrap()).unwrap();
        assert_eq!(
            TrainConfig::resolve(Task::Pretrain, Some(&p), &[]).unwrap(),
            c
        );
    }

    #[test]
    fn invalid_values_are_named() {
        for (set, word) in [
            ("micro_bsz=0", "micro_bsz"),
            ("precision=fp8", "fp8"),
            ("train_type=x", "train_type"),
            ("devices=0", "devices"),
            ("strategy=deepspeed_stage_2", "deepspeed_stage_2"),
        ] {
            let err = TrainConfig::resolve(Task::Sft, None, &[set.into()])
                .unwrap_err()
                .to_string();
            assert!(err.contains(word), "{set}: {err}");
        }
        let two = |strategy: &str| {
            TrainConfig::resolve(
                Task::Sft,
                None,
                &["devices=2".into(), format!("strategy={strategy}")],
            )
        };
        assert!(two("ddp").is_ok() && two("auto").is_ok());
        let err = two("single").unwrap_err().to_string();
        assert!(err.contains("runs on one device"), "{err}");
    }
}
