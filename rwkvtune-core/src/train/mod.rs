//! Supervised training: loss, optimizer, schedule, and (in `trainer`) the loop with checkpoints.

pub mod loss;
pub mod optim;

pub use loss::{lm_loss, Loss, IGNORE_INDEX};
pub use optim::{clip_grad_norm, lr_at, AdamW, OptimParam};
