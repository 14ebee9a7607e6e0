//! Wasm plugin host: the example plugins on fixed inputs, and hostile plugins (trap, infinite
//! loop, memory hog, sandbox escape, wrong count, NaN, bad post-processor output) each giving the
//! documented outcome while the host stays usable.
//!
//! The plugins are built by `scripts/build-plugins` (run here once per test binary; it is
//! idempotent and takes well under a second when nothing changed).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use rwkvtune_core::plugin::*;
use rwkvtune_core::tokenizer::AutoTokenizer;
use serde_json::json;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The path of a built plugin; builds them all on first use and fails loudly if that fails.
fn wasm(name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let status = std::process::Command::new(root().join("scripts/build-plugins"))
            .status()
            .expect("cannot run scripts/build-plugins");
        assert!(status.success(), "scripts/build-plugins failed: the plugin tests need the wasm32-wasip2 target and the plugins/ workspace to build");
    });
    let path = root().join(format!("plugins/target/wasm32-wasip2/release/{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run scripts/build-plugins",
        path.display()
    );
    path
}

fn tokenizer() -> Arc<dyn PluginTokenizer> {
    Arc::new(AutoTokenizer::builtin())
}

/// A runtime whose cache is a temporary directory shared by the tests of this process (never
/// ~/.cache; shared so each plugin is compiled once per run), plus a scratch directory.
fn runtime() -> (PluginRuntime, tempfile::TempDir) {
    static CACHE: OnceLock<tempfile::TempDir> = OnceLock::new();
    let cache = CACHE.get_or_init(|| tempfile::tempdir().unwrap());
    let rt = PluginRuntime::new(RuntimeOptions {
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    })
    .unwrap();
    (rt, tempfile::tempdir().unwrap())
}

type Records = Arc<Mutex<Vec<LogRecord>>>;

fn capture() -> (LogSink, Records) {
    let records: Records = Arc::default();
    let r = records.clone();
    (
        Arc::new(move |rec: &LogRecord| r.lock().unwrap().push(rec.clone())),
        records,
    )
}

fn batch(prompts: &[&str], completions: &[&str], extras: &[serde_json::Value]) -> RolloutBatch {
    let tok = AutoTokenizer::builtin();
    RolloutBatch::from_texts(
        prompts.iter().map(|s| s.to_string()).collect(),
        completions.iter().map(|s| s.to_string()).collect(),
        extras,
        32,
        |t| tok.encode(t).unwrap(),
    )
}

fn simple_batch(n: usize) -> RolloutBatch {
    let p = vec!["p"; n];
    let c = vec!["c"; n];
    batch(&p, &c, &vec![json!({}); n])
}

fn hostile(
    rt: &PluginRuntime,
    mode: &str,
    on_error: OnError,
    limits: PluginLimits,
) -> (WasmReward, Records) {
    let (log, records) = capture();
    let spec = PluginSpec::new(wasm("hostile"))
        .with_config(json!({ "mode": mode }).to_string())
        .with_on_error(on_error)
        .with_limits(limits);
    (rt.reward(&spec, tokenizer(), log).unwrap(), records)
}

fn values(v: &[RewardValue]) -> Vec<Option<f32>> {
    v.iter()
        .map(|r| match r {
            RewardValue::Value(x) => Some(*x),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Example plugins on fixed inputs
// ---------------------------------------------------------------------------------------------

#[test]
fn format_reward_scores_think_answer_structure() {
    let (rt, _d) = runtime();
    let spec = PluginSpec::new(wasm("format_reward")).with_config(r#"{"partial": 0.25}"#);
    let mut f = rt.reward(&spec, tokenizer(), stderr_sink()).unwrap();
    assert_eq!(f.info().name, "format-reward");
    let b = batch(
        &["q"; 4],
        &[
            "<think>2+2</think>\n<answer>4</answer>",
            "<answer>4</answer>",
            "4",
            "<think>x</think><answer>4</answer> trailing",
        ],
        &[json!({}), json!({}), json!({}), json!({})],
    );
    assert_eq!(
        values(&f.compute(&b).unwrap()),
        [Some(1.0), Some(0.25), Some(0.0), Some(0.25)]
    );
}

#[test]
fn math_reward_compares_final_answer_with_ground_truth_column() {
    let (rt, _d) = runtime();
    let mut f = rt
        .reward(
            &PluginSpec::new(wasm("math_reward")),
            tokenizer(),
            stderr_sink(),
        )
        .unwrap();
    let b = batch(
        &["q"; 6],
        &[
            "so the answer is \\boxed{1,000}",
            "<answer>3/4</answer>",
            "I think it is 41.",
            "The result: 12",
            "no ground truth here",
            "\\boxed{\\frac{1}{2}}",
        ],
        &[
            json!({"ground_truth": "1000"}),
            json!({"ground_truth": 0.75}),
            json!({"ground_truth": "42"}),
            json!({"ground_truth": 12}),
            json!({"other": 1}),
            json!({"ground_truth": "\\frac{1}{2}"}),
        ],
    );
    assert_eq!(
        values(&f.compute(&b).unwrap()),
        [Some(1.0), Some(1.0), Some(0.0), Some(1.0), None, Some(1.0)]
    );
}

#[test]
fn length_penalty_reads_ids_and_can_use_the_host_tokenizer() {
    let (rt, _d) = runtime();
    let cfg = json!({"target_tokens": 2, "max_tokens": 6, "ngram": 2, "repetition_weight": 1.0});
    let spec = PluginSpec::new(wasm("length_penalty")).with_config(cfg.to_string());
    let mut f = rt.reward(&spec, tokenizer(), stderr_sink()).unwrap();
    // Hand-made ids: row 0 has 2 tokens (no penalty), row 1 has 6 distinct (full length penalty),
    // row 2 repeats one bigram.
    let rows = vec![vec![10, 11], vec![1, 2, 3, 4, 5, 6], vec![7, 8, 7, 8]];
    let b = RolloutBatch {
        prompts: vec!["p".into(); 3],
        completions: vec!["x".into(); 3],
        tokens: TokenMatrix::from_rows(&rows, 8),
        extras: vec!["{}".into(); 3],
    };
    let got = values(&f.compute(&b).unwrap());
    // row 2: length (4-2)/4 = 0.5; bigrams 78,87,78 → 1 of 3 repeated
    assert_eq!(got[0], Some(0.0));
    assert_eq!(got[1], Some(-1.0));
    assert!(
        (got[2].unwrap() - (-0.5 - 1.0 / 3.0)).abs() < 1e-6,
        "{got:?}"
    );

    let cfg =
        json!({"target_tokens": 1, "max_tokens": 1000, "ngram": 50, "use_host_tokenizer": true});
    let spec = PluginSpec::new(wasm("length_penalty")).with_config(cfg.to_string());
    let mut f = rt.reward(&spec, tokenizer(), stderr_sink()).unwrap();
    let b = batch(&["p"], &["Hello world, this is a test."], &[json!({})]);
    let n = AutoTokenizer::builtin()
        .encode("Hello world, this is a test.")
        .unwrap()
        .len();
    let want = -((n as f32 - 1.0) / 999.0);
    assert!((values(&f.compute(&b).unwrap())[0].unwrap() - want).abs() < 1e-6);
}

#[test]
fn stop_postprocess_truncates_at_stop_string_and_appends_eos() {
    let (rt, _d) = runtime();
    let tok = AutoTokenizer::builtin();
    let spec = PluginSpec::new(wasm("stop_postprocess"));
    let mut pp = rt.postprocessor(&spec, tokenizer(), stderr_sink()).unwrap();
    let b = batch(
        &["q", "q"],
        &["<answer>4</answer> and then rambling", "no stop here"],
        &[json!({}), json!({})],
    );
    let out = pp.process(&b).unwrap();
    let mut want0 = tok.encode("<answer>4</answer>").unwrap();
    want0.push(tok.eos_token_id.unwrap());
    assert_eq!(out.tokens.real_ids(0), want0);
    assert_eq!(out.tokens.row(1), b.tokens.row(1), "untouched row");
    assert_eq!((out.tokens.rows, out.tokens.cols), (2, 32));
    assert_eq!(out.completions[0], "<answer>4</answer>\n\n");
    assert_eq!(out.completions[1], "no stop here");

    // texts mode: the host re-tokenises into the same [N, C]
    let spec = PluginSpec::new(wasm("stop_postprocess")).with_config(r#"{"output": "texts"}"#);
    let mut pp = rt.postprocessor(&spec, tokenizer(), stderr_sink()).unwrap();
    let out = pp.process(&b).unwrap();
    assert_eq!(out.completions[0], "<answer>4</answer>");
    assert_eq!(
        out.tokens.real_ids(0),
        tok.encode("<answer>4</answer>").unwrap()
    );
    assert_eq!(out.tokens.ids.len(), 2 * 32);
}

#[test]
fn wasm_and_native_rewards_are_interchangeable_trait_objects() {
    let (rt, _d) = runtime();
    let wasm_fn = rt
        .reward(
            &PluginSpec::new(wasm("math_reward")),
            tokenizer(),
            stderr_sink(),
        )
        .unwrap();
    let native = NativeReward::new("short", OnError::Abort, |b: &RolloutBatch| {
        Ok(b.completions
            .iter()
            .map(|c| Some(-(c.len() as f32) / 100.0))
            .collect())
    });
    let mut fns: Vec<Box<dyn RewardFn>> = vec![Box::new(wasm_fn), Box::new(native)];
    let b = batch(
        &["q", "q"],
        &["\\boxed{2}", "\\boxed{3}"],
        &[json!({"ground_truth": 2}), json!({})],
    );
    let per: Vec<Vec<RewardValue>> = fns.iter_mut().map(|f| f.compute(&b).unwrap()).collect();
    let c = combine_rewards(&per, Some(&[1.0, 0.5])).unwrap();
    assert_eq!(c.rewards, [1.0 - 0.5 * 0.09, -0.5 * 0.09]);
    assert_eq!(c.valid, [true, true]);
    for f in &fns {
        assert_eq!(f.stats().calls, 1);
        assert!(f
            .stats()
            .to_metrics(&f.info().name)
            .iter()
            .any(|(k, _)| k.ends_with("mean_call_ms")));
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile plugins
// ---------------------------------------------------------------------------------------------

#[test]
fn trap_is_contained_and_the_instance_is_rebuilt() {
    let (rt, _d) = runtime();
    let (mut f, records) = hostile(&rt, "trap-on-boom", OnError::Zero, PluginLimits::default());
    let boom = batch(&["boom", "x"], &["a", "b"], &[json!({}), json!({})]);
    assert_eq!(values(&f.compute(&boom).unwrap()), [Some(0.0), Some(0.0)]);
    assert_eq!(f.stats().failures_of(FailureKind::Trap), 1);
    let logs = records.lock().unwrap().clone();
    assert!(
        logs.iter()
            .any(|r| r.plugin == "hostile" && r.message.contains("boom prompt")),
        "panic message captured from stderr: {logs:?}"
    );
    assert!(
        logs.iter()
            .any(|r| r.message.contains("call 1 failed (trap), all 2 samples")),
        "{logs:?}"
    );
    // The next call works on a rebuilt instance.
    assert_eq!(
        values(&f.compute(&simple_batch(3)).unwrap()),
        [Some(1.0); 3]
    );
    assert_eq!(f.stats().rebuilds, 1);
}

#[test]
fn infinite_loop_times_out_then_the_plugin_works_again() {
    let (rt, _d) = runtime();
    let limits = PluginLimits {
        call_timeout_ms: 200,
        ..Default::default()
    };
    let (mut f, _) = hostile(&rt, "loop", OnError::Skip, limits);
    let start = Instant::now();
    assert_eq!(
        f.compute(&simple_batch(2)).unwrap(),
        [RewardValue::Failed; 2]
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(f.stats().failures_of(FailureKind::Timeout), 1);
    // abort policy names the plugin, the call and the cause
    let limits = PluginLimits {
        call_timeout_ms: 100,
        ..Default::default()
    };
    let (mut f, _) = hostile(&rt, "loop", OnError::Abort, limits);
    let err = f.compute(&simple_batch(1)).unwrap_err().to_string();
    assert!(
        err.contains("plugin hostile: call 1 failed (timeout)") && err.contains("100 ms"),
        "{err}"
    );
}

#[test]
fn fuel_budget_stops_a_loop_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    let rt = PluginRuntime::new(RuntimeOptions {
        cache_dir: Some(dir.path().to_path_buf()),
        fuel: true,
        ..Default::default()
    })
    .unwrap();
    let limits = PluginLimits {
        fuel: Some(50_000_000),
        ..Default::default()
    };
    let (mut f, _) = hostile(&rt, "loop", OnError::Zero, limits);
    assert_eq!(values(&f.compute(&simple_batch(1)).unwrap()), [Some(0.0)]);
    assert_eq!(f.stats().failures_of(FailureKind::OutOfFuel), 1);
    // fuel limits on a runtime without fuel metering are refused up front
    let (rt, _d) = runtime();
    let spec = PluginSpec::new(wasm("hostile")).with_limits(PluginLimits {
        fuel: Some(1),
        ..Default::default()
    });
    assert!(matches!(
        rt.reward(&spec, tokenizer(), stderr_sink()),
        Err(PluginError::Config(_))
    ));
}

#[test]
fn memory_hog_hits_the_cap() {
    let (rt, _d) = runtime();
    let limits = PluginLimits {
        memory_mib: 64,
        ..Default::default()
    };
    let (mut f, _) = hostile(&rt, "oom", OnError::Abort, limits);
    let err = f.compute(&simple_batch(1)).unwrap_err().to_string();
    assert!(
        err.contains("(out_of_memory)") && err.contains("64 MiB"),
        "{err}"
    );
}

#[test]
fn sandbox_denies_files_env_args_and_sockets() {
    let (rt, _d) = runtime();
    let (mut f, _) = hostile(&rt, "escape", OnError::Abort, PluginLimits::default());
    // slot k = 1.0 if escape route k worked: read /etc/passwd, list a dir, write /tmp, env, args, tcp
    assert_eq!(
        values(&f.compute(&simple_batch(6)).unwrap()),
        [Some(0.0); 6]
    );
    assert!(!std::path::Path::new("/tmp/rwkvtune-plugin-escape").exists());
}

#[test]
fn wrong_count_nan_and_inf_are_caught() {
    let (rt, _d) = runtime();
    let (mut f, _) = hostile(&rt, "wrong-count", OnError::Abort, PluginLimits::default());
    let err = f.compute(&simple_batch(4)).unwrap_err().to_string();
    assert!(
        err.contains("(wrong_count)") && err.contains("3 rewards for 4 completions"),
        "{err}"
    );

    let (mut f, _) = hostile(&rt, "nan", OnError::Abort, PluginLimits::default());
    let err = f.compute(&simple_batch(3)).unwrap_err().to_string();
    assert!(
        err.contains("(invalid_value) at sample 1") && err.contains("NaN"),
        "{err}"
    );

    let (mut f, records) = hostile(&rt, "inf", OnError::Skip, PluginLimits::default());
    let out = f.compute(&simple_batch(2)).unwrap();
    assert_eq!(out, [RewardValue::Failed, RewardValue::Value(1.0)]);
    assert!(records
        .lock()
        .unwrap()
        .iter()
        .any(|r| r.message.contains("sample 0 invalid (invalid_value)")));
    // The plugin stays usable after result errors.
    assert_eq!(
        f.compute(&simple_batch(2)).unwrap()[1],
        RewardValue::Value(1.0)
    );
    assert_eq!(f.stats().rebuilds, 0);
}

#[test]
fn plugin_error_keeps_the_instance_and_bad_init_is_reported() {
    let (rt, _d) = runtime();
    let (mut f, _) = hostile(&rt, "error", OnError::Zero, PluginLimits::default());
    assert_eq!(
        values(&f.compute(&simple_batch(2)).unwrap()),
        [Some(0.0); 2]
    );
    assert_eq!(f.stats().failures_of(FailureKind::PluginError), 1);
    assert_eq!(f.stats().rebuilds, 0);

    let spec = PluginSpec::new(wasm("hostile")).with_config(r#"{"mode": "bad-init"}"#);
    let err = rt
        .reward(&spec, tokenizer(), stderr_sink())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("init failed") && err.contains("refusing to start"),
        "{err}"
    );
}

#[test]
fn state_persists_and_output_is_captured_with_the_plugin_name() {
    let (rt, _d) = runtime();
    let (mut f, _) = hostile(&rt, "stateful", OnError::Abort, PluginLimits::default());
    assert_eq!(values(&f.compute(&simple_batch(1)).unwrap()), [Some(1.0)]);
    assert_eq!(values(&f.compute(&simple_batch(1)).unwrap()), [Some(2.0)]);

    let (mut f, records) = hostile(&rt, "print", OnError::Abort, PluginLimits::default());
    f.compute(&simple_batch(1)).unwrap();
    let got: Vec<(String, LogLevel, String)> = records
        .lock()
        .unwrap()
        .iter()
        .map(|r| (r.plugin.clone(), r.level, r.message.clone()))
        .collect();
    for (level, msg) in [
        (LogLevel::Info, "hello from stdout"),
        (LogLevel::Warn, "hello from stderr"),
        (LogLevel::Info, "hello from log"),
    ] {
        assert!(
            got.contains(&("hostile".into(), level, msg.into())),
            "{msg}: {got:?}"
        );
    }

    let (mut f, _) = hostile(&rt, "host-calls", OnError::Abort, PluginLimits::default());
    let b = batch(
        &["p", "p"],
        &["Hello", "世界 and more"],
        &[json!({}), json!({})],
    );
    assert_eq!(values(&f.compute(&b).unwrap()), [Some(1.0), Some(1.0)]);
}

#[test]
fn postprocessor_output_is_validated() {
    let (rt, _d) = runtime();
    let b = batch(&["q", "q"], &["hello", "world"], &[json!({}), json!({})]);
    let pp = |mode: &str, on_error| {
        let spec = PluginSpec::new(wasm("hostile_postprocess"))
            .with_config(json!({ "mode": mode }).to_string())
            .with_on_error(on_error);
        rt.postprocessor(&spec, tokenizer(), Arc::new(|_: &LogRecord| {}))
            .unwrap()
    };
    let out = pp("identity", OnError::Abort).process(&b).unwrap();
    assert_eq!(
        (out.completions, out.tokens),
        (b.completions.clone(), b.tokens.clone())
    );
    let out = pp("upper-texts", OnError::Abort).process(&b).unwrap();
    assert_eq!(out.completions, ["HELLO", "WORLD"]);
    assert_eq!(
        out.tokens.real_ids(0),
        AutoTokenizer::builtin().encode("HELLO").unwrap()
    );

    for (mode, want) in [
        ("bad-shape", "(invalid_output)"),
        (
            "bad-ids",
            "(invalid_output) at sample 0: token id 4294967295 is outside the vocabulary",
        ),
        ("bad-mask", "mask value 7"),
        ("wrong-count", "(wrong_count)"),
        ("trap", "(trap)"),
    ] {
        let err = pp(mode, OnError::Abort)
            .process(&b)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("plugin hostile-postprocess: call 1 failed") && err.contains(want),
            "{mode}: {err}"
        );
    }
    // zero/skip: the batch passes through unchanged and the event is counted
    let mut p = pp("bad-ids", OnError::Skip);
    let out = p.process(&b).unwrap();
    assert_eq!(out.tokens, b.tokens);
    assert_eq!(p.stats().failures_of(FailureKind::InvalidOutput), 1);
}

// ---------------------------------------------------------------------------------------------
// Loading: cache, roles, bad files
// ---------------------------------------------------------------------------------------------

#[test]
fn second_load_comes_from_the_compiled_component_cache() {
    let dir = tempfile::tempdir().unwrap();
    let rt = PluginRuntime::new(RuntimeOptions {
        cache_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .unwrap();
    let path = wasm("format_reward");
    let first = rt.load(&path).unwrap();
    assert_eq!(first.cache, CacheOutcome::Compiled);
    let second = rt.load(&path).unwrap();
    assert_eq!(second.cache, CacheOutcome::Hit);
    assert!(
        second.load_time < first.load_time,
        "{:?} vs {:?}",
        second.load_time,
        first.load_time
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    assert_eq!(second.roles, [(Role::Reward, WitVersion::V0_1_0)]);
    assert!(second
        .exports
        .contains(&"rwkvtune:plugin/reward@0.1.0".to_string()));
    // Unused imports are dropped at link time: the length penalty calls `tokenize`, so it
    // imports the host interface.
    let lp = rt.load(&wasm("length_penalty")).unwrap();
    assert!(
        lp.imports.iter().any(|i| i == "rwkvtune:plugin/host@0.1.0"),
        "{:?}",
        lp.imports
    );

    // A corrupt entry is recompiled, not trusted.
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    for e in entries {
        std::fs::write(e.unwrap().path(), b"garbage").unwrap();
    }
    assert_eq!(rt.load(&path).unwrap().cache, CacheOutcome::Compiled);
    assert_eq!(rt.load(&path).unwrap().cache, CacheOutcome::Hit);
}

#[test]
fn wrong_role_bad_bytes_and_missing_files_are_clear_errors() {
    let (rt, dir) = runtime();
    let err = rt
        .postprocessor(
            &PluginSpec::new(wasm("hostile")),
            tokenizer(),
            stderr_sink(),
        )
        .err()
        .unwrap();
    assert!(matches!(err, PluginError::Incompatible { .. }), "{err}");
    assert!(
        err.to_string().contains("is not a postprocess plugin")
            && err.to_string().contains("roles: reward"),
        "{err}"
    );

    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0garbage").unwrap();
    let err = rt
        .reward(&PluginSpec::new(&junk), tokenizer(), stderr_sink())
        .err()
        .unwrap();
    assert!(
        matches!(err, PluginError::NotAComponent { .. }) && err.to_string().contains("junk.wasm"),
        "{err}"
    );

    let err = rt
        .reward(
            &PluginSpec::new(dir.path().join("nope.wasm")),
            tokenizer(),
            stderr_sink(),
        )
        .err()
        .unwrap();
    assert!(
        matches!(err, PluginError::Read { .. }) && err.to_string().contains("nope.wasm"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Example plugins in Python (componentize-py) and JavaScript (jco componentize)
// ---------------------------------------------------------------------------------------------

/// A runtime whose compiled-component cache persists across test runs
/// (`target/tmp/plugin-test-cache`): the Python and JS components take 15–35 s each to compile
/// with cranelift, so only the first run after a plugin changes pays for it.
fn cached_runtime() -> PluginRuntime {
    PluginRuntime::new(RuntimeOptions {
        cache_dir: Some(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-test-cache")),
        ..Default::default()
    })
    .unwrap()
}

/// Loads a component twice: the second load must come from the cache (no wall-clock bound: a
/// cache hit reads and hashes 12–18 MB, tens of milliseconds on an idle machine but seconds on a
/// saturated one).
fn assert_cached(rt: &PluginRuntime, path: &std::path::Path) {
    let first = rt.load(path).unwrap();
    let second = rt.load(path).unwrap();
    assert_eq!(
        second.cache,
        CacheOutcome::Hit,
        "{}: the compiled-component cache was not used",
        path.display()
    );
    eprintln!(
        "{}: first load {:?} ({:?}), second load {:?} (cache hit)",
        path.display(),
        first.load_time,
        first.cache,
        second.load_time
    );
    assert_eq!(second.roles, [(Role::Reward, WitVersion::V0_1_0)]);
}

fn close(got: &[Option<f32>], want: &[Option<f32>]) -> bool {
    got.len() == want.len()
        && got.iter().zip(want).all(|(g, w)| match (g, w) {
            (Some(g), Some(w)) => (g - w).abs() < 1e-5,
            (None, None) => true,
            _ => false,
        })
}

#[test]
fn python_length_reward_scores_length_and_repeated_ngrams() {
    let rt = cached_runtime();
    let path = wasm("python_length_reward");
    assert_cached(&rt, &path);

    // unit "tokens": lengths come from the ids the host passes.
    let cfg = json!({"target": 4, "ngram": 2, "repetition_weight": 0.5});
    let spec = PluginSpec::new(&path).with_config(cfg.to_string());
    let mut f = rt.reward(&spec, tokenizer(), stderr_sink()).unwrap();
    assert_eq!(f.info().name, "python-length-reward");
    let rows = vec![
        vec![1, 2, 3, 4],             // on target, no repeats: 1
        vec![1, 2],                   // 1 - 2/4
        vec![1, 2, 3, 4, 5, 6, 7, 8], // twice the target: 0
        vec![7, 8, 7, 8],             // on target, 1 of 3 bigrams repeated: 1 - 0.5/3
        vec![1, 2],                   // per-row target 2: 1
        vec![],                       // empty: 0
    ];
    let mut extras = vec!["{}".to_string(); rows.len()];
    extras[4] = json!({"target_length": 2}).to_string();
    let b = RolloutBatch {
        prompts: vec!["p".into(); rows.len()],
        completions: vec!["ignored for unit tokens".into(); rows.len()],
        tokens: TokenMatrix::from_rows(&rows, 8),
        extras,
    };
    let got = values(&f.compute(&b).unwrap());
    let want = [
        Some(1.0),
        Some(0.5),
        Some(0.0),
        Some(1.0 - 0.5 / 3.0),
        Some(1.0),
        Some(0.0),
    ];
    assert!(close(&got, &want), "{got:?} vs {want:?}");

    // unit "words": whitespace words, n-grams over lower-cased words.
    let cfg = json!({"target": 5, "unit": "words", "ngram": 2});
    let spec = PluginSpec::new(&path).with_config(cfg.to_string());
    let mut f = rt.reward(&spec, tokenizer(), stderr_sink()).unwrap();
    let b = batch(
        &["q"; 3],
        &[
            "one two three four five",
            "The cat the cat the", // bigrams: the-cat, cat-the, (the-cat), (cat-the) → 2/4
            "Hello",
        ],
        &[json!({}), json!({}), json!({})],
    );
    let got = values(&f.compute(&b).unwrap());
    assert!(close(&got, &[Some(1.0), Some(0.5), Some(0.2)]), "{got:?}");
    // Stateless: the same batch again gives the same rewards.
    assert!(close(&values(&f.compute(&b).unwrap()), &got));

    // A bad config is reported by `init` (a Python `raise Err(...)`), before any batch.
    let spec = PluginSpec::new(&path).with_config(r#"{"unit": "bytes"}"#);
    let err = rt
        .reward(&spec, tokenizer(), stderr_sink())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("init failed") && err.contains("config `unit` must be one of"),
        "{err}"
    );
}

#[test]
fn js_keyword_reward_counts_configured_or_per_row_keywords() {
    let rt = cached_runtime();
    let path = wasm("js_keyword_reward");
    assert_cached(&rt, &path);

    let cfg = json!({"keywords": ["Paris", "France"]});
    let spec = PluginSpec::new(&path).with_config(cfg.to_string());
    let mut f = rt.reward(&spec, tokenizer(), stderr_sink()).unwrap();
    assert_eq!(f.info().name, "keyword-reward");
    let b = batch(
        &["q"; 6],
        &[
            "Paris is the capital of France.",
            "paris!", // case-insensitive by default
            "Berlin",
            "Berlin is the capital", // per-row keywords replace the configured ones
            "ROME",
            "France, not Paris", // an empty per-row list falls back to the configured one
        ],
        &[
            json!({}),
            json!({"other": 1}),
            json!({}),
            json!({"keywords": ["berlin", "Germany", "capital"]}),
            json!({"keywords": "rome"}),
            json!({"keywords": []}),
        ],
    );
    let got = values(&f.compute(&b).unwrap());
    let want = [
        Some(1.0),
        Some(0.5),
        Some(0.0),
        Some(2.0 / 3.0),
        Some(1.0),
        Some(1.0),
    ];
    assert!(close(&got, &want), "{got:?} vs {want:?}");

    // No configured keywords: rows without their own are "not applicable" (none).
    let spec = PluginSpec::new(&path);
    let mut f = rt.reward(&spec, tokenizer(), stderr_sink()).unwrap();
    let b = batch(
        &["q"; 2],
        &["anything", "a cat"],
        &[json!({}), json!({"keywords": ["cat", "dog"]})],
    );
    assert_eq!(values(&f.compute(&b).unwrap()), [None, Some(0.5)]);

    // Whole words, case-sensitive.
    let cfg = json!({"keywords": ["cat"], "whole_word": true, "case_sensitive": true});
    let spec = PluginSpec::new(&path).with_config(cfg.to_string());
    let mut f = rt.reward(&spec, tokenizer(), stderr_sink()).unwrap();
    let b = batch(
        &["q"; 3],
        &["concatenate", "a cat.", "Cat"],
        &[json!({}), json!({}), json!({})],
    );
    assert_eq!(
        values(&f.compute(&b).unwrap()),
        [Some(0.0), Some(1.0), Some(0.0)]
    );

    // A bad config and a bad per-row column are plugin-level errors (thrown strings).
    let spec = PluginSpec::new(&path).with_config(r#"{"keywords": 3}"#);
    let err = rt
        .reward(&spec, tokenizer(), stderr_sink())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("init failed") && err.contains("config `keywords` must be"),
        "{err}"
    );
    let b = batch(&["q"], &["x"], &[json!({"keywords": 7})]);
    let err = f.compute(&b).unwrap_err().to_string();
    assert!(err.contains("row 0: column `keywords` must be"), "{err}");
}
