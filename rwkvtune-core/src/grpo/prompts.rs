//! GRPO prompt data: JSON Lines (or a JSON array) of objects with a `prompt` string, optionally
//! the already tokenised `input_ids`, and any other columns, which reward functions receive as
//! the row's extras (e.g. `ground_truth`).

use crate::error::{Error, Result};
use crate::tokenizer::AutoTokenizer;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub struct PromptRow {
    pub prompt: String,
    /// The prompt's tokens (left-truncated to `max_prompt_length`).
    pub ids: Vec<u32>,
    /// Every other column of the row.
    pub extras: Map<String, Value>,
}

#[derive(Debug, Clone)]
pub struct PromptDataset {
    pub source: PathBuf,
    pub rows: Vec<PromptRow>,
    /// Prompts longer than `max_prompt_length` that lost their first tokens.
    pub truncated: usize,
}

impl PromptDataset {
    /// Reads `path` (`.jsonl`, or `.json` holding an array), tokenising `prompt` unless
    /// `input_ids` is given. Errors name the file and line.
    pub fn load(
        path: &Path,
        tokenizer: &AutoTokenizer,
        max_prompt_length: usize,
        vocab_size: usize,
    ) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let objects: Vec<(usize, Value)> =
            if path.extension().and_then(|e| e.to_str()) == Some("json") {
                match serde_json::from_str::<Value>(&text)
                    .map_err(|e| Error::json(path, e.to_string()))?
                {
                    Value::Array(items) => items
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| (i + 1, v))
                        .collect(),
                    _ => {
                        return Err(Error::json(
                            path,
                            "expected an array of prompt objects (or use .jsonl)",
                        ))
                    }
                }
            } else {
                let mut out = Vec::new();
                for (i, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let v: Value = serde_json::from_str(line)
                        .map_err(|e| Error::json(path, format!("line {}: {e}", i + 1)))?;
                    out.push((i + 1, v));
                }
                out
            };
        let mut rows = Vec::with_capacity(objects.len());
        for (line, v) in objects {
            let row = Self::row(v, tokenizer, vocab_size)
                .map_err(|m| Error::json(path, format!("record {line}: {m}")))?;
            rows.push(row);
        }
        Self::from_rows(path, rows, max_prompt_length)
    }

    /// A dataset from rows built in code (the crate API).
    pub fn from_rows(
        source: &Path,
        mut rows: Vec<PromptRow>,
        max_prompt_length: usize,
    ) -> Result<Self> {
        if rows.is_empty() {
            return Err(Error::json(source, "no prompts"));
        }
        let mut truncated = 0;
        for r in &mut rows {
            if r.ids.len() > max_prompt_length {
                r.ids.drain(..r.ids.len() - max_prompt_length);
                truncated += 1;
            }
        }
        Ok(PromptDataset {
            source: source.to_path_buf(),
            rows,
            truncated,
        })
    }

    fn row(v: Value, tokenizer: &AutoTokenizer, vocab_size: usize) -> Result<PromptRow, String> {
        let Value::Object(mut obj) = v else {
            return Err("expected a JSON object with a `prompt` field".into());
        };
        let prompt = match obj.remove("prompt") {
            Some(Value::String(s)) => s,
            Some(other) => return Err(format!("`prompt` must be a string, got {other}")),
            None => return Err("missing the `prompt` field".into()),
        };
        let ids = match obj.remove("input_ids") {
            None | Some(Value::Null) => tokenizer.encode(&prompt).map_err(|e| e.to_string())?,
            Some(Value::Array(xs)) => xs
                .iter()
                .map(|x| {
                    x.as_u64()
                        .filter(|&t| (t as usize) < vocab_size)
                        .map(|t| t as u32)
                        .ok_or_else(|| {
                            format!("`input_ids` entry {x} is not a token id below {vocab_size}")
                        })
                })
                .collect::<Result<_, _>>()?,
            Some(other) => return Err(format!("`input_ids` must be a list of ids, got {other}")),
        };
        if ids.is_empty() {
            return Err("the prompt has no tokens".into());
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(format!(
                "prompt token {bad} is outside the model's vocabulary ({vocab_size})"
            ));
        }
        Ok(PromptRow {
            prompt,
            ids,
            extras: obj,
        })
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Of the prompts and extras, so a resume on different data is refused.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for r in &self.rows {
            r.ids.hash(&mut h);
            Value::Object(r.extras.clone()).to_string().hash(&mut h);
        }
        h.finish()
    }
}
