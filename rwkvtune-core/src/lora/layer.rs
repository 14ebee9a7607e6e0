//! The adapter carried by a [`Linear`](crate::model::Linear): y = W x + s · B(A · dropout(x)).

use tch::{Kind, Tensor};

/// A low-rank update ΔW = s · B A of one linear layer.
#[derive(Debug)]
pub struct LoraAdapter {
    /// `lora_A` [r, in]
    pub a: Tensor,
    /// `lora_B` [out, r]
    pub b: Tensor,
    /// s = α/r (or α/√r with rsLoRA).
    pub scale: f64,
    /// Dropout probability on the adapter's input.
    pub dropout: f64,
    /// Dropout is applied only while training.
    pub training: bool,
    /// A disabled adapter leaves the layer as the base model (GRPO's reference policy).
    pub enabled: bool,
    /// ΔW has been added into the base weight; the adapter branch is then skipped.
    pub merged: bool,
}

impl LoraAdapter {
    pub fn new(a: Tensor, b: Tensor, scale: f64, dropout: f64) -> Self {
        LoraAdapter {
            a,
            b,
            scale,
            dropout,
            training: false,
            enabled: true,
            merged: false,
        }
    }

    /// The adapter branch s · (dropout(x) Aᵀ) Bᵀ, in the adapter's dtype; `None` when it does not
    /// apply (disabled, or already merged into W).
    pub fn forward(&self, x: &Tensor) -> Option<Tensor> {
        if !self.enabled || self.merged {
            return None;
        }
        let x = x.to_kind(self.a.kind());
        let x = if self.training && self.dropout > 0.0 {
            x.dropout(self.dropout, true)
        } else {
            x
        };
        // [.., in] -> [.., r] -> [.., out]: never forms the [out, in] product.
        Some(
            x.linear::<&Tensor>(&self.a, None)
                .linear::<&Tensor>(&self.b, None)
                * self.scale,
        )
    }

    /// ΔW = s · B A [out, in] in fp32 (merging in bf16 would round every element twice).
    pub fn delta_weight(&self) -> Tensor {
        let _g = tch::no_grad_guard();
        self.b
            .to_kind(Kind::Float)
            .matmul(&self.a.to_kind(Kind::Float))
            * self.scale
    }

    /// W ← W ± ΔW, computed in fp32 and cast once to W's dtype.
    pub(crate) fn fold_into(&self, weight: &Tensor, sign: f64) {
        let _g = tch::no_grad_guard();
        let w = weight.to_kind(Kind::Float) + self.delta_weight().to_device(weight.device()) * sign;
        let mut weight = weight.shallow_clone();
        weight.copy_(&w.to_kind(weight.kind()));
    }
}
