//! [`AutoTokenizer`]: a World or Hugging Face tokenizer together with the hub-directory settings
//! around it (special tokens, role ids, chat template), and their persistence.
//!
//! Directory layout (spec §8.5, §9.3): `tokenizer.json` (Hugging Face) wins if present; otherwise
//! the vocabulary is `vocab.txt`, the file named by `vocab_file`, or `rwkv_vocab_v20230424.txt`, and
//! the built-in vocabulary when the directory has none of them. `tokenizer_config.json` and
//! `chat_template.jinja` are optional.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::chat::{self, ChatMessage, RenderOptions, CHATML_TEMPLATE};
use super::config::{
    AdditionalSpecialToken, ChatTemplateField, SpecialTokenEntry, TokenSpec, TokenizerConfig,
};
use super::vocab::MAX_ID;
use super::world::{WorldTokenizer, BUILTIN_VOCAB_NAME};
use super::{hf, TokenizerError};

const CONFIG_FILE: &str = "tokenizer_config.json";
const HF_FILE: &str = "tokenizer.json";
const TEMPLATE_FILE: &str = "chat_template.jinja";
const VOCAB_FILE: &str = "vocab.txt";
/// Python rwkvtune keeps templates of at least this many characters out of the JSON.
const INLINE_TEMPLATE_MAX_CHARS: usize = 500;

/// The tokenization algorithm behind an [`AutoTokenizer`].
// Not boxed: the variant is part of the public API, and an AutoTokenizer is built once and kept.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Backend {
    World(WorldTokenizer),
    HuggingFace(tokenizers::Tokenizer),
}

/// The roles a special token can play.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenRole {
    Bos,
    Eos,
    Pad,
    Unk,
}

impl TokenRole {
    fn field(self) -> &'static str {
        match self {
            TokenRole::Bos => "bos_token",
            TokenRole::Eos => "eos_token",
            TokenRole::Pad => "pad_token",
            TokenRole::Unk => "unk_token",
        }
    }
}

/// A tokenizer as a model hub describes it. For World tokenizers, `config.additional_special_tokens`
/// is derived from the tokens added to the backend (at load, after
/// [`add_special_token`](Self::add_special_token) and at save); edit tokens through the methods,
/// not the config.
#[derive(Clone, Debug)]
pub struct AutoTokenizer {
    pub backend: Backend,
    pub config: TokenizerConfig,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub unk_token_id: Option<u32>,
    chat_template: Option<String>,
}

impl AutoTokenizer {
    /// The built-in World vocabulary with Python rwkvtune's defaults: eos `"\n\n"` (261), pad 0.
    pub fn builtin() -> Self {
        Self::from_world(WorldTokenizer::builtin().clone())
    }

    /// Wraps a World tokenizer with the default configuration.
    pub fn from_world(world: WorldTokenizer) -> Self {
        let mut tok = AutoTokenizer {
            backend: Backend::World(world),
            config: TokenizerConfig::world_default(),
            eos_token_id: None,
            pad_token_id: None,
            bos_token_id: None,
            unk_token_id: None,
            chat_template: None,
        };
        tok.sync_world_config();
        // The default config names only "\n\n", which every World vocabulary built from the
        // standard file has; a custom vocabulary without it just gets no eos id.
        tok.resolve_roles(Path::new(CONFIG_FILE))
            .unwrap_or_default();
        tok
    }

    /// Loads a tokenizer from a hub directory (see the module docs for which files are used).
    pub fn from_pretrained(dir: &Path) -> Result<Self, TokenizerError> {
        let meta = std::fs::metadata(dir).map_err(|e| TokenizerError::io(dir, e))?;
        if !meta.is_dir() {
            let e = std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "expected a model or tokenizer directory",
            );
            return Err(TokenizerError::io(dir, e));
        }
        let config_path = dir.join(CONFIG_FILE);
        let config = if config_path.is_file() {
            Some(TokenizerConfig::from_file(&config_path)?)
        } else {
            None
        };
        let template = match config.as_ref().and_then(|c| c.chat_template_str()) {
            Some(t) => Some(t.to_string()),
            None => read_optional(&dir.join(TEMPLATE_FILE))?,
        };
        let hf_path = dir.join(HF_FILE);
        let (backend, config) = if hf_path.is_file() {
            let tok = hf::load(&hf_path)?;
            (Backend::HuggingFace(tok), config.unwrap_or_default())
        } else {
            let world = match find_vocab(dir, config.as_ref()) {
                Some(path) => WorldTokenizer::from_vocab_file(&path)?,
                None => WorldTokenizer::builtin().clone(),
            };
            let config = config.unwrap_or_else(TokenizerConfig::world_default);
            (Backend::World(world), config)
        };
        let mut tok = AutoTokenizer {
            backend,
            config,
            eos_token_id: None,
            pad_token_id: None,
            bos_token_id: None,
            unk_token_id: None,
            chat_template: template,
        };
        for (token, id) in tok.config.special_token_requests() {
            tok.add_special_token_inner(&token, id)
                .map_err(|e| TokenizerError::ConfigField {
                    path: config_path.clone(),
                    field: "additional_special_tokens".into(),
                    message: e.to_string(),
                })?;
        }
        tok.sync_world_config();
        tok.resolve_roles(&config_path)?;
        Ok(tok)
    }

    /// Writes `tokenizer_config.json` plus `vocab.txt` (World) or `tokenizer.json` (Hugging Face),
    /// and `chat_template.jinja` for templates of 500 characters or more (shorter ones go into the
    /// JSON). Each file is written to a temporary name and renamed into place. Files that would
    /// make [`from_pretrained`](Self::from_pretrained) load something else — a stale
    /// `chat_template.jinja`, or a `tokenizer.json` next to a saved World vocabulary — are removed.
    pub fn save_pretrained(&self, dir: &Path) -> Result<(), TokenizerError> {
        std::fs::create_dir_all(dir).map_err(|e| TokenizerError::io(dir, e))?;
        let mut config = self.config.clone();
        match &self.backend {
            Backend::World(world) => {
                write_atomic(&dir.join(VOCAB_FILE), world.vocab_file_bytes())?;
                remove_if_present(&dir.join(HF_FILE))?;
                config.vocab_file = Some(VOCAB_FILE.into());
                config
                    .tokenizer_class
                    .get_or_insert_with(|| "RWKV_TOKENIZER".into());
                config.add_bos_token.get_or_insert(false);
                config.add_eos_token.get_or_insert(false);
                config.clean_up_tokenization_spaces.get_or_insert(false);
                fill_world_specials(&mut config, world);
            }
            Backend::HuggingFace(tok) => {
                let path = dir.join(HF_FILE);
                write_atomic(&path, hf::to_json(tok, &path)?.as_bytes())?;
            }
        }
        let template_path = dir.join(TEMPLATE_FILE);
        match &self.chat_template {
            // A named-template list that still yields this template is kept as it was.
            Some(t)
                if config.chat_template_str() == Some(t.as_str())
                    && matches!(config.chat_template, Some(ChatTemplateField::Named(_))) =>
            {
                remove_if_present(&template_path)?
            }
            Some(t) if t.chars().count() < INLINE_TEMPLATE_MAX_CHARS => {
                config.chat_template = Some(ChatTemplateField::Single(t.clone()));
                remove_if_present(&template_path)?;
            }
            Some(t) => {
                config.chat_template = None;
                write_atomic(&template_path, t.as_bytes())?;
            }
            None => {
                config.chat_template = None;
                remove_if_present(&template_path)?;
            }
        }
        write_atomic(&dir.join(CONFIG_FILE), config.to_json_string().as_bytes())
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        match &self.backend {
            Backend::World(w) => Ok(w.encode(text)),
            Backend::HuggingFace(t) => hf::encode(t, text),
        }
    }

    /// World: the official rule (invalid UTF-8 gives the single character U+FFFD), except that an
    /// unknown id is an error rather than U+FFFD. Hugging Face: `tokenizers` decoding, special
    /// tokens kept.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        match &self.backend {
            Backend::World(w) => {
                let bytes = w.decode_bytes(ids)?;
                Ok(String::from_utf8(bytes).unwrap_or_else(|_| "\u{FFFD}".to_string()))
            }
            Backend::HuggingFace(t) => hf::decode(t, ids),
        }
    }

    /// Never fails: unknown ids are skipped, invalid UTF-8 is replaced per bad sequence.
    pub fn decode_lossy(&self, ids: &[u32]) -> String {
        match &self.backend {
            Backend::World(w) => w.decode_lossy(ids),
            Backend::HuggingFace(t) => hf::decode_lossy(t, ids),
        }
    }

    /// Max id + 1 (including added special tokens).
    pub fn vocab_size(&self) -> usize {
        match &self.backend {
            Backend::World(w) => w.vocab_size(),
            Backend::HuggingFace(t) => hf::vocab_size(t),
        }
    }

    /// The id of exactly this token, if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match &self.backend {
            Backend::World(w) => w.token_id(token.as_bytes()),
            Backend::HuggingFace(t) => t.token_to_id(token),
        }
    }

    /// Formats a conversation: with a template, Jinja rendering (variables `messages`,
    /// `add_generation_prompt`, `bos_token`, `eos_token`) with leading newlines stripped; without,
    /// `System: …\n\nUser: …\n\nAssistant: …\n\n` (contents stripped) and `Assistant:` when
    /// `add_generation_prompt`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let Some(template) = &self.chat_template else {
            return Ok(chat::render_builtin(messages, add_generation_prompt));
        };
        let bos = self.role_text(TokenRole::Bos);
        let eos = self.role_text(TokenRole::Eos);
        let opts = RenderOptions {
            bos_token: &bos,
            eos_token: &eos,
            hf_style: matches!(self.backend, Backend::HuggingFace(_)),
        };
        chat::render_template(template, messages, add_generation_prompt, &opts)
    }

    /// [`apply_chat_template`](Self::apply_chat_template) followed by [`encode`](Self::encode).
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        self.encode(&self.apply_chat_template(messages, add_generation_prompt)?)
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    pub fn set_chat_template(&mut self, template: Option<String>) {
        self.chat_template = template;
    }

    /// Adds an atomic special token (see [`WorldTokenizer::add_special_token`]); returns its id.
    /// With a Hugging Face backend a requested id must match the id the tokenizer assigns.
    pub fn add_special_token(
        &mut self,
        token: &str,
        id: Option<u32>,
    ) -> Result<u32, TokenizerError> {
        let id = self.add_special_token_inner(token, id)?;
        self.sync_world_config();
        Ok(id)
    }

    fn add_special_token_inner(
        &mut self,
        token: &str,
        id: Option<u32>,
    ) -> Result<u32, TokenizerError> {
        let err = |message: String| TokenizerError::SpecialToken {
            token: token.to_string(),
            message,
        };
        if token.is_empty() {
            return Err(err("a special token cannot be empty".into()));
        }
        match &mut self.backend {
            Backend::World(w) => {
                if let Some(n) = id.filter(|&n| n > MAX_ID) {
                    return Err(err(format!("id {n} is above the limit {MAX_ID}")));
                }
                Ok(w.add_special_token(token, id))
            }
            Backend::HuggingFace(t) => {
                let id = hf::add_special(t, token, id)?;
                let listed = self
                    .config
                    .additional_special_tokens
                    .iter()
                    .any(|e| e.token() == token);
                if !listed {
                    let entry = AdditionalSpecialToken::Text(token.to_string());
                    self.config.additional_special_tokens.push(entry);
                }
                Ok(id)
            }
        }
    }

    /// Makes `token` the bos/eos/pad/unk token (stored in the config and resolved to an id).
    pub fn set_role_token(&mut self, role: TokenRole, token: &str) -> Result<u32, TokenizerError> {
        let id = self
            .role_id_of_text(token)?
            .ok_or_else(|| TokenizerError::SpecialToken {
                token: token.to_string(),
                message: format!("cannot be the {}: it encodes to no ids", role.field()),
            })?;
        *self.role_spec_mut(role) = Some(TokenSpec::Text(token.to_string()));
        *self.role_id_mut(role) = Some(id);
        Ok(id)
    }

    /// Python rwkvtune's `setup_chatml_tokenizer`: adds `<|im_start|>` and `<|im_end|>` (65530 and
    /// 65531 on the built-in vocabulary), makes `<|im_end|>` eos and pad, and sets
    /// [`CHATML_TEMPLATE`].
    pub fn setup_chatml(&mut self) -> Result<(), TokenizerError> {
        self.add_special_token("<|im_start|>", None)?;
        self.add_special_token("<|im_end|>", None)?;
        self.set_role_token(TokenRole::Eos, "<|im_end|>")?;
        self.set_role_token(TokenRole::Pad, "<|im_end|>")?;
        self.chat_template = Some(CHATML_TEMPLATE.to_string());
        Ok(())
    }

    fn role_spec_mut(&mut self, role: TokenRole) -> &mut Option<TokenSpec> {
        match role {
            TokenRole::Bos => &mut self.config.bos_token,
            TokenRole::Eos => &mut self.config.eos_token,
            TokenRole::Pad => &mut self.config.pad_token,
            TokenRole::Unk => &mut self.config.unk_token,
        }
    }

    fn role_id_mut(&mut self, role: TokenRole) -> &mut Option<u32> {
        match role {
            TokenRole::Bos => &mut self.bos_token_id,
            TokenRole::Eos => &mut self.eos_token_id,
            TokenRole::Pad => &mut self.pad_token_id,
            TokenRole::Unk => &mut self.unk_token_id,
        }
    }

    /// Exact token if present, otherwise the first id of its encoding (Python rwkvtune's rule).
    fn role_id_of_text(&self, token: &str) -> Result<Option<u32>, TokenizerError> {
        match &self.backend {
            Backend::World(w) => Ok(w
                .token_id(token.as_bytes())
                .or_else(|| w.encode(token).first().copied())),
            Backend::HuggingFace(t) => hf::role_id(t, token),
        }
    }

    /// Derives the four role ids from the config. World defaults: eos `"\n\n"`, pad 0 (what
    /// rwkvtune pads with; Python's pad-defaults-to-eos is not kept).
    fn resolve_roles(&mut self, config_path: &Path) -> Result<(), TokenizerError> {
        let is_world = matches!(self.backend, Backend::World(_));
        for role in [
            TokenRole::Bos,
            TokenRole::Eos,
            TokenRole::Pad,
            TokenRole::Unk,
        ] {
            let spec = self.role_spec_mut(role).clone();
            let field_err = |message: String| TokenizerError::ConfigField {
                path: config_path.to_path_buf(),
                field: role.field().into(),
                message,
            };
            let id = match (&spec, role) {
                // Ids are checked against the table size only: pad id 0 has no token but is the
                // conventional World padding id.
                (Some(TokenSpec::Id(n)), _) if (*n as usize) < self.vocab_size() => Some(*n),
                (Some(TokenSpec::Id(n)), _) => {
                    let max = self.vocab_size().saturating_sub(1);
                    return Err(field_err(format!(
                        "id {n} is outside the vocabulary 0..={max}"
                    )));
                }
                (Some(spec), _) => {
                    let text = spec.text().unwrap_or_default();
                    let id = self.role_id_of_text(text)?;
                    if id.is_none() {
                        return Err(field_err(format!("{text:?} encodes to no ids")));
                    }
                    id
                }
                (None, TokenRole::Eos) if is_world => self.role_id_of_text("\n\n")?,
                (None, TokenRole::Pad) if is_world => Some(0),
                (None, _) => None,
            };
            *self.role_id_mut(role) = id;
        }
        Ok(())
    }

    /// The string a template sees as `bos_token`/`eos_token` ("" when there is none).
    fn role_text(&self, role: TokenRole) -> String {
        let spec = match role {
            TokenRole::Bos => &self.config.bos_token,
            TokenRole::Eos => &self.config.eos_token,
            TokenRole::Pad => &self.config.pad_token,
            TokenRole::Unk => &self.config.unk_token,
        };
        match spec {
            Some(TokenSpec::Id(id)) => self.decode_lossy(&[*id]),
            Some(spec) => spec.text().unwrap_or_default().to_string(),
            None if role == TokenRole::Eos && matches!(self.backend, Backend::World(_)) => {
                "\n\n".to_string()
            }
            None => String::new(),
        }
    }

    fn sync_world_config(&mut self) {
        if let Backend::World(w) = &self.backend {
            fill_world_specials(&mut self.config, w);
        }
    }
}

/// rwkvtune's format (§9.3): `[{"token", "id"}, …]` plus the parallel `…_ids` list.
fn fill_world_specials(config: &mut TokenizerConfig, world: &WorldTokenizer) {
    config.additional_special_tokens = world
        .added_tokens()
        .iter()
        .map(|(token, id)| {
            AdditionalSpecialToken::Entry(SpecialTokenEntry {
                token: token.clone(),
                id: Some(*id),
                ids: None,
            })
        })
        .collect();
    config.additional_special_tokens_ids = world.added_tokens().iter().map(|(_, id)| *id).collect();
}

/// `vocab.txt`, then the config's `vocab_file` (a bare file name only, so a config cannot point
/// outside the directory), then the Python package's file name.
fn find_vocab(dir: &Path, config: Option<&TokenizerConfig>) -> Option<PathBuf> {
    let named = config
        .and_then(|c| c.vocab_file.as_deref())
        .filter(|name| Path::new(name).file_name() == Some(std::ffi::OsStr::new(name)));
    [Some(VOCAB_FILE), named, Some(BUILTIN_VOCAB_NAME)]
        .into_iter()
        .flatten()
        .map(|name| dir.join(name))
        .find(|path| path.is_file())
}

fn read_optional(path: &Path) -> Result<Option<String>, TokenizerError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TokenizerError::io(path, e)),
    }
}

fn remove_if_present(path: &Path) -> Result<(), TokenizerError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TokenizerError::io(path, e)),
    }
}

/// Write to a unique temporary file in the same directory, then rename over `path`, so readers
/// never see a half-written file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TokenizerError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp-{}-{unique}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        TokenizerError::io(path, e)
    })
}
