//! Framework-free tensors as they sit in weight files: a dtype, a shape and little-endian bytes.
//!
//! The `.pth` and safetensors codecs speak only this type, so they do no libtorch work and can be
//! tested on their own; [`super::tensors`] converts to and from `tch::Tensor`.

/// Element types found in checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    I16,
    I32,
    I64,
    F16,
    BF16,
    F32,
    F64,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 => 1,
            Dtype::I16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::F32 => 4,
            Dtype::I64 | Dtype::F64 => 8,
        }
    }
}

/// A dense, contiguous (row-major) tensor in little-endian byte order.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// `numel * dtype.size()` bytes, row-major, little-endian.
    pub data: Vec<u8>,
}

impl RawTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}
