//! Fresh initialisation follows the official RWKV-7 recipe and produces a working model.

use crate::common::*;
use rwkvtune_core::config::preset;
use rwkvtune_core::hub::{AutoModel, WeightFormat};
use rwkvtune_core::model::Rwkv7;
use tch::{Device, Kind, Tensor};

fn tiny() -> rwkvtune_core::config::ModelConfig {
    let mut cfg = preset("rwkv7-demo").unwrap();
    cfg.vocab_size = 1000;
    cfg.n_layer = 3;
    cfg
}

#[test]
fn init_matches_the_official_recipe() {
    let cfg = tiny();
    let m = Rwkv7::init(&cfg, 1, Device::Cpu, Kind::Float).unwrap();
    let c = cfg.n_embd as i64;
    let scalar = |t: &Tensor, i: i64| t.flatten(0, -1).double_value(&[i]);
    let b0 = &m.blocks[0].att;
    // Layer 0: ratio_1_to_almost0 = 1, so x_r = 1 - (i/C)^0.2.
    assert!((scalar(&b0.x_r, 0) - 1.0).abs() < 1e-6);
    assert!((scalar(&b0.x_r, 64) - (1.0 - (64.0f64 / c as f64).powf(0.2))).abs() < 1e-6);
    // w0 at channel 0 of layer 0: -6 + 0 + 0.5 + 2.5 * zigzag(-1) = -8.
    assert!((scalar(&b0.w0, 0) + 8.0).abs() < 1e-5);
    // Zeros where the recipe has zeros.
    for t in [
        &b0.w1,
        &b0.a1,
        &b0.g1,
        &b0.output.weight,
        &m.blocks[1].ffn.value.weight,
    ] {
        assert_eq!(t.abs().max().double_value(&[]), 0.0);
    }
    assert!(b0.v_residual.is_none() && m.blocks[1].att.v_residual.is_some());
    // Orthogonal x 0.1: rows of w2 [D, C] are orthogonal with norm 0.1.
    let gram = b0.w2.matmul(&b0.w2.tr());
    let eye = Tensor::eye(b0.w2.size()[0], (Kind::Float, Device::Cpu)) * 0.01;
    assert!(max_abs_diff(&gram, &eye) < 1e-5);
    assert!((scalar(&b0.r_k, 0) + 0.04).abs() < 1e-7 && (scalar(&b0.k_a, 3) - 1.02).abs() < 1e-6);
    // A fresh model is a valid model: finite logits of the right shape.
    let (logits, _) = m
        .forward(&Tensor::from_slice(&[1i64, 2, 3]).view([1, 3]), None, None)
        .unwrap();
    assert_eq!(logits.size(), [1, 3, 1000]);
    assert!(logits.isfinite().all().int64_value(&[]) == 1);
}

#[test]
fn same_seed_same_weights_and_round_trip() {
    let cfg = tiny();
    let a = Rwkv7::init(&cfg, 7, Device::Cpu, Kind::Float).unwrap();
    let b = Rwkv7::init(&cfg, 7, Device::Cpu, Kind::Float).unwrap();
    let c = Rwkv7::init(&cfg, 8, Device::Cpu, Kind::Float).unwrap();
    let pairs = a
        .named_tensors()
        .into_iter()
        .zip(b.named_tensors())
        .zip(c.named_tensors());
    let mut differs = false;
    for (((n, x), (_, y)), (_, z)) in pairs {
        assert_eq!(max_abs_diff(&x, &y), 0.0, "{n} differs for the same seed");
        differs |= max_abs_diff(&x, &z) > 0.0;
    }
    assert!(differs, "a different seed must give different weights");
    let dir = tempfile::tempdir().unwrap();
    AutoModel::save_pretrained(&a, dir.path(), WeightFormat::Safetensors).unwrap();
    let back = AutoModel::from_pretrained(dir.path(), Device::Cpu, Kind::Float).unwrap();
    assert_eq!(back.config.n_layer, 3);
    let ids = Tensor::from_slice(&[4i64, 9]).view([1, 2]);
    let _g = tch::no_grad_guard();
    assert_eq!(
        max_abs_diff(
            &a.forward(&ids, None, None).unwrap().0,
            &back.forward(&ids, None, None).unwrap().0
        ),
        0.0
    );
}
