//! GRPO (group relative policy optimisation): rollouts with the batched RNN generator, rewards
//! from native closures or Wasm plugins, group-relative advantages, the clipped policy loss with
//! an optional KL penalty, and the trainer that ties them together.
//!
//! - [`config`]: `GrpoConfig` (the Python tool's field names and defaults);
//! - [`prompts`]: the prompt dataset (`prompt`, optional `input_ids`, extra columns);
//! - [`advantages`]: rewards → advantages (`scale_rewards`, clipping, low-reward groups);
//! - [`logprobs`]: per-token log-probs in the generation context;
//! - [`loss`]: the objective and its aggregations (`grpo`, `bnpo`, `dr_grpo`, `dapo`);
//! - [`trainer`]: the loop, metrics, rollout dumps and checkpoints.

pub mod advantages;
pub mod config;
pub mod logprobs;
pub mod loss;
pub mod prompts;
pub mod trainer;

pub use advantages::{compute_advantages, AdvantageOptions, Advantages, ScaleRewards};
pub use config::GrpoConfig;
pub use logprobs::{completion_logprobs, ScoredRow, Scores};
pub use loss::{ImportanceLevel, KlApproximator, LossType, Normalizer, PolicyLoss};
pub use prompts::{PromptDataset, PromptRow};
pub use trainer::{GrpoOutcome, GrpoTrainer};
