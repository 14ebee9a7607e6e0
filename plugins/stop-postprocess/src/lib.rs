//! Post-processor: cuts each completion right after the first stop string (e.g. `</answer>`) and
//! appends the tokenizer's EOS token, so the policy is trained to stop where the task ends instead
//! of on whatever it generated after. Rows without a stop string are left untouched.
//!
//! Config: `{"stop": ["</answer>"], "include_stop": true, "append_eos": true, "output": "tokens"}`.
//! `output: "texts"` returns the cut texts only (the host re-tokenises; no EOS is added).

use rwkvtune_wit::{
    export_postprocess, get_tokenizer_info, tokenize, PluginInfo, PostprocessBatch,
    PostprocessOutput, PostprocessPlugin, TokenMatrix, Value,
};

struct StopPostprocess {
    stop: Vec<String>,
    include_stop: bool,
    append_eos: bool,
    texts_only: bool,
}

impl PostprocessPlugin for StopPostprocess {
    fn new(config: &Value) -> Result<Self, String> {
        let stop = match config.get("stop") {
            None => vec!["</answer>".to_string()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or("config `stop` must be a list of strings")
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("config `stop` must be a list of strings".into()),
        };
        let flag =
            |key: &str, default: bool| config.get(key).and_then(Value::as_bool).unwrap_or(default);
        let texts_only = match config
            .get("output")
            .and_then(Value::as_str)
            .unwrap_or("tokens")
        {
            "tokens" => false,
            "texts" => true,
            other => {
                return Err(format!(
                    "config `output` must be \"tokens\" or \"texts\", got {other:?}"
                ))
            }
        };
        Ok(StopPostprocess {
            stop,
            include_stop: flag("include_stop", true),
            append_eos: flag("append_eos", true),
            texts_only,
        })
    }

    fn info(&self) -> PluginInfo {
        PluginInfo::new(
            "stop-postprocess",
            env!("CARGO_PKG_VERSION"),
            "truncate at stop strings, append EOS",
        )
    }

    fn process(&mut self, batch: &PostprocessBatch) -> Result<PostprocessOutput, String> {
        let cuts: Vec<Option<String>> = batch.completions.iter().map(|c| self.cut(c)).collect();
        if self.texts_only {
            let texts = cuts
                .into_iter()
                .zip(&batch.completions)
                .map(|(cut, c)| cut.unwrap_or_else(|| c.clone()));
            return Ok(PostprocessOutput::Texts(texts.collect()));
        }
        // Tokenise only the rows that changed, in one host call.
        let changed: Vec<String> = cuts.iter().flatten().cloned().collect();
        let mut encoded = tokenize(&changed)?.into_iter();
        let eos = if self.append_eos {
            get_tokenizer_info().eos_id
        } else {
            None
        };
        let rows: Vec<Vec<u32>> = cuts
            .iter()
            .enumerate()
            .map(|(i, cut)| match cut {
                None => batch.tokens.real_ids(i),
                Some(_) => {
                    let mut ids = encoded.next().unwrap_or_default();
                    ids.extend(eos);
                    ids
                }
            })
            .collect();
        Ok(PostprocessOutput::Tokens(TokenMatrix::from_rows(
            &rows,
            batch.tokens.cols,
        )))
    }
}

impl StopPostprocess {
    /// The text up to (and with `include_stop`, including) the earliest stop string, if any.
    fn cut(&self, text: &str) -> Option<String> {
        let (pos, stop) = self
            .stop
            .iter()
            .filter_map(|s| text.find(s.as_str()).map(|p| (p, s)))
            .min_by_key(|(p, _)| *p)?;
        let end = if self.include_stop {
            pos + stop.len()
        } else {
            pos
        };
        Some(text[..end].to_string())
    }
}

export_postprocess!(StopPostprocess);
