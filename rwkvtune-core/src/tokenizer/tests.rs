//! Tokenizer tests against the official reference cases (`shared/reference/tokenizer`), plus
//! special tokens, hub round trips and the Hugging Face backend.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;

use super::*;

/// The shared reference directory. Missing data is a test failure, not a skip: these cases are
/// the only proof that ids match the models' training tokenizer.
fn reference_cases() -> Value {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared");
    let path = dir.join("reference/tokenizer/tokenizer_cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "tokenizer reference cases missing at {} ({e}); the shared/ directory must be two \
             levels above rwkvtune-core",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("tokenizer_cases.json is not valid JSON")
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("bad hex in reference"))
        .collect()
}

fn ids_of(v: &Value) -> Vec<u32> {
    let list = v.as_array().expect("ids must be a list");
    list.iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn check_reference_cases(tok: &WorldTokenizer) {
    let cases = reference_cases();
    let encode = cases["encode"].as_array().expect("encode cases");
    let decode = cases["decode"].as_array().expect("decode cases");
    assert_eq!((encode.len(), decode.len()), (18, 5));
    for case in encode {
        let name = case["id"].as_str().unwrap_or("?");
        let bytes = hex(case["utf8_hex"].as_str().expect("utf8_hex"));
        let text = String::from_utf8(bytes).expect("reference text is UTF-8");
        let want = ids_of(&case["ids"]);
        assert_eq!(tok.encode(&text), want, "encode case {name}");
        assert_eq!(
            tok.decode(&want),
            case["decode"].as_str().unwrap(),
            "decode of {name}"
        );
        assert_eq!(tok.decode(&want), text, "round trip of {name}");
    }
    for case in decode {
        let name = case["id"].as_str().unwrap_or("?");
        let ids = ids_of(&case["ids"]);
        assert_eq!(
            tok.decode(&ids),
            case["decode"].as_str().unwrap(),
            "decode case {name}"
        );
        match case["bytes_hex"].as_str() {
            Some(h) => assert_eq!(tok.decode_bytes(&ids).unwrap(), hex(h), "bytes of {name}"),
            None => assert!(tok.decode_bytes(&ids).is_err(), "{name} has an unknown id"),
        }
    }
}

#[test]
fn reference_cases_builtin() {
    check_reference_cases(WorldTokenizer::builtin());
    assert_eq!(WorldTokenizer::builtin().vocab_size(), 65530);
}

#[test]
fn reference_cases_vocab_file_crlf_and_lf() {
    let crlf_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/rwkv_vocab_v20230424.txt");
    let crlf = WorldTokenizer::from_vocab_file(&crlf_path).unwrap();
    check_reference_cases(&crlf);
    let text = std::fs::read(&crlf_path).unwrap();
    assert!(
        text.windows(2).any(|w| w == b"\r\n"),
        "the shipped vocab is CRLF"
    );
    let lf_bytes: Vec<u8> = text.iter().copied().filter(|&b| b != b'\r').collect();
    let lf = WorldTokenizer::from_vocab_bytes(&lf_bytes, Path::new("lf.txt")).unwrap();
    check_reference_cases(&lf);
    assert_eq!(lf.vocab_size(), crlf.vocab_size());
    for id in 0..crlf.vocab_size() as u32 {
        assert_eq!(lf.token_bytes(id), crlf.token_bytes(id), "token {id}");
    }
}

#[test]
fn spec_examples_and_speed() {
    let tok = WorldTokenizer::builtin();
    assert_eq!(tok.encode("Hello world"), [33155, 40213]);
    assert_eq!(
        tok.encode("User: hi\n\nAssistant:"),
        [24281, 59, 4571, 261, 5585, 41693, 59]
    );
    assert_eq!(tok.encode("你好世界"), [10464, 11685, 10267, 14610]);
    assert_eq!(tok.encode(" \n\n"), [3336]);
    assert_eq!(tok.encode("\n\n\n"), [3328]);
    assert_eq!(tok.token_id(b"\n\n"), Some(261));
    let cases = reference_cases();
    let long = cases["encode"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|c| c["n_ids"].as_u64().unwrap_or(0))
        .unwrap();
    let text = String::from_utf8(hex(long["utf8_hex"].as_str().unwrap())).unwrap();
    let start = Instant::now();
    let rounds = 100;
    for _ in 0..rounds {
        assert_eq!(tok.encode(&text).len(), 280);
    }
    let per_call = start.elapsed() / rounds;
    eprintln!("280-token encode: {per_call:?} per call");
    // Generous enough for unoptimised debug builds; release is a few microseconds.
    assert!(per_call.as_millis() < 20, "encode too slow: {per_call:?}");
}

#[test]
fn unknown_ids_in_decode() {
    let tok = WorldTokenizer::builtin();
    assert_eq!(tok.decode(&[33155, 70000]), "\u{FFFD}");
    assert_eq!(tok.decode(&[0]), "\u{FFFD}");
    let e = tok.decode_bytes(&[33155, 70000]).unwrap_err().to_string();
    assert!(
        e.starts_with("unknown token id 70000 (vocab has ids 1..=65529)"),
        "{e}"
    );
    assert_eq!(tok.decode_lossy(&[33155, 70000, 229]), "Hello\u{FFFD}");
    let auto = AutoTokenizer::builtin();
    assert!(matches!(
        auto.decode(&[0]),
        Err(TokenizerError::UnknownTokenId { id: 0, .. })
    ));
    assert_eq!(auto.decode(&[229]).unwrap(), "\u{FFFD}");
}

#[test]
fn special_tokens_are_atomic() {
    let mut tok = WorldTokenizer::builtin().clone();
    assert_eq!(tok.add_special_token("<|im_start|>", None), 65530);
    assert_eq!(tok.add_special_token("<|im_end|>", None), 65531);
    assert_eq!(tok.add_special_token("<|im_end|>", None), 65531);
    assert_eq!(tok.add_special_token("\n\n", None), 261); // already a token: keeps its id
    assert_eq!(tok.vocab_size(), 65532);
    assert_eq!(tok.encode("a<|im_end|>\n\n"), [98, 65531, 261]);
    // Forcing an id re-maps it: "\n\n" loses 261 and falls back to two "\n" tokens.
    assert_eq!(tok.add_special_token("<x>", Some(261)), 261);
    assert_eq!(tok.encode("\n\n<x>"), [11, 11, 261]);
    assert_eq!(tok.added_tokens().len(), 3);
    assert_eq!(tok.decode(&[65530, 261]), "<|im_start|><x>");
    // The shared built-in tokenizer is untouched.
    assert!(WorldTokenizer::builtin().encode("<|im_end|>").len() > 1);
}

const CHATML_IDS: [u32; 20] = [
    65530, 27370, 11, 10464, 11685, 65531, 261, 65530, 33914, 8778, 117, 11, 1922, 65531, 261,
    65530, 33914, 8778, 117, 11,
];

fn chatml_messages() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("user", "你好"),
        ChatMessage::new("assistant", "hi"),
    ]
}

#[test]
fn chatml_example_of_spec() {
    let mut tok = AutoTokenizer::builtin();
    assert_eq!((tok.eos_token_id, tok.pad_token_id), (Some(261), Some(0)));
    tok.setup_chatml().unwrap();
    assert_eq!(tok.vocab_size(), 65532);
    assert_eq!(
        (tok.eos_token_id, tok.pad_token_id),
        (Some(65531), Some(65531))
    );
    let text = tok.apply_chat_template(&chatml_messages(), true).unwrap();
    assert_eq!(
        text,
        "<|im_start|>user\n你好<|im_end|>\n\n<|im_start|>assistant\nhi<|im_end|>\n\n\
         <|im_start|>assistant\n"
    );
    assert_eq!(tok.encode(&text).unwrap(), CHATML_IDS);
    assert_eq!(
        tok.encode_chat(&chatml_messages(), true).unwrap(),
        CHATML_IDS
    );
    assert_eq!(tok.decode(&CHATML_IDS).unwrap(), text);
}

#[test]
fn builtin_chat_format_without_template() {
    let tok = AutoTokenizer::builtin();
    let text = tok.apply_chat_template(&chatml_messages(), true).unwrap();
    assert_eq!(text, "User: 你好\n\nAssistant: hi\n\nAssistant:");
}

#[test]
fn save_and_load_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut tok = AutoTokenizer::builtin();
    tok.setup_chatml().unwrap();
    tok.add_special_token("<tool>", Some(65600)).unwrap();
    tok.save_pretrained(dir.path()).unwrap();
    let vocab = std::fs::read(dir.path().join("vocab.txt")).unwrap();
    assert_eq!(
        vocab,
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/rwkv_vocab_v20230424.txt")
        )
        .unwrap()
    );
    assert!(
        !dir.path().join("chat_template.jinja").exists(),
        "short template stays inline"
    );
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        json["additional_special_tokens"][1],
        serde_json::json!({"token": "<|im_end|>", "id": 65531})
    );
    assert_eq!(
        json["additional_special_tokens_ids"],
        serde_json::json!([65530, 65531, 65600])
    );
    assert_eq!(json["eos_token"], "<|im_end|>");
    assert_eq!(json["vocab_file"], "vocab.txt");

    let back = AutoTokenizer::from_pretrained(dir.path()).unwrap();
    assert_eq!(back.vocab_size(), 65601);
    assert_eq!(
        (back.eos_token_id, back.pad_token_id),
        (Some(65531), Some(65531))
    );
    assert_eq!(back.chat_template(), Some(CHATML_TEMPLATE));
    assert_eq!(
        back.encode_chat(&chatml_messages(), true).unwrap(),
        CHATML_IDS
    );
    assert_eq!(back.encode("<tool>").unwrap(), [65600]);

    // A long template goes to chat_template.jinja, and a later short one removes that file.
    let mut long = back.clone();
    let template = format!("{{# {} #}}{}", "x".repeat(600), CHATML_TEMPLATE);
    long.set_chat_template(Some(template.clone()));
    long.save_pretrained(dir.path()).unwrap();
    assert!(dir.path().join("chat_template.jinja").is_file());
    let json = std::fs::read_to_string(dir.path().join("tokenizer_config.json")).unwrap();
    assert!(!json.contains("chat_template"));
    let again = AutoTokenizer::from_pretrained(dir.path()).unwrap();
    assert_eq!(again.chat_template(), Some(template.as_str()));
    assert_eq!(
        again.encode_chat(&chatml_messages(), true).unwrap(),
        CHATML_IDS
    );
    back.save_pretrained(dir.path()).unwrap();
    assert!(!dir.path().join("chat_template.jinja").exists());
}

#[test]
fn hand_written_hub_with_string_special_tokens() {
    let dir = tempfile::tempdir().unwrap();
    // An LF copy of the vocabulary under the Python package's file name.
    let crlf = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/rwkv_vocab_v20230424.txt"),
    )
    .unwrap();
    let lf: Vec<u8> = crlf.into_iter().filter(|&b| b != b'\r').collect();
    std::fs::write(dir.path().join("rwkv_vocab_v20230424.txt"), lf).unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"tokenizer_class": "RWKV_TOKENIZER", "eos_token": "<|im_end|>", "pad_token": null,
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
            "additional_special_tokens_ids": [65530, 65531], "some_other_tool": 1}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("chat_template.jinja"), CHATML_TEMPLATE).unwrap();
    let tok = AutoTokenizer::from_pretrained(dir.path()).unwrap();
    assert_eq!((tok.eos_token_id, tok.pad_token_id), (Some(65531), Some(0)));
    assert_eq!(
        tok.encode_chat(&chatml_messages(), true).unwrap(),
        CHATML_IDS
    );
    assert_eq!(tok.config.extra["some_other_tool"], 1);

    // A bad field is reported with file and field name.
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"eos_token": [1]}"#,
    )
    .unwrap();
    let e = AutoTokenizer::from_pretrained(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tokenizer_config.json: field `eos_token`"),
        "{e}"
    );
    // An empty directory gives the built-in tokenizer.
    let empty = tempfile::tempdir().unwrap();
    let tok = AutoTokenizer::from_pretrained(empty.path()).unwrap();
    assert_eq!((tok.vocab_size(), tok.eos_token_id), (65530, Some(261)));
    assert!(AutoTokenizer::from_pretrained(&empty.path().join("missing")).is_err());
}

const TINY_HF: &str = r#"{
  "version": "1.0",
  "truncation": null,
  "padding": null,
  "added_tokens": [
    {"id": 3, "content": "<eos>", "single_word": false, "lstrip": false, "rstrip": false,
     "normalized": false, "special": true}
  ],
  "normalizer": null,
  "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": null,
  "decoder": null,
  "model": {"type": "WordLevel", "vocab": {"hello": 0, "world": 1, "[UNK]": 2, "<eos>": 3},
            "unk_token": "[UNK]"}
}"#;

#[test]
fn hugging_face_tokenizer_json() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), TINY_HF).unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"eos_token": "<eos>", "chat_template": "{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"}"#,
    )
    .unwrap();
    let mut tok = AutoTokenizer::from_pretrained(dir.path()).unwrap();
    assert!(matches!(tok.backend, Backend::HuggingFace(_)));
    assert_eq!(tok.encode("hello world<eos>").unwrap(), [0, 1, 3]);
    assert_eq!(tok.encode("hello there").unwrap(), [0, 2]);
    assert_eq!(tok.decode(&[0, 1]).unwrap(), "hello world");
    assert_eq!((tok.eos_token_id, tok.pad_token_id), (Some(3), None));
    assert_eq!(tok.vocab_size(), 4);
    assert!(matches!(
        tok.decode(&[9]),
        Err(TokenizerError::UnknownTokenId { id: 9, .. })
    ));
    assert_eq!(tok.decode_lossy(&[0, 9, 1]), "hello world");
    let msgs = [ChatMessage::new("user", "hello")];
    assert_eq!(tok.encode_chat(&msgs, false).unwrap(), [0, 3]);
    assert_eq!(tok.add_special_token("<new>", None).unwrap(), 4);
    assert!(tok.add_special_token("<other>", Some(99)).is_err());

    let out = tempfile::tempdir().unwrap();
    tok.save_pretrained(out.path()).unwrap();
    let back = AutoTokenizer::from_pretrained(out.path()).unwrap();
    assert_eq!(back.encode("hello<new> world").unwrap(), [0, 4, 1]);
    assert_eq!(back.eos_token_id, Some(3));
    assert_eq!(back.chat_template(), tok.chat_template());
}
