//! Stand-alone form of `rwkvtune merge-lora`, with exactly the same flags.
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "rwkvtune-merge-lora",
    version,
    about = "Merge a LoRA adapter into its RWKV-7 base model"
)]
struct Args {
    #[command(flatten)]
    inner: rwkvtune_cli::cmd::merge_lora::MergeLoraArgs,
}

fn main() -> std::process::ExitCode {
    match rwkvtune_cli::cmd::merge_lora::run(Args::parse().inner) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            rwkvtune_cli::report(&e);
            std::process::ExitCode::FAILURE
        }
    }
}
