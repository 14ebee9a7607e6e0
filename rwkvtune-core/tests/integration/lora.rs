//! LoRA: the reference training step with given adapters (`train/u3x96h32__lora*.safetensors`),
//! adapter files round-tripping what was trained, merge/unmerge/disable, and bad adapters.

use crate::common::*;
use rwkvtune_core::hub::{AutoModel, WeightFormat};
use rwkvtune_core::lora::{self, LoraConfig};
use rwkvtune_core::model::Rwkv7;
use rwkvtune_core::train::{clip_coefficient, head_loss, AdamW, OptimParam};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn base(name: &str) -> Rwkv7 {
    AutoModel::from_pretrained(&model_dir(name), Device::Cpu, Kind::Float).unwrap()
}

/// The reference adapter as an adapter directory with a Python-style config (substring-era
/// target list and the Python default `modules_to_save`).
fn reference_adapter_dir(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(
        reference().join("train/u3x96h32__lora_adapter.safetensors"),
        dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    let cfg = r#"{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
        "target_modules": ["receptance", "key", "value", "output"], "modules_to_save": ["ln", "time"]}"#;
    std::fs::write(dir.join("adapter_config.json"), cfg).unwrap();
    dir.to_path_buf()
}

fn grads(
    model: &Rwkv7,
    case: &HashMap<String, Tensor>,
    l2wrap: bool,
) -> (f64, HashMap<String, Tensor>) {
    for (_, mut t) in lora::trainable_tensors(model) {
        t.zero_grad();
    }
    let (hidden, _) = model.forward_hidden(&case["input_ids"], None).unwrap();
    let loss = head_loss(&model.head, &hidden, &case["labels"], l2wrap).unwrap();
    loss.objective.backward();
    let g = lora::trainable_tensors(model)
        .into_iter()
        .map(|(n, t)| (n, t.grad().copy()))
        .collect();
    (loss.ce, g)
}

fn norm(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double)
        .square()
        .sum(Kind::Double)
        .sqrt()
        .double_value(&[])
}

fn logits(model: &Rwkv7, ids: &Tensor) -> Tensor {
    let _g = tch::no_grad_guard();
    model
        .forward(ids, None, None)
        .unwrap()
        .0
        .to_kind(Kind::Float)
}

#[test]
fn lora_step_matches_reference() {
    let case = load_case("train/u3x96h32__lora.safetensors");
    let tmp = tempfile::tempdir().unwrap();
    let mut model = base("u3x96h32");
    let layout =
        lora::load_adapter(&mut model, &reference_adapter_dir(&tmp.path().join("a"))).unwrap();
    assert_eq!(layout.modules.len(), 18);
    assert_eq!((layout.config.r, layout.config.scaling()), (8, 2.0));

    // The trainable set is exactly the reference's 58 tensors.
    let mut want: Vec<&str> = case
        .keys()
        .filter_map(|k| k.strip_prefix("grad_norm_l2wrap/"))
        .collect();
    want.sort();
    let mut got: Vec<String> = lora::trainable_tensors(&model)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    got.sort();
    assert_eq!(want.len(), 58);
    assert_eq!(got, want);
    for (n, t) in model.named_tensors() {
        assert_eq!(
            t.requires_grad(),
            n.contains("ln"),
            "{n}: only norms train beside the adapters"
        );
    }

    let at = logits(&model, &case["input_ids"]).index_select(1, &case["logits_pos"]);
    assert!(
        excess(&at, &case["logits_at_pos"], 1e-4, 1e-5) <= 0.0,
        "logits_at_pos"
    );

    let (_, g_ce) = grads(&model, &case, false);
    let (loss, g) = grads(&model, &case, true);
    let want_loss = case["loss"].double_value(&[0]);
    assert!(
        (loss - want_loss).abs() <= 1e-5 * want_loss,
        "loss {loss} vs {want_loss}"
    );
    for (prefix, g) in [("grad_norm_ce/", &g_ce), ("grad_norm_l2wrap/", &g)] {
        for (key, r) in case.iter().filter(|(k, _)| k.starts_with(prefix)) {
            let (cand, want) = (norm(&g[&key[prefix.len()..]]), r.double_value(&[0]));
            // PASS rule of the reference README: |cand - ref| <= 1e-7 + 1e-4 ref.
            assert!(
                (cand - want).abs() <= 1e-7 + 1e-4 * want,
                "{key} = {cand:e}, reference {want:e}"
            );
        }
    }
    let mut full = 0;
    for (key, r) in case.iter().filter(|(k, _)| k.starts_with("grad_l2wrap/")) {
        let bound = 1e-4 * r.abs().max().double_value(&[]);
        let d = max_abs_diff(&g[&key["grad_l2wrap/".len()..]], r);
        assert!(d <= bound, "{key} off by {d}");
        full += 1;
    }
    assert_eq!(full, 58);

    // One clipped Adam step over the trainable tensors only (lr 1e-3, betas 0.9/0.99, eps 1e-8).
    let params: Vec<OptimParam> = lora::trainable_tensors(&model)
        .iter()
        .map(|(n, t)| {
            let mut p = OptimParam::grouped(n, t, 0.0);
            p.lr_scale = 1.0;
            p
        })
        .collect();
    let grads: Vec<Tensor> = params.iter().map(|p| p.tensor.grad()).collect();
    let clip = clip_coefficient(&grads, 1.0);
    let mut opt = AdamW::new(params, 0.9, 0.99, 1e-8);
    opt.step_with(1e-3, &grads, clip.coef).unwrap();
    let (hidden, _) = model.forward_hidden(&case["input_ids"], None).unwrap();
    let after = head_loss(&model.head, &hidden, &case["labels"], false)
        .unwrap()
        .ce;
    let want = case["loss_after_step"].double_value(&[0]);
    assert!(
        (after - want).abs() <= 1e-4 * want,
        "loss after step {after} vs {want}"
    );
}

/// A few AdamW steps on random batches; returns the trained model and its layout.
fn train_a_little(cfg: &LoraConfig) -> (Rwkv7, lora::LoraLayout) {
    let mut model = base("u3x96h32");
    let layout = lora::get_peft_model(&mut model, cfg, 7).unwrap();
    let params: Vec<OptimParam> = lora::trainable_tensors(&model)
        .iter()
        .map(|(n, t)| OptimParam::grouped(n, t, 0.0))
        .collect();
    let mut opt = AdamW::new(params, 0.9, 0.99, 1e-8);
    tch::manual_seed(11);
    for _ in 0..4 {
        let ids = Tensor::randint_low(1, 999, [2, 17], (Kind::Int64, Device::Cpu));
        let (hidden, _) = model.forward_hidden(&ids.narrow(1, 0, 16), None).unwrap();
        head_loss(
            &model.head,
            &hidden,
            &ids.narrow(1, 1, 16).contiguous(),
            true,
        )
        .unwrap()
        .objective
        .backward();
        opt.step(1e-2).unwrap();
        opt.zero_grad().unwrap();
    }
    lora::set_training(&mut model, false);
    (model, layout)
}

fn test_ids() -> Tensor {
    Tensor::from_slice(&[5i64, 17, 300, 2, 999, 41, 41, 7, 120, 64, 0, 3]).view([2, 6])
}

#[test]
fn trained_adapter_round_trips_through_both_formats_and_merges() {
    let cfg = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.05,
        ..LoraConfig::default()
    };
    let (live, layout) = train_a_little(&cfg);
    let ids = test_ids();
    let want = logits(&live, &ids);
    let plain = base("u3x96h32");
    let ln_before = &plain
        .named_tensors()
        .into_iter()
        .find(|(n, _)| n == "ln_out.weight")
        .unwrap()
        .1;
    let ln_after = live
        .named_tensors()
        .into_iter()
        .find(|(n, _)| n == "ln_out.weight")
        .unwrap()
        .1;
    assert!(
        max_abs_diff(ln_before, &ln_after) > 1e-3,
        "training must move the LayerNorms"
    );
    assert!(
        max_abs_diff(&logits(&plain, &ids), &want) > 1e-3,
        "training must change the logits"
    );
    assert_eq!(
        layout.saved.len(),
        3 * 6 + 2 + 2,
        "ln0, ln1, ln2, ln_x per block and ln_out"
    );

    let tmp = tempfile::tempdir().unwrap();
    for fmt in [WeightFormat::Safetensors, WeightFormat::Pth] {
        let dir = tmp.path().join(format!("{fmt:?}"));
        let file =
            lora::save_adapter(&live, &layout, &dir, fmt, Some(&model_dir("u3x96h32"))).unwrap();
        let mut m = base("u3x96h32");
        let re = lora::load_adapter(&mut m, &dir).unwrap();
        assert_eq!(
            (&re.modules, &re.saved, re.config.r),
            (&layout.modules, &layout.saved, 4),
            "{file:?}"
        );
        assert_eq!(
            max_abs_diff(&logits(&m, &ids), &want),
            0.0,
            "{fmt:?}: reloaded adapter"
        );

        // In-place merge, then back.
        lora::merge_adapters(&mut m);
        let d = max_abs_diff(&logits(&m, &ids), &want);
        eprintln!("{fmt:?}: merged in place, max |Δlogit| = {d:e}");
        assert!(d <= 1e-4, "{fmt:?}: merged model off by {d}");
        lora::unmerge_adapters(&mut m);
        // W + ΔW − ΔW rounds W twice in fp32: the same bound as the merge itself.
        let d = max_abs_diff(&logits(&m, &ids), &want);
        assert!(d <= 1e-4, "{fmt:?}: unmerged model off by {d}");
        // A plain checkpoint of the merged weights (lora_save_mode = full).
        let merged =
            Rwkv7::from_tensors(lora::merged_tensors(&m, None), None, Path::new("mem")).unwrap();
        assert!(
            max_abs_diff(&logits(&merged, &ids), &want) <= 1e-4,
            "{fmt:?}: merged_tensors"
        );
    }
}

#[test]
fn bin_adapter_loads_in_pytorch() {
    let cfg = LoraConfig {
        r: 2,
        target_modules: vec!["ffn".into()],
        ..LoraConfig::default()
    };
    let (live, layout) = train_a_little(&cfg);
    let tmp = tempfile::tempdir().unwrap();
    let file = lora::save_adapter(&live, &layout, tmp.path(), WeightFormat::Pth, None).unwrap();
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv-torch/bin/python");
    assert!(
        python.exists(),
        "{} missing: run scripts/setup --tests",
        python.display()
    );
    let script = "import sys, torch\nd = torch.load(sys.argv[1], weights_only=True)\n\
                  print(len(d), float(d['blocks.1.ffn.value.lora_B'].double().sum()), float(d['ln_out.weight'].double().sum()))";
    let out = std::process::Command::new(python)
        .args(["-c", script, file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let f: Vec<f64> = text
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    let ours: HashMap<String, Tensor> = lora::adapter_tensors(&live, &layout).into_iter().collect();
    assert_eq!(f[0] as usize, ours.len());
    assert_eq!(ours.len(), 3 * 2 * 2 + 22);
    let sum = |n: &str| {
        ours[n]
            .to_kind(Kind::Double)
            .sum(Kind::Double)
            .double_value(&[])
    };
    assert!((f[1] - sum("blocks.1.ffn.value.lora_B")).abs() < 1e-9 && f[1] != 0.0);
    assert!((f[2] - sum("ln_out.weight")).abs() < 1e-9);
}

#[test]
fn fresh_adapter_is_identity_and_disable_restores_the_base() {
    let ids = test_ids();
    let want = logits(&base("u3x96h32"), &ids);
    let cfg = LoraConfig {
        r: 4,
        modules_to_save: vec![],
        ..LoraConfig::default()
    };
    let mut model = base("u3x96h32");
    let layout = lora::get_peft_model(&mut model, &cfg, 1).unwrap();
    assert!(layout.saved.is_empty());
    assert_eq!(
        max_abs_diff(&logits(&model, &ids), &want),
        0.0,
        "B = 0: the adapter starts as identity"
    );
    assert_eq!(lora::trainable_tensors(&model).len(), 3 * 6 * 2);
    for (_, mut b) in lora::lora_tensors(&model)
        .into_iter()
        .filter(|(n, _)| n.ends_with("lora_B"))
    {
        let _g = tch::no_grad_guard();
        b.copy_(&(b.randn_like() * 0.05));
    }
    assert!(max_abs_diff(&logits(&model, &ids), &want) > 1e-3);
    let off = lora::with_adapters_disabled(&mut model, |m| logits(m, &ids));
    assert_eq!(
        max_abs_diff(&off, &want),
        0.0,
        "disabled adapters = base model"
    );
    assert!(
        max_abs_diff(&logits(&model, &ids), &want) > 1e-3,
        "re-enabled afterwards"
    );
    // Disabling a merged model takes the merge back out.
    lora::merge_adapters(&mut model);
    lora::set_adapters_enabled(&mut model, false);
    assert!(max_abs_diff(&logits(&model, &ids), &want) <= 1e-5);
    assert!(
        lora::get_peft_model(&mut model, &cfg, 1).is_err(),
        "wrapping twice is refused"
    );
}

#[test]
fn bad_adapters_are_refused_without_touching_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = reference_adapter_dir(&tmp.path().join("a"));
    // Shapes for a 96-wide model on a 128-wide one.
    let mut other = base("t2x128");
    let err = lora::load_adapter(&mut other, &dir)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("do not fit the base layer") && err.contains("different model"),
        "{err}"
    );
    assert!(!lora::has_adapters(&other));
    // No config.
    std::fs::remove_file(dir.join("adapter_config.json")).unwrap();
    let err = lora::load_adapter(&mut base("u3x96h32"), &dir)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no adapter_config.json"), "{err}");
    // A config whose rank contradicts the weights.
    std::fs::write(
        dir.join("adapter_config.json"),
        r#"{"r": 16, "lora_alpha": 16}"#,
    )
    .unwrap();
    let err = lora::load_adapter(&mut base("u3x96h32"), &dir)
        .unwrap_err()
        .to_string();
    assert!(err.contains("rank 8"), "{err}");
    // Targets that match nothing.
    let bad = LoraConfig {
        target_modules: vec!["ffn.receptance".into()],
        ..LoraConfig::default()
    };
    let err = lora::get_peft_model(&mut base("u3x96h32"), &bad, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("matches no linear layer"), "{err}");
}
