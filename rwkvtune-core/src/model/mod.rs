//! RWKV-7 "Goose" (`x070`) on libtorch.
//!
//! The equations are those of the official implementation (BlinkDL/RWKV-LM, `rwkv` 0.8.32), as
//! written out in `shared/reference/README.md` §"The model". Field names follow the state-dict
//! keys (`x_r`, `w0`, `w1`, `k_k`, `ln_x`, ...) so the checkpoint, the spec and this file can be
//! read side by side. One forward path serves training and inference: a sequence of any length
//! from an optional incoming [`State`], returning the logits and the outgoing state; a fresh
//! sequence is the zero state.
//!
//! Numerics: weights and activations may be fp32, bf16 or fp16; the decay `w` and the WKV state
//! are always fp32 (bf16 state accumulation drifts within a few hundred tokens).

mod init;
mod shallow;
mod state;
mod weights;

pub use state::{LayerState, State};
pub use weights::ModelDims;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::lora::LoraAdapter;
use rwkvtune_kernels::wkv7;
use tch::{Device, Kind, Tensor};

/// e^{-1/2}: the decay is w = exp(-e^{-1/2} · σ(z)), so 0.545 < w < 1.
const DECAY_SCALE: f64 = 0.606_530_659_712_633_4;
/// LayerNorm epsilon of ln0/ln1/ln2/ln_out.
const LN_EPS: f64 = 1e-5;
/// GroupNorm epsilon of ln_x, for every head size (the official value was tuned for N = 64).
const GN_EPS: f64 = 64e-5;

// ---- layers -------------------------------------------------------------------------------------

/// `nn.Linear` without bias: y = x Wᵀ, plus s·B(A·x) when a LoRA adapter is attached and active
/// (see [`crate::lora`]; the adapter is in-memory math only, its files live in `lora::adapter_io`).
#[derive(Debug)]
pub struct Linear {
    /// [out, in]
    pub weight: Tensor,
    /// `None` for a plain model; set by [`crate::lora::get_peft_model`] / `load_adapter`.
    pub lora: Option<LoraAdapter>,
}

impl Linear {
    pub fn new(weight: Tensor) -> Self {
        Linear { weight, lora: None }
    }

    /// The weight alone when it is the whole layer (no adapter, or one that is disabled or
    /// merged), so fused kernels may use it in place of [`Linear::forward`].
    pub fn plain_weight(&self) -> Option<&Tensor> {
        match &self.lora {
            Some(l) if l.enabled && !l.merged => None,
            _ => Some(&self.weight),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.linear::<&Tensor>(&self.weight, None);
        match self.lora.as_ref().and_then(|l| l.forward(x)) {
            // The adapter may be kept in another dtype than W (fp32 adapters on a bf16 base).
            Some(delta) => {
                let kind = y.kind();
                y + delta.to_kind(kind)
            }
            None => y,
        }
    }
}

/// Affine LayerNorm (also holds the GroupNorm parameters of `ln_x`).
#[derive(Debug)]
pub struct LayerNorm {
    /// [C]
    pub weight: Tensor,
    /// [C]
    pub bias: Tensor,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let c = self.weight.size()[0];
        x.layer_norm([c], Some(&self.weight), Some(&self.bias), LN_EPS, false)
    }
}

/// The value-residual gate of blocks i > 0.
#[derive(Debug)]
pub struct ValueResidual {
    /// [1, 1, C]
    pub v0: Tensor,
    /// [C, D_v]
    pub v1: Tensor,
    /// [D_v, C]
    pub v2: Tensor,
}

/// Time mixing: token shift, r/w/k/v/a/g projections and the WKV recurrence.
#[derive(Debug)]
pub struct TimeMix {
    /// Token-shift mix coefficients, each [1, 1, C].
    pub x_r: Tensor,
    pub x_w: Tensor,
    pub x_k: Tensor,
    pub x_v: Tensor,
    pub x_a: Tensor,
    pub x_g: Tensor,
    /// Decay bias [1, 1, C] and low-rank pair [C, D_w], [D_w, C].
    pub w0: Tensor,
    pub w1: Tensor,
    pub w2: Tensor,
    /// In-context learning rate: [1, 1, C], [C, D_a], [D_a, C].
    pub a0: Tensor,
    pub a1: Tensor,
    pub a2: Tensor,
    /// `None` in block 0, which defines v_first instead.
    pub v_residual: Option<ValueResidual>,
    /// Output gate [C, D_g], [D_g, C].
    pub g1: Tensor,
    pub g2: Tensor,
    /// Key scaling before normalisation [1, 1, C].
    pub k_k: Tensor,
    /// How much `a` rescales the key [1, 1, C].
    pub k_a: Tensor,
    /// Per-head bonus weights [H, N].
    pub r_k: Tensor,
    pub receptance: Linear,
    pub key: Linear,
    pub value: Linear,
    pub output: Linear,
    /// Per-head GroupNorm parameters.
    pub ln_x: LayerNorm,
}

/// Channel mixing: token shift and a squared-ReLU MLP of width F = 4C.
#[derive(Debug)]
pub struct ChannelMix {
    /// [1, 1, C]
    pub x_k: Tensor,
    /// [F, C]
    pub key: Linear,
    /// [C, F]
    pub value: Linear,
}

#[derive(Debug)]
pub struct Block {
    /// Only in block 0, and only when the checkpoint has it (some releases pre-normalise `emb`).
    pub ln0: Option<LayerNorm>,
    pub ln1: LayerNorm,
    pub ln2: LayerNorm,
    pub att: TimeMix,
    pub ffn: ChannelMix,
}

/// An RWKV-7 language model.
#[derive(Debug)]
pub struct Rwkv7 {
    /// [V, C]
    pub emb: Tensor,
    pub blocks: Vec<Block>,
    pub ln_out: LayerNorm,
    /// [V, C]
    pub head: Linear,
    pub dims: ModelDims,
    /// The hub `config.json` this model was loaded with (dimensions agree with `dims`).
    pub config: ModelConfig,
    /// Recompute each block in the backward pass instead of storing its activations
    /// (`grad_cp = 1`): about one extra forward, far less memory.
    pub grad_checkpointing: bool,
}

/// Token shift: the previous token's value for every position, seeded by the carried `prev`.
/// `u` [B, T, C], `prev` [B, C] (any dtype) -> [B, T, C]
fn shift(u: &Tensor, prev: &Tensor) -> Tensor {
    let t = u.size()[1];
    let prev = prev.to_kind(u.kind()).unsqueeze(1);
    Tensor::cat(&[prev, u.narrow(1, 0, t - 1)], 1)
}

impl TimeMix {
    /// `u` = LN1(x) [B, T, C]. Returns the block output [B, T, C] and the new layer state parts.
    fn forward(
        &self,
        u: &Tensor,
        v_first: &mut Option<Tensor>,
        state: &LayerState,
        dims: &ModelDims,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, c) = u.size3()?;
        let (h, n) = (dims.n_head as i64, dims.head_size as i64);
        let d = shift(u, &state.att_x) - u;
        let mix = |m: &Tensor| u + &d * m;
        let (xr, xw, xk, xv, xa, xg) = (
            mix(&self.x_r),
            mix(&self.x_w),
            mix(&self.x_k),
            mix(&self.x_v),
            mix(&self.x_a),
            mix(&self.x_g),
        );

        let r = self.receptance.forward(&xr);
        let k = self.key.forward(&xk);
        let mut v = self.value.forward(&xv);
        // Decay in fp32 whatever the weights' dtype: w^T over hundreds of steps amplifies bf16 error.
        let z = (&self.w0 + xw.matmul(&self.w1).tanh().matmul(&self.w2)).to_kind(Kind::Float);
        let w = (z.sigmoid() * -DECAY_SCALE).exp();
        let a = (&self.a0 + xa.matmul(&self.a1).matmul(&self.a2)).sigmoid();
        let g = xg.matmul(&self.g1).sigmoid().matmul(&self.g2);

        // κ: L2-normalised per head, from the raw key.
        let kk = (&k * &self.k_k).view([b, t, h, n]);
        let kk = &kk / kk.norm_scalaropt_dim(2, [-1], true).clamp_min(1e-12);
        let k = &k * ((&a - 1.0) * &self.k_a + 1.0);

        match (&self.v_residual, v_first.as_ref()) {
            (None, _) => *v_first = Some(v.shallow_clone()),
            (Some(vr), Some(vf)) => {
                let gate = (&vr.v0 + xv.matmul(&vr.v1).matmul(&vr.v2)).sigmoid();
                v = &v + (vf - &v) * gate;
            }
            (Some(_), None) => {
                return Err(Error::InvalidArgument(
                    "block 0 must define v_first before later blocks run".into(),
                ))
            }
        }

        // [B, T, C] -> [B, T, H, N]
        let r4 = r.view([b, t, h, n]);
        let k4 = k.view([b, t, h, n]);
        let v4 = v.view([b, t, h, n]);
        let a4 = a.view([b, t, h, n]);
        let (y, kv) = wkv7(
            &r4,
            &w.view([b, t, h, n]),
            &k4,
            &v4,
            &(-&kk),
            &(&kk * &a4),
            &state.att_kv,
        )?;

        // GroupNorm over each head's N channels: [B, T, C] -> [B*T, C] -> [B, T, C]
        let y = y.reshape([b * t, c]).group_norm(
            h,
            Some(&self.ln_x.weight),
            Some(&self.ln_x.bias),
            GN_EPS,
            false,
        );
        // Bonus (r · k' · r_k) v: one scalar per head scales that head's value.
        let bonus = (&r4 * &k4 * &self.r_k).sum_dim_intlist([-1i64].as_slice(), true, None) * &v4;
        let y = y.view([b, t, c]) + bonus.view([b, t, c]);
        let out = self.output.forward(&(y * g));
        Ok((out, u.select(1, t - 1).to_kind(Kind::Float), kv))
    }
}

impl ChannelMix {
    /// `f` = LN2(x) [B, T, C] -> ([B, T, C], new ffn_x [B, C]).
    fn forward(&self, f: &Tensor, prev: &Tensor) -> (Tensor, Tensor) {
        let t = f.size()[1];
        let x = f + (shift(f, prev) - f) * &self.x_k;
        let k = self.key.forward(&x).relu().square();
        (
            self.value.forward(&k),
            f.select(1, t - 1).to_kind(Kind::Float),
        )
    }
}

impl Block {
    /// One residual block: x + TimeMix(LN1 x), then + ChannelMix(LN2 x); ln0 first in block 0.
    fn forward(
        &self,
        x: &Tensor,
        v_first: &mut Option<Tensor>,
        ls: &LayerState,
        dims: &ModelDims,
    ) -> Result<(Tensor, LayerState)> {
        let x = match &self.ln0 {
            Some(ln0) => ln0.forward(x),
            None => x.shallow_clone(),
        };
        let (att, att_x, att_kv) = self.att.forward(&self.ln1.forward(&x), v_first, ls, dims)?;
        let x = x + att;
        let (ffn, ffn_x) = self.ffn.forward(&self.ln2.forward(&x), &ls.ffn_x);
        Ok((
            x + ffn,
            LayerState {
                att_x,
                att_kv,
                ffn_x,
            },
        ))
    }
}

/// A block under activation checkpointing: only its inputs are kept for backward, which runs it
/// again. The closure owns a shallow copy of the block, so the graph never borrows the model.
fn checkpointed_block(
    blk: &Block,
    x: &Tensor,
    v_first: &mut Option<Tensor>,
    ls: &LayerState,
    dims: &ModelDims,
) -> Result<(Tensor, LayerState)> {
    let own = blk.shallow();
    let dims = *dims;
    let defines_v_first = v_first.is_none();
    // A leaf that requires grad: without one, a block whose inputs are all frozen (LoRA with a
    // frozen embedding) would record no node and its parameters would get no gradient.
    let anchor = Tensor::zeros([], (Kind::Float, x.device())).set_requires_grad(true);
    let mut inputs = vec![x, &ls.att_x, &ls.att_kv, &ls.ffn_x, &anchor];
    if let Some(v) = v_first.as_ref() {
        inputs.push(v);
    }
    let outs = rwkvtune_kernels::checkpoint(
        move |ins: &[Tensor]| {
            let state = LayerState {
                att_x: ins[1].shallow_clone(),
                att_kv: ins[2].shallow_clone(),
                ffn_x: ins[3].shallow_clone(),
            };
            let mut vf = ins.get(5).map(Tensor::shallow_clone);
            let (y, s) = own
                .forward(&ins[0], &mut vf, &state, &dims)
                .map_err(|e| e.to_string())?;
            let mut out = vec![y, s.att_x, s.att_kv, s.ffn_x];
            if defines_v_first {
                out.extend(vf);
            }
            Ok(out)
        },
        &inputs,
    )?;
    let mut outs = outs.into_iter();
    let mut next = || {
        outs.next().ok_or_else(|| {
            Error::InvalidArgument("checkpointed block returned too few outputs".into())
        })
    };
    let (y, att_x, att_kv, ffn_x) = (next()?, next()?, next()?, next()?);
    if defines_v_first {
        *v_first = Some(next()?);
    }
    Ok((
        y,
        LayerState {
            att_x,
            att_kv,
            ffn_x,
        },
    ))
}

impl Rwkv7 {
    pub fn device(&self) -> Device {
        self.emb.device()
    }

    /// The dtype of weights and activations.
    pub fn kind(&self) -> Kind {
        self.emb.kind()
    }

    /// Runs `ids` [B, T] (int64, T ≥ 1) from `state` (zeros when `None`).
    ///
    /// Returns logits [B, T', V] in the model dtype, where T' = min(T, `logits_to_keep`) counts the
    /// last positions (`None` keeps all), and the state after the last token. Gradients flow into
    /// the incoming state when it requires grad (chunked BPTT).
    pub fn forward(
        &self,
        ids: &Tensor,
        state: Option<&State>,
        logits_to_keep: Option<i64>,
    ) -> Result<(Tensor, State)> {
        let (mut x, state) = self.forward_hidden(ids, state)?;
        let t = x.size()[1];
        if let Some(keep) = logits_to_keep {
            if keep < t {
                x = x.narrow(1, t - keep.max(1), keep.max(1));
            }
        }
        Ok((self.head.forward(&x), state))
    }

    /// [`Rwkv7::forward`] up to the head: the `ln_out`-normalised hidden states [B, T, C] the head
    /// turns into logits. Training feeds them to a fused head + loss
    /// ([`crate::train::head_loss_part`]) so that [B, T, V] logits are never materialised.
    pub fn forward_hidden(&self, ids: &Tensor, state: Option<&State>) -> Result<(Tensor, State)> {
        let (b, t) = ids.size2()?;
        if t < 1 {
            return Err(Error::InvalidArgument(
                "forward needs at least one token".into(),
            ));
        }
        self.check_ids(ids)?;
        let zero;
        let state = match state {
            Some(s) => {
                s.check(b, &self.dims)?;
                s
            }
            None => {
                zero = State::zeros(&self.dims, b, self.device());
                &zero
            }
        };
        let ids = ids.to_device(self.device());
        let mut x = Tensor::embedding(&self.emb, &ids, -1, false, false);
        let mut v_first = None;
        let mut layers = Vec::with_capacity(self.blocks.len());
        for (blk, ls) in self.blocks.iter().zip(&state.layers) {
            let (y, s) = if self.grad_checkpointing {
                checkpointed_block(blk, &x, &mut v_first, ls, &self.dims)?
            } else {
                blk.forward(&x, &mut v_first, ls, &self.dims)?
            };
            x = y;
            layers.push(s);
        }
        Ok((self.ln_out.forward(&x), State { layers }))
    }

    /// Rejects ids outside the embedding table before libtorch turns them into an abort.
    fn check_ids(&self, ids: &Tensor) -> Result<()> {
        if !matches!(ids.kind(), Kind::Int64 | Kind::Int) {
            return Err(Error::InvalidArgument(format!(
                "token ids must be integers, got {:?}",
                ids.kind()
            )));
        }
        let lo = ids.min().int64_value(&[]);
        let hi = ids.max().int64_value(&[]);
        let v = self.dims.vocab_size as i64;
        if lo < 0 || hi >= v {
            let bad = if lo < 0 { lo } else { hi };
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is out of range: this model's vocabulary has ids 0..{}",
                v - 1
            )));
        }
        Ok(())
    }

    /// Convenience for one sequence: `ids` -> logits [T, V] (fp32) of every position.
    pub fn logits(&self, ids: &[i64]) -> Result<Tensor> {
        let ids = Tensor::from_slice(ids).unsqueeze(0);
        let (logits, _) = self.forward(&ids, None, None)?;
        Ok(logits.squeeze_dim(0).to_kind(Kind::Float))
    }
}
