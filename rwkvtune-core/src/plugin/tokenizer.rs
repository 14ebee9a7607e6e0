//! The tokenizer plugins see through the host imports (and that re-tokenises edited texts).

use crate::tokenizer::AutoTokenizer;

/// The run's tokenizer, as far as plugins are concerned. Implemented for [`AutoTokenizer`];
/// a small trait so tests and other callers can plug in their own.
pub trait PluginTokenizer: Send + Sync {
    fn encode(&self, text: &str) -> Result<Vec<u32>, String>;
    /// Never fails: ids outside the vocabulary are skipped, bad UTF-8 becomes U+FFFD.
    fn decode(&self, ids: &[u32]) -> String;
    fn vocab_size(&self) -> usize;
    fn eos_id(&self) -> Option<u32>;
    fn pad_id(&self) -> Option<u32>;
}

impl PluginTokenizer for AutoTokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        AutoTokenizer::encode(self, text).map_err(|e| e.to_string())
    }

    fn decode(&self, ids: &[u32]) -> String {
        self.decode_lossy(ids)
    }

    fn vocab_size(&self) -> usize {
        AutoTokenizer::vocab_size(self)
    }

    fn eos_id(&self) -> Option<u32> {
        self.eos_token_id
    }

    fn pad_id(&self) -> Option<u32> {
        self.pad_token_id
    }
}
