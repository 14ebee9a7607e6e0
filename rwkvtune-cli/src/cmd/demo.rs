//! The built-in demo: everything runs on embedded defaults, no files needed.

use anyhow::{Context, Result};
use clap::Args;
use rwkvtune_core::generate::{generate, GenerateOptions, SamplingParams};
use rwkvtune_core::hub::{create_hub, AutoModel, CreateHubOptions};
use rwkvtune_core::tokenizer::AutoTokenizer;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo writes its model directory.
    #[arg(long, default_value = "runs/demo")]
    pub output_dir: PathBuf,
    #[arg(long, default_value = "User: What is RWKV?\n\nAssistant:")]
    pub prompt: String,
    #[arg(long, default_value_t = 48)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

pub fn run(a: DemoArgs) -> Result<()> {
    let model_dir = a.output_dir.join("model");
    let t = Instant::now();
    let mut opts = CreateHubOptions::new(&model_dir);
    opts.config_name = Some("rwkv7-demo".into());
    opts.overwrite = true;
    opts.seed = a.seed as i64;
    let hub = create_hub(&opts).context("creating the demo model")?;
    println!(
        "[1/2] created a fresh {}-layer RWKV-7 (n_embd {}, {:.1} M parameters) in {} ({:.2}s)",
        hub.config.n_layer,
        hub.config.n_embd,
        hub.parameters as f64 / 1e6,
        model_dir.display(),
        t.elapsed().as_secs_f64()
    );

    let model = AutoModel::from_pretrained(&model_dir, Device::Cpu, Kind::Float)?;
    let tok = AutoTokenizer::from_pretrained(&model_dir)?;
    let prompt = tok.encode(&a.prompt)?;
    let opts = GenerateOptions {
        sampling: SamplingParams {
            seed: a.seed,
            ..SamplingParams::default()
        },
        max_new_tokens: a.max_new_tokens,
        eos_ids: tok.eos_token_id.into_iter().collect(),
        stop: vec![],
    };
    println!("[2/2] generating (untrained weights, so expect noise):\n---");
    print!("{}", a.prompt);
    let g = generate(&model, &tok, &prompt, &opts, &mut |p| {
        print!("{p}");
        let _ = std::io::stdout().flush();
    })?;
    println!("\n---");
    println!(
        "prefill {} tokens: {:.1} tok/s; decode {} tokens: {:.1} tok/s",
        g.prefill_tokens,
        g.prefill_tokens as f64 / g.prefill_secs.max(1e-9),
        g.tokens.len(),
        g.tokens.len() as f64 / g.decode_secs.max(1e-9)
    );
    Ok(())
}
