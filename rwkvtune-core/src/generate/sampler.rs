//! Token sampling from one row of logits: repetition penalty, temperature, logit bias, top-k,
//! top-p, with the log-probability of the pick under the distribution it was drawn from.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sampling settings; `temperature = 0` means greedy (argmax).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f64,
    /// Nucleus mass kept; 1.0 disables.
    pub top_p: f64,
    /// Keep the k most likely tokens; 0 disables.
    pub top_k: usize,
    /// Above 1 discourages tokens already in the context (CTRL-style: divide positive logits,
    /// multiply negative ones).
    pub repetition_penalty: f64,
    pub seed: u64,
    /// `(token id, bias)` added to the logits after the temperature division (the Python tool's
    /// order), each bias clamped to [-100, 100]; -100 effectively bans a token.
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 0.85,
            top_k: 0,
            repetition_penalty: 1.0,
            seed: 42,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        Ok(())
    }
}

/// A seeded sampler: the same seed and logits give the same tokens.
pub struct Sampler {
    rng: StdRng,
    /// Scratch buffers reused across steps (no per-token allocation after the first).
    probs: Vec<(f32, u32)>,
    seen: std::collections::HashSet<u32>,
}

impl Sampler {
    pub fn new(seed: u64) -> Self {
        Sampler {
            rng: StdRng::seed_from_u64(seed),
            probs: Vec::new(),
            seen: Default::default(),
        }
    }

    /// Picks the next token from `logits` [V]; `context` holds the ids the penalty applies to.
    pub fn sample(&mut self, logits: &mut [f32], context: &[u32], p: &SamplingParams) -> u32 {
        self.sample_logprob(logits, context, p).0
    }

    /// Like [`sample`](Self::sample), also returning the log-probability of the pick under the
    /// distribution it was drawn from (after penalty, temperature, bias and truncation; greedy
    /// picks report the log-softmax of the processed logits).
    pub fn sample_logprob(
        &mut self,
        logits: &mut [f32],
        context: &[u32],
        p: &SamplingParams,
    ) -> (u32, f32) {
        if p.repetition_penalty != 1.0 {
            let rp = p.repetition_penalty as f32;
            self.seen.clear();
            for &id in context {
                if let Some(l) = logits.get_mut(id as usize) {
                    if self.seen.insert(id) {
                        *l = if *l > 0.0 { *l / rp } else { *l * rp };
                    }
                }
            }
        }
        let inv_t = if p.temperature == 0.0 {
            1.0
        } else {
            (1.0 / p.temperature) as f32
        };
        if inv_t != 1.0 {
            logits.iter_mut().for_each(|l| *l *= inv_t);
        }
        for &(id, bias) in &p.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias.clamp(-100.0, 100.0);
            }
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if p.temperature == 0.0 {
            let id = argmax(logits);
            let lse = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
            return (id, logits[id as usize] - lse);
        }
        // Unnormalised probabilities, in place.
        logits.iter_mut().for_each(|l| *l = (*l - max).exp());
        self.draw(logits, p)
    }

    /// Picks from `probs` [V]: the softmax of logits already divided by the temperature and
    /// biased (the batched rollout computes it for all rows at once); applies top-k/top-p and
    /// returns the pick with its log-probability under the distribution it was drawn from.
    /// No repetition penalty here: that needs the logits.
    pub fn sample_probs(&mut self, probs: &[f32], p: &SamplingParams) -> (u32, f32) {
        if p.temperature == 0.0 {
            let id = argmax(probs);
            let total: f32 = probs.iter().sum();
            return (id, (probs[id as usize] / total).ln());
        }
        self.draw(probs, p)
    }

    /// Draws from non-negative `weights` (any scale) after top-k/top-p truncation.
    fn draw(&mut self, weights: &[f32], p: &SamplingParams) -> (u32, f32) {
        if p.top_k == 0 && p.top_p >= 1.0 {
            // Inverse CDF in blocks: vectorised block sums find the block, one scan inside it.
            const BLOCK: usize = 1024;
            let total: f32 = weights.iter().sum();
            let mut u = self.rng.gen::<f32>() * total;
            for (b, block) in weights.chunks(BLOCK).enumerate() {
                let s: f32 = block.iter().sum();
                if u < s {
                    let mut pick = block.iter().rposition(|&x| x > 0.0).unwrap_or(0);
                    for (j, &x) in block.iter().enumerate() {
                        if u < x {
                            pick = j;
                            break;
                        }
                        u -= x;
                    }
                    let id = b * BLOCK + pick;
                    return (id as u32, (weights[id] / total).ln());
                }
                u -= s;
            }
            // Rounding left u past the end: the last token with any mass.
            let id = weights.iter().rposition(|&x| x > 0.0).unwrap_or(0);
            return (id as u32, (weights[id] / total).ln());
        }
        self.probs.clear();
        self.probs
            .extend(weights.iter().enumerate().map(|(i, &w)| (w, i as u32)));
        // Order only what a truncation needs: top-k selects in linear time and sorts just k.
        let desc = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0);
        if p.top_k > 0 && p.top_k < self.probs.len() {
            self.probs.select_nth_unstable_by(p.top_k - 1, desc);
            self.probs.truncate(p.top_k);
        }
        self.probs.sort_unstable_by(desc);
        if p.top_p < 1.0 {
            let total: f32 = self.probs.iter().map(|x| x.0).sum();
            let mut acc = 0.0;
            let mut keep = self.probs.len();
            for (i, x) in self.probs.iter().enumerate() {
                acc += x.0 / total;
                if acc >= p.top_p as f32 {
                    keep = i + 1;
                    break;
                }
            }
            self.probs.truncate(keep);
        }
        let total: f32 = self.probs.iter().map(|x| x.0).sum();
        let mut u = self.rng.gen::<f32>() * total;
        let mut pick = self.probs.last().map_or((0.0, 0), |&x| x);
        for &(w, id) in &self.probs {
            if u < w {
                pick = (w, id);
                break;
            }
            u -= w;
        }
        (pick.1, (pick.0 / total).ln())
    }
}

pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_argmax() {
        let mut s = Sampler::new(0);
        let p = SamplingParams {
            temperature: 0.0,
            ..Default::default()
        };
        assert_eq!(s.sample(&mut [0.1, 3.0, -1.0], &[], &p), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_seed_reproduces() {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 1,
            top_p: 1.0,
            ..Default::default()
        };
        assert_eq!(
            Sampler::new(1).sample(&mut [0.0, 1.0, 5.0, 2.0], &[], &p),
            2
        );
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            ..Default::default()
        };
        let logits = [0.5f32, 0.4, 0.3, 0.2, 0.1];
        let run = |seed| {
            let mut s = Sampler::new(seed);
            (0..50)
                .map(|_| s.sample(&mut logits.clone(), &[], &p))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_p_drops_the_tail() {
        // probabilities ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.5 keeps only the first.
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            ..Default::default()
        };
        let mut s = Sampler::new(3);
        for _ in 0..100 {
            assert_eq!(s.sample(&mut [3.0, 2.0, 1.0, 0.0], &[], &p), 0);
        }
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let p = SamplingParams {
            temperature: 0.0,
            repetition_penalty: 4.0,
            ..Default::default()
        };
        // 2.0/4 = 0.5 < 1.0: the seen token loses its lead.
        assert_eq!(Sampler::new(0).sample(&mut [2.0, 1.0], &[0], &p), 1);
    }

    #[test]
    fn sampling_from_probabilities_matches_sampling_from_logits() {
        // The same seed and distribution: the same picks and log-probs, with and without top-k.
        let logits: Vec<f32> = (0..3000)
            .map(|i| ((i * 7919) % 613) as f32 / 97.0)
            .collect();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let z: f32 = logits.iter().map(|l| (l - max).exp()).sum();
        let probs: Vec<f32> = logits.iter().map(|l| (l - max).exp() / z).collect();
        for top_k in [0, 50] {
            let p = SamplingParams {
                temperature: 1.0,
                top_p: 1.0,
                top_k,
                ..Default::default()
            };
            let (mut a, mut b) = (Sampler::new(9), Sampler::new(9));
            let mut counts = std::collections::HashMap::new();
            for _ in 0..300 {
                let (x, lx) = a.sample_logprob(&mut logits.clone(), &[], &p);
                let (y, ly) = b.sample_probs(&probs, &p);
                assert_eq!(x, y);
                assert!((lx - ly).abs() < 1e-4, "{lx} {ly}");
                *counts.entry(x).or_insert(0) += 1;
            }
            assert!(counts.len() > 10, "{counts:?}");
        }
    }

    #[test]
    fn logprob_is_that_of_the_sampling_distribution_and_bias_bans() {
        // temperature 0.5 doubles the logits: p = softmax([0, 2]) at T=1 of [0, 1].
        let p = SamplingParams {
            temperature: 0.5,
            top_p: 1.0,
            ..Default::default()
        };
        let mut s = Sampler::new(5);
        for _ in 0..20 {
            let (id, lp) = s.sample_logprob(&mut [0.0, 1.0], &[], &p);
            let z = (1.0f32 + 2.0f32.exp()).ln();
            let want = if id == 1 { 2.0 - z } else { -z };
            assert!((lp - want).abs() < 1e-5, "{id} {lp} {want}");
        }
        let banned = SamplingParams {
            logit_bias: vec![(1, -1000.0)],
            ..p
        };
        for _ in 0..50 {
            assert_ne!(s.sample(&mut [0.0, 5.0, 0.5], &[], &banned), 1);
        }
    }
}
