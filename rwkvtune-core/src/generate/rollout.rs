//! Batched generation for many prompts at once: GRPO rollouts and `generate --prompts`.
//!
//! RWKV carries a fixed-size state instead of a KV cache, which makes batching simple:
//! 1. every distinct prompt is prefilled once, in chunks of `prefill_chunk_size`, prompts of equal
//!    length together (no padding ever enters a state);
//! 2. its state and last logits fan out to its `num_generations` rows (row `p·G + g`);
//! 3. all unfinished rows decode one token per step in one batched forward; rows that stop leave
//!    the batch (the state tensors are compacted), so no work is spent on finished rows.
//!
//! Every row samples with its own RNG seeded from `(seed, row)`, so a row's completion depends
//! only on its prompt, the seed and its row number — not on the batch caps or on its neighbours.

use super::sampler::{Sampler, SamplingParams};
use super::FinishReason;
use crate::error::{Error, Result};
use crate::model::{Rwkv7, State};
use crate::tokenizer::AutoTokenizer;
use std::collections::HashMap;
use std::time::Instant;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, PartialEq)]
pub struct RolloutOptions {
    /// Sampling settings; `sampling.seed` seeds the per-row RNGs.
    pub sampling: SamplingParams,
    /// Completions per prompt (G).
    pub num_generations: usize,
    pub max_new_tokens: usize,
    /// A row stops after sampling one of these (the id is kept in `tokens`, not in `text`).
    pub eos_ids: Vec<u32>,
    /// A row stops once its text contains one of these (the text is cut before it).
    pub stop: Vec<String>,
    /// Prompt tokens per prefill forward.
    pub prefill_chunk_size: usize,
    /// Most prompts per prefill forward (0 = no cap).
    pub max_prefill_batch_size: usize,
    /// Most rows per decode forward (0 = no cap).
    pub max_decode_batch_size: usize,
}

impl Default for RolloutOptions {
    fn default() -> Self {
        RolloutOptions {
            sampling: SamplingParams::default(),
            num_generations: 1,
            max_new_tokens: 256,
            eos_ids: Vec::new(),
            stop: Vec::new(),
            prefill_chunk_size: 2048,
            max_prefill_batch_size: 0,
            max_decode_batch_size: 0,
        }
    }
}

/// One generated row.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Index of its prompt in the input.
    pub prompt: usize,
    /// Generated ids, the stopping EOS id included.
    pub tokens: Vec<u32>,
    /// Log-probability of each token under the distribution it was sampled from.
    pub logprobs: Vec<f32>,
    /// Decoded text without the EOS token, cut before a stop string.
    pub text: String,
    pub finish: FinishReason,
}

/// Where the time went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RolloutStats {
    /// Distinct prompts prefilled and their tokens.
    pub prefill_prompts: usize,
    pub prefill_tokens: usize,
    pub prefill_secs: f64,
    /// Tokens sampled, and the time of the decode loop (forwards + sampling).
    pub decode_tokens: usize,
    pub decode_secs: f64,
    /// Of `decode_secs`, the part spent sampling.
    pub sample_secs: f64,
}

/// The rows that decode together, with their state and next-token logits.
struct Lane {
    rows: Vec<usize>,
    state: State,
    /// [rows, V] fp32.
    logits: Tensor,
}

/// Generates `num_generations` completions for each prompt; rows come back prompt-major.
pub fn rollout(
    model: &Rwkv7,
    tokenizer: &AutoTokenizer,
    prompts: &[Vec<u32>],
    opts: &RolloutOptions,
) -> Result<(Vec<Completion>, RolloutStats)> {
    opts.sampling.validate().map_err(Error::InvalidArgument)?;
    if opts.num_generations == 0 || opts.max_new_tokens == 0 || opts.prefill_chunk_size == 0 {
        return Err(Error::InvalidArgument(
            "num_generations, max_new_tokens and prefill_chunk_size must be at least 1".into(),
        ));
    }
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(Error::InvalidArgument(format!(
            "prompt {i} is empty: every prompt needs at least one token"
        )));
    }
    let _no_grad = tch::no_grad_guard();
    let mut stats = RolloutStats::default();

    // 1. Prefill each distinct prompt once.
    let t0 = Instant::now();
    let (unique, unique_of_prompt) = distinct(prompts.iter().map(Vec::as_slice));
    let (prefill_state, prefill_logits) = prefill_distinct(
        model,
        &unique,
        opts.prefill_chunk_size,
        opts.max_prefill_batch_size,
    )?;
    let prefill_logits = prefill_logits.to_kind(Kind::Float);
    stats.prefill_prompts = unique.len();
    stats.prefill_tokens = unique.iter().map(|p| p.len()).sum();
    stats.prefill_secs = t0.elapsed().as_secs_f64();

    // 2. Fan out: row p·G + g starts from prompt p's state.
    let g = opts.num_generations;
    let n_rows = prompts.len() * g;
    let row_source: Vec<i64> = (0..n_rows)
        .map(|r| unique_of_prompt[r / g] as i64)
        .collect();
    let cap = match opts.max_decode_batch_size {
        0 => n_rows.max(1),
        c => c,
    };
    let mut lanes: Vec<Lane> = (0..n_rows)
        .collect::<Vec<_>>()
        .chunks(cap)
        .map(|rows| {
            let idx = Tensor::from_slice(&rows.iter().map(|&r| row_source[r]).collect::<Vec<_>>())
                .to_device(model.device());
            Lane {
                rows: rows.to_vec(),
                state: prefill_state.index_select(&idx),
                logits: prefill_logits.index_select(0, &idx),
            }
        })
        .collect();

    // 3. Decode.
    let t1 = Instant::now();
    let mut samplers: Vec<Sampler> = (0..n_rows)
        .map(|r| Sampler::new(row_seed(opts.sampling.seed, r as u64)))
        .collect();
    let mut out: Vec<Completion> = (0..n_rows)
        .map(|r| Completion {
            prompt: r / g,
            tokens: Vec::new(),
            logprobs: Vec::new(),
            text: String::new(),
            finish: FinishReason::Length,
        })
        .collect();
    let mut finished = vec![false; n_rows];
    let vocab = model.dims.vocab_size;
    let mut scratch: Vec<f32> = Vec::new();
    let mut context: Vec<u32> = Vec::new();
    // Without a repetition penalty (which needs each row's history) the temperature, bias and
    // softmax of all rows run as one libtorch op; the rows then only draw from probabilities.
    let batched_softmax = opts.sampling.repetition_penalty == 1.0;
    let bias = dense_bias(&opts.sampling, vocab, model.device());
    while !lanes.is_empty() {
        for lane in &mut lanes {
            let b = lane.rows.len();
            let ts = Instant::now();
            scratch.resize(b * vocab, 0.0);
            if batched_softmax {
                sampling_probs(&lane.logits, &opts.sampling, bias.as_ref())
                    .f_copy_data(&mut scratch, b * vocab)?;
            } else {
                lane.logits.f_copy_data(&mut scratch, b * vocab)?;
            }
            for (j, &r) in lane.rows.iter().enumerate() {
                let row_logits = &mut scratch[j * vocab..(j + 1) * vocab];
                let c = &mut out[r];
                if opts.sampling.repetition_penalty != 1.0 {
                    context.clear();
                    context.extend_from_slice(&prompts[r / g]);
                    context.extend_from_slice(&c.tokens);
                }
                let (id, lp) = if batched_softmax {
                    samplers[r].sample_probs(row_logits, &opts.sampling)
                } else {
                    samplers[r].sample_logprob(row_logits, &context, &opts.sampling)
                };
                c.tokens.push(id);
                c.logprobs.push(lp);
                stats.decode_tokens += 1;
                if opts.eos_ids.contains(&id) {
                    c.finish = FinishReason::Eos;
                    finished[r] = true;
                } else if !opts.stop.is_empty()
                    && contains_stop(&tokenizer.decode_lossy(&c.tokens), &opts.stop)
                {
                    c.finish = FinishReason::Stop;
                    finished[r] = true;
                } else if c.tokens.len() >= opts.max_new_tokens {
                    finished[r] = true;
                }
            }
            stats.sample_secs += ts.elapsed().as_secs_f64();
            let keep: Vec<i64> = (0..b as i64)
                .filter(|&j| !finished[lane.rows[j as usize]])
                .collect();
            if keep.is_empty() {
                lane.rows.clear();
                continue;
            }
            if keep.len() < b {
                let idx = Tensor::from_slice(&keep).to_device(model.device());
                lane.state = lane.state.index_select(&idx);
                lane.rows = keep.iter().map(|&j| lane.rows[j as usize]).collect();
            }
            let next: Vec<i64> = lane
                .rows
                .iter()
                .map(|&r| out[r].tokens.last().map_or(0, |&t| t as i64))
                .collect();
            let input = Tensor::from_slice(&next)
                .view([next.len() as i64, 1])
                .to_device(model.device());
            let (logits, state) = model.forward(&input, Some(&lane.state), Some(1))?;
            lane.logits = logits.squeeze_dim(1).to_kind(Kind::Float);
            lane.state = state;
        }
        lanes.retain(|l| !l.rows.is_empty());
    }
    stats.decode_secs = t1.elapsed().as_secs_f64();

    for c in &mut out {
        let body = match c.finish {
            FinishReason::Eos => &c.tokens[..c.tokens.len() - 1],
            _ => &c.tokens[..],
        };
        let mut text = tokenizer.decode_lossy(body);
        if let Some(cut) = opts.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
            text.truncate(cut);
        }
        c.text = text;
    }
    Ok((out, stats))
}

/// `logit_bias` as a dense [V] tensor (clamped like the sampler does), or `None`.
fn dense_bias(p: &SamplingParams, vocab: usize, device: tch::Device) -> Option<Tensor> {
    if p.logit_bias.is_empty() {
        return None;
    }
    let mut dense = vec![0f32; vocab];
    for &(id, b) in &p.logit_bias {
        if let Some(x) = dense.get_mut(id as usize) {
            *x += b.clamp(-100.0, 100.0);
        }
    }
    Some(Tensor::from_slice(&dense).to_device(device))
}

/// softmax(logits / temperature + bias) over the last dimension (temperature 0: no division).
fn sampling_probs(logits: &Tensor, p: &SamplingParams, bias: Option<&Tensor>) -> Tensor {
    let mut z = if p.temperature > 0.0 && p.temperature != 1.0 {
        logits / p.temperature
    } else {
        logits.shallow_clone()
    };
    if let Some(b) = bias {
        z += b;
    }
    z.softmax(-1, Kind::Float)
}

fn contains_stop(text: &str, stop: &[String]) -> bool {
    stop.iter().any(|s| text.contains(s.as_str()))
}

/// The distinct prompts in first-seen order, and for each input its index among them.
pub(crate) fn distinct<'a>(
    prompts: impl Iterator<Item = &'a [u32]>,
) -> (Vec<&'a [u32]>, Vec<usize>) {
    let mut unique: Vec<&[u32]> = Vec::new();
    let mut seen: HashMap<&[u32], usize> = HashMap::new();
    let index = prompts
        .map(|p| {
            *seen.entry(p).or_insert_with(|| {
                unique.push(p);
                unique.len() - 1
            })
        })
        .collect();
    (unique, index)
}

/// Runs distinct, non-empty `prompts` through the model in chunks of `chunk` tokens, prompts of
/// equal length together (at most `max_batch` per forward, 0 = no cap), so no padding enters a
/// state. Returns their states and last-position logits [U, V] (model dtype) in input order.
/// Gradients flow through when grad mode is on (GRPO scoring).
pub(crate) fn prefill_distinct(
    model: &Rwkv7,
    prompts: &[&[u32]],
    chunk: usize,
    max_batch: usize,
) -> Result<(State, Tensor)> {
    // Prompts of one length run together; their chunks then have equal lengths too.
    let mut by_len: Vec<(usize, Vec<usize>)> = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        match by_len.iter_mut().find(|(l, _)| *l == p.len()) {
            Some((_, v)) => v.push(i),
            None => by_len.push((p.len(), vec![i])),
        }
    }
    let cap = match max_batch {
        0 => prompts.len().max(1),
        c => c,
    };
    let mut states = Vec::new();
    let mut logits = Vec::new();
    let mut order = Vec::new();
    for (len, members) in &by_len {
        for group in members.chunks(cap) {
            let mut state: Option<State> = None;
            let mut last = None;
            let mut start = 0;
            while start < *len {
                let n = chunk.max(1).min(len - start);
                let ids: Vec<i64> = group
                    .iter()
                    .flat_map(|&i| prompts[i][start..start + n].iter().map(|&t| t as i64))
                    .collect();
                let ids = Tensor::from_slice(&ids)
                    .view([group.len() as i64, n as i64])
                    .to_device(model.device());
                let (l, s) = model.forward(&ids, state.as_ref(), Some(1))?;
                state = Some(s);
                last = Some(l);
                start += n;
            }
            if let (Some(s), Some(l)) = (state, last) {
                states.push(s);
                logits.push(l.squeeze_dim(1));
                order.extend_from_slice(group);
            }
        }
    }
    let state = State::cat(&states.iter().collect::<Vec<_>>());
    let logits = Tensor::cat(&logits, 0);
    // Back to input order.
    let mut inverse = vec![0i64; order.len()];
    for (pos, &i) in order.iter().enumerate() {
        inverse[i] = pos as i64;
    }
    let idx = Tensor::from_slice(&inverse).to_device(model.device());
    Ok((state.index_select(&idx), logits.index_select(0, &idx)))
}

/// splitmix64 of (seed, row): independent streams for nearby rows.
pub fn row_seed(seed: u64, row: u64) -> u64 {
    let mut z = seed ^ row.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
