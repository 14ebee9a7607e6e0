//! Strict parser for RWKV vocabulary files (`rwkv_vocab_v20230424.txt` and compatible `vocab.txt`).
//!
//! Each line is `<id> <literal> <byte length>`, split at the first and the last space because the
//! literal may itself contain spaces. The literal is a Python `str` literal (its UTF-8 encoding is
//! the token) or a `bytes` literal (its bytes are the token). Python evaluates these with
//! `ast.literal_eval`; we accept the subset of Python's escape syntax that such a file can contain
//! and reject everything else, so that a corrupted vocabulary fails loudly at load time instead of
//! silently producing different token ids. LF and CRLF line endings are both accepted.

use std::path::Path;

use super::TokenizerError;

/// Ids at or above this are refused: the id table is dense, and a typo such as `4000000000` must
/// not allocate gigabytes.
pub(super) const MAX_ID: u32 = (1 << 24) - 1;

/// Where the bytes of one token live inside [`ParsedVocab::data`]; `len == u32::MAX` marks an id
/// that has no token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Span {
    pub start: u32,
    pub len: u32,
}

impl Span {
    pub const NONE: Span = Span {
        start: 0,
        len: u32::MAX,
    };

    pub fn is_some(self) -> bool {
        self.len != u32::MAX
    }
}

/// A parsed vocabulary: token bytes packed into one buffer, a dense id → span table, and the ids
/// sorted by their bytes (what the trie builder needs, computed here anyway for duplicate checks).
pub(super) struct ParsedVocab {
    pub data: Vec<u8>,
    pub spans: Vec<Span>,
    pub sorted_ids: Vec<u32>,
}

/// Parses a whole vocabulary file. `origin` is only used in error messages.
pub(super) fn parse_vocab(bytes: &[u8], origin: &Path) -> Result<ParsedVocab, TokenizerError> {
    let file_err = |message: String| TokenizerError::Vocab {
        path: origin.to_path_buf(),
        message,
    };
    if bytes.is_empty() {
        return Err(file_err("the vocabulary file is empty".into()));
    }
    if bytes.len() >= u32::MAX as usize {
        return Err(file_err("the vocabulary file is larger than 4 GiB".into()));
    }
    // One trailing newline ends the last line; anything else empty is a malformed line.
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);

    let mut data = Vec::with_capacity(bytes.len() / 2);
    let mut spans: Vec<Span> = Vec::with_capacity(70_000);
    // 1-based line number that defined each id (0 = none), for duplicate-id messages.
    let mut line_of_id: Vec<u32> = Vec::with_capacity(70_000);
    let mut single_byte = [false; 256];

    for (index, raw) in body.split(|&b| b == b'\n').enumerate() {
        let line_no = index + 1;
        let line_err = |message: String| TokenizerError::VocabLine {
            path: origin.to_path_buf(),
            line: line_no,
            message,
        };
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line =
            std::str::from_utf8(raw).map_err(|e| line_err(format!("not valid UTF-8 ({e})")))?;
        let start = data.len();
        let (id, declared) = parse_line(line, &mut data).map_err(line_err)?;
        let len = data.len() - start;
        if len != declared {
            return Err(line_err(format!(
                "literal length {len} != declared {declared}"
            )));
        }
        if len == 0 {
            return Err(line_err(
                "empty token (a token must have at least one byte)".into(),
            ));
        }
        let slot = id as usize;
        if slot >= spans.len() {
            spans.resize(slot + 1, Span::NONE);
            line_of_id.resize(slot + 1, 0);
        }
        if spans[slot].is_some() {
            return Err(line_err(format!(
                "duplicate id {id} (first defined on line {})",
                line_of_id[slot]
            )));
        }
        spans[slot] = Span {
            start: start as u32,
            len: len as u32,
        };
        line_of_id[slot] = line_no as u32;
        if len == 1 {
            single_byte[data[start] as usize] = true;
        }
    }

    let sorted_ids = sort_ids_by_bytes(&data, &spans);
    // Report the duplicate whose second occurrence comes first in the file.
    let mut worst: Option<(u32, u32)> = None;
    for pair in sorted_ids.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if span_bytes(&data, spans[a as usize]) == span_bytes(&data, spans[b as usize]) {
            let (first, second) = if line_of_id[a as usize] < line_of_id[b as usize] {
                (a, b)
            } else {
                (b, a)
            };
            if worst.is_none_or(|(_, s)| line_of_id[second as usize] < line_of_id[s as usize]) {
                worst = Some((first, second));
            }
        }
    }
    if let Some((first, second)) = worst {
        return Err(TokenizerError::VocabLine {
            path: origin.to_path_buf(),
            line: line_of_id[second as usize] as usize,
            message: format!(
                "id {second} has the same bytes as id {first} on line {}; token bytes must be \
                 unique",
                line_of_id[first as usize]
            ),
        });
    }
    if let Some(byte) = single_byte.iter().position(|&present| !present) {
        return Err(file_err(format!(
            "no token for the single byte 0x{byte:02X}; every byte 0x00..=0xFF must be a token of \
             its own so that any text can be encoded"
        )));
    }
    Ok(ParsedVocab {
        data,
        spans,
        sorted_ids,
    })
}

pub(super) fn span_bytes(data: &[u8], span: Span) -> &[u8] {
    &data[span.start as usize..span.start as usize + span.len as usize]
}

/// All ids that have a token, ordered by token bytes (lexicographic).
pub(super) fn sort_ids_by_bytes(data: &[u8], spans: &[Span]) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..spans.len() as u32)
        .filter(|&id| spans[id as usize].is_some())
        .collect();
    ids.sort_unstable_by(|&a, &b| {
        span_bytes(data, spans[a as usize]).cmp(span_bytes(data, spans[b as usize]))
    });
    ids
}

/// Parses one line (without its line ending), appends the token bytes to `out` and returns the id
/// and the declared byte length.
fn parse_line(line: &str, out: &mut Vec<u8>) -> Result<(u32, usize), String> {
    let shape_err = || {
        let shown: String = line.chars().take(80).collect();
        format!("expected `<id> <literal> <byte length>` separated by spaces, found {shown:?}")
    };
    let first = line.find(' ').ok_or_else(shape_err)?;
    let last = line.rfind(' ').ok_or_else(shape_err)?;
    if last == first {
        return Err(shape_err());
    }
    let id_text = &line[..first];
    let id = parse_decimal(id_text).ok_or_else(|| format!("id {id_text:?} is not a number"))?;
    if id > MAX_ID as u64 {
        return Err(format!("id {id} is too large (the limit is {MAX_ID})"));
    }
    let len_text = &line[last + 1..];
    let declared = parse_decimal(len_text)
        .ok_or_else(|| format!("byte length {len_text:?} is not a number"))?;
    decode_literal(&line[first + 1..last], out)?;
    Ok((id as u32, declared as usize))
}

/// Plain ASCII decimal without sign or separators; Python's `int()` is laxer, but no vocabulary
/// file needs more and laxness here would hide corruption.
fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 18 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Decodes a Python `str` or `bytes` literal and appends the token bytes to `out`.
pub(super) fn decode_literal(lit: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let b = lit.as_bytes();
    let (is_bytes, open) = match b {
        [b'b', b'\'' | b'"', ..] => (true, 2),
        [b'\'' | b'"', ..] => (false, 1),
        _ => {
            return Err(format!(
                "literal {lit} must start with ', \", b' or b\" (a Python string or bytes literal)"
            ))
        }
    };
    let quote = b[open - 1];
    if b.len() < open + 1 || b[b.len() - 1] != quote {
        return Err(format!(
            "literal {lit} is not closed by the quote it opens with ({})",
            quote as char
        ));
    }
    let body = &b[open..b.len() - 1];
    let mut i = 0;
    while i < body.len() {
        let c = body[i];
        if c == quote {
            return Err(format!(
                "literal {lit} has an unescaped {} inside",
                quote as char
            ));
        }
        if c != b'\\' {
            if is_bytes && c >= 0x80 {
                return Err(format!(
                    "bytes literal {lit} contains a non-ASCII character"
                ));
            }
            out.push(c);
            i += 1;
            continue;
        }
        let Some(&e) = body.get(i + 1) else {
            return Err(format!("literal {lit} ends with a lone backslash"));
        };
        i += 2;
        let code_point =
            match e {
                b'\\' | b'\'' | b'"' => u32::from(e),
                b'n' => 0x0A,
                b't' => 0x09,
                b'r' => 0x0D,
                b'a' => 0x07,
                b'b' => 0x08,
                b'f' => 0x0C,
                b'v' => 0x0B,
                b'0'..=b'7' => {
                    // Python octal escape: one to three digits.
                    let mut value = u32::from(e - b'0');
                    let mut digits = 1;
                    while digits < 3 {
                        match body.get(i) {
                            Some(&d @ b'0'..=b'7') => {
                                value = value * 8 + u32::from(d - b'0');
                                i += 1;
                                digits += 1;
                            }
                            _ => break,
                        }
                    }
                    if is_bytes && value > 0xFF {
                        return Err(format!(
                            "octal escape {value:#o} in {lit} does not fit a byte"
                        ));
                    }
                    value
                }
                b'x' => hex_escape(body, &mut i, 2, lit)?,
                b'u' if !is_bytes => hex_escape(body, &mut i, 4, lit)?,
                b'U' if !is_bytes => hex_escape(body, &mut i, 8, lit)?,
                _ => {
                    let shown = lit[open + i - 1..].chars().next().unwrap_or('?');
                    return Err(format!(
                    "unsupported escape `\\{shown}` in {lit} (supported: \\xNN \\n \\t \\r \\\\ \
                     \\' \\\" \\a \\b \\f \\v, octal{})",
                    if is_bytes { "" } else { ", \\uNNNN, \\UNNNNNNNN" }
                ));
                }
            };
        if is_bytes {
            // Only \xNN and octal can exceed ASCII here, and both were range-checked.
            out.push(code_point as u8);
        } else {
            let ch = char::from_u32(code_point).ok_or_else(|| {
                format!("escape for U+{code_point:04X} in {lit} is not a Unicode scalar value")
            })?;
            let mut buf = [0u8; 4];
            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
        }
    }
    Ok(())
}

/// Reads exactly `digits` hex digits at `body[*i..]` (Python requires the exact count).
fn hex_escape(body: &[u8], i: &mut usize, digits: usize, lit: &str) -> Result<u32, String> {
    let hex = body
        .get(*i..*i + digits)
        .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
        .ok_or_else(|| format!("escape in {lit} needs exactly {digits} hex digits"))?;
    *i += digits;
    Ok(hex.iter().fold(0u32, |acc, &h| {
        acc * 16 + (h as char).to_digit(16).unwrap_or(0)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        decode_literal(s, &mut out).map(|()| out)
    }

    #[test]
    fn literal_escapes_follow_python() {
        assert_eq!(lit(r"'\x80'").unwrap(), vec![0xC2, 0x80]); // str: code point
        assert_eq!(lit(r"b'\x80'").unwrap(), vec![0x80]); // bytes: raw byte
        assert_eq!(lit(r"'\n\t\r\\\''").unwrap(), b"\n\t\r\\'");
        assert_eq!(lit(r#""'\"""#).unwrap(), b"'\"");
        assert_eq!(lit(r"'\u2002'").unwrap(), "\u{2002}".as_bytes());
        assert_eq!(lit(r"'\U0001F600'").unwrap(), "😀".as_bytes());
        assert_eq!(lit(r"'\0'").unwrap(), vec![0]);
        assert_eq!(lit(r"'\101b'").unwrap(), b"Ab");
        assert_eq!(lit("'a b 你'").unwrap(), "a b 你".as_bytes());
    }

    #[test]
    fn literal_errors_are_rejected() {
        for bad in [
            r"'\q'",
            r"'\x8'",
            r"'\xZZ'",
            r"'abc",
            "abc",
            r"'a'b'",
            r"b'\u1234'",
            "b'é'",
            r"'\ud800'",
            r"'\'",
            "'",
        ] {
            assert!(lit(bad).is_err(), "{bad} should be rejected");
        }
    }

    /// A complete single-byte vocabulary (256 lines) followed by `extra` lines.
    fn vocab_with(extra: &[&str]) -> String {
        let mut s = String::new();
        for b in 0..=255u32 {
            s.push_str(&format!("{} b'\\x{b:02x}' 1\n", b + 1));
        }
        for line in extra {
            s.push_str(line);
            s.push('\n');
        }
        s
    }

    fn parse_err(text: &str) -> String {
        match parse_vocab(text.as_bytes(), Path::new("vocab.txt")) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn broken_lines_name_file_and_line() {
        let e = parse_err(&vocab_with(&["257 '\\q' 1"]));
        assert!(
            e.starts_with("vocab.txt line 257: unsupported escape `\\q`"),
            "{e}"
        );
        let e = parse_err(&vocab_with(&["257 'ab' 3"]));
        assert_eq!(e, "vocab.txt line 257: literal length 2 != declared 3");
        let e = parse_err(&vocab_with(&["257 'ab' 2", "258 'cd' 2x"]));
        assert!(
            e.starts_with("vocab.txt line 258: byte length \"2x\" is not"),
            "{e}"
        );
        let e = parse_err(&vocab_with(&["257 'ab' 2", "258 'cd'"]));
        assert!(
            e.starts_with("vocab.txt line 258: expected `<id> <literal>"),
            "{e}"
        );
        let e = parse_err(&vocab_with(&["257 'ab' 2", "258"]));
        assert!(
            e.starts_with("vocab.txt line 258: expected `<id> <literal>"),
            "{e}"
        );
        let e = parse_err(&vocab_with(&["257 'ab' 2", "257 'cd' 2"]));
        assert_eq!(
            e,
            "vocab.txt line 258: duplicate id 257 (first defined on line 257)"
        );
        let e = parse_err(&vocab_with(&["257 'ab' 2", "300 'ab' 2"]));
        assert!(
            e.starts_with("vocab.txt line 258: id 300 has the same bytes as id 257"),
            "{e}"
        );
        let e = parse_err(&vocab_with(&["", "257 'ab' 2"]));
        assert!(e.starts_with("vocab.txt line 257: expected"), "{e}");
        let e = parse_err(&vocab_with(&["x1 'ab' 2"]));
        assert!(
            e.starts_with("vocab.txt line 257: id \"x1\" is not a number"),
            "{e}"
        );
        let e = parse_err("1 'a' 1\n");
        assert!(e.contains("no token for the single byte 0x00"), "{e}");
    }

    #[test]
    fn crlf_and_missing_final_newline_are_accepted() {
        let text = vocab_with(&["257 'a b' 3", "258 \"'\" 1x"]);
        // "1x" is not a length: check that the error survives CRLF too.
        let crlf = text.replace('\n', "\r\n");
        assert!(parse_err(&crlf).starts_with("vocab.txt line 258"));
        let ok = vocab_with(&["257 'a b' 3"]).replace('\n', "\r\n");
        let ok = ok.trim_end_matches("\r\n");
        let v = parse_vocab(ok.as_bytes(), Path::new("v")).unwrap();
        assert_eq!(span_bytes(&v.data, v.spans[257]), b"a b");
        assert_eq!(v.sorted_ids.len(), 257);
    }
}
