//! Weight files and hub directories: round trips, the official `.pth` format, and bad input.

use crate::common::*;
use rwkvtune_core::hub::{create_hub, read_weights, AutoModel, CreateHubOptions, WeightFormat};
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn logits_of(dir: &Path) -> Tensor {
    let _g = tch::no_grad_guard();
    let m = AutoModel::from_pretrained(dir, Device::Cpu, Kind::Float).unwrap();
    m.forward(
        &Tensor::from_slice(&[3i64, 1, 4, 1, 5, 9, 2, 6]).view([1, 8]),
        None,
        None,
    )
    .unwrap()
    .0
}

#[test]
fn official_pth_reads_with_the_listed_names_shapes_and_dtypes() {
    for m in ["u3x96h32", "t2x128"] {
        let dir = model_dir(m);
        let text = std::fs::read_to_string(dir.join("tensors.json")).unwrap();
        let listed: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&text).unwrap();
        let got = read_weights(&dir.join("model.pth")).unwrap();
        assert_eq!(got.len(), listed.len(), "{m}: tensor count");
        // File order is tensors.json order (serde's map is sorted, so compare positions in the text).
        let pos: Vec<usize> = got
            .iter()
            .map(|(n, _)| text.find(&format!("\"{n}\"")).unwrap())
            .collect();
        assert!(
            pos.windows(2).all(|w| w[0] < w[1]),
            "{m}: tensors out of file order"
        );
        for (name, t) in &got {
            let spec = &listed[name];
            let shape: Vec<i64> = serde_json::from_value(spec["shape"].clone()).unwrap();
            assert_eq!(t.size(), shape, "{m}: {name}");
            assert_eq!(t.kind(), Kind::BFloat16, "{m}: {name}");
        }
    }
}

#[test]
fn save_and_reload_in_both_formats_gives_identical_logits() {
    let src = model_dir("u3x96h32");
    let want = logits_of(&src);
    let model = AutoModel::from_pretrained(&src, Device::Cpu, Kind::Float).unwrap();
    for fmt in [WeightFormat::Pth, WeightFormat::Safetensors] {
        let dir = tempfile::tempdir().unwrap();
        AutoModel::save_pretrained(&model, dir.path(), fmt).unwrap();
        assert!(dir.path().join(fmt.file_name()).is_file());
        assert_eq!(max_abs_diff(&logits_of(dir.path()), &want), 0.0, "{fmt:?}");
        // Nothing temporary left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}

#[test]
fn create_hub_packages_converts_and_links() {
    let src = model_dir("u3x96h32").join("model.pth");
    let want = logits_of(&model_dir("u3x96h32"));
    let tmp = tempfile::tempdir().unwrap();
    for (sub, fmt, link) in [
        ("pth", WeightFormat::Pth, false),
        ("st", WeightFormat::Safetensors, false),
        ("ln", WeightFormat::Pth, true),
    ] {
        let mut o = CreateHubOptions::new(tmp.path().join(sub));
        o.model_file = Some(src.clone());
        o.save_format = fmt;
        o.link_weights = link;
        o.ctx_len = Some(2048);
        let hub = create_hub(&o).unwrap();
        assert_eq!(
            (
                hub.config.n_layer,
                hub.config.head_size_a,
                hub.config.ctx_len
            ),
            (3, 32, 2048)
        );
        let dir = tmp.path().join(sub);
        for f in [
            "config.json",
            "generation_config.json",
            "tokenizer_config.json",
            "vocab.txt",
            "README.md",
            fmt.file_name(),
        ] {
            assert!(dir.join(f).exists(), "{sub}: {f} missing");
        }
        assert_eq!(
            std::fs::symlink_metadata(dir.join(fmt.file_name()))
                .unwrap()
                .file_type()
                .is_symlink(),
            link
        );
        // bf16 checkpoint: fp32 upcast is exact, so a conversion must not move a single logit.
        assert_eq!(max_abs_diff(&logits_of(&dir), &want), 0.0, "{sub}");
    }
}

#[test]
fn create_hub_fresh_model_from_config_name() {
    let tmp = tempfile::tempdir().unwrap();
    let mut o = CreateHubOptions::new(tmp.path().join("fresh"));
    o.config_name = Some("rwkv7-demo".into());
    o.save_format = WeightFormat::Safetensors;
    let hub = create_hub(&o).unwrap();
    assert_eq!(hub.config.eos_token_id, Some(261));
    let l = logits_of(&tmp.path().join("fresh"));
    assert_eq!(l.size(), [1, 8, 65536]);
}

#[test]
fn create_hub_refuses_bad_input_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // Unknown config name.
    let mut o = CreateHubOptions::new(&out);
    o.config_name = Some("rwkv7-9000b".into());
    let err = create_hub(&o).unwrap_err().to_string();
    assert!(
        err.contains("rwkv7-9000b") && err.contains("rwkv7-1.5b"),
        "{err}"
    );
    // A config that does not fit the weights.
    let mut o = CreateHubOptions::new(&out);
    o.model_file = Some(model_dir("u3x96h32").join("model.pth"));
    o.config_name = Some("rwkv7-0.1b".into());
    let err = create_hub(&o).unwrap_err().to_string();
    assert!(err.contains("n_layer"), "{err}");
    // A vocabulary with a broken line.
    let vocab = tmp.path().join("bad_vocab.txt");
    std::fs::write(&vocab, "1 'a' 1\n2 'bc' 5\n").unwrap();
    let mut o = CreateHubOptions::new(&out);
    o.config_name = Some("rwkv7-demo".into());
    o.vocab_file = Some(vocab);
    let err = create_hub(&o).unwrap_err().to_string();
    assert!(
        err.contains("bad_vocab.txt") && err.contains("line 2"),
        "{err}"
    );
    assert!(!out.exists(), "nothing may be written on failure");
    // An existing, non-empty directory without --overwrite.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "x").unwrap();
    let mut o = CreateHubOptions::new(&out);
    o.config_name = Some("rwkv7-demo".into());
    assert!(create_hub(&o)
        .unwrap_err()
        .to_string()
        .contains("--overwrite"));
    o.overwrite = true;
    create_hub(&o).unwrap();
    assert!(out.join("keep.txt").exists() && out.join("model.pth").exists());
}

#[test]
fn corrupt_weight_files_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let full = std::fs::read(model_dir("u3x96h32").join("model.pth")).unwrap();
    let truncated = tmp.path().join("truncated.pth");
    std::fs::write(&truncated, &full[..full.len() / 2]).unwrap();
    let err = read_weights(&truncated).unwrap_err().to_string();
    assert!(err.contains("truncated.pth"), "{err}");

    let st = tmp.path().join("model.safetensors");
    let model =
        AutoModel::from_pretrained(&model_dir("u3x96h32"), Device::Cpu, Kind::Float).unwrap();
    rwkvtune_core::hub::write_weights(&st, &model.named_tensors(), WeightFormat::Safetensors)
        .unwrap();
    let bytes = std::fs::read(&st).unwrap();
    let cut = tmp.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let err = read_weights(&cut).unwrap_err().to_string();
    assert!(err.contains("cut.safetensors"), "{err}");

    let garbage = tmp.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot json").unwrap();
    assert!(read_weights(&garbage)
        .unwrap_err()
        .to_string()
        .contains("garbage.safetensors"));
}

#[test]
fn checkpoint_problems_name_the_tensor_or_field() {
    let model =
        AutoModel::from_pretrained(&model_dir("u3x96h32"), Device::Cpu, Kind::Float).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut named = model.named_tensors();
    named.retain(|(n, _)| n != "blocks.1.att.k_a");
    rwkvtune_core::hub::write_weights(
        &tmp.path().join("model.safetensors"),
        &named,
        WeightFormat::Safetensors,
    )
    .unwrap();
    let err = AutoModel::from_pretrained(tmp.path(), Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("blocks.1.att.k_a") && err.contains("missing"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    AutoModel::save_pretrained(&model, dir.path(), WeightFormat::Safetensors).unwrap();
    let cfg = dir.path().join("config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"n_layer\": 3", "\"n_layer\": 5");
    std::fs::write(&cfg, text).unwrap();
    let err = AutoModel::from_pretrained(dir.path(), Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(err.contains("n_layer = 5") && err.contains("3"), "{err}");
    std::fs::write(&cfg, "{ not json").unwrap();
    let err = AutoModel::from_pretrained(dir.path(), Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json"), "{err}");

    let empty = tempfile::tempdir().unwrap();
    let err = AutoModel::from_pretrained(empty.path(), Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a model directory"), "{err}");
}
