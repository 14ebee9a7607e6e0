//! From a record to an [`Example`]: tokenization, masking, shifting, validation and truncation.
//!
//! Every format is first turned into a token sequence `tokens` with a per-token "trained" flag;
//! the example is then the usual next-token pair `input_ids = tokens[..n-1]`,
//! `labels[t] = tokens[t+1]` if token t+1 is trained, else -100. Pre-tokenized `input_ids` +
//! `labels` skip that step and are taken as they are (already shifted).

use serde::{Deserialize, Serialize};

use super::error::{DataError, RowRef};
use super::source::{RawRow, Turns};
use super::DataOptions;
use crate::tokenizer::{AutoTokenizer, ChatMessage};

/// Labels with this value are not trained (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// One training sequence. `labels[t]` is the target of the logits at position t (already
/// shifted), or [`IGNORE_INDEX`]. Both vectors have the same length, at least 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
}

impl Example {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Number of positions whose label is trained.
    pub fn trained_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// What the tokenizing step needs besides the record.
pub(crate) struct Builder<'a> {
    pub tok: &'a AutoTokenizer,
    pub vocab_size: usize,
    pub opts: &'a DataOptions,
}

impl Builder<'_> {
    /// Builds the full-length example (no truncation: packing needs the whole sequence).
    pub fn build(&self, row: RawRow, at: &RowRef) -> Result<Example, DataError> {
        let ex = match row {
            RawRow::Tokens { input_ids, labels } => self.tokens(input_ids, labels, at)?,
            RawRow::Text(text) => {
                let mut tokens = self.encode(&text, at)?;
                self.push_eos(&mut tokens, "text", at)?;
                let trained = vec![true; tokens.len()];
                self.shift(tokens, &trained, at)?
            }
            RawRow::PromptCompletion { prompt, completion } => {
                self.prompt_completion(prompt, completion, at)?
            }
            RawRow::Messages(messages) => self.chat(&messages, 0, at)?,
        };
        if ex.is_empty() || ex.trained_tokens() == 0 {
            let reason = if ex.is_empty() {
                "the sequence has fewer than 2 tokens".to_string()
            } else {
                "every label is -100".to_string()
            };
            return Err(DataError::NoTrainableTokens {
                at: at.clone(),
                reason,
            });
        }
        Ok(ex)
    }

    /// Pre-tokenized data: checked against the vocabulary; shifted here when `labels` is absent.
    fn tokens(
        &self,
        input_ids: Vec<i64>,
        labels: Option<Vec<i64>>,
        at: &RowRef,
    ) -> Result<Example, DataError> {
        let ids = self.check_ids(&input_ids, "input_ids", at)?;
        let Some(labels) = labels else {
            let trained = vec![true; ids.len()];
            return self.shift(ids, &trained, at);
        };
        if labels.len() != ids.len() {
            return Err(DataError::LengthMismatch {
                at: at.clone(),
                labels: labels.len(),
                input_ids: ids.len(),
            });
        }
        if let Some((position, &value)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| l != IGNORE_INDEX && !(0..self.vocab_size as i64).contains(&l))
        {
            return Err(self.out_of_range("labels", position, value, at));
        }
        Ok(Example {
            input_ids: ids,
            labels,
        })
    }

    /// `tokens(prompt) ++ tokens(completion) ++ [eos]`, only the completion (and eos) trained.
    /// The two parts are tokenized separately, as at inference time where the prompt is encoded
    /// alone; conversational parts go through the chat template.
    fn prompt_completion(
        &self,
        prompt: Turns,
        completion: Turns,
        at: &RowRef,
    ) -> Result<Example, DataError> {
        match (prompt, completion) {
            (Turns::Text(p), Turns::Text(c)) => {
                let mut tokens = self.encode(&p, at)?;
                let n_prompt = tokens.len();
                tokens.extend(self.encode(&c, at)?);
                self.push_eos(&mut tokens, "completion", at)?;
                let mut trained = vec![true; tokens.len()];
                trained[..n_prompt].fill(false);
                self.shift(tokens, &trained, at)
            }
            (Turns::Messages(mut p), Turns::Messages(c)) => {
                let first = p.len();
                p.extend(c);
                self.chat(&p, first, at)
            }
            _ => Err(DataError::WrongType {
                at: at.clone(),
                column: "completion".into(),
                expected: "the same kind as `prompt` (both strings or both message lists)",
                found: "a mix of a string and a message list".into(),
            }),
        }
    }

    /// Renders the conversation with the chat template; assistant turns from message `first` on
    /// are trained, the rest masked. Each assistant turn is located by rendering the conversation
    /// before it (with the generation prompt) and up to it; the text is tokenized segment by
    /// segment so that no token straddles a trained/masked boundary.
    fn chat(
        &self,
        messages: &[ChatMessage],
        first: usize,
        at: &RowRef,
    ) -> Result<Example, DataError> {
        let render = |msgs: &[ChatMessage], gen: bool| {
            self.tok
                .apply_chat_template(msgs, gen)
                .map_err(|source| DataError::Tokenizer {
                    at: at.clone(),
                    source,
                })
        };
        let full = render(messages, false)?;
        let mut spans = Vec::new(); // byte ranges of `full` that are trained
        let mut done = 0;
        for (i, m) in messages.iter().enumerate().skip(first) {
            if m.role != "assistant" {
                continue;
            }
            let before = render(&messages[..i], true)?;
            let upto = render(&messages[..=i], false)?;
            let ok = upto.starts_with(before.as_str())
                && full.starts_with(upto.as_str())
                && before.len() >= done;
            if !ok {
                return Err(DataError::TemplateNotPrefix {
                    at: at.clone(),
                    turn: i,
                });
            }
            spans.push((before.len(), upto.len()));
            done = upto.len();
        }
        let mut tokens = Vec::new();
        let mut trained = Vec::new();
        let mut pos = 0;
        let mut push = |text: &str, train: bool| -> Result<(), DataError> {
            let ids = self.encode(text, at)?;
            trained.resize(trained.len() + ids.len(), train);
            tokens.extend(ids);
            Ok(())
        };
        for &(start, end) in &spans {
            push(&full[pos..start], false)?;
            push(&full[start..end], true)?;
            pos = end;
        }
        push(&full[pos..], false)?;
        self.shift(tokens, &trained, at)
    }

    /// Tokens to the pre-shifted pair, after checking them against the model's vocabulary (a
    /// tokenizer can know more ids than the model's embedding has rows).
    fn shift(&self, tokens: Vec<u32>, trained: &[bool], at: &RowRef) -> Result<Example, DataError> {
        if let Some((position, &id)) = tokens
            .iter()
            .enumerate()
            .find(|&(_, &id)| id as usize >= self.vocab_size)
        {
            return Err(self.out_of_range("input_ids", position, id as i64, at));
        }
        let n = tokens.len().saturating_sub(1);
        let labels = (0..n)
            .map(|t| {
                if trained[t + 1] {
                    tokens[t + 1] as i64
                } else {
                    IGNORE_INDEX
                }
            })
            .collect();
        let mut input_ids = tokens;
        input_ids.truncate(n);
        Ok(Example { input_ids, labels })
    }

    fn check_ids(
        &self,
        ids: &[i64],
        column: &'static str,
        at: &RowRef,
    ) -> Result<Vec<u32>, DataError> {
        let mut out = Vec::with_capacity(ids.len());
        for (position, &id) in ids.iter().enumerate() {
            if !(0..self.vocab_size as i64).contains(&id) {
                return Err(self.out_of_range(column, position, id, at));
            }
            out.push(id as u32);
        }
        Ok(out)
    }

    fn out_of_range(
        &self,
        column: &'static str,
        position: usize,
        value: i64,
        at: &RowRef,
    ) -> DataError {
        DataError::IdOutOfRange {
            at: at.clone(),
            column,
            position,
            value,
            vocab_size: self.vocab_size,
        }
    }

    fn encode(&self, text: &str, at: &RowRef) -> Result<Vec<u32>, DataError> {
        self.tok
            .encode(text)
            .map_err(|source| DataError::Tokenizer {
                at: at.clone(),
                source,
            })
    }

    fn push_eos(
        &self,
        tokens: &mut Vec<u32>,
        column: &'static str,
        at: &RowRef,
    ) -> Result<(), DataError> {
        if !self.opts.add_eos {
            return Ok(());
        }
        let eos = self.tok.eos_token_id.ok_or_else(|| DataError::NoEos {
            path: at.path.clone(),
            column,
        })?;
        tokens.push(eos);
        Ok(())
    }
}

/// Cuts an example to its first `max_len` positions. Returns whether anything was cut.
pub(crate) fn truncate(ex: &mut Example, max_len: usize) -> bool {
    if ex.len() <= max_len {
        return false;
    }
    ex.input_ids.truncate(max_len);
    ex.labels.truncate(max_len);
    true
}

/// True when every trained label equals the input at the same position — the signature of
/// labels copied from `input_ids` without shifting (the Hugging Face `transformers` convention).
pub(crate) fn looks_unshifted(ex: &Example) -> bool {
    ex.labels
        .iter()
        .zip(&ex.input_ids)
        .all(|(&l, &i)| l == IGNORE_INDEX || l == i as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::error::RowPos;

    fn at() -> RowRef {
        RowRef {
            path: "t.jsonl".into(),
            pos: RowPos::Line(1),
        }
    }

    fn build(row: RawRow, add_eos: bool) -> Result<Example, DataError> {
        let tok = AutoTokenizer::builtin();
        let opts = DataOptions {
            add_eos,
            ..DataOptions::default()
        };
        let b = Builder {
            tok: &tok,
            vocab_size: 65536,
            opts: &opts,
        };
        b.build(row, &at())
    }

    #[test]
    fn prompt_completion_masks_the_prompt_and_appends_eos() {
        let tok = AutoTokenizer::builtin();
        let p = tok.encode("User: hi\n\nAssistant:").unwrap();
        let c = tok.encode(" hello").unwrap();
        let row = RawRow::PromptCompletion {
            prompt: Turns::Text("User: hi\n\nAssistant:".into()),
            completion: Turns::Text(" hello".into()),
        };
        let ex = build(row, true).unwrap();
        let mut tokens = p.clone();
        tokens.extend(&c);
        tokens.push(261);
        assert_eq!(ex.input_ids, tokens[..tokens.len() - 1]);
        // Position p.len()-1 (last prompt token) predicts the first completion token.
        let mut want = vec![IGNORE_INDEX; p.len() - 1];
        want.extend(c.iter().map(|&x| x as i64));
        want.push(261);
        assert_eq!(ex.labels, want);
    }

    #[test]
    fn chat_trains_only_assistant_turns() {
        let tok = AutoTokenizer::builtin();
        let msgs = vec![
            ChatMessage::new("user", "2+2?"),
            ChatMessage::new("assistant", "4"),
            ChatMessage::new("user", "3+3?"),
            ChatMessage::new("assistant", "6"),
        ];
        let ex = build(RawRow::Messages(msgs), true).unwrap();
        // Decoding the trained targets gives exactly the assistant replies plus their "\n\n".
        let targets: Vec<u32> = ex
            .labels
            .iter()
            .filter(|&&l| l != IGNORE_INDEX)
            .map(|&l| l as u32)
            .collect();
        assert_eq!(tok.decode(&targets).unwrap(), " 4\n\n 6\n\n");
        // Each reply ends in the eos token itself ("\n\n" = 261), so generation stops there.
        assert_eq!(
            targets.iter().filter(|&&t| t == 261).count(),
            2,
            "{targets:?}"
        );
        // The whole sequence is the template rendering.
        let mut all = ex.input_ids.clone();
        all.push(*ex.labels.last().unwrap() as u32);
        let full = tok.apply_chat_template(&[], false).unwrap();
        assert!(full.is_empty());
        assert_eq!(
            tok.decode(&all).unwrap(),
            "User: 2+2?\n\nAssistant: 4\n\nUser: 3+3?\n\nAssistant: 6\n\n"
        );
    }

    #[test]
    fn labels_absent_means_shift_here() {
        let row = RawRow::Tokens {
            input_ids: vec![5, 6, 7],
            labels: None,
        };
        let ex = build(row, true).unwrap();
        assert_eq!(ex.input_ids, vec![5, 6]);
        assert_eq!(ex.labels, vec![6, 7]);
    }

    #[test]
    fn single_token_text_without_eos_has_nothing_to_train() {
        let err = build(RawRow::Text("a".into()), false).unwrap_err();
        assert!(matches!(err, DataError::NoTrainableTokens { .. }), "{err}");
    }

    #[test]
    fn unshifted_detector() {
        let ex = Example {
            input_ids: vec![1, 2, 3],
            labels: vec![1, 2, IGNORE_INDEX],
        };
        assert!(looks_unshifted(&ex));
        let ex = Example {
            input_ids: vec![1, 2, 3],
            labels: vec![2, 3, IGNORE_INDEX],
        };
        assert!(!looks_unshifted(&ex));
    }
}
