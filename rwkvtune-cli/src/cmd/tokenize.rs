use super::{load_tokenizer, non_empty, parse_ids};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// Model directory whose tokenizer to use (default: the built-in RWKV World tokenizer).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The text to encode.
    #[arg(long, conflicts_with = "input")]
    pub text: Option<String>,
    /// A file whose bytes (UTF-8) are encoded as they are.
    #[arg(long)]
    pub input: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DetokenizeArgs {
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Token ids: `1,2,3` or `@FILE` holding a JSON array.
    #[arg(long)]
    pub ids: String,
}

pub fn run_tokenize(a: TokenizeArgs) -> Result<()> {
    let text = match (&a.text, &a.input) {
        (Some(t), _) => t.clone(),
        (None, Some(p)) => std::fs::read_to_string(p)
            .with_context(|| format!("reading {} (must be UTF-8 text)", p.display()))?,
        (None, None) => bail!("give the text with --text or a file with --input"),
    };
    let tok = load_tokenizer(a.model.as_deref())?;
    let ids = tok.encode(&text)?;
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}

pub fn run_detokenize(a: DetokenizeArgs) -> Result<()> {
    let tok = load_tokenizer(a.model.as_deref())?;
    let ids = non_empty(parse_ids(&a.ids)?).or_else(|_| Ok::<_, anyhow::Error>(Vec::new()))?;
    let ids: Vec<u32> = ids
        .iter()
        .map(|&i| u32::try_from(i).with_context(|| format!("token id {i} is negative")))
        .collect::<Result<_>>()?;
    print!("{}", tok.decode(&ids)?);
    Ok(())
}
