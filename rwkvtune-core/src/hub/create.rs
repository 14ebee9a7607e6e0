//! `create-hub`: turn a bare weight file (or a config name, for training from scratch) into a
//! hub directory that every rwkvtune command accepts.
//!
//! Everything is validated before anything is written (weights parsed and checked against the
//! config, vocabulary parsed), and the directory is assembled in a staging folder that is renamed
//! into place, so a failure leaves no half-made model behind.

use super::{
    dir_is_empty, read_weights, write_dir_atomically, write_json, write_weights, WeightFormat,
};
use crate::config::{preset, GenerationConfig, ModelConfig};
use crate::error::{Error, Result};
use crate::model::Rwkv7;
use crate::tokenizer::WorldTokenizer;
use std::path::PathBuf;
use tch::{Device, Kind};

/// The flags of `rwkvtune create-hub` (same names and defaults as the Python tool).
#[derive(Debug, Clone)]
pub struct CreateHubOptions {
    pub output_dir: PathBuf,
    /// Weights to package; `None` creates a freshly initialised model from `config_name`.
    pub model_file: Option<PathBuf>,
    /// A predefined config (`rwkv7-0.4b`, `0.4b`) or a JSON file; `None` derives it from the weights.
    pub config_name: Option<String>,
    pub n_layer: Option<usize>,
    pub n_embd: Option<usize>,
    pub vocab_size: Option<usize>,
    pub head_size_a: Option<usize>,
    pub ctx_len: Option<usize>,
    pub dim_att_lora: Option<usize>,
    pub dim_gate_lora: Option<usize>,
    pub dim_mv_lora: Option<usize>,
    /// Vocabulary to ship as `vocab.txt`; the built-in RWKV World vocabulary by default.
    pub vocab_file: Option<PathBuf>,
    pub chat_template: Option<PathBuf>,
    pub model_name: Option<String>,
    pub description: Option<String>,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub repetition_penalty: f64,
    pub max_length: usize,
    pub eos_token: String,
    pub model_max_length: usize,
    /// Symlink the weight file instead of copying it (only when no conversion is needed).
    pub link_weights: bool,
    pub save_format: WeightFormat,
    /// Write into an existing directory (its other files are kept).
    pub overwrite: bool,
    /// Seed of the fresh initialisation.
    pub seed: i64,
}

impl CreateHubOptions {
    pub fn new(output_dir: impl Into<PathBuf>) -> Self {
        let g = GenerationConfig::default();
        CreateHubOptions {
            output_dir: output_dir.into(),
            model_file: None,
            config_name: None,
            n_layer: None,
            n_embd: None,
            vocab_size: None,
            head_size_a: None,
            ctx_len: None,
            dim_att_lora: None,
            dim_gate_lora: None,
            dim_mv_lora: None,
            vocab_file: None,
            chat_template: None,
            model_name: None,
            description: None,
            temperature: g.temperature,
            top_p: g.top_p,
            top_k: g.top_k,
            repetition_penalty: g.repetition_penalty,
            max_length: g.max_length,
            eos_token: "\n\n".into(),
            model_max_length: 4096,
            link_weights: false,
            save_format: WeightFormat::Pth,
            overwrite: false,
            seed: 42,
        }
    }

    fn apply_overrides(&self, cfg: &mut ModelConfig) {
        let set = |slot: &mut usize, v: Option<usize>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        set(&mut cfg.n_layer, self.n_layer);
        set(&mut cfg.n_embd, self.n_embd);
        set(&mut cfg.vocab_size, self.vocab_size);
        set(&mut cfg.head_size_a, self.head_size_a);
        set(&mut cfg.ctx_len, self.ctx_len);
        set(&mut cfg.dim_att_lora, self.dim_att_lora);
        set(&mut cfg.dim_gate_lora, self.dim_gate_lora);
        set(&mut cfg.dim_mv_lora, self.dim_mv_lora);
    }
}

/// What [`create_hub`] produced.
#[derive(Debug)]
pub struct CreatedHub {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub parameters: i64,
}

/// Builds the hub directory described by `opts`.
pub fn create_hub(opts: &CreateHubOptions) -> Result<CreatedHub> {
    let out = &opts.output_dir;
    if out.exists() && !opts.overwrite && !dir_is_empty(out) {
        return Err(Error::checkpoint(
            out,
            "already exists and is not empty; pass --overwrite to write into it",
        ));
    }
    let tokenizer = match &opts.vocab_file {
        Some(p) => WorldTokenizer::from_vocab_file(p)?,
        None => WorldTokenizer::builtin().clone(),
    };
    let eos_id = tokenizer.encode(&opts.eos_token).first().copied();
    let template = opts
        .chat_template
        .as_ref()
        .map(|p| std::fs::read_to_string(p).map_err(|e| Error::io(p, e)))
        .transpose()?;

    // Model: loaded (and so fully validated) or freshly initialised.
    let named_cfg = opts.config_name.as_deref().map(preset).transpose()?;
    let (model, source_format) = match &opts.model_file {
        Some(file) => {
            let tensors = read_weights(file)?;
            // A conversion writes the file's tensors as they are (dtype, extra keys such as
            // block 0's unused v0/v1/v2), not the model's view of them.
            let as_stored: Vec<_> = tensors
                .iter()
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect();
            let cfg = named_cfg.map(|mut c| {
                opts.apply_overrides(&mut c);
                c
            });
            let mut model = Rwkv7::from_tensors(tensors, cfg, file)?;
            opts.apply_overrides(&mut model.config);
            (
                model,
                Some((file.clone(), WeightFormat::detect(file)?, as_stored)),
            )
        }
        None => {
            let mut cfg = named_cfg.ok_or_else(|| {
                Error::InvalidArgument(
                    "create-hub needs --model-file, or --config-name to initialise a fresh model"
                        .into(),
                )
            })?;
            opts.apply_overrides(&mut cfg);
            (
                Rwkv7::init(&cfg, opts.seed, Device::Cpu, Kind::Float)?,
                None,
            )
        }
    };
    let mut config = model.config.clone();
    config.eos_token_id = eos_id;

    write_dir_atomically(out, opts.overwrite, |stage| {
        let weights = stage.join(opts.save_format.file_name());
        match &source_format {
            Some((src, fmt, _)) if *fmt == opts.save_format && opts.link_weights => {
                let abs = std::fs::canonicalize(src).map_err(|e| Error::io(src, e))?;
                std::os::unix::fs::symlink(&abs, &weights).map_err(|e| Error::io(&weights, e))?;
            }
            Some((src, fmt, _)) if *fmt == opts.save_format => {
                std::fs::copy(src, &weights).map_err(|e| Error::io(&weights, e))?;
            }
            Some(_) if opts.link_weights => {
                return Err(Error::InvalidArgument(
                    "--link-weights cannot be combined with a format conversion (--save-format differs from the file)".into(),
                ))
            }
            Some((_, _, as_stored)) => write_weights(&weights, as_stored, opts.save_format)?,
            None => write_weights(&weights, &model.named_tensors(), opts.save_format)?,
        }
        write_json(&stage.join("config.json"), &config.to_json())?;
        let gen = GenerationConfig {
            eos_token_id: eos_id,
            temperature: opts.temperature,
            top_p: opts.top_p,
            top_k: opts.top_k,
            repetition_penalty: opts.repetition_penalty,
            max_length: opts.max_length,
            ..GenerationConfig::default()
        };
        write_json(
            &stage.join("generation_config.json"),
            &serde_json::to_value(&gen).unwrap_or_default(),
        )?;
        let mut tok_cfg = serde_json::json!({
            "tokenizer_class": "RWKV_TOKENIZER",
            "model_max_length": opts.model_max_length,
            "bos_token": null,
            "eos_token": opts.eos_token,
            "pad_token": null,
            "unk_token": null,
            "add_bos_token": false,
            "add_eos_token": false,
            "clean_up_tokenization_spaces": false,
            "vocab_file": "vocab.txt",
        });
        if let Some(t) = &template {
            tok_cfg["chat_template"] = serde_json::Value::String(t.clone());
        }
        write_json(&stage.join("tokenizer_config.json"), &tok_cfg)?;
        let vocab = match &opts.vocab_file {
            Some(p) => std::fs::read(p).map_err(|e| Error::io(p, e))?,
            None => crate::tokenizer::BUILTIN_VOCAB.to_vec(),
        };
        super::write_atomic(&stage.join("vocab.txt"), &vocab)?;
        super::write_atomic(
            &stage.join("README.md"),
            readme(opts, &config, model.num_parameters()).as_bytes(),
        )
    })?;
    Ok(CreatedHub {
        dir: out.clone(),
        parameters: model.num_parameters(),
        config,
    })
}

fn readme(opts: &CreateHubOptions, cfg: &ModelConfig, params: i64) -> String {
    let name = opts.model_name.clone().unwrap_or_else(|| {
        opts.output_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    format!(
        "# {name}\n\n{}\n\nRWKV-7 (x070) model: {} layers, n_embd {}, head size {}, vocab {}, {:.1} M parameters.\n\n\
         ```\nrwkvtune generate --model {} --prompt \"User: hi\\n\\nAssistant:\"\n```\n\n\
         Generation defaults: temperature {}, top_p {}, top_k {}, repetition_penalty {}, max_length {}.\n",
        opts.description.clone().unwrap_or_default(),
        cfg.n_layer,
        cfg.n_embd,
        cfg.head_size_a,
        cfg.vocab_size,
        params as f64 / 1e6,
        opts.output_dir.display(),
        opts.temperature,
        opts.top_p,
        opts.top_k,
        opts.repetition_penalty,
        opts.max_length
    )
}
