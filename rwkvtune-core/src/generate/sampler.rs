//! Token sampling from one row of logits: repetition penalty, temperature, top-k, top-p.

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
    /// > 1 discourages tokens already in the context (CTRL-style: divide positive logits,
    /// multiply negative ones).
    pub repetition_penalty: f64,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 0.85,
            top_k: 0,
            repetition_penalty: 1.0,
            seed: 42,
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
}

impl Sampler {
    pub fn new(seed: u64) -> Self {
        Sampler {
            rng: StdRng::seed_from_u64(seed),
            probs: Vec::new(),
        }
    }

    /// Picks the next token from `logits` [V]; `context` holds the ids the penalty applies to.
    pub fn sample(&mut self, logits: &mut [f32], context: &[u32], p: &SamplingParams) -> u32 {
        if p.repetition_penalty != 1.0 {
            let rp = p.repetition_penalty as f32;
            let mut seen = std::collections::HashSet::new();
            for &id in context {
                if let Some(l) = logits.get_mut(id as usize) {
                    if seen.insert(id) {
                        *l = if *l > 0.0 { *l / rp } else { *l * rp };
                    }
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        let inv_t = (1.0 / p.temperature) as f32;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        self.probs.clear();
        self.probs.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (((l - max) * inv_t).exp(), i as u32)),
        );
        // Sort only when a truncation needs the order.
        if p.top_k > 0 || p.top_p < 1.0 {
            self.probs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
            if p.top_k > 0 {
                self.probs.truncate(p.top_k.max(1));
            }
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
        }
        let total: f32 = self.probs.iter().map(|x| x.0).sum();
        let mut u = self.rng.gen::<f32>() * total;
        for &(w, id) in &self.probs {
            if u < w {
                return id;
            }
            u -= w;
        }
        self.probs.last().map_or(0, |x| x.1)
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
}
