//! The `rwkvtune` command line: argument parsing and the glue from flags to `rwkvtune-core`.
//! Both binaries (`rwkvtune` and the stand-alone `rwkvtune-create-hub`) are thin wrappers over
//! this library so their flags cannot drift apart.

pub mod cmd;
pub mod npy;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "rwkvtune",
    version,
    about = "Train and run RWKV-7 language models"
)]
pub struct Cli {
    /// Intra-op CPU threads for libtorch (default: libtorch's choice).
    #[arg(long, global = true)]
    pub threads: Option<i32>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write the logits of a token sequence as a float32 .npy array [T, V].
    Logits(cmd::logits::LogitsArgs),
    /// Print the token ids of a text as a JSON array.
    Tokenize(cmd::tokenize::TokenizeArgs),
    /// Print the text of a list of token ids.
    Detokenize(cmd::tokenize::DetokenizeArgs),
    /// Generate text from a prompt, streaming it, and report prefill/decode speed.
    Generate(cmd::generate::GenerateArgs),
    /// Package weights (or a fresh model from a config name) as a model-hub directory.
    CreateHub(cmd::create_hub::CreateHubArgs),
    /// Measure forward and decode throughput of a model.
    Bench(cmd::bench::BenchArgs),
    /// The built-in demo: create a small model, run it, print text and timings.
    Demo(cmd::demo::DemoArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(n) = cli.threads {
        tch::set_num_threads(n);
    }
    match cli.command {
        Command::Logits(a) => cmd::logits::run(a),
        Command::Tokenize(a) => cmd::tokenize::run_tokenize(a),
        Command::Detokenize(a) => cmd::tokenize::run_detokenize(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::CreateHub(a) => cmd::create_hub::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Demo(a) => cmd::demo::run(a),
    }
}

/// Prints the error chain the way users read it: what failed, then why.
pub fn report(err: &anyhow::Error) {
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}
