//! `merge-lora`: base model directory + adapter directory → a plain model directory.
//!
//! Everything is read and checked, and the merged weights computed, before anything is written;
//! the output is assembled in a staging folder renamed into place (as `create-hub` does), so a
//! failure leaves no output behind. The merge is W + s·B·A in fp32 from an fp32 copy of the base,
//! cast once to the requested precision at the end.

use super::adapter_io::{apply_adapter, read_adapter};
use super::peft::merge_adapters;
use crate::config::{GenerationConfig, ModelConfig};
use crate::error::{Error, Result};
use crate::hub::{dir_is_empty, write_dir_atomically};
use crate::hub::{read_weights, write_json, write_weights, ModelFiles, WeightFormat};
use crate::model::Rwkv7;
use crate::tokenizer::AutoTokenizer;
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The flags of `rwkvtune merge-lora`.
#[derive(Debug, Clone)]
pub struct MergeOptions {
    pub base_model: PathBuf,
    pub lora_model: PathBuf,
    pub output: PathBuf,
    pub device: Device,
    /// dtype of the saved weights (the merge itself is fp32).
    pub precision: Kind,
    pub save_format: WeightFormat,
}

/// What [`merge_lora`] wrote.
#[derive(Debug)]
pub struct MergeReport {
    pub output: PathBuf,
    pub weights: PathBuf,
    /// Layers whose adapter was merged.
    pub merged_layers: usize,
    /// Full tensors taken from the adapter (`modules_to_save`).
    pub replaced_tensors: usize,
}

/// Tokenizer and chat files carried over, the adapter's copy preferred.
const CARRIED: [&str; 7] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "rwkv_vocab_v20230424.txt",
    "merges.txt",
    "chat_template.jinja",
];

fn precision_name(k: Kind) -> &'static str {
    match k {
        Kind::Half => "fp16",
        Kind::BFloat16 => "bf16",
        _ => "fp32",
    }
}

fn absolute(p: &Path) -> String {
    std::fs::canonicalize(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .to_string_lossy()
        .into_owned()
}

pub fn merge_lora(opts: &MergeOptions) -> Result<MergeReport> {
    let out = &opts.output;
    if !matches!(opts.precision, Kind::Float | Kind::Half | Kind::BFloat16) {
        return Err(Error::InvalidArgument(format!(
            "precision {:?} is not one of fp32, fp16, bf16",
            opts.precision
        )));
    }
    if out.exists() && !dir_is_empty(out) {
        return Err(Error::checkpoint(
            out,
            "output directory already exists and is not empty; choose a new directory",
        ));
    }
    if !opts.base_model.is_dir() {
        return Err(Error::checkpoint(
            &opts.base_model,
            "base model is not a model directory (expected config.json and model.pth or model.safetensors)",
        ));
    }
    let files = ModelFiles::locate(&opts.base_model)?;
    let config = files.config.as_deref().map(ModelConfig::load).transpose()?;
    let adapter = read_adapter(&opts.lora_model)?;

    // The base exactly as stored: its key set and shapes are the output's.
    let stored = read_weights(&files.weights)?;
    let fp32: Vec<(String, Tensor)> = stored
        .iter()
        .map(|(n, t)| {
            let t = if t.is_floating_point() {
                t.to_kind(Kind::Float)
            } else {
                t.shallow_clone()
            };
            (n.clone(), t.to_device(opts.device))
        })
        .collect();
    let mut model = Rwkv7::from_tensors(fp32, config, &files.weights)?;
    let layout = apply_adapter(&mut model, &adapter)?;
    merge_adapters(&mut model);

    let merged: HashMap<String, Tensor> = model.named_tensors().into_iter().collect();
    let weights: Vec<(String, Tensor)> = {
        let _g = tch::no_grad_guard();
        stored
            .iter()
            .map(|(n, base)| {
                // Tensors the model ignores (block 0's v0/v1/v2) pass through unchanged; the
                // others keep the file's shape (flat vectors stay flat).
                let t = merged
                    .get(n)
                    .map_or_else(|| base.shallow_clone(), |t| t.reshape(base.size()));
                let t = if t.is_floating_point() {
                    t.to_kind(opts.precision)
                } else {
                    t
                };
                (n.clone(), t.to_device(Device::Cpu).contiguous())
            })
            .collect()
    };
    let mut config = model.config.clone();

    // Which carried files come from where (adapter first).
    let carried: Vec<(&str, PathBuf, bool)> = CARRIED
        .iter()
        .filter_map(|name| {
            let a = opts.lora_model.join(name);
            let b = files.dir.join(name);
            if a.is_file() {
                Some((*name, a, true))
            } else if b.is_file() {
                Some((*name, b, false))
            } else {
                None
            }
        })
        .collect();
    let gen_src = [
        opts.lora_model.join("generation_config.json"),
        files.dir.join("generation_config.json"),
    ]
    .into_iter()
    .find(|p| p.is_file());
    let mut gen = match &gen_src {
        Some(p) => GenerationConfig::from_dir(p.parent().unwrap_or(Path::new(".")))?,
        None => GenerationConfig {
            eos_token_id: config.eos_token_id,
            pad_token_id: config.pad_token_id,
            ..GenerationConfig::default()
        },
    };

    let weight_file = opts.save_format.file_name();
    write_dir_atomically(out, false, |stage| {
        for (name, src, _) in &carried {
            let dst = stage.join(name);
            std::fs::copy(src, &dst).map_err(|e| Error::io(&dst, e))?;
        }
        // eos follows the adapter's tokenizer (a fine-tune may add e.g. <|im_end|> as eos).
        if carried
            .iter()
            .any(|(n, _, from_adapter)| *n == "tokenizer_config.json" && *from_adapter)
        {
            let tok = AutoTokenizer::from_pretrained(stage)?;
            if let Some(eos) = tok.eos_token_id {
                config.eos_token_id = Some(eos);
                gen.eos_token_id = Some(eos);
            }
        }
        write_weights(&stage.join(weight_file), &weights, opts.save_format)?;
        write_json(&stage.join("config.json"), &config.to_json())?;
        write_json(
            &stage.join("generation_config.json"),
            &serde_json::to_value(&gen).map_err(|e| Error::json(stage, e.to_string()))?,
        )?;
        let cfg = &layout.config;
        write_json(
            &stage.join("merge_info.json"),
            &json!({
                "base_model": absolute(&opts.base_model),
                "lora_model": absolute(&opts.lora_model),
                "precision": precision_name(opts.precision),
                "save_format": weight_file,
                "r": cfg.r,
                "lora_alpha": cfg.lora_alpha,
                "use_rslora": cfg.use_rslora,
                "scaling": cfg.scaling(),
                "target_modules": cfg.target_modules,
                "merged_layers": layout.modules,
                "replaced_tensors": adapter.saved.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                "merged_at": utc_now(),
                "merged_by": "rwkvtune-merge-lora",
                "version": env!("CARGO_PKG_VERSION"),
            }),
        )
    })?;
    Ok(MergeReport {
        output: out.clone(),
        weights: out.join(weight_file),
        merged_layers: layout.modules.len(),
        replaced_tensors: adapter.saved.len(),
    })
}

/// Current UTC time as RFC 3339 (`2025-01-31T12:00:00Z`), without a date-time dependency.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
