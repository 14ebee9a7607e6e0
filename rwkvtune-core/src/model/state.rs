//! The recurrent state carried between chunks of a sequence (inference and chunked BPTT).

use super::ModelDims;
use crate::error::{Error, Result};
use tch::{Device, Kind, Tensor};

/// One layer's state, in the order the official package keeps it (`state[3i..3i+2]`).
#[derive(Debug)]
pub struct LayerState {
    /// [B, C] fp32: LN1 output of the last token (time-mix token shift).
    pub att_x: Tensor,
    /// [B, H, N, N] fp32: WKV state, `[h][i][j]` with i = value channel, j = key channel.
    pub att_kv: Tensor,
    /// [B, C] fp32: LN2 output of the last token (channel-mix token shift).
    pub ffn_x: Tensor,
}

/// The whole model's state; every tensor is fp32 whatever the model dtype.
#[derive(Debug)]
pub struct State {
    pub layers: Vec<LayerState>,
}

impl State {
    /// The state of a fresh sequence.
    pub fn zeros(dims: &ModelDims, batch: i64, device: Device) -> State {
        let (c, h, n) = (
            dims.n_embd as i64,
            dims.n_head as i64,
            dims.head_size as i64,
        );
        let opts = (Kind::Float, device);
        State {
            layers: (0..dims.n_layer)
                .map(|_| LayerState {
                    att_x: Tensor::zeros([batch, c], opts),
                    att_kv: Tensor::zeros([batch, h, n, n], opts),
                    ffn_x: Tensor::zeros([batch, c], opts),
                })
                .collect(),
        }
    }

    pub fn batch_size(&self) -> i64 {
        self.layers.first().map_or(0, |l| l.att_x.size()[0])
    }

    /// Cuts the autograd history (truncated BPTT) while keeping the values.
    pub fn detach(&self) -> State {
        self.map(|t| t.detach())
    }

    /// Rows `idx` of every tensor, e.g. to fan one prompt state out to several completions.
    pub fn index_select(&self, idx: &Tensor) -> State {
        self.map(|t| t.index_select(0, idx))
    }

    /// Concatenates states along the batch dimension.
    pub fn cat(states: &[&State]) -> State {
        let n_layer = states.first().map_or(0, |s| s.layers.len());
        let pick = |f: &dyn Fn(&LayerState) -> &Tensor, i: usize| {
            Tensor::cat(
                &states.iter().map(|s| f(&s.layers[i])).collect::<Vec<_>>(),
                0,
            )
        };
        State {
            layers: (0..n_layer)
                .map(|i| LayerState {
                    att_x: pick(&|l| &l.att_x, i),
                    att_kv: pick(&|l| &l.att_kv, i),
                    ffn_x: pick(&|l| &l.ffn_x, i),
                })
                .collect(),
        }
    }

    fn map(&self, f: impl Fn(&Tensor) -> Tensor) -> State {
        State {
            layers: self
                .layers
                .iter()
                .map(|l| LayerState {
                    att_x: f(&l.att_x),
                    att_kv: f(&l.att_kv),
                    ffn_x: f(&l.ffn_x),
                })
                .collect(),
        }
    }

    /// Shape and dtype check against the model, so a mismatched state fails with a message
    /// instead of a libtorch shape error deep inside a block.
    pub fn check(&self, batch: i64, dims: &ModelDims) -> Result<()> {
        let (c, h, n) = (
            dims.n_embd as i64,
            dims.n_head as i64,
            dims.head_size as i64,
        );
        if self.layers.len() != dims.n_layer {
            return Err(Error::InvalidArgument(format!(
                "state has {} layers, model has {}",
                self.layers.len(),
                dims.n_layer
            )));
        }
        for (i, l) in self.layers.iter().enumerate() {
            let want: [(&str, &Tensor, Vec<i64>); 3] = [
                ("att_x", &l.att_x, vec![batch, c]),
                ("att_kv", &l.att_kv, vec![batch, h, n, n]),
                ("ffn_x", &l.ffn_x, vec![batch, c]),
            ];
            for (name, t, shape) in want {
                if t.size() != shape {
                    return Err(Error::InvalidArgument(format!(
                        "state layer {i} {name} has shape {:?}, expected {shape:?}",
                        t.size()
                    )));
                }
            }
            if l.att_kv.kind() != Kind::Float && l.att_kv.kind() != Kind::Double {
                return Err(Error::InvalidArgument(format!(
                    "state layer {i} att_kv must be fp32, got {:?}",
                    l.att_kv.kind()
                )));
            }
        }
        Ok(())
    }
}
