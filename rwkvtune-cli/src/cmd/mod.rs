//! One module per subcommand; shared flag parsing lives here.

pub mod bench;
pub mod create_hub;
pub mod demo;
pub mod generate;
pub mod grpo;
pub mod launch;
pub mod logits;
pub mod merge_lora;
pub mod plugin;
pub mod tokenize;
pub mod train;

use anyhow::{bail, Context, Result};
use rwkvtune_core::tokenizer::AutoTokenizer;
use std::path::Path;

/// Parses `1,2,3` or `@FILE` (a JSON array of ids).
pub fn parse_ids(spec: &str) -> Result<Vec<i64>> {
    if let Some(file) = spec.strip_prefix('@') {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading ids from {file}"))?;
        let ids: Vec<i64> = serde_json::from_str(&text)
            .with_context(|| format!("{file}: expected a JSON array of integer token ids"))?;
        return Ok(ids);
    }
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<i64>()
                .with_context(|| format!("`{s}` in --ids is not an integer token id"))
        })
        .collect()
}

/// The model directory's tokenizer, or the built-in RWKV World tokenizer without `--model`.
pub fn load_tokenizer(model: Option<&Path>) -> Result<AutoTokenizer> {
    match model {
        None => Ok(AutoTokenizer::builtin()),
        Some(dir) => {
            let dir = if dir.is_file() {
                dir.parent().unwrap_or(Path::new("."))
            } else {
                dir
            };
            AutoTokenizer::from_pretrained(dir)
                .with_context(|| format!("loading the tokenizer of {}", dir.display()))
        }
    }
}

pub fn non_empty(ids: Vec<i64>) -> Result<Vec<i64>> {
    if ids.is_empty() {
        bail!("no token ids given");
    }
    Ok(ids)
}
