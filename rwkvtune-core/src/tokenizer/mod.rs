//! Tokenizers: the RWKV "World" byte-trie tokenizer, Hugging Face `tokenizer.json` tokenizers, chat
//! templates and the `tokenizer_config.json` side of a model-hub directory.
//!
//! - [`WorldTokenizer`] is the tokenizer every RWKV World model was trained with: greedy longest match
//!   over the UTF-8 bytes of the text against `rwkv_vocab_v20230424.txt` (embedded in the binary, see
//!   `assets/NOTICE-rwkv-vocab.md`). It reproduces `rwkv` 0.8.32's `TRIE_TOKENIZER` id for id.
//! - [`AutoTokenizer`] is what the rest of the crate uses: a [`Backend`] (World or Hugging Face) plus
//!   the hub-directory configuration (special tokens, eos/pad/bos ids, chat template), loaded with
//!   [`AutoTokenizer::from_pretrained`] and written with [`AutoTokenizer::save_pretrained`].
//!
//! Module map: `vocab` parses vocabulary files, `world` holds the trie tokenizer, `config` the
//! `tokenizer_config.json` schema, `chat` the template renderer, `hf` the Hugging Face glue and `auto`
//! the facade that ties them to a directory.

mod auto;
mod chat;
mod config;
mod hf;
mod vocab;
mod world;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use auto::{AutoTokenizer, Backend, TokenRole};
pub use chat::{ChatMessage, CHATML_TEMPLATE};
pub use config::{
    AddedTokenSpec, AdditionalSpecialToken, ChatTemplateField, NamedChatTemplate,
    SpecialTokenEntry, TokenSpec, TokenizerConfig,
};
pub use world::{WorldTokenizer, BUILTIN_VOCAB};

/// Everything that can go wrong while loading, using or saving a tokenizer. Each variant names the
/// file (and line or field) involved so that the message alone tells the user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// Reading, writing or renaming a file failed at the OS level.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// One line of a vocabulary file is malformed (1-based line number).
    #[error("{} line {line}: {message}", path.display())]
    VocabLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// The vocabulary file as a whole is unusable (e.g. a byte without a single-byte token).
    #[error("{}: {message}", path.display())]
    Vocab { path: PathBuf, message: String },
    /// An id that the vocabulary does not contain was given to a decoder.
    #[error(
        "unknown token id {id} (vocab has ids {min}..={max}); were these ids produced with a \
         different vocabulary?"
    )]
    UnknownTokenId { id: u32, min: u32, max: u32 },
    /// A configuration file is not valid JSON or not a JSON object.
    #[error("{}: {message}", path.display())]
    ConfigJson { path: PathBuf, message: String },
    /// A field of a configuration file has the wrong type or an unusable value.
    #[error("{}: field `{field}`: {message}", path.display())]
    ConfigField {
        path: PathBuf,
        field: String,
        message: String,
    },
    /// A Hugging Face `tokenizer.json` could not be loaded, serialised or run.
    #[error("{}: Hugging Face tokenizer: {message}", path.display())]
    HuggingFace { path: PathBuf, message: String },
    /// A special token could not be added or assigned to a role.
    #[error("special token {token:?}: {message}")]
    SpecialToken { token: String, message: String },
    /// The chat template failed to parse or render.
    #[error("chat template: {message}")]
    ChatTemplate { message: String },
}

impl TokenizerError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TokenizerError::Io {
            path: path.into(),
            source,
        }
    }
}
