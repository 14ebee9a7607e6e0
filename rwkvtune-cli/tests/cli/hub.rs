//! `create-hub` (both binaries) and interoperability of the `.pth` files we write with PyTorch.

use crate::*;
use std::process::Command;

fn pytorch_python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv-torch/bin/python");
    assert!(
        p.exists(),
        "{} missing: run `scripts/setup --tests` (the README's test command does)",
        p.display()
    );
    p
}

#[test]
fn pth_written_by_rwkvtune_loads_in_pytorch_with_identical_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let src = reference().join("models/t2x128/model.pth");
    let st_dir = tmp.path().join("st");
    let pth_dir = tmp.path().join("pth");
    // Official pth -> safetensors -> pth: the second step is our pickle writer end to end.
    ok(&[
        "create-hub",
        "--output-dir",
        st_dir.to_str().unwrap(),
        "--model-file",
        src.to_str().unwrap(),
        "--save-format",
        "safetensors",
    ]);
    let st = st_dir.join("model.safetensors");
    ok(&[
        "create-hub",
        "--output-dir",
        pth_dir.to_str().unwrap(),
        "--model-file",
        st.to_str().unwrap(),
        "--save-format",
        "pth",
    ]);
    let script = r#"
import sys, torch
ours = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
ref = torch.load(sys.argv[2], map_location="cpu", weights_only=True)
assert sorted(ours) == sorted(ref), ("key sets differ", sorted(set(ours) ^ set(ref)))
for k, v in ref.items():
    o = ours[k]
    assert o.dtype == v.dtype and o.shape == v.shape, (k, o.dtype, o.shape, v.dtype, v.shape)
    assert torch.equal(o, v), k
print("ok", len(ref))
"#;
    let out = Command::new(pytorch_python())
        .args([
            "-c",
            script,
            pth_dir.join("model.pth").to_str().unwrap(),
            src.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "torch.load failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok 72");
}

#[test]
fn standalone_create_hub_accepts_the_same_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let src = reference().join("models/u3x96h32/model.pth");
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let common = |dir: &Path| {
        vec![
            "--output-dir".to_string(),
            dir.display().to_string(),
            "--model-file".into(),
            src.display().to_string(),
            "--ctx-len".into(),
            "1024".into(),
            "--temperature".into(),
            "0.7".into(),
            "--save-format".into(),
            "safetensors".into(),
        ]
    };
    let mut sub = vec!["create-hub".to_string()];
    sub.extend(common(&a));
    ok(&sub.iter().map(String::as_str).collect::<Vec<_>>());
    let st = Command::new(env!("CARGO_BIN_EXE_rwkvtune-create-hub"))
        .args(common(&b))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    for f in [
        "config.json",
        "generation_config.json",
        "tokenizer_config.json",
        "vocab.txt",
    ] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f} differs"
        );
    }
    let gen: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("generation_config.json")).unwrap()).unwrap();
    assert_eq!(gen["temperature"], 0.7);
    // The packaged model answers the logits command like the original.
    let x = tmp.path().join("x.npy");
    let y = tmp.path().join("y.npy");
    ok(&[
        "logits",
        "--model",
        a.to_str().unwrap(),
        "--input-ids",
        "1,2,3",
        "--output",
        x.to_str().unwrap(),
    ]);
    ok(&[
        "logits",
        "--model",
        src.to_str().unwrap(),
        "--input-ids",
        "1,2,3",
        "--output",
        y.to_str().unwrap(),
    ]);
    assert_eq!(read_npy(&x), read_npy(&y));
}

#[test]
fn create_hub_rejects_bad_input_without_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let err = fails(&[
        "create-hub",
        "--output-dir",
        out.to_str().unwrap(),
        "--config-name",
        "rwkv7-nope",
    ]);
    assert!(
        err.contains("rwkv7-nope") && err.contains("rwkv7-0.1b"),
        "{err}"
    );
    let corrupt = tmp.path().join("corrupt.pth");
    let bytes = std::fs::read(reference().join("models/u3x96h32/model.pth")).unwrap();
    std::fs::write(&corrupt, &bytes[..bytes.len() / 3]).unwrap();
    let err = fails(&[
        "create-hub",
        "--output-dir",
        out.to_str().unwrap(),
        "--model-file",
        corrupt.to_str().unwrap(),
    ]);
    assert!(err.contains("corrupt.pth"), "{err}");
    assert!(!out.exists());
    let err = fails(&["create-hub", "--output-dir", out.to_str().unwrap()]);
    assert!(err.contains("--config-name"), "{err}");
}
