//! `plugin check` and `reward` with the example plugins (built by scripts/build-plugins).

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

#[test]
fn plugin_check_prints_role_metadata_and_exports() {
    let out = ok(&[
        "plugin",
        "check",
        wasm("math_reward.wasm").to_str().unwrap(),
    ]);
    assert!(
        out.contains("role: Reward") && out.contains("rwkvtune:plugin@0.1.0"),
        "{out}"
    );
    assert!(out.contains("exports:"), "{out}");
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm not really").unwrap();
    let err = fails(&["plugin", "check", junk.to_str().unwrap()]);
    assert!(err.contains("junk.wasm"), "{err}");
}

#[test]
fn reward_scores_a_jsonl_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("samples.jsonl");
    std::fs::write(
        &input,
        concat!(
            "{\"prompt\": \"What is 2+3?\", \"completion\": \"so the answer is \\\\boxed{5}\", \"ground_truth\": \"5\"}\n",
            "{\"prompt\": \"What is 2+3?\", \"completion\": \"I think it is 6\", \"ground_truth\": \"5\"}\n",
            "{\"prompt\": \"hi\", \"completion\": \"no ground truth in this row\"}\n",
        ),
    )
    .unwrap();
    let out = ok(&[
        "reward",
        "--plugin",
        wasm("math_reward.wasm").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let first: f64 = lines[0].parse().unwrap();
    let second: f64 = lines[1].parse().unwrap();
    assert!(first > second, "correct answer must score higher: {out}");
    assert_eq!(
        lines[2], "null",
        "rows without ground truth are not applicable: {out}"
    );
    std::fs::write(&input, "{\"prompt\": 1}\n").unwrap();
    let err = fails(&[
        "reward",
        "--plugin",
        wasm("math_reward.wasm").to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(err.contains("line 1") && err.contains("prompt"), "{err}");
}
