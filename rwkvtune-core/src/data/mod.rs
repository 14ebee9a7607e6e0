//! Training data: files users already have from Hugging Face `datasets` → validated, tokenized
//! [`Example`]s → shuffled, padded [`Batch`]es. The formats and their exact semantics are
//! documented for users in `docs/data.md`.
//!
//! ```text
//! path ──► source (JSONL/JSON) ┐
//!          columnar (Parquet,  ├─► RawRow ──► example (tokenize, mask, shift, check) ──► Dataset
//!          Arrow, save_to_disk)┘                         truncate to ctx_len or pack ─┘
//! Dataset + Batcher (seeded order per epoch, Cursor) ──► collate ──► Batch [B, T]
//! ```
//!
//! Invariants: the whole dataset is read and validated before training starts, so a malformed
//! row stops the run at load time with its file and row, never mid-training; rows are never
//! skipped silently; every [`Example`] has `input_ids.len() == labels.len() >= 1`, ids below the
//! model's vocabulary size, at least one trained label, and at most `ctx_len` positions; the
//! order of an epoch is a pure function of `(n_examples, seed, epoch)`. This module does not
//! touch libtorch: a [`Batch`] is plain `Vec<i64>`s.

mod batch;
mod columnar;
mod error;
mod example;
mod source;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use batch::{collate, Batch, Batcher, Cursor, PAD_ID};
pub use error::{DataError, RowPos, RowRef};
pub use example::{Example, IGNORE_INDEX};
pub use source::RowFormat;

use crate::tokenizer::AutoTokenizer;

/// How to read the path given as dataset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// From the path: a directory is `save_to_disk` output; otherwise the file extension
    /// (`.jsonl`/`.json`/`.ndjson`, `.parquet`/`.pq`, `.arrow`/`.ipc`/`.feather`).
    #[default]
    Auto,
    /// JSON Lines, or one JSON array of records.
    Jsonl,
    Parquet,
    /// A single Arrow IPC file (stream or file format).
    Arrow,
    /// A directory written by `datasets.Dataset.save_to_disk`.
    HfDisk,
}

/// What the data is for. Pre-training takes `input_ids` or `text`; SFT takes every format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Pretrain,
    Sft,
}

/// How to turn records into examples. Plain data: validated by [`load_dataset`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataOptions {
    pub format: DataFormat,
    /// Longest example in positions. Longer ones are truncated (or split, with `packing`).
    pub ctx_len: usize,
    /// Padded batch length is rounded up to a multiple of this (capped at `ctx_len`).
    pub pad_multiple: usize,
    /// Concatenate all examples and cut them into `ctx_len` windows (pre-training style).
    pub packing: bool,
    /// Append the tokenizer's eos token after each `text` and each `completion`.
    pub add_eos: bool,
    /// Read only the first this-many records (quick experiments).
    pub max_samples: Option<usize>,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            format: DataFormat::Auto,
            ctx_len: 2048,
            pad_multiple: 16,
            packing: false,
            add_eos: true,
            max_samples: None,
        }
    }
}

impl DataOptions {
    pub fn validate(&self) -> Result<(), DataError> {
        if self.ctx_len == 0 {
            return Err(DataError::Options("ctx_len must be at least 1".into()));
        }
        if self.pad_multiple == 0 {
            return Err(DataError::Options(
                "pad_multiple must be at least 1 (1 = no rounding)".into(),
            ));
        }
        if self.max_samples == Some(0) {
            return Err(DataError::Options("max_samples must be at least 1".into()));
        }
        Ok(())
    }
}

/// Counts gathered while loading, for the run log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataStats {
    /// Records read.
    pub rows: usize,
    /// Examples cut to `ctx_len` (without packing).
    pub truncated: usize,
    /// Packed windows dropped because they had no trained label.
    pub dropped_windows: usize,
    /// Positions over all examples.
    pub tokens: usize,
    /// Positions with a trained label.
    pub trained_tokens: usize,
}

/// A fully loaded and validated dataset.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub examples: Vec<Example>,
    /// For each example, the 0-based number of the record it came from (with packing: the first
    /// record in the window), in reading order.
    pub rows: Vec<usize>,
    pub source: PathBuf,
    pub format: RowFormat,
    pub options: DataOptions,
    pub stats: DataStats,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Collates the examples at `indices` with this dataset's `ctx_len` and `pad_multiple`.
    pub fn batch(&self, indices: &[usize]) -> Batch {
        collate(
            &self.examples,
            indices,
            self.options.ctx_len,
            self.options.pad_multiple,
        )
    }

    /// FNV-1a over every id and label: lets a resumed run check that its data did not change.
    pub fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |x: u64| {
            for b in x.to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
        };
        for ex in &self.examples {
            eat(ex.len() as u64);
            ex.input_ids.iter().for_each(|&i| eat(i as u64));
            ex.labels.iter().for_each(|&l| eat(l as u64));
        }
        h
    }
}

/// Reads, tokenizes and validates the dataset at `path`. `vocab_size` is the model's (its
/// embedding rows), which may be smaller than the tokenizer's. Fails on the first bad record,
/// naming its file and row.
pub fn load_dataset(
    path: &Path,
    task: TaskKind,
    tok: &AutoTokenizer,
    vocab_size: usize,
    opts: &DataOptions,
) -> Result<Dataset, DataError> {
    opts.validate()?;
    let builder = example::Builder {
        tok,
        vocab_size,
        opts,
    };
    let mut examples = Vec::new();
    let mut stats = DataStats::default();
    let mut checked_task = false;
    let mut sink = |at: RowRef, row: source::RawRow| -> Result<(), DataError> {
        if !checked_task {
            check_task(task, &row, &at.path)?;
            checked_task = true;
        }
        let mut ex = builder.build(row, &at)?;
        if !opts.packing && example::truncate(&mut ex, opts.ctx_len) {
            stats.truncated += 1;
            if ex.trained_tokens() == 0 {
                return Err(DataError::NoTrainableTokens {
                    at,
                    reason: format!(
                        "every trained label lies beyond ctx_len {}; shorten the prompt or raise \
                         ctx_len",
                        opts.ctx_len
                    ),
                });
            }
        }
        examples.push(ex);
        stats.rows += 1;
        Ok(())
    };
    let format = source::read_rows(path, opts.format, opts.max_samples, &mut sink)?;

    if format == (RowFormat::Tokens { labels: true })
        && examples.iter().all(example::looks_unshifted)
        && examples.iter().any(varied_labels)
    {
        return Err(DataError::LabelsUnshifted {
            path: path.to_path_buf(),
        });
    }
    let (examples, rows) = if opts.packing {
        let (packed, origins, dropped) = batch::pack(&examples, opts.ctx_len);
        stats.dropped_windows = dropped;
        (packed, origins)
    } else {
        let rows = (0..examples.len()).collect();
        (examples, rows)
    };
    stats.tokens = examples.iter().map(Example::len).sum();
    stats.trained_tokens = examples.iter().map(Example::trained_tokens).sum();
    Ok(Dataset {
        examples,
        rows,
        source: path.to_path_buf(),
        format,
        options: opts.clone(),
        stats,
    })
}

/// Pre-training learns every token; prompt/completion and chat data mean SFT.
fn check_task(task: TaskKind, row: &source::RawRow, path: &Path) -> Result<(), DataError> {
    let chat_like = matches!(
        row,
        source::RawRow::PromptCompletion { .. } | source::RawRow::Messages(_)
    );
    if task == TaskKind::Pretrain && chat_like {
        return Err(DataError::TaskMismatch {
            path: path.to_path_buf(),
            message: "pre-training takes `text` or `input_ids` columns; this dataset has \
                      prompt/completion or chat `messages` columns — use `rwkvtune sft`"
                .into(),
        });
    }
    Ok(())
}

/// At least two different trained labels: a constant sequence is shifted and unshifted at once.
fn varied_labels(ex: &Example) -> bool {
    let mut trained = ex.labels.iter().filter(|&&l| l != IGNORE_INDEX);
    match trained.next() {
        Some(first) => trained.any(|l| l != first),
        None => false,
    }
}
