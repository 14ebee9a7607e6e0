//! Checkpoints: a loadable hub directory (config.json, weights, tokenizer files) plus
//! `trainer_state/` (optimizer moments, fp32 master weights when training in bf16/fp16, step,
//! data cursor, config) — everything an exact resume needs.
//!
//! A checkpoint is assembled in a hidden `.<name>.partial-<pid>` directory and renamed into place,
//! so a crash (even `kill -9`) leaves either the whole checkpoint or none. Rotation scans the
//! output directory, so `save_total_limit` holds across restarts.

use super::config::TrainConfig;
use crate::data::{Batcher, Cursor};
use crate::error::{Error, Result};
use crate::hub::{read_weights, write_json, write_weights, WeightFormat};
use crate::model::Rwkv7;
use crate::tokenizer::AutoTokenizer;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const STATE_DIR: &str = "trainer_state";
const STATE_FILE: &str = "state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const MASTER_FILE: &str = "master.safetensors";

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
    pub has_master_weights: bool,
    pub config: TrainConfig,
}

/// What a checkpoint writer needs from the trainer.
pub struct Snapshot<'a> {
    pub state: TrainerState,
    pub model: &'a Rwkv7,
    pub tokenizer: &'a AutoTokenizer,
    /// `exp_avg/<name>`, `exp_avg_sq/<name>`.
    pub optimizer: Vec<(String, Tensor)>,
    /// fp32 master copies (mixed precision only).
    pub master: Vec<(String, Tensor)>,
}

fn format_of(cfg: &TrainConfig) -> WeightFormat {
    if cfg.save_format == "safetensors" {
        WeightFormat::Safetensors
    } else {
        WeightFormat::Pth
    }
}

/// Writes a loadable hub directory (model + tokenizer) into `dir`.
pub fn write_model_dir(
    dir: &Path,
    model: &Rwkv7,
    tokenizer: &AutoTokenizer,
    format: WeightFormat,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_weights(
        &dir.join(format.file_name()),
        &model.named_tensors(),
        format,
    )?;
    write_json(&dir.join("config.json"), &model.config.to_json())?;
    tokenizer.save_pretrained(dir)?;
    Ok(())
}

/// Builds `dir` atomically: `fill` writes into a staging directory that then replaces `dir`.
pub fn write_dir_atomically(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stage = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage).map_err(|e| Error::io(&stage, e))?;
    if let Err(e) = fill(&stage) {
        let _ = std::fs::remove_dir_all(&stage);
        return Err(e);
    }
    // Replacing an existing directory: move it aside first so the swap is two renames.
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&stage, dir).map_err(|e| Error::io(dir, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Saves checkpoint `snap.state.name` under `proj_dir`, then applies `save_total_limit`.
pub fn save(proj_dir: &Path, snap: &Snapshot) -> Result<PathBuf> {
    let dir = proj_dir.join(&snap.state.name);
    let cfg = &snap.state.config;
    write_dir_atomically(&dir, |stage| {
        write_model_dir(stage, snap.model, snap.tokenizer, format_of(cfg))?;
        let sd = stage.join(STATE_DIR);
        std::fs::create_dir_all(&sd).map_err(|e| Error::io(&sd, e))?;
        if snap.state.has_optimizer_state {
            write_weights(
                &sd.join(OPTIMIZER_FILE),
                &snap.optimizer,
                WeightFormat::Safetensors,
            )?;
        }
        if snap.state.has_master_weights {
            write_weights(
                &sd.join(MASTER_FILE),
                &snap.master,
                WeightFormat::Safetensors,
            )?;
        }
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
    pub master: Option<Vec<(String, Tensor)>>,
}

pub fn load(dir: &Path) -> Result<Restored> {
    let state = read_state(dir)?;
    let sd = dir.join(STATE_DIR);
    let optimizer = state
        .has_optimizer_state
        .then(|| read_weights(&sd.join(OPTIMIZER_FILE)))
        .transpose()?;
    let master = state
        .has_master_weights
        .then(|| read_weights(&sd.join(MASTER_FILE)))
        .transpose()?;
    Ok(Restored {
        state,
        optimizer,
        master,
    })
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
