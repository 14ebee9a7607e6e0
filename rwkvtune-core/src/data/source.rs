//! Reading records: which columns a dataset uses ([`RowFormat`]), the column-agnostic record
//! ([`RawRow`]) that the tokenizing step consumes, file-type dispatch, and the JSON readers (JSON
//! Lines as `datasets.Dataset.to_json` writes it, and JSON arrays). Columnar files live in
//! `columnar.rs`.
//!
//! Records are streamed into a sink one at a time, so a large file is never held twice in memory.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::columnar;
use super::error::{DataError, RowPos, RowRef};
use super::DataFormat;
use crate::tokenizer::ChatMessage;

/// Which column set a dataset uses, decided once from the first record (JSON) or the schema
/// (Parquet/Arrow); every record must then have those columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowFormat {
    /// `input_ids`, with pre-shifted `labels` when `labels` is true, else shifted by the loader.
    Tokens { labels: bool },
    /// `text`: every token is trained.
    Text,
    /// `prompt` + `completion` (strings, or lists of chat messages): only the completion is trained.
    PromptCompletion,
    /// `messages` (a list of `{role, content}`): only assistant turns are trained.
    Messages,
}

impl RowFormat {
    /// Picks the format from the column names; the order decides when several sets are present.
    pub(crate) fn detect(names: &[&str]) -> Option<RowFormat> {
        let has = |c: &str| names.contains(&c);
        if has("input_ids") {
            Some(RowFormat::Tokens {
                labels: has("labels"),
            })
        } else if has("messages") {
            Some(RowFormat::Messages)
        } else if has("prompt") || has("completion") {
            Some(RowFormat::PromptCompletion)
        } else if has("text") {
            Some(RowFormat::Text)
        } else {
            None
        }
    }

    /// The columns a record of this format must have.
    pub(crate) fn columns(self) -> &'static [&'static str] {
        match self {
            RowFormat::Tokens { labels: true } => &["input_ids", "labels"],
            RowFormat::Tokens { labels: false } => &["input_ids"],
            RowFormat::Text => &["text"],
            RowFormat::PromptCompletion => &["prompt", "completion"],
            RowFormat::Messages => &["messages"],
        }
    }

    /// Short human name, for logs ("loaded 300 prompt/completion examples").
    pub fn describe(self) -> &'static str {
        match self {
            RowFormat::Tokens { labels: true } => "input_ids/labels",
            RowFormat::Tokens { labels: false } => "input_ids",
            RowFormat::Text => "text",
            RowFormat::PromptCompletion => "prompt/completion",
            RowFormat::Messages => "messages",
        }
    }
}

/// `prompt` / `completion` cell: plain text, or a conversation fragment (TRL's conversational
/// prompt-completion format).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Turns {
    Text(String),
    Messages(Vec<ChatMessage>),
}

/// One record, reduced to the columns of its [`RowFormat`].
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum RawRow {
    Tokens {
        input_ids: Vec<i64>,
        labels: Option<Vec<i64>>,
    },
    Text(String),
    PromptCompletion {
        prompt: Turns,
        completion: Turns,
    },
    Messages(Vec<ChatMessage>),
}

/// Receives every record in order. Returning an error stops reading.
pub(crate) type Sink<'a> = dyn FnMut(RowRef, RawRow) -> Result<(), DataError> + 'a;

/// Resolves the reader for `path` and streams up to `max_rows` records into `sink`. Returns the
/// dataset's row format; a dataset without rows is an error.
pub(crate) fn read_rows(
    path: &Path,
    format: DataFormat,
    max_rows: Option<usize>,
    sink: &mut Sink<'_>,
) -> Result<RowFormat, DataError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::NotFound {
            path: path.to_path_buf(),
        },
        _ => DataError::io(path, e),
    })?;
    let format = match format {
        DataFormat::Auto => guess_format(path, meta.is_dir())?,
        f => f,
    };
    let limit = max_rows.unwrap_or(usize::MAX);
    let found = match format {
        DataFormat::Jsonl => read_json(path, limit, sink)?,
        DataFormat::Parquet => columnar::read_parquet(path, limit, sink)?,
        DataFormat::Arrow => columnar::read_arrow_file(path, limit, sink)?,
        DataFormat::HfDisk => columnar::read_hf_disk(path, limit, sink)?,
        DataFormat::Auto => unreachable!("resolved above"),
    };
    found.ok_or_else(|| DataError::Empty {
        path: path.to_path_buf(),
    })
}

fn guess_format(path: &Path, is_dir: bool) -> Result<DataFormat, DataError> {
    if is_dir {
        return Ok(DataFormat::HfDisk);
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("jsonl" | "json" | "ndjson") => Ok(DataFormat::Jsonl),
        Some("parquet" | "pq") => Ok(DataFormat::Parquet),
        Some("arrow" | "ipc" | "feather") => Ok(DataFormat::Arrow),
        _ => Err(DataError::UnknownFormat {
            path: path.to_path_buf(),
            message: "cannot tell the format from the extension; use .jsonl/.json, .parquet or \
                      .arrow, a `save_to_disk` directory, or name the format explicitly"
                .into(),
        }),
    }
}

// ---- JSON --------------------------------------------------------------------------------------

/// JSON Lines, or a single JSON array of records (`to_json(lines=False)`), told apart by the first
/// non-blank byte. Returns `None` when the file holds no record.
fn read_json(
    path: &Path,
    limit: usize,
    sink: &mut Sink<'_>,
) -> Result<Option<RowFormat>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    // Peek only at the first buffer: a file that starts with a megabyte of whitespace is read as
    // JSON Lines, which skips blank lines anyway.
    let buf = reader.fill_buf().map_err(|e| DataError::io(path, e))?;
    let first = buf.iter().copied().find(|b| !b.is_ascii_whitespace());
    if buf.is_empty() {
        return Ok(None);
    }
    match first {
        Some(b'[') => read_json_array(path, reader, limit, sink),
        _ => read_jsonl(path, reader, limit, sink),
    }
}

fn read_jsonl(
    path: &Path,
    mut reader: impl BufRead,
    limit: usize,
    sink: &mut Sink<'_>,
) -> Result<Option<RowFormat>, DataError> {
    let mut format = None;
    let mut line = Vec::new();
    let mut line_no = 0;
    let mut rows = 0;
    while rows < limit {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let at = RowRef {
            path: path.to_path_buf(),
            pos: RowPos::Line(line_no),
        };
        // Editors on Windows may start the file with a byte-order mark; serde_json rejects it.
        let bytes = match line_no {
            1 => line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&line),
            _ => &line,
        };
        let text = std::str::from_utf8(bytes).map_err(|e| DataError::Utf8 {
            at: at.clone(),
            offset: e.valid_up_to(),
        })?;
        // Blank lines (often a trailing one) are skipped, but still counted above.
        if text.trim().is_empty() {
            continue;
        }
        // Without the line ending, serde's column points into this line.
        let text = text.trim_end_matches(['\n', '\r']);
        let value: Value = serde_json::from_str(text).map_err(|e| DataError::Json {
            at: at.clone(),
            message: json_syntax(&e),
        })?;
        json_record(value, at, &mut format, sink)?;
        rows += 1;
    }
    Ok(format)
}

fn read_json_array(
    path: &Path,
    mut reader: impl Read,
    limit: usize,
    sink: &mut Sink<'_>,
) -> Result<Option<RowFormat>, DataError> {
    let mut text = String::new();
    reader
        .read_to_string(&mut text)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => DataError::UnknownFormat {
                path: path.to_path_buf(),
                message: "not valid UTF-8; re-save the file as UTF-8".into(),
            },
            _ => DataError::io(path, e),
        })?;
    let items: Vec<Value> = serde_json::from_str(&text).map_err(|e| DataError::Json {
        at: RowRef {
            path: path.to_path_buf(),
            pos: RowPos::Line(e.line()),
        },
        message: json_syntax(&e),
    })?;
    let mut format = None;
    for (i, value) in items.into_iter().take(limit).enumerate() {
        let at = RowRef {
            path: path.to_path_buf(),
            pos: RowPos::Item(i),
        };
        json_record(value, at, &mut format, sink)?;
    }
    Ok(format)
}

/// Decides the format from the first record, then reduces each record to its columns.
fn json_record(
    value: Value,
    at: RowRef,
    format: &mut Option<RowFormat>,
    sink: &mut Sink<'_>,
) -> Result<(), DataError> {
    let Value::Object(mut obj) = value else {
        return Err(DataError::Json {
            message: format!(
                "expected a JSON object with named fields, found {}",
                describe(&value)
            ),
            at,
        });
    };
    let fmt = match *format {
        Some(f) => f,
        None => {
            let names: Vec<&str> = obj.keys().map(String::as_str).collect();
            let f = RowFormat::detect(&names).ok_or_else(|| DataError::NoColumns {
                path: at.path.clone(),
                found: list_names(names),
            })?;
            *format = Some(f);
            f
        }
    };
    let row = match fmt {
        RowFormat::Tokens { labels } => RawRow::Tokens {
            input_ids: json_ids(take(&mut obj, "input_ids", &at)?, "input_ids", &at)?,
            labels: if labels {
                Some(json_ids(take(&mut obj, "labels", &at)?, "labels", &at)?)
            } else {
                None
            },
        },
        RowFormat::Text => RawRow::Text(json_string(take(&mut obj, "text", &at)?, "text", &at)?),
        RowFormat::PromptCompletion => RawRow::PromptCompletion {
            prompt: json_turns(take(&mut obj, "prompt", &at)?, "prompt", &at)?,
            completion: json_turns(take(&mut obj, "completion", &at)?, "completion", &at)?,
        },
        RowFormat::Messages => RawRow::Messages(json_messages(
            take(&mut obj, "messages", &at)?,
            "messages",
            &at,
        )?),
    };
    sink(at, row)
}

fn take(obj: &mut Map<String, Value>, column: &str, at: &RowRef) -> Result<Value, DataError> {
    obj.remove(column).ok_or_else(|| DataError::MissingColumn {
        at: at.clone(),
        column: column.to_string(),
        present: list_names(obj.keys().map(String::as_str)),
    })
}

fn json_ids(value: Value, column: &str, at: &RowRef) -> Result<Vec<i64>, DataError> {
    let wrong = |found: String| DataError::WrongType {
        at: at.clone(),
        column: column.to_string(),
        expected: "a list of integers",
        found,
    };
    let Value::Array(items) = value else {
        return Err(wrong(describe(&value)));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_i64()
                .ok_or_else(|| wrong(format!("{} at position {i}", describe(v))))
        })
        .collect()
}

fn json_string(value: Value, column: &str, at: &RowRef) -> Result<String, DataError> {
    match value {
        Value::String(s) => Ok(s),
        other => Err(DataError::WrongType {
            at: at.clone(),
            column: column.to_string(),
            expected: "a string",
            found: describe(&other),
        }),
    }
}

fn json_turns(value: Value, column: &str, at: &RowRef) -> Result<Turns, DataError> {
    match value {
        Value::String(s) => Ok(Turns::Text(s)),
        Value::Array(_) => Ok(Turns::Messages(json_messages(value, column, at)?)),
        other => Err(DataError::WrongType {
            at: at.clone(),
            column: column.to_string(),
            expected: "a string or a list of {role, content} messages",
            found: describe(&other),
        }),
    }
}

fn json_messages(value: Value, column: &str, at: &RowRef) -> Result<Vec<ChatMessage>, DataError> {
    let wrong = |column: String, expected, found: String| DataError::WrongType {
        at: at.clone(),
        column,
        expected,
        found,
    };
    let Value::Array(items) = value else {
        return Err(wrong(
            column.into(),
            "a list of {role, content} messages",
            describe(&value),
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let Value::Object(mut m) = item else {
            return Err(wrong(
                format!("{column}[{i}]"),
                "an object {role, content}",
                describe(&item),
            ));
        };
        let mut field = |name: &str| match m.remove(name) {
            Some(Value::String(s)) => Ok(s),
            other => Err(wrong(
                format!("{column}[{i}].{name}"),
                "a string",
                other.as_ref().map_or("nothing".into(), describe),
            )),
        };
        let role = field("role")?;
        let content = field("content")?;
        out.push(ChatMessage { role, content });
    }
    Ok(out)
}

/// serde_json's message with its position as a column: the line is already in the `RowRef` (for
/// a JSON Lines record serde's own line number would always be 1).
fn json_syntax(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let message = text
        .rfind(" at line ")
        .map_or(text.as_str(), |i| &text[..i]);
    format!("invalid JSON: {message} (column {})", e.column())
}

/// A JSON value's type, for "found ..." in error messages.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if s.len() <= 20 => format!("the string {s:?}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

pub(crate) fn list_names<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let v: Vec<String> = names.into_iter().map(|n| format!("`{n}`")).collect();
    if v.is_empty() {
        "no fields".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_prefers_token_columns() {
        let f = RowFormat::detect(&["text", "input_ids", "labels"]);
        assert_eq!(f, Some(RowFormat::Tokens { labels: true }));
        assert_eq!(
            RowFormat::detect(&["prompt"]),
            Some(RowFormat::PromptCompletion)
        );
        assert_eq!(RowFormat::detect(&["text", "id"]), Some(RowFormat::Text));
        assert_eq!(RowFormat::detect(&["foo"]), None);
    }

    #[test]
    fn json_ids_reports_the_bad_element() {
        let at = RowRef {
            path: "d.jsonl".into(),
            pos: RowPos::Line(3),
        };
        let err = json_ids(serde_json::json!([1, 2.5]), "input_ids", &at).unwrap_err();
        assert_eq!(
            err.to_string(),
            "d.jsonl line 3: field `input_ids` must be a list of integers, found the number 2.5 \
             at position 1"
        );
    }
}
