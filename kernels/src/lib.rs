//! The RWKV-7 `wkv7` recurrence as a libtorch autograd op.
//!
//! `S_t = S_{t-1} (diag(w_t) + a_t b_tᵀ) + v_t k_tᵀ`, `y_t = S_t r_t`, per batch element and head,
//! with the state `S` ∈ ℝ^{N×N} (row = value channel, column = key channel). The op lives in
//! `csrc/wkv7.cpp` as a C++ `torch::autograd::Function` (tch has no custom autograd functions), so
//! `backward()` from Rust reaches every input, the initial state included.
//!
//! Numerics: the recurrence accumulates in fp32 (fp64 when the inputs are fp64) whatever the input
//! dtype; the returned state is always in that accumulation dtype, never bf16/fp16.

use std::ffi::{c_char, CStr};
use tch::Tensor;
use torch_sys::C_tensor;

/// A failure inside a C++ op, with libtorch's message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KernelError(pub String);

extern "C" {
    fn rwkvtune_wkv7(
        r: *const C_tensor,
        w: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        a: *const C_tensor,
        b: *const C_tensor,
        s0: *const C_tensor,
        y_out: *mut *mut C_tensor,
        s_out: *mut *mut C_tensor,
    ) -> i32;
    fn rwkvtune_last_error() -> *const c_char;
}

fn last_error() -> KernelError {
    // SAFETY: the shim returns a pointer to a thread-local std::string that lives as long as the thread.
    let msg = unsafe { CStr::from_ptr(rwkvtune_last_error()) };
    KernelError(msg.to_string_lossy().into_owned())
}

/// Runs the recurrence over `T` steps.
///
/// `r, w, k, v, a, b`: `[B, T, H, N]`, any float dtype; `w` is the per-step decay in (0, 1).
/// `s0`: `[B, H, N, N]` initial state. Returns `y` `[B, T, H, N]` in `r`'s dtype and the final
/// state `[B, H, N, N]` in fp32 (fp64 for fp64 inputs). Records an autograd node when grad mode
/// is on and any input requires grad; gradients reach all seven inputs.
pub fn wkv7(
    r: &Tensor,
    w: &Tensor,
    k: &Tensor,
    v: &Tensor,
    a: &Tensor,
    b: &Tensor,
    s0: &Tensor,
) -> Result<(Tensor, Tensor), KernelError> {
    let mut y: *mut C_tensor = std::ptr::null_mut();
    let mut s: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: all pointers are live tch tensors; on success the shim hands us two new heap
    // tensors whose ownership moves into tch (which deletes them on drop).
    let rc = unsafe {
        rwkvtune_wkv7(
            r.as_ptr(),
            w.as_ptr(),
            k.as_ptr(),
            v.as_ptr(),
            a.as_ptr(),
            b.as_ptr(),
            s0.as_ptr(),
            &mut y,
            &mut s,
        )
    };
    if rc != 0 {
        return Err(last_error());
    }
    // SAFETY: see above.
    Ok(unsafe { (Tensor::from_ptr(y), Tensor::from_ptr(s)) })
}
