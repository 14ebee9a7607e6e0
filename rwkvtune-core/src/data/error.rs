//! [`DataError`]: everything that can make a dataset unusable. Every row-level variant carries a
//! [`RowRef`] (file + row), so the message alone tells the user which record to fix.

use std::fmt;
use std::path::PathBuf;

use crate::tokenizer::TokenizerError;

/// Where a record lives: a 1-based line of a JSON Lines file, or a row of a columnar file (shown
/// 1-based, with the 0-based index that `datasets` users type as `ds[i]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowRef {
    pub path: PathBuf,
    pub pos: RowPos,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowPos {
    /// 1-based line number (JSON Lines; blank lines are counted).
    Line(usize),
    /// 0-based record number of a JSON array file.
    Item(usize),
    /// Row of a Parquet/Arrow file: `row` is 0-based within this file, `index` 0-based within the
    /// whole dataset (they differ for the second and later shards of a `save_to_disk` directory).
    Row { row: usize, index: usize },
}

impl fmt::Display for RowRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        match self.pos {
            RowPos::Line(line) => write!(f, "{path} line {line}"),
            RowPos::Item(i) => write!(f, "{path} record {} (array index {i})", i + 1),
            RowPos::Row { row, index } => {
                write!(f, "{path} row {} (dataset index {index})", row + 1)
            }
        }
    }
}

/// Everything that can go wrong while reading, tokenizing or validating a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    // ---- files and containers ------------------------------------------------------------------
    /// The path given as dataset does not exist.
    #[error(
        "{}: no such file or directory; expected a .jsonl/.json, .parquet or .arrow file, or a \
         directory written by `datasets.Dataset.save_to_disk`", path.display()
    )]
    NotFound { path: PathBuf },
    /// Reading a file failed at the OS level.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file extension (or directory layout) does not say which reader to use.
    #[error("{}: {message}", path.display())]
    UnknownFormat { path: PathBuf, message: String },
    /// A `save_to_disk` directory is incomplete or inconsistent (`state.json`, shards, splits).
    #[error("{}: {message}", path.display())]
    Layout { path: PathBuf, message: String },
    /// A Parquet or Arrow IPC file could not be decoded.
    #[error("{}: cannot decode {kind} data: {message}", path.display())]
    Decode {
        path: PathBuf,
        kind: &'static str,
        message: String,
    },
    /// The dataset has no rows at all.
    #[error("{}: the dataset is empty (no rows)", path.display())]
    Empty { path: PathBuf },
    /// None of the column sets the loader understands is present.
    #[error(
        "{}: no usable columns (found: {found}); expected `input_ids` (with optional `labels`), \
         `text`, `prompt` + `completion`, or `messages`", path.display()
    )]
    NoColumns { path: PathBuf, found: String },
    /// The columns describe a kind of data the task cannot train on.
    #[error("{}: {message}", path.display())]
    TaskMismatch { path: PathBuf, message: String },
    /// The tokenizer has no end-of-sequence token but the data needs one appended.
    #[error(
        "{}: the tokenizer has no eos token, needed after each `{column}`; set `eos_token` in \
         tokenizer_config.json or turn `add_eos` off", path.display()
    )]
    NoEos { path: PathBuf, column: &'static str },
    /// The loader options themselves are unusable.
    #[error("data options: {0}")]
    Options(String),

    // ---- rows ----------------------------------------------------------------------------------
    /// A line of a JSON Lines file is not valid UTF-8.
    #[error(
        "{at}: not valid UTF-8 (at byte offset {offset} of the line); re-save the file as UTF-8"
    )]
    Utf8 { at: RowRef, offset: usize },
    /// A line of a JSON Lines file (or a JSON array item) is not valid JSON or not an object.
    #[error("{at}: {message}")]
    Json { at: RowRef, message: String },
    /// A record lacks a column that the first record (or the schema) has.
    #[error("{at}: field `{column}` is missing (present: {present})")]
    MissingColumn {
        at: RowRef,
        column: String,
        present: String,
    },
    /// A column holds a value of the wrong type (or null).
    #[error("{at}: field `{column}` must be {expected}, found {found}")]
    WrongType {
        at: RowRef,
        column: String,
        expected: &'static str,
        found: String,
    },
    /// `labels` and `input_ids` differ in length.
    #[error(
        "{at}: field `labels` has {labels} entries but `input_ids` has {input_ids}; labels are \
         pre-shifted (labels[t] is the target of position t), so both must have the same length"
    )]
    LengthMismatch {
        at: RowRef,
        labels: usize,
        input_ids: usize,
    },
    /// A token id (or label) outside the model's vocabulary.
    #[error(
        "{at}: field `{column}`[{position}] = {value} is not a token id of this model (vocab_size \
         {vocab_size}{extra}); were the ids made with another tokenizer?",
        extra = if *column == "labels" { ", or -100 to ignore" } else { "" }
    )]
    IdOutOfRange {
        at: RowRef,
        column: &'static str,
        position: usize,
        value: i64,
        vocab_size: usize,
    },
    /// After tokenization, masking and truncation nothing is left to train on.
    #[error("{at}: nothing to train on: {reason}")]
    NoTrainableTokens { at: RowRef, reason: String },
    /// Tokenizing or rendering the chat template failed.
    #[error("{at}: {source}")]
    Tokenizer { at: RowRef, source: TokenizerError },
    /// The chat template renders a conversation so that a prefix of it is not a prefix of the
    /// whole, which makes the assistant turns impossible to locate.
    #[error(
        "{at}: the chat template does not render message {turn} (assistant) as an extension of \
         the conversation before it, so its tokens cannot be located; tokenize this data yourself \
         into `input_ids`/`labels`"
    )]
    TemplateNotPrefix { at: RowRef, turn: usize },

    // ---- dataset-wide checks -------------------------------------------------------------------
    /// Every label equals the input id at the same position: the labels were not shifted.
    #[error(
        "{}: in every row `labels[t] == input_ids[t]`; rwkvtune expects pre-shifted labels \
         (labels[t] is the target of position t): use input_ids = tokens[:-1], labels = \
         tokens[1:], or give only `input_ids` and let the loader shift", path.display()
    )]
    LabelsUnshifted { path: PathBuf },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}
