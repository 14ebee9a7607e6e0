//! rwkvtune-core: RWKV-7 ("x070") on libtorch — model, tokenizer, model hub I/O and generation.
//!
//! Data flows: hub directory → [`hub`] (weights, config) → [`model::Rwkv7`] ← [`tokenizer`] ids →
//! logits → [`generate`] sampling. The wkv7 recurrence itself lives in the `rwkvtune-kernels`
//! crate (a C++ autograd op).

pub mod config;
pub mod data;
pub mod error;
pub mod generate;
pub mod hub;
pub mod lora;
pub mod metrics;
pub mod model;
pub mod plugin;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
