//! Fresh initialisation for training from scratch, following the official RWKV-7 recipe
//! (RWKV-LM `x070` training code): per-layer ramps for the token-shift mixes, a zigzag pattern
//! across each head for w0/a0, orthogonal×0.1 for the second matrices of the low-rank pairs, and
//! zeros where the recipe uses zeros (w1, a1, v1, g1, the output projections) so a new block
//! starts close to the identity.

use super::{Block, ChannelMix, LayerNorm, Linear, Rwkv7, TimeMix, ValueResidual};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

/// Draws come from our own seeded generator, not libtorch's global one, so the same seed gives
/// the same model whatever else runs in the process (tests, data loaders on other threads).
struct Draws(StdRng);

impl Draws {
    fn uniform(&mut self, shape: &[i64], bound: f64) -> Tensor {
        let n: i64 = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| self.0.gen_range(-bound..bound) as f32)
            .collect();
        Tensor::from_slice(&v).view(shape)
    }

    /// Standard normal samples by Box-Muller.
    fn normal(&mut self, shape: &[i64]) -> Tensor {
        let n: i64 = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                let u1: f64 = 1.0 - self.0.gen::<f64>();
                let u2: f64 = self.0.gen::<f64>();
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
            })
            .collect();
        Tensor::from_slice(&v).view(shape)
    }

    /// `torch.nn.init.orthogonal_` on a fresh [rows, cols] matrix, times `gain`.
    fn orthogonal(&mut self, rows: i64, cols: i64, gain: f64) -> Tensor {
        orthogonal_from(
            self.normal(&[rows.max(cols), rows.min(cols)]),
            rows >= cols,
            gain,
        )
    }
}

fn orthogonal_from(a: Tensor, tall: bool, gain: f64) -> Tensor {
    let (q, r) = Tensor::linalg_qr(&a, "reduced");
    // Sign fix makes the distribution uniform (Haar) rather than biased by the QR convention.
    let q = q * r.diagonal(0, 0, 1).sign().unsqueeze(0);
    let q = if tall { q } else { q.tr() };
    q.contiguous() * gain
}

fn vector(values: impl Iterator<Item = f64>) -> Tensor {
    let v: Vec<f32> = values.map(|x| x as f32).collect();
    let c = v.len() as i64;
    Tensor::from_slice(&v).view([1, 1, c])
}

fn layer_norm(c: i64) -> LayerNorm {
    LayerNorm {
        weight: Tensor::ones([c], (Kind::Float, Device::Cpu)),
        bias: Tensor::zeros([c], (Kind::Float, Device::Cpu)),
    }
}

fn zeros(shape: &[i64]) -> Tensor {
    Tensor::zeros(shape, (Kind::Float, Device::Cpu))
}

impl Rwkv7 {
    /// A freshly initialised model of shape `config`, drawn from `seed` (same seed, same weights).
    pub fn init(config: &ModelConfig, seed: i64, device: Device, kind: Kind) -> Result<Rwkv7> {
        config
            .validate()
            .map_err(|m| Error::InvalidArgument(format!("model config: {m}")))?;
        let mut rng = Draws(StdRng::seed_from_u64(seed as u64));
        let _guard = tch::no_grad_guard();
        let (c, v, n) = (
            config.n_embd as i64,
            config.vocab_size as i64,
            config.head_size_a as i64,
        );
        let h = c / n;
        let l_count = config.n_layer;
        let (dw, dg, dv) = (
            config.dim_att_lora as i64,
            config.dim_gate_lora as i64,
            config.dim_mv_lora as i64,
        );
        let cf = c as f64;
        // Per channel: p = i/C, lin = i/(C-1) - 0.5, zig = z|z| with z the position inside the head.
        let p = |i: i64| i as f64 / cf;
        let lin = |i: i64| i as f64 / (cf - 1.0).max(1.0) - 0.5;
        let half = ((n - 1) as f64 / 2.0).max(f64::MIN_POSITIVE);
        let zig = |i: i64| {
            let z = ((i % n) as f64 - half) / half;
            z * z.abs()
        };
        let chans = || 0..c;

        let mut blocks = Vec::with_capacity(l_count);
        for layer in 0..l_count {
            let r0 = if l_count > 1 {
                layer as f64 / (l_count - 1) as f64
            } else {
                0.0
            };
            let r1 = 1.0 - layer as f64 / l_count as f64;
            let ramp = |e: f64| vector(chans().map(|i| 1.0 - p(i).powf(e)));
            let w0 = vector(chans().map(|i| {
                -6.0 + 6.0 * (i as f64 / (cf - 1.0).max(1.0)).powf(1.0 + r0.powf(0.3))
                    + 0.5
                    + 2.5 * zig(i)
            }));
            let att = TimeMix {
                x_r: ramp(0.2 * r1),
                x_w: ramp(0.9 * r1),
                x_k: ramp(0.7 * r1),
                x_v: ramp(0.7 * r1),
                x_a: ramp(0.9 * r1),
                x_g: ramp(0.2 * r1),
                w0,
                w1: zeros(&[c, dw]),
                w2: rng.orthogonal(dw, c, 0.1),
                a0: vector(chans().map(|i| -0.19 + 0.3 * zig(i) + 0.4 * lin(i))),
                a1: zeros(&[c, dw]),
                a2: rng.orthogonal(dw, c, 0.1),
                v_residual: (layer > 0).then(|| ValueResidual {
                    v0: vector(chans().map(|i| 0.73 - 0.4 * lin(i))),
                    v1: zeros(&[c, dv]),
                    v2: rng.orthogonal(dv, c, 0.1),
                }),
                g1: zeros(&[c, dg]),
                g2: rng.orthogonal(dg, c, 0.1),
                k_k: vector(chans().map(|i| 0.71 - 0.1 * lin(i))),
                k_a: vector(chans().map(|_| 1.02)),
                r_k: Tensor::full([h, n], -0.04, (Kind::Float, Device::Cpu)),
                receptance: Linear::new(rng.uniform(&[c, c], 0.5 / cf.sqrt())),
                key: Linear::new(rng.uniform(&[c, c], 0.05 / cf.sqrt())),
                value: Linear::new(rng.uniform(&[c, c], 0.5 / cf.sqrt())),
                output: Linear::new(zeros(&[c, c])),
                ln_x: layer_norm(c),
            };
            let ffn = ChannelMix {
                x_k: ramp(r1.powi(4)),
                key: Linear::new(rng.uniform(&[4 * c, c], 0.5 / cf.sqrt())),
                value: Linear::new(zeros(&[c, 4 * c])),
            };
            blocks.push(Block {
                ln0: (layer == 0).then(|| layer_norm(c)),
                ln1: layer_norm(c),
                ln2: layer_norm(c),
                att,
                ffn,
            });
        }
        let head_gain = if v > c {
            0.5 * (v as f64 / cf).sqrt()
        } else {
            0.5
        };
        let model = Rwkv7 {
            emb: rng.uniform(&[v, c], 1e-4),
            blocks,
            ln_out: layer_norm(c),
            head: Linear::new(rng.orthogonal(v, c, head_gain)),
            dims: super::ModelDims {
                n_layer: l_count,
                n_embd: c as usize,
                n_head: h as usize,
                head_size: n as usize,
                vocab_size: v as usize,
            },
            config: config.clone(),
            grad_checkpointing: false,
        };
        if device == Device::Cpu && kind == Kind::Float {
            return Ok(model);
        }
        model.to(device, kind)
    }
}
