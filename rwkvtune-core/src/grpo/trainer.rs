//! The GRPO loop.
//!
//! Read it top to bottom: resume or start → for each rollout (a batch of `micro_bsz` prompts):
//! generate G completions per prompt → post-process → rewards → advantages → (when an optimizer
//! step will happen while this rollout is in use) the sampling policy's log-probs, and (β > 0)
//! the reference's → split the rows into `steps_per_generation` micro-batches and train on them
//! `num_iterations` times, one optimizer step every `accumulate_grad_batches` micro-batches →
//! checkpoints at rollout boundaries → final export.
//!
//! Sampling is seeded per rollout (`row_seed(seed, rollout number)`), and checkpoints are taken
//! between rollouts, so a resumed run generates exactly the completions the uninterrupted run
//! would have.

use super::advantages::{compute_advantages, AdvantageOptions, ScaleRewards};
use super::config::GrpoConfig;
use super::logprobs::{completion_logprobs, ScoredRow};
use super::loss::{
    clip_fractions, token_weights, top_entropy_mask, ImportanceLevel, KlApproximator, LossType,
    Normalizer, PolicyLoss,
};
use super::prompts::PromptDataset;
use crate::data::{Batcher, Cursor};
use crate::error::{Error, Result};
use crate::generate::{rollout, row_seed, FinishReason, RolloutOptions, SamplingParams};
use crate::hub::{parse_device, parse_kind, write_atomic, write_json, AutoModel};
use crate::metrics::{MetricsConfig, MetricsLogger, ProgressMode, StepMetrics};
use crate::model::Rwkv7;
use crate::plugin::{
    combine_rewards, CompletionPostprocessor, RewardFn, RewardValue, RolloutBatch, TokenMatrix,
};
use crate::tokenizer::AutoTokenizer;
use crate::train::checkpoint::{self, Snapshot, TrainerState};
use crate::train::optim::{clip_coefficient, lr_at};
use crate::train::TrainedParams;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct GrpoOutcome {
    pub steps: u64,
    pub final_dir: PathBuf,
    /// Mean combined reward of each rollout of this process, in order.
    pub rollout_rewards: Vec<f64>,
}

/// One completion as training sees it.
#[derive(Debug, Clone)]
struct Row {
    /// Index of the prompt in the dataset.
    prompt: usize,
    /// Completion ids that are trained (after post-processing).
    ids: Vec<u32>,
    text: String,
    reward: f32,
    advantage: f32,
    /// False: no loss on this row (no valid reward, or truncated with
    /// `mask_truncated_completions`).
    trained: bool,
    finish: FinishReason,
    per_function: Vec<RewardValue>,
    sampling_logprobs: Vec<f32>,
    /// The sampling policy's log-probs, when the policy changes while the rollout is in use.
    old: Option<Vec<f32>>,
    /// The reference policy's log-probs (β > 0).
    reference: Option<Vec<f32>>,
}

impl Row {
    fn tokens(&self) -> usize {
        if self.trained {
            self.ids.len()
        } else {
            0
        }
    }
}

/// A generated, scored rollout and its metrics.
struct Rollout {
    rows: Vec<Row>,
    metrics: BTreeMap<String, f64>,
    reward_mean: f64,
}

/// Sums of one optimizer step's micro-batches, for the logged means.
#[derive(Default)]
struct StepSums {
    loss: f64,
    tokens: f64,
    kl: f64,
    entropy: f64,
    clip_low: f64,
    clip_high: f64,
    clip_region: f64,
    forwarded: u64,
}

/// A configured GRPO run.
pub struct GrpoTrainer {
    pub config: GrpoConfig,
    pub model: Rwkv7,
    pub tokenizer: AutoTokenizer,
    pub dataset: PromptDataset,
    pub rewards: Vec<Box<dyn RewardFn>>,
    pub postprocessor: Option<Box<dyn CompletionPostprocessor>>,
    /// Print progress to the console (tests turn it off).
    pub progress: bool,
    /// Stop after this many rollouts of this process (tests, interrupted runs); `None` = all.
    pub max_rollouts: Option<usize>,
    reference: Option<Rwkv7>,
    /// With LoRA and β > 0: the starting values of the fully trained base tensors
    /// (`modules_to_save`, e.g. LayerNorms), swapped in while the reference scores, so the
    /// reference stays the base model instead of drifting with them.
    reference_saved: Vec<(String, Tensor)>,
    lora: Option<crate::lora::LoraLayout>,
    eos_ids: Vec<u32>,
    policy: PolicyLoss,
}

impl GrpoTrainer {
    /// Moves the model to the configured device and precision, attaches LoRA adapters, and
    /// prepares the reference policy when `beta > 0`.
    pub fn new(
        config: GrpoConfig,
        model: Rwkv7,
        tokenizer: AutoTokenizer,
        dataset: PromptDataset,
        rewards: Vec<Box<dyn RewardFn>>,
    ) -> Result<GrpoTrainer> {
        config.validate()?;
        if rewards.is_empty() {
            return Err(Error::InvalidArgument(
                "GRPO needs at least one reward function (e.g. --reward-plugin math.wasm)".into(),
            ));
        }
        if let Some(w) = &config.reward_weights {
            if w.len() != rewards.len() {
                return Err(Error::InvalidArgument(format!(
                    "config: reward_weights has {} entries for {} reward functions",
                    w.len(),
                    rewards.len()
                )));
            }
        }
        let device = parse_device(&config.device)?;
        if device != Device::Cpu && !tch::Cuda::is_available() {
            return Err(Error::InvalidArgument(format!(
                "device `{}` requested but libtorch sees no CUDA device",
                config.device
            )));
        }
        let kind = parse_kind(&config.precision)?;
        let mut model = if model.device() != device || model.kind() != kind {
            model.to(device, kind)?
        } else {
            model
        };
        let reference = if config.beta > 0.0 && !config.use_lora {
            Some(match &config.ref_model_path {
                Some(p) => AutoModel::from_pretrained(Path::new(p), device, kind)?,
                None => model.to(device, kind)?,
            })
        } else {
            None
        };
        let train = config.train_config();
        let lora = if config.use_lora {
            let layout = crate::lora::get_peft_model(&mut model, &train.lora, config.seed)?;
            Some(layout)
        } else {
            None
        };
        if train.grad_cp == 1 && config.use_lora && config.lora.lora_dropout > 0.0 {
            return Err(Error::InvalidArgument(
                "grad_cp = 1 recomputes blocks in backward, which would draw new LoRA dropout masks; set lora.lora_dropout = 0 or grad_cp = 0".into(),
            ));
        }
        let reference_saved = match (&lora, config.beta > 0.0) {
            (Some(layout), true) => model
                .named_tensors()
                .into_iter()
                .filter(|(n, _)| layout.saved.contains(n))
                .map(|(n, t)| (n, t.detach().copy()))
                .collect(),
            _ => Vec::new(),
        };
        model.grad_checkpointing = train.grad_cp == 1;
        let eos_ids: Vec<u32> = tokenizer
            .eos_token_id
            .or(model.config.eos_token_id)
            .into_iter()
            .collect();
        let policy = PolicyLoss {
            epsilon_low: config.epsilon,
            epsilon_high: config.epsilon_high(),
            delta: config.delta,
            beta: config.beta,
            kl: KlApproximator::parse(&config.kl_approximator).unwrap_or(KlApproximator::K3),
            level: ImportanceLevel::parse(&config.importance_sampling_level)
                .unwrap_or(ImportanceLevel::Token),
        };
        Ok(GrpoTrainer {
            config,
            model,
            tokenizer,
            dataset,
            rewards,
            postprocessor: None,
            progress: true,
            max_rollouts: None,
            reference,
            reference_saved,
            lora,
            eos_ids,
            policy,
        })
    }

    /// A post-processor between generation and rewards.
    pub fn with_postprocessor(mut self, p: Box<dyn CompletionPostprocessor>) -> Self {
        self.postprocessor = Some(p);
        self
    }

    fn set_dropout(&mut self, on: bool) {
        if self.lora.is_some() {
            crate::lora::set_training(&mut self.model, on);
        }
    }

    /// Runs the whole training, resuming first when `resume_from_checkpoint` is set.
    pub fn train(&mut self) -> Result<GrpoOutcome> {
        let cfg = self.config.clone();
        let tcfg = cfg.train_config();
        let proj = PathBuf::from(&cfg.proj_dir);
        std::fs::create_dir_all(&proj).map_err(|e| Error::io(&proj, e))?;
        checkpoint::clean_partials(&proj);
        write_json(&proj.join("run_config.json"), &cfg.to_json())?;

        let batcher = Batcher {
            n_examples: self.dataset.len(),
            micro_bsz: cfg.micro_bsz,
            seed: cfg.seed,
            shuffle: true,
            // The last, smaller prompt batch still makes a rollout: no prompt is dropped.
            drop_last: false,
        };
        batcher.validate().map_err(|e| {
            Error::InvalidArgument(format!("{}: {e}", self.dataset.source.display()))
        })?;
        let per_epoch = cfg.epoch_steps.map_or(batcher.batches_per_epoch(), |s| {
            (s / cfg.generate_every()).min(batcher.batches_per_epoch())
        });
        let steps_per_rollout = (cfg.generate_every() / cfg.accumulate_grad_batches) as u64;
        let total_steps = per_epoch as u64 * steps_per_rollout * cfg.epoch_count as u64;

        let mut params = TrainedParams::new(
            &self.model,
            cfg.weight_decay,
            cfg.beta1,
            cfg.beta2,
            cfg.adam_eps,
        );

        let mut state = TrainerState::new(
            batcher.clone(),
            self.dataset.fingerprint(),
            tcfg.clone(),
            1.0,
        );
        state.grpo = Some(cfg.to_json());
        let resumed = match &cfg.resume_from_checkpoint {
            Some(spec) => Some(params.resume(spec, &proj, &mut state)?),
            None => None,
        };
        let mut log = MetricsLogger::new(&MetricsConfig {
            output_dir: proj.clone(),
            report_to: cfg
                .report_to
                .parse()
                .map_err(|e| Error::InvalidArgument(format!("report_to: {e}")))?,
            total_steps,
            log_every: cfg.log_steps as u64,
            progress: if self.progress {
                ProgressMode::Auto
            } else {
                ProgressMode::Off
            },
            resume_step: resumed,
        })?;
        if let Some(step) = resumed {
            log.event(format!(
                "resumed at step {step} (epoch {}, rollout {})",
                state.cursor.epoch, state.cursor.position
            ));
        }
        if self.dataset.truncated > 0 {
            log.event(format!(
                "{} prompts were longer than max_prompt_length = {} and keep their last tokens",
                self.dataset.truncated, cfg.max_prompt_length
            ));
        }

        let mut rollout_rewards = Vec::new();
        let mut last_save = state.step;
        let mut last_dump: Option<u64> = None;
        let mut rollouts_done = 0usize;
        'epochs: while (state.cursor.epoch as usize) < cfg.epoch_count {
            let epoch = state.cursor.epoch;
            let order = batcher.epoch_order(epoch);
            while state.cursor.position < per_epoch {
                if self.max_rollouts.is_some_and(|m| rollouts_done >= m) {
                    break 'epochs;
                }
                let number = epoch * per_epoch as u64 + state.cursor.position as u64;
                let prompts = batcher
                    .batch_indices(&order, state.cursor.position)
                    .to_vec();
                let ro = self.make_rollout(&prompts, number)?;
                if cfg.save_rollout_steps > 0
                    && last_dump.is_none_or(|d| state.step - d >= cfg.save_rollout_steps as u64)
                {
                    self.dump_rollout(&ro, state.step)?;
                    last_dump = Some(state.step);
                }
                rollout_rewards.push(ro.reward_mean);
                self.train_on_rollout(&ro, number, &mut state, &mut params, &mut log, total_steps)?;
                rollouts_done += 1;
                if rollouts_done == 1 || rollouts_done.is_multiple_of(cfg.log_steps) {
                    log.event(format!(
                        "rollout {}: reward {:.3} (std {:.3}), completion length {:.1}, generation {:.2}s, rewards {:.3}s",
                        number + 1,
                        ro.reward_mean,
                        ro.metrics.get("reward_std").copied().unwrap_or(0.0),
                        ro.metrics.get("completions/mean_length").copied().unwrap_or(0.0),
                        ro.metrics.get("time/generation").copied().unwrap_or(0.0),
                        ro.metrics.get("time/rewards").copied().unwrap_or(0.0),
                    ));
                }
                state.cursor.position += 1;
                if cfg.sync_ref_model
                    && state.step / cfg.ref_model_sync_steps as u64
                        != (state.step - steps_per_rollout) / cfg.ref_model_sync_steps as u64
                {
                    self.sync_reference(cfg.ref_model_mixup_alpha);
                }
                if cfg.save_every_n_batches > 0
                    && state.step - last_save >= cfg.save_every_n_batches as u64
                {
                    let mut at = state.clone();
                    if at.cursor.position == per_epoch {
                        at.cursor = Cursor {
                            epoch: epoch + 1,
                            position: 0,
                        };
                    }
                    at.name = format!("rwkv7-batch{}", state.step);
                    let dir = self.save(&proj, &at, &params)?;
                    last_save = state.step;
                    log.event(format!("saved {}", dir.display()));
                }
            }
            state.cursor = Cursor {
                epoch: epoch + 1,
                position: 0,
            };
            state.name = format!("rwkv7-epoch{}", epoch + 1);
            let dir = self.save(&proj, &state, &params)?;
            log.event(format!("saved {}", dir.display()));
        }
        let final_dir = proj.join("final");
        self.set_dropout(false);
        crate::hub::write_dir_atomically(&final_dir, false, |d| {
            checkpoint::write_model_dir(d, &self.model, &self.tokenizer, &tcfg, self.lora.as_ref())
        })?;
        log.event(format!("final model: {}", final_dir.display()));
        log.finish()?;
        Ok(GrpoOutcome {
            steps: state.step,
            final_dir,
            rollout_rewards,
        })
    }

    /// Generation, post-processing, rewards, advantages and the fixed log-probs of one rollout.
    fn make_rollout(&mut self, prompts: &[usize], number: u64) -> Result<Rollout> {
        let cfg = self.config.clone();
        let g = cfg.num_generations;
        let mut metrics = BTreeMap::new();

        // 1. Generation (no dropout: the sampling policy is the model itself).
        self.set_dropout(false);
        let t = Instant::now();
        let prompt_ids: Vec<Vec<u32>> = prompts
            .iter()
            .map(|&i| self.dataset.rows[i].ids.clone())
            .collect();
        let cap = |v: i64| if v < 0 { 0 } else { v as usize };
        let opts = RolloutOptions {
            sampling: SamplingParams {
                temperature: cfg.temperature,
                top_p: cfg.top_p,
                top_k: cfg.top_k,
                repetition_penalty: cfg.repetition_penalty,
                seed: row_seed(cfg.seed, number),
                logit_bias: cfg.logit_bias_ids()?,
            },
            num_generations: g,
            max_new_tokens: cfg.max_completion_length,
            eos_ids: self.eos_ids.clone(),
            stop: cfg.stop.clone(),
            prefill_chunk_size: cfg.prefill_chunk_size,
            max_prefill_batch_size: cap(cfg.max_prefill_batch_size),
            max_decode_batch_size: cap(cfg.max_decode_batch_size),
        };
        let (completions, gen_stats) = rollout(&self.model, &self.tokenizer, &prompt_ids, &opts)?;
        metrics.insert("time/generation".into(), t.elapsed().as_secs_f64());
        metrics.insert(
            "rollout/decode_tokens_per_sec".into(),
            gen_stats.decode_tokens as f64 / gen_stats.decode_secs.max(1e-9),
        );

        // 2. What reward functions see; post-processing may edit it.
        let t = Instant::now();
        let n = completions.len();
        let cols = completions
            .iter()
            .map(|c| c.tokens.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let rows_tokens: Vec<Vec<u32>> = completions.iter().map(|c| c.tokens.clone()).collect();
        let mut batch = RolloutBatch {
            prompts: completions
                .iter()
                .map(|c| self.dataset.rows[prompts[c.prompt]].prompt.clone())
                .collect(),
            completions: completions.iter().map(|c| c.text.clone()).collect(),
            tokens: TokenMatrix::from_rows(&rows_tokens, cols),
            extras: completions
                .iter()
                .map(|c| {
                    serde_json::Value::Object(self.dataset.rows[prompts[c.prompt]].extras.clone())
                        .to_string()
                })
                .collect(),
        };
        if let Some(pp) = &mut self.postprocessor {
            let out = pp.process(&batch).map_err(Error::Plugin)?;
            batch.completions = out.completions;
            batch.tokens = out.tokens;
        }

        // 3. Rewards.
        let mut per_function = Vec::with_capacity(self.rewards.len());
        for f in &mut self.rewards {
            let tf = Instant::now();
            let values = f.compute(&batch).map_err(Error::Plugin)?;
            metrics.insert(
                format!("time/reward/{}", f.info().name),
                tf.elapsed().as_secs_f64(),
            );
            per_function.push(values);
        }
        let combined =
            combine_rewards(&per_function, cfg.reward_weights.as_deref()).map_err(Error::Plugin)?;
        metrics.insert("time/rewards".into(), t.elapsed().as_secs_f64());

        // 4. Advantages.
        let adv = compute_advantages(
            &combined.rewards,
            &combined.valid,
            g,
            &AdvantageOptions {
                scale: ScaleRewards::parse(&cfg.scale_rewards).unwrap_or(ScaleRewards::Group),
                clip: cfg.advantage_clip,
                low_reward_threshold: cfg.low_reward_threshold,
                low_reward_scale: cfg.low_reward_scale,
            },
        );

        let mut rows: Vec<Row> = completions
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let truncated = c.finish == FinishReason::Length;
                Row {
                    prompt: prompts[c.prompt],
                    ids: batch.tokens.real_ids(i),
                    text: batch.completions[i].clone(),
                    reward: combined.rewards[i],
                    advantage: adv.values[i],
                    trained: combined.valid[i] && !(cfg.mask_truncated_completions && truncated),
                    finish: c.finish,
                    per_function: per_function.iter().map(|f| f[i]).collect(),
                    sampling_logprobs: c.logprobs,
                    old: None,
                    reference: None,
                }
            })
            .collect();

        // 5. Fixed log-probs: the sampling policy's when the policy moves while this rollout is
        //    in use, and the reference's when there is a KL term.
        let t = Instant::now();
        let off_policy = cfg.generate_every() > cfg.accumulate_grad_batches;
        let pairs: Vec<(Vec<u32>, Vec<u32>)> = if !(off_policy || cfg.beta > 0.0) {
            Vec::new()
        } else {
            rows.iter()
                .map(|r| (self.dataset.rows[r.prompt].ids.clone(), r.ids.clone()))
                .collect()
        };
        let scored: Vec<ScoredRow> = pairs
            .iter()
            .map(|(p, c)| ScoredRow {
                prompt: p,
                completion: c,
            })
            .collect();
        if off_policy {
            let _g = tch::no_grad_guard();
            let lp = score_with(
                &self.model,
                &scored,
                cfg.temperature,
                cfg.prefill_chunk_size,
                cfg.logprob_batch_size,
            )?;
            for (r, v) in rows.iter_mut().zip(lp) {
                r.old = Some(v);
            }
        }
        if let Some(lp) = self.reference_logprobs(&scored)? {
            for (r, v) in rows.iter_mut().zip(lp) {
                r.reference = Some(v);
            }
        }
        metrics.insert("time/logprobs".into(), t.elapsed().as_secs_f64());

        // 6. Rollout metrics.
        let valid: Vec<f64> = rows
            .iter()
            .zip(&combined.valid)
            .filter(|(_, v)| **v)
            .map(|(r, _)| r.reward as f64)
            .collect();
        let (mean, std) = mean_std(&valid);
        metrics.insert("reward".into(), mean);
        metrics.insert("reward_std".into(), std);
        for (f, values) in self.rewards.iter().zip(&per_function) {
            let xs: Vec<f64> = values
                .iter()
                .filter_map(|v| match v {
                    RewardValue::Value(x) => Some(*x as f64),
                    _ => None,
                })
                .collect();
            let (m, s) = mean_std(&xs);
            let name = &f.info().name;
            metrics.insert(format!("rewards/{name}/mean"), m);
            metrics.insert(format!("rewards/{name}/std"), s);
            metrics.insert(
                format!("plugin/{name}/mean_call_ms"),
                f.stats().mean_time().as_secs_f64() * 1e3,
            );
        }
        metrics.insert("frac_reward_zero_std".into(), adv.frac_reward_zero_std);
        let advs: Vec<f64> = adv.values.iter().map(|&a| a as f64).collect();
        let (am, astd) = mean_std(&advs);
        metrics.insert("advantage/mean".into(), am);
        metrics.insert("advantage/std".into(), astd);
        metrics.insert(
            "advantage/min".into(),
            advs.iter().copied().fold(f64::INFINITY, f64::min),
        );
        metrics.insert(
            "advantage/max".into(),
            advs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        );
        let lens: Vec<f64> = rows.iter().map(|r| r.ids.len() as f64).collect();
        metrics.insert("completions/mean_length".into(), mean_std(&lens).0);
        metrics.insert(
            "completions/min_length".into(),
            lens.iter().copied().fold(f64::INFINITY, f64::min),
        );
        metrics.insert(
            "completions/max_length".into(),
            lens.iter().copied().fold(0.0, f64::max),
        );
        metrics.insert(
            "completions/truncated_ratio".into(),
            rows.iter()
                .filter(|r| r.finish == FinishReason::Length)
                .count() as f64
                / n.max(1) as f64,
        );
        Ok(Rollout {
            rows,
            metrics,
            reward_mean: mean,
        })
    }

    /// Per-token log-probs of `rows` under the reference policy (`None` when β = 0: there is
    /// none). With LoRA the reference is the base model: adapters off and the fully trained base
    /// tensors (`modules_to_save`) at their starting values; otherwise the frozen copy or
    /// `ref_model_path`.
    pub fn reference_logprobs(&mut self, rows: &[ScoredRow]) -> Result<Option<Vec<Vec<f32>>>> {
        if self.config.beta <= 0.0 {
            return Ok(None);
        }
        let _g = tch::no_grad_guard();
        let (temp, chunk, batch) = (
            self.config.temperature,
            self.config.prefill_chunk_size,
            self.config.logprob_batch_size,
        );
        if let Some(reference) = &self.reference {
            return score_with(reference, rows, temp, chunk, batch).map(Some);
        }
        let live = swap_in(&self.model, &self.reference_saved);
        let out = crate::lora::with_adapters_disabled(&mut self.model, |m| {
            score_with(m, rows, temp, chunk, batch)
        });
        for (t, current) in &live {
            t.shallow_clone().copy_(current);
        }
        out.map(Some)
    }

    /// The micro-batches of one rollout, `num_iterations` times over, with optimizer steps.
    fn train_on_rollout(
        &mut self,
        ro: &Rollout,
        number: u64,
        state: &mut TrainerState,
        params: &mut TrainedParams,
        log: &mut MetricsLogger,
        total_steps: u64,
    ) -> Result<()> {
        let cfg = self.config.clone();
        // Rows in a seeded random order, cut into steps_per_generation near-equal slices (sizes
        // differ by at most one: no row is dropped).
        let mut order: Vec<usize> = (0..ro.rows.len()).collect();
        if cfg.shuffle_buffer {
            use rand::seq::SliceRandom;
            use rand::SeedableRng;
            let mut rng = rand::rngs::StdRng::seed_from_u64(row_seed(cfg.seed ^ 0x5EED, number));
            order.shuffle(&mut rng);
        }
        let s = cfg.steps_per_generation;
        let slices: Vec<Vec<usize>> = (0..s)
            .map(|k| {
                let lo = k * order.len() / s;
                let hi = (k + 1) * order.len() / s;
                order[lo..hi].to_vec()
            })
            .collect();
        let tokens_of = |slice: &[usize]| slice.iter().map(|&i| ro.rows[i].tokens()).sum::<usize>();
        let acc = cfg.accumulate_grad_batches;
        let micro_total = cfg.generate_every();
        let mut sums = StepSums::default();
        let mut t_update = Instant::now();
        self.set_dropout(true);
        for k in 0..micro_total {
            let slice = &slices[k % s];
            let window = k / acc * acc..(k / acc + 1) * acc;
            let window_tokens: usize = window.map(|j| tokens_of(&slices[j % s])).sum();
            let norm = Normalizer {
                loss_type: LossType::parse(&cfg.loss_type).unwrap_or(LossType::Dapo),
                micro_rows: slice.len().max(1) as f64,
                micro_tokens: tokens_of(slice) as f64,
                window_tokens: window_tokens as f64,
                max_completion_length: cfg.max_completion_length as f64,
                accumulate: acc as f64,
            };
            self.train_micro(ro, slice, &norm, &mut sums)?;
            if (k + 1) % acc != 0 {
                continue;
            }
            // ---- one optimizer step ----
            let grads = params.grads(1.0);
            let clip = clip_coefficient(&grads, cfg.grad_clip);
            let grad_norm = clip.norm;
            let lr = lr_at(
                state.step as i64,
                total_steps as i64,
                cfg.warmup_steps as i64,
                cfg.lr_init,
                cfg.lr_final,
            );
            let loss = sums.loss;
            if loss.is_finite() && grad_norm.is_finite() {
                params.step(lr, &grads, clip.coef)?;
                state.consecutive_bad_steps = 0;
            } else {
                state.consecutive_bad_steps += 1;
                state.skipped_steps += 1;
                log.event(format!(
                    "step {}: non-finite loss {loss} / grad norm {grad_norm}; update skipped",
                    state.step + 1
                ));
                if state.consecutive_bad_steps > cfg.max_bad_steps {
                    return Err(Error::InvalidArgument(format!(
                        "{} consecutive GRPO steps had a non-finite loss or gradient; stopping. Lower lr_init or check the rewards",
                        state.consecutive_bad_steps
                    )));
                }
            }
            params.zero_grad()?;
            state.step += 1;
            let tok = sums.tokens.max(1.0);
            let mut extra = ro.metrics.clone();
            extra.insert("kl".into(), sums.kl / tok);
            extra.insert("entropy".into(), sums.entropy / tok);
            extra.insert("clip_ratio/low_mean".into(), sums.clip_low / tok);
            extra.insert("clip_ratio/high_mean".into(), sums.clip_high / tok);
            extra.insert("clip_ratio/region_mean".into(), sums.clip_region / tok);
            extra.insert("time/update".into(), t_update.elapsed().as_secs_f64());
            log.log_step(&StepMetrics {
                step: state.step,
                epoch: state.cursor.epoch,
                loss,
                lr,
                grad_norm: Some(grad_norm),
                tokens: sums.forwarded,
                extra,
            })?;
            sums = StepSums::default();
            t_update = Instant::now();
        }
        self.set_dropout(false);
        Ok(())
    }

    /// Forward and backward of one micro-batch (in `logprob_batch_size` chunks).
    fn train_micro(
        &mut self,
        ro: &Rollout,
        slice: &[usize],
        norm: &Normalizer,
        sums: &mut StepSums,
    ) -> Result<()> {
        let cfg = &self.config;
        let dev = self.model.device();
        let chunk = cfg.logprob_batch_size.unwrap_or(slice.len()).max(1);
        for part in slice.chunks(chunk) {
            let rows: Vec<&Row> = part.iter().map(|&i| &ro.rows[i]).collect();
            let scored: Vec<ScoredRow> = rows
                .iter()
                .map(|r| ScoredRow {
                    prompt: &self.dataset.rows[r.prompt].ids,
                    completion: &r.ids,
                })
                .collect();
            let scores = completion_logprobs(
                &self.model,
                &scored,
                cfg.temperature,
                cfg.prefill_chunk_size,
                true,
            )?;
            let c = scores.logp.size()[1] as usize;
            let pad = |f: &dyn Fn(&Row) -> Vec<f32>| -> Tensor {
                let mut flat = vec![0f32; rows.len() * c];
                for (i, r) in rows.iter().enumerate() {
                    let v = f(r);
                    flat[i * c..i * c + v.len().min(c)].copy_from_slice(&v[..v.len().min(c)]);
                }
                Tensor::from_slice(&flat)
                    .view([rows.len() as i64, c as i64])
                    .to_device(dev)
            };
            let mask = pad(&|r| vec![if r.trained { 1.0 } else { 0.0 }; r.ids.len()]);
            let old = if rows.iter().all(|r| r.old.is_some()) {
                pad(&|r| r.old.clone().unwrap_or_default())
            } else {
                scores.logp.detach()
            };
            let reference = rows
                .iter()
                .all(|r| r.reference.is_some())
                .then(|| pad(&|r| r.reference.clone().unwrap_or_default()));
            let adv = Tensor::from_slice(&rows.iter().map(|r| r.advantage).collect::<Vec<_>>())
                .to_device(dev);
            let terms = self
                .policy
                .terms(&scores.logp, &old, reference.as_ref(), &adv, &mask);
            let mut weights = token_weights(&mask, norm);
            let entropy = scores.entropy.unwrap_or_else(|| mask.zeros_like());
            if cfg.top_entropy_quantile < 1.0 {
                weights *= top_entropy_mask(&entropy, &mask, cfg.top_entropy_quantile);
            }
            let loss = (&terms.loss * &weights).sum(Kind::Float);
            let value = loss.double_value(&[]);
            if loss.requires_grad() {
                loss.backward();
            }
            let tokens = mask.sum(Kind::Double).double_value(&[]);
            let masked_sum = |t: &Tensor| (t * &mask).sum(Kind::Double).double_value(&[]);
            sums.loss += value;
            sums.tokens += tokens;
            sums.entropy += masked_sum(&entropy);
            if let Some(k) = &terms.kl {
                sums.kl += masked_sum(k);
            }
            let (lo, hi, region) = clip_fractions(
                &terms.ratio,
                &adv,
                &mask,
                self.policy.epsilon_low,
                self.policy.epsilon_high,
            );
            sums.clip_low += lo * tokens;
            sums.clip_high += hi * tokens;
            sums.clip_region += region * tokens;
            sums.forwarded += rows
                .iter()
                .map(|r| (self.dataset.rows[r.prompt].ids.len() + r.ids.len()) as u64)
                .sum::<u64>();
        }
        Ok(())
    }

    /// `ref ← α·policy + (1−α)·ref` (TR-DPO), full fine-tuning only.
    fn sync_reference(&mut self, alpha: f64) {
        if let Some(reference) = &self.reference {
            let _g = tch::no_grad_guard();
            for ((_, r), (_, p)) in reference
                .named_tensors()
                .iter()
                .zip(self.model.named_tensors().iter())
            {
                let mixed = p.detach() * alpha + r * (1.0 - alpha);
                r.shallow_clone().copy_(&mixed);
            }
        }
    }

    fn save(&self, proj: &Path, state: &TrainerState, params: &TrainedParams) -> Result<PathBuf> {
        checkpoint::save(
            proj,
            &Snapshot {
                state: state.clone(),
                model: &self.model,
                tokenizer: &self.tokenizer,
                optimizer: if state.has_optimizer_state {
                    params.opt.state_tensors()
                } else {
                    Vec::new()
                },
                trainable: params.snapshot(),
                lora: self.lora.as_ref(),
            },
        )
    }

    /// `rollout_step_{step}.jsonl`: one line per completion, in generation order.
    fn dump_rollout(&self, ro: &Rollout, step: u64) -> Result<()> {
        let dir = self.config.save_rollout_path.clone().map_or_else(
            || PathBuf::from(&self.config.proj_dir).join("rollouts"),
            PathBuf::from,
        );
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let versions: BTreeMap<String, String> = self
            .rewards
            .iter()
            .map(|f| (f.info().name.clone(), f.info().version.clone()))
            .chain(
                self.postprocessor
                    .iter()
                    .map(|p| (p.info().name.clone(), p.info().version.clone())),
            )
            .collect();
        let mut text = String::new();
        for r in &ro.rows {
            let per: BTreeMap<String, serde_json::Value> = self
                .rewards
                .iter()
                .zip(&r.per_function)
                .map(|(f, v)| {
                    let v = match v {
                        RewardValue::Value(x) => json!(x),
                        RewardValue::NotApplicable => serde_json::Value::Null,
                        RewardValue::Failed => json!("failed"),
                    };
                    (f.info().name.clone(), v)
                })
                .collect();
            let p = &self.dataset.rows[r.prompt];
            let line = json!({
                "step": step,
                "prompt": p.prompt,
                "completion": r.text,
                "completion_ids": r.ids,
                "completion_token_count": r.ids.len(),
                "finish": r.finish.as_str(),
                "reward": r.reward,
                "rewards_per_func": per,
                "advantage": r.advantage,
                "trained": r.trained,
                "sampling_logprobs": r.sampling_logprobs,
                "extras": p.extras,
                "plugin_versions": versions,
            });
            text.push_str(&line.to_string());
            text.push('\n');
        }
        write_atomic(
            &dir.join(format!("rollout_step_{step}.jsonl")),
            text.as_bytes(),
        )
    }
}

/// Copies `values` into the model's tensors of the same names; returns each tensor with a copy
/// of what it held, to put back.
fn swap_in(model: &Rwkv7, values: &[(String, Tensor)]) -> Vec<(Tensor, Tensor)> {
    let mut live = Vec::new();
    for (name, t) in model.named_tensors() {
        if let Some((_, v)) = values.iter().find(|(n, _)| *n == name) {
            live.push((t.shallow_clone(), t.detach().copy()));
            t.shallow_clone().copy_(v);
        }
    }
    live
}

/// Log-probs of `rows` under `model`, in chunks of `batch` rows, as fp32 vectors.
fn score_with(
    model: &Rwkv7,
    rows: &[ScoredRow],
    temperature: f64,
    prefill_chunk: usize,
    batch: Option<usize>,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(rows.len());
    for part in rows.chunks(batch.unwrap_or(rows.len()).max(1)) {
        let s = completion_logprobs(model, part, temperature, prefill_chunk, false)?;
        let c = s.logp.size()[1] as usize;
        let flat = Vec::<f32>::try_from(s.logp.detach().to_device(Device::Cpu).flatten(0, -1))?;
        for (i, r) in part.iter().enumerate() {
            out.push(flat[i * c..i * c + r.completion.len()].to_vec());
        }
    }
    Ok(out)
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}
