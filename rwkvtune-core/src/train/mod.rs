//! Supervised training: configuration, loss, optimizer and schedule, the loop, checkpoints.

pub mod checkpoint;
pub mod config;
pub mod loss;
pub mod optim;
pub mod params;
pub mod trainer;

pub use config::{Task, TrainConfig};
pub use loss::{head_loss, head_loss_part, lm_loss_part, Loss, IGNORE_INDEX};
pub use optim::{clip_coefficient, lr_at, AdamW, Clip, OptimParam};
pub use params::TrainedParams;
pub use trainer::{
    evaluate, forward_backward, trainable_tensors, EvalResult, PretrainTrainer, SftTrainer,
    TrainOutcome, Trainer,
};

/// The Python tool's config names for the same struct.
pub type SftConfig = TrainConfig;
pub type PretrainConfig = TrainConfig;
