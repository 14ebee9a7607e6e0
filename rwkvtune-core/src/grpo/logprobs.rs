//! Per-token log-probabilities of completions, in exactly the context they were generated in.
//!
//! Each distinct prompt runs once (prompts of equal length batched, long ones in
//! `prefill_chunk_size` chunks carrying the state); its state fans out to its rows, which then run
//! their completions (right-padded at the end, where padding cannot reach any scored position).
//! No padding ever sits between a prompt and its completion, so the scores are those of the
//! sampling pass. Gradients flow through the prompt part too when grad mode is on.

use crate::error::Result;
use crate::model::{Rwkv7, State};
use std::collections::HashMap;
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

    // Distinct prompts, grouped by length for batched forwards.
    let mut unique: Vec<&[u32]> = Vec::new();
    let mut seen: HashMap<&[u32], usize> = HashMap::new();
    let row_prompt: Vec<usize> = rows
        .iter()
        .map(|r| {
            *seen.entry(r.prompt).or_insert_with(|| {
                unique.push(r.prompt);
                unique.len() - 1
            })
        })
        .collect();
    let mut by_len: Vec<(usize, Vec<usize>)> = Vec::new();
    for (u, p) in unique.iter().enumerate() {
        match by_len.iter_mut().find(|(l, _)| *l == p.len()) {
            Some((_, v)) => v.push(u),
            None => by_len.push((p.len(), vec![u])),
        }
    }
    let mut states = Vec::new();
    let mut lasts = Vec::new();
    let mut position = vec![0i64; unique.len()];
    let mut next = 0i64;
    for (len, members) in &by_len {
        let mut state: Option<State> = None;
        let mut last = None;
        let mut start = 0;
        while start < *len {
            let k = prefill_chunk.max(1).min(len - start);
            let ids: Vec<i64> = members
                .iter()
                .flat_map(|&u| unique[u][start..start + k].iter().map(|&t| t as i64))
                .collect();
            let ids = Tensor::from_slice(&ids)
                .view([members.len() as i64, k as i64])
                .to_device(dev);
            let (l, s) = model.forward(&ids, state.as_ref(), Some(1))?;
            state = Some(s);
            last = Some(l);
            start += k;
        }
        if let (Some(s), Some(l)) = (state, last) {
            states.push(s);
            lasts.push(l);
            for &u in members {
                position[u] = next;
                next += 1;
            }
        }
    }
    let idx = Tensor::from_slice(&row_prompt.iter().map(|&u| position[u]).collect::<Vec<_>>())
        .to_device(dev);
    let first = Tensor::cat(&lasts, 0).index_select(0, &idx); // [N, 1, V]
    let logits = if c > 1 {
        let state = State::cat(&states.iter().collect::<Vec<_>>()).index_select(&idx);
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
