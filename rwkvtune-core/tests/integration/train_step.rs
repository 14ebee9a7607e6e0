//! One full fine-tuning step against `shared/reference/train/<model>__sft.safetensors`:
//! loss, every gradient norm (CE + L2Wrap and pure CE), full gradients, and the loss after one
//! clipped Adam step. Tolerances are the reference README's PASS rules.

use crate::common::*;
use rwkvtune_core::hub::AutoModel;
use rwkvtune_core::model::Rwkv7;
use rwkvtune_core::train::{clip_coefficient, head_loss, AdamW, OptimParam};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

fn grads(
    model: &Rwkv7,
    case: &HashMap<String, Tensor>,
    l2wrap: bool,
) -> (f64, HashMap<String, Tensor>) {
    for (_, t) in model.named_tensors() {
        let mut t = t;
        t.zero_grad();
        let _ = t.set_requires_grad(true);
    }
    // The training path: final hidden states into the fused head + loss kernel.
    let (hidden, _) = model.forward_hidden(&case["input_ids"], None).unwrap();
    let loss = head_loss(&model.head, &hidden, &case["labels"], l2wrap).unwrap();
    loss.objective.backward();
    (
        loss.ce,
        model
            .named_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.grad().copy()))
            .collect(),
    )
}

fn norm(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double)
        .square()
        .sum(Kind::Double)
        .sqrt()
        .double_value(&[])
}

fn check_norms(
    label: &str,
    prefix: &str,
    got: &HashMap<String, Tensor>,
    case: &HashMap<String, Tensor>,
) {
    let mut n = 0;
    for (key, r) in case.iter().filter(|(k, _)| k.starts_with(prefix)) {
        let name = &key[prefix.len()..];
        let want = r.double_value(&[0]);
        // Block 0's v0/v1/v2 are stored but unused, so their reference gradient is exactly zero.
        let cand = got.get(name).map_or(0.0, norm);
        assert!(
            (cand - want).abs() <= 1e-7 + 1e-4 * want,
            "{label}: {key} = {cand:e}, reference {want:e}"
        );
        n += 1;
    }
    assert!(
        n >= got.len(),
        "{label}: only {n} reference norms for {} tensors",
        got.len()
    );
}

#[test]
fn sft_step_matches_reference_for_both_models() {
    for m in ["u3x96h32", "t2x128"] {
        let case = load_case(&format!("train/{m}__sft.safetensors"));
        let model = AutoModel::from_pretrained(&model_dir(m), Device::Cpu, Kind::Float).unwrap();

        // Logits of the batch forward.
        {
            let _g = tch::no_grad_guard();
            let (logits, _) = model.forward(&case["input_ids"], None, None).unwrap();
            let at = logits.index_select(1, &case["logits_pos"]);
            assert!(
                excess(&at, &case["logits_at_pos"], 1e-4, 1e-5) <= 0.0,
                "{m}: logits_at_pos"
            );
        }

        let (ce, g_ce) = grads(&model, &case, false);
        check_norms(m, "grad_norm_ce/", &g_ce, &case);
        let (loss, g) = grads(&model, &case, true);
        let want = case["loss"].double_value(&[0]);
        assert!(
            (loss - want).abs() <= 1e-5 * want,
            "{m}: loss {loss} vs {want}"
        );
        assert_eq!(loss, ce, "L2Wrap must not change the loss value");
        check_norms(m, "grad_norm_l2wrap/", &g, &case);
        for (key, r) in case.iter().filter(|(k, _)| k.starts_with("grad_l2wrap/")) {
            let name = &key["grad_l2wrap/".len()..];
            let bound = 1e-4 * r.abs().max().double_value(&[]);
            match g.get(name) {
                Some(t) => assert!(
                    max_abs_diff(t, r) <= bound,
                    "{m}: {key} off by {}",
                    max_abs_diff(t, r)
                ),
                None => assert_eq!(r.abs().max().double_value(&[]), 0.0, "{m}: {key} missing"),
            }
        }
        for (rows, ids, name) in [
            ("grad_emb_rows", "grad_emb_ids", "emb.weight"),
            ("grad_head_rows", "grad_head_ids", "head.weight"),
        ] {
            let cand = g[name].index_select(0, &case[ids]);
            let bound = 1e-4 * case[rows].abs().max().double_value(&[]);
            assert!(max_abs_diff(&cand, &case[rows]) <= bound, "{m}: {rows}");
        }

        // One clipped Adam step (lr 1e-3, betas 0.9/0.99, eps 1e-8, no weight decay).
        let params: Vec<OptimParam> = model
            .named_tensors()
            .iter()
            .map(|(n, t)| OptimParam::grouped(n, t, 0.0))
            .map(|mut p| {
                p.lr_scale = 1.0; // the reference step uses one learning rate for all tensors
                p
            })
            .collect();
        let grads: Vec<Tensor> = params.iter().map(|p| p.tensor.grad()).collect();
        let clip = clip_coefficient(&grads, 1.0);
        let mut opt = AdamW::new(params, 0.9, 0.99, 1e-8);
        opt.step_with(1e-3, &grads, clip.coef).unwrap();
        let _g = tch::no_grad_guard();
        let (hidden, _) = model.forward_hidden(&case["input_ids"], None).unwrap();
        let after = head_loss(&model.head, &hidden, &case["labels"], false)
            .unwrap()
            .ce;
        let want = case["loss_after_step"].double_value(&[0]);
        assert!(
            (after - want).abs() <= 1e-4 * want,
            "{m}: loss after step {after} vs {want}"
        );
    }
}

/// Loss value and every trainable gradient through `loss_of(model)`.
fn loss_and_grads(
    model: &Rwkv7,
    loss_of: impl Fn(&Rwkv7) -> rwkvtune_core::train::Loss,
) -> (f64, Vec<(String, Tensor)>) {
    let named = rwkvtune_core::train::trainable_tensors(model);
    for (_, t) in &named {
        t.shallow_clone().zero_grad();
    }
    let loss = loss_of(model);
    loss.objective.backward();
    let grads = named
        .iter()
        .map(|(n, t)| (n.clone(), t.grad().copy()))
        .collect();
    (loss.ce, grads)
}

#[test]
fn fused_head_loss_equals_the_logits_path_and_honours_a_head_adapter() {
    let case = load_case("train/u3x96h32__sft.safetensors");
    let (ids, labels) = (&case["input_ids"], &case["labels"]);
    let (b, t) = (ids.size()[0], ids.size()[1]);
    let n = labels.ne(-100).sum(Kind::Int64).int64_value(&[]);
    let fused = |m: &Rwkv7, wrap: bool| {
        let (hidden, _) = m.forward_hidden(ids, None).unwrap();
        head_loss(&m.head, &hidden, labels, wrap).unwrap()
    };
    let unfused = |m: &Rwkv7, wrap: bool| {
        let (logits, _) = m.forward(ids, None, None).unwrap();
        rwkvtune_core::train::lm_loss_part(&logits, labels, wrap, n, b * t)
    };
    let mut model =
        AutoModel::from_pretrained(&model_dir("u3x96h32"), Device::Cpu, Kind::Float).unwrap();
    for wrap in [false, true] {
        let (lf, gf) = loss_and_grads(&model, |m| fused(m, wrap));
        let (lu, gu) = loss_and_grads(&model, |m| unfused(m, wrap));
        assert!((lf - lu).abs() <= 1e-6 * lu, "loss {lf} vs {lu}");
        for ((name, a), (_, b)) in gf.iter().zip(&gu) {
            let scale = b.abs().max().double_value(&[]).max(1e-12);
            assert!(max_abs_diff(a, b) <= 1e-4 * scale, "{name} (l2wrap {wrap})");
        }
    }
    // A LoRA adapter on the head must not be bypassed by the fused kernel.
    let cfg: rwkvtune_core::lora::LoraConfig =
        serde_json::from_str(r#"{"r": 4, "lora_alpha": 8, "target_modules": ["head"]}"#).unwrap();
    rwkvtune_core::lora::get_peft_model(&mut model, &cfg, 3).unwrap();
    {
        let _g = tch::no_grad_guard();
        let adapter = model.head.lora.as_ref().unwrap();
        adapter
            .b
            .shallow_clone()
            .copy_(&(adapter.b.randn_like() * 0.5));
    }
    let (lf, gf) = loss_and_grads(&model, |m| fused(m, true));
    let (lu, gu) = loss_and_grads(&model, |m| unfused(m, true));
    rwkvtune_core::lora::set_adapters_enabled(&mut model, false);
    let base = tch::no_grad(|| fused(&model, true).ce);
    rwkvtune_core::lora::set_adapters_enabled(&mut model, true);
    assert!(
        (base - lf).abs() > 1e-3,
        "the adapter changes the loss ({base} vs {lf})"
    );
    assert!(
        (lf - lu).abs() <= 1e-6 * lu,
        "with a head adapter: {lf} vs {lu}"
    );
    for ((name, a), (_, b)) in gf.iter().zip(&gu) {
        assert!(
            a.equal(b),
            "{name}: the head adapter must take the unfused path"
        );
    }
}
