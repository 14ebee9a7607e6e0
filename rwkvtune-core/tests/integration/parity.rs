//! Logits, state and greedy decoding against the official implementation.

use crate::common::*;
use rwkvtune_core::hub::AutoModel;
use rwkvtune_core::model::{Rwkv7, State};
use tch::{Device, Kind, Tensor};

const MODELS: [&str; 2] = ["u3x96h32", "t2x128"];
const SEQS: [&str; 3] = ["len1", "len7", "len64"];

fn load(name: &str) -> Rwkv7 {
    AutoModel::from_pretrained(&model_dir(name), Device::Cpu, Kind::Float).unwrap()
}

/// The fp32 PASS rule of the reference README for one [T, V] logits matrix.
fn check_logits(
    label: &str,
    logits: &Tensor,
    case: &std::collections::HashMap<String, Tensor>,
    step: bool,
) {
    let (rows_key, cols_key, lse_key) = if step {
        ("logits_rows", "step_logits_cols", "step_lse")
    } else {
        ("logits_rows", "logits_cols", "lse")
    };
    let row_pos = &case["row_pos"];
    let rows = logits.index_select(0, row_pos);
    assert!(
        excess(&rows, &case[rows_key], 1e-4, 1e-5) <= 0.0,
        "{label}: rows off by {}",
        max_abs_diff(&rows, &case[rows_key])
    );
    let cols = logits.index_select(1, &case["col_ids"]);
    assert!(
        excess(&cols, &case[cols_key], 1e-4, 1e-5) <= 0.0,
        "{label}: cols off by {}",
        max_abs_diff(&cols, &case[cols_key])
    );
    let lse = logits
        .to_kind(Kind::Double)
        .logsumexp([-1i64].as_slice(), false);
    assert!(
        excess(&lse, &case[lse_key], 1e-4, 1e-5) <= 0.0,
        "{label}: lse off by {}",
        max_abs_diff(&lse, &case[lse_key])
    );
    let argmax = logits.argmax(-1, false);
    let sure = case["top2_gap"].gt(1e-3);
    let agree = argmax
        .eq_tensor(&case["argmax"])
        .logical_or(&sure.logical_not());
    assert!(
        agree.all().int64_value(&[]) == 1,
        "{label}: argmax differs where the top-2 gap > 1e-3"
    );
}

fn check_state(label: &str, state: &State, case: &std::collections::HashMap<String, Tensor>) {
    for (i, l) in state.layers.iter().enumerate() {
        for (name, t) in [
            ("att_x", &l.att_x),
            ("att_kv", &l.att_kv),
            ("ffn_x", &l.ffn_x),
        ] {
            let r = &case[&format!("state.{i}.{name}")];
            let d = max_abs_diff(&t.squeeze_dim(0), r);
            assert!(d <= 1e-4, "{label}: state.{i}.{name} off by {d}");
        }
    }
}

#[test]
fn full_sequence_logits_and_state_match_official() {
    let _g = tch::no_grad_guard();
    for m in MODELS {
        let model = load(m);
        for s in SEQS {
            let case = load_case(&format!("logits/{m}__{s}.safetensors"));
            let ids = case["input_ids"].unsqueeze(0);
            let (logits, state) = model.forward(&ids, None, None).unwrap();
            check_logits(
                &format!("{m} {s} full"),
                &logits.squeeze_dim(0),
                &case,
                false,
            );
            check_state(&format!("{m} {s} full"), &state, &case);
        }
    }
}

#[test]
fn token_by_token_path_matches_official_step_logits() {
    let _g = tch::no_grad_guard();
    for m in MODELS {
        let model = load(m);
        for s in ["len7", "len64"] {
            let case = load_case(&format!("logits/{m}__{s}.safetensors"));
            let ids = ids_of(&case["input_ids"]);
            let mut state = None;
            let mut rows = Vec::new();
            for id in ids {
                let (l, st) = model
                    .forward(
                        &Tensor::from_slice(&[id]).view([1, 1]),
                        state.as_ref(),
                        None,
                    )
                    .unwrap();
                rows.push(l.view([1, -1]));
                state = Some(st);
            }
            let logits = Tensor::cat(&rows, 0);
            check_logits(&format!("{m} {s} stepwise"), &logits, &case, true);
            check_state(&format!("{m} {s} stepwise"), &state.unwrap(), &case);
        }
    }
}

#[test]
fn chunked_prefill_with_carried_state_matches_full_sequence() {
    let _g = tch::no_grad_guard();
    let model = load("u3x96h32");
    let case = load_case("logits/u3x96h32__len64.safetensors");
    let ids = case["input_ids"].unsqueeze(0);
    let (full, full_state) = model.forward(&ids, None, None).unwrap();
    // Chunks T/3, 1, rest (the official chunking check), plus logits_to_keep on the last one.
    let (l1, s1) = model.forward(&ids.narrow(1, 0, 21), None, None).unwrap();
    let (l2, s2) = model
        .forward(&ids.narrow(1, 21, 1), Some(&s1), None)
        .unwrap();
    let (l3, s3) = model
        .forward(&ids.narrow(1, 22, 42), Some(&s2), None)
        .unwrap();
    let chunked = Tensor::cat(&[l1, l2, l3], 1);
    assert!(max_abs_diff(&chunked, &full) < 1e-4);
    for (a, b) in s3.layers.iter().zip(&full_state.layers) {
        assert!(max_abs_diff(&a.att_kv, &b.att_kv) < 1e-5);
    }
    let (last, _) = model.forward(&ids, None, Some(1)).unwrap();
    assert_eq!(last.size(), [1, 1, 1000]);
    assert!(max_abs_diff(&last, &full.narrow(1, 63, 1)) < 1e-5);
}

#[test]
fn batched_rows_equal_single_sequence_runs() {
    let _g = tch::no_grad_guard();
    let model = load("u3x96h32");
    let a = load_case("logits/u3x96h32__len64.safetensors");
    let ids = a["input_ids"].narrow(0, 0, 32);
    let other = ids.flip([0]);
    let (batch, _) = model
        .forward(&Tensor::stack(&[&ids, &other], 0), None, None)
        .unwrap();
    let (one, _) = model.forward(&ids.unsqueeze(0), None, None).unwrap();
    let (two, _) = model.forward(&other.unsqueeze(0), None, None).unwrap();
    assert!(max_abs_diff(&batch.narrow(0, 0, 1), &one) < 1e-5);
    assert!(max_abs_diff(&batch.narrow(0, 1, 1), &two) < 1e-5);
}

#[test]
fn greedy_decoding_reproduces_official_tokens() {
    let _g = tch::no_grad_guard();
    for m in MODELS {
        let model = load(m);
        let path = reference().join(format!("greedy/{m}.json"));
        let case: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let prompt: Vec<u32> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
        let want: Vec<i64> = serde_json::from_value(case["generated_ids"].clone()).unwrap();
        let (mut logits, mut state) =
            rwkvtune_core::generate::prefill(&model, &prompt, None).unwrap();
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let tok = logits.argmax(-1, false).int64_value(&[]);
            got.push(tok);
            let (l, s) = model
                .forward(&Tensor::from_slice(&[tok]).view([1, 1]), Some(&state), None)
                .unwrap();
            logits = l.view([-1]);
            state = s;
        }
        assert_eq!(got, want, "{m}: greedy tokens differ");
    }
}

#[test]
fn bf16_model_stays_close_and_keeps_fp32_state() {
    let _g = tch::no_grad_guard();
    let model =
        AutoModel::from_pretrained(&model_dir("u3x96h32"), Device::Cpu, Kind::BFloat16).unwrap();
    let case = load_case("logits/u3x96h32__len7.safetensors");
    let (logits, state) = model
        .forward(&case["input_ids"].unsqueeze(0), None, None)
        .unwrap();
    assert_eq!(logits.kind(), Kind::BFloat16);
    assert!(state
        .layers
        .iter()
        .all(|l| l.att_kv.kind() == Kind::Float && l.att_x.kind() == Kind::Float));
    // The README's loose bf16 rule: |Δ| <= 1.0 on the stored rows.
    let rows = logits.squeeze_dim(0).index_select(0, &case["row_pos"]);
    assert!(max_abs_diff(&rows, &case["logits_rows"]) <= 1.0);
}

#[test]
fn gradients_reach_every_parameter_and_the_incoming_state() {
    let model = load("u3x96h32");
    for (_, t) in model.named_tensors() {
        let _ = t.set_requires_grad(true);
    }
    let ids = Tensor::from_slice(&[5i64, 17, 300, 999, 2]).view([1, 5]);
    let mut s0 = State::zeros(&model.dims, 1, Device::Cpu);
    for l in &mut s0.layers {
        l.att_kv = (Tensor::randn(l.att_kv.size(), (Kind::Float, Device::Cpu)) * 0.1)
            .set_requires_grad(true);
    }
    let (logits, _) = model.forward(&ids, Some(&s0), None).unwrap();
    logits.pow_tensor_scalar(2).mean(Kind::Float).backward();
    for (name, t) in model.named_tensors() {
        let g = t.grad();
        assert!(g.defined(), "{name} got no gradient");
    }
    assert!(s0
        .layers
        .iter()
        .all(|l| l.att_kv.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0));
}

#[test]
fn out_of_range_ids_are_clear_errors() {
    let model = load("u3x96h32");
    let err = model
        .forward(&Tensor::from_slice(&[1i64, 1000]).view([1, 2]), None, None)
        .unwrap_err();
    assert!(
        err.to_string().contains("token id 1000 is out of range"),
        "{err}"
    );
    let err = model
        .forward(&Tensor::from_slice(&[-3i64]).view([1, 1]), None, None)
        .unwrap_err();
    assert!(err.to_string().contains("-3"), "{err}");
}
