//! safetensors files through the `safetensors` crate.

use super::raw::{Dtype, RawTensor};
use super::write_atomic;
use crate::error::{Error, Result};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, View};
use std::borrow::Cow;
use std::path::Path;

fn from_st(d: StDtype, path: &Path, name: &str) -> Result<Dtype> {
    Ok(match d {
        StDtype::BOOL => Dtype::Bool,
        StDtype::U8 => Dtype::U8,
        StDtype::I8 => Dtype::I8,
        StDtype::I16 => Dtype::I16,
        StDtype::I32 => Dtype::I32,
        StDtype::I64 => Dtype::I64,
        StDtype::F16 => Dtype::F16,
        StDtype::BF16 => Dtype::BF16,
        StDtype::F32 => Dtype::F32,
        StDtype::F64 => Dtype::F64,
        other => {
            return Err(Error::Safetensors {
                path: path.into(),
                msg: format!("tensor `{name}` has unsupported dtype {other:?}"),
            })
        }
    })
}

fn to_st(d: Dtype) -> StDtype {
    match d {
        Dtype::Bool => StDtype::BOOL,
        Dtype::U8 => StDtype::U8,
        Dtype::I8 => StDtype::I8,
        Dtype::I16 => StDtype::I16,
        Dtype::I32 => StDtype::I32,
        Dtype::I64 => StDtype::I64,
        Dtype::F16 => StDtype::F16,
        Dtype::BF16 => StDtype::BF16,
        Dtype::F32 => StDtype::F32,
        Dtype::F64 => StDtype::F64,
    }
}

/// Reads every tensor, in file (offset) order.
pub(crate) fn read(path: &Path) -> Result<Vec<(String, RawTensor)>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    read_bytes(&bytes, path)
}

pub(crate) fn read_bytes(bytes: &[u8], path: &Path) -> Result<Vec<(String, RawTensor)>> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Safetensors {
        path: path.into(),
        msg: format!("{e} (truncated or corrupt file?)"),
    })?;
    let mut views = st.tensors();
    views.sort_by_key(|(_, v)| v.data().as_ptr() as usize);
    views
        .into_iter()
        .map(|(name, v)| {
            let dtype = from_st(v.dtype(), path, &name)?;
            let t = RawTensor {
                dtype,
                shape: v.shape().to_vec(),
                data: v.data().to_vec(),
            };
            Ok((name, t))
        })
        .collect()
}

struct RawView<'a>(&'a RawTensor);

impl View for RawView<'_> {
    fn dtype(&self) -> StDtype {
        to_st(self.0.dtype)
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.0.data)
    }
    fn data_len(&self) -> usize {
        self.0.data.len()
    }
}

/// Writes tensors atomically, with `{"format": "pt"}` metadata like PyTorch's safetensors export.
pub(crate) fn write(path: &Path, tensors: &[(String, RawTensor)]) -> Result<()> {
    let meta = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    let bytes =
        safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), RawView(t))), &meta)
            .map_err(|e| Error::Safetensors {
                path: path.into(),
                msg: e.to_string(),
            })?;
    write_atomic(path, &bytes)
}
