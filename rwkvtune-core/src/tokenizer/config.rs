//! `tokenizer_config.json`: the schema written by Python rwkvtune (spec §9.3) plus what Hugging Face
//! hubs put there, parsed field by field so that an error names the offending field.
//!
//! Unknown keys are kept in [`TokenizerConfig::extra`] and written back, so loading and saving a
//! hub does not lose settings that only other tools understand.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::TokenizerError;

/// The contents of `tokenizer_config.json`. Absent keys and JSON `null` read as the defaults
/// (`None` / empty); `None` and empty fields are omitted when written.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenizerConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenizer_class: Option<String>,
    /// Hugging Face writes 1e30 for "no limit"; that saturates to `u64::MAX`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "deserialize_max_length"
    )]
    pub model_max_length: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bos_token: Option<TokenSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eos_token: Option<TokenSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pad_token: Option<TokenSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unk_token: Option<TokenSpec>,
    /// Stored and written back; like Python rwkvtune, encoding does not apply it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub add_bos_token: Option<bool>,
    /// Stored and written back; like Python rwkvtune, encoding does not apply it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub add_eos_token: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clean_up_tokenization_spaces: Option<bool>,
    /// Base name of the vocabulary file (World tokenizers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vocab_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<ChatTemplateField>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub additional_special_tokens: Vec<AdditionalSpecialToken>,
    /// Ids paired by position with string entries of `additional_special_tokens`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub additional_special_tokens_ids: Vec<u32>,
    /// Every other key, kept for the round trip.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A role token (`bos_token`, `eos_token`, ...): a string, an id, or a Hugging Face `AddedToken`
/// object (`{"content": "</s>", "lstrip": false, ...}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenSpec {
    Text(String),
    Id(u32),
    Added(AddedTokenSpec),
}

/// Hugging Face's serialised `AddedToken`; only `content` matters here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AddedTokenSpec {
    pub content: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl TokenSpec {
    /// The token string, unless the spec is a bare id.
    pub fn text(&self) -> Option<&str> {
        match self {
            TokenSpec::Text(s) => Some(s),
            TokenSpec::Added(a) => Some(&a.content),
            TokenSpec::Id(_) => None,
        }
    }
}

/// One entry of `additional_special_tokens`, in any of the formats in circulation: a plain string
/// (paired with `additional_special_tokens_ids` when present), rwkvtune's `{"token", "id"}` (or the
/// legacy `{"token", "ids": [...]}`), or a Hugging Face `AddedToken` object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AdditionalSpecialToken {
    Text(String),
    Entry(SpecialTokenEntry),
    Added(AddedTokenSpec),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpecialTokenEntry {
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    /// Legacy format: the ids the token stood for; several ids mean it was never atomic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<u32>>,
}

impl AdditionalSpecialToken {
    pub fn token(&self) -> &str {
        match self {
            AdditionalSpecialToken::Text(s) => s,
            AdditionalSpecialToken::Entry(e) => &e.token,
            AdditionalSpecialToken::Added(a) => &a.content,
        }
    }
}

/// `chat_template` is a string, or (newer Hugging Face hubs) a list of named templates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ChatTemplateField {
    Single(String),
    Named(Vec<NamedChatTemplate>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamedChatTemplate {
    pub name: String,
    pub template: String,
}

impl ChatTemplateField {
    /// The template to use: the string itself, or the one named "default", else the first.
    pub fn default_template(&self) -> Option<&str> {
        match self {
            ChatTemplateField::Single(s) => Some(s),
            ChatTemplateField::Named(list) => list
                .iter()
                .find(|t| t.name == "default")
                .or_else(|| list.first())
                .map(|t| t.template.as_str()),
        }
    }
}

fn deserialize_max_length<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    max_length_from_value(v.as_ref()).map_err(serde::de::Error::custom)
}

fn max_length_from_value(v: Option<&Value>) -> Result<Option<u64>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => Ok(Some(u)),
            // `as` saturates, which is the intent for Hugging Face's "infinite" 1e30.
            (None, Some(f)) if f >= 0.0 && !f.is_nan() => Ok(Some(f as u64)),
            _ => Err(format!("expected a non-negative number, found {n}")),
        },
        Some(other) => Err(format!("expected a non-negative number, found {other}")),
    }
}

impl TokenizerConfig {
    /// The configuration Python rwkvtune writes for the World tokenizer (spec §9.2/§9.3).
    pub fn world_default() -> Self {
        TokenizerConfig {
            tokenizer_class: Some("RWKV_TOKENIZER".into()),
            model_max_length: Some(4096),
            eos_token: Some(TokenSpec::Text("\n\n".into())),
            add_bos_token: Some(false),
            add_eos_token: Some(false),
            clean_up_tokenization_spaces: Some(false),
            ..Default::default()
        }
    }

    /// Reads and parses a `tokenizer_config.json`.
    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let text = std::fs::read_to_string(path).map_err(|e| TokenizerError::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses `tokenizer_config.json` text; `path` names the file in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, TokenizerError> {
        let json_err = |message: String| TokenizerError::ConfigJson {
            path: path.to_path_buf(),
            message,
        };
        let value: Value =
            serde_json::from_str(text).map_err(|e| json_err(format!("not valid JSON: {e}")))?;
        let Value::Object(mut map) = value else {
            return Err(json_err("expected a JSON object at the top level".into()));
        };
        let field_err = |field: &str, message: String| TokenizerError::ConfigField {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };
        // Field by field rather than one derive so the error can name the field.
        fn take<T: DeserializeOwned + Default>(
            map: &mut Map<String, Value>,
            key: &str,
            err: &dyn Fn(&str, String) -> TokenizerError,
        ) -> Result<T, TokenizerError> {
            match map.remove(key) {
                None | Some(Value::Null) => Ok(T::default()),
                Some(v) => serde_json::from_value(v).map_err(|e| err(key, e.to_string())),
            }
        }
        let model_max_length = max_length_from_value(map.remove("model_max_length").as_ref())
            .map_err(|m| field_err("model_max_length", m))?;
        let config = TokenizerConfig {
            tokenizer_class: take(&mut map, "tokenizer_class", &field_err)?,
            model_max_length,
            bos_token: take(&mut map, "bos_token", &field_err)?,
            eos_token: take(&mut map, "eos_token", &field_err)?,
            pad_token: take(&mut map, "pad_token", &field_err)?,
            unk_token: take(&mut map, "unk_token", &field_err)?,
            add_bos_token: take(&mut map, "add_bos_token", &field_err)?,
            add_eos_token: take(&mut map, "add_eos_token", &field_err)?,
            clean_up_tokenization_spaces: take(
                &mut map,
                "clean_up_tokenization_spaces",
                &field_err,
            )?,
            vocab_file: take(&mut map, "vocab_file", &field_err)?,
            chat_template: take(&mut map, "chat_template", &field_err)?,
            additional_special_tokens: take(&mut map, "additional_special_tokens", &field_err)?,
            additional_special_tokens_ids: take(
                &mut map,
                "additional_special_tokens_ids",
                &field_err,
            )?,
            extra: map,
        };
        let n_text = config
            .additional_special_tokens
            .iter()
            .filter(|t| matches!(t, AdditionalSpecialToken::Text(_)))
            .count();
        let n_ids = config.additional_special_tokens_ids.len();
        if n_ids > 0 && n_ids != n_text && n_ids != config.additional_special_tokens.len() {
            return Err(field_err(
                "additional_special_tokens_ids",
                format!(
                    "has {n_ids} ids but additional_special_tokens has {n_text} plain string \
                     entries; the lists are paired by position"
                ),
            ));
        }
        Ok(config)
    }

    /// Pretty JSON (2-space indent) with a final newline, as written to disk.
    pub fn to_json_string(&self) -> String {
        // Serialising plain data structures into a String cannot fail.
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// The effective chat template stored in the config, if any.
    pub fn chat_template_str(&self) -> Option<&str> {
        self.chat_template
            .as_ref()
            .and_then(|t| t.default_template())
    }

    /// The additional special tokens as (token, requested id) pairs, in order. Strings take their
    /// id from `additional_special_tokens_ids` by position; a legacy entry with several ids is not
    /// an atomic token and is left out.
    pub(super) fn special_token_requests(&self) -> Vec<(String, Option<u32>)> {
        let ids = &self.additional_special_tokens_ids;
        // rwkvtune writes `ids` for every entry of a {token,id} list; pair by position then too.
        let all_positional = ids.len() == self.additional_special_tokens.len();
        let mut text_index = 0;
        let mut out = Vec::new();
        for (k, entry) in self.additional_special_tokens.iter().enumerate() {
            let requested = match entry {
                AdditionalSpecialToken::Text(_) => {
                    let pos = if all_positional { k } else { text_index };
                    text_index += 1;
                    ids.get(pos).copied()
                }
                AdditionalSpecialToken::Entry(e) => match (&e.id, &e.ids) {
                    (Some(id), _) => Some(*id),
                    (None, Some(list)) if list.len() == 1 => Some(list[0]),
                    (None, Some(list)) if list.len() > 1 => continue,
                    _ => None,
                },
                AdditionalSpecialToken::Added(_) => None,
            };
            out.push((entry.token().to_string(), requested));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TokenizerConfig, TokenizerError> {
        TokenizerConfig::from_json_str(text, Path::new("tokenizer_config.json"))
    }

    #[test]
    fn both_special_token_formats_are_read() {
        let c = parse(
            r#"{"additional_special_tokens": [{"token": "<a>", "id": 70000}, {"token": "<b>"},
                {"token": "<c>", "ids": [5]}, {"token": "<d>", "ids": [5, 6]}]}"#,
        )
        .unwrap();
        let want = vec![
            ("<a>".to_string(), Some(70000)),
            ("<b>".to_string(), None),
            ("<c>".to_string(), Some(5)),
        ];
        assert_eq!(c.special_token_requests(), want);
        let c = parse(
            r#"{"additional_special_tokens": ["<a>", {"content": "<b>", "lstrip": false}],
                "additional_special_tokens_ids": [7]}"#,
        )
        .unwrap();
        let want = vec![("<a>".to_string(), Some(7)), ("<b>".to_string(), None)];
        assert_eq!(c.special_token_requests(), want);
        // The AddedToken object survives a round trip unchanged.
        let back: Value = serde_json::from_str(&c.to_json_string()).unwrap();
        assert_eq!(
            back["additional_special_tokens"][1]["lstrip"],
            Value::Bool(false)
        );
    }

    #[test]
    fn fields_and_unknown_keys_round_trip() {
        let text = r#"{"tokenizer_class": "X", "model_max_length": 1e30, "eos_token": "\n\n",
            "bos_token": {"content": "<s>", "special": true}, "pad_token": 0, "unk_token": null,
            "chat_template": [{"name": "tool", "template": "T"}, {"name": "default", "template": "D"}],
            "custom_key": {"nested": [1, 2]}}"#;
        let c = parse(text).unwrap();
        assert_eq!(c.model_max_length, Some(u64::MAX));
        assert_eq!(c.eos_token.as_ref().and_then(TokenSpec::text), Some("\n\n"));
        assert_eq!(c.bos_token.as_ref().and_then(TokenSpec::text), Some("<s>"));
        assert_eq!(c.pad_token, Some(TokenSpec::Id(0)));
        assert_eq!(c.chat_template_str(), Some("D"));
        let again = parse(&c.to_json_string()).unwrap();
        assert_eq!(again, c);
        assert!(c.to_json_string().contains("\"custom_key\""));
        assert!(!c.to_json_string().contains("unk_token"));
    }

    #[test]
    fn bad_fields_are_named() {
        let e = parse(r#"{"add_bos_token": "yes"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("tokenizer_config.json: field `add_bos_token`:"),
            "{e}"
        );
        let e = parse(r#"{"model_max_length": -1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("field `model_max_length`"), "{e}");
        let e = parse(
            r#"{"additional_special_tokens": ["<a>"], "additional_special_tokens_ids": [1, 2]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("field `additional_special_tokens_ids`"), "{e}");
        let e = parse("[1]").unwrap_err().to_string();
        assert!(e.contains("expected a JSON object"), "{e}");
        let e = parse("{").unwrap_err().to_string();
        assert!(
            e.starts_with("tokenizer_config.json: not valid JSON"),
            "{e}"
        );
    }
}
