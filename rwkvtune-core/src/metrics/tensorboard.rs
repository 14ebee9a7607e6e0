//! TensorBoard event files written by hand: TFRecord framing around hand-encoded `Event` protobufs.
//!
//! Only the handful of messages a scalar logger needs are encoded (field numbers from TensorFlow's
//! `event.proto` / `summary.proto`):
//!
//! ```text
//! Event      { double wall_time = 1; int64 step = 2;
//!              oneof what { string file_version = 3; Summary summary = 5; SessionLog session_log = 7; } }
//! Summary    { repeated Value value = 1; }
//! Value      { string tag = 1; float simple_value = 2; }
//! SessionLog { SessionStatus status = 1; }            // START = 1
//! ```
//!
//! A TFRecord is `u64 length (LE) | masked crc32c(length) | payload | masked crc32c(payload)`.
//! Pulling in a protobuf code generator for four messages would cost more than these ~100 lines.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::MetricsError;

/// The first record of every event file; TensorBoard reads the version from it (version 2 makes it
/// purge on `SessionLog.START`, see [`TbWriter::create`]).
const FILE_VERSION: &str = "brain.Event:2";

/// How many event files one process may start in one directory within one second.
const MAX_SAME_SECOND: u32 = 1000;

/// `SessionLog.SessionStatus.START`.
const SESSION_START: u64 = 1;

/// Appends scalar summaries to one `events.out.tfevents.*` file.
#[derive(Debug)]
pub struct TbWriter {
    path: PathBuf,
    file: File,
}

impl TbWriter {
    /// Creates `dir` if needed and a new event file in it for a run whose next step is
    /// `first_step` (1 for a fresh run, the checkpoint's step + 1 for a resumed one).
    ///
    /// The file starts with the file-version event and a `SessionLog.START` at `first_step`: on
    /// reading it TensorBoard drops whatever older files of `dir` logged at `first_step` or later,
    /// i.e. the steps a crashed run logged after its checkpoint (about to be redone), or a whole
    /// earlier run in the same output directory (replaced, as `loss_data.jsonl` is). Nothing is
    /// deleted from disk.
    ///
    /// The name is `events.out.tfevents.<unix secs>.<hostname>.<pid>.<n>`, where `n` is 0 unless a file of that name exists (a resume in the same second): TensorBoard reads
    /// a directory's files in name order, so a later file must never sort before an earlier one,
    /// which a process-wide counter (9 < 10 but ".10" < ".9") could not promise.
    pub fn create(dir: &Path, first_step: u64) -> Result<Self, MetricsError> {
        std::fs::create_dir_all(dir).map_err(|e| MetricsError::io(dir, e))?;
        let secs = unix_now().floor() as u64;
        let host = hostname();
        let pid = std::process::id();
        for n in 0..MAX_SAME_SECOND {
            let path = dir.join(format!("events.out.tfevents.{secs:010}.{host}.{pid}.{n}"));
            // create_new: never append to (or clobber) another writer's file.
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    let mut writer = TbWriter { path, file };
                    let mut event = event_header(unix_now(), 0);
                    put_bytes(&mut event, 3, FILE_VERSION.as_bytes());
                    writer.write_record(&event)?;
                    let mut session_log = Vec::new();
                    put_varint_field(&mut session_log, 1, SESSION_START);
                    let mut event = event_header(unix_now(), first_step as i64);
                    put_bytes(&mut event, 7, &session_log);
                    writer.write_record(&event)?;
                    return Ok(writer);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(MetricsError::io(&path, e)),
            }
        }
        let msg = format!("{MAX_SAME_SECOND} event files of this process in one second");
        Err(MetricsError::io(
            dir,
            std::io::Error::new(ErrorKind::AlreadyExists, msg),
        ))
    }

    /// The event file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one event holding all `scalars` (tag, value) at `step`, stamped with the current time.
    pub fn add_scalars(&mut self, step: u64, scalars: &[(&str, f64)]) -> Result<(), MetricsError> {
        self.add_scalars_at(unix_now(), step, scalars)
    }

    /// [`TbWriter::add_scalars`] with an explicit wall time (seconds since the Unix epoch).
    pub fn add_scalars_at(
        &mut self,
        wall_time: f64,
        step: u64,
        scalars: &[(&str, f64)],
    ) -> Result<(), MetricsError> {
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let mut v = Vec::new();
            put_bytes(&mut v, 1, tag.as_bytes());
            // simple_value is a proto float: TensorBoard stores scalars as f32 anyway.
            put_key(&mut v, 2, WIRE_FIXED32);
            v.extend_from_slice(&(*value as f32).to_le_bytes());
            put_bytes(&mut summary, 1, &v);
        }
        let mut event = event_header(wall_time, step as i64);
        put_bytes(&mut event, 5, &summary);
        self.write_record(&event)
    }

    /// One TFRecord in a single `write_all` with no user-space buffer, so every event is in the
    /// kernel's hands (and survives a crash of this process) as soon as this returns.
    fn write_record(&mut self, payload: &[u8]) -> Result<(), MetricsError> {
        let mut record = Vec::with_capacity(payload.len() + 16);
        let len = (payload.len() as u64).to_le_bytes();
        record.extend_from_slice(&len);
        record.extend_from_slice(&masked_crc(&len).to_le_bytes());
        record.extend_from_slice(payload);
        record.extend_from_slice(&masked_crc(payload).to_le_bytes());
        self.file
            .write_all(&record)
            .map_err(|e| MetricsError::io(&self.path, e))
    }
}

// ---- protobuf wire format ----------------------------------------------------------------------

const WIRE_VARINT: u64 = 0;
const WIRE_FIXED64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_FIXED32: u64 = 5;

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_key(buf: &mut Vec<u8>, field: u64, wire: u64) {
    put_varint(buf, (field << 3) | wire);
}

fn put_varint_field(buf: &mut Vec<u8>, field: u64, v: u64) {
    put_key(buf, field, WIRE_VARINT);
    put_varint(buf, v);
}

fn put_bytes(buf: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_key(buf, field, WIRE_LEN);
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// `wall_time` and `step`, the fields every event starts with.
fn event_header(wall_time: f64, step: i64) -> Vec<u8> {
    let mut event = Vec::with_capacity(64);
    put_key(&mut event, 1, WIRE_FIXED64);
    event.extend_from_slice(&wall_time.to_le_bytes());
    // int64 is encoded as the two's-complement u64 varint (negative steps never occur here).
    put_varint_field(&mut event, 2, step as u64);
    event
}

/// TFRecord's checksum: crc32c rotated and offset, because a CRC of data that itself contains
/// CRCs is weak (from TensorFlow's `crc32c::Mask`).
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The host name for the file name (TensorBoard shows nothing of it; it only keeps files written
/// by different machines into a shared directory apart). Read from procfs to avoid a dependency.
fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if clean.is_empty() {
        "localhost".to_string()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_matches_protobuf_examples() {
        // From the protobuf encoding guide: 1 -> 01, 150 -> 96 01, 300 -> ac 02.
        for (v, want) in [
            (1u64, vec![0x01]),
            (150, vec![0x96, 0x01]),
            (300, vec![0xac, 0x02]),
        ] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert_eq!(buf, want, "varint({v})");
        }
    }

    #[test]
    fn masked_crc_matches_tensorflow() {
        // crc32c("123456789") = 0xe3069283 (the standard check value), masked by hand:
        // rotr15 = 0x2507c60d, + 0xa282ead8 = 0xc78ab0e5.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn records_are_framed_and_checksummed() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = TbWriter::create(dir.path(), 1).unwrap();
        w.add_scalars_at(1.5, 7, &[("train/loss", 2.0)]).unwrap();
        let name = w.path().file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        assert!(
            name.ends_with(&format!(".{}.0", std::process::id())),
            "{name}"
        );

        let bytes = std::fs::read(w.path()).unwrap();
        let mut payloads = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len_bytes = &bytes[at..at + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            let len_crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            assert_eq!(len_crc, masked_crc(len_bytes));
            let payload = &bytes[at + 12..at + 12 + len];
            let crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
            assert_eq!(crc, masked_crc(payload));
            payloads.push(payload.to_vec());
            at += 16 + len;
        }
        assert_eq!(payloads.len(), 3);
        assert!(payloads[0]
            .windows(13)
            .any(|w| w == FILE_VERSION.as_bytes()));
        // After wall_time (9 bytes): step 1, then session_log = SessionLog{status: START}.
        assert_eq!(payloads[1][9..], [0x10, 1, 0x3a, 2, 0x08, 1]);

        // The summary event, byte by byte: wall_time, step, then Summary{Value{tag, simple_value}}.
        let mut want = vec![0x09];
        want.extend_from_slice(&1.5f64.to_le_bytes());
        want.extend_from_slice(&[0x10, 7, 0x2a, 19, 0x0a, 17, 0x0a, 10]);
        want.extend_from_slice(b"train/loss");
        want.push(0x15);
        want.extend_from_slice(&2.0f32.to_le_bytes());
        assert_eq!(payloads[2], want);
    }

    #[test]
    fn files_created_in_the_same_second_get_distinct_names() {
        let dir = tempfile::tempdir().unwrap();
        let a = TbWriter::create(dir.path(), 1).unwrap();
        let b = TbWriter::create(dir.path(), 4).unwrap();
        assert_ne!(a.path(), b.path());
    }

    #[test]
    fn unwritable_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = TbWriter::create(&file.join("tb"), 1).unwrap_err();
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }
}
