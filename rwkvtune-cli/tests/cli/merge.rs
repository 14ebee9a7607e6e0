//! `merge-lora` (both binaries): merged logits equal the adapter model's, the output has the base
//! key set, and bad input writes nothing.

use crate::*;
use rwkvtune_core::hub::{read_weights, AutoModel, WeightFormat};
use rwkvtune_core::lora;
use rwkvtune_core::model::Rwkv7;
use rwkvtune_core::tokenizer::AutoTokenizer;
use std::process::Command;
use tch::{Device, Kind, Tensor};

fn base_dir() -> PathBuf {
    reference().join("models/u3x96h32")
}

fn ids() -> Tensor {
    Tensor::from_slice(&[5i64, 17, 300, 2, 999, 41, 41, 7, 120, 64, 0, 3]).view([2, 6])
}

fn logits(m: &Rwkv7) -> Tensor {
    let _g = tch::no_grad_guard();
    m.forward(&ids(), None, None)
        .unwrap()
        .0
        .to_kind(Kind::Float)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// The reference rank-8 adapter plus slightly trained norms (`modules_to_save` tensors), saved
/// in `format`. Returns the live adapter model's logits.
fn make_adapter(dir: &Path, format: WeightFormat) -> Tensor {
    let src = dir.with_extension("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::copy(
        reference().join("train/u3x96h32__lora_adapter.safetensors"),
        src.join("adapter_model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        src.join("adapter_config.json"),
        r#"{"r": 8, "lora_alpha": 16}"#,
    )
    .unwrap();
    let mut model = AutoModel::from_pretrained(&base_dir(), Device::Cpu, Kind::Float).unwrap();
    let layout = lora::load_adapter(&mut model, &src).unwrap();
    for (n, mut t) in model.named_tensors() {
        if n == "ln_out.weight" || n == "blocks.1.att.ln_x.bias" {
            let _g = tch::no_grad_guard();
            t.copy_(&(&t * 1.01 + 0.01));
        }
    }
    lora::save_adapter(&model, &layout, dir, format, Some(&base_dir())).unwrap();
    logits(&model)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn merged_logits_equal_adapter_logits_for_both_formats() {
    let tmp = tempfile::tempdir().unwrap();
    let base_keys: Vec<(String, Vec<i64>)> = read_weights(&base_dir().join("model.pth"))
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.size()))
        .collect();
    let mut sorted_keys = base_keys.clone();
    sorted_keys.sort();
    for (adapter_fmt, save_format) in [
        (WeightFormat::Safetensors, "pth"),
        (WeightFormat::Pth, "safetensors"),
    ] {
        let adapter = tmp.path().join(format!("adapter-{save_format}"));
        let want = make_adapter(&adapter, adapter_fmt);
        let out = tmp.path().join(format!("merged-{save_format}"));
        ok(&[
            "merge-lora",
            "-b",
            s(&base_dir()),
            "-l",
            s(&adapter),
            "-o",
            s(&out),
            "--precision",
            "fp32",
            "--save-format",
            save_format,
        ]);

        let weights = out.join(format!("model.{save_format}"));
        let mut got: Vec<(String, Vec<i64>)> = read_weights(&weights)
            .unwrap()
            .into_iter()
            .map(|(n, t)| (n, t.size()))
            .collect();
        // safetensors stores keys sorted; .pth keeps the base order.
        if save_format == "pth" {
            assert_eq!(got, base_keys, "pth: the base key order");
        }
        got.sort();
        assert_eq!(
            got, sorted_keys,
            "{save_format}: exactly the base key set and shapes"
        );
        let merged = AutoModel::from_pretrained(&out, Device::Cpu, Kind::Float).unwrap();
        // fp32 rule of the issue: the merged weights are W + ΔW rounded once to fp32, which moves
        // these random models' logits by ~1e-5 (an fp64 oracle puts live and merged within 1e-4).
        let d = max_abs_diff(&logits(&merged), &want);
        eprintln!("{save_format}: max |merged - adapter| logit = {d:e}");
        assert!(d <= 1e-4, "{save_format}: merged logits off by {d}");

        let info: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("merge_info.json")).unwrap())
                .unwrap();
        assert_eq!(info["precision"], "fp32");
        assert_eq!(info["r"], 8);
        assert_eq!(info["lora_alpha"], 16.0);
        assert_eq!(info["merged_layers"].as_array().unwrap().len(), 18);
        assert_eq!(info["replaced_tensors"].as_array().unwrap().len(), 22);
        assert!(info["merged_at"].as_str().unwrap().ends_with('Z'));
        assert!(info["base_model"].as_str().unwrap().starts_with('/'));
        for f in ["config.json", "generation_config.json"] {
            assert!(out.join(f).is_file(), "{f}");
        }
    }
}

#[test]
fn standalone_binary_defaults_to_bf16_pth_and_syncs_eos() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = tmp.path().join("adapter");
    let want = make_adapter(&adapter, WeightFormat::Safetensors);
    // The fine-tune's tokenizer: ChatML, eos <|im_end|> = 65531.
    let mut tok = AutoTokenizer::builtin();
    tok.setup_chatml().unwrap();
    tok.save_pretrained(&adapter).unwrap();
    let out = tmp.path().join("merged");
    let run = Command::new(env!("CARGO_BIN_EXE_rwkvtune-merge-lora"))
        .args([
            "--base-model",
            s(&base_dir()),
            "--lora-model",
            s(&adapter),
            "--output",
            s(&out),
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let tensors = read_weights(&out.join("model.pth")).unwrap();
    assert!(
        tensors.iter().all(|(_, t)| t.kind() == Kind::BFloat16),
        "cast once to bf16"
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["eos_token_id"], 65531,
        "eos from the adapter's tokenizer"
    );
    assert!(out.join("tokenizer_config.json").is_file());
    assert!(out.join("vocab.txt").is_file());
    // Cast once: the bf16 output is exactly the fp32 merge rounded to bf16.
    let out32 = tmp.path().join("merged32");
    ok(&[
        "merge-lora",
        "-b",
        s(&base_dir()),
        "-l",
        s(&adapter),
        "-o",
        s(&out32),
        "--precision",
        "fp32",
    ]);
    let fp32 = read_weights(&out32.join("model.pth")).unwrap();
    for ((n, t16), (n32, t32)) in tensors.iter().zip(&fp32) {
        assert_eq!(n, n32);
        assert_eq!(max_abs_diff(t16, &t32.to_kind(Kind::BFloat16)), 0.0, "{n}");
    }
    let merged = AutoModel::from_pretrained(&out32, Device::Cpu, Kind::Float).unwrap();
    assert!(max_abs_diff(&logits(&merged), &want) <= 1e-4);
}

/// Fails, names the problem, and leaves neither the output nor a staging folder behind.
fn refused(args: &[&str], out: &Path, expect: &str) {
    let err = fails(args);
    assert!(err.contains(expect), "expected `{expect}` in:\n{err}");
    assert!(!out.exists(), "{} must not be created", out.display());
    let parent = out.parent().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("staging"))
        .collect();
    assert!(leftovers.is_empty(), "staging folder left behind");
}

#[test]
fn bad_input_is_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = tmp.path().join("adapter");
    let _ = make_adapter(&adapter, WeightFormat::Safetensors);
    let out = tmp.path().join("out");
    let o = s(&out);
    // Adapter trained on a 96-wide model, base 128 wide.
    let t2 = reference().join("models/t2x128");
    refused(
        &["merge-lora", "-b", s(&t2), "-l", s(&adapter), "-o", o],
        &out,
        "do not fit the base layer",
    );
    // Base that is not a model directory.
    refused(
        &["merge-lora", "-b", s(&adapter), "-l", s(&adapter), "-o", o],
        &out,
        "not a model directory",
    );
    let missing = tmp.path().join("nope");
    refused(
        &["merge-lora", "-b", s(&missing), "-l", s(&adapter), "-o", o],
        &out,
        "not a model directory",
    );
    // Adapter without its config.
    std::fs::remove_file(adapter.join("adapter_config.json")).unwrap();
    refused(
        &[
            "merge-lora",
            "-b",
            s(&base_dir()),
            "-l",
            s(&adapter),
            "-o",
            o,
        ],
        &out,
        "no adapter_config.json",
    );
    // An existing, non-empty output directory is never overwritten.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "x").unwrap();
    let err = fails(&[
        "merge-lora",
        "-b",
        s(&base_dir()),
        "-l",
        s(&adapter),
        "-o",
        o,
    ]);
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
}
