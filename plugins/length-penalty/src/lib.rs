//! Length and repetition penalty reward (≤ 0): discourages rambling and degenerate loops, the two
//! classic GRPO failure modes. Reads the completion token ids the host passes, so lengths are in
//! the run's own tokens.
//!
//! Config: `{"target_tokens": 256, "max_tokens": 1024, "length_weight": 1.0, "ngram": 4,
//! "repetition_weight": 1.0, "use_host_tokenizer": false}`.
//! - length: 0 up to `target_tokens`, then linear down to `-length_weight` at `max_tokens`;
//! - repetition: `-repetition_weight` × the fraction of `ngram`-grams that already occurred;
//! - `use_host_tokenizer`: count tokens by re-tokenising the text through the host instead.

use std::collections::HashSet;

use rwkvtune_wit::{export_reward, tokenize, PluginInfo, RewardBatch, RewardPlugin, Value};

struct LengthPenalty {
    target: f32,
    max: f32,
    length_weight: f32,
    ngram: usize,
    repetition_weight: f32,
    use_host_tokenizer: bool,
}

impl RewardPlugin for LengthPenalty {
    fn new(config: &Value) -> Result<Self, String> {
        let num = |key: &str, default: f64| match config.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().ok_or(format!("config `{key}` must be a number")),
        };
        let p = LengthPenalty {
            target: num("target_tokens", 256.0)? as f32,
            max: num("max_tokens", 1024.0)? as f32,
            length_weight: num("length_weight", 1.0)? as f32,
            ngram: num("ngram", 4.0)? as usize,
            repetition_weight: num("repetition_weight", 1.0)? as f32,
            use_host_tokenizer: config
                .get("use_host_tokenizer")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        if p.max <= p.target || p.ngram == 0 {
            return Err("config needs max_tokens > target_tokens and ngram >= 1".into());
        }
        Ok(p)
    }

    fn info(&self) -> PluginInfo {
        PluginInfo::new(
            "length-penalty",
            env!("CARGO_PKG_VERSION"),
            "length and n-gram repetition penalty",
        )
    }

    fn rewards(&mut self, batch: &RewardBatch) -> Result<Vec<Option<f32>>, String> {
        let rows: Vec<Vec<u32>> = if self.use_host_tokenizer {
            tokenize(&batch.completions)?
        } else {
            (0..batch.len()).map(|i| batch.tokens.real_ids(i)).collect()
        };
        Ok(rows
            .iter()
            .map(|ids| Some(self.length_term(ids.len()) + self.repetition_term(ids)))
            .collect())
    }
}

impl LengthPenalty {
    fn length_term(&self, n: usize) -> f32 {
        let over = (n as f32 - self.target).max(0.0) / (self.max - self.target);
        -self.length_weight * over.min(1.0)
    }

    fn repetition_term(&self, ids: &[u32]) -> f32 {
        if ids.len() < self.ngram {
            return 0.0;
        }
        let grams = ids.windows(self.ngram);
        let total = grams.len();
        let mut seen = HashSet::with_capacity(total);
        let repeated = grams.filter(|g| !seen.insert(*g)).count();
        -self.repetition_weight * repeated as f32 / total as f32
    }
}

export_reward!(LengthPenalty);
