//! Batches: packing, the per-epoch shuffled order, collation into padded `[B, T]` arrays, and
//! the resumable [`Cursor`].
//!
//! Exact resume rests on one property: the order of epoch `e` is a pure function of
//! `(n_examples, seed, e)`. A checkpoint therefore only stores the [`Cursor`] (and the
//! [`Batcher`] to check it against); nothing about RNG state has to be saved.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::error::DataError;
use super::example::{Example, IGNORE_INDEX};

/// Padding id for `input_ids` (the value is irrelevant: its label is ignored).
pub const PAD_ID: i64 = 0;

/// A padded micro-batch, row-major `[batch, seq_len]`, ready for `Tensor::from_slice(..).view()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// `[batch * seq_len]`, padded with [`PAD_ID`].
    pub input_ids: Vec<i64>,
    /// `[batch * seq_len]`, padded with -100.
    pub labels: Vec<i64>,
    pub batch: usize,
    pub seq_len: usize,
    /// Which examples of the dataset the rows are (for logs and bad-step dumps).
    pub example_indices: Vec<usize>,
    /// Unpadded length of each row.
    pub lengths: Vec<usize>,
}

impl Batch {
    /// Positions whose label is trained: the denominator of the token-mean loss.
    pub fn trained_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// Pads the examples at `indices` to a common length: the longest one rounded up to a multiple
/// of `pad_multiple` (so kernels that work in chunks of 16 get whole chunks), but never beyond
/// `max_len` — the examples are already at most `max_len` long.
pub fn collate(
    examples: &[Example],
    indices: &[usize],
    max_len: usize,
    pad_multiple: usize,
) -> Batch {
    let longest = indices
        .iter()
        .map(|&i| examples[i].len())
        .max()
        .unwrap_or(0);
    let m = pad_multiple.max(1);
    let seq_len = longest
        .div_ceil(m)
        .saturating_mul(m)
        .min(max_len.max(longest));
    let n = indices.len() * seq_len;
    let mut input_ids = Vec::with_capacity(n);
    let mut labels = Vec::with_capacity(n);
    let mut lengths = Vec::with_capacity(indices.len());
    for &i in indices {
        let ex = &examples[i];
        input_ids.extend(ex.input_ids.iter().map(|&x| x as i64));
        input_ids.resize(input_ids.len() + seq_len - ex.len(), PAD_ID);
        labels.extend_from_slice(&ex.labels);
        labels.resize(labels.len() + seq_len - ex.len(), IGNORE_INDEX);
        lengths.push(ex.len());
    }
    Batch {
        input_ids,
        labels,
        batch: indices.len(),
        seq_len,
        example_indices: indices.to_vec(),
        lengths,
    }
}

/// Concatenates the examples in order and cuts the stream into pieces of exactly `ctx_len`
/// positions (the last one may be shorter). Because every example is already a shifted
/// (input, label) pair, concatenation keeps each label the target of its own position; the
/// recurrent state simply flows from one document into the next, as in standard pre-training.
/// Pieces without a trained label are dropped; returns the pieces and, for each, the index of the
/// first source example it contains, plus how many pieces were dropped.
pub(crate) fn pack(examples: &[Example], ctx_len: usize) -> (Vec<Example>, Vec<usize>, usize) {
    let mut out = Vec::new();
    let mut origins = Vec::new();
    let mut dropped = 0;
    let mut cur = Example {
        input_ids: Vec::with_capacity(ctx_len),
        labels: Vec::with_capacity(ctx_len),
    };
    let mut cur_origin = 0;
    let mut flush = |cur: &mut Example, origin: usize| {
        let piece = std::mem::replace(
            cur,
            Example {
                input_ids: Vec::with_capacity(ctx_len),
                labels: Vec::with_capacity(ctx_len),
            },
        );
        if piece.trained_tokens() > 0 {
            out.push(piece);
            origins.push(origin);
        } else if !piece.is_empty() {
            dropped += 1;
        }
    };
    for (i, ex) in examples.iter().enumerate() {
        let mut start = 0;
        while start < ex.len() {
            if cur.is_empty() {
                cur_origin = i;
            }
            let take = (ctx_len - cur.len()).min(ex.len() - start);
            cur.input_ids
                .extend_from_slice(&ex.input_ids[start..start + take]);
            cur.labels
                .extend_from_slice(&ex.labels[start..start + take]);
            start += take;
            if cur.len() == ctx_len {
                flush(&mut cur, cur_origin);
            }
        }
    }
    flush(&mut cur, cur_origin);
    (out, origins, dropped)
}

/// Which examples form which micro-batch, epoch after epoch. Plain data, so a checkpoint can
/// store it and a resumed run can check that it is iterating the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batcher {
    pub n_examples: usize,
    pub micro_bsz: usize,
    pub seed: u64,
    /// Reshuffle every epoch (training); `false` keeps dataset order (evaluation).
    pub shuffle: bool,
    /// Drop the last incomplete batch (training: every step sees `micro_bsz` rows).
    pub drop_last: bool,
}

impl Batcher {
    /// Training: shuffled per epoch, incomplete last batch dropped. Fails when no full batch fits.
    pub fn new(n_examples: usize, micro_bsz: usize, seed: u64) -> Result<Batcher, DataError> {
        let b = Batcher {
            n_examples,
            micro_bsz,
            seed,
            shuffle: true,
            drop_last: true,
        };
        b.validate()?;
        Ok(b)
    }

    /// Evaluation: dataset order, every example exactly once.
    pub fn sequential(n_examples: usize, micro_bsz: usize) -> Result<Batcher, DataError> {
        let b = Batcher {
            n_examples,
            micro_bsz,
            seed: 0,
            shuffle: false,
            drop_last: false,
        };
        b.validate()?;
        Ok(b)
    }

    pub fn validate(&self) -> Result<(), DataError> {
        if self.micro_bsz == 0 {
            return Err(DataError::Options("micro_bsz must be at least 1".into()));
        }
        if self.batches_per_epoch() == 0 {
            return Err(DataError::Options(format!(
                "the dataset has {} examples, fewer than micro_bsz {}: no full batch; lower \
                 micro_bsz or add data",
                self.n_examples, self.micro_bsz
            )));
        }
        Ok(())
    }

    pub fn batches_per_epoch(&self) -> usize {
        if self.micro_bsz == 0 {
            return 0;
        }
        if self.drop_last {
            self.n_examples / self.micro_bsz
        } else {
            self.n_examples.div_ceil(self.micro_bsz)
        }
    }

    /// The example order of `epoch`: a permutation that depends only on `(seed, epoch)` and the
    /// number of examples. (`StdRng` is reproducible for a given `rand` version, which is what a
    /// resume of the same binary needs.)
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.n_examples).collect();
        if self.shuffle {
            let mut rng = StdRng::seed_from_u64(mix(self.seed, epoch));
            order.shuffle(&mut rng);
        }
        order
    }

    /// The indices of micro-batch `position` (0-based) within an epoch's `order`.
    pub fn batch_indices<'a>(&self, order: &'a [usize], position: usize) -> &'a [usize] {
        let start = (position * self.micro_bsz).min(order.len());
        let end = (start + self.micro_bsz).min(order.len());
        &order[start..end]
    }
}

/// Where the data stream stands: the next micro-batch to train is number `position` of epoch
/// `epoch`. Saved in checkpoints; a resumed run continues with exactly that batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    pub position: usize,
}

impl Cursor {
    /// Moves past one micro-batch, rolling over into the next epoch after the last batch.
    pub fn advance(&mut self, batcher: &Batcher) {
        self.position += 1;
        if self.position >= batcher.batches_per_epoch() {
            self.epoch += 1;
            self.position = 0;
        }
    }
}

/// Two rounds of splitmix64 so that nearby (seed, epoch) pairs give unrelated streams.
fn mix(seed: u64, epoch: u64) -> u64 {
    fn splitmix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    splitmix(seed ^ splitmix(epoch))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(ids: &[u32], labels: &[i64]) -> Example {
        Example {
            input_ids: ids.to_vec(),
            labels: labels.to_vec(),
        }
    }

    #[test]
    fn collate_pads_to_multiple_but_not_past_max_len() {
        let exs = vec![ex(&[1, 2, 3], &[2, 3, 4]), ex(&[5], &[6])];
        let b = collate(&exs, &[0, 1], 20, 16);
        assert_eq!((b.batch, b.seq_len), (2, 16));
        assert_eq!(&b.input_ids[..4], &[1, 2, 3, 0]);
        assert_eq!(&b.labels[16..18], &[6, -100]);
        assert_eq!(b.lengths, vec![3, 1]);
        assert_eq!(b.trained_tokens(), 4);
        // ctx_len 10 caps the padded length at 10 (not a multiple of 16).
        assert_eq!(collate(&exs, &[0, 1], 10, 16).seq_len, 10);
        assert_eq!(collate(&exs, &[1], 10, 1).seq_len, 1);
    }

    #[test]
    fn pack_cuts_exact_windows_and_keeps_labels_aligned() {
        let exs = vec![
            ex(&[1, 2, 3], &[2, 3, 9]),
            ex(&[4, 5, 6, 7, 8], &[5, 6, 7, 8, 9]),
        ];
        let (packed, origins, dropped) = pack(&exs, 3);
        assert_eq!(packed.len(), 3);
        assert_eq!(packed[1], ex(&[4, 5, 6], &[5, 6, 7]));
        assert_eq!(packed[2], ex(&[7, 8], &[8, 9]));
        assert_eq!(origins, vec![0, 1, 1]);
        assert_eq!(dropped, 0);
        let masked = vec![ex(&[1, 2], &[-100, -100]), ex(&[3], &[4])];
        let (packed, _, dropped) = pack(&masked, 2);
        assert_eq!((packed.len(), dropped), (1, 1));
    }

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let b = Batcher::new(100, 8, 42).unwrap();
        let e0 = b.epoch_order(0);
        assert_eq!(e0, b.epoch_order(0));
        assert_ne!(e0, b.epoch_order(1));
        assert_ne!(e0, Batcher::new(100, 8, 43).unwrap().epoch_order(0));
        let mut sorted = e0.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(b.batches_per_epoch(), 12);
        assert_eq!(b.batch_indices(&e0, 11), &e0[88..96]);
    }

    #[test]
    fn cursor_rolls_over() {
        let b = Batcher::new(5, 2, 0).unwrap();
        let mut c = Cursor::default();
        c.advance(&b);
        assert_eq!(
            c,
            Cursor {
                epoch: 0,
                position: 1
            }
        );
        c.advance(&b);
        assert_eq!(
            c,
            Cursor {
                epoch: 1,
                position: 0
            }
        );
        let s = Batcher::sequential(5, 2).unwrap();
        assert_eq!(s.batches_per_epoch(), 3);
        assert_eq!(s.batch_indices(&s.epoch_order(7), 2), &[4]);
        assert!(Batcher::new(3, 4, 0).is_err());
    }
}
