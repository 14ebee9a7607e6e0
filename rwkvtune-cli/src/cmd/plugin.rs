//! `plugin check` and `reward`: inspect a Wasm plugin and score samples offline, so users can
//! test a reward before a long run.

use super::load_tokenizer;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use rwkvtune_core::plugin::{
    stderr_sink, CompletionPostprocessor, OnError, PluginRuntime, PluginSpec, RewardFn,
    RewardValue, Role, RolloutBatch, RuntimeOptions,
};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Validate a component against the rwkvtune WIT and print its metadata and exports.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The component (.wasm).
    pub file: PathBuf,
    /// JSON config passed to the plugin's init (inline JSON or a file path).
    #[arg(long)]
    pub config: Option<String>,
}

fn config_text(c: &Option<String>) -> Result<String> {
    Ok(match c {
        None => "{}".into(),
        Some(s) if std::path::Path::new(s).is_file() => {
            std::fs::read_to_string(s).with_context(|| format!("reading {s}"))?
        }
        Some(s) => s.clone(),
    })
}

pub fn run(cmd: PluginCommand) -> Result<()> {
    let PluginCommand::Check(a) = cmd;
    let rt = PluginRuntime::new(RuntimeOptions::default())?;
    let loaded = rt.load(&a.file)?;
    println!("file: {}", a.file.display());
    println!(
        "load: {:?} in {:.1} ms",
        loaded.cache,
        loaded.load_time.as_secs_f64() * 1e3
    );
    if loaded.roles.is_empty() {
        bail!(
            "{}: exports no rwkvtune plugin interface (exports: {})",
            a.file.display(),
            loaded.exports.join(", ")
        );
    }
    println!("exports: {}", loaded.exports.join(", "));
    println!("imports: {}", loaded.imports.join(", "));
    let tok: Arc<dyn rwkvtune_core::plugin::PluginTokenizer> = Arc::new(load_tokenizer(None)?);
    let spec = PluginSpec::new(&a.file).with_config(config_text(&a.config)?);
    for (role, version) in &loaded.roles {
        let info = match role {
            Role::Reward => rt.reward(&spec, tok.clone(), stderr_sink())?.info().clone(),
            Role::Postprocess => rt
                .postprocessor(&spec, tok.clone(), stderr_sink())?
                .info()
                .clone(),
        };
        println!(
            "role: {role:?} (rwkvtune:plugin@{}): {} {} — {}",
            version.as_str(),
            info.name,
            info.version,
            info.description
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct RewardArgs {
    /// The reward plugin (.wasm).
    #[arg(long)]
    pub plugin: PathBuf,
    /// JSONL of samples: `prompt`, `completion`, and any extra columns (passed to the plugin).
    #[arg(long)]
    pub input: PathBuf,
    /// JSON config for the plugin's init (inline JSON or a file path).
    #[arg(long)]
    pub config: Option<String>,
    /// Tokenizer for completion ids and host imports (default: built-in RWKV World).
    #[arg(long)]
    pub model: Option<PathBuf>,
}

pub fn run_reward(a: RewardArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.input)
        .with_context(|| format!("reading {}", a.input.display()))?;
    let (mut prompts, mut completions, mut extras) = (Vec::new(), Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut row: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not a JSON object", a.input.display(), i + 1))?;
        let field =
            |row: &mut serde_json::Map<String, serde_json::Value>, k: &str| match row.remove(k) {
                Some(serde_json::Value::String(s)) => Ok(s),
                _ => Err(anyhow::anyhow!(
                    "{} line {}: field `{k}` must be a string",
                    a.input.display(),
                    i + 1
                )),
            };
        prompts.push(field(&mut row, "prompt")?);
        completions.push(field(&mut row, "completion")?);
        extras.push(serde_json::Value::Object(row));
    }
    if completions.is_empty() {
        bail!("{}: no samples", a.input.display());
    }
    let tok = load_tokenizer(a.model.as_deref())?;
    let rows: Vec<Vec<u32>> = completions
        .iter()
        .map(|c| tok.encode(c))
        .collect::<Result<_, _>>()?;
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let batch = RolloutBatch::from_texts(prompts, completions, &extras, cols, |c| {
        tok.encode(c).unwrap_or_default()
    });
    let rt = PluginRuntime::new(RuntimeOptions::default())?;
    let spec = PluginSpec::new(&a.plugin)
        .with_config(config_text(&a.config)?)
        .with_on_error(OnError::Abort);
    let mut reward = rt.reward(&spec, Arc::new(tok), stderr_sink())?;
    let values = reward.compute(&batch)?;
    for v in &values {
        let out = match v {
            RewardValue::Value(x) => serde_json::json!(x),
            RewardValue::NotApplicable => serde_json::Value::Null,
            RewardValue::Failed => serde_json::json!("failed"),
        };
        println!("{out}");
    }
    let s = reward.stats();
    eprintln!(
        "{}: {} samples in {:.2} ms",
        reward.info().name,
        values.len(),
        s.mean_time().as_secs_f64() * 1e3
    );
    Ok(())
}
