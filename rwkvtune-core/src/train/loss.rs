//! The language-modelling loss: token-mean cross-entropy over labelled positions, with the
//! L2Wrap gradient term of the official RWKV recipe.
//!
//! L2Wrap leaves the loss value unchanged but adds `(1e-4 / (B·T)) · m` to ∂/∂logits at the
//! argmax of every row (padded rows included), where `m` is that row's max logit; it keeps logits
//! from drifting upward. Equivalently, the extra loss `0.5 · (1e-4/(B·T)) · Σ m²` with the argmax
//! held fixed — which is how it is built here, with its value subtracted back out.

use crate::error::Result;
use crate::model::Linear;
use tch::{Kind, Reduction, Tensor};

/// Label value of positions that are not scored.
pub const IGNORE_INDEX: i64 = -100;
const L2WRAP_FACTOR: f64 = 1e-4;

/// What [`lm_loss`] returns.
pub struct Loss {
    /// Scalar to call `backward()` on: cross-entropy, plus the L2Wrap gradient when enabled.
    pub objective: Tensor,
    /// The cross-entropy value alone (detached), for logging.
    pub ce: f64,
    /// Number of labelled positions.
    pub n_tokens: i64,
}

/// The loss of a whole batch: `hidden` [B, T, C] are the model's final hidden states
/// ([`crate::model::Rwkv7::forward_hidden`]), `labels` [B, T] pre-shifted: `labels[b][t]` is the
/// target of position t, [`IGNORE_INDEX`] for unscored positions.
pub fn head_loss(head: &Linear, hidden: &Tensor, labels: &Tensor, l2wrap: bool) -> Result<Loss> {
    let (b, t) = (hidden.size()[0], hidden.size()[1]);
    let n = labels.ne(IGNORE_INDEX).sum(Kind::Int64).int64_value(&[]);
    head_loss_part(head, hidden, labels, l2wrap, n, b * t)
}

/// [`lm_loss_part`] from hidden states through `head`, without forming the [B, T, V] logits: the
/// fused, row-chunked kernel [`rwkvtune_kernels::head_ce`] computes the same value and gradients
/// (a float64 test checks it). A head with an active LoRA adapter takes the unfused path.
pub fn head_loss_part(
    head: &Linear,
    hidden: &Tensor,
    labels: &Tensor,
    l2wrap: bool,
    token_denominator: i64,
    row_denominator: i64,
) -> Result<Loss> {
    let Some(weight) = head.plain_weight() else {
        return Ok(lm_loss_part(
            &head.forward(hidden),
            labels,
            l2wrap,
            token_denominator,
            row_denominator,
        ));
    };
    let c = hidden.size()[hidden.dim() - 1];
    let labels = labels
        .to_device(hidden.device())
        .to_kind(Kind::Int64)
        .reshape([-1]);
    let n_tokens = labels.ne(IGNORE_INDEX).sum(Kind::Int64).int64_value(&[]);
    let ce_scale = if token_denominator > 0 {
        1.0 / token_denominator as f64
    } else {
        0.0
    };
    let l2_scale = if l2wrap {
        L2WRAP_FACTOR / row_denominator.max(1) as f64
    } else {
        0.0
    };
    let objective = rwkvtune_kernels::head_ce(
        &hidden.reshape([-1, c]),
        weight,
        &labels,
        ce_scale,
        l2_scale,
    )?;
    Ok(Loss {
        ce: objective.double_value(&[]),
        objective,
        n_tokens,
    })
}

/// The share of a larger batch's loss that `logits` [B, T, V] (any float dtype; computed in fp32)
/// and `labels` (a chunk of the batch) contribute — the unfused form of [`head_loss_part`]: the
/// cross-entropy summed over this part's labelled tokens divided by `token_denominator` (the
/// whole batch's labelled tokens), and L2Wrap scaled by `row_denominator` (the whole batch's
/// B·T). Summing the parts of a split batch gives exactly the loss and gradient of the whole.
pub fn lm_loss_part(
    logits: &Tensor,
    labels: &Tensor,
    l2wrap: bool,
    token_denominator: i64,
    row_denominator: i64,
) -> Loss {
    let v = logits.size()[2];
    let logits32 = logits.to_kind(Kind::Float);
    let labels = labels.to_device(logits.device()).to_kind(Kind::Int64);
    let n_tokens = labels.ne(IGNORE_INDEX).sum(Kind::Int64).int64_value(&[]);
    let ce = if n_tokens > 0 && token_denominator > 0 {
        logits32.reshape([-1, v]).cross_entropy_loss::<Tensor>(
            &labels.reshape([-1]),
            None,
            Reduction::Sum,
            IGNORE_INDEX,
            0.0,
        ) / token_denominator as f64
    } else {
        // Nothing to score: a zero that still belongs to the graph.
        logits32.sum(Kind::Float) * 0.0
    };
    let ce_value = ce.double_value(&[]);
    let objective = if l2wrap {
        let (max, _) = logits32.max_dim(-1, false);
        let extra =
            max.square().sum(Kind::Float) * (0.5 * L2WRAP_FACTOR / row_denominator.max(1) as f64);
        &ce + &extra - extra.detach()
    } else {
        ce
    };
    Loss {
        objective,
        ce: ce_value,
        n_tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn l2wrap_changes_only_the_gradient_at_the_argmax() {
        let logits = Tensor::from_slice(&[1.0f32, 3.0, 2.0, 0.5, 0.1, 0.2]).view([1, 2, 3]);
        let labels = Tensor::from_slice(&[2i64, IGNORE_INDEX]).view([1, 2]);
        let grad = |wrap| {
            let x = logits.detach().copy().set_requires_grad(true);
            let l = lm_loss_part(&x, &labels, wrap, 1, 2);
            l.objective.backward();
            (l.ce, x.grad())
        };
        let (ce_a, g_a) = grad(false);
        let (ce_b, g_b) = grad(true);
        assert_eq!(ce_a, ce_b);
        let diff = (g_b - g_a).view([-1]);
        let d: Vec<f32> = Vec::try_from(diff).unwrap();
        // Row 0 argmax is index 1 (m = 3), row 1 argmax index 0 (m = 0.5); B·T = 2.
        let c = 1e-4 / 2.0;
        let want = [0.0, c * 3.0, 0.0, c * 0.5, 0.0, 0.0];
        for (g, w) in d.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-7, "{d:?}");
        }
    }

    #[test]
    fn token_mean_over_the_whole_batch() {
        // Two rows with 1 and 3 scored tokens: one mean over 4 tokens, not a mean of row means.
        let logits = Tensor::randn([2, 3, 5], (Kind::Float, Device::Cpu));
        let labels = Tensor::from_slice(&[1i64, -100, -100, 0, 2, 4]).view([2, 3]);
        let l = lm_loss_part(&logits, &labels, false, 4, 6);
        let logp = logits.log_softmax(-1, Kind::Float);
        let pick = |b: i64, t: i64, v: i64| -logp.double_value(&[b, t, v]);
        let want = (pick(0, 0, 1) + pick(1, 0, 0) + pick(1, 1, 2) + pick(1, 2, 4)) / 4.0;
        assert!((l.ce - want).abs() < 1e-6);
        assert_eq!(l.n_tokens, 4);
    }
}
