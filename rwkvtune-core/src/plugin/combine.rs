//! Several reward functions into one reward per sample, with TRL's `reward_weights` semantics:
//! `reward = Σ_f w_f · r_f` over the functions that apply to the sample (`None`/not-applicable
//! terms are left out, as `torch.nansum` does in TRL); a sample no function applies to, or that a
//! function failed under `on_error = skip`, gets no advantage signal (`valid = false`).

use super::error::PluginError;
use super::types::RewardValue;

/// The combined rewards of a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct CombinedRewards {
    /// [N] weighted sums (0.0 where `valid` is false).
    pub rewards: Vec<f32>,
    /// [N] false = exclude the sample from the advantage/loss.
    pub valid: Vec<bool>,
    /// Per function: mean over the samples where it gave a value (None if it gave none), for the
    /// `rewards/<name>/mean` metric.
    pub per_function_mean: Vec<Option<f32>>,
}

/// Combines `per_function[f][i]` (one vector per reward function) with `weights` (default all 1).
pub fn combine_rewards(
    per_function: &[Vec<RewardValue>],
    weights: Option<&[f32]>,
) -> Result<CombinedRewards, PluginError> {
    let n = per_function.first().map_or(0, Vec::len);
    if let Some(bad) = per_function.iter().position(|v| v.len() != n) {
        return Err(PluginError::Config(format!(
            "reward function {bad} returned {} values, function 0 returned {n}",
            per_function[bad].len()
        )));
    }
    let ones = vec![1.0; per_function.len()];
    let weights = weights.unwrap_or(&ones);
    if weights.len() != per_function.len() {
        return Err(PluginError::Config(format!(
            "reward_weights has {} entries for {} reward functions",
            weights.len(),
            per_function.len()
        )));
    }
    if let Some(w) = weights.iter().find(|w| !w.is_finite()) {
        return Err(PluginError::Config(format!(
            "reward weight {w} is not finite"
        )));
    }
    let mut rewards = vec![0.0f32; n];
    let mut valid = vec![true; n];
    let mut applies = vec![false; n];
    for (values, w) in per_function.iter().zip(weights) {
        for (i, v) in values.iter().enumerate() {
            match v {
                RewardValue::Value(x) => {
                    rewards[i] += w * x;
                    applies[i] = true;
                }
                RewardValue::NotApplicable => {}
                RewardValue::Failed => valid[i] = false,
            }
        }
    }
    for i in 0..n {
        if !(valid[i] && applies[i]) {
            valid[i] = false;
            rewards[i] = 0.0;
        }
    }
    let per_function_mean = per_function
        .iter()
        .map(|values| {
            let xs: Vec<f32> = values
                .iter()
                .filter_map(|v| match v {
                    RewardValue::Value(x) => Some(*x),
                    _ => None,
                })
                .collect();
            (!xs.is_empty()).then(|| xs.iter().sum::<f32>() / xs.len() as f32)
        })
        .collect();
    Ok(CombinedRewards {
        rewards,
        valid,
        per_function_mean,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use RewardValue::{Failed, NotApplicable as Na, Value as V};

    #[test]
    fn trl_semantics_none_is_left_out_and_all_none_is_invalid() {
        // f0 = math (only rows 0, 1 are math), f1 = format (all rows)
        let f0 = vec![V(1.0), V(0.0), Na, Na];
        let f1 = vec![V(0.5), V(1.0), V(1.0), Na];
        let c = combine_rewards(&[f0, f1], Some(&[2.0, 1.0])).unwrap();
        assert_eq!(c.rewards, [2.5, 1.0, 1.0, 0.0]);
        assert_eq!(c.valid, [true, true, true, false]);
        assert_eq!(c.per_function_mean, [Some(0.5), Some(2.5 / 3.0)]);
    }

    #[test]
    fn failed_sample_is_invalid_and_weights_are_checked() {
        let c = combine_rewards(&[vec![V(1.0), Failed]], None).unwrap();
        assert_eq!(c.valid, [true, false]);
        assert_eq!(c.rewards, [1.0, 0.0]);
        assert!(combine_rewards(&[vec![V(1.0)]], Some(&[1.0, 2.0])).is_err());
        assert!(combine_rewards(&[vec![V(1.0)], vec![]], None).is_err());
    }
}
