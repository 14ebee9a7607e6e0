//! Math exact-match reward: extracts the final answer of a completion (the last `\boxed{…}`, else
//! the content of the last `<answer>…</answer>`, else the last number in the text) and compares it
//! with the dataset's ground-truth column. 1.0 if equal, 0.0 if not, `none` (not applicable) when
//! the row has no ground truth, so math and non-math prompts can share a run.
//!
//! Config: `{"column": "ground_truth", "tolerance": 1e-6}`. Numbers compare with a relative
//! tolerance (`1,000` = `1000` = `1000.0`, `3/4` = `0.75`); anything else compares as trimmed text.

use rwkvtune_wit::{export_reward, PluginInfo, RewardBatch, RewardPlugin, Value};

struct MathReward {
    column: String,
    tolerance: f64,
}

impl RewardPlugin for MathReward {
    fn new(config: &Value) -> Result<Self, String> {
        let column = match config.get("column") {
            None => "ground_truth".to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err("config `column` must be a string".into()),
        };
        let tolerance = match config.get("tolerance") {
            None => 1e-6,
            Some(v) => v.as_f64().ok_or("config `tolerance` must be a number")?,
        };
        Ok(MathReward { column, tolerance })
    }

    fn info(&self) -> PluginInfo {
        PluginInfo::new(
            "math-reward",
            env!("CARGO_PKG_VERSION"),
            "final-answer exact match",
        )
    }

    fn rewards(&mut self, batch: &RewardBatch) -> Result<Vec<Option<f32>>, String> {
        Ok((0..batch.len())
            .map(|i| {
                let truth = batch.extra_str(i, &self.column)?;
                let given = extract_answer(&batch.completions[i]);
                Some(match given {
                    Some(g) if self.same(&g, &truth) => 1.0,
                    _ => 0.0,
                })
            })
            .collect())
    }
}

impl MathReward {
    fn same(&self, given: &str, truth: &str) -> bool {
        match (parse_number(given), parse_number(truth)) {
            (Some(a), Some(b)) => (a - b).abs() <= self.tolerance * b.abs().max(1.0),
            _ => normalize(given) == normalize(truth),
        }
    }
}

/// The last `\boxed{…}` (braces balanced), else the last `<answer>…</answer>`, else the last number.
fn extract_answer(text: &str) -> Option<String> {
    if let Some(start) = text.rfind("\\boxed{") {
        let body = &text[start + "\\boxed{".len()..];
        let mut depth = 1usize;
        for (i, ch) in body.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(body[..i].trim().to_string());
                    }
                }
                _ => {}
            }
        }
    }
    if let (Some(open), Some(close)) = (text.rfind("<answer>"), text.rfind("</answer>")) {
        if open < close {
            let inner = text[open + "<answer>".len()..close].trim();
            return Some(last_number(inner).unwrap_or_else(|| inner.to_string()));
        }
    }
    last_number(text)
}

/// The last run of digits (with sign, decimal point, thousands commas, or a `/` fraction).
fn last_number(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut end = bytes.len();
    while end > 0 && !bytes[end - 1].is_ascii_digit() {
        end -= 1;
    }
    if end == 0 {
        return None;
    }
    let mut start = end;
    while start > 0 && matches!(bytes[start - 1], b'0'..=b'9' | b'.' | b',' | b'/') {
        start -= 1;
    }
    if start > 0 && bytes[start - 1] == b'-' {
        start -= 1;
    }
    Some(
        text[start..end]
            .trim_matches(|c| c == ',' || c == '.')
            .to_string(),
    )
}

fn parse_number(s: &str) -> Option<f64> {
    let s: String = s
        .trim()
        .trim_start_matches('$')
        .trim_end_matches('%')
        .chars()
        .filter(|c| *c != ',')
        .collect();
    if let Some((num, den)) = s.split_once('/') {
        let (num, den) = (
            num.trim().parse::<f64>().ok()?,
            den.trim().parse::<f64>().ok()?,
        );
        return (den != 0.0).then(|| num / den);
    }
    s.parse::<f64>().ok().filter(|x| x.is_finite())
}

fn normalize(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .trim_end_matches('.')
        .to_lowercase()
}

export_reward!(MathReward);
