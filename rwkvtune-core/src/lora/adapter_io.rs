//! Adapter directories: `adapter_config.json` plus `adapter_model.safetensors` (default) or
//! `adapter_model.bin` (a `torch.save` pickle that `torch.load(..., weights_only=True)` reads).
//!
//! The weight file holds `blocks.{i}.{module}.lora_A` [r, in] and `.lora_B` [out, r] — the Python
//! tool's key names — and, unlike the Python tool, every parameter trained in full through
//! `modules_to_save` under its state-dict name (`ln_out.weight`), so nothing that was trained is
//! lost. Reading also accepts the Python tool's `lora_config.json` / `lora_weights.pth` names and
//! PEFT-style keys (`base_model.model.` prefix, `.lora_A.weight`).
//!
//! Reading validates everything against the base model before the model is touched.

use super::config::{canonical_targets, LoraConfig};
use super::layer::LoraAdapter;
use super::peft::{adapter_tensors, has_adapters, linears, linears_mut, set_trainable, LoraLayout};
use crate::error::{Error, Result};
use crate::hub::{read_weights, write_json, write_weights, WeightFormat};
use crate::model::Rwkv7;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_SAFETENSORS: &str = "adapter_model.safetensors";
pub const ADAPTER_BIN: &str = "adapter_model.bin";
/// Names the Python tool also reads.
const LEGACY_CONFIG: &str = "lora_config.json";
const LEGACY_WEIGHTS: &str = "lora_weights.pth";

/// An adapter directory, read and checked for internal consistency (not yet against a model).
#[derive(Debug)]
pub struct Adapter {
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub weights_path: PathBuf,
    /// `r` is the rank of the tensors (taken from them when the config does not state it).
    pub config: LoraConfig,
    pub base_model: Option<String>,
    /// (module, A [r, in], B [out, r]) in file order.
    pub lora: Vec<(String, Tensor, Tensor)>,
    /// Full tensors of base parameters (`modules_to_save`), by state-dict name.
    pub saved: Vec<(String, Tensor)>,
}

/// The weight-file name for a format.
pub fn adapter_file_name(format: WeightFormat) -> &'static str {
    match format {
        WeightFormat::Safetensors => ADAPTER_SAFETENSORS,
        WeightFormat::Pth => ADAPTER_BIN,
    }
}

/// Splits a stored key into (module or parameter name, Some("lora_A"|"lora_B") | None).
fn classify(key: &str) -> (String, Option<&'static str>) {
    let mut k = key;
    for prefix in ["base_model.model.", "lora_state_dict.", "model."] {
        k = k.strip_prefix(prefix).unwrap_or(k);
    }
    let k = k.replace(".base_layer.", ".");
    for tag in ["lora_A", "lora_B"] {
        let marker = format!(".{tag}");
        if let Some(i) = k.find(&marker) {
            let rest = &k[i + marker.len()..];
            // `.lora_A`, PEFT's `.lora_A.weight` and `.lora_A.default.weight`.
            if rest.is_empty() || rest.starts_with('.') {
                return (k[..i].to_string(), Some(tag));
            }
        }
    }
    (k, None)
}

/// Reads an adapter directory.
pub fn read_adapter(dir: &Path) -> Result<Adapter> {
    if !dir.is_dir() {
        return Err(Error::checkpoint(
            dir,
            "not an adapter directory (expected adapter_config.json and adapter_model.safetensors or adapter_model.bin)",
        ));
    }
    let config_path = [ADAPTER_CONFIG, LEGACY_CONFIG]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::checkpoint(
                dir,
                "no adapter_config.json: not a LoRA adapter directory (r, lora_alpha and the target layers are needed to use the weights)",
            )
        })?;
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let raw: Value =
        serde_json::from_str(&text).map_err(|e| Error::json(&config_path, e.to_string()))?;
    let mut config: LoraConfig = serde_json::from_value(raw.clone())
        .map_err(|e| Error::json(&config_path, e.to_string()))?;
    let base_model = raw
        .get("base_model_name_or_path")
        .and_then(Value::as_str)
        .map(str::to_string);

    let weights_path = [ADAPTER_SAFETENSORS, ADAPTER_BIN, LEGACY_WEIGHTS]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::checkpoint(
                dir,
                format!("no adapter weights: expected {ADAPTER_SAFETENSORS} or {ADAPTER_BIN}"),
            )
        })?;
    let bad = |msg: String| Error::checkpoint(&weights_path, msg);

    let mut a_of: HashMap<String, Tensor> = HashMap::new();
    let mut b_of: HashMap<String, Tensor> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut saved: Vec<(String, Tensor)> = Vec::new();
    for (key, t) in read_weights(&weights_path)? {
        let (name, tag) = classify(&key);
        let slot = match tag {
            Some("lora_A") => &mut a_of,
            Some(_) => &mut b_of,
            None => {
                if saved.iter().any(|(n, _)| *n == name) {
                    return Err(bad(format!("two tensors for `{name}`")));
                }
                saved.push((name, t));
                continue;
            }
        };
        if t.dim() != 2 {
            return Err(bad(format!(
                "`{key}` has shape {:?}; LoRA matrices are 2-D",
                t.size()
            )));
        }
        if slot.insert(name.clone(), t).is_some() {
            return Err(bad(format!("two tensors for `{key}`")));
        }
        if !order.contains(&name) {
            order.push(name);
        }
    }
    if order.is_empty() {
        return Err(bad(
            "holds no lora_A / lora_B tensors: not a LoRA adapter".into()
        ));
    }
    let mut lora = Vec::with_capacity(order.len());
    for m in order {
        let (Some(a), Some(b)) = (a_of.remove(&m), b_of.remove(&m)) else {
            return Err(bad(format!("`{m}` has only one of lora_A / lora_B")));
        };
        lora.push((m, a, b));
    }

    // The rank is the tensors'; a config that states another one belongs to other weights.
    let rank = lora[0].1.size()[0] as usize;
    for (m, a, b) in &lora {
        if a.size()[0] as usize != rank || b.size()[1] as usize != rank {
            return Err(bad(format!(
                "`{m}`: lora_A {:?} and lora_B {:?} do not share the rank {rank} of the other layers",
                a.size(),
                b.size()
            )));
        }
    }
    if raw.get("r").is_some() && config.r != rank {
        return Err(Error::checkpoint(
            &config_path,
            format!("r = {} but the adapter weights have rank {rank}", config.r),
        ));
    }
    config.r = rank;
    config
        .validate()
        .map_err(|e| Error::checkpoint(&config_path, e.to_string()))?;
    Ok(Adapter {
        dir: dir.to_path_buf(),
        config_path,
        weights_path,
        config,
        base_model,
        lora,
        saved,
    })
}

/// Attaches `adapter` to `model` after checking that every tensor fits it (nothing is changed on
/// error). The wrapped layers are those the weight file has tensors for; `modules_to_save`
/// parameters found in the file replace the base values. Adapters start in evaluation mode
/// (no dropout): call [`super::set_training`] to continue training.
pub fn apply_adapter(model: &mut Rwkv7, adapter: &Adapter) -> Result<LoraLayout> {
    let wpath = &adapter.weights_path;
    let bad = |msg: String| Error::checkpoint(wpath, msg);
    if has_adapters(model) {
        return Err(Error::InvalidArgument(
            "this model already has LoRA adapters; load the adapter into a plain model".into(),
        ));
    }
    let r = adapter.config.r as i64;
    let shapes: HashMap<String, (i64, i64)> = linears(model)
        .into_iter()
        .map(|(n, l)| (n, (l.weight.size()[0], l.weight.size()[1])))
        .collect();
    for (m, a, b) in &adapter.lora {
        let (out, inp) = *shapes.get(m).ok_or_else(|| {
            bad(format!(
                "`{m}` is not a linear layer of this model (blocks 0..{}; att.receptance/key/value/output, ffn.key/value, head): the adapter was made for another model",
                model.blocks.len().saturating_sub(1)
            ))
        })?;
        if a.size() != [r, inp] || b.size() != [out, r] {
            return Err(bad(format!(
                "`{m}`: lora_A {:?} / lora_B {:?} do not fit the base layer [{out}, {inp}] (expected [{r}, {inp}] / [{out}, {r}]): the adapter was trained on a different model",
                a.size(),
                b.size()
            )));
        }
    }
    let params = model.named_tensors();
    let names: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
    for (n, t) in &adapter.saved {
        let base = params
            .iter()
            .find(|(p, _)| p == n)
            .map(|(_, t)| t)
            .ok_or_else(|| {
                bad(format!(
                    "`{n}` is neither a LoRA tensor nor a parameter of this model"
                ))
            })?;
        if base.numel() != t.numel() {
            return Err(bad(format!(
                "`{n}` has shape {:?} but the base model's is {:?}: the adapter was trained on a different model",
                t.size(),
                base.size()
            )));
        }
    }
    let mut saved = adapter.config.resolve_saved(&names)?;
    for (n, _) in &adapter.saved {
        if !saved.contains(n) {
            saved.push(n.clone());
        }
    }
    saved.sort_by_key(|n| names.iter().position(|p| p == n));

    // Validated: from here on nothing fails.
    {
        let _g = tch::no_grad_guard();
        for (n, t) in &adapter.saved {
            if let Some((_, base)) = params.iter().find(|(p, _)| p == n) {
                let mut base = base.shallow_clone();
                let v = t
                    .reshape(base.size())
                    .to_device(base.device())
                    .to_kind(base.kind());
                base.copy_(&v);
            }
        }
    }
    let scale = adapter.config.scaling();
    let mut modules = Vec::new();
    for (name, lin) in linears_mut(model) {
        if let Some((_, a, b)) = adapter.lora.iter().find(|(m, _, _)| *m == name) {
            let cast = |t: &Tensor| {
                t.to_device(lin.weight.device())
                    .to_kind(lin.weight.kind())
                    .detach()
                    .copy()
            };
            lin.lora = Some(LoraAdapter::new(
                cast(a),
                cast(b),
                scale,
                adapter.config.lora_dropout,
            ));
            modules.push(name);
        }
    }
    let layout = LoraLayout {
        config: adapter.config.clone(),
        modules,
        saved,
    };
    set_trainable(model, &layout);
    Ok(layout)
}

/// [`read_adapter`] then [`apply_adapter`].
pub fn load_adapter(model: &mut Rwkv7, dir: &Path) -> Result<LoraLayout> {
    apply_adapter(model, &read_adapter(dir)?)
}

/// `lora_alpha` as an integer when it is one (what PEFT and the Python tool write).
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// Writes `dir/adapter_config.json` and `dir/adapter_model.{safetensors,bin}` (each atomically;
/// a stale weight file of the other format is removed so readers cannot pick it). Tensors are
/// stored in their training dtype. Returns the weight file's path.
pub fn save_adapter(
    model: &Rwkv7,
    layout: &LoraLayout,
    dir: &Path,
    format: WeightFormat,
    base_model: Option<&Path>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tensors: Vec<(String, Tensor)> = adapter_tensors(model, layout)
        .into_iter()
        .map(|(n, t)| (n, t.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    let file = dir.join(adapter_file_name(format));
    write_weights(&file, &tensors, format)?;
    for other in [ADAPTER_SAFETENSORS, ADAPTER_BIN, LEGACY_WEIGHTS] {
        let p = dir.join(other);
        if p != file && p.exists() {
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    let cfg = &layout.config;
    let base = base_model.map(|p| {
        std::fs::canonicalize(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .to_string_lossy()
            .into_owned()
    });
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "inference_mode": true,
        "base_model_name_or_path": base,
        "r": cfg.r,
        "lora_alpha": number(cfg.lora_alpha),
        "lora_dropout": cfg.lora_dropout,
        "use_rslora": cfg.use_rslora,
        "target_modules": canonical_targets(&layout.modules, model.blocks.len()),
        "modules_to_save": cfg.modules_to_save,
        "bias": "none",
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "saved_parameters": layout.saved,
        "weight_file": adapter_file_name(format),
        "library": concat!("rwkvtune-", env!("CARGO_PKG_VERSION")),
    });
    write_json(&dir.join(ADAPTER_CONFIG), &config)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::classify;

    #[test]
    fn keys_of_every_dialect() {
        let lora = |k: &str| classify(k);
        assert_eq!(
            lora("blocks.3.att.receptance.lora_A"),
            ("blocks.3.att.receptance".into(), Some("lora_A"))
        );
        assert_eq!(
            lora("base_model.model.blocks.0.ffn.key.lora_B.weight"),
            ("blocks.0.ffn.key".into(), Some("lora_B"))
        );
        assert_eq!(
            lora("model.blocks.0.att.key.lora_A.default.weight"),
            ("blocks.0.att.key".into(), Some("lora_A"))
        );
        assert_eq!(
            lora("blocks.0.ln1.weight"),
            ("blocks.0.ln1.weight".into(), None)
        );
        assert_eq!(
            lora("blocks.0.att.key.base_layer.weight"),
            ("blocks.0.att.key.weight".into(), None)
        );
    }
}
