//! Activation checkpointing gives the same loss and gradients as the plain computation.

use rwkvtune_kernels::checkpoint;
use tch::{Device, Kind, Tensor};

#[test]
fn checkpointed_blocks_match_plain_gradients_and_recompute() {
    tch::manual_seed(0);
    let o = (Kind::Double, Device::Cpu);
    let w1 = (Tensor::randn([8, 8], o) * 0.3).set_requires_grad(true);
    let w2 = (Tensor::randn([8, 8], o) * 0.3).set_requires_grad(true);
    let x = Tensor::randn([4, 8], o).set_requires_grad(true);
    let calls = std::rc::Rc::new(std::cell::Cell::new(0));
    let block = |w1: &Tensor, w2: &Tensor, h: &Tensor| h + h.matmul(w1).tanh().matmul(w2);

    let plain = block(&w1, &w2, &block(&w1, &w2, &x));
    plain.square().sum(Kind::Double).backward();
    let (g1, g2, gx) = (w1.grad().copy(), w2.grad().copy(), x.grad().copy());
    for t in [&w1, &w2, &x] {
        t.shallow_clone().zero_grad();
    }

    let run = |h: &Tensor| {
        let (w1, w2, c) = (w1.shallow_clone(), w2.shallow_clone(), calls.clone());
        checkpoint(
            move |ins: &[Tensor]| {
                c.set(c.get() + 1);
                Ok(vec![
                    ins[0].shallow_clone() + ins[0].matmul(&w1).tanh().matmul(&w2),
                ])
            },
            &[h],
        )
        .unwrap()
        .remove(0)
    };
    let y = run(&run(&x));
    assert_eq!(calls.get(), 2);
    assert_eq!((&y - &plain).abs().max().double_value(&[]), 0.0);
    y.square().sum(Kind::Double).backward();
    assert_eq!(calls.get(), 4, "each block is recomputed once in backward");
    for (a, b) in [(&g1, w1.grad()), (&g2, w2.grad()), (&gx, x.grad())] {
        assert!((a - b).abs().max().double_value(&[]) < 1e-12);
    }
}

#[test]
fn errors_in_the_function_surface_as_errors() {
    let x = Tensor::ones([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let err = checkpoint(|_: &[Tensor]| Err("boom".to_string()), &[&x]).unwrap_err();
    assert!(err.0.contains("boom"), "{}", err.0);
}
