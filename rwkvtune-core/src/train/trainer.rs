//! The supervised training loop (SFT and pre-training share it; they differ in data and defaults).
//!
//! Read it top to bottom: resume or start → for each epoch, for each micro-batch: forward and
//! backward (whole sequence, or chunk by chunk in infctx mode) → every `accumulate_grad_batches`
//! micro-batches one optimizer step (skip on non-finite values, clip, AdamW, log, maybe save) →
//! epoch checkpoints → final export.

use super::checkpoint::{self, Snapshot, TrainerState};
use super::config::{Task, TrainConfig};
use super::loss::{head_loss_part, IGNORE_INDEX};
use super::optim::{clip_coefficient, lr_at};
use super::params::TrainedParams;
use crate::data::{Batch, Batcher, Cursor, Dataset};
use crate::dist::{self, ProcessGroup, RankEnv};
use crate::error::{Error, Result};
use crate::hub::{parse_kind, write_json};
use crate::metrics::{MetricsConfig, MetricsLogger, ProgressMode, StepMetrics};
use crate::model::{Rwkv7, State};
use crate::tokenizer::AutoTokenizer;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// fp16 loss scaling: start, growth interval and bounds of the dynamic scale.
const FP16_INIT_SCALE: f64 = 65536.0;
const FP16_GROWTH_INTERVAL: u64 = 2000;

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub steps: u64,
    pub final_dir: PathBuf,
    pub last_loss: f64,
    pub skipped_steps: u64,
}

/// Loss of one micro-batch (after backward).
#[derive(Debug, Clone, Copy)]
pub struct MicroLoss {
    /// Token-mean cross-entropy of the micro-batch.
    pub loss: f64,
    pub tokens: i64,
}

/// Forward and backward of one micro-batch; gradients accumulate into the model's tensors.
/// `grad_scale` multiplies the objective (1/accumulation, times the fp16 loss scale).
///
/// infctx splits the sequence into `chunk_ctx` chunks carrying the recurrent state. Each chunk's
/// loss is its share of the whole micro-batch's token-mean ([`head_loss_part`]), so full BPTT gives
/// exactly the gradients of normal mode, and truncated BPTT the same value with gradients cut at
/// chunk borders.
pub fn forward_backward(
    model: &Rwkv7,
    batch: &Batch,
    cfg: &TrainConfig,
    grad_scale: f64,
) -> Result<MicroLoss> {
    let dev = model.device();
    let (b, t) = (batch.batch as i64, batch.seq_len as i64);
    let ids = Tensor::from_slice(&batch.input_ids)
        .view([b, t])
        .to_device(dev);
    let labels = Tensor::from_slice(&batch.labels)
        .view([b, t])
        .to_device(dev);
    let tokens = batch.labels.iter().filter(|&&l| l != IGNORE_INDEX).count() as i64;
    let chunk = if cfg.infctx() {
        cfg.chunk_ctx as i64
    } else {
        t
    };
    let mut state: Option<State> = None;
    let mut pending: Option<Tensor> = None;
    let mut ce = 0.0;
    let mut start = 0;
    while start < t {
        let len = chunk.min(t - start);
        let (hidden, s) = model.forward_hidden(&ids.narrow(1, start, len), state.as_ref())?;
        let part = head_loss_part(
            &model.head,
            &hidden,
            &labels.narrow(1, start, len),
            cfg.l2wrap,
            tokens,
            b * t,
        )?;
        ce += part.ce;
        if cfg.truncated_bptt || !cfg.infctx() {
            (part.objective * grad_scale).backward();
            state = Some(s.detach());
        } else {
            pending = Some(match pending {
                Some(p) => p + part.objective,
                None => part.objective,
            });
            state = Some(s);
        }
        start += len;
    }
    if let Some(total) = pending {
        (total * grad_scale).backward();
    }
    Ok(MicroLoss { loss: ce, tokens })
}

/// The tensors the optimizer updates, by name: with LoRA the adapters and `modules_to_save`;
/// otherwise tensors already marked `requires_grad`, or everything when none is.
pub fn trainable_tensors(model: &Rwkv7) -> Vec<(String, Tensor)> {
    if crate::lora::has_adapters(model) {
        return crate::lora::trainable_tensors(model);
    }
    let all = model.named_tensors();
    let marked: Vec<_> = all
        .iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    if !marked.is_empty() {
        return marked;
    }
    all.into_iter()
        .map(|(n, t)| {
            let t = t.set_requires_grad(true);
            (n, t)
        })
        .collect()
}

/// A configured run: validated config, model, tokenizer and data.
pub struct Trainer {
    pub config: TrainConfig,
    pub model: Rwkv7,
    pub tokenizer: AutoTokenizer,
    pub dataset: Dataset,
    /// Print progress to the console (tests turn it off).
    pub progress: bool,
    /// The adapters attached when `use_lora` is set.
    pub lora: Option<crate::lora::LoraLayout>,
    /// The data-parallel ring (`devices` > 1); a group of one otherwise.
    pub group: ProcessGroup,
}

/// trl-style names for the two uses of the same loop.
pub type SftTrainer = Trainer;
pub type PretrainTrainer = Trainer;

impl Trainer {
    /// Moves the model to the configured device and precision; validates the pairing.
    pub fn new(
        config: TrainConfig,
        model: Rwkv7,
        tokenizer: AutoTokenizer,
        dataset: Dataset,
    ) -> Result<Trainer> {
        config.validate()?;
        let rank_env = if config.devices > 1 {
            let env = RankEnv::from_env()?.ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "devices = {} needs one process per device: `rwkvtune sft|pretrain` launches them, or start them yourself with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set (as torchrun does)",
                    config.devices
                ))
            })?;
            if env.world != config.devices {
                return Err(Error::InvalidArgument(format!(
                    "devices = {} but WORLD_SIZE = {}; they must agree",
                    config.devices, env.world
                )));
            }
            Some(env)
        } else {
            None
        };
        let device = dist::rank_device(&config.device, rank_env.as_ref())?;
        if device != Device::Cpu && !tch::Cuda::is_available() {
            return Err(Error::InvalidArgument(format!(
                "device `{}` requested but libtorch sees no CUDA device (build with --features cuda against a CUDA libtorch)",
                config.device
            )));
        }
        let kind = parse_kind(&config.precision)?;
        let mut model = if model.device() != device || model.kind() != kind {
            model.to(device, kind)?
        } else {
            model
        };
        // Adapters go on after the dtype change (`to` rebuilds a plain model).
        let lora = if config.use_lora {
            let layout = crate::lora::get_peft_model(&mut model, &config.lora, config.seed)?;
            crate::lora::set_training(&mut model, true);
            Some(layout)
        } else {
            None
        };
        if config.grad_cp == 1 && config.use_lora && config.lora.lora_dropout > 0.0 {
            return Err(Error::InvalidArgument(
                "grad_cp = 1 recomputes blocks in backward, which would draw new LoRA dropout masks; set lora.lora_dropout = 0 or grad_cp = 0".into(),
            ));
        }
        model.grad_checkpointing = config.grad_cp == 1;
        // Last: the rendezvous waits for every rank, so a rank that fails above fails fast.
        let group = match &rank_env {
            Some(env) => ProcessGroup::connect(
                env,
                dist::DEFAULT_RENDEZVOUS_TIMEOUT,
                dist::DEFAULT_COLLECTIVE_TIMEOUT,
            )?,
            None => ProcessGroup::single(),
        };
        Ok(Trainer {
            config,
            model,
            tokenizer,
            dataset,
            progress: true,
            lora,
            group,
        })
    }

    /// Runs the whole training, resuming first when `resume_from_checkpoint` is set.
    ///
    /// With several ranks, micro-batch `p` of an epoch's order goes to rank `p mod world`, the
    /// gradients of each accumulation window are summed over ranks before the step, and only
    /// rank 0 writes checkpoints, logs and the final model. One step of `world` ranks with
    /// accumulation `a` is therefore one step of a single process with accumulation
    /// `world × a` over the same micro-batches.
    pub fn train(&mut self) -> Result<TrainOutcome> {
        let cfg = self.config.clone();
        let (rank, world) = (self.group.rank(), self.group.world());
        let lead = rank == 0;
        let proj = PathBuf::from(&cfg.proj_dir);
        if lead {
            std::fs::create_dir_all(&proj).map_err(|e| Error::io(&proj, e))?;
            checkpoint::clean_partials(&proj);
            let run_config = serde_json::to_value(&cfg)
                .map_err(|e| Error::json(proj.join("run_config.json"), e.to_string()))?;
            write_json(&proj.join("run_config.json"), &run_config)?;
        }

        let batcher = Batcher::new(self.dataset.len(), cfg.micro_bsz, cfg.seed).map_err(|e| {
            Error::InvalidArgument(format!("{}: {e}", self.dataset.source.display()))
        })?;
        let available = cfg.epoch_steps.map_or(batcher.batches_per_epoch(), |s| {
            s.min(batcher.batches_per_epoch())
        });
        // Every rank takes the same number of micro-batches; the few left over are not used.
        let per_epoch = available - available % world;
        if per_epoch == 0 {
            return Err(Error::InvalidArgument(format!(
                "{}: {available} micro-batches per epoch cannot feed {world} devices; use more data, a smaller micro_bsz or fewer devices",
                self.dataset.source.display()
            )));
        }
        let steps_per_epoch = (per_epoch / world).div_ceil(cfg.accumulate_grad_batches) as u64;
        let total_steps = steps_per_epoch * cfg.epoch_count as u64;

        // Parameters: the model's own tensors (fp32), or fp32 masters of low-precision ones.
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
            cfg.clone(),
            if cfg.precision == "fp16" {
                FP16_INIT_SCALE
            } else {
                1.0
            },
        );
        let resumed = match &cfg.resume_from_checkpoint {
            Some(spec) => Some(params.resume(spec, &proj, &mut state)?),
            None => None,
        };
        let mut log = if lead {
            Some(MetricsLogger::new(&MetricsConfig {
                output_dir: proj.clone(),
                report_to: cfg
                    .report_to
                    .parse()
                    .map_err(|e| Error::InvalidArgument(format!("report_to: {e}")))?,
                total_steps,
                log_every: cfg.log_every_n_steps.max(1) as u64,
                progress: if self.progress {
                    ProgressMode::Auto
                } else {
                    ProgressMode::Off
                },
                resume_step: resumed,
            })?)
        } else {
            None
        };
        let event = |log: &mut Option<MetricsLogger>, msg: String| {
            if let Some(log) = log.as_mut() {
                log.event(msg);
            }
        };
        if world > 1 {
            event(
                &mut log,
                format!(
                    "data parallel over {world} processes: {per_epoch} of {available} micro-batches per epoch, {steps_per_epoch} steps"
                ),
            );
        }
        if let Some(step) = resumed {
            event(
                &mut log,
                format!(
                    "resumed at step {step} (epoch {}, batch {})",
                    state.cursor.epoch, state.cursor.position
                ),
            );
        }

        let mut last_loss = f64::NAN;
        let mut good_steps_since_growth = 0u64;
        while (state.cursor.epoch as usize) < cfg.epoch_count {
            let epoch = state.cursor.epoch;
            let order = batcher.epoch_order(epoch);
            let mut micro_losses = Vec::with_capacity(cfg.accumulate_grad_batches);
            let mut step_tokens = 0i64;
            let mut step_examples = Vec::new();
            while state.cursor.position < per_epoch {
                let pos = state.cursor.position + rank;
                let batch = self.dataset.batch(batcher.batch_indices(&order, pos));
                let scale = state.loss_scale / (cfg.accumulate_grad_batches * world) as f64;
                let micro = forward_backward(&self.model, &batch, &cfg, scale)?;
                micro_losses.push(micro.loss);
                step_tokens += batch.input_ids.len() as i64;
                step_examples.extend(batch.example_indices.iter().copied());
                state.cursor.position += world;
                let boundary = micro_losses.len() == cfg.accumulate_grad_batches
                    || state.cursor.position == per_epoch;
                if !boundary {
                    continue;
                }
                // ---- one optimizer step ----
                let mut sums = [
                    micro_losses.iter().sum::<f64>(),
                    micro_losses.len() as f64,
                    step_tokens as f64,
                ];
                self.group.all_reduce_sum_f64(&mut sums)?;
                let loss = sums[0] / sums[1];
                micro_losses.clear();
                let mut grads = params.grads(state.loss_scale);
                if world > 1 {
                    let like: Vec<Tensor> = params
                        .named
                        .iter()
                        .map(|(_, t)| t.shallow_clone())
                        .collect();
                    grads = dist::all_reduce_tensors(&self.group, &grads, &like)?;
                }
                let clip = clip_coefficient(&grads, cfg.grad_clip);
                let grad_norm = clip.norm;
                let lr = lr_at(
                    state.step as i64,
                    total_steps as i64,
                    cfg.warmup_steps as i64,
                    cfg.lr_init,
                    cfg.lr_final,
                );
                if !(loss.is_finite() && grad_norm.is_finite()) {
                    self.skip_bad_step(
                        &proj,
                        &mut state,
                        &mut log,
                        loss,
                        grad_norm,
                        &step_examples,
                    )?;
                } else {
                    params.step(lr, &grads, clip.coef)?;
                    state.consecutive_bad_steps = 0;
                    if cfg.precision == "fp16" {
                        good_steps_since_growth += 1;
                        if good_steps_since_growth >= FP16_GROWTH_INTERVAL {
                            state.loss_scale *= 2.0;
                            good_steps_since_growth = 0;
                        }
                    }
                }
                params.zero_grad()?;
                state.step += 1;
                last_loss = loss;
                if let Some(log) = log.as_mut() {
                    let mut m = StepMetrics {
                        step: state.step,
                        epoch,
                        loss,
                        lr,
                        grad_norm: Some(grad_norm),
                        tokens: sums[2] as u64,
                        ..Default::default()
                    };
                    if cfg.precision == "fp16" {
                        m.extra.insert("loss_scale".into(), state.loss_scale);
                    }
                    log.log_step(&m)?;
                }
                step_tokens = 0;
                step_examples.clear();
                if cfg.save_every_n_batches > 0
                    && state.step.is_multiple_of(cfg.save_every_n_batches as u64)
                {
                    if state.cursor.position == per_epoch {
                        state.cursor = Cursor {
                            epoch: epoch + 1,
                            position: 0,
                        };
                    }
                    state.name = format!("rwkv7-batch{}", state.step);
                    if lead {
                        let dir = self.save(&proj, &state, &params)?;
                        event(&mut log, format!("saved {}", dir.display()));
                    }
                    if state.cursor.epoch != epoch {
                        break;
                    }
                }
            }
            state.cursor = Cursor {
                epoch: epoch + 1,
                position: 0,
            };
            let last = state.cursor.epoch as usize == cfg.epoch_count;
            if lead
                && ((cfg.epoch_save > 0 && (epoch as usize + 1).is_multiple_of(cfg.epoch_save))
                    || last)
            {
                state.name = format!("rwkv7-epoch{}", epoch + 1);
                let dir = self.save(&proj, &state, &params)?;
                event(&mut log, format!("saved {}", dir.display()));
            }
        }
        let final_dir = proj.join("final");
        if self.lora.is_some() {
            crate::lora::set_training(&mut self.model, false);
        }
        if let Some(mut log) = log {
            crate::hub::write_dir_atomically(&final_dir, false, |d| {
                checkpoint::write_model_dir(
                    d,
                    &self.model,
                    &self.tokenizer,
                    &cfg,
                    self.lora.as_ref(),
                )
            })?;
            log.event(format!("final model: {}", final_dir.display()));
            log.finish()?;
        }
        Ok(TrainOutcome {
            steps: state.step,
            final_dir,
            last_loss,
            skipped_steps: state.skipped_steps,
        })
    }

    fn save(&self, proj: &Path, state: &TrainerState, params: &TrainedParams) -> Result<PathBuf> {
        let snap = Snapshot {
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
        };
        checkpoint::save(proj, &snap)
    }

    /// A non-finite loss or gradient: no update, the batch recorded, the run stopped when it
    /// keeps happening.
    fn skip_bad_step(
        &self,
        proj: &Path,
        state: &mut TrainerState,
        log: &mut Option<MetricsLogger>,
        loss: f64,
        grad_norm: f64,
        examples: &[usize],
    ) -> Result<()> {
        state.consecutive_bad_steps += 1;
        state.skipped_steps += 1;
        if state.config.precision == "fp16" {
            state.loss_scale = (state.loss_scale / 2.0).max(1.0);
        }
        let path = proj.join("bad_batches.jsonl");
        // Under data parallelism the record holds rank 0's share of the batch.
        if let Some(log) = log.as_mut() {
            let rec = serde_json::json!({"step": state.step + 1, "epoch": state.cursor.epoch, "loss": loss.to_string(),
                "grad_norm": grad_norm.to_string(), "examples": examples});
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            writeln!(f, "{rec}").map_err(|e| Error::io(&path, e))?;
            log.event(format!(
                "step {}: non-finite loss {loss} / grad norm {grad_norm}; skipped (examples in {})",
                state.step + 1,
                path.display()
            ));
        }
        if state.consecutive_bad_steps > state.config.max_bad_steps {
            return Err(Error::InvalidArgument(format!(
                "{} consecutive steps had a non-finite loss or gradient; stopping (see {}). Lower lr_init, enable grad_clip, or use fp32/bf16",
                state.consecutive_bad_steps,
                path.display()
            )));
        }
        Ok(())
    }
}

/// Token-mean loss and perplexity over the labelled tokens of a dataset.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct EvalResult {
    pub loss: f64,
    pub perplexity: f64,
    pub tokens: u64,
    pub examples: usize,
}

pub fn evaluate(model: &Rwkv7, dataset: &Dataset, micro_bsz: usize) -> Result<EvalResult> {
    let _g = tch::no_grad_guard();
    let batcher = Batcher::sequential(dataset.len(), micro_bsz.max(1))
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let order = batcher.epoch_order(0);
    let (mut sum, mut tokens) = (0.0f64, 0u64);
    for pos in 0..batcher.batches_per_epoch() {
        let batch = dataset.batch(batcher.batch_indices(&order, pos));
        let (b, t) = (batch.batch as i64, batch.seq_len as i64);
        let ids = Tensor::from_slice(&batch.input_ids)
            .view([b, t])
            .to_device(model.device());
        let labels = Tensor::from_slice(&batch.labels).view([b, t]);
        let (hidden, _) = model.forward_hidden(&ids, None)?;
        // Sum of token losses: denominator 1.
        let part = head_loss_part(&model.head, &hidden, &labels, false, 1, b * t)?;
        sum += part.ce;
        tokens += part.n_tokens as u64;
    }
    if tokens == 0 {
        return Err(Error::InvalidArgument(format!(
            "{}: no labelled tokens to evaluate",
            dataset.source.display()
        )));
    }
    let loss = sum / tokens as f64;
    Ok(EvalResult {
        loss,
        perplexity: loss.exp(),
        tokens,
        examples: dataset.len(),
    })
}

impl Task {
    pub fn data_kind(self) -> crate::data::TaskKind {
        match self {
            Task::Sft => crate::data::TaskKind::Sft,
            Task::Pretrain => crate::data::TaskKind::Pretrain,
        }
    }
}
