//! LoRA fine-tuning: adapters on the linear layers of an [`Rwkv7`](crate::model::Rwkv7), the
//! parameters trained in full beside them (`modules_to_save`), adapter files, and merging.
//!
//! A wrapped layer computes y = W x + s · B(A · dropout(x)) with A [r, in] ~ U(±1/√in), B [out, r]
//! = 0 at initialisation and s = α/r (α/√r with rsLoRA); W is frozen. The adapter lives inside
//! [`model::Linear`](crate::model::Linear), so every forward path (training, chunked BPTT,
//! generation) uses it with no second code path.
//!
//! - [`config`]: [`LoraConfig`] and the exact target / `modules_to_save` matching rules.
//! - [`layer`]: the adapter math ([`LoraAdapter`]).
//! - [`peft`]: attaching adapters, the trainable set, enable/disable, merge/unmerge.
//! - [`adapter_io`]: `adapter_config.json` + `adapter_model.{safetensors,bin}`.
//! - [`merge`]: `merge-lora`, base + adapter → plain model directory.
//!
//! Invariants: the base model is frozen and only adapters and `modules_to_save` parameters
//! require grad; merging is done in fp32 and cast once; an adapter file carries every tensor that
//! was trained; loading checks every tensor against the model before changing it.

pub mod adapter_io;
pub mod config;
pub mod layer;
pub mod merge;
pub mod peft;

pub use adapter_io::{
    apply_adapter, load_adapter, read_adapter, save_adapter, Adapter, ADAPTER_BIN, ADAPTER_CONFIG,
    ADAPTER_SAFETENSORS,
};
pub use config::{canonical_targets, LoraConfig, BLOCK_LINEARS};
pub use layer::LoraAdapter;
pub use merge::{merge_lora, MergeOptions, MergeReport};
pub use peft::{
    adapter_tensors, get_peft_model, has_adapters, lora_tensors, merge_adapters, merge_and_unload,
    merged_tensors, set_adapters_enabled, set_training, trainable_tensors, unmerge_adapters,
    with_adapters_disabled, LoraLayout,
};
