use clap::Parser;

/// Keeps freed large blocks in glibc's heap instead of returning them to the OS: a training step
/// allocates and frees the same large activations every time, and with the default mmap
/// threshold each one costs fresh zeroed pages (measured: a quarter of a CPU SFT step went to
/// page faults).
fn keep_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

fn main() -> std::process::ExitCode {
    keep_large_allocations();
    let cli = rwkvtune_cli::Cli::parse();
    match rwkvtune_cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            rwkvtune_cli::report(&e);
            std::process::ExitCode::FAILURE
        }
    }
}
