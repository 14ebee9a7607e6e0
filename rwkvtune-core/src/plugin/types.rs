//! The data that crosses the plugin boundary, host side. Mirrors `rwkvtune-wit/wit/plugin.wit`
//! but belongs to no WIT version: native closures and every supported WIT version use these.

use serde_json::Value;

/// What a plugin says about itself: shown in logs, metric names and rollout dumps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub description: String,
}

impl PluginInfo {
    pub fn new(name: &str, version: &str, description: &str) -> Self {
        PluginInfo {
            name: name.to_string(),
            version: version.to_string(),
            description: description.to_string(),
        }
    }
}

/// Row-major [rows, cols] completion ids with a same-shaped 0/1 mask; padding ids are 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenMatrix {
    pub rows: usize,
    pub cols: usize,
    /// [rows * cols]
    pub ids: Vec<u32>,
    /// [rows * cols], 1 = real token
    pub mask: Vec<u8>,
}

impl TokenMatrix {
    /// Packs rows into [rows.len(), cols]: pads with 0 (mask 0), truncates at `cols` (the seed's
    /// contract for rebuilt completions).
    pub fn from_rows(rows: &[Vec<u32>], cols: usize) -> Self {
        let mut ids = vec![0u32; rows.len() * cols];
        let mut mask = vec![0u8; rows.len() * cols];
        for (r, row) in rows.iter().enumerate() {
            let n = row.len().min(cols);
            ids[r * cols..r * cols + n].copy_from_slice(&row[..n]);
            mask[r * cols..r * cols + n].fill(1);
        }
        TokenMatrix {
            rows: rows.len(),
            cols,
            ids,
            mask,
        }
    }

    /// Row `r`'s ids and mask (`cols` each).
    pub fn row(&self, r: usize) -> (&[u32], &[u8]) {
        let span = r * self.cols..(r + 1) * self.cols;
        (&self.ids[span.clone()], &self.mask[span])
    }

    /// The real (mask = 1) ids of row `r`, in order.
    pub fn real_ids(&self, r: usize) -> Vec<u32> {
        let (ids, mask) = self.row(r);
        ids.iter()
            .zip(mask)
            .filter(|(_, m)| **m != 0)
            .map(|(id, _)| *id)
            .collect()
    }

    /// `Err` names the first inconsistency: lengths against rows × cols.
    pub fn check_shape(&self) -> Result<(), String> {
        let want = self
            .rows
            .checked_mul(self.cols)
            .ok_or("rows * cols overflows")?;
        if self.ids.len() != want || self.mask.len() != want {
            return Err(format!(
                "token matrix [{} x {}] needs {want} ids and mask entries, has {} ids and {} mask",
                self.rows,
                self.cols,
                self.ids.len(),
                self.mask.len()
            ));
        }
        Ok(())
    }
}

/// One rollout batch as reward functions and post-processors see it. All lists have N entries
/// (prompts repeated per completion, as in TRL's GRPO); `tokens` has N rows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RolloutBatch {
    pub prompts: Vec<String>,
    pub completions: Vec<String>,
    /// The completion ids, [N, C].
    pub tokens: TokenMatrix,
    /// The dataset row's extra columns, one JSON object (text) per completion.
    pub extras: Vec<String>,
}

impl RolloutBatch {
    /// A batch from texts, extras as JSON values, and completions tokenised by `encode` into
    /// [N, cols] (handy for tests, offline scoring and callers without ids at hand).
    pub fn from_texts(
        prompts: Vec<String>,
        completions: Vec<String>,
        extras: &[Value],
        cols: usize,
        encode: impl Fn(&str) -> Vec<u32>,
    ) -> Self {
        let rows: Vec<Vec<u32>> = completions.iter().map(|c| encode(c)).collect();
        RolloutBatch {
            prompts,
            tokens: TokenMatrix::from_rows(&rows, cols),
            completions,
            extras: extras.iter().map(Value::to_string).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.completions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.completions.is_empty()
    }

    /// Row `i`'s extra columns (`Null` if absent or not JSON).
    pub fn extra(&self, i: usize) -> Value {
        self.extras
            .get(i)
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(Value::Null)
    }

    /// `Err` names the first inconsistency between the lists and the matrix.
    pub fn check(&self) -> Result<(), String> {
        let n = self.completions.len();
        for (what, len) in [
            ("prompts", self.prompts.len()),
            ("extras", self.extras.len()),
            ("token rows", self.tokens.rows),
        ] {
            if len != n {
                return Err(format!("{n} completions but {len} {what}"));
            }
        }
        self.tokens.check_shape()
    }
}

/// One sample's reward after validation and the failure policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RewardValue {
    Value(f32),
    /// The function does not apply to this sample (TRL's `None`): left out of its weighted sum.
    NotApplicable,
    /// The function failed on this sample under `on_error = skip`: the sample gets no advantage.
    Failed,
}

impl From<Option<f32>> for RewardValue {
    fn from(v: Option<f32>) -> Self {
        v.map_or(RewardValue::NotApplicable, RewardValue::Value)
    }
}

/// What a post-processor returns before the host normalises it.
#[derive(Clone, Debug, PartialEq)]
pub enum Edit {
    /// N texts: re-tokenised into the input's [N, C] (pad 0, truncate).
    Texts(Vec<String>),
    /// Ids and mask with exactly the input's shape; texts are decoded from the masked ids.
    Tokens(TokenMatrix),
}

/// A post-processed batch: texts and [N, C] ids/mask that agree with each other.
#[derive(Clone, Debug, PartialEq)]
pub struct Processed {
    pub completions: Vec<String>,
    pub tokens: TokenMatrix,
}
