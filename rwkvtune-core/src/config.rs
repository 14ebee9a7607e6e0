//! Model-hub configuration files: `config.json` ([`ModelConfig`]), `generation_config.json`
//! ([`GenerationConfig`]) and the predefined model sizes ([`preset`]).
//!
//! Field names and defaults follow the Python rwkvtune 0.1.0 hub format so directories move
//! between the tools. Unknown keys are kept (in `extra`) and written back unchanged.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `config.json` of a model directory. The weights are the source of truth for every dimension;
/// [`crate::model::Rwkv7`] checks that this file agrees with them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelConfig {
    pub model_type: String,
    pub architectures: Vec<String>,
    pub n_layer: usize,
    pub n_embd: usize,
    pub vocab_size: usize,
    /// Head size N (channels per head).
    pub head_size_a: usize,
    pub ctx_len: usize,
    /// Width of the decay (w1/w2) and in-context-learning-rate (a1/a2) low-rank pairs.
    pub dim_att_lora: usize,
    /// Width of the gate pair g1/g2.
    pub dim_gate_lora: usize,
    /// Width of the value-residual pair v1/v2.
    pub dim_mv_lora: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    /// Everything else in the file (dim_att, dim_ffn, my_testing, ...), kept for round trips.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            model_type: "rwkv7".into(),
            architectures: vec!["RWKV7Model".into()],
            n_layer: 12,
            n_embd: 768,
            vocab_size: 65536,
            head_size_a: 64,
            ctx_len: 4096,
            dim_att_lora: 64,
            dim_gate_lora: 128,
            dim_mv_lora: 32,
            bos_token_id: None,
            eos_token_id: Some(261),
            pad_token_id: Some(0),
            extra: serde_json::Map::new(),
        }
    }
}

impl ModelConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: ModelConfig =
            serde_json::from_str(&text).map_err(|e| Error::json(path, e.to_string()))?;
        cfg.validate().map_err(|msg| Error::json(path, msg))?;
        Ok(cfg)
    }

    /// Structural checks that do not need the weights.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.model_type != "rwkv7" {
            return Err(format!(
                "model_type is `{}`; rwkvtune supports only `rwkv7` (RWKV-7 \"x070\")",
                self.model_type
            ));
        }
        for (name, v) in [
            ("n_layer", self.n_layer),
            ("n_embd", self.n_embd),
            ("vocab_size", self.vocab_size),
            ("head_size_a", self.head_size_a),
            ("dim_att_lora", self.dim_att_lora),
            ("dim_gate_lora", self.dim_gate_lora),
            ("dim_mv_lora", self.dim_mv_lora),
        ] {
            if v == 0 {
                return Err(format!("field `{name}` must be positive"));
            }
        }
        if !self.n_embd.is_multiple_of(self.head_size_a) {
            return Err(format!(
                "n_embd {} is not a multiple of head_size_a {}",
                self.n_embd, self.head_size_a
            ));
        }
        Ok(())
    }

    /// Parameters of a model of this shape (block 0 has no value-residual tensors).
    pub fn parameter_count(&self) -> u64 {
        let (c, v, l) = (
            self.n_embd as u64,
            self.vocab_size as u64,
            self.n_layer as u64,
        );
        let (dw, dg, dv) = (
            self.dim_att_lora as u64,
            self.dim_gate_lora as u64,
            self.dim_mv_lora as u64,
        );
        // x_r..x_g, w0, a0, k_k, k_a, r_k: 11 vectors; ln1, ln2, ln_x: 6; ffn.x_k: 1.
        let per_layer = 18 * c + 2 * c * (2 * dw + dg) + 4 * c * c + 8 * c * c;
        let value_residual = c + 2 * c * dv;
        2 * v * c + 2 * c + 2 * c + l * per_layer + l.saturating_sub(1) * value_residual
    }

    pub fn n_head(&self) -> usize {
        self.n_embd / self.head_size_a
    }

    /// The JSON written to `config.json`, with the informational fields the Python tool adds.
    pub fn to_json(&self) -> serde_json::Value {
        let mut cfg = self.clone();
        let defaults = [
            ("dim_att", serde_json::json!(self.n_embd)),
            ("dim_ffn", serde_json::json!(self.n_embd * 4)),
            ("head_size_divisor", serde_json::json!(8)),
            ("my_testing", serde_json::json!("x070")),
            ("use_cache", serde_json::json!(true)),
            ("tie_word_embeddings", serde_json::json!(false)),
            (
                "transformers_version",
                serde_json::json!("rwkvtune-rs-0.1.0"),
            ),
        ];
        for (k, v) in defaults {
            cfg.extra.entry(k.to_string()).or_insert(v);
        }
        serde_json::to_value(&cfg).unwrap_or(serde_json::Value::Null)
    }
}

/// One predefined size (RWKV-7 "Goose" release shapes). Head size is 64 for all of them.
struct Preset {
    name: &'static str,
    n_layer: usize,
    n_embd: usize,
    ctx_len: usize,
    dim_att_lora: usize,
    dim_gate_lora: usize,
    dim_mv_lora: usize,
}

const PRESETS: &[Preset] = &[
    Preset {
        name: "rwkv7-0.1b",
        n_layer: 12,
        n_embd: 768,
        ctx_len: 4096,
        dim_att_lora: 64,
        dim_gate_lora: 128,
        dim_mv_lora: 32,
    },
    Preset {
        name: "rwkv7-0.4b",
        n_layer: 24,
        n_embd: 1024,
        ctx_len: 4096,
        dim_att_lora: 64,
        dim_gate_lora: 128,
        dim_mv_lora: 32,
    },
    Preset {
        name: "rwkv7-1.5b",
        n_layer: 24,
        n_embd: 2048,
        ctx_len: 4096,
        dim_att_lora: 96,
        dim_gate_lora: 256,
        dim_mv_lora: 64,
    },
    Preset {
        name: "rwkv7-2.9b",
        n_layer: 32,
        n_embd: 2560,
        ctx_len: 4096,
        dim_att_lora: 96,
        dim_gate_lora: 320,
        dim_mv_lora: 64,
    },
    Preset {
        name: "rwkv7-7.2b",
        n_layer: 32,
        n_embd: 4096,
        ctx_len: 4096,
        dim_att_lora: 128,
        dim_gate_lora: 480,
        dim_mv_lora: 96,
    },
    Preset {
        name: "rwkv7-13.3b",
        n_layer: 61,
        n_embd: 4096,
        ctx_len: 8192,
        dim_att_lora: 192,
        dim_gate_lora: 384,
        dim_mv_lora: 128,
    },
    // Not a release size: the small built-in demo model (trains on a laptop CPU in seconds).
    Preset {
        name: "rwkv7-demo",
        n_layer: 2,
        n_embd: 128,
        ctx_len: 512,
        dim_att_lora: 32,
        dim_gate_lora: 48,
        dim_mv_lora: 16,
    },
];

/// Names accepted by [`preset`]: full names (`rwkv7-1.5b`) and short ones (`1.5b`).
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

/// Resolves a predefined configuration by name (`rwkv7-0.4b` or `0.4b`), or reads a JSON file
/// when `name` is a path (contains `/` or ends with `.json`).
pub fn preset(name: &str) -> Result<ModelConfig> {
    if name.contains('/') || name.ends_with(".json") {
        return ModelConfig::load(Path::new(name));
    }
    let found = PRESETS
        .iter()
        .find(|p| p.name == name || p.name.strip_prefix("rwkv7-") == Some(name));
    let Some(p) = found else {
        return Err(Error::UnknownConfig {
            name: name.to_string(),
            known: preset_names().join(", "),
        });
    };
    Ok(ModelConfig {
        n_layer: p.n_layer,
        n_embd: p.n_embd,
        ctx_len: p.ctx_len,
        dim_att_lora: p.dim_att_lora,
        dim_gate_lora: p.dim_gate_lora,
        dim_mv_lora: p.dim_mv_lora,
        ..ModelConfig::default()
    })
}

/// `generation_config.json`: sampling defaults of a model directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerationConfig {
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    pub do_sample: bool,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub repetition_penalty: f64,
    pub max_length: usize,
    pub max_new_tokens: Option<usize>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            bos_token_id: None,
            eos_token_id: Some(261),
            pad_token_id: Some(0),
            do_sample: true,
            temperature: 1.0,
            top_p: 0.85,
            top_k: 0,
            repetition_penalty: 1.0,
            max_length: 1024,
            max_new_tokens: None,
            extra: serde_json::Map::new(),
        }
    }
}

impl GenerationConfig {
    /// Reads `dir/generation_config.json`, or the defaults when the file is absent.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("generation_config.json");
        if !path.exists() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::json(&path, e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_resolve_by_full_and_short_name() {
        let a = preset("rwkv7-1.5b").unwrap();
        let b = preset("1.5b").unwrap();
        assert_eq!(a, b);
        assert_eq!((a.n_layer, a.n_embd, a.dim_gate_lora), (24, 2048, 256));
        let big = preset("rwkv7-13.3b").unwrap();
        assert_eq!(
            (big.n_layer, big.ctx_len, big.dim_att_lora),
            (61, 8192, 192)
        );
    }

    #[test]
    fn preset_sizes_match_the_release_parameter_counts() {
        // Billions, as listed for the released RWKV-7 models (spec §4.4).
        for (name, billions) in [
            ("0.1b", 0.191),
            ("0.4b", 0.451),
            ("1.5b", 1.527),
            ("2.9b", 2.948),
            ("7.2b", 7.199),
            ("13.3b", 13.269),
        ] {
            let got = preset(name).unwrap().parameter_count() as f64 / 1e9;
            assert!(
                (got - billions).abs() < 0.0015,
                "{name}: {got:.4} B, expected {billions} B"
            );
        }
    }

    #[test]
    fn unknown_preset_lists_known_names() {
        let err = preset("rwkv7-9b").unwrap_err().to_string();
        assert!(
            err.contains("rwkv7-9b") && err.contains("rwkv7-0.1b"),
            "{err}"
        );
    }

    #[test]
    fn config_json_keeps_unknown_keys() {
        let text = r#"{"model_type":"rwkv7","n_layer":2,"n_embd":128,"vocab_size":65536,
            "head_size_a":64,"dim_att_lora":32,"dim_gate_lora":48,"dim_mv_lora":16,"custom":7}"#;
        let cfg: ModelConfig = serde_json::from_str(text).unwrap();
        assert_eq!(cfg.extra["custom"], 7);
        let back: ModelConfig = serde_json::from_value(cfg.to_json()).unwrap();
        assert_eq!(back.extra["custom"], 7);
        assert_eq!(back.n_layer, 2);
    }
}
