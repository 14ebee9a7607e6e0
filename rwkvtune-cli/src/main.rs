use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = rwkvtune_cli::Cli::parse();
    match rwkvtune_cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            rwkvtune_cli::report(&e);
            std::process::ExitCode::FAILURE
        }
    }
}
