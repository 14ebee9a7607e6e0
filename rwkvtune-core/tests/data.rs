//! The data pipeline end to end: every accepted file format (fixtures written by Hugging Face
//! `datasets` in `tests/fixtures/data`, and files written here with the `parquet`/`arrow`
//! crates), every malformed-data error with its file and row, truncation/padding/packing, the
//! seeded order and cursor resume, the bundled example data, and load speed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int32Array, ListArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema};
use rwkvtune_core::data::{
    load_dataset, Batcher, Cursor, DataError, DataFormat, DataOptions, Dataset, RowFormat,
    TaskKind, IGNORE_INDEX,
};
use rwkvtune_core::tokenizer::{AutoTokenizer, ChatMessage};

const VOCAB: usize = 65536;
const EOS: i64 = 261; // "\n\n", the built-in World tokenizer's eos

fn opts(ctx_len: usize) -> DataOptions {
    DataOptions {
        ctx_len,
        ..DataOptions::default()
    }
}

fn load(path: &Path, task: TaskKind) -> Result<Dataset, DataError> {
    load_dataset(path, task, &AutoTokenizer::builtin(), VOCAB, &opts(64))
}

fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(content)
        .unwrap();
    path
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/data")
        .join(name)
}

fn err_of(path: &Path, task: TaskKind) -> String {
    match load(path, task) {
        Ok(ds) => panic!("expected an error, loaded {} examples", ds.len()),
        Err(e) => e.to_string(),
    }
}

fn assert_err(content: &str, task: TaskKind, expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "d.jsonl", content.as_bytes());
    let msg = err_of(&path, task);
    let want = format!("{} {expected}", path.display());
    assert!(msg.starts_with(&want), "\n got: {msg}\nwant: {want}…");
}

fn trained_text(tok: &AutoTokenizer, labels: &[i64]) -> String {
    let ids: Vec<u32> = labels
        .iter()
        .filter(|&&l| l != IGNORE_INDEX)
        .map(|&l| l as u32)
        .collect();
    tok.decode(&ids).unwrap()
}

// ---- formats -----------------------------------------------------------------------------------

#[test]
fn jsonl_and_parquet_from_datasets_give_the_same_examples() {
    let tok = AutoTokenizer::builtin();
    let a = load(&fixture("prompt_completion.jsonl"), TaskKind::Sft).unwrap();
    let b = load(&fixture("prompt_completion.parquet"), TaskKind::Sft).unwrap();
    assert_eq!(a.examples, b.examples);
    assert_eq!(a.format, RowFormat::PromptCompletion);
    // The completion and the appended eos are the only targets.
    assert_eq!(trained_text(&tok, &a.examples[0].labels), " 2\n\n");
    assert_eq!(*a.examples[1].labels.last().unwrap(), EOS);
    let prompt = tok.encode("User: 1+1?\n\nAssistant:").unwrap();
    assert_eq!(a.examples[0].input_ids[..prompt.len()], prompt[..]);
    assert!(a.examples[0].labels[..prompt.len() - 1]
        .iter()
        .all(|&l| l == IGNORE_INDEX));
}

#[test]
fn save_to_disk_directories_load_in_shard_order() {
    let tok = AutoTokenizer::builtin();
    let ds = load(&fixture("messages_disk"), TaskKind::Sft).unwrap();
    assert_eq!(ds.format, RowFormat::Messages);
    assert_eq!(ds.len(), 3);
    assert_eq!(
        trained_text(&tok, &ds.examples[1].labels),
        " Paris\n\n Rome\n\n"
    );
    assert_eq!(trained_text(&tok, &ds.examples[2].labels), " cba\n\n");

    let toks = load(&fixture("tokens_disk"), TaskKind::Pretrain).unwrap();
    assert_eq!(toks.examples[0].input_ids, vec![10, 20, 30]);
    assert_eq!(toks.examples[0].labels, vec![20, 30, -100]);
    let pq = load(&fixture("tokens.parquet"), TaskKind::Pretrain).unwrap();
    assert_eq!(toks.examples, pq.examples);
}

#[test]
fn dataset_dict_directory_names_its_splits() {
    let msg = err_of(&fixture("text_dict"), TaskKind::Pretrain);
    assert!(
        msg.contains("DatasetDict with splits `train`, `test`"),
        "{msg}"
    );
    assert!(msg.contains("text_dict/train"), "{msg}");
    let ds = load(&fixture("text_dict/train"), TaskKind::Pretrain).unwrap();
    assert_eq!(ds.len(), 2);
}

#[test]
fn chat_messages_with_chatml_template_mask_all_but_assistant() {
    let mut tok = AutoTokenizer::builtin();
    tok.setup_chatml().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let row = serde_json::json!({"messages": [
        ChatMessage::new("user", "你好"), ChatMessage::new("assistant", "hi"),
        ChatMessage::new("user", "again"), ChatMessage::new("assistant", "ok"),
    ]});
    let path = write(dir.path(), "c.jsonl", format!("{row}\n").as_bytes());
    let ds = load_dataset(&path, TaskKind::Sft, &tok, tok.vocab_size(), &opts(256)).unwrap();
    let ex = &ds.examples[0];
    assert_eq!(
        trained_text(&tok, &ex.labels),
        "hi<|im_end|>\n\nok<|im_end|>\n\n"
    );
    // The unmasked sequence is exactly the template rendering.
    let mut all = ex.input_ids.clone();
    all.push(*ex.labels.last().unwrap() as u32);
    let msgs: Vec<ChatMessage> = serde_json::from_value(row["messages"].clone()).unwrap();
    assert_eq!(all, tok.encode_chat(&msgs, false).unwrap());
}

#[test]
fn conversational_prompt_completion_trains_the_completion_turns() {
    let tok = AutoTokenizer::builtin();
    let dir = tempfile::tempdir().unwrap();
    let content = r#"{"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "4"}]}"#;
    let path = write(dir.path(), "c.jsonl", content.as_bytes());
    let ds = load(&path, TaskKind::Sft).unwrap();
    assert_eq!(trained_text(&tok, &ds.examples[0].labels), " 4\n\n");
}

#[test]
fn parquet_and_arrow_written_by_rust_with_int32_lists() {
    let dir = tempfile::tempdir().unwrap();
    let ids = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
        Some(vec![Some(1), Some(2), Some(3)]),
        Some(vec![Some(4), Some(5)]),
    ]);
    let schema = Arc::new(Schema::new(vec![
        Field::new("input_ids", ids.data_type().clone(), true),
        Field::new("source", DataType::Utf8, true),
    ]));
    let src: ArrayRef = Arc::new(StringArray::from(vec!["a", "b"]));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(ids), src]).unwrap();

    let pq = dir.path().join("t.parquet");
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&pq).unwrap(),
        schema.clone(),
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let a = load(&pq, TaskKind::Pretrain).unwrap();
    // Without `labels` the loader shifts: input = ids[:-1], labels = ids[1:].
    assert_eq!(a.examples[0].input_ids, vec![1, 2]);
    assert_eq!(a.examples[0].labels, vec![2, 3]);

    // Arrow IPC *file* format (the `ARROW1` magic), as opposed to save_to_disk's stream format.
    let arrow_path = dir.path().join("t.arrow");
    let mut w = arrow::ipc::writer::FileWriter::try_new(
        std::fs::File::create(&arrow_path).unwrap(),
        &schema,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    let b = load(&arrow_path, TaskKind::Pretrain).unwrap();
    assert_eq!(a.examples, b.examples);
}

#[test]
fn save_to_disk_layout_written_here_with_two_shards() {
    let dir = tempfile::tempdir().unwrap();
    let ds_dir = dir.path().join("ds");
    std::fs::create_dir(&ds_dir).unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, true)]));
    for (i, texts) in [vec!["hello world"], vec!["good", ""]].iter().enumerate() {
        let col: ArrayRef = Arc::new(StringArray::from(texts.clone()));
        let batch = RecordBatch::try_new(schema.clone(), vec![col]).unwrap();
        let f = std::fs::File::create(ds_dir.join(format!("data-0000{i}-of-00002.arrow"))).unwrap();
        let mut w = arrow::ipc::writer::StreamWriter::try_new(f, &schema).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
    }
    let state = r#"{"_data_files": [{"filename": "data-00000-of-00002.arrow"},
        {"filename": "data-00001-of-00002.arrow"}], "_split": null}"#;
    write(&ds_dir, "state.json", state.as_bytes());
    // The empty text of the second shard's second row: row 2 of that file, dataset index 2.
    let msg = err_of(&ds_dir, TaskKind::Pretrain);
    let want = format!(
        "{} row 2 (dataset index 2): nothing to train on",
        ds_dir.join("data-00001-of-00002.arrow").display()
    );
    assert!(msg.starts_with(&want), "{msg}");
    let opts = DataOptions {
        max_samples: Some(2),
        ..opts(64)
    };
    let ds = load_dataset(
        &ds_dir,
        TaskKind::Pretrain,
        &AutoTokenizer::builtin(),
        VOCAB,
        &opts,
    )
    .unwrap();
    assert_eq!(ds.stats.rows, 2);
}

#[test]
fn json_array_file_and_explicit_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "d.data",
        br#"[{"text": "one two"}, {"text": "three"}]"#,
    );
    let opts = DataOptions {
        format: DataFormat::Jsonl,
        ..opts(64)
    };
    let ds = load_dataset(
        &path,
        TaskKind::Pretrain,
        &AutoTokenizer::builtin(),
        VOCAB,
        &opts,
    )
    .unwrap();
    assert_eq!(ds.len(), 2);
    let msg = err_of(&path, TaskKind::Pretrain);
    assert!(
        msg.contains("cannot tell the format from the extension"),
        "{msg}"
    );
}

// ---- malformed data ----------------------------------------------------------------------------

#[test]
fn error_length_mismatch_names_line_and_counts() {
    let ok = r#"{"input_ids": [1, 2], "labels": [2, 3]}"#;
    let bad = format!(
        r#"{{"input_ids": [{}], "labels": [{}]}}"#,
        ["1"; 13].join(","),
        ["2"; 12].join(",")
    );
    let mut content = format!("{ok}\n").repeat(16);
    content.push_str(&bad);
    assert_err(
        &content,
        TaskKind::Sft,
        "line 17: field `labels` has 12 entries but `input_ids` has 13",
    );
}

#[test]
fn error_blank_lines_are_skipped_but_counted() {
    let content = "{\"text\": \"a b\"}\n\n   \n{\"txt\": \"c\"}\n";
    assert_err(
        content,
        TaskKind::Pretrain,
        "line 4: field `text` is missing (present: `txt`)",
    );
}

#[test]
fn error_missing_column_wrong_type_and_null() {
    assert_err(
        "{\"input_ids\": [1], \"labels\": [2]}\n{\"input_ids\": [1]}\n",
        TaskKind::Sft,
        "line 2: field `labels` is missing",
    );
    assert_err(
        "{\"input_ids\": \"1 2 3\"}\n",
        TaskKind::Pretrain,
        "line 1: field `input_ids` must be a list of integers, found the string \"1 2 3\"",
    );
    assert_err(
        "{\"text\": null}\n",
        TaskKind::Pretrain,
        "line 1: field `text` must be a string, found null",
    );
    assert_err(
        "{\"messages\": [{\"role\": \"user\"}]}\n",
        TaskKind::Sft,
        "line 1: field `messages[0].content` must be a string, found nothing",
    );
    assert_err(
        "{\"prompt\": \"q\"}\n",
        TaskKind::Sft,
        "line 1: field `completion` is missing (present: no fields)",
    );
}

#[test]
fn error_ids_outside_the_vocabulary() {
    assert_err(
        "{\"input_ids\": [1, 70000], \"labels\": [2, 3]}\n",
        TaskKind::Sft,
        "line 1: field `input_ids`[1] = 70000 is not a token id of this model (vocab_size 65536)",
    );
    assert_err(
        "{\"input_ids\": [1, 2], \"labels\": [2, -1]}\n",
        TaskKind::Sft,
        "line 1: field `labels`[1] = -1 is not a token id of this model (vocab_size 65536, or -100 \
         to ignore)",
    );
    // A model smaller than the tokenizer: tokenized text is checked against the model.
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "d.jsonl", b"{\"text\": \"hello world\"}\n");
    let e = load_dataset(
        &path,
        TaskKind::Pretrain,
        &AutoTokenizer::builtin(),
        100,
        &opts(64),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            DataError::IdOutOfRange {
                column: "input_ids",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn error_nothing_to_train_after_truncation() {
    let long_prompt = "word ".repeat(100);
    let row = serde_json::json!({"prompt": long_prompt, "completion": " yes"});
    assert_err(
        &format!("{row}\n"),
        TaskKind::Sft,
        "line 1: nothing to train on: every trained label lies beyond ctx_len 64",
    );
    assert_err(
        "{\"input_ids\": [1, 2], \"labels\": [-100, -100]}\n",
        TaskKind::Sft,
        "line 1: nothing to train on: every label is -100",
    );
    assert_err(
        "{\"text\": \"\"}\n",
        TaskKind::Pretrain,
        "line 1: nothing to train on: the sequence has fewer than 2 tokens",
    );
}

#[test]
fn error_utf8_json_and_empty_files() {
    let dir = tempfile::tempdir().unwrap();
    // A byte-order mark on line 1 is accepted; a stray 0xff byte on line 2 is not.
    let path = write(
        dir.path(),
        "u.jsonl",
        b"\xEF\xBB\xBF{\"text\": \"ok\"}\n{\"text\": \"\xff\"}\n",
    );
    assert_eq!(
        err_of(&path, TaskKind::Pretrain),
        format!(
            "{} line 2: not valid UTF-8 (at byte offset 10 of the line); re-save the file as UTF-8",
            path.display()
        )
    );
    assert_err(
        "{\"text\": \"a\"}\n{\"text\": \n",
        TaskKind::Pretrain,
        "line 2: invalid JSON: EOF while parsing a value (column 9)",
    );
    assert_err(
        "42\n",
        TaskKind::Pretrain,
        "line 1: expected a JSON object with named fields, found the number 42",
    );
    let empty = write(dir.path(), "e.jsonl", b"\n\n");
    assert!(err_of(&empty, TaskKind::Pretrain).ends_with("the dataset is empty (no rows)"));
    let missing = dir.path().join("nope.jsonl");
    assert!(err_of(&missing, TaskKind::Pretrain).contains("no such file or directory"));
    let cols = write(
        dir.path(),
        "c.jsonl",
        b"{\"question\": \"q\", \"answer\": \"a\"}\n",
    );
    assert!(
        err_of(&cols, TaskKind::Sft).contains("no usable columns (found: `answer`, `question`)")
    );
}

#[test]
fn error_task_mismatch_and_unshifted_labels() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "p.jsonl",
        b"{\"prompt\": \"q\", \"completion\": \"a\"}\n",
    );
    assert!(err_of(&path, TaskKind::Pretrain).ends_with("use `rwkvtune sft`"));
    let row = "{\"input_ids\": [5, 6, 7], \"labels\": [5, 6, 7]}\n";
    let path = write(dir.path(), "d.jsonl", row.as_bytes());
    let e = load(&path, TaskKind::Sft).unwrap_err();
    assert!(matches!(e, DataError::LabelsUnshifted { .. }), "{e}");
}

#[test]
fn error_parquet_nulls_name_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let ids = ListArray::from_iter_primitive::<Int64Type, _, _>(vec![
        Some(vec![Some(1), Some(2)]),
        Some(vec![Some(1), None]),
    ]);
    let schema = Arc::new(Schema::new(vec![Field::new(
        "input_ids",
        ids.data_type().clone(),
        true,
    )]));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(ids)]).unwrap();
    let pq = dir.path().join("n.parquet");
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&pq).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    assert_eq!(
        err_of(&pq, TaskKind::Pretrain),
        format!(
            "{} row 2 (dataset index 1): field `input_ids` must be a list of integers, found null \
             at position 1",
            pq.display()
        )
    );
    // A float column is a type error reported at the first row.
    let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Int32, true)]));
    let col: ArrayRef = Arc::new(Int32Array::from(vec![1]));
    let batch = RecordBatch::try_new(schema.clone(), vec![col]).unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&pq).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    assert!(err_of(&pq, TaskKind::Pretrain).ends_with(
        "row 1 (dataset index 0): field `text` must be a string, found the Arrow type Int32"
    ));
}

// ---- truncation, padding, packing, order -------------------------------------------------------

#[test]
fn truncation_padding_and_batches() {
    let dir = tempfile::tempdir().unwrap();
    let rows: String = (1..=5)
        .map(|n| {
            format!(
                "{}\n",
                serde_json::json!({"input_ids": (1..=n * 10).collect::<Vec<_>>()})
            )
        })
        .collect();
    let path = write(dir.path(), "d.jsonl", rows.as_bytes());
    let ds = load_dataset(
        &path,
        TaskKind::Pretrain,
        &AutoTokenizer::builtin(),
        VOCAB,
        &opts(24),
    )
    .unwrap();
    let lens: Vec<usize> = ds.examples.iter().map(|e| e.len()).collect();
    assert_eq!(lens, vec![9, 19, 24, 24, 24]);
    assert_eq!(ds.stats.truncated, 3);
    // Longest 19 → padded to 32, capped at ctx_len 24.
    let b = ds.batch(&[0, 1]);
    assert_eq!((b.batch, b.seq_len), (2, 24));
    let b = ds.batch(&[0]);
    assert_eq!(b.seq_len, 16);
    assert_eq!(&b.input_ids[8..10], &[9, 0]);
    assert_eq!(&b.labels[8..10], &[10, IGNORE_INDEX]);
}

#[test]
fn packing_fills_ctx_len_windows() {
    let dir = tempfile::tempdir().unwrap();
    let rows: String = (0..40)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({"text": format!("Story {i}: the cat sat on the mat.")})
            )
        })
        .collect();
    let path = write(dir.path(), "d.jsonl", rows.as_bytes());
    let tok = AutoTokenizer::builtin();
    let plain = load_dataset(&path, TaskKind::Pretrain, &tok, VOCAB, &opts(32)).unwrap();
    let packed_opts = DataOptions {
        packing: true,
        ..opts(32)
    };
    let packed = load_dataset(&path, TaskKind::Pretrain, &tok, VOCAB, &packed_opts).unwrap();
    let total: usize = plain.examples.iter().map(|e| e.len()).sum();
    assert_eq!(packed.stats.tokens, total);
    assert_eq!(packed.len(), total.div_ceil(32));
    assert!(packed.examples[..packed.len() - 1]
        .iter()
        .all(|e| e.len() == 32));
    // The concatenation of the windows is the concatenation of the documents.
    let cat =
        |ds: &Dataset| -> Vec<i64> { ds.examples.iter().flat_map(|e| e.labels.clone()).collect() };
    assert_eq!(cat(&plain), cat(&packed));
    assert_eq!(packed.rows[0], 0);
}

#[test]
fn cursor_resume_replays_the_same_batches() {
    let ds_len = 23;
    let batcher = Batcher::new(ds_len, 4, 7).unwrap();
    let run = |mut cursor: Cursor, steps: usize| -> (Vec<Vec<usize>>, Cursor) {
        let mut seen = Vec::new();
        for _ in 0..steps {
            let order = batcher.epoch_order(cursor.epoch);
            seen.push(batcher.batch_indices(&order, cursor.position).to_vec());
            cursor.advance(&batcher);
        }
        (seen, cursor)
    };
    let (full, _) = run(Cursor::default(), 13);
    let (first, saved) = run(Cursor::default(), 6);
    // The cursor goes through a checkpoint as JSON.
    let saved: Cursor = serde_json::from_str(&serde_json::to_string(&saved).unwrap()).unwrap();
    let (rest, _) = run(saved, 7);
    assert_eq!([first, rest].concat(), full);
    assert_eq!(batcher.batches_per_epoch(), 5);
    assert_ne!(full[0], full[5], "epochs are reshuffled");
}

// ---- bundled data and speed --------------------------------------------------------------------

#[test]
fn bundled_example_data_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data");
    let tok = AutoTokenizer::builtin();
    for (file, task, format) in [
        (
            "sft_train.jsonl",
            TaskKind::Sft,
            RowFormat::PromptCompletion,
        ),
        ("sft_eval.jsonl", TaskKind::Sft, RowFormat::PromptCompletion),
        ("sft_chat.jsonl", TaskKind::Sft, RowFormat::Messages),
        ("pretrain_train.jsonl", TaskKind::Pretrain, RowFormat::Text),
        ("pretrain_eval.jsonl", TaskKind::Pretrain, RowFormat::Text),
    ] {
        // Pre-training documents are longer than a window: they are meant to be packed.
        let packing = task == TaskKind::Pretrain;
        let o = DataOptions {
            packing,
            ..opts(128)
        };
        let ds = load_dataset(&root.join(file), task, &tok, VOCAB, &o).unwrap();
        let longest = ds.examples.iter().map(|e| e.len()).max().unwrap();
        eprintln!(
            "{file}: {} examples, {:?}, longest {longest}",
            ds.len(),
            ds.stats
        );
        assert_eq!(ds.format, format, "{file}");
        assert_eq!(
            ds.stats.truncated, 0,
            "{file}: examples must fit ctx_len 128"
        );
    }
}

#[test]
fn hundred_thousand_rows_load_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let mut rows = String::new();
    for i in 0..100_000 {
        let row = serde_json::json!({"prompt": format!("User: What is {i} + 1?\n\nAssistant:"), "completion": format!(" {}", i + 1)});
        rows.push_str(&format!("{row}\n"));
    }
    let path = write(dir.path(), "big.jsonl", rows.as_bytes());
    let t = std::time::Instant::now();
    let ds = load(&path, TaskKind::Sft).unwrap();
    let secs = t.elapsed().as_secs_f64();
    eprintln!("loaded {} rows in {secs:.2} s", ds.len());
    assert_eq!(ds.len(), 100_000);
    // Generous: an unoptimised test build on a busy 2-core machine; release is ~10x faster.
    assert!(secs < 60.0, "{secs} s");
}
