//! Sandboxed plugins: reward functions and completion post-processors as WebAssembly components
//! (the WIT contract is `rwkvtune-wit/wit/plugin.wit`), and the traits trainers use for both
//! plugins and native Rust closures.
//!
//! ```text
//! RolloutBatch ──► dyn RewardFn ──► Vec<RewardValue> ──► combine_rewards (reward_weights)
//!                  ├─ NativeReward (closure)
//!                  └─ WasmReward ──► Sandbox (Store: WASI stdout/stderr only, memory cap,
//!                                    epoch deadline / fuel) ──► guest `compute-rewards`
//! ```
//!
//! Everything wasmtime lives here: [`PluginRuntime`] owns the engine, the linker and the
//! compiled-component cache; `sandbox.rs` owns one instance and rebuilds it after a trap;
//! `guard.rs` validates results and applies the `on_error` policy for native and Wasm alike.

mod bindings;
mod cache;
mod combine;
mod config;
mod error;
mod guard;
mod host_state;
mod log;
mod runtime;
mod sandbox;
mod stats;
mod tokenizer;
mod traits;
mod types;
mod wasm;

pub use bindings::{Role, WitVersion};
pub use cache::{default_cache_dir, CacheOutcome, CACHE_DIR_ENV};
pub use combine::{combine_rewards, CombinedRewards};
pub use config::{OnError, PluginLimits, PluginSpec};
pub use error::{FailureKind, PluginError};
pub use log::{stderr_sink, LogLevel, LogRecord, LogSink};
pub use runtime::{LoadedComponent, PluginRuntime, RuntimeOptions};
pub use stats::PluginStats;
pub use tokenizer::PluginTokenizer;
pub use traits::{CompletionPostprocessor, NativePostprocessor, NativeReward, RewardFn};
pub use types::{Edit, PluginInfo, Processed, RewardValue, RolloutBatch, TokenMatrix};
pub use wasm::{WasmOrigin, WasmPostprocessor, WasmReward};
