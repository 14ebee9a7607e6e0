//! The public CLI, driven as users and external checkers drive it: real processes, real files.

mod grpo;
mod hub;
mod inspect;
mod merge;
mod plugin;
mod train;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn reference() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference");
    assert!(p.is_dir(), "reference cases not found at {}", p.display());
    p
}

pub fn rwkvtune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rwkvtune"))
        .args(args)
        .output()
        .expect("spawning rwkvtune")
}

/// Runs and requires success, returning stdout.
pub fn ok(args: &[&str]) -> String {
    let out = rwkvtune(args);
    assert!(
        out.status.success(),
        "rwkvtune {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

/// Runs and requires failure, returning stderr.
pub fn fails(args: &[&str]) -> String {
    let out = rwkvtune(args);
    assert!(
        !out.status.success(),
        "rwkvtune {args:?} should have failed"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Reads a little-endian float32 C-order `.npy`: (shape, data).
pub fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
    assert!(
        header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"),
        "{header}"
    );
    assert_eq!((10 + hlen) % 64, 0, "npy header must be 64-byte aligned");
    let shape_txt = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let data: Vec<f32> = bytes[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(data.len(), shape.iter().product::<usize>());
    (shape, data)
}
