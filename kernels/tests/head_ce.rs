//! The fused head + cross-entropy + L2Wrap op against the same loss composed from stock tensor ops
//! in float64 and differentiated by autograd (the oracle), and the fused AdamW step against the
//! update written out by hand.

use rwkvtune_kernels::{adamw_step, head_ce, AdamWStep};
use tch::{Device, Kind, Tensor};

const L2WRAP: f64 = 1e-4;

/// The unfused loss: full logits, token-sum cross-entropy times `ce_scale`, plus L2Wrap as the
/// extra loss `0.5 · l2_scale · Σ max²` with its value subtracted back out.
fn composed(x: &Tensor, w: &Tensor, labels: &Tensor, ce_scale: f64, l2_scale: f64) -> Tensor {
    let z = x.matmul(&w.tr()).to_kind(Kind::Double);
    let ce =
        z.cross_entropy_loss::<Tensor>(labels, None, tch::Reduction::Sum, -100, 0.0) * ce_scale;
    let (m, _) = z.max_dim(-1, false);
    let extra = m.square().sum(Kind::Double) * (0.5 * l2_scale);
    &ce + &extra - extra.detach()
}

struct Case {
    x: Tensor,
    w: Tensor,
    labels: Tensor,
}

fn case(n: i64, c: i64, v: i64, kind: Kind, seed: i64) -> Case {
    tch::manual_seed(seed);
    let o = (Kind::Double, Device::Cpu);
    let labels = Tensor::randint(v, [n], (Kind::Int64, Device::Cpu));
    // Every third position unscored, as prompts and padding are.
    let unscored = Tensor::arange(n, (Kind::Int64, Device::Cpu))
        .remainder(3)
        .eq(1);
    let labels = labels.masked_fill(&unscored, -100);
    Case {
        x: (Tensor::randn([n, c], o) * 2.0).to_kind(kind),
        w: Tensor::randn([v, c], o).to_kind(kind),
        labels,
    }
}

fn grads(f: impl Fn(&Tensor, &Tensor) -> Tensor, c: &Case) -> (f64, Tensor, Tensor) {
    let x = c.x.detach().copy().set_requires_grad(true);
    let w = c.w.detach().copy().set_requires_grad(true);
    let loss = f(&x, &w);
    // A scale other than 1 checks that backward applies the incoming gradient.
    (
        loss.double_value(&[]),
        {
            (loss * 3.0).backward();
            x.grad()
        },
        w.grad(),
    )
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_kind(Kind::Double);
    let b = b.to_kind(Kind::Double);
    (&a - &b).norm().double_value(&[]) / b.norm().double_value(&[]).max(1e-300)
}

#[test]
fn matches_the_composed_loss_in_float64_across_chunks() {
    // 100 rows of a 65536 vocabulary do not fit one chunk: the chunk loop is exercised.
    let c = case(100, 16, 65536, Kind::Double, 1);
    for l2 in [0.0, L2WRAP / 100.0] {
        let (lf, xf, wf) = grads(|x, w| head_ce(x, w, &c.labels, 1.0 / 67.0, l2).unwrap(), &c);
        let (lc, xc, wc) = grads(|x, w| composed(x, w, &c.labels, 1.0 / 67.0, l2), &c);
        assert!((lf - lc).abs() <= 1e-12 * lc.abs(), "loss {lf} vs {lc}");
        assert!(rel(&xf, &xc) < 1e-12, "dx rel err {}", rel(&xf, &xc));
        assert!(rel(&wf, &wc) < 1e-12, "dw rel err {}", rel(&wf, &wc));
        assert_eq!(xf.kind(), Kind::Double);
    }
}

#[test]
fn l2wrap_moves_only_the_gradient() {
    let c = case(7, 8, 50, Kind::Double, 2);
    let (l0, x0, w0) = grads(|x, w| head_ce(x, w, &c.labels, 0.1, 0.0).unwrap(), &c);
    let (l1, x1, w1) = grads(|x, w| head_ce(x, w, &c.labels, 0.1, 0.5).unwrap(), &c);
    assert_eq!(l0, l1);
    assert!(rel(&x1, &x0) > 1e-3 && rel(&w1, &w0) > 1e-3);
}

#[test]
fn fp32_and_bf16_inputs_track_the_oracle_and_keep_their_dtypes() {
    for (kind, tol) in [(Kind::Float, 1e-5), (Kind::BFloat16, 2e-2)] {
        let c = case(64, 32, 3000, kind, 3);
        let (lf, xf, wf) = grads(
            |x, w| head_ce(x, w, &c.labels, 1.0 / 43.0, 1e-6).unwrap(),
            &c,
        );
        let c64 = Case {
            x: c.x.to_kind(Kind::Double),
            w: c.w.to_kind(Kind::Double),
            labels: c.labels.shallow_clone(),
        };
        let (lc, xc, wc) = grads(|x, w| composed(x, w, &c64.labels, 1.0 / 43.0, 1e-6), &c64);
        assert!(
            (lf - lc).abs() <= tol * lc.abs(),
            "{kind:?} loss {lf} vs {lc}"
        );
        assert!(rel(&xf, &xc) < tol, "{kind:?} dx rel err {}", rel(&xf, &xc));
        assert!(rel(&wf, &wc) < tol, "{kind:?} dw rel err {}", rel(&wf, &wc));
        assert_eq!((xf.kind(), wf.kind()), (kind, kind));
    }
}

#[test]
fn no_scored_tokens_give_zero_loss_and_only_the_l2wrap_gradient() {
    let c = case(5, 4, 20, Kind::Double, 4);
    let none = c.labels.full_like(-100);
    let (l, x, _) = grads(|x, w| head_ce(x, w, &none, 1.0, 0.0).unwrap(), &c);
    assert_eq!(l, 0.0);
    assert_eq!(x.abs().max().double_value(&[]), 0.0);
}

#[test]
fn without_grad_mode_it_is_a_plain_loss() {
    let c = case(9, 4, 30, Kind::Float, 5);
    let w = c.w.set_requires_grad(true);
    let loss = tch::no_grad(|| head_ce(&c.x, &w, &c.labels, 0.5, 1e-4).unwrap());
    assert!(!loss.requires_grad());
    let want = composed(
        &c.x.to_kind(Kind::Double),
        &w.to_kind(Kind::Double),
        &c.labels,
        0.5,
        0.0,
    );
    assert!((loss.double_value(&[]) - want.double_value(&[])).abs() < 1e-4);
}

#[test]
fn bad_labels_and_shapes_are_errors_not_aborts() {
    let c = case(4, 4, 10, Kind::Float, 6);
    let bad = Tensor::from_slice(&[1i64, 10, -100, 2]);
    let e = head_ce(&c.x, &c.w, &bad, 1.0, 0.0).unwrap_err();
    assert!(e.0.contains("outside the vocabulary"), "{e}");
    let e = head_ce(&c.x, &c.w.narrow(1, 0, 3), &c.labels, 1.0, 0.0).unwrap_err();
    assert!(e.0.contains("head weight must be"), "{e}");
}

#[test]
fn adamw_step_matches_the_update_written_out() {
    tch::manual_seed(7);
    let o = (Kind::Float, Device::Cpu);
    // A trained leaf: the step must not be recorded, nor refused as an in-place op on it.
    let p = Tensor::randn([300], o).set_requires_grad(true);
    let g = Tensor::randn([300], o);
    let m = Tensor::randn([300], o) * 0.1;
    let v = Tensor::rand([300], o) * 0.01;
    let (lr, b1, b2, wd, eps, step, scale) = (1e-2, 0.9, 0.99, 0.1, 1e-8, 3i64, 0.5);
    let d = |t: &Tensor| t.to_kind(Kind::Double);
    let gs = d(&g) * scale;
    let m_want = d(&m) * b1 + &gs * (1.0 - b1);
    let v_want = d(&v) * b2 + gs.square() * (1.0 - b2);
    let bc1 = 1.0 - b1.powi(step as i32);
    let bc2 = (1.0 - b2.powi(step as i32)).sqrt();
    let p_want = d(&p) * (1.0 - lr * wd) - &m_want / (v_want.sqrt() / bc2 + eps) * (lr / bc1);
    let h = AdamWStep {
        lr,
        beta1: b1,
        beta2: b2,
        weight_decay: wd,
        eps,
        step,
        grad_scale: scale,
    };
    adamw_step(&p, &g, &m, &v, h).unwrap();
    assert!(
        rel(&p, &p_want) < 1e-6,
        "param rel err {}",
        rel(&p, &p_want)
    );
    assert!(rel(&m, &m_want) < 1e-6 && rel(&v, &v_want) < 1e-6);
    let half = Tensor::zeros([3], (Kind::Half, Device::Cpu));
    let e = adamw_step(&half, &half, &half, &half, h).unwrap_err();
    assert!(e.0.contains("fp32"), "{e}");
}
