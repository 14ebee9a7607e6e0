//! Per-token log-probabilities of completions, in exactly the context they were generated in.
//!
//! Each distinct prompt runs once (prompts of equal length batched, long ones in
//! `prefill_chunk_size` chunks carrying the state); its state fans out to its rows, which then run
//! their completions (right-padded at the end, where padding cannot reach any scored position).
//! No padding ever sits between a prompt and its completion, so the scores are those of the
//! sampling pass. Gradients flow through the prompt part too when grad mode is on.

use crate::error::Result;
use crate::generate::{distinct, prefill_distinct};
use crate::model::Rwkv7;
use tch::{Kind, Tensor};

/// A row to score.
#[derive(Debug, Clone, Copy)]
pub struct ScoredRow<'a> {
    pub prompt: &'a [u32],
    pub completion: &'a [u32],
}

/// What [`completion_logprobs`] returns for N rows, C = the longest completion.
pub struct Scores {
    /// [N, C] fp32 log π(token | context) (0 at padding), with grad when grad mode is on.
    pub logp: Tensor,
    /// [N, C] fp32 entropy of the predicted distribution (no grad), when asked for.
    pub entropy: Option<Tensor>,
}

/// Scores `rows` under `model` with logits divided by `temperature` (the sampling distribution;
/// 0 is treated as 1).
pub fn completion_logprobs(
    model: &Rwkv7,
    rows: &[ScoredRow],
    temperature: f64,
    prefill_chunk: usize,
    want_entropy: bool,
) -> Result<Scores> {
    let dev = model.device();
    let n = rows.len() as i64;
    let c = rows
        .iter()
        .map(|r| r.completion.len())
        .max()
        .unwrap_or(0)
        .max(1);

    // Each distinct prompt runs once; its rows share the result.
    let (unique, row_prompt) = distinct(rows.iter().map(|r| r.prompt));
    let (states, lasts) = prefill_distinct(model, &unique, prefill_chunk, 0)?;
    let idx = Tensor::from_slice(&row_prompt.iter().map(|&u| u as i64).collect::<Vec<_>>())
        .to_device(dev);
    let first = lasts.index_select(0, &idx).unsqueeze(1); // [N, 1, V]
    let logits = if c > 1 {
        let state = states.index_select(&idx);
        let mut input = vec![0i64; rows.len() * (c - 1)];
        for (i, r) in rows.iter().enumerate() {
            for (j, &t) in r.completion.iter().take(c - 1).enumerate() {
                input[i * (c - 1) + j] = t as i64;
            }
        }
        let input = Tensor::from_slice(&input)
            .view([n, c as i64 - 1])
            .to_device(dev);
        let (rest, _) = model.forward(&input, Some(&state), None)?;
        Tensor::cat(&[first, rest], 1)
    } else {
        first
    };
    let mut logits = logits.to_kind(Kind::Float);
    if temperature > 0.0 && temperature != 1.0 {
        logits /= temperature;
    }
    let mut targets = vec![0i64; rows.len() * c];
    for (i, r) in rows.iter().enumerate() {
        for (j, &t) in r.completion.iter().enumerate() {
            targets[i * c + j] = t as i64;
        }
    }
    let targets = Tensor::from_slice(&targets)
        .view([n, c as i64])
        .to_device(dev);
    let lse = logits.logsumexp([-1], false);
    let picked = logits
        .gather(-1, &targets.unsqueeze(-1), false)
        .squeeze_dim(-1);
    let mut lens = vec![0f32; rows.len() * c];
    for (i, r) in rows.iter().enumerate() {
        for j in 0..r.completion.len() {
            lens[i * c + j] = 1.0;
        }
    }
    let valid = Tensor::from_slice(&lens).view([n, c as i64]).to_device(dev);
    let logp = (picked - lse) * &valid;
    let entropy = want_entropy.then(|| {
        let _g = tch::no_grad_guard();
        let lp = logits.detach().log_softmax(-1, Kind::Float);
        -(lp.exp() * &lp).sum_dim_intlist(-1, false, Kind::Float) * &valid
    });
    Ok(Scores { logp, entropy })
}
