//! A deliberately misbehaving post-processor for the host's validation tests. Config
//! `{"mode": "..."}`: identity, upper-texts, bad-shape, bad-ids, bad-mask, wrong-count, trap.

use rwkvtune_wit::{
    export_postprocess, PluginInfo, PostprocessBatch, PostprocessOutput, PostprocessPlugin, Value,
};

struct HostilePostprocess {
    mode: String,
}

impl PostprocessPlugin for HostilePostprocess {
    fn new(config: &Value) -> Result<Self, String> {
        let mode = config
            .get("mode")
            .and_then(Value::as_str)
            .unwrap_or("identity")
            .to_string();
        Ok(HostilePostprocess { mode })
    }

    fn info(&self) -> PluginInfo {
        PluginInfo::new("hostile-postprocess", "0.0.1", "misbehaves on purpose")
    }

    fn process(&mut self, batch: &PostprocessBatch) -> Result<PostprocessOutput, String> {
        let mut tokens = batch.tokens.clone();
        match self.mode.as_str() {
            "identity" => Ok(PostprocessOutput::Tokens(tokens)),
            "upper-texts" => Ok(PostprocessOutput::Texts(
                batch.completions.iter().map(|c| c.to_uppercase()).collect(),
            )),
            "bad-shape" => {
                tokens.cols += 1;
                Ok(PostprocessOutput::Tokens(tokens))
            }
            "bad-ids" => {
                if let Some(first) = tokens.ids.first_mut() {
                    *first = u32::MAX;
                }
                Ok(PostprocessOutput::Tokens(tokens))
            }
            "bad-mask" => {
                if let Some(first) = tokens.mask.first_mut() {
                    *first = 7;
                }
                Ok(PostprocessOutput::Tokens(tokens))
            }
            "wrong-count" => Ok(PostprocessOutput::Texts(vec![String::new()])),
            "trap" => panic!("hostile post-processor panics on purpose"),
            other => Err(format!("unknown mode {other:?}")),
        }
    }
}

export_postprocess!(HostilePostprocess);
