//! Stand-alone form of `rwkvtune create-hub`, with exactly the same flags.
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "rwkvtune-create-hub",
    version,
    about = "Package RWKV-7 weights as a model-hub directory"
)]
struct Args {
    #[command(flatten)]
    inner: rwkvtune_cli::cmd::create_hub::CreateHubArgs,
}

fn main() -> std::process::ExitCode {
    match rwkvtune_cli::cmd::create_hub::run(Args::parse().inner) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            rwkvtune_cli::report(&e);
            std::process::ExitCode::FAILURE
        }
    }
}
