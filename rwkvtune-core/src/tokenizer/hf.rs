//! Glue to the `tokenizers` crate for hub directories that ship a Hugging Face `tokenizer.json`.
//!
//! Encoding is raw (`add_special_tokens = false`): no post-processor BOS/EOS is inserted, matching
//! the World tokenizer and leaving special tokens to chat templates and the data pipeline. Decoding
//! keeps special tokens so that `decode(encode(x)) == x` for texts that contain them.

use std::path::{Path, PathBuf};

use tokenizers::{AddedToken, Tokenizer};

use super::TokenizerError;

/// Errors at encode/decode time have no file of their own; name the file they came from.
fn runtime_err(message: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::HuggingFace {
        path: PathBuf::from("tokenizer.json"),
        message: message.to_string(),
    }
}

pub(super) fn load(path: &Path) -> Result<Tokenizer, TokenizerError> {
    let bytes = std::fs::read(path).map_err(|e| TokenizerError::io(path, e))?;
    Tokenizer::from_bytes(&bytes).map_err(|e| TokenizerError::HuggingFace {
        path: path.to_path_buf(),
        message: format!("cannot load: {e}"),
    })
}

pub(super) fn to_json(tok: &Tokenizer, path: &Path) -> Result<String, TokenizerError> {
    tok.to_string(true)
        .map_err(|e| TokenizerError::HuggingFace {
            path: path.to_path_buf(),
            message: format!("cannot serialise: {e}"),
        })
}

pub(super) fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>, TokenizerError> {
    tok.encode(text, false)
        .map(|enc| enc.get_ids().to_vec())
        .map_err(runtime_err)
}

pub(super) fn decode(tok: &Tokenizer, ids: &[u32]) -> Result<String, TokenizerError> {
    if let Some(&id) = ids.iter().find(|&&id| tok.id_to_token(id).is_none()) {
        let max = vocab_size(tok).saturating_sub(1) as u32;
        return Err(TokenizerError::UnknownTokenId { id, min: 0, max });
    }
    tok.decode(ids, false).map_err(runtime_err)
}

/// Skips unknown ids; a decoder failure yields the empty string, since this path must not fail.
pub(super) fn decode_lossy(tok: &Tokenizer, ids: &[u32]) -> String {
    let known: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|&id| tok.id_to_token(id).is_some())
        .collect();
    tok.decode(&known, false).unwrap_or_default()
}

/// Max id + 1 over the model vocabulary and added tokens (what an embedding table must cover).
pub(super) fn vocab_size(tok: &Tokenizer) -> usize {
    tok.get_vocab(true)
        .values()
        .max()
        .map_or(0, |&max| max as usize + 1)
}

/// Makes `token` an atomic special token. The `tokenizers` crate assigns ids itself, so a requested
/// id is a check, not an instruction.
pub(super) fn add_special(
    tok: &mut Tokenizer,
    token: &str,
    id: Option<u32>,
) -> Result<u32, TokenizerError> {
    if let Some(existing) = tok.token_to_id(token) {
        return check_requested(token, id, existing);
    }
    // Add on a copy when an id is requested, so that a mismatch leaves the tokenizer unchanged.
    let mut candidate = id.map(|_| tok.clone());
    let target = candidate.as_mut().unwrap_or(tok);
    target.add_special_tokens(&[AddedToken::from(token.to_string(), true)]);
    let assigned = target
        .token_to_id(token)
        .ok_or_else(|| TokenizerError::SpecialToken {
            token: token.to_string(),
            message: "the Hugging Face tokenizer did not accept it".into(),
        })?;
    check_requested(token, id, assigned)?;
    if let Some(updated) = candidate {
        *tok = updated;
    }
    Ok(assigned)
}

fn check_requested(token: &str, wanted: Option<u32>, assigned: u32) -> Result<u32, TokenizerError> {
    match wanted {
        Some(wanted) if wanted != assigned => Err(TokenizerError::SpecialToken {
            token: token.to_string(),
            message: format!(
                "requested id {wanted}, but tokenizer.json maps it to {assigned}; a Hugging Face \
                 tokenizer cannot re-map ids, so fix additional_special_tokens_ids or \
                 tokenizer.json"
            ),
        }),
        _ => Ok(assigned),
    }
}

/// The id that stands for `token` in a role (eos, pad, ...): the exact token if it exists,
/// otherwise the first id of its encoding (as Python rwkvtune does).
pub(super) fn role_id(tok: &Tokenizer, token: &str) -> Result<Option<u32>, TokenizerError> {
    if let Some(id) = tok.token_to_id(token) {
        return Ok(Some(id));
    }
    Ok(encode(tok, token)?.first().copied())
}
