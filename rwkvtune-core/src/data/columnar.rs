//! Columnar inputs: Parquet files (`Dataset.to_parquet`), single Arrow IPC files, and directories
//! written by `Dataset.save_to_disk` (`state.json` listing `_data_files`, each an Arrow IPC
//! *stream*, plus `dataset_info.json` with the features).
//!
//! Each record batch is converted column by column into [`RawRow`]s. Integer lists of any width
//! and `string`/`large_string`/`string_view` are accepted; everything is cast once per batch to
//! `LargeList<Int64>` / `LargeUtf8` so that the per-row code has a single shape to read.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, LargeListArray, LargeStringArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow::error::ArrowError;
use arrow::ipc::reader::{FileReader, StreamReader};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use super::error::{DataError, RowPos, RowRef};
use super::source::{list_names, RawRow, RowFormat, Sink, Turns};
use crate::tokenizer::ChatMessage;

const BATCH_ROWS: usize = 8192;

/// Rows already delivered, across the shards of one dataset.
struct Progress {
    rows: usize,
    limit: usize,
    format: Option<RowFormat>,
}

pub(crate) fn read_parquet(
    path: &Path,
    limit: usize,
    sink: &mut Sink<'_>,
) -> Result<Option<RowFormat>, DataError> {
    let decode = |e: parquet::errors::ParquetError| DataError::Decode {
        path: path.to_path_buf(),
        kind: "Parquet",
        message: e.to_string(),
    };
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(decode)?;
    let format = schema_format(path, builder.schema())?;
    // Read only the columns we use: datasets often carry large unrelated columns (images, ids).
    let wanted: Vec<usize> = format
        .columns()
        .iter()
        .filter_map(|c| builder.schema().index_of(c).ok())
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), wanted);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(decode)?;
    let mut progress = Progress {
        rows: 0,
        limit,
        format: Some(format),
    };
    read_batches(path, "Parquet", reader, &mut progress, sink)?;
    Ok(non_empty(progress))
}

/// One Arrow IPC file, in either the stream or the file (random access) format.
pub(crate) fn read_arrow_file(
    path: &Path,
    limit: usize,
    sink: &mut Sink<'_>,
) -> Result<Option<RowFormat>, DataError> {
    let mut progress = Progress {
        rows: 0,
        limit,
        format: None,
    };
    read_ipc(path, &mut progress, sink)?;
    Ok(non_empty(progress))
}

/// A `save_to_disk` directory: its shards in `state.json` order (sorted `*.arrow` without one).
pub(crate) fn read_hf_disk(
    dir: &Path,
    limit: usize,
    sink: &mut Sink<'_>,
) -> Result<Option<RowFormat>, DataError> {
    let mut progress = Progress {
        rows: 0,
        limit,
        format: None,
    };
    for shard in hf_shards(dir)? {
        if progress.rows >= limit {
            break;
        }
        read_ipc(&shard, &mut progress, sink)?;
    }
    Ok(non_empty(progress))
}

fn non_empty(p: Progress) -> Option<RowFormat> {
    if p.rows == 0 {
        None
    } else {
        p.format
    }
}

fn hf_shards(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let layout = |message: String| DataError::Layout {
        path: dir.to_path_buf(),
        message,
    };
    let dict = dir.join("dataset_dict.json");
    if dict.is_file() {
        let splits = std::fs::read_to_string(&dict)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("splits").cloned())
            .and_then(|s| serde_json::from_value::<Vec<String>>(s).ok())
            .unwrap_or_default();
        let example = splits.first().map_or("train", String::as_str);
        return Err(layout(format!(
            "this is a DatasetDict with splits {}; pass one split's directory, e.g. {}",
            list_names(splits.iter().map(String::as_str)),
            dir.join(example).display()
        )));
    }
    let state = dir.join("state.json");
    if state.is_file() {
        let text = std::fs::read_to_string(&state).map_err(|e| DataError::io(&state, e))?;
        let files = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("_data_files").cloned())
            .and_then(|v| v.as_array().cloned())
            .ok_or_else(|| DataError::Layout {
                path: state.clone(),
                message: "expected a JSON object with a `_data_files` list".into(),
            })?;
        let mut shards = Vec::with_capacity(files.len());
        for f in files {
            let name =
                f.get("filename")
                    .and_then(|n| n.as_str())
                    .ok_or_else(|| DataError::Layout {
                        path: state.clone(),
                        message: "an entry of `_data_files` has no `filename`".into(),
                    })?;
            let shard = dir.join(name);
            if !shard.is_file() {
                return Err(layout(format!(
                    "state.json lists `{name}` but the file is missing; copy the whole directory"
                )));
            }
            shards.push(shard);
        }
        return Ok(shards);
    }
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut shards: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "arrow"))
        .collect();
    shards.sort();
    if shards.is_empty() {
        return Err(layout(
            "not a `save_to_disk` directory: no state.json and no .arrow files".into(),
        ));
    }
    Ok(shards)
}

fn read_ipc(path: &Path, progress: &mut Progress, sink: &mut Sink<'_>) -> Result<(), DataError> {
    let decode = |e: ArrowError| DataError::Decode {
        path: path.to_path_buf(),
        kind: "Arrow IPC",
        message: e.to_string(),
    };
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    // The file format starts with the magic "ARROW1"; `save_to_disk` writes the stream format.
    let mut magic = [0u8; 6];
    let is_file_format = file.read_exact(&mut magic).is_ok() && &magic == b"ARROW1";
    file.seek(SeekFrom::Start(0))
        .map_err(|e| DataError::io(path, e))?;
    if is_file_format {
        let reader = FileReader::try_new_buffered(file, None).map_err(decode)?;
        read_batches(path, "Arrow IPC", reader, progress, sink)
    } else {
        let reader = StreamReader::try_new(BufReader::new(file), None).map_err(decode)?;
        read_batches(path, "Arrow IPC", reader, progress, sink)
    }
}

fn schema_format(path: &Path, schema: &Schema) -> Result<RowFormat, DataError> {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    RowFormat::detect(&names).ok_or_else(|| DataError::NoColumns {
        path: path.to_path_buf(),
        found: list_names(names),
    })
}

fn read_batches(
    path: &Path,
    kind: &'static str,
    batches: impl Iterator<Item = Result<RecordBatch, ArrowError>>,
    progress: &mut Progress,
    sink: &mut Sink<'_>,
) -> Result<(), DataError> {
    let mut row_in_file = 0;
    for batch in batches {
        if progress.rows >= progress.limit {
            break;
        }
        let batch = batch.map_err(|e| DataError::Decode {
            path: path.to_path_buf(),
            kind,
            message: e.to_string(),
        })?;
        let format = match progress.format {
            Some(f) => f,
            None => {
                let f = schema_format(path, &batch.schema())?;
                progress.format = Some(f);
                f
            }
        };
        let at = |row: usize, index: usize| RowRef {
            path: path.to_path_buf(),
            pos: RowPos::Row { row, index },
        };
        // Type errors are per column, so they are reported at the batch's first row.
        let first = at(row_in_file, progress.rows);
        let columns: Vec<Column> = format
            .columns()
            .iter()
            .map(|&name| Column::new(&batch, name, &first))
            .collect::<Result<_, _>>()?;
        for i in 0..batch.num_rows() {
            if progress.rows >= progress.limit {
                break;
            }
            let here = at(row_in_file, progress.rows);
            let row = match format {
                RowFormat::Tokens { .. } => RawRow::Tokens {
                    input_ids: columns[0].ids(i, &here)?,
                    labels: match columns.get(1) {
                        Some(c) => Some(c.ids(i, &here)?),
                        None => None,
                    },
                },
                RowFormat::Text => RawRow::Text(columns[0].text(i, &here)?),
                RowFormat::PromptCompletion => RawRow::PromptCompletion {
                    prompt: columns[0].turns(i, &here)?,
                    completion: columns[1].turns(i, &here)?,
                },
                RowFormat::Messages => RawRow::Messages(columns[0].messages(i, &here)?),
            };
            sink(here, row)?;
            row_in_file += 1;
            progress.rows += 1;
        }
    }
    Ok(())
}

// ---- columns -----------------------------------------------------------------------------------

/// One column of a record batch, cast to the single representation the row readers use.
struct Column {
    name: &'static str,
    data: ColumnData,
}

// Built once per column per record batch, so the size difference between variants is moot.
#[allow(clippy::large_enum_variant)]
enum ColumnData {
    /// `LargeList<Int64>`.
    Ids(LargeListArray),
    Text(LargeStringArray),
    /// `LargeList<Struct{role, content}>` with both fields cast to `LargeUtf8`.
    Messages {
        list: LargeListArray,
        role: LargeStringArray,
        content: LargeStringArray,
    },
}

impl Column {
    fn new(batch: &RecordBatch, name: &'static str, at: &RowRef) -> Result<Column, DataError> {
        let Some(array) = batch.column_by_name(name) else {
            let schema = batch.schema();
            return Err(DataError::MissingColumn {
                at: at.clone(),
                column: name.into(),
                present: list_names(schema.fields().iter().map(|f| f.name().as_str())),
            });
        };
        let expected = match name {
            "input_ids" | "labels" => "a list of integers",
            "text" => "a string",
            "messages" => "a list of {role, content} structs",
            _ => "a string or a list of {role, content} structs",
        };
        let wrong = || DataError::WrongType {
            at: at.clone(),
            column: name.into(),
            expected,
            found: format!("the Arrow type {}", array.data_type()),
        };
        let data = match (name, array.data_type()) {
            ("input_ids" | "labels", dt) if list_child(dt).is_some_and(DataType::is_integer) => {
                let target =
                    DataType::LargeList(Arc::new(Field::new_list_field(DataType::Int64, true)));
                ColumnData::Ids(cast_to(array, &target, at, name)?.as_list::<i64>().clone())
            }
            ("text" | "prompt" | "completion", dt) if is_string(dt) => {
                let a = cast_to(array, &DataType::LargeUtf8, at, name)?;
                ColumnData::Text(a.as_string::<i64>().clone())
            }
            ("messages" | "prompt" | "completion", dt) => {
                let Some(DataType::Struct(fields)) = list_child(dt) else {
                    return Err(wrong());
                };
                let child = fields.clone();
                let target = DataType::LargeList(Arc::new(Field::new_list_field(
                    DataType::Struct(child),
                    true,
                )));
                let list = cast_to(array, &target, at, name)?.as_list::<i64>().clone();
                let values = list.values().as_struct();
                let field = |f: &str| -> Result<LargeStringArray, DataError> {
                    let col = values
                        .column_by_name(f)
                        .filter(|c| is_string(c.data_type()));
                    let col = col.ok_or_else(|| DataError::WrongType {
                        at: at.clone(),
                        column: format!("{name}.{f}"),
                        expected: "a string field of every message",
                        found: format!("the Arrow type {}", array.data_type()),
                    })?;
                    Ok(cast_to(col, &DataType::LargeUtf8, at, name)?
                        .as_string::<i64>()
                        .clone())
                };
                let role = field("role")?;
                let content = field("content")?;
                ColumnData::Messages {
                    list,
                    role,
                    content,
                }
            }
            _ => return Err(wrong()),
        };
        Ok(Column { name, data })
    }

    fn null(&self, at: &RowRef, expected: &'static str) -> DataError {
        DataError::WrongType {
            at: at.clone(),
            column: self.name.into(),
            expected,
            found: "null".into(),
        }
    }

    fn ids(&self, i: usize, at: &RowRef) -> Result<Vec<i64>, DataError> {
        let ColumnData::Ids(list) = &self.data else {
            unreachable!("token columns are built as Ids");
        };
        if list.is_null(i) {
            return Err(self.null(at, "a list of integers"));
        }
        let values = list.value(i);
        let values = values.as_primitive::<Int64Type>();
        if let Some(k) = (0..values.len()).find(|&k| values.is_null(k)) {
            return Err(DataError::WrongType {
                at: at.clone(),
                column: self.name.into(),
                expected: "a list of integers",
                found: format!("null at position {k}"),
            });
        }
        Ok(values.values().to_vec())
    }

    fn text(&self, i: usize, at: &RowRef) -> Result<String, DataError> {
        let ColumnData::Text(s) = &self.data else {
            return Err(DataError::WrongType {
                at: at.clone(),
                column: self.name.into(),
                expected: "a string",
                found: "a list of messages".into(),
            });
        };
        if s.is_null(i) {
            return Err(self.null(at, "a string"));
        }
        Ok(s.value(i).to_string())
    }

    fn turns(&self, i: usize, at: &RowRef) -> Result<Turns, DataError> {
        match &self.data {
            ColumnData::Text(_) => Ok(Turns::Text(self.text(i, at)?)),
            _ => Ok(Turns::Messages(self.messages(i, at)?)),
        }
    }

    fn messages(&self, i: usize, at: &RowRef) -> Result<Vec<ChatMessage>, DataError> {
        let ColumnData::Messages {
            list,
            role,
            content,
        } = &self.data
        else {
            unreachable!("message columns are built as Messages");
        };
        if list.is_null(i) {
            return Err(self.null(at, "a list of {role, content} structs"));
        }
        let offsets = list.value_offsets();
        let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
        let mut out = Vec::with_capacity(end - start);
        for (k, j) in (start..end).enumerate() {
            let get = |a: &LargeStringArray, f: &str| {
                if a.is_null(j) {
                    Err(DataError::WrongType {
                        at: at.clone(),
                        column: format!("{}[{k}].{f}", self.name),
                        expected: "a string",
                        found: "null".into(),
                    })
                } else {
                    Ok(a.value(j).to_string())
                }
            };
            out.push(ChatMessage {
                role: get(role, "role")?,
                content: get(content, "content")?,
            });
        }
        Ok(out)
    }
}

fn list_child(dt: &DataType) -> Option<&DataType> {
    match dt {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            Some(f.data_type())
        }
        DataType::ListView(f) | DataType::LargeListView(f) => Some(f.data_type()),
        _ => None,
    }
}

fn is_string(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

fn cast_to(
    array: &ArrayRef,
    target: &DataType,
    at: &RowRef,
    column: &str,
) -> Result<ArrayRef, DataError> {
    cast(array, target).map_err(|e| DataError::WrongType {
        at: at.clone(),
        column: column.into(),
        expected: "a value convertible to 64-bit integers or UTF-8 strings",
        found: format!("the Arrow type {} ({e})", array.data_type()),
    })
}
