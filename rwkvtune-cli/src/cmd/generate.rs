use super::load_tokenizer;
use anyhow::{Context, Result};
use clap::Args;
use rwkvtune_core::config::GenerationConfig;
use rwkvtune_core::generate::{generate, GenerateOptions, SamplingParams};
use rwkvtune_core::hub::{parse_device, parse_kind, AutoModel, ModelFiles};
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Default: the model's generation_config.json (0 = greedy).
    #[arg(long)]
    pub temperature: Option<f64>,
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub repetition_penalty: Option<f64>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Stop when the text contains this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    #[arg(long, default_value = "fp32")]
    pub dtype: String,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let files = ModelFiles::locate(&a.model)?;
    let defaults = GenerationConfig::from_dir(&files.dir)?;
    let model =
        AutoModel::from_pretrained(&a.model, parse_device(&a.device)?, parse_kind(&a.dtype)?)
            .with_context(|| format!("loading model {}", a.model.display()))?;
    let tok = load_tokenizer(Some(&files.dir))?;
    let prompt = tok.encode(&a.prompt)?;
    let eos = tok.eos_token_id.or(model.config.eos_token_id);
    let opts = GenerateOptions {
        sampling: SamplingParams {
            temperature: a.temperature.unwrap_or(defaults.temperature),
            top_p: a.top_p.unwrap_or(defaults.top_p),
            top_k: a.top_k.unwrap_or(defaults.top_k),
            repetition_penalty: a.repetition_penalty.unwrap_or(defaults.repetition_penalty),
            seed: a.seed,
        },
        max_new_tokens: a.max_new_tokens,
        eos_ids: eos.into_iter().collect(),
        stop: a.stop.clone(),
    };
    let mut out = std::io::stdout();
    print!("{}", a.prompt);
    let g = generate(&model, &tok, &prompt, &opts, &mut |piece| {
        print!("{piece}");
        let _ = out.flush();
    })?;
    println!();
    eprintln!(
        "prefill {} tokens in {:.3}s ({:.1} tok/s); decode {} tokens in {:.3}s ({:.1} tok/s); finish: {:?}",
        g.prefill_tokens,
        g.prefill_secs,
        g.prefill_tokens as f64 / g.prefill_secs.max(1e-9),
        g.tokens.len(),
        g.decode_secs,
        g.tokens.len() as f64 / g.decode_secs.max(1e-9),
        g.finish
    );
    Ok(())
}
