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
    /// Generate text from a prompt (streamed), or batched from a JSONL of prompts.
    Generate(cmd::generate::GenerateArgs),
    /// Package weights (or a fresh model from a config name) as a model-hub directory.
    CreateHub(cmd::create_hub::CreateHubArgs),
    /// Merge a LoRA adapter into its base model, writing a plain model directory.
    MergeLora(cmd::merge_lora::MergeLoraArgs),
    /// Measure forward and decode throughput of a model.
    Bench(cmd::bench::BenchArgs),
    /// The built-in demo: fresh model, pre-training, LoRA SFT, merge, generation, with timings.
    Demo(cmd::demo::DemoArgs),
    /// Supervised fine-tuning on prompt/completion, chat or pre-tokenized data.
    Sft(cmd::train::TrainArgs),
    /// Continued pre-training (or from scratch with --from-scratch) on text or token ids.
    Pretrain(cmd::train::TrainArgs),
    /// Token-mean loss and perplexity of a model over the labelled tokens of a dataset (JSON).
    Eval(cmd::train::EvalArgs),
    /// Inspect WebAssembly plugins.
    #[command(subcommand)]
    Plugin(cmd::plugin::PluginCommand),
    /// Score a JSONL of samples with a reward plugin, offline.
    Reward(cmd::plugin::RewardArgs),
    /// Reinforcement learning (GRPO) with rewards from WebAssembly plugins.
    Grpo(cmd::grpo::GrpoArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let threads = cli.threads;
    if let Some(n) = threads {
        tch::set_num_threads(n);
    }
    match cli.command {
        Command::Logits(a) => cmd::logits::run(a),
        Command::Tokenize(a) => cmd::tokenize::run_tokenize(a),
        Command::Detokenize(a) => cmd::tokenize::run_detokenize(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::CreateHub(a) => cmd::create_hub::run(a),
        Command::MergeLora(a) => cmd::merge_lora::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Sft(a) => cmd::train::run(rwkvtune_core::train::Task::Sft, a, threads),
        Command::Pretrain(a) => cmd::train::run(rwkvtune_core::train::Task::Pretrain, a, threads),
        Command::Eval(a) => cmd::train::run_eval(a),
        Command::Plugin(c) => cmd::plugin::run(c),
        Command::Reward(a) => cmd::plugin::run_reward(a),
        Command::Grpo(a) => cmd::grpo::run(a),
    }
}

/// Prints the error chain the way users read it: what failed, then why.
pub fn report(err: &anyhow::Error) {
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}
