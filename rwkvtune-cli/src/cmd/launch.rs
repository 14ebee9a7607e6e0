//! `--devices N` for `sft`/`pretrain`: starts this same command once per device with torchrun's
//! rendezvous variables set, then waits. The first rank to fail stops the others, whose next
//! collective would otherwise wait for it until the timeout.

use anyhow::{bail, Context, Result};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Runs the current command line as `devices` ranks on this machine. Without `--threads`,
/// each rank gets an equal share of the CPU cores.
pub fn run_ranks(devices: usize, threads: Option<i32>) -> Result<()> {
    let exe = std::env::current_exe().context("locating the rwkvtune executable")?;
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")
            .context("finding a free port for the ranks' rendezvous")?;
        probe.local_addr()?.port()
    };
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    if threads.is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        args.push("--threads".into());
        args.push((cores / devices).max(1).to_string().into());
    }
    args.extend(std::env::args_os().skip(1));
    eprintln!("launching {devices} ranks (data parallel, rendezvous 127.0.0.1:{port})");
    let mut children: Vec<Child> = Vec::with_capacity(devices);
    for rank in 0..devices {
        let mut command = Command::new(&exe);
        die_with_parent(&mut command);
        let spawned = command
            .args(&args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", devices.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            // Rank 0 reports results; the others only speak up when they fail.
            .stdout(if rank == 0 {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn();
        match spawned {
            Ok(c) => children.push(c),
            Err(e) => {
                stop_all(&mut children);
                return Err(e).with_context(|| format!("starting rank {rank}"));
            }
        }
    }
    let mut running = devices;
    while running > 0 {
        running = 0;
        for (rank, child) in children.iter_mut().enumerate() {
            match child.try_wait() {
                Ok(Some(status)) if !status.success() => {
                    stop_all(&mut children);
                    bail!("rank {rank} failed ({status}); the other ranks were stopped");
                }
                Ok(Some(_)) => {}
                Ok(None) => running += 1,
                Err(e) => {
                    stop_all(&mut children);
                    return Err(e).with_context(|| format!("waiting for rank {rank}"));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A launcher killed outright (SIGKILL) cannot stop its ranks, so each rank asks the kernel to
/// kill it when the launcher dies: no orphaned rank keeps training and writing checkpoints.
fn die_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches only the calling (child) process.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

fn stop_all(children: &mut [Child]) {
    for c in children.iter_mut() {
        if let Ok(None) = c.try_wait() {
            let _ = c.kill();
        }
        let _ = c.wait();
    }
}
