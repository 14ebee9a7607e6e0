//! `logits`, `tokenize`, `detokenize`, `generate` against the reference cases.

use crate::*;
use tch::{Kind, Tensor};

fn check_case(model: &str, seq: &str, stateful: bool) {
    let case: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(reference().join(format!("logits/{model}__{seq}.safetensors")))
            .unwrap()
            .into_iter()
            .collect();
    let ids: Vec<i64> = Vec::try_from(&case["input_ids"]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // Ids go through @FILE for the long case, inline otherwise: both forms are public.
    let spec = if ids.len() > 8 {
        let f = tmp.path().join("ids.json");
        std::fs::write(&f, serde_json::to_string(&ids).unwrap()).unwrap();
        format!("@{}", f.display())
    } else {
        ids.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let out = tmp.path().join("logits.npy");
    let dir = reference().join("models").join(model);
    let mut args = vec![
        "logits",
        "--model",
        dir.to_str().unwrap(),
        "--input-ids",
        &spec,
        "--output",
        out.to_str().unwrap(),
    ];
    if stateful {
        args.push("--stateful");
    }
    ok(&args);
    let (shape, data) = read_npy(&out);
    assert_eq!(shape[0], ids.len());
    let logits = Tensor::from_slice(&data).view([shape[0] as i64, shape[1] as i64]);
    let within = |cand: &Tensor, r: &Tensor| {
        let c = cand.to_kind(Kind::Double);
        let r = r.to_kind(Kind::Double);
        ((&c - &r).abs() - (r.abs() * 1e-5 + 1e-4))
            .max()
            .double_value(&[])
            <= 0.0
    };
    let label = format!("{model} {seq} stateful={stateful}");
    assert!(
        within(
            &logits.index_select(0, &case["row_pos"]),
            &case["logits_rows"]
        ),
        "{label}: rows"
    );
    let cols_key = if stateful {
        "step_logits_cols"
    } else {
        "logits_cols"
    };
    assert!(
        within(&logits.index_select(1, &case["col_ids"]), &case[cols_key]),
        "{label}: cols"
    );
    let lse = logits
        .to_kind(Kind::Double)
        .logsumexp([-1i64].as_slice(), false);
    assert!(
        within(&lse, &case[if stateful { "step_lse" } else { "lse" }]),
        "{label}: lse"
    );
}

#[test]
fn logits_command_passes_every_reference_case_both_paths() {
    for model in ["u3x96h32", "t2x128"] {
        for seq in ["len1", "len7", "len64"] {
            check_case(model, seq, false);
            check_case(model, seq, true);
        }
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn tokenize_and_detokenize_commands_match_reference_cases() {
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(reference().join("tokenizer/tokenizer_cases.json")).unwrap(),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for c in cases["encode"].as_array().unwrap() {
        // Exact bytes through a file: argv cannot carry NUL and some control characters.
        let f = tmp.path().join("text.txt");
        std::fs::write(&f, hex(c["utf8_hex"].as_str().unwrap())).unwrap();
        let got: Vec<u32> =
            serde_json::from_str(&ok(&["tokenize", "--input", f.to_str().unwrap()])).unwrap();
        let want: Vec<u32> = serde_json::from_value(c["ids"].clone()).unwrap();
        assert_eq!(got, want, "encode case {}", c["id"]);
    }
    for c in cases["decode"].as_array().unwrap() {
        let ids: Vec<u32> = serde_json::from_value(c["ids"].clone()).unwrap();
        let f = tmp.path().join("ids.json");
        std::fs::write(&f, serde_json::to_string(&ids).unwrap()).unwrap();
        let got = ok(&["detokenize", "--ids", &format!("@{}", f.display())]);
        assert_eq!(
            got,
            c["decode"].as_str().unwrap(),
            "decode case {}",
            c["id"]
        );
    }
    // Inline text, and a model directory's tokenizer.
    let dir = reference().join("models/t2x128");
    assert_eq!(
        ok(&[
            "tokenize",
            "--model",
            dir.to_str().unwrap(),
            "--text",
            "Hello world"
        ])
        .trim(),
        "[33155,40213]"
    );
}

#[test]
fn generate_streams_text_and_reports_speed() {
    let dir = reference().join("models/t2x128");
    let out = rwkvtune(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "User: hi",
        "--max-new-tokens",
        "8",
        "--temperature",
        "0",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("User: hi") && stdout.len() > "User: hi".len(),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("prefill") && stderr.contains("tok/s"),
        "{stderr}"
    );
    // Greedy is deterministic.
    let again = rwkvtune(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "User: hi",
        "--max-new-tokens",
        "8",
        "--temperature",
        "0",
    ]);
    assert_eq!(out.stdout, again.stdout);
}

#[test]
fn bad_input_gives_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.npy");
    let small = reference().join("models/u3x96h32");
    let err = fails(&[
        "logits",
        "--model",
        "/no/such/model",
        "--input-ids",
        "1",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("/no/such/model"), "{err}");
    let err = fails(&[
        "logits",
        "--model",
        small.to_str().unwrap(),
        "--input-ids",
        "1,5000",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(
        err.contains("5000") && err.contains("out of range"),
        "{err}"
    );
    let err = fails(&[
        "logits",
        "--model",
        small.to_str().unwrap(),
        "--input-ids",
        "1,x",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("`x`"), "{err}");
    assert!(!out.exists(), "no output on failure");
    let err = fails(&["detokenize", "--ids", "70000"]);
    assert!(err.contains("70000"), "{err}");
}
