use super::load_tokenizer;
use anyhow::{Context, Result};
use clap::Args;
use rwkvtune_core::config::GenerationConfig;
use rwkvtune_core::generate::{generate, rollout, GenerateOptions, RolloutOptions, SamplingParams};
use rwkvtune_core::grpo::PromptDataset;
use rwkvtune_core::hub::{parse_device, parse_kind, AutoModel, ModelFiles};
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// One prompt, streamed to stdout.
    #[arg(long, required_unless_present = "prompts", conflicts_with = "prompts")]
    pub prompt: Option<String>,
    /// Many prompts: a .jsonl of objects with a `prompt` string (or its `input_ids`), generated
    /// as one batch; one JSON line per completion goes to --output (default stdout).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    #[arg(long, requires = "prompts")]
    pub output: Option<PathBuf>,
    /// Completions per prompt (with --prompts).
    #[arg(long, default_value_t = 1)]
    pub num_generations: usize,
    /// Most rows per decode forward (with --prompts; 0 = no cap).
    #[arg(long, default_value_t = 0)]
    pub max_decode_batch_size: usize,
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
    let eos = tok.eos_token_id.or(model.config.eos_token_id);
    let sampling = SamplingParams {
        temperature: a.temperature.unwrap_or(defaults.temperature),
        top_p: a.top_p.unwrap_or(defaults.top_p),
        top_k: a.top_k.unwrap_or(defaults.top_k),
        repetition_penalty: a.repetition_penalty.unwrap_or(defaults.repetition_penalty),
        seed: a.seed,
        logit_bias: Vec::new(),
    };
    if let Some(path) = &a.prompts {
        return run_batch(&a, path, &model, &tok, sampling, eos);
    }
    let text = a.prompt.clone().unwrap_or_default();
    let prompt = tok.encode(&text)?;
    let opts = GenerateOptions {
        sampling,
        max_new_tokens: a.max_new_tokens,
        eos_ids: eos.into_iter().collect(),
        stop: a.stop.clone(),
    };
    let mut out = std::io::stdout();
    print!("{text}");
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

/// `--prompts`: every prompt of a JSONL file in one batched rollout.
fn run_batch(
    a: &GenerateArgs,
    path: &std::path::Path,
    model: &rwkvtune_core::model::Rwkv7,
    tok: &rwkvtune_core::tokenizer::AutoTokenizer,
    sampling: SamplingParams,
    eos: Option<u32>,
) -> Result<()> {
    let data = PromptDataset::load(path, tok, usize::MAX, model.dims.vocab_size)?;
    let ids: Vec<Vec<u32>> = data.rows.iter().map(|r| r.ids.clone()).collect();
    let opts = RolloutOptions {
        sampling,
        num_generations: a.num_generations,
        max_new_tokens: a.max_new_tokens,
        eos_ids: eos.into_iter().collect(),
        stop: a.stop.clone(),
        max_decode_batch_size: a.max_decode_batch_size,
        ..RolloutOptions::default()
    };
    let (completions, stats) = rollout(model, tok, &ids, &opts)?;
    let mut lines = String::new();
    for (i, c) in completions.iter().enumerate() {
        let line = serde_json::json!({
            "prompt_index": c.prompt,
            "generation": i % a.num_generations.max(1),
            "prompt": data.rows[c.prompt].prompt,
            "completion": c.text,
            "finish": c.finish.as_str(),
            "tokens": c.tokens,
            "logprobs": c.logprobs,
        });
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    match &a.output {
        Some(out) => rwkvtune_core::hub::write_atomic(out, lines.as_bytes())?,
        None => print!("{lines}"),
    }
    eprintln!(
        "{} prompts x {}: prefill {} tokens in {:.3}s; decode {} tokens in {:.3}s ({:.1} tok/s)",
        data.len(),
        a.num_generations,
        stats.prefill_tokens,
        stats.prefill_secs,
        stats.decode_tokens,
        stats.decode_secs,
        stats.decode_tokens as f64 / stats.decode_secs.max(1e-9)
    );
    Ok(())
}
