//! Attaching adapters to a model, choosing what trains, and switching adapters on, off, in and out.

use super::config::LoraConfig;
use super::layer::LoraAdapter;
use crate::error::{Error, Result};
use crate::model::{Linear, Rwkv7};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tch::{Kind, Tensor};

/// What [`get_peft_model`] (or `load_adapter`) did to a model: the plain data a trainer keeps to
/// save the adapter later.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraLayout {
    pub config: LoraConfig,
    /// Wrapped layers, e.g. `blocks.0.att.key`, in model order.
    pub modules: Vec<String>,
    /// Base parameters trained in full and saved with the adapter, e.g. `ln_out.weight`.
    pub saved: Vec<String>,
}

/// Every linear layer of the model under its module name (`blocks.0.att.key`, `head`).
pub(crate) fn linears(model: &Rwkv7) -> Vec<(String, &Linear)> {
    let mut out = Vec::with_capacity(6 * model.blocks.len() + 1);
    for (i, b) in model.blocks.iter().enumerate() {
        let a = &b.att;
        for (n, l) in [
            ("att.receptance", &a.receptance),
            ("att.key", &a.key),
            ("att.value", &a.value),
            ("att.output", &a.output),
            ("ffn.key", &b.ffn.key),
            ("ffn.value", &b.ffn.value),
        ] {
            out.push((format!("blocks.{i}.{n}"), l));
        }
    }
    out.push(("head".to_string(), &model.head));
    out
}

/// [`linears`], mutably.
pub(crate) fn linears_mut(model: &mut Rwkv7) -> Vec<(String, &mut Linear)> {
    let mut out = Vec::with_capacity(6 * model.blocks.len() + 1);
    for (i, b) in model.blocks.iter_mut().enumerate() {
        let a = &mut b.att;
        for (n, l) in [
            ("att.receptance", &mut a.receptance),
            ("att.key", &mut a.key),
            ("att.value", &mut a.value),
            ("att.output", &mut a.output),
        ] {
            out.push((format!("blocks.{i}.{n}"), l));
        }
        out.push((format!("blocks.{i}.ffn.key"), &mut b.ffn.key));
        out.push((format!("blocks.{i}.ffn.value"), &mut b.ffn.value));
    }
    out.push(("head".to_string(), &mut model.head));
    out
}

pub(crate) fn module_names(model: &Rwkv7) -> Vec<String> {
    linears(model).into_iter().map(|(n, _)| n).collect()
}

pub fn has_adapters(model: &Rwkv7) -> bool {
    linears(model).iter().any(|(_, l)| l.lora.is_some())
}

/// Which modules `cfg` wraps and which parameters it trains in full, checked against `model`.
pub(crate) fn plan(model: &Rwkv7, cfg: &LoraConfig) -> Result<LoraLayout> {
    cfg.validate()?;
    if has_adapters(model) {
        return Err(Error::InvalidArgument(
            "this model already has LoRA adapters; start from a plain model".into(),
        ));
    }
    let params: Vec<String> = model.named_tensors().into_iter().map(|(n, _)| n).collect();
    Ok(LoraLayout {
        config: cfg.clone(),
        modules: cfg.resolve_targets(&module_names(model))?,
        saved: cfg.resolve_saved(&params)?,
    })
}

/// Freezes the base model, then makes the adapters and `layout.saved` trainable.
pub(crate) fn set_trainable(model: &mut Rwkv7, layout: &LoraLayout) {
    for (name, t) in model.named_tensors() {
        let _ = t.set_requires_grad(layout.saved.contains(&name));
    }
    for (_, l) in linears_mut(model) {
        if let Some(ad) = &mut l.lora {
            ad.a = ad.a.set_requires_grad(true);
            ad.b = ad.b.set_requires_grad(true);
        }
    }
}

/// Wraps the layers `cfg.target_modules` selects with fresh adapters: A ~ U(±1/√in) drawn from
/// `seed` (our own generator, so other threads' use of libtorch's RNG cannot change it), B = 0,
/// in the base weight's dtype and device. The base is frozen; adapters and `modules_to_save`
/// parameters train. Dropout is on (training mode); see [`set_training`].
///
/// Convert the model's dtype/device *before* this call: `Rwkv7::to` rebuilds a plain model.
pub fn get_peft_model(model: &mut Rwkv7, cfg: &LoraConfig, seed: u64) -> Result<LoraLayout> {
    let layout = plan(model, cfg)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let r = cfg.r as i64;
    for (name, lin) in linears_mut(model) {
        if !layout.modules.contains(&name) {
            continue;
        }
        let (out, inp) = lin.weight.size2()?;
        let bound = 1.0 / (inp as f64).sqrt();
        let a: Vec<f32> = (0..r * inp)
            .map(|_| rng.gen_range(-bound..bound) as f32)
            .collect();
        let opts = (lin.weight.kind(), lin.weight.device());
        let a = Tensor::from_slice(&a)
            .view([r, inp])
            .to_device(opts.1)
            .to_kind(opts.0);
        let b = Tensor::zeros([out, r], opts);
        let mut ad = LoraAdapter::new(a, b, cfg.scaling(), cfg.lora_dropout);
        ad.training = true;
        lin.lora = Some(ad);
    }
    set_trainable(model, &layout);
    Ok(layout)
}

/// `blocks.0.att.key.lora_A` / `.lora_B` of every adapter (shallow clones sharing storage and
/// grad), in model order.
pub fn lora_tensors(model: &Rwkv7) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for (name, lin) in linears(model) {
        if let Some(ad) = &lin.lora {
            out.push((format!("{name}.lora_A"), ad.a.shallow_clone()));
            out.push((format!("{name}.lora_B"), ad.b.shallow_clone()));
        }
    }
    out
}

/// Every tensor that requires grad, adapters included, under the names the adapter file uses —
/// the optimizer's parameter list. Base tensors come in state-dict order, each layer's
/// `lora_A`/`lora_B` right after its `.weight`.
pub fn trainable_tensors(model: &Rwkv7) -> Vec<(String, Tensor)> {
    let lora = lora_tensors(model);
    let mut out = Vec::new();
    for (name, t) in model.named_tensors() {
        let module = name.strip_suffix(".weight").unwrap_or("");
        if t.requires_grad() {
            out.push((name.clone(), t));
        }
        for suffix in [".lora_A", ".lora_B"] {
            let key = format!("{module}{suffix}");
            if let Some((n, t)) = lora.iter().find(|(n, _)| *n == key) {
                out.push((n.clone(), t.shallow_clone()));
            }
        }
    }
    out
}

/// What the adapter file holds: every `lora_A`/`lora_B` plus the `layout.saved` parameters.
pub fn adapter_tensors(model: &Rwkv7, layout: &LoraLayout) -> Vec<(String, Tensor)> {
    let mut out = lora_tensors(model);
    out.extend(
        model
            .named_tensors()
            .into_iter()
            .filter(|(n, _)| layout.saved.contains(n)),
    );
    out
}

/// Turns dropout on (training) or off (evaluation, generation) in every adapter.
pub fn set_training(model: &mut Rwkv7, training: bool) {
    for (_, l) in linears_mut(model) {
        if let Some(ad) = &mut l.lora {
            ad.training = training;
        }
    }
}

/// Enables or disables every adapter. Disabling takes merged adapters back out of the weights
/// first, so a disabled model is exactly the base model.
pub fn set_adapters_enabled(model: &mut Rwkv7, enabled: bool) {
    if !enabled {
        unmerge_adapters(model);
    }
    for (_, l) in linears_mut(model) {
        if let Some(ad) = &mut l.lora {
            ad.enabled = enabled;
        }
    }
}

/// Runs `f` on the base model (adapters off), then restores each adapter's enabled flag. The
/// reference policy of GRPO is this, with no second copy of the weights.
pub fn with_adapters_disabled<R>(model: &mut Rwkv7, f: impl FnOnce(&Rwkv7) -> R) -> R {
    let before: Vec<bool> = linears(model)
        .iter()
        .map(|(_, l)| l.lora.as_ref().is_some_and(|a| a.enabled))
        .collect();
    set_adapters_enabled(model, false);
    let out = f(model);
    for ((_, l), on) in linears_mut(model).into_iter().zip(before) {
        if let Some(ad) = &mut l.lora {
            ad.enabled = on;
        }
    }
    out
}

/// W ← W + s·B·A for every enabled, unmerged adapter (in fp32, cast once to W's dtype). Merged
/// layers skip the adapter branch, so outputs are unchanged up to rounding of W's dtype.
pub fn merge_adapters(model: &mut Rwkv7) {
    for (_, l) in linears_mut(model) {
        if let Some(ad) = &mut l.lora {
            if ad.enabled && !ad.merged {
                ad.fold_into(&l.weight, 1.0);
                ad.merged = true;
            }
        }
    }
}

/// Undoes [`merge_adapters`]. In bf16/fp16 this is not bit-exact (W was rounded when merged);
/// to save a merged copy while training, use [`merged_tensors`] instead.
pub fn unmerge_adapters(model: &mut Rwkv7) {
    for (_, l) in linears_mut(model) {
        if let Some(ad) = &mut l.lora {
            if ad.merged {
                ad.fold_into(&l.weight, -1.0);
                ad.merged = false;
            }
        }
    }
}

/// The model's state dict with every enabled adapter folded in (fp32 math, cast to `kind` or
/// each weight's own dtype), leaving the model untouched: a plain RWKV-7 checkpoint (for
/// `lora_save_mode = full`).
pub fn merged_tensors(model: &Rwkv7, kind: Option<Kind>) -> Vec<(String, Tensor)> {
    let _g = tch::no_grad_guard();
    let lin = linears(model);
    model
        .named_tensors()
        .into_iter()
        .map(|(name, t)| {
            let module = name.strip_suffix(".weight").unwrap_or("");
            let ad = lin
                .iter()
                .find(|(n, _)| n == module)
                .and_then(|(_, l)| l.lora.as_ref())
                .filter(|a| a.enabled && !a.merged);
            let out_kind = kind.filter(|_| t.is_floating_point()).unwrap_or(t.kind());
            let v = match ad {
                Some(a) => (t.to_kind(Kind::Float) + a.delta_weight().to_device(t.device()))
                    .to_kind(out_kind),
                None => t.detach().to_kind(out_kind).copy(),
            };
            (name, v)
        })
        .collect()
}

/// Folds every enabled adapter into the weights and removes all adapters (disabled ones are
/// dropped), leaving a plain model. `requires_grad` flags are left as they are.
pub fn merge_and_unload(model: &mut Rwkv7) {
    merge_adapters(model);
    for (_, l) in linears_mut(model) {
        l.lora = None;
    }
}
