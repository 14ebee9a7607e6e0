//! Checkpoints: a loadable hub directory (config.json, weights, tokenizer files; with LoRA the
//! adapter files, a merged model, or both) plus `trainer_state/` (the trained tensors in fp32,
//! optimizer moments, step, data cursor, config) — everything an exact resume needs.
//!
//! A checkpoint is assembled in a hidden `.<name>.partial-<pid>` directory and renamed into place,
//! so a crash (even `kill -9`) leaves either the whole checkpoint or none. Rotation scans the
//! output directory, so `save_total_limit` holds across restarts.

use super::config::TrainConfig;
use crate::data::{Batcher, Cursor};
use crate::error::{Error, Result};
use crate::hub::{read_weights, write_dir_atomically, write_json, write_weights, WeightFormat};
use crate::lora::{merged_tensors, save_adapter, LoraLayout};
use crate::model::Rwkv7;
use crate::tokenizer::AutoTokenizer;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const STATE_DIR: &str = "trainer_state";
const STATE_FILE: &str = "state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const TRAINABLE_FILE: &str = "trainable.safetensors";

/// `trainer_state/state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    pub name: String,
    /// Optimizer steps done.
    pub step: u64,
    /// The next micro-batch to train.
    pub cursor: Cursor,
    pub batcher: Batcher,
    /// Of the training data, to refuse resuming on different data.
    pub data_fingerprint: u64,
    pub consecutive_bad_steps: usize,
    pub skipped_steps: u64,
    /// fp16 dynamic loss scale.
    pub loss_scale: f64,
    pub has_optimizer_state: bool,
    /// The saving and optimisation settings (for GRPO runs: their shared part).
    pub config: TrainConfig,
    /// GRPO runs: the whole `GrpoConfig`, as written to `run_config.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpo: Option<serde_json::Value>,
}

impl TrainerState {
    /// The state of a run that has not trained yet.
    pub fn new(
        batcher: Batcher,
        data_fingerprint: u64,
        config: TrainConfig,
        loss_scale: f64,
    ) -> Self {
        TrainerState {
            name: String::new(),
            step: 0,
            cursor: Cursor::default(),
            batcher,
            data_fingerprint,
            consecutive_bad_steps: 0,
            skipped_steps: 0,
            loss_scale,
            has_optimizer_state: config.save_optimizer_state,
            config,
            grpo: None,
        }
    }
}

/// What a checkpoint writer needs from the trainer.
pub struct Snapshot<'a> {
    pub state: TrainerState,
    pub model: &'a Rwkv7,
    pub tokenizer: &'a AutoTokenizer,
    /// `exp_avg/<name>`, `exp_avg_sq/<name>`.
    pub optimizer: Vec<(String, Tensor)>,
    /// The trained tensors by name, in fp32 (the masters under mixed precision): what a resume
    /// restores, whatever the hub files hold.
    pub trainable: Vec<(String, Tensor)>,
    /// With LoRA: the adapter layout, `lora_save_mode` and the base model path.
    pub lora: Option<&'a LoraLayout>,
}

fn format_of(cfg: &TrainConfig) -> WeightFormat {
    if cfg.save_format == "safetensors" {
        WeightFormat::Safetensors
    } else {
        WeightFormat::Pth
    }
}

/// Writes what a user loads into `dir`: a hub directory (model + tokenizer) or, with LoRA, the
/// adapter files and/or the merged model, as `cfg.lora_save_mode` says.
pub fn write_model_dir(
    dir: &Path,
    model: &Rwkv7,
    tokenizer: &AutoTokenizer,
    cfg: &TrainConfig,
    lora: Option<&LoraLayout>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let format = format_of(cfg);
    let (adapter, full) = match (lora, cfg.lora_save_mode.as_str()) {
        (None, _) | (Some(_), "full") => (false, true),
        (Some(_), "both") => (true, true),
        (Some(_), _) => (true, false),
    };
    if full {
        let tensors = if lora.is_some() {
            merged_tensors(model, None)
        } else {
            model.named_tensors()
        };
        write_weights(&dir.join(format.file_name()), &tensors, format)?;
        write_json(&dir.join("config.json"), &model.config.to_json())?;
    }
    if let (true, Some(layout)) = (adapter, lora) {
        save_adapter(
            model,
            layout,
            dir,
            format,
            cfg.base_model.as_deref().map(Path::new),
        )?;
    }
    tokenizer.save_pretrained(dir)?;
    Ok(())
}

/// Saves checkpoint `snap.state.name` under `proj_dir`, then applies `save_total_limit`.
pub fn save(proj_dir: &Path, snap: &Snapshot) -> Result<PathBuf> {
    let dir = proj_dir.join(&snap.state.name);
    let cfg = &snap.state.config;
    write_dir_atomically(&dir, false, |stage| {
        write_model_dir(stage, snap.model, snap.tokenizer, cfg, snap.lora)?;
        let sd = stage.join(STATE_DIR);
        std::fs::create_dir_all(&sd).map_err(|e| Error::io(&sd, e))?;
        if snap.state.has_optimizer_state {
            write_weights(
                &sd.join(OPTIMIZER_FILE),
                &snap.optimizer,
                WeightFormat::Safetensors,
            )?;
        }
        write_weights(
            &sd.join(TRAINABLE_FILE),
            &snap.trainable,
            WeightFormat::Safetensors,
        )?;
        let value = serde_json::to_value(&snap.state)
            .map_err(|e| Error::json(sd.join(STATE_FILE), e.to_string()))?;
        write_json(&sd.join(STATE_FILE), &value)
    })?;
    rotate(proj_dir, cfg.save_total_limit, &dir)?;
    Ok(dir)
}

/// Checkpoints in `proj_dir`, oldest first (by step, then name).
pub fn list(proj_dir: &Path) -> Result<Vec<(TrainerState, PathBuf)>> {
    let Ok(entries) = std::fs::read_dir(proj_dir) else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("rwkv7-batch") || name.starts_with("rwkv7-epoch")) {
            continue;
        }
        if let Ok(state) = read_state(&path) {
            found.push((state, path));
        }
    }
    found.sort_by(|a, b| (a.0.step, &a.1).cmp(&(b.0.step, &b.1)));
    Ok(found)
}

fn rotate(proj_dir: &Path, limit: usize, keep: &Path) -> Result<()> {
    if limit == 0 {
        return Ok(());
    }
    let all = list(proj_dir)?;
    let excess = all.len().saturating_sub(limit);
    for (_, path) in all.into_iter().take(excess) {
        if path != keep {
            std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let p = dir.join(STATE_DIR).join(STATE_FILE);
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_str(&text).map_err(|e| Error::json(&p, e.to_string()))
}

/// `latest` → the newest checkpoint in `proj_dir`; anything else is a checkpoint directory.
pub fn resolve(spec: &str, proj_dir: &Path) -> Result<PathBuf> {
    if spec == "latest" {
        return list(proj_dir)?.pop().map(|(_, p)| p).ok_or_else(|| {
            Error::checkpoint(proj_dir, "--resume latest: no checkpoint (rwkv7-batch*/rwkv7-epoch* with trainer_state/) here")
        });
    }
    let p = PathBuf::from(spec);
    if !p.join(STATE_DIR).join(STATE_FILE).is_file() {
        return Err(Error::checkpoint(
            &p,
            "not a training checkpoint: trainer_state/state.json is missing",
        ));
    }
    Ok(p)
}

/// What a resume restores besides the weights of the hub directory.
pub struct Restored {
    pub state: TrainerState,
    pub optimizer: Option<Vec<(String, Tensor)>>,
    pub trainable: Vec<(String, Tensor)>,
}

pub fn load(dir: &Path) -> Result<Restored> {
    let state = read_state(dir)?;
    let sd = dir.join(STATE_DIR);
    let optimizer = state
        .has_optimizer_state
        .then(|| read_weights(&sd.join(OPTIMIZER_FILE)))
        .transpose()?;
    let trainable = read_weights(&sd.join(TRAINABLE_FILE))?;
    Ok(Restored {
        state,
        optimizer,
        trainable,
    })
}

/// The trained tensors as a checkpoint stores them: fp32, the masters under mixed precision.
pub fn trainable_snapshot(named: &[(String, Tensor)], master: &[Tensor]) -> Vec<(String, Tensor)> {
    named
        .iter()
        .enumerate()
        .map(|(i, (n, t))| {
            let w = master.get(i).map_or_else(
                || t.detach().to_kind(tch::Kind::Float),
                |m| m.shallow_clone(),
            );
            (n.clone(), w)
        })
        .collect()
}

/// Copies a loaded checkpoint's trained tensors into `named` (and the fp32 `master` copies) and
/// its moments into `opt`; returns the saved state for the caller's cursor and checks.
pub fn restore(
    dir: &Path,
    restored: Restored,
    named: &[(String, Tensor)],
    master: &[Tensor],
    opt: &mut crate::train::AdamW,
) -> Result<TrainerState> {
    let saved = restored.state;
    let by_name: std::collections::HashMap<_, _> = restored.trainable.into_iter().collect();
    let _g = tch::no_grad_guard();
    for (i, (name, t)) in named.iter().enumerate() {
        let w = by_name
            .get(name)
            .ok_or_else(|| Error::checkpoint(dir, format!("checkpoint lacks tensor `{name}`")))?;
        t.shallow_clone()
            .copy_(&w.to_device(t.device()).to_kind(t.kind()));
        if let Some(m) = master.get(i) {
            m.shallow_clone()
                .copy_(&w.to_kind(tch::Kind::Float).to_device(m.device()));
        }
    }
    match restored.optimizer {
        Some(o) => opt
            .load_state(o.into_iter().collect(), saved.step as i64)
            .map_err(|m| Error::checkpoint(dir, m))?,
        None => opt.step = saved.step as i64,
    }
    Ok(saved)
}

/// Removes staging directories left by a killed run.
pub fn clean_partials(proj_dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(proj_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && (name.contains(".partial-") || name.contains(".old-")) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}
