//! The wkv7 op against two independent oracles:
//! - the same recurrence composed from stock tensor ops in float64, differentiated by autograd;
//! - a plain-Rust float64 loop for the forward pass (checks the composed oracle itself).

use rwkvtune_kernels::wkv7;
use tch::{Device, Kind, Tensor};

/// Inputs shaped like the model's: decay in (0.55, 1), a = -κ, b = κ·α with κ unit-norm per head.
struct Inputs {
    r: Tensor,
    w: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    s0: Tensor,
}

fn inputs(b: i64, t: i64, h: i64, n: i64, seed: i64) -> Inputs {
    tch::manual_seed(seed);
    let o = (Kind::Double, Device::Cpu);
    let kappa = Tensor::randn([b, t, h, n], o);
    let kappa = &kappa / kappa.norm_scalaropt_dim(2, [-1], true);
    let alpha = Tensor::rand([b, t, h, n], o);
    Inputs {
        r: Tensor::randn([b, t, h, n], o) * 0.5,
        w: (Tensor::rand([b, t, h, n], o).sigmoid() * -0.6065).exp(),
        k: Tensor::randn([b, t, h, n], o) * 0.5,
        v: Tensor::randn([b, t, h, n], o) * 0.5,
        a: -&kappa,
        b: &kappa * alpha,
        s0: Tensor::randn([b, h, n, n], o) * 0.3,
    }
}

/// The recurrence from stock ops: S = S diag(w) + (S a) bᵀ + v kᵀ, y = S r.
fn composed(x: &[&Tensor; 7]) -> (Tensor, Tensor) {
    let [r, w, k, v, a, b, s0] = *x;
    let t_len = r.size()[1];
    let mut s = s0.shallow_clone();
    let mut ys = Vec::new();
    for t in 0..t_len {
        let at = |x: &Tensor| x.select(1, t); // [B, H, N]
        let sa = s.matmul(&at(a).unsqueeze(-1)); // [B, H, N, 1]
        s = &s * at(w).unsqueeze(2)
            + sa * at(b).unsqueeze(2)
            + at(v).unsqueeze(-1) * at(k).unsqueeze(2);
        ys.push(s.matmul(&at(r).unsqueeze(-1)).squeeze_dim(-1));
    }
    (Tensor::stack(&ys, 1), s)
}

/// Plain loops in f64 over flat buffers, index (b, t, h, n).
fn loop_forward(x: &Inputs) -> (Vec<f64>, Vec<f64>) {
    let [bn, tn, hn, nn] = <[i64; 4]>::try_from(x.r.size())
        .unwrap()
        .map(|d| d as usize);
    let flat = |t: &Tensor| Vec::<f64>::try_from(t.flatten(0, -1)).unwrap();
    let (r, w, k, v, a, b) = (
        flat(&x.r),
        flat(&x.w),
        flat(&x.k),
        flat(&x.v),
        flat(&x.a),
        flat(&x.b),
    );
    let mut s = flat(&x.s0);
    let mut y = vec![0.0; r.len()];
    for bi in 0..bn {
        for h in 0..hn {
            let st = &mut s[(bi * hn + h) * nn * nn..(bi * hn + h + 1) * nn * nn];
            for t in 0..tn {
                let o = ((bi * tn + t) * hn + h) * nn;
                for i in 0..nn {
                    let sa: f64 = (0..nn).map(|j| st[i * nn + j] * a[o + j]).sum();
                    for j in 0..nn {
                        st[i * nn + j] =
                            st[i * nn + j] * w[o + j] + sa * b[o + j] + v[o + i] * k[o + j];
                    }
                    y[o + i] = (0..nn).map(|j| st[i * nn + j] * r[o + j]).sum();
                }
            }
        }
    }
    (y, s)
}

fn rel_err(cand: &Tensor, reference: &Tensor) -> f64 {
    let c = cand.to_kind(Kind::Double);
    let d = (&c - reference).norm().double_value(&[]);
    d / reference.norm().double_value(&[]).max(1e-30)
}

const NAMES: [&str; 7] = ["r", "w", "k", "v", "a", "b", "s0"];

/// Runs op and oracle with random upstream gradients; returns relative errors for
/// y, the final state and the seven input gradients.
fn compare(kind: Kind, bsz: i64, t: i64, h: i64, n: i64, seed: i64) -> Vec<(String, f64)> {
    let x = inputs(bsz, t, h, n, seed);
    let all = [&x.r, &x.w, &x.k, &x.v, &x.a, &x.b, &x.s0];
    let gy = Tensor::randn([bsz, t, h, n], (Kind::Double, Device::Cpu));
    let gs = Tensor::randn([bsz, h, n, n], (Kind::Double, Device::Cpu));

    let leaves_ref: Vec<Tensor> = all
        .iter()
        .map(|t| t.detach().copy().set_requires_grad(true))
        .collect();
    let refs: [&Tensor; 7] = std::array::from_fn(|i| &leaves_ref[i]);
    let (y_ref, s_ref) = composed(&refs);
    ((&y_ref * &gy).sum(Kind::Double) + (&s_ref * &gs).sum(Kind::Double)).backward();

    let leaves: Vec<Tensor> = all
        .iter()
        .map(|t| t.to_kind(kind).detach().copy().set_requires_grad(true))
        .collect();
    let (y, s) = wkv7(
        &leaves[0], &leaves[1], &leaves[2], &leaves[3], &leaves[4], &leaves[5], &leaves[6],
    )
    .unwrap();
    assert_eq!(y.kind(), kind, "y comes back in the input dtype");
    let acc = if kind == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    };
    assert_eq!(s.kind(), acc, "state is kept in the accumulation dtype");
    ((&y.to_kind(acc) * gy.to_kind(acc)).sum(acc) + (&s * gs.to_kind(acc)).sum(acc)).backward();

    let mut errs = vec![
        ("y".to_string(), rel_err(&y, &y_ref.detach())),
        ("state".to_string(), rel_err(&s, &s_ref.detach())),
    ];
    for (i, name) in NAMES.iter().enumerate() {
        let g = leaves[i].grad();
        assert!(g.defined(), "no gradient reached {name}");
        assert_eq!(g.kind(), kind, "gradient of {name} in its input's dtype");
        errs.push((format!("d{name}"), rel_err(&g, &leaves_ref[i].grad())));
    }
    errs
}

fn report_and_check(label: &str, errs: &[(String, f64)], tol: f64) {
    let line: Vec<String> = errs.iter().map(|(n, e)| format!("{n} {e:.2e}")).collect();
    println!("{label}: {}", line.join(", "));
    for (n, e) in errs {
        assert!(
            *e <= tol,
            "{label}: relative error of {n} is {e:.3e} > {tol:.0e}"
        );
    }
}

#[test]
fn composed_oracle_matches_plain_f64_loop() {
    let x = inputs(2, 19, 2, 4, 7);
    let (y_loop, s_loop) = loop_forward(&x);
    let (y, s) = composed(&[&x.r, &x.w, &x.k, &x.v, &x.a, &x.b, &x.s0]);
    let y = Vec::<f64>::try_from(y.flatten(0, -1)).unwrap();
    let s = Vec::<f64>::try_from(s.flatten(0, -1)).unwrap();
    let max = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    };
    assert!(max(&y, &y_loop) < 1e-12 && max(&s, &s_loop) < 1e-12);
}

#[test]
fn fp32_matches_f64_oracle_across_chunk_boundaries() {
    // T = 37 crosses two backward checkpoints and ends mid-chunk; N = 32 like a small model.
    let errs = compare(Kind::Float, 2, 37, 3, 32, 1);
    report_and_check("fp32 B2 T37 H3 N32", &errs, 1e-4);
}

#[test]
fn fp32_head_size_64_long_sequence() {
    let errs = compare(Kind::Float, 1, 100, 2, 64, 2);
    report_and_check("fp32 B1 T100 H2 N64", &errs, 1e-4);
}

#[test]
fn single_step_and_exact_chunk_lengths() {
    for t in [1, 16, 32] {
        let errs = compare(Kind::Float, 2, t, 2, 8, 3 + t);
        report_and_check(&format!("fp32 T{t}"), &errs, 1e-4);
    }
}

#[test]
fn f64_op_equals_composed_autograd() {
    // Same arithmetic in f64: agreement to rounding, so any formula slip in backward shows.
    let errs = compare(Kind::Double, 2, 21, 2, 8, 5);
    report_and_check("f64", &errs, 1e-10);
}

#[test]
fn bf16_inputs_run_with_fp32_state() {
    let errs = compare(Kind::BFloat16, 1, 8, 1, 8, 6);
    // bf16 inputs carry ~3 significant digits; the point is dtype plumbing, not precision.
    report_and_check("bf16", &errs, 5e-2);
}

#[test]
fn chunked_calls_carry_the_state_exactly() {
    let x = inputs(1, 24, 2, 16, 9);
    let f = |t: &Tensor| t.to_kind(Kind::Float);
    let (y_full, s_full) = wkv7(
        &f(&x.r),
        &f(&x.w),
        &f(&x.k),
        &f(&x.v),
        &f(&x.a),
        &f(&x.b),
        &f(&x.s0),
    )
    .unwrap();
    let part = |t: &Tensor, lo, len| f(t).narrow(1, lo, len);
    let (y1, s1) = wkv7(
        &part(&x.r, 0, 10),
        &part(&x.w, 0, 10),
        &part(&x.k, 0, 10),
        &part(&x.v, 0, 10),
        &part(&x.a, 0, 10),
        &part(&x.b, 0, 10),
        &f(&x.s0),
    )
    .unwrap();
    let (y2, s2) = wkv7(
        &part(&x.r, 10, 14),
        &part(&x.w, 10, 14),
        &part(&x.k, 10, 14),
        &part(&x.v, 10, 14),
        &part(&x.a, 10, 14),
        &part(&x.b, 10, 14),
        &s1,
    )
    .unwrap();
    let y = Tensor::cat(&[y1, y2], 1);
    assert!((y - y_full).abs().max().double_value(&[]) < 1e-6);
    assert!((s2 - s_full).abs().max().double_value(&[]) < 1e-6);
}

#[test]
fn bad_shapes_are_errors_not_aborts() {
    let o = (Kind::Float, Device::Cpu);
    let good = Tensor::zeros([1, 4, 2, 8], o);
    let bad = Tensor::zeros([1, 4, 2, 7], o);
    let s0 = Tensor::zeros([1, 2, 8, 8], o);
    let err = wkv7(&good, &good, &bad, &good, &good, &good, &s0).unwrap_err();
    assert!(err.0.contains("k has shape"), "{}", err.0);
    let err = wkv7(
        &good,
        &good,
        &good,
        &good,
        &good,
        &good,
        &Tensor::zeros([1, 2, 8], o),
    )
    .unwrap_err();
    assert!(err.0.contains("state must be"), "{}", err.0);
}
