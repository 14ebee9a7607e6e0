//! The tensors a run trains and their optimizer, shared by the supervised and GRPO loops:
//! fp32 master copies under mixed precision, the RWKV parameter groups, gradients gathered in
//! fp32, and the step that writes the updated masters back into the model.

use super::checkpoint::{self, Restored, TrainerState};
use super::optim::{AdamW, OptimParam};
use crate::error::{Error, Result};
use crate::model::Rwkv7;
use std::path::Path;
use tch::{Kind, Tensor};

pub struct TrainedParams {
    /// The model's trained tensors by name (shallow clones: same storage and grads).
    pub named: Vec<(String, Tensor)>,
    /// fp32 copies that the optimizer updates when the model is bf16/fp16; empty in fp32.
    pub master: Vec<Tensor>,
    pub opt: AdamW,
}

impl TrainedParams {
    /// The trainable tensors of `model` ([`super::trainable_tensors`]) with an AdamW over them.
    pub fn new(model: &Rwkv7, weight_decay: f64, beta1: f64, beta2: f64, eps: f64) -> Self {
        let named = super::trainable_tensors(model);
        let master: Vec<Tensor> = if model.kind() != Kind::Float {
            named
                .iter()
                .map(|(_, t)| t.detach().to_kind(Kind::Float).copy())
                .collect()
        } else {
            Vec::new()
        };
        let params = named
            .iter()
            .enumerate()
            .map(|(i, (n, t))| OptimParam::grouped(n, master.get(i).unwrap_or(t), weight_decay))
            .collect();
        TrainedParams {
            named,
            master,
            opt: AdamW::new(params, beta1, beta2, eps),
        }
    }

    /// The accumulated gradients in fp32, divided by the loss scale.
    pub fn grads(&self, loss_scale: f64) -> Vec<Tensor> {
        self.named
            .iter()
            .map(|(_, t)| {
                let g = t.grad();
                if g.defined() && (g.kind() != Kind::Float || loss_scale != 1.0) {
                    g.to_kind(Kind::Float) / loss_scale
                } else {
                    g
                }
            })
            .collect()
    }

    /// One AdamW step with `grads` times `grad_scale` (the clipping coefficient), then the
    /// updated masters copied into the model.
    pub fn step(&mut self, lr: f64, grads: &[Tensor], grad_scale: f64) -> Result<()> {
        self.opt.step_with(lr, grads, grad_scale)?;
        if !self.master.is_empty() {
            let _g = tch::no_grad_guard();
            for ((_, t), m) in self.named.iter().zip(&self.master) {
                t.shallow_clone().copy_(m);
            }
        }
        Ok(())
    }

    pub fn zero_grad(&self) -> Result<()> {
        for (_, t) in &self.named {
            rwkvtune_kernels::clear_grad(t)?;
        }
        Ok(())
    }

    /// What a checkpoint stores of them (fp32; the masters under mixed precision).
    pub fn snapshot(&self) -> Vec<(String, Tensor)> {
        checkpoint::trainable_snapshot(&self.named, &self.master)
    }

    /// Loads a checkpoint's tensors and optimizer moments; returns its saved state.
    pub fn restore(&mut self, dir: &Path, restored: Restored) -> Result<TrainerState> {
        checkpoint::restore(dir, restored, &self.named, &self.master, &mut self.opt)
    }

    /// Resumes from checkpoint `spec` (a directory or `latest` in `proj_dir`): refuses other
    /// data or batching, restores tensors and moments, and moves `state` (step, data cursor,
    /// counters, loss scale) to where the checkpoint was taken. Returns that step.
    pub fn resume(&mut self, spec: &str, proj_dir: &Path, state: &mut TrainerState) -> Result<u64> {
        let dir = checkpoint::resolve(spec, proj_dir)?;
        let restored = checkpoint::load(&dir)?;
        if restored.state.batcher != state.batcher
            || restored.state.data_fingerprint != state.data_fingerprint
        {
            return Err(Error::checkpoint(
                &dir,
                "the data or micro_bsz/seed differ from the run that wrote this checkpoint; resume with the same data and settings",
            ));
        }
        if restored.state.config.devices != state.config.devices {
            return Err(Error::checkpoint(
                &dir,
                format!(
                    "written by a run on {} devices; resume with devices = {} (the data cursor and schedule depend on it)",
                    restored.state.config.devices, restored.state.config.devices
                ),
            ));
        }
        let saved = self.restore(&dir, restored)?;
        state.step = saved.step;
        state.cursor = saved.cursor;
        state.consecutive_bad_steps = saved.consecutive_bad_steps;
        state.skipped_steps = saved.skipped_steps;
        state.loss_scale = saved.loss_scale;
        Ok(saved.step)
    }
}
