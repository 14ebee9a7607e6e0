//! Plugin overhead benchmark: a Wasm reward vs the same reward as a native Rust closure, in the
//! same process, on a batch of 64 completions of ~2 KB; plus first load (compile) vs cached load.
//! Rust plugin (`length_penalty`) and Python plugin (`python_length_reward`, componentize-py;
//! its first load compiles an 18 MB component, 15–30 s).
//!
//! ```sh
//! scripts/build-plugins && cargo run --release -p rwkvtune-core --example plugin_bench
//! ```

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rwkvtune_core::plugin::*;
use rwkvtune_core::tokenizer::AutoTokenizer;

const CALLS: usize = 200;

fn plugin(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} missing: run scripts/build-plugins first",
        p.display()
    );
    p
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn time_calls(f: &mut dyn RewardFn, batch: &RolloutBatch) -> Duration {
    f.compute(batch).unwrap(); // warm-up
    median(
        (0..CALLS)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f.compute(batch).unwrap());
                t.elapsed()
            })
            .collect(),
    )
}

/// The length-penalty plugin's formula with its default config, natively.
fn native_length_penalty(b: &RolloutBatch) -> Result<Vec<Option<f32>>, String> {
    Ok((0..b.len())
        .map(|i| {
            let ids = b.tokens.real_ids(i);
            let over = ((ids.len() as f32 - 256.0).max(0.0) / 768.0).min(1.0);
            let rep = if ids.len() < 4 {
                0.0
            } else {
                let grams = ids.windows(4);
                let total = grams.len();
                let mut seen = HashSet::with_capacity(total);
                grams.filter(|g| !seen.insert(*g)).count() as f32 / total as f32
            };
            Some(-over - rep)
        })
        .collect())
}

/// The Python plugin's formula with its default config (unit tokens, target 256, 4-grams,
/// repetition weight 1), natively.
fn native_python_length(b: &RolloutBatch) -> Result<Vec<Option<f32>>, String> {
    Ok((0..b.len())
        .map(|i| {
            let ids = b.tokens.real_ids(i);
            let score = (1.0 - (ids.len() as f64 - 256.0).abs() / 256.0).max(0.0);
            let rep = if ids.len() < 4 {
                0.0
            } else {
                let grams = ids.windows(4);
                let total = grams.len();
                let mut seen = HashSet::with_capacity(total);
                grams.filter(|g| !seen.insert(*g)).count() as f64 / total as f64
            };
            Some((score - rep) as f32)
        })
        .collect())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let tok = Arc::new(AutoTokenizer::builtin());
    let text = "Let me think step by step about the arithmetic here. ".repeat(40); // ~2.1 KB
    let n = 64;
    let rows: Vec<Vec<u32>> = (0..n).map(|_| tok.encode(&text).unwrap()).collect();
    let cols = rows[0].len();
    let batch = RolloutBatch {
        prompts: vec!["What is 6 * 7?".into(); n],
        completions: vec![text.clone(); n],
        tokens: TokenMatrix::from_rows(&rows, cols),
        extras: vec![r#"{"ground_truth": "42"}"#.into(); n],
    };
    println!(
        "batch: {n} completions x {} bytes, {cols} tokens each; {} logical CPUs",
        text.len(),
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );

    // --- load: compile vs cache --------------------------------------------------------------
    let cache = std::env::temp_dir().join(format!("rwkvtune-plugin-bench-{}", std::process::id()));
    let rt = PluginRuntime::new(RuntimeOptions {
        cache_dir: Some(cache.clone()),
        ..Default::default()
    })
    .unwrap();
    for name in ["format_reward", "length_penalty", "python_length_reward"] {
        let first = rt.load(&plugin(name)).unwrap();
        let second = rt.load(&plugin(name)).unwrap();
        assert_eq!(second.cache, CacheOutcome::Hit);
        println!(
            "{name:>20}: first load (compile + store) {:8.2} ms, cached load {:6.2} ms ({:.0}x)",
            first.load_time.as_secs_f64() * 1e3,
            second.load_time.as_secs_f64() * 1e3,
            first.load_time.as_secs_f64() / second.load_time.as_secs_f64()
        );
    }
    let t = Instant::now();
    let quiet: LogSink = Arc::new(|_: &LogRecord| {});
    let mut wasm_len = rt
        .reward(
            &PluginSpec::new(plugin("length_penalty")),
            tok.clone(),
            quiet.clone(),
        )
        .unwrap();
    println!(
        "length_penalty: cached load + link + instantiate + init {:.2} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    // --- per call --------------------------------------------------------------------------------
    let mut native_len = NativeReward::new("native-length", OnError::Abort, native_length_penalty);
    assert_eq!(
        wasm_len.compute(&batch).unwrap(),
        native_len.compute(&batch).unwrap()
    );
    let mut wasm_noop = rt
        .reward(
            &PluginSpec::new(plugin("hostile")).with_config(r#"{"mode": "ok"}"#),
            tok.clone(),
            quiet.clone(),
        )
        .unwrap();
    let mut native_noop = NativeReward::new("native-noop", OnError::Abort, |b: &RolloutBatch| {
        Ok(vec![Some(1.0); b.len()])
    });

    let w = time_calls(&mut wasm_len, &batch);
    let nat = time_calls(&mut native_len, &batch);
    println!(
        "length penalty, median of {CALLS}: wasm {:.3} ms, native {:.3} ms, wasm/native {:.1}x, overhead {:.3} ms/call",
        w.as_secs_f64() * 1e3,
        nat.as_secs_f64() * 1e3,
        w.as_secs_f64() / nat.as_secs_f64(),
        (w.as_secs_f64() - nat.as_secs_f64()) * 1e3
    );
    let w = time_calls(&mut wasm_noop, &batch);
    let nat = time_calls(&mut native_noop, &batch);
    println!(
        "no-op reward (pure boundary cost), median of {CALLS}: wasm {:.3} ms, native {:.4} ms",
        w.as_secs_f64() * 1e3,
        nat.as_secs_f64() * 1e3
    );

    // --- Python plugin (componentize-py) vs the same reward natively ---------------------------
    let py = PluginSpec::new(plugin("python_length_reward"));
    let reps = 20;
    let load = median(
        (0..reps)
            .map(|_| rt.load(&py.path).unwrap().load_time)
            .collect(),
    );
    let mut start = Vec::new();
    let mut start_call = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        let mut f = rt.reward(&py, tok.clone(), quiet.clone()).unwrap();
        start.push(t.elapsed());
        std::hint::black_box(f.compute(&batch).unwrap());
        start_call.push(t.elapsed());
    }
    let (start, start_call) = (median(start), median(start_call));
    println!(
        "python_length_reward, median of {reps}: cached load {:.2} ms; cached load + link + \
         instantiate + init {:.2} ms (so link + instantiate + init ~{:.2} ms); that + first call \
         {:.2} ms",
        ms(load),
        ms(start),
        ms(start.saturating_sub(load)),
        ms(start_call)
    );
    let mut wasm_py = rt.reward(&py, tok.clone(), quiet).unwrap();
    let mut native_py = NativeReward::new("native-py-length", OnError::Abort, native_python_length);
    let (a, b) = (
        wasm_py.compute(&batch).unwrap(),
        native_py.compute(&batch).unwrap(),
    );
    for (x, y) in a.iter().zip(&b) {
        match (x, y) {
            (RewardValue::Value(x), RewardValue::Value(y)) => assert!((x - y).abs() < 1e-5),
            _ => panic!("{x:?} vs {y:?}"),
        }
    }
    let w = time_calls(&mut wasm_py, &batch);
    let nat = time_calls(&mut native_py, &batch);
    println!(
        "python length reward, median of {CALLS}: python wasm {:.3} ms, native {:.3} ms, \
         wasm/native {:.0}x, overhead {:.3} ms/call",
        ms(w),
        ms(nat),
        w.as_secs_f64() / nat.as_secs_f64(),
        ms(w) - ms(nat)
    );
    let _ = std::fs::remove_dir_all(cache);
}
