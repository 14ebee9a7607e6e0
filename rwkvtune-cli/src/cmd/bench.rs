//! Throughput of the two forward paths, each next to a baseline measured in the same run:
//! - full-sequence forward, and the wkv7 kernel against the same recurrence from stock tensor ops;
//! - stateful decode, against re-running the whole prefix for every token (no state).

use anyhow::{Context, Result};
use clap::Args;
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
