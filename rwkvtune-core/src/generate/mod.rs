//! Text generation with the RNN form of RWKV-7: prefill the prompt in chunks while carrying the
//! state, then decode one token at a time from that state. Text is streamed as soon as it forms
//! complete characters.

mod rollout;
mod sampler;

pub(crate) use rollout::{distinct, prefill_distinct};
pub use rollout::{rollout, row_seed, Completion, RolloutOptions, RolloutStats};
pub use sampler::{argmax, Sampler, SamplingParams};

use crate::error::{Error, Result};
use crate::model::{Rwkv7, State};
use crate::tokenizer::AutoTokenizer;
use std::time::Instant;
use tch::{Kind, Tensor};

/// Prompt tokens per forward call while prefilling (bounds activation memory on long prompts).
pub const PREFILL_CHUNK: usize = 512;

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub sampling: SamplingParams,
    pub max_new_tokens: usize,
    /// Generation ends when one of these ids is sampled (the id is not part of the text).
    pub eos_ids: Vec<u32>,
    /// Generation ends when the text contains one of these (cut before it).
    pub stop: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Eos,
    Stop,
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug)]
pub struct Generation {
    /// Generated ids, without the final EOS.
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    pub prefill_tokens: usize,
    pub prefill_secs: f64,
    pub decode_tokens: usize,
    pub decode_secs: f64,
}

/// Runs `ids` through the model in chunks from `state`, returning the last position's logits.
pub fn prefill(model: &Rwkv7, ids: &[u32], state: Option<State>) -> Result<(Tensor, State)> {
    if ids.is_empty() {
        return Err(Error::InvalidArgument(
            "the prompt is empty: give at least one token".into(),
        ));
    }
    let mut state = state;
    let mut last = None;
    for chunk in ids.chunks(PREFILL_CHUNK) {
        let t: Vec<i64> = chunk.iter().map(|&i| i as i64).collect();
        let (logits, s) = model.forward(
            &Tensor::from_slice(&t).unsqueeze(0),
            state.as_ref(),
            Some(1),
        )?;
        state = Some(s);
        last = Some(logits);
    }
    match (last, state) {
        (Some(l), Some(s)) => Ok((l.reshape([-1]).to_kind(Kind::Float), s)),
        _ => Err(Error::InvalidArgument("the prompt is empty".into())),
    }
}

/// Samples up to `max_new_tokens` after `prompt`, calling `on_text` with each new piece of text.
pub fn generate(
    model: &Rwkv7,
    tokenizer: &AutoTokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation> {
    opts.sampling.validate().map_err(Error::InvalidArgument)?;
    let _guard = tch::no_grad_guard();
    let t0 = Instant::now();
    let (mut logits, mut state) = prefill(model, prompt, None)?;
    let prefill_secs = t0.elapsed().as_secs_f64();

    let mut sampler = Sampler::new(opts.sampling.seed);
    let mut context: Vec<u32> = prompt.to_vec();
    let mut tokens = Vec::new();
    let mut emitted = 0usize;
    let mut text = String::new();
    let mut finish = FinishReason::Length;
    let t1 = Instant::now();
    let mut decode_tokens = 0;
    let mut row = vec![0f32; model.dims.vocab_size];
    while tokens.len() < opts.max_new_tokens {
        let v = row.len();
        logits.f_copy_data(&mut row, v)?;
        let next = sampler.sample(&mut row, &context, &opts.sampling);
        if opts.eos_ids.contains(&next) {
            finish = FinishReason::Eos;
            break;
        }
        tokens.push(next);
        context.push(next);
        text = tokenizer.decode_lossy(&tokens);
        if let Some(cut) = opts.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
            text.truncate(cut);
            finish = FinishReason::Stop;
        }
        // Hold back a trailing partial character until its remaining bytes arrive.
        let ready = text.trim_end_matches('\u{FFFD}');
        if finish == FinishReason::Stop || ready.len() > emitted {
            let upto = if finish == FinishReason::Stop {
                text.len()
            } else {
                ready.len()
            };
            if upto > emitted && text.is_char_boundary(emitted) {
                on_text(&text[emitted..upto]);
                emitted = upto;
            }
        }
        if finish == FinishReason::Stop || tokens.len() == opts.max_new_tokens {
            break;
        }
        let input = Tensor::from_slice(&[next as i64]).unsqueeze(0);
        let (l, s) = model.forward(&input, Some(&state), Some(1))?;
        logits = l.reshape([-1]).to_kind(Kind::Float);
        state = s;
        decode_tokens += 1;
    }
    if text.len() > emitted && text.is_char_boundary(emitted) {
        on_text(&text[emitted..]);
    }
    Ok(Generation {
        tokens,
        text,
        finish,
        prefill_tokens: prompt.len(),
        prefill_secs,
        decode_tokens,
        decode_secs: t1.elapsed().as_secs_f64(),
    })
}
