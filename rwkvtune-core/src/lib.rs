//! rwkvtune-core: RWKV-7 ("x070") on libtorch — model, tokenizer, model hub I/O, generation,
//! supervised training, LoRA and sandboxed WebAssembly reward plugins.
//!
//! Inference: hub directory → [`hub`] (weights, config) → [`model::Rwkv7`] ← [`tokenizer`] ids →
//! logits → [`generate`] sampling. Training: [`data`] → [`train`] (loss, AdamW, the loop,
//! checkpoints, data parallelism through [`dist`]) → [`metrics`]; [`lora`] attaches adapters inside the model's linear layers;
//! [`plugin`] runs reward functions behind the `RewardFn` trait. The wkv7 recurrence and the
//! activation-checkpoint Function live in the `rwkvtune-kernels` crate (C++ autograd ops).

pub mod config;
pub mod data;
pub mod dist;
pub mod error;
pub mod generate;
pub mod grpo;
pub mod hub;
pub mod lora;
pub mod metrics;
pub mod model;
pub mod plugin;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
