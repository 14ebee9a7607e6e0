//! Shallow copies of layers: new handles to the same tensors (same storage, same autograd
//! identity). A checkpointed block owns one so its recomputation never borrows the model.

use super::{Block, ChannelMix, LayerNorm, Linear, TimeMix, ValueResidual};
use crate::lora::LoraAdapter;

impl LayerNorm {
    pub fn shallow(&self) -> Self {
        LayerNorm {
            weight: self.weight.shallow_clone(),
            bias: self.bias.shallow_clone(),
        }
    }
}

impl Linear {
    pub fn shallow(&self) -> Self {
        Linear {
            weight: self.weight.shallow_clone(),
            lora: self.lora.as_ref().map(|l| LoraAdapter {
                a: l.a.shallow_clone(),
                b: l.b.shallow_clone(),
                scale: l.scale,
                dropout: l.dropout,
                training: l.training,
                enabled: l.enabled,
                merged: l.merged,
            }),
        }
    }
}

impl TimeMix {
    pub fn shallow(&self) -> Self {
        TimeMix {
            x_r: self.x_r.shallow_clone(),
            x_w: self.x_w.shallow_clone(),
            x_k: self.x_k.shallow_clone(),
            x_v: self.x_v.shallow_clone(),
            x_a: self.x_a.shallow_clone(),
            x_g: self.x_g.shallow_clone(),
            w0: self.w0.shallow_clone(),
            w1: self.w1.shallow_clone(),
            w2: self.w2.shallow_clone(),
            a0: self.a0.shallow_clone(),
            a1: self.a1.shallow_clone(),
            a2: self.a2.shallow_clone(),
            v_residual: self.v_residual.as_ref().map(|v| ValueResidual {
                v0: v.v0.shallow_clone(),
                v1: v.v1.shallow_clone(),
                v2: v.v2.shallow_clone(),
            }),
            g1: self.g1.shallow_clone(),
            g2: self.g2.shallow_clone(),
            k_k: self.k_k.shallow_clone(),
            k_a: self.k_a.shallow_clone(),
            r_k: self.r_k.shallow_clone(),
            receptance: self.receptance.shallow(),
            key: self.key.shallow(),
            value: self.value.shallow(),
            output: self.output.shallow(),
            ln_x: self.ln_x.shallow(),
        }
    }
}

impl Block {
    pub fn shallow(&self) -> Self {
        Block {
            ln0: self.ln0.as_ref().map(LayerNorm::shallow),
            ln1: self.ln1.shallow(),
            ln2: self.ln2.shallow(),
            att: self.att.shallow(),
            ffn: ChannelMix {
                x_k: self.ffn.x_k.shallow_clone(),
                key: self.ffn.key.shallow(),
                value: self.ffn.value.shallow(),
            },
        }
    }
}
