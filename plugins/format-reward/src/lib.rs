//! Format reward for reasoning-style GRPO: 1.0 when the completion matches a regex (by default
//! `<think>…</think>` followed by `<answer>…</answer>` and nothing else), else 0.0.
//!
//! Config: `{"pattern": "<regex>", "reward": 1.0, "partial": 0.0}`. `partial` is given when the
//! completion only contains a complete `<answer>…</answer>` block (a softer shaping signal).

use regex::Regex;
use rwkvtune_wit::{export_reward, PluginInfo, RewardBatch, RewardPlugin, Value};

const DEFAULT_PATTERN: &str = r"(?s)^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$";

struct FormatReward {
    pattern: Regex,
    answer_block: Regex,
    reward: f32,
    partial: f32,
}

impl RewardPlugin for FormatReward {
    fn new(config: &Value) -> Result<Self, String> {
        let pattern = config
            .get("pattern")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_PATTERN);
        let number = |key: &str, default: f32| match config.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .map(|x| x as f32)
                .ok_or(format!("config `{key}` must be a number")),
        };
        Ok(FormatReward {
            pattern: Regex::new(pattern)
                .map_err(|e| format!("config `pattern` is not a valid regex: {e}"))?,
            answer_block: Regex::new(r"(?s)<answer>.*?</answer>").map_err(|e| e.to_string())?,
            reward: number("reward", 1.0)?,
            partial: number("partial", 0.0)?,
        })
    }

    fn info(&self) -> PluginInfo {
        PluginInfo::new(
            "format-reward",
            env!("CARGO_PKG_VERSION"),
            "regex format check on completions",
        )
    }

    fn rewards(&mut self, batch: &RewardBatch) -> Result<Vec<Option<f32>>, String> {
        Ok(batch
            .completions
            .iter()
            .map(|c| {
                Some(if self.pattern.is_match(c) {
                    self.reward
                } else if self.answer_block.is_match(c) {
                    self.partial
                } else {
                    0.0
                })
            })
            .collect())
    }
}

export_reward!(FormatReward);
