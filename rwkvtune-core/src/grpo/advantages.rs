//! Advantages from rewards, with TRL's documented semantics.
//!
//! Rows come in groups of G consecutive completions of one prompt. With `r` the combined reward,
//! `μ_g` the mean of the row's group and `σ` an unbiased (n−1) standard deviation:
//!
//! | `scale_rewards` | advantage `A` |
//! |---|---|
//! | `group` | `(r − μ_g) / (σ_g + 1e-4)` |
//! | `batch` | `(r − μ_g) / (σ_batch + 1e-4)` — still centred by the group mean |
//! | `none`  | `r − μ_g` (Dr. GRPO: no scaling, but always a baseline) |
//!
//! Then, in `group` and `batch` modes, `A` is clamped to `[−advantage_clip, advantage_clip]`; in
//! `group` mode a group whose best raw reward is below `low_reward_threshold` has its advantages
//! multiplied by `low_reward_scale` (a group that is wrong everywhere teaches little but noise).
//!
//! Rows without a valid reward (every reward function said "not applicable", or one failed under
//! `on_error = skip`) are left out of the means and deviations and get `A = 0`.

/// Division guard of the scaled modes (TRL's).
pub const STD_EPS: f64 = 1e-4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleRewards {
    Group,
    Batch,
    None,
}

impl ScaleRewards {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "group" => Some(ScaleRewards::Group),
            "batch" => Some(ScaleRewards::Batch),
            "none" => Some(ScaleRewards::None),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdvantageOptions {
    pub scale: ScaleRewards,
    pub clip: Option<f64>,
    pub low_reward_threshold: Option<f64>,
    pub low_reward_scale: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Advantages {
    pub values: Vec<f32>,
    /// Fraction of groups whose valid rewards are all equal (no learning signal).
    pub frac_reward_zero_std: f64,
    /// Mean of the groups' reward standard deviations.
    pub mean_group_std: f64,
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Advantages of `rewards` (grouped by `group_size` consecutive rows); `valid[i] = false` rows
/// are excluded and get 0.
pub fn compute_advantages(
    rewards: &[f32],
    valid: &[bool],
    group_size: usize,
    opts: &AdvantageOptions,
) -> Advantages {
    let n = rewards.len();
    let g = group_size.max(1);
    let valid_rewards = |range: std::ops::Range<usize>| -> Vec<f64> {
        range
            .filter(|&i| valid[i])
            .map(|i| rewards[i] as f64)
            .collect()
    };
    let (_, batch_std) = mean_std(&valid_rewards(0..n));
    let mut values = vec![0f32; n];
    let (mut zero_std, mut std_sum, mut groups) = (0usize, 0.0, 0usize);
    for start in (0..n).step_by(g) {
        let end = (start + g).min(n);
        let rs = valid_rewards(start..end);
        let (mean, std) = mean_std(&rs);
        groups += 1;
        std_sum += std;
        if std <= 1e-8 {
            zero_std += 1;
        }
        let best = rs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        for i in (start..end).filter(|&i| valid[i]) {
            let centred = rewards[i] as f64 - mean;
            let mut a = match opts.scale {
                ScaleRewards::Group => centred / (std + STD_EPS),
                ScaleRewards::Batch => centred / (batch_std + STD_EPS),
                ScaleRewards::None => centred,
            };
            if opts.scale != ScaleRewards::None {
                if let Some(c) = opts.clip {
                    a = a.clamp(-c, c);
                }
            }
            if opts.scale == ScaleRewards::Group {
                if let Some(t) = opts.low_reward_threshold {
                    if best < t {
                        a *= opts.low_reward_scale;
                    }
                }
            }
            values[i] = a as f32;
        }
    }
    Advantages {
        values,
        frac_reward_zero_std: if groups == 0 {
            0.0
        } else {
            zero_std as f64 / groups as f64
        },
        mean_group_std: if groups == 0 {
            0.0
        } else {
            std_sum / groups as f64
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(scale: ScaleRewards) -> AdvantageOptions {
        AdvantageOptions {
            scale,
            clip: None,
            low_reward_threshold: None,
            low_reward_scale: 0.01,
        }
    }

    fn close(a: &[f32], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((*x as f64 - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    // Two groups of 3: [1, 2, 3] (mean 2, std 1) and [0, 0, 6] (mean 2, std sqrt(12)).
    const R: [f32; 6] = [1.0, 2.0, 3.0, 0.0, 0.0, 6.0];
    const V: [bool; 6] = [true; 6];

    #[test]
    fn group_scaling_centres_and_divides_by_the_group_std() {
        let a = compute_advantages(&R, &V, 3, &opts(ScaleRewards::Group));
        let s2 = 12f64.sqrt() + STD_EPS;
        let s1 = 1.0 + STD_EPS;
        close(
            &a.values,
            &[-1.0 / s1, 0.0, 1.0 / s1, -2.0 / s2, -2.0 / s2, 4.0 / s2],
        );
        assert_eq!(a.frac_reward_zero_std, 0.0);
    }

    #[test]
    fn batch_scaling_keeps_the_group_mean_but_the_batch_std() {
        let a = compute_advantages(&R, &V, 3, &opts(ScaleRewards::Batch));
        // batch: mean 2, unbiased variance (1+0+1+4+4+16)/5 = 5.2
        let s = 5.2f64.sqrt() + STD_EPS;
        close(
            &a.values,
            &[-1.0 / s, 0.0, 1.0 / s, -2.0 / s, -2.0 / s, 4.0 / s],
        );
    }

    #[test]
    fn none_only_centres() {
        let a = compute_advantages(&R, &V, 3, &opts(ScaleRewards::None));
        close(&a.values, &[-1.0, 0.0, 1.0, -2.0, -2.0, 4.0]);
    }

    #[test]
    fn clip_low_reward_groups_invalid_rows_and_zero_std() {
        let mut o = opts(ScaleRewards::Group);
        o.clip = Some(0.5);
        o.low_reward_threshold = Some(4.0);
        o.low_reward_scale = 0.1;
        let a = compute_advantages(&R, &V, 3, &o);
        // group 1's best reward 3 < 4: clipped then scaled; group 2's best 6 >= 4: clipped only
        // (-0.577 and 1.155 become -0.5 and 0.5).
        close(&a.values, &[-0.05, 0.0, 0.05, -0.5, -0.5, 0.5]);
        // An invalid row is out of its group's statistics and gets 0.
        let a = compute_advantages(
            &[1.0, 1.0, 9.0, 5.0],
            &[true, true, false, true],
            2,
            &opts(ScaleRewards::None),
        );
        close(&a.values, &[0.0, 0.0, 0.0, 0.0]);
        assert_eq!(a.frac_reward_zero_std, 1.0);
    }
}
