//! [`LoraConfig`] and the rules that turn its patterns into module and parameter names.
//!
//! # Target matching (`target_modules`)
//!
//! The linear layers an adapter can attach to are named like the state dict without `.weight`:
//! `blocks.{i}.att.receptance`, `blocks.{i}.att.key`, `blocks.{i}.att.value`,
//! `blocks.{i}.att.output`, `blocks.{i}.ffn.key`, `blocks.{i}.ffn.value` and `head`.
//! Each pattern is first expanded:
//! - `att` → `att.receptance`, `att.key`, `att.value`, `att.output` (time-mix only);
//! - `ffn` → `ffn.key`, `ffn.value` (channel-mix only);
//! - `key_ffn` / `value_ffn` (the Python tool's default names) → `ffn.key` / `ffn.value`;
//! - anything else stays as it is.
//!
//! An expanded pattern `p` then matches module `m` iff `m == p` or `m` ends with `"." + p` — a
//! match on whole dot-separated components, as Hugging Face PEFT does; never a substring match.
//! So `key` matches both `att.key` and `ffn.key` (as in the Python tool), `att.key` only the
//! time-mix key, `blocks.0.att.key` one layer, `head` the output head, and `ey` nothing. A pattern
//! that matches no layer is an error (the Python tool only warns, and its `"ffn"` silently wraps
//! nothing).
//!
//! # Extra trainable parameters (`modules_to_save`)
//!
//! Entries name base-model parameters that are trained (and saved in the adapter) in full:
//! - `ln` → every LayerNorm/GroupNorm parameter: `ln0`, `ln1`, `ln2`, `att.ln_x`, `ln_out`
//!   (weights and biases);
//! - `time` → nothing: kept so the Python default `["ln", "time"]` loads (no RWKV-7 name has it);
//! - anything else matches parameter `n` when it equals `n`, or `n` without its last component
//!   (the module), or is a dot-component suffix of either: `ln_out`, `att.w0`, `emb`, `head`,
//!   `blocks.2.ln1.weight`. An entry matching nothing is an error.

use crate::error::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize};

/// The six projections per block an adapter can wrap, as module-path suffixes.
pub const BLOCK_LINEARS: [&str; 6] = [
    "att.receptance",
    "att.key",
    "att.value",
    "att.output",
    "ffn.key",
    "ffn.value",
];

/// Components that mark a LayerNorm / GroupNorm module.
const NORMS: [&str; 5] = ["ln0", "ln1", "ln2", "ln_x", "ln_out"];

/// LoRA settings (same field names and defaults as the Python tool and `adapter_config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoraConfig {
    /// Rank (> 0).
    pub r: usize,
    /// Scale numerator: s = α/r, or α/√r with `use_rslora`.
    pub lora_alpha: f64,
    /// Dropout probability on the adapter's input (training only), in [0, 1).
    pub lora_dropout: f64,
    /// Patterns of the linear layers to wrap (module docs); `null` or absent means the default,
    /// a single string is one pattern.
    #[serde(deserialize_with = "patterns")]
    pub target_modules: Vec<String>,
    /// Patterns of base parameters trained in full and saved with the adapter (module docs).
    #[serde(deserialize_with = "save_patterns")]
    pub modules_to_save: Vec<String>,
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 64,
            lora_alpha: 128.0,
            lora_dropout: 0.0,
            target_modules: default_targets(),
            modules_to_save: default_save(),
            use_rslora: false,
        }
    }
}

fn default_targets() -> Vec<String> {
    vec!["att".into(), "ffn".into()]
}

fn default_save() -> Vec<String> {
    vec!["ln".into()]
}

/// `null` | `"pattern"` | `["a", "b"]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

fn one_or_many<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Vec<String>>, D::Error> {
    Ok(Option::<OneOrMany>::deserialize(d)?.map(|v| match v {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    }))
}

fn patterns<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    Ok(one_or_many(d)?.unwrap_or_else(default_targets))
}

fn save_patterns<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    Ok(one_or_many(d)?.unwrap_or_else(default_save))
}

impl LoraConfig {
    /// The adapter scale s.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// Checks the numeric fields (patterns are checked against a model by [`Self::resolve_targets`]).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("LoRA config: {m}")));
        if self.r == 0 {
            return bad("r must be at least 1".into());
        }
        if !self.lora_alpha.is_finite() || self.lora_alpha <= 0.0 {
            return bad(format!("lora_alpha must be > 0, got {}", self.lora_alpha));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return bad(format!(
                "lora_dropout must be in [0, 1), got {}",
                self.lora_dropout
            ));
        }
        if self.target_modules.is_empty() {
            return bad(
                "target_modules is empty: name at least one layer (default: att, ffn)".into(),
            );
        }
        if let Some(p) = self
            .target_modules
            .iter()
            .chain(&self.modules_to_save)
            .find(|p| p.trim().is_empty())
        {
            return bad(format!(
                "empty pattern {p:?} in target_modules / modules_to_save"
            ));
        }
        Ok(())
    }

    /// The modules among `modules` (full names such as `blocks.0.att.key`) that `target_modules`
    /// selects, in the order given. Every pattern must match at least one module.
    pub fn resolve_targets(&self, modules: &[String]) -> Result<Vec<String>> {
        let mut hit = vec![false; modules.len()];
        for pat in &self.target_modules {
            let expanded = expand_target(pat);
            let mut any = false;
            for (m, h) in modules.iter().zip(hit.iter_mut()) {
                if expanded.iter().any(|p| component_suffix(m, p)) {
                    *h = true;
                    any = true;
                }
            }
            if !any {
                return Err(Error::InvalidArgument(format!(
                    "LoRA target_modules: `{pat}` matches no linear layer; use att, ffn, or names such as att.receptance, att.key, att.value, att.output, ffn.key, ffn.value, head"
                )));
            }
        }
        Ok(modules
            .iter()
            .zip(hit)
            .filter(|(_, h)| *h)
            .map(|(m, _)| m.clone())
            .collect())
    }

    /// The parameters among `params` (state-dict names) that `modules_to_save` selects, in order.
    pub fn resolve_saved(&self, params: &[String]) -> Result<Vec<String>> {
        let mut hit = vec![false; params.len()];
        for pat in &self.modules_to_save {
            if pat == "time" {
                continue;
            }
            let mut any = false;
            for (n, h) in params.iter().zip(hit.iter_mut()) {
                if saved_matches(n, pat) {
                    *h = true;
                    any = true;
                }
            }
            if !any {
                return Err(Error::InvalidArgument(format!(
                    "LoRA modules_to_save: `{pat}` matches no parameter; use ln (all norms) or names such as ln_out, att.ln_x, att.w0, emb, head"
                )));
            }
        }
        Ok(params
            .iter()
            .zip(hit)
            .filter(|(_, h)| *h)
            .map(|(n, _)| n.clone())
            .collect())
    }
}

/// The explicit list the resolved modules stand for, for `adapter_config.json`: a per-block
/// suffix (`att.key`) when every one of the `n_layer` blocks has that layer wrapped, else full
/// names. PEFT and the Python tool both read it back as the same layers, whatever their own group
/// rules.
pub fn canonical_targets(resolved: &[String], n_layer: usize) -> Vec<String> {
    let in_block = |m: &str, s: &str| m.starts_with("blocks.") && component_suffix(m, s);
    let mut out: Vec<String> = BLOCK_LINEARS
        .iter()
        .filter(|s| n_layer > 0 && resolved.iter().filter(|m| in_block(m, s)).count() == n_layer)
        .map(|s| s.to_string())
        .collect();
    for m in resolved {
        if !out.iter().any(|s| in_block(m, s)) {
            out.push(m.clone());
        }
    }
    out
}

/// Group names and Python aliases → component-suffix patterns.
fn expand_target(p: &str) -> Vec<&str> {
    match p {
        "att" => BLOCK_LINEARS[..4].to_vec(),
        "ffn" => BLOCK_LINEARS[4..].to_vec(),
        "key_ffn" => vec!["ffn.key"],
        "value_ffn" => vec!["ffn.value"],
        other => vec![other],
    }
}

/// `name == pat`, or `pat` is a whole-component suffix of `name`.
pub(crate) fn component_suffix(name: &str, pat: &str) -> bool {
    name == pat
        || (name.len() > pat.len()
            && name.ends_with(pat)
            && name.as_bytes()[name.len() - pat.len() - 1] == b'.')
}

fn saved_matches(param: &str, pat: &str) -> bool {
    if pat == "ln" {
        return param.split('.').any(|c| NORMS.contains(&c));
    }
    let module = param.rsplit_once('.').map_or(param, |(m, _)| m);
    component_suffix(param, pat) || component_suffix(module, pat)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modules(n_block: usize) -> Vec<String> {
        let mut v: Vec<String> = (0..n_block)
            .flat_map(|i| BLOCK_LINEARS.iter().map(move |s| format!("blocks.{i}.{s}")))
            .collect();
        v.push("head".into());
        v
    }

    fn targets(p: &[&str]) -> Vec<String> {
        let cfg = LoraConfig {
            target_modules: p.iter().map(|s| s.to_string()).collect(),
            ..LoraConfig::default()
        };
        cfg.resolve_targets(&modules(2)).unwrap()
    }

    #[test]
    fn groups_mean_what_they_say() {
        assert_eq!(targets(&["att"]).len(), 8);
        assert!(targets(&["att"]).iter().all(|m| m.contains(".att.")));
        assert_eq!(
            targets(&["ffn"]),
            [
                "blocks.0.ffn.key",
                "blocks.0.ffn.value",
                "blocks.1.ffn.key",
                "blocks.1.ffn.value"
            ]
        );
        assert_eq!(targets(&["att", "ffn"]).len(), 12);
        assert!(!targets(&["att", "ffn"]).contains(&"head".to_string()));
    }

    #[test]
    fn python_style_lists_resolve_to_the_same_six_layers() {
        let python_default = targets(&[
            "receptance",
            "key",
            "value",
            "output",
            "key_ffn",
            "value_ffn",
        ]);
        assert_eq!(python_default, targets(&["att", "ffn"]));
        assert_eq!(
            targets(&["receptance", "key", "value", "output"]),
            python_default
        );
        assert_eq!(
            targets(&["key"]),
            [
                "blocks.0.att.key",
                "blocks.0.ffn.key",
                "blocks.1.att.key",
                "blocks.1.ffn.key"
            ]
        );
    }

    #[test]
    fn whole_components_only() {
        assert_eq!(
            targets(&["att.key"]),
            ["blocks.0.att.key", "blocks.1.att.key"]
        );
        assert_eq!(targets(&["blocks.1.ffn.value"]), ["blocks.1.ffn.value"]);
        assert_eq!(targets(&["head"]), ["head"]);
        let cfg = LoraConfig {
            target_modules: vec!["ey".into()],
            ..LoraConfig::default()
        };
        assert!(cfg
            .resolve_targets(&modules(2))
            .unwrap_err()
            .to_string()
            .contains("`ey` matches no linear layer"));
    }

    #[test]
    fn modules_to_save_rules() {
        let params: Vec<String> = [
            "emb.weight",
            "blocks.0.ln0.weight",
            "blocks.0.ln1.bias",
            "blocks.0.att.w0",
            "blocks.0.att.ln_x.weight",
            "blocks.0.att.key.weight",
            "ln_out.weight",
            "ln_out.bias",
            "head.weight",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let saved = |p: &[&str]| {
            LoraConfig {
                modules_to_save: p.iter().map(|s| s.to_string()).collect(),
                ..LoraConfig::default()
            }
            .resolve_saved(&params)
        };
        assert_eq!(
            saved(&["ln", "time"]).unwrap(),
            [
                "blocks.0.ln0.weight",
                "blocks.0.ln1.bias",
                "blocks.0.att.ln_x.weight",
                "ln_out.weight",
                "ln_out.bias"
            ]
        );
        assert_eq!(
            saved(&["ln_out"]).unwrap(),
            ["ln_out.weight", "ln_out.bias"]
        );
        assert_eq!(
            saved(&["att.w0", "head"]).unwrap(),
            ["blocks.0.att.w0", "head.weight"]
        );
        assert!(saved(&["lnx"]).is_err());
    }

    #[test]
    fn config_json_accepts_python_shapes() {
        let c: LoraConfig = serde_json::from_str(
            r#"{"r": 8, "lora_alpha": 16, "target_modules": null, "modules_to_save": null}"#,
        )
        .unwrap();
        assert_eq!((c.r, c.scaling()), (8, 2.0));
        assert_eq!(c.target_modules, ["att", "ffn"]);
        let c: LoraConfig =
            serde_json::from_str(r#"{"target_modules": "att", "use_rslora": true, "r": 16}"#)
                .unwrap();
        assert_eq!(c.target_modules, ["att"]);
        assert_eq!(c.scaling(), 128.0 / 4.0);
        assert_eq!(LoraConfig::default().scaling(), 2.0);
    }

    #[test]
    fn canonical_targets_are_explicit() {
        let resolved = LoraConfig::default().resolve_targets(&modules(2)).unwrap();
        assert_eq!(canonical_targets(&resolved, 2), BLOCK_LINEARS.to_vec());
        let one = vec!["blocks.1.att.key".to_string(), "head".to_string()];
        assert_eq!(canonical_targets(&one, 2), ["blocks.1.att.key", "head"]);
        assert_eq!(
            canonical_targets(&["blocks.0.att.key".to_string()], 1),
            ["att.key"]
        );
    }
}
