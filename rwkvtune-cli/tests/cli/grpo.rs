//! `grpo` and `generate --prompts` as processes: the demo's GRPO stage with the Rust plugin,
//! and a run rewarded by the Python and JavaScript example plugins together.

use crate::*;

fn wasm(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release")
        .join(name);
    assert!(
        p.is_file(),
        "{} missing: run scripts/build-plugins (scripts/test does)",
        p.display()
    );
    p
}

/// `mean reward: first K rollouts X -> last K rollouts Y` → (X, Y).
fn reward_summary(stdout: &str) -> (f64, f64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("mean reward:"))
        .unwrap_or_else(|| panic!("no reward summary in:\n{stdout}"));
    let nums: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse::<f64>().ok())
        .collect();
    // [K, X, K, Y, steps]
    (nums[1], nums[3])
}

/// The README demo end to end (pre-training, LoRA SFT, merge, GRPO on arithmetic with the Rust
/// math-reward plugin): the mean reward of the last rollouts is clearly above the first ones.
#[test]
fn demo_grpo_on_arithmetic_raises_the_exact_match_reward() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ok(&[
        "--threads",
        "2",
        "demo",
        "--output-dir",
        tmp.path().to_str().unwrap(),
        "--reward-plugin",
        wasm("math_reward.wasm").to_str().unwrap(),
    ]);
    let (first, last) = reward_summary(&out);
    eprintln!("GRPO mean reward: first {first:.3} -> last {last:.3}");
    assert!(
        last >= first + 0.05 && last >= 1.5 * first,
        "reward did not clearly rise: {first} -> {last}\n{out}"
    );
    let dump = std::fs::read_dir(tmp.path().join("grpo")).unwrap().count();
    assert!(dump > 0);
}

#[test]
fn grpo_with_python_and_javascript_reward_plugins() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("prompts.jsonl");
    let mut text = String::new();
    for i in 0..4 {
        text +=
            &serde_json::json!({"prompt": format!("question {i}"), "input_ids": [10 + i, 40, 300],
            "keywords": ["e"]})
            .to_string();
        text.push('\n');
    }
    std::fs::write(&data, text).unwrap();
    let model = reference().join("models/u3x96h32");
    let py = wasm("python_length_reward.wasm");
    let js = wasm("js_keyword_reward.wasm");
    let outdir = tmp.path().join("run");
    // The compiled-component cache the plugin tests of rwkvtune-core use: the Python and
    // JavaScript components are compiled once per test run, whichever test gets there first.
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-test-cache");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rwkvtune"))
            .args(args)
            .env("RWKVTUNE_PLUGIN_CACHE", &cache)
            .output()
            .expect("spawning rwkvtune")
    };
    let out = run(&[
        "--threads",
        "1",
        "grpo",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--reward-plugin",
        py.to_str().unwrap(),
        "--reward-plugin",
        js.to_str().unwrap(),
        "--plugin-config",
        "python_length_reward={\"target\": 4, \"unit\": \"tokens\"}",
        "--output-dir",
        outdir.to_str().unwrap(),
        "--num-generations",
        "4",
        "--micro-bsz",
        "2",
        "--max-completion-length",
        "6",
        "--precision",
        "fp32",
        "--lr-init",
        "1e-3",
        "--quiet",
        "--set",
        "reward_weights=[1.0, 0.5]",
        "--set",
        "save_rollout_steps=1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains("mean reward:"), "{out}");
    let dumps: Vec<_> = std::fs::read_dir(outdir.join("rollouts"))
        .unwrap()
        .flatten()
        .collect();
    let row: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(dumps[0].path())
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let per = row["rewards_per_func"].as_object().unwrap();
    assert_eq!(per.len(), 2, "{row}");
    let versions = row["plugin_versions"].as_object().unwrap();
    assert!(versions.keys().any(|k| k.contains("keyword")), "{row}");
    let log = std::fs::read_to_string(outdir.join("loss_data.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    for name in per.keys() {
        assert!(
            first.get(format!("rewards/{name}/mean")).is_some(),
            "{first}"
        );
    }
    // A bad plugin config fails before training, naming the plugin.
    let err = run(&[
        "grpo",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--reward-plugin",
        py.to_str().unwrap(),
        "--plugin-config",
        "nosuch={}",
        "--output-dir",
        outdir.to_str().unwrap(),
    ]);
    assert!(!err.status.success());
    let err = String::from_utf8_lossy(&err.stderr);
    assert!(err.contains("nosuch"), "{err}");
}

#[test]
fn generate_from_a_prompts_file_writes_one_line_per_completion() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("p.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"a\", \"input_ids\": [5, 6]}\n{\"prompt\": \"bc\", \"input_ids\": [7]}\n",
    )
    .unwrap();
    let out = tmp.path().join("out.jsonl");
    let model = reference().join("models/u3x96h32");
    ok(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompts",
        prompts.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--num-generations",
        "3",
        "--max-new-tokens",
        "5",
        "--temperature",
        "1.0",
    ]);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[3]["prompt"], "bc");
    assert_eq!(
        lines[0]["tokens"].as_array().unwrap().len(),
        lines[0]["logprobs"].as_array().unwrap().len()
    );
    let err = fails(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompts",
        out.to_str()
            .unwrap()
            .replace("out.jsonl", "missing.jsonl")
            .as_str(),
    ]);
    assert!(err.contains("missing.jsonl"), "{err}");
}
