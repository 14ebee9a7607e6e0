//! Throughput of the two forward paths, each next to a baseline measured in the same run:
//! - full-sequence forward, and the wkv7 kernel against the same recurrence from stock tensor ops;
//! - stateful decode, against re-running the whole prefix for every token (no state).
//!
//! With `--rollout`, instead: batched rollout decoding through `generate::rollout` (the GRPO
//! engine) at several batch sizes, for comparison with the official `rwkv` pip package
//! (`scripts/bench-rollout`).

use anyhow::{bail, Context, Result};
use clap::Args;
use rwkvtune_core::generate::{rollout, RolloutOptions, RolloutStats, SamplingParams};
use rwkvtune_core::hub::{parse_kind, AutoModel};
use rwkvtune_core::model::Rwkv7;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model directory (e.g. ../shared/reference/models/t2x128).
    #[arg(long)]
    pub model: PathBuf,
    /// Sequence length of the full forward pass.
    #[arg(long, default_value_t = 128)]
    pub seq_len: i64,
    #[arg(long, default_value_t = 1)]
    pub batch: i64,
    /// Tokens decoded one by one.
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: i64,
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    #[arg(long, default_value = "fp32")]
    pub dtype: String,
    /// Measure batched rollout decoding (`generate::rollout`: temperature 1, top-p 1, no EOS)
    /// instead of the forward paths; each batch size is warmed up once, then timed `--repeat`
    /// times.
    #[arg(long)]
    pub rollout: bool,
    /// Rollout: batch sizes (rows decoding together, each from its own random prompt).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,8,64",
        requires = "rollout"
    )]
    pub batches: Vec<usize>,
    /// Rollout: tokens generated per row (no EOS, so every row generates exactly this many).
    #[arg(long, default_value_t = 32, requires = "rollout")]
    pub new_tokens: usize,
    /// Rollout: random prompt tokens per row.
    #[arg(long, default_value_t = 16, requires = "rollout")]
    pub prompt_len: usize,
    /// Rollout: seed of the random prompts and of the sampling.
    #[arg(long, default_value_t = 42, requires = "rollout")]
    pub seed: u64,
    /// Rollout: print one JSON object instead of text.
    #[arg(long, requires = "rollout")]
    pub json: bool,
}

/// Best-of-`repeat` wall time of `f` in seconds, after one warm-up call.
fn time<F: FnMut() -> Result<()>>(repeat: usize, mut f: F) -> Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn composed_wkv(
    r: &Tensor,
    w: &Tensor,
    k: &Tensor,
    v: &Tensor,
    a: &Tensor,
    b: &Tensor,
    s0: &Tensor,
) -> Tensor {
    let mut s = s0.shallow_clone();
    let mut ys = Vec::new();
    for t in 0..r.size()[1] {
        let at = |x: &Tensor| x.select(1, t);
        let sa = s.matmul(&at(a).unsqueeze(-1));
        s = &s * at(w).unsqueeze(2)
            + sa * at(b).unsqueeze(2)
            + at(v).unsqueeze(-1) * at(k).unsqueeze(2);
        ys.push(s.matmul(&at(r).unsqueeze(-1)).squeeze_dim(-1));
    }
    Tensor::stack(&ys, 1)
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.rollout {
        return run_rollout(&a);
    }
    let model: Rwkv7 = AutoModel::from_pretrained(&a.model, Device::Cpu, parse_kind(&a.dtype)?)
        .with_context(|| format!("loading {}", a.model.display()))?;
    let _guard = tch::no_grad_guard();
    let d = model.dims;
    println!(
        "model {} ({} layers, C {}, H {}, N {}, V {}), dtype {}, libtorch threads {}, CPU",
        a.model.display(),
        d.n_layer,
        d.n_embd,
        d.n_head,
        d.head_size,
        d.vocab_size,
        a.dtype,
        tch::get_num_threads()
    );
    let (b, t) = (a.batch, a.seq_len);
    let ids = Tensor::randint(d.vocab_size as i64, [b, t], (Kind::Int64, Device::Cpu));

    let fwd = time(a.repeat, || {
        Ok(model.forward(&ids, None, None).map(|_| ())?)
    })?;
    let fwd_tps = (b * t) as f64 / fwd;
    println!(
        "full-sequence forward  B={b} T={t}: {:>10.1} tokens/s ({:.2} ms/call)",
        fwd_tps,
        fwd * 1e3
    );

    let (h, n) = (d.n_head as i64, d.head_size as i64);
    let o = (Kind::Float, Device::Cpu);
    let x = |s: f64| Tensor::randn([b, t, h, n], o) * s;
    let kappa = x(1.0);
    let kappa = &kappa / kappa.norm_scalaropt_dim(2, [-1], true);
    let (r, k, v) = (x(0.5), x(0.5), x(0.5));
    let w = (Tensor::rand([b, t, h, n], o) * -0.6).exp();
    let (aa, bb) = (-&kappa, &kappa * Tensor::rand([b, t, h, n], o));
    let s0 = Tensor::zeros([b, h, n, n], o);
    let kern = time(a.repeat, || {
        Ok(rwkvtune_kernels::wkv7(&r, &w, &k, &v, &aa, &bb, &s0).map(|_| ())?)
    })?;
    let comp = time(a.repeat, || {
        let _ = composed_wkv(&r, &w, &k, &v, &aa, &bb, &s0);
        Ok(())
    })?;
    println!(
        "wkv7 kernel            B={b} T={t}: {:>10.1} tokens/s; stock-op recurrence {:.1} tokens/s; ratio {:.1}x",
        (b * t) as f64 / kern, (b * t) as f64 / comp, comp / kern
    );

    let steps = a.decode_tokens.max(1);
    let toks = Tensor::randint(d.vocab_size as i64, [1, steps], (Kind::Int64, Device::Cpu));
    let decode = time(a.repeat, || {
        let mut state = None;
        for i in 0..steps {
            let (_, s) = model.forward(&toks.narrow(1, i, 1), state.as_ref(), Some(1))?;
            state = Some(s);
        }
        Ok(())
    })?;
    let naive = time(1, || {
        for i in 0..steps {
            let _ = model.forward(&toks.narrow(1, 0, i + 1), None, Some(1))?;
        }
        Ok(())
    })?;
    println!(
        "stateful decode        B=1 {steps} tokens: {:>10.1} tokens/s; prefix re-run baseline {:.1} tokens/s; ratio {:.1}x",
        steps as f64 / decode, steps as f64 / naive, naive / decode
    );
    Ok(())
}

/// `n` distinct-with-overwhelming-probability prompts of `len` ids in [1, vocab) (splitmix64).
fn random_prompts(n: usize, len: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut x = seed ^ 0x5851_f42d_4c95_7f2d;
    let mut next = move || {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let span = (vocab.max(2) - 1) as u64;
    (0..n)
        .map(|_| (0..len).map(|_| (1 + next() % span) as u32).collect())
        .collect()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// Decode throughput of `generate::rollout` per batch size: B distinct random prompts of
/// `prompt_len` tokens, one completion each, `new_tokens` tokens per row (no EOS).
fn run_rollout(a: &BenchArgs) -> Result<()> {
    if a.batches.is_empty() || a.batches.contains(&0) {
        bail!("--batches needs batch sizes of at least 1");
    }
    if a.new_tokens == 0 || a.prompt_len == 0 {
        bail!("--new-tokens and --prompt-len must be at least 1");
    }
    let model: Rwkv7 = AutoModel::from_pretrained(&a.model, Device::Cpu, parse_kind(&a.dtype)?)
        .with_context(|| format!("loading {}", a.model.display()))?;
    let tok = super::load_tokenizer(Some(&a.model))?;
    let d = model.dims;
    let threads = tch::get_num_threads();
    if !a.json {
        println!(
            "model {} ({} layers, C {}, H {}, N {}, V {}), dtype {}, libtorch threads {}, CPU",
            a.model.display(),
            d.n_layer,
            d.n_embd,
            d.n_head,
            d.head_size,
            d.vocab_size,
            a.dtype,
            threads
        );
        println!(
            "rollout: prompt {} tokens, {} new tokens per row, temperature 1, top-p 1, no EOS; \
             best of {} after 1 warm-up",
            a.prompt_len,
            a.new_tokens,
            a.repeat.max(1)
        );
    }
    let opts = RolloutOptions {
        sampling: SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            repetition_penalty: 1.0,
            seed: a.seed,
            ..SamplingParams::default()
        },
        num_generations: 1,
        max_new_tokens: a.new_tokens,
        eos_ids: Vec::new(),
        stop: Vec::new(),
        ..RolloutOptions::default()
    };
    let mut results = Vec::new();
    for &b in &a.batches {
        let prompts = random_prompts(b, a.prompt_len, d.vocab_size, a.seed ^ b as u64);
        let expect = b * a.new_tokens;
        let mut runs: Vec<RolloutStats> = Vec::new();
        for i in 0..=a.repeat.max(1) {
            let (done, stats) = rollout(&model, &tok, &prompts, &opts)
                .with_context(|| format!("rollout at batch {b}"))?;
            let got: usize = done.iter().map(|c| c.tokens.len()).sum();
            if got != expect || stats.decode_tokens != expect {
                bail!("batch {b}: expected {expect} generated tokens, got {got}");
            }
            if i > 0 {
                runs.push(stats);
            }
        }
        let tps: Vec<f64> = runs
            .iter()
            .map(|s| s.decode_tokens as f64 / s.decode_secs)
            .collect();
        let best_i = (0..runs.len())
            .max_by(|&i, &j| tps[i].total_cmp(&tps[j]))
            .unwrap_or(0);
        let best = runs[best_i];
        let fwd = best.decode_secs - best.sample_secs;
        let median_tps = median(&tps);
        if !a.json {
            println!(
                "rollout decode B={b:<4} {:>10.1} tokens/s (median {:.1}); decode {:.1} ms = \
                 forward {:.1} ms ({} steps) + sampling {:.1} ms ({:.0}%); prefill {:.1} ms",
                tps[best_i],
                median_tps,
                best.decode_secs * 1e3,
                fwd * 1e3,
                a.new_tokens - 1,
                best.sample_secs * 1e3,
                100.0 * best.sample_secs / best.decode_secs,
                best.prefill_secs * 1e3
            );
        }
        results.push(serde_json::json!({
            "batch": b,
            "decode_tokens": best.decode_tokens,
            "decode_secs": best.decode_secs,
            "sample_secs": best.sample_secs,
            "forward_secs": fwd,
            "forward_steps": a.new_tokens - 1,
            "prefill_secs": best.prefill_secs,
            "prefill_tokens": best.prefill_tokens,
            "tokens_per_sec": tps[best_i],
            "tokens_per_sec_median": median_tps,
            "tokens_per_sec_runs": tps,
        }));
    }
    if a.json {
        let out = serde_json::json!({
            "tool": "rwkvtune",
            "model": a.model.display().to_string(),
            "dtype": a.dtype,
            "threads": threads,
            "prompt_len": a.prompt_len,
            "new_tokens": a.new_tokens,
            "repeat": a.repeat.max(1),
            "seed": a.seed,
            "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}
