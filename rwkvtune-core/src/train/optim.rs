//! AdamW on tch tensors (so its state is ours to checkpoint), global-norm clipping and the
//! learning-rate schedule.
//!
//! Parameter groups follow the official RWKV recipe: weight decay only on 2-D `.weight` matrices,
//! `att.w0` (the decay bias) at 2× the learning rate, everything else 1×.

use rwkvtune_kernels::{adamw_step, clear_grad, AdamWStep, KernelError};
use std::collections::HashMap;
use tch::{Kind, Tensor};

/// One trainable tensor and its group settings.
pub struct OptimParam {
    pub name: String,
    /// Shares storage and grad with the model's tensor (a shallow clone).
    pub tensor: Tensor,
    pub lr_scale: f64,
    pub weight_decay: f64,
}

impl OptimParam {
    /// Applies the RWKV grouping rule to a named model tensor.
    pub fn grouped(name: &str, tensor: &Tensor, weight_decay: f64) -> Self {
        let decays = tensor.dim() >= 2
            && name.ends_with(".weight")
            && tensor.size().iter().filter(|&&d| d > 1).count() >= 2;
        OptimParam {
            name: name.to_string(),
            tensor: tensor.shallow_clone(),
            lr_scale: if name.ends_with("att.w0") { 2.0 } else { 1.0 },
            weight_decay: if decays { weight_decay } else { 0.0 },
        }
    }
}

/// Adam with decoupled weight decay (PyTorch's `AdamW`, without amsgrad).
pub struct AdamW {
    pub params: Vec<OptimParam>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Optimizer steps taken so far.
    pub step: i64,
}

impl AdamW {
    pub fn new(params: Vec<OptimParam>, beta1: f64, beta2: f64, eps: f64) -> Self {
        let zeros = |p: &OptimParam| p.tensor.zeros_like().to_kind(Kind::Float).detach();
        AdamW {
            exp_avg: params.iter().map(zeros).collect(),
            exp_avg_sq: params.iter().map(zeros).collect(),
            params,
            beta1,
            beta2,
            eps,
            step: 0,
        }
    }

    /// One update with base learning rate `lr`, reading each parameter's own `.grad()`.
    pub fn step(&mut self, lr: f64) -> Result<(), KernelError> {
        let grads: Vec<Tensor> = self.params.iter().map(|p| p.tensor.grad()).collect();
        self.step_with(lr, &grads, 1.0)
    }

    /// One update from explicit gradients (one per parameter, in order; an undefined tensor
    /// leaves that parameter alone). Mixed precision passes the fp32-upcast gradients of the
    /// low-precision model here while `params` are the fp32 master weights.
    pub fn step_with(
        &mut self,
        lr: f64,
        grads: &[Tensor],
        grad_scale: f64,
    ) -> Result<(), KernelError> {
        self.step += 1;
        for (i, (p, g)) in self.params.iter().zip(grads).enumerate() {
            if !g.defined() {
                continue;
            }
            // One fused pass over parameter, gradient and moments (fp32: masters under mixed
            // precision, the model's own tensors otherwise).
            adamw_step(
                &p.tensor,
                g,
                &self.exp_avg[i],
                &self.exp_avg_sq[i],
                AdamWStep {
                    lr: lr * p.lr_scale,
                    beta1: self.beta1,
                    beta2: self.beta2,
                    weight_decay: p.weight_decay,
                    eps: self.eps,
                    step: self.step,
                    grad_scale,
                },
            )?;
        }
        Ok(())
    }

    pub fn zero_grad(&mut self) -> Result<(), KernelError> {
        for p in &self.params {
            clear_grad(&p.tensor)?;
        }
        Ok(())
    }

    /// The moments by parameter name (`exp_avg/<name>`, `exp_avg_sq/<name>`), for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (i, p) in self.params.iter().enumerate() {
            out.push((
                format!("exp_avg/{}", p.name),
                self.exp_avg[i].shallow_clone(),
            ));
            out.push((
                format!("exp_avg_sq/{}", p.name),
                self.exp_avg_sq[i].shallow_clone(),
            ));
        }
        out
    }

    /// Restores moments saved by [`AdamW::state_tensors`]; every parameter must be present.
    pub fn load_state(
        &mut self,
        mut saved: HashMap<String, Tensor>,
        step: i64,
    ) -> Result<(), String> {
        for (i, p) in self.params.iter().enumerate() {
            for (key, slot) in [
                ("exp_avg", &mut self.exp_avg[i]),
                ("exp_avg_sq", &mut self.exp_avg_sq[i]),
            ] {
                let name = format!("{key}/{}", p.name);
                let t = saved
                    .remove(&name)
                    .ok_or_else(|| format!("optimizer state lacks `{name}`"))?;
                if t.size() != slot.size() {
                    return Err(format!(
                        "optimizer state `{name}` has shape {:?}, expected {:?}",
                        t.size(),
                        slot.size()
                    ));
                }
                *slot = t.to_kind(Kind::Float).to_device(slot.device());
            }
        }
        self.step = step;
        Ok(())
    }
}

/// The global gradient norm and what clipping makes of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clip {
    /// L2 norm over all gradients (per-tensor norms, their squares summed in f64).
    pub norm: f64,
    /// Factor the gradients are to be multiplied by: PyTorch's `clip_grad_norm_` rule,
    /// max_norm / (norm + 1e-6) capped at 1; 1 when `max_norm <= 0` or the norm is not finite.
    /// The optimizer applies it inside its fused update (no separate pass over the gradients).
    pub coef: f64,
}

/// Measures `grads` (undefined ones skipped) for clipping to `max_norm`.
pub fn clip_coefficient(grads: &[Tensor], max_norm: f64) -> Clip {
    let _guard = tch::no_grad_guard();
    let norm: f64 = grads
        .iter()
        .filter(|g| g.defined())
        .map(|g| g.to_kind(Kind::Float).norm().double_value(&[]).powi(2))
        .sum::<f64>()
        .sqrt();
    let coef = if max_norm > 0.0 && norm.is_finite() {
        (max_norm / (norm + 1e-6)).min(1.0)
    } else {
        1.0
    };
    Clip { norm, coef }
}

/// Learning rate at optimizer step `step` (0-based): linear warmup from 0 over `warmup_steps`,
/// then cosine decay from `lr_init` to `lr_final` at `total_steps`.
pub fn lr_at(step: i64, total_steps: i64, warmup_steps: i64, lr_init: f64, lr_final: f64) -> f64 {
    if warmup_steps > 0 && step < warmup_steps {
        return lr_init * (step + 1) as f64 / warmup_steps as f64;
    }
    let span = (total_steps - warmup_steps).max(1) as f64;
    let progress = ((step - warmup_steps) as f64 / span).clamp(0.0, 1.0);
    lr_final + (lr_init - lr_final) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// AdamW over the one tensor `w`, learning-rate scale 1, no weight decay.
    fn single(w: &Tensor, beta1: f64, beta2: f64) -> AdamW {
        let p = OptimParam {
            name: "w".into(),
            tensor: w.shallow_clone(),
            lr_scale: 1.0,
            weight_decay: 0.0,
        };
        AdamW::new(vec![p], beta1, beta2, 1e-8)
    }

    #[test]
    fn first_adam_step_is_lr_times_sign() {
        let w = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).set_requires_grad(true);
        (&w * Tensor::from_slice(&[0.5f32, -2.0, 0.0]))
            .sum(Kind::Float)
            .backward();
        let mut opt = single(&w, 0.9, 0.99);
        opt.step(1e-3).unwrap();
        let got: Vec<f32> = Vec::try_from(w.detach()).unwrap();
        assert!(
            (got[0] - 0.999).abs() < 1e-6 && (got[1] - 2.001).abs() < 1e-6 && got[2] == 3.0,
            "{got:?}"
        );
    }

    #[test]
    fn grouping_rule() {
        let m = Tensor::zeros([4, 4], (Kind::Float, Device::Cpu));
        let v = Tensor::zeros([1, 1, 4], (Kind::Float, Device::Cpu));
        assert_eq!(
            OptimParam::grouped("blocks.0.att.key.weight", &m, 0.1).weight_decay,
            0.1
        );
        assert_eq!(
            OptimParam::grouped("blocks.0.att.w1", &m, 0.1).weight_decay,
            0.0
        );
        assert_eq!(
            OptimParam::grouped("blocks.0.ln1.weight", &v, 0.1).weight_decay,
            0.0
        );
        assert_eq!(
            OptimParam::grouped("blocks.3.att.w0", &v, 0.1).lr_scale,
            2.0
        );
    }

    #[test]
    fn schedule_warms_up_then_decays_to_lr_final() {
        assert!((lr_at(0, 100, 10, 1e-3, 1e-5) - 1e-4).abs() < 1e-12);
        assert!((lr_at(9, 100, 10, 1e-3, 1e-5) - 1e-3).abs() < 1e-12);
        assert!((lr_at(10, 100, 10, 1e-3, 1e-5) - 1e-3).abs() < 1e-12);
        assert!((lr_at(100, 100, 10, 1e-3, 1e-5) - 1e-5).abs() < 1e-12);
        let mid = lr_at(55, 100, 10, 1e-3, 1e-5);
        assert!((mid - (1e-5 + (1e-3 - 1e-5) * 0.5)).abs() < 1e-9);
    }

    #[test]
    fn clipping_scales_to_max_norm_inside_the_update() {
        let g = Tensor::from_slice(&[3.0f32, 4.0]);
        let clip = clip_coefficient(&[g.shallow_clone()], 1.0);
        assert!((clip.norm - 5.0).abs() < 1e-9 && (clip.coef - 1.0 / (5.0 + 1e-6)).abs() < 1e-12);
        assert_eq!(clip_coefficient(&[g.shallow_clone()], 10.0).coef, 1.0);
        assert_eq!(clip_coefficient(&[g.shallow_clone()], 0.0).coef, 1.0);
        // The second moment after one step holds the gradient as the update saw it:
        // v = (1 − β2) (coef · g)².
        let w = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        let mut opt = single(&w, 0.0, 0.5);
        opt.step_with(1e-3, &[g], clip.coef).unwrap();
        let v: Vec<f32> = Vec::try_from(&opt.state_tensors()[1].1).unwrap();
        assert!(
            (v[0] - 0.5 * 0.36).abs() < 1e-6 && (v[1] - 0.5 * 0.64).abs() < 1e-6,
            "{v:?}"
        );
    }
}
