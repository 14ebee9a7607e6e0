//! Building a model from named tensors (a checkpoint) and listing its tensors by state-dict name.
//!
//! Every dimension comes from the tensors, as the official loader does: L from the largest block
//! index, V and C from `emb.weight`, H and N from `blocks.0.att.r_k`, each low-rank width from its
//! own matrix. `config.json` only has to agree.

use super::{Block, ChannelMix, LayerNorm, Linear, Rwkv7, TimeMix, ValueResidual};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::Path;
use tch::Tensor;

/// Dimensions read off a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelDims {
    pub n_layer: usize,
    /// C
    pub n_embd: usize,
    /// H = C / N
    pub n_head: usize,
    /// N
    pub head_size: usize,
    /// V
    pub vocab_size: usize,
}

/// Removes tensors from the checkpoint map one by one, checking shapes, so that what is left at
/// the end is exactly the set of unexpected keys.
struct Taker<'a> {
    map: HashMap<String, Tensor>,
    origin: &'a Path,
}

impl Taker<'_> {
    fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let t = self.map.remove(name).ok_or_else(|| {
            Error::checkpoint(
                self.origin,
                format!("tensor `{name}` is missing from the checkpoint"),
            )
        })?;
        if t.size() == shape {
            return Ok(t);
        }
        // Vectors may be stored flat ([C]) or as [1, 1, C]; r_k flat as [H*N] (official fix-up).
        let numel: i64 = shape.iter().product();
        if t.numel() as i64 == numel && (t.dim() == 1 || shape.len() <= 1 || name.ends_with("r_k"))
        {
            return Ok(t.reshape(shape));
        }
        Err(Error::checkpoint(
            self.origin,
            format!(
                "tensor `{name}` has shape {:?}, expected {shape:?}",
                t.size()
            ),
        ))
    }

    /// A low-rank pair `[C, D]`, `[D, C]` whose width D is whatever the checkpoint uses.
    fn take_pair(&mut self, first: &str, second: &str, c: i64) -> Result<(Tensor, Tensor)> {
        let d = self
            .map
            .get(first)
            .map(|t| *t.size().last().unwrap_or(&0))
            .ok_or_else(|| {
                Error::checkpoint(
                    self.origin,
                    format!("tensor `{first}` is missing from the checkpoint"),
                )
            })?;
        Ok((self.take(first, &[c, d])?, self.take(second, &[d, c])?))
    }

    fn ln(&mut self, prefix: &str, c: i64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.take(&format!("{prefix}.weight"), &[c])?,
            bias: self.take(&format!("{prefix}.bias"), &[c])?,
        })
    }

    fn linear(&mut self, name: &str, out: i64, inp: i64) -> Result<Linear> {
        Ok(Linear::new(
            self.take(&format!("{name}.weight"), &[out, inp])?,
        ))
    }
}

fn dims_of(
    map: &HashMap<String, Tensor>,
    config: Option<&ModelConfig>,
    origin: &Path,
) -> Result<ModelDims> {
    let missing = |n: &str| {
        Error::checkpoint(
            origin,
            format!("tensor `{n}` is missing: not an RWKV-7 checkpoint?"),
        )
    };
    let emb = map.get("emb.weight").ok_or_else(|| missing("emb.weight"))?;
    let (v, c) = match emb.size().as_slice() {
        [v, c] => (*v as usize, *c as usize),
        s => {
            return Err(Error::checkpoint(
                origin,
                format!("`emb.weight` has shape {s:?}, expected [V, C]"),
            ))
        }
    };
    let n_layer = map
        .keys()
        .filter_map(|k| {
            k.strip_prefix("blocks.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map(|m| m + 1)
        .ok_or_else(|| missing("blocks.0.*"))?;
    let r_k = map
        .get("blocks.0.att.r_k")
        .ok_or_else(|| missing("blocks.0.att.r_k"))?;
    let (h, n) = match r_k.size().as_slice() {
        [h, n] => (*h as usize, *n as usize),
        [hn] => {
            // A flat r_k carries no head size: take it from config.json.
            let n = config.map(|c| c.head_size_a).ok_or_else(|| {
                Error::checkpoint(origin, "`blocks.0.att.r_k` is flat; config.json `head_size_a` is needed to split it into heads")
            })?;
            ((*hn as usize) / n.max(1), n)
        }
        s => {
            return Err(Error::checkpoint(
                origin,
                format!("`blocks.0.att.r_k` has shape {s:?}, expected [H, N]"),
            ))
        }
    };
    if h * n != c {
        return Err(Error::checkpoint(
            origin,
            format!("heads {h} x head size {n} != n_embd {c} (from emb.weight)"),
        ));
    }
    Ok(ModelDims {
        n_layer,
        n_embd: c,
        n_head: h,
        head_size: n,
        vocab_size: v,
    })
}

/// Refuses a config.json that describes a different model than its weights.
fn check_config(cfg: &ModelConfig, d: &ModelDims, origin: &Path) -> Result<()> {
    for (field, cfg_v, real) in [
        ("n_layer", cfg.n_layer, d.n_layer),
        ("n_embd", cfg.n_embd, d.n_embd),
        ("vocab_size", cfg.vocab_size, d.vocab_size),
        ("head_size_a", cfg.head_size_a, d.head_size),
    ] {
        if cfg_v != real {
            return Err(Error::checkpoint(
                origin,
                format!("config.json says {field} = {cfg_v} but the weights have {real}: the config belongs to another model"),
            ));
        }
    }
    Ok(())
}

impl Rwkv7 {
    /// Builds the model from checkpoint tensors (as stored: any float dtype, any device).
    ///
    /// Applies the official fix-ups: no `blocks.0.ln0.*` means a pre-normalised embedding (ln0
    /// skipped); a flat `r_k` is reshaped; block 0's unused `v0/v1/v2` are dropped. Any other
    /// unexpected or missing tensor is an error naming it. `config` (from `config.json`) must agree
    /// with the weights; without it one is derived from them.
    pub fn from_tensors(
        tensors: Vec<(String, Tensor)>,
        config: Option<ModelConfig>,
        origin: &Path,
    ) -> Result<Rwkv7> {
        let map: HashMap<String, Tensor> = tensors.into_iter().collect();
        let dims = dims_of(&map, config.as_ref(), origin)?;
        if let Some(cfg) = &config {
            check_config(cfg, &dims, origin)?;
        }
        let (c, v, h, n) = (
            dims.n_embd as i64,
            dims.vocab_size as i64,
            dims.n_head as i64,
            dims.head_size as i64,
        );
        let f = 4 * c;
        let mut tk = Taker { map, origin };
        let emb = tk.take("emb.weight", &[v, c])?;
        let mut blocks = Vec::with_capacity(dims.n_layer);
        for i in 0..dims.n_layer {
            let p = format!("blocks.{i}");
            let vec = |tk: &mut Taker, name: &str| tk.take(&format!("{p}.{name}"), &[1, 1, c]);
            let ln0 = if i == 0 && tk.map.contains_key("blocks.0.ln0.weight") {
                Some(tk.ln("blocks.0.ln0", c)?)
            } else {
                None
            };
            let (w1, w2) = tk.take_pair(&format!("{p}.att.w1"), &format!("{p}.att.w2"), c)?;
            let (a1, a2) = tk.take_pair(&format!("{p}.att.a1"), &format!("{p}.att.a2"), c)?;
            let (g1, g2) = tk.take_pair(&format!("{p}.att.g1"), &format!("{p}.att.g2"), c)?;
            let v_residual = if i == 0 {
                for k in ["v0", "v1", "v2"] {
                    tk.map.remove(&format!("blocks.0.att.{k}"));
                }
                None
            } else {
                let v0 = vec(&mut tk, "att.v0")?;
                let (v1, v2) = tk.take_pair(&format!("{p}.att.v1"), &format!("{p}.att.v2"), c)?;
                Some(ValueResidual { v0, v1, v2 })
            };
            let att = TimeMix {
                x_r: vec(&mut tk, "att.x_r")?,
                x_w: vec(&mut tk, "att.x_w")?,
                x_k: vec(&mut tk, "att.x_k")?,
                x_v: vec(&mut tk, "att.x_v")?,
                x_a: vec(&mut tk, "att.x_a")?,
                x_g: vec(&mut tk, "att.x_g")?,
                w0: vec(&mut tk, "att.w0")?,
                w1,
                w2,
                a0: vec(&mut tk, "att.a0")?,
                a1,
                a2,
                v_residual,
                g1,
                g2,
                k_k: vec(&mut tk, "att.k_k")?,
                k_a: vec(&mut tk, "att.k_a")?,
                r_k: tk.take(&format!("{p}.att.r_k"), &[h, n])?,
                receptance: tk.linear(&format!("{p}.att.receptance"), c, c)?,
                key: tk.linear(&format!("{p}.att.key"), c, c)?,
                value: tk.linear(&format!("{p}.att.value"), c, c)?,
                output: tk.linear(&format!("{p}.att.output"), c, c)?,
                ln_x: tk.ln(&format!("{p}.att.ln_x"), c)?,
            };
            let ffn = ChannelMix {
                x_k: vec(&mut tk, "ffn.x_k")?,
                key: tk.linear(&format!("{p}.ffn.key"), f, c)?,
                value: tk.linear(&format!("{p}.ffn.value"), c, f)?,
            };
            blocks.push(Block {
                ln0,
                ln1: tk.ln(&format!("{p}.ln1"), c)?,
                ln2: tk.ln(&format!("{p}.ln2"), c)?,
                att,
                ffn,
            });
        }
        let ln_out = tk.ln("ln_out", c)?;
        let head = tk.linear("head", v, c)?;
        if !tk.map.is_empty() {
            let mut extra: Vec<_> = tk.map.keys().cloned().collect();
            extra.sort();
            return Err(Error::checkpoint(
                origin,
                format!("unexpected tensors for RWKV-7: {} (a LoRA adapter? load it with the adapter loader)", extra.join(", ")),
            ));
        }
        let config = config.unwrap_or_else(|| config_from_dims(&dims, &blocks));
        Ok(Rwkv7 {
            emb,
            blocks,
            ln_out,
            head,
            dims,
            config,
            grad_checkpointing: false,
        })
    }

    /// Every tensor under its state-dict name, in the official checkpoint order. The tensors are
    /// shallow clones: they share storage and autograd metadata with the model.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("emb.weight".to_string(), self.emb.shallow_clone())];
        let mut push = |name: String, t: &Tensor| out.push((name, t.shallow_clone()));
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("blocks.{i}");
            let ln = |push: &mut dyn FnMut(String, &Tensor), name: &str, l: &LayerNorm| {
                push(format!("{p}.{name}.weight"), &l.weight);
                push(format!("{p}.{name}.bias"), &l.bias);
            };
            ln(&mut push, "ln1", &b.ln1);
            ln(&mut push, "ln2", &b.ln2);
            if let Some(l0) = &b.ln0 {
                ln(&mut push, "ln0", l0);
            }
            let a = &b.att;
            for (n, t) in [
                ("x_r", &a.x_r),
                ("x_w", &a.x_w),
                ("x_k", &a.x_k),
                ("x_v", &a.x_v),
                ("x_a", &a.x_a),
                ("x_g", &a.x_g),
                ("w0", &a.w0),
                ("w1", &a.w1),
                ("w2", &a.w2),
                ("a0", &a.a0),
                ("a1", &a.a1),
                ("a2", &a.a2),
            ] {
                push(format!("{p}.att.{n}"), t);
            }
            if let Some(vr) = &a.v_residual {
                push(format!("{p}.att.v0"), &vr.v0);
                push(format!("{p}.att.v1"), &vr.v1);
                push(format!("{p}.att.v2"), &vr.v2);
            }
            for (n, t) in [
                ("g1", &a.g1),
                ("g2", &a.g2),
                ("k_k", &a.k_k),
                ("k_a", &a.k_a),
                ("r_k", &a.r_k),
                ("receptance.weight", &a.receptance.weight),
                ("key.weight", &a.key.weight),
                ("value.weight", &a.value.weight),
                ("output.weight", &a.output.weight),
                ("ln_x.weight", &a.ln_x.weight),
                ("ln_x.bias", &a.ln_x.bias),
            ] {
                push(format!("{p}.att.{n}"), t);
            }
            push(format!("{p}.ffn.x_k"), &b.ffn.x_k);
            push(format!("{p}.ffn.key.weight"), &b.ffn.key.weight);
            push(format!("{p}.ffn.value.weight"), &b.ffn.value.weight);
        }
        push("ln_out.weight".into(), &self.ln_out.weight);
        push("ln_out.bias".into(), &self.ln_out.bias);
        push("head.weight".into(), &self.head.weight);
        out
    }

    /// A copy of the model on `device` with floating tensors in `kind`.
    pub fn to(&self, device: tch::Device, kind: tch::Kind) -> Result<Rwkv7> {
        let tensors = self
            .named_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.to_device(device).to_kind(kind).detach().copy()))
            .collect();
        Rwkv7::from_tensors(
            tensors,
            Some(self.config.clone()),
            Path::new("<in-memory model>"),
        )
    }

    pub fn num_parameters(&self) -> i64 {
        self.named_tensors()
            .iter()
            .map(|(_, t)| t.numel() as i64)
            .sum()
    }
}

/// A config.json for weights that came without one.
fn config_from_dims(d: &ModelDims, blocks: &[Block]) -> ModelConfig {
    let width = |t: &Tensor| t.size().last().copied().unwrap_or(0) as usize;
    let b0 = &blocks[0].att;
    let dim_mv_lora = blocks
        .get(1)
        .and_then(|b| b.att.v_residual.as_ref())
        .map_or(ModelConfig::default().dim_mv_lora, |vr| width(&vr.v1));
    ModelConfig {
        n_layer: d.n_layer,
        n_embd: d.n_embd,
        vocab_size: d.vocab_size,
        head_size_a: d.head_size,
        dim_att_lora: width(&b0.w1),
        dim_gate_lora: width(&b0.g1),
        dim_mv_lora,
        ..ModelConfig::default()
    }
}
