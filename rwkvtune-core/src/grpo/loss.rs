//! The GRPO objective on per-token log-probabilities.
//!
//! For a completion token t of row i, with mask `m`, advantage `A_i`, `Δ = logp − logp_old`:
//! - importance ratio: `token` level `ρ_t = exp(Δ_t)`; `sequence` level (GSPO)
//!   `ρ_i = exp(Σ_t m_t Δ_t / Σ_t m_t)` for every token of the row;
//! - clipped surrogate: `ℓ_t = −min(min(ρ, δ)·A, clip(ρ, 1−ε, 1+ε_high)·A)` (`δ` = `delta`, the
//!   optional upper bound of two-sided clipping);
//! - KL penalty against the reference policy, `ℓ_t += β·k(t)` with `d = logp_ref − logp`:
//!   `k1 = −d`, `k2 = d²/2`, `k3 = exp(d) − d − 1` (Schulman's unbiased, non-negative estimator).
//!
//! Aggregation is a weighted sum `L = Σ ℓ_t w_t` ([`token_weights`]); over one optimizer step
//! (`acc` micro-batches):
//! - `grpo`: each sequence's token mean, averaged over the sequences of the micro-batch, `/acc`;
//! - `bnpo`: token mean over the micro-batch, `/acc`;
//! - `dr_grpo`: token sum `/ (N · max_completion_length)` per micro-batch of N rows, `/acc`;
//! - `dapo`: token sum `/` the number of completion tokens of the whole accumulated batch.

use tch::{Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossType {
    Grpo,
    Bnpo,
    DrGrpo,
    Dapo,
}

impl LossType {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "grpo" => Some(LossType::Grpo),
            "bnpo" => Some(LossType::Bnpo),
            "dr_grpo" => Some(LossType::DrGrpo),
            "dapo" => Some(LossType::Dapo),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KlApproximator {
    K1,
    K2,
    K3,
}

impl KlApproximator {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "k1" => Some(KlApproximator::K1),
            "k2" => Some(KlApproximator::K2),
            "k3" | "schulman" => Some(KlApproximator::K3),
            _ => None,
        }
    }

    /// Per-token estimate of KL(π‖π_ref) from `logp` (π) and `ref_logp` (π_ref).
    pub fn estimate(self, logp: &Tensor, ref_logp: &Tensor) -> Tensor {
        let d = ref_logp - logp;
        match self {
            KlApproximator::K1 => -d,
            KlApproximator::K2 => d.square() * 0.5,
            KlApproximator::K3 => d.exp() - &d - 1.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportanceLevel {
    Token,
    Sequence,
}

impl ImportanceLevel {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "token" => Some(ImportanceLevel::Token),
            "sequence" => Some(ImportanceLevel::Sequence),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyLoss {
    pub epsilon_low: f64,
    pub epsilon_high: f64,
    pub delta: Option<f64>,
    pub beta: f64,
    pub kl: KlApproximator,
    pub level: ImportanceLevel,
}

/// Per-token terms of a micro-batch chunk.
pub struct TokenTerms {
    /// [N, C] ℓ_t (unmasked; multiply by [`token_weights`] and sum).
    pub loss: Tensor,
    /// [N, C] the token-level ratio (no grad), for clip metrics.
    pub ratio: Tensor,
    /// [N, C] the KL estimate (no grad), when a reference is given.
    pub kl: Option<Tensor>,
}

impl PolicyLoss {
    /// `logp`, `old_logp`, `ref_logp`, `mask`: [N, C] fp32; `adv`: [N].
    pub fn terms(
        &self,
        logp: &Tensor,
        old_logp: &Tensor,
        ref_logp: Option<&Tensor>,
        adv: &Tensor,
        mask: &Tensor,
    ) -> TokenTerms {
        let delta = logp - old_logp;
        let log_ratio = match self.level {
            ImportanceLevel::Token => delta,
            ImportanceLevel::Sequence => {
                let len = mask.sum_dim_intlist(-1, true, Kind::Float).clamp_min(1.0);
                ((delta * mask).sum_dim_intlist(-1, true, Kind::Float) / len).expand_as(logp)
            }
        };
        let ratio = log_ratio.exp();
        let a = adv.unsqueeze(-1);
        let unclipped = match self.delta {
            Some(d) => ratio.clamp_max(d),
            None => ratio.shallow_clone(),
        } * &a;
        let clipped = ratio.clamp(1.0 - self.epsilon_low, 1.0 + self.epsilon_high) * &a;
        let mut loss = -unclipped.minimum(&clipped);
        let kl = ref_logp.map(|r| self.kl.estimate(logp, r));
        if let (Some(k), true) = (&kl, self.beta != 0.0) {
            loss += k * self.beta;
        }
        let token_ratio = (logp - old_logp).exp().detach();
        TokenTerms {
            loss,
            ratio: token_ratio,
            kl: kl.map(|k| k.detach()),
        }
    }
}

/// What the weights of one chunk depend on besides its own mask.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalizer {
    pub loss_type: LossType,
    /// Rows and completion tokens of the micro-batch the chunk belongs to.
    pub micro_rows: f64,
    pub micro_tokens: f64,
    /// Completion tokens of every micro-batch of the optimizer step (`dapo`).
    pub window_tokens: f64,
    pub max_completion_length: f64,
    pub accumulate: f64,
}

/// [N, C] weights `w` such that the chunk's share of the step's loss is `Σ ℓ_t w_t`.
pub fn token_weights(mask: &Tensor, n: &Normalizer) -> Tensor {
    match n.loss_type {
        LossType::Grpo => {
            let len = mask.sum_dim_intlist(-1, true, Kind::Float).clamp_min(1.0);
            mask / len / (n.micro_rows * n.accumulate)
        }
        LossType::Bnpo => mask / (n.micro_tokens.max(1.0) * n.accumulate),
        LossType::DrGrpo => mask / (n.micro_rows * n.max_completion_length * n.accumulate),
        LossType::Dapo => mask / n.window_tokens.max(1.0),
    }
}

/// Keeps the tokens whose entropy is in the top `quantile` fraction of the masked tokens.
pub fn top_entropy_mask(entropy: &Tensor, mask: &Tensor, quantile: f64) -> Tensor {
    if quantile >= 1.0 {
        return mask.shallow_clone();
    }
    let sel = mask.gt(0.0);
    let values = entropy.masked_select(&sel);
    if values.numel() == 0 {
        return mask.shallow_clone();
    }
    let threshold = values.quantile_scalar(1.0 - quantile, None, false, "linear");
    mask * entropy.ge_tensor(&threshold).to_kind(Kind::Float)
}

/// Token-level clip statistics: fractions of masked tokens clipped low (ρ < 1−ε with A < 0),
/// high (ρ > 1+ε_high with A > 0), and either.
pub fn clip_fractions(
    ratio: &Tensor,
    adv: &Tensor,
    mask: &Tensor,
    eps_low: f64,
    eps_high: f64,
) -> (f64, f64, f64) {
    let a = adv.unsqueeze(-1).expand_as(ratio);
    let low = ratio.lt(1.0 - eps_low).logical_and(&a.lt(0.0));
    let high = ratio.gt(1.0 + eps_high).logical_and(&a.gt(0.0));
    let total = mask.sum(Kind::Double).double_value(&[]).max(1.0);
    let frac = |t: &Tensor| {
        (t.to_kind(Kind::Float) * mask)
            .sum(Kind::Double)
            .double_value(&[])
            / total
    };
    (frac(&low), frac(&high), frac(&low.logical_or(&high)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: &[&[f32]]) -> Tensor {
        let c = rows[0].len() as i64;
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, c])
    }

    fn v(x: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(x.flatten(0, -1)).unwrap()
    }

    fn close(a: &[f32], b: &[f32]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    fn cfg() -> PolicyLoss {
        PolicyLoss {
            epsilon_low: 0.2,
            epsilon_high: 0.3,
            delta: None,
            beta: 0.0,
            kl: KlApproximator::K3,
            level: ImportanceLevel::Token,
        }
    }

    #[test]
    fn token_level_clipping_by_hand() {
        // ratios e^0.5 = 1.6487 (A>0: clipped to 1.3), e^-0.5 = 0.6065 (A>0: unclipped wins,
        // min), e^0.1 for A<0 (within the band).
        let logp = t(&[&[0.5, -0.5], &[0.1, 0.0]]);
        let old = Tensor::zeros([2, 2], (Kind::Float, tch::Device::Cpu));
        let adv = Tensor::from_slice(&[2.0f32, -1.0]);
        let mask = t(&[&[1.0, 1.0], &[1.0, 0.0]]);
        let terms = cfg().terms(&logp, &old, None, &adv, &mask);
        let e = |x: f32| x.exp();
        close(
            &v(&terms.loss),
            &[-2.0 * 1.3, -2.0 * e(-0.5), 1.0 * e(0.1), 1.0],
        );
        let (low, high, region) = clip_fractions(&terms.ratio, &adv, &mask, 0.2, 0.3);
        assert!((high - 1.0 / 3.0).abs() < 1e-9 && low == 0.0 && (region - high).abs() < 1e-12);
        // delta bounds the unclipped branch: A<0 with ratio e^1 = 2.718 -> min(2.718, 1.5) = 1.5
        let c = PolicyLoss {
            delta: Some(1.5),
            ..cfg()
        };
        let terms = c.terms(
            &t(&[&[1.0]]),
            &t(&[&[0.0]]),
            None,
            &Tensor::from_slice(&[-1.0f32]),
            &t(&[&[1.0]]),
        );
        close(&v(&terms.loss), &[1.5]);
    }

    #[test]
    fn sequence_level_ratio_is_the_masked_mean_log_ratio() {
        let logp = t(&[&[0.1, 0.3, 9.0]]);
        let old = t(&[&[0.0, 0.0, 0.0]]);
        let mask = t(&[&[1.0, 1.0, 0.0]]);
        let c = PolicyLoss {
            level: ImportanceLevel::Sequence,
            epsilon_high: 0.5,
            ..cfg()
        };
        let terms = c.terms(&logp, &old, None, &Tensor::from_slice(&[1.0f32]), &mask);
        let r = 0.2f32.exp();
        close(&v(&terms.loss)[..2], &[-r, -r]);
    }

    #[test]
    fn kl_approximators_by_hand() {
        let logp = t(&[&[-1.0, -2.0]]);
        let refp = t(&[&[-1.5, -1.0]]);
        let d = [-0.5f32, 1.0];
        close(&v(&KlApproximator::K1.estimate(&logp, &refp)), &[0.5, -1.0]);
        close(
            &v(&KlApproximator::K2.estimate(&logp, &refp)),
            &[0.125, 0.5],
        );
        close(
            &v(&KlApproximator::K3.estimate(&logp, &refp)),
            &[d[0].exp() - d[0] - 1.0, d[1].exp() - d[1] - 1.0],
        );
        // beta adds beta * k to every token's loss.
        let c = PolicyLoss { beta: 0.5, ..cfg() };
        let zero = Tensor::zeros([1, 2], (Kind::Float, tch::Device::Cpu));
        let terms = c.terms(
            &logp,
            &logp.detach(),
            Some(&refp),
            &Tensor::from_slice(&[0.0f32]),
            &zero.ones_like(),
        );
        close(
            &v(&terms.loss),
            &[
                0.5 * (d[0].exp() - d[0] - 1.0),
                0.5 * (d[1].exp() - d[1] - 1.0),
            ],
        );
    }

    #[test]
    fn aggregation_weights_by_hand() {
        // Rows of 2 and 1 tokens; micro-batch = these 2 rows; the step has 10 tokens in all.
        let mask = t(&[&[1.0, 1.0, 0.0], &[1.0, 0.0, 0.0]]);
        let n = |lt| Normalizer {
            loss_type: lt,
            micro_rows: 2.0,
            micro_tokens: 3.0,
            window_tokens: 10.0,
            max_completion_length: 4.0,
            accumulate: 2.0,
        };
        close(
            &v(&token_weights(&mask, &n(LossType::Grpo))),
            &[0.125, 0.125, 0.0, 0.25, 0.0, 0.0],
        );
        let b = 1.0 / 6.0;
        close(
            &v(&token_weights(&mask, &n(LossType::Bnpo))),
            &[b, b, 0.0, b, 0.0, 0.0],
        );
        let d = 1.0 / 16.0;
        close(
            &v(&token_weights(&mask, &n(LossType::DrGrpo))),
            &[d, d, 0.0, d, 0.0, 0.0],
        );
        close(
            &v(&token_weights(&mask, &n(LossType::Dapo))),
            &[0.1, 0.1, 0.0, 0.1, 0.0, 0.0],
        );
    }

    #[test]
    fn top_entropy_mask_keeps_the_high_entropy_tokens() {
        let ent = t(&[&[0.1, 0.9, 0.5, 7.0]]);
        let mask = t(&[&[1.0, 1.0, 1.0, 0.0]]);
        close(
            &v(&top_entropy_mask(&ent, &mask, 0.34)),
            &[0.0, 1.0, 0.0, 0.0],
        );
        close(
            &v(&top_entropy_mask(&ent, &mask, 1.0)),
            &[1.0, 1.0, 1.0, 0.0],
        );
    }

    /// With one iteration (old = current, detached) and beta = 0, the GRPO gradient is the
    /// REINFORCE-with-baseline gradient −Σ_t w_t A_i ∇logp_t.
    #[test]
    fn on_policy_grpo_gradient_is_reinforce_with_baseline() {
        tch::manual_seed(3);
        let logits =
            Tensor::randn([4, 3, 5], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let targets = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 0, 1, 1, 1, 2, 2, 4]).view([4, 3]);
        let logp_of = |l: &Tensor| {
            l.log_softmax(-1, Kind::Float)
                .gather(-1, &targets.unsqueeze(-1), false)
                .squeeze_dim(-1)
        };
        let rewards = [1.0f32, 0.0, 0.5, 0.5];
        let adv = super::super::advantages::compute_advantages(
            &rewards,
            &[true; 4],
            2,
            &super::super::advantages::AdvantageOptions {
                scale: super::super::advantages::ScaleRewards::None,
                clip: None,
                low_reward_threshold: None,
                low_reward_scale: 1.0,
            },
        );
        let adv = Tensor::from_slice(&adv.values);
        let mask = t(&[
            &[1.0, 1.0, 1.0],
            &[1.0, 1.0, 0.0],
            &[1.0, 0.0, 0.0],
            &[1.0, 1.0, 1.0],
        ]);
        for lt in [
            LossType::Grpo,
            LossType::Bnpo,
            LossType::DrGrpo,
            LossType::Dapo,
        ] {
            let norm = Normalizer {
                loss_type: lt,
                micro_rows: 4.0,
                micro_tokens: 9.0,
                window_tokens: 9.0,
                max_completion_length: 3.0,
                accumulate: 1.0,
            };
            let w = token_weights(&mask, &norm);
            let logp = logp_of(&logits);
            let terms = cfg().terms(&logp, &logp.detach(), None, &adv, &mask);
            let g_grpo = tch::Tensor::run_backward(
                &[(terms.loss * &w).sum(Kind::Float)],
                &[&logits],
                false,
                false,
            )
            .remove(0);
            let reinforce = -(logp_of(&logits) * adv.unsqueeze(-1) * &w).sum(Kind::Float);
            let g_ref = tch::Tensor::run_backward(&[reinforce], &[&logits], false, false).remove(0);
            let diff = (&g_grpo - &g_ref).abs().max().double_value(&[]);
            assert!(diff < 1e-7, "{lt:?}: {diff}");
            assert!(g_ref.abs().max().double_value(&[]) > 1e-3);
        }
    }
}
