//! Conversion between [`RawTensor`] (file bytes) and `tch::Tensor`.

use super::raw::{Dtype, RawTensor};
use crate::error::{Error, Result};
use tch::{Device, Kind, Tensor};

fn kind_of(d: Dtype) -> Kind {
    match d {
        Dtype::Bool => Kind::Bool,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I16 => Kind::Int16,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
    }
}

fn dtype_of(k: Kind) -> Result<Dtype> {
    Ok(match k {
        Kind::Bool => Dtype::Bool,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Int16 => Dtype::I16,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        other => {
            return Err(Error::InvalidArgument(format!(
                "cannot store tensors of dtype {other:?}"
            )))
        }
    })
}

pub(crate) fn to_tch(r: &RawTensor) -> Result<Tensor> {
    let shape: Vec<i64> = r.shape.iter().map(|&d| d as i64).collect();
    // Host is little-endian (x86-64, aarch64), as are the files.
    Ok(Tensor::f_from_data_size(&r.data, &shape, kind_of(r.dtype))?)
}

pub(crate) fn from_tch(t: &Tensor) -> Result<RawTensor> {
    let dtype = dtype_of(t.kind())?;
    let t = t.detach().to_device(Device::Cpu).contiguous();
    let numel = t.numel();
    let mut data = vec![0u8; numel * dtype.size()];
    if numel > 0 {
        t.f_copy_data_u8(&mut data, numel)?;
    }
    Ok(RawTensor {
        dtype,
        shape: t.size().iter().map(|&d| d as usize).collect(),
        data,
    })
}
