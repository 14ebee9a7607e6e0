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

// ---- activation checkpointing ------------------------------------------------------------------

type CallFn = unsafe extern "C" fn(
    *mut c_void,
    *const *mut C_tensor,
    i64,
    *mut *mut C_tensor,
    i64,
    *mut i64,
) -> i32;
type DropFn = unsafe extern "C" fn(*mut c_void);

extern "C" {
    fn rwkvtune_checkpoint(
        call: CallFn,
        drop: DropFn,
        user: *mut c_void,
        inputs: *const *const C_tensor,
        n_in: i64,
        outputs: *mut *mut C_tensor,
        max_out: i64,
        n_out: *mut i64,
    ) -> i32;
    fn rwkvtune_set_error(msg: *const c_char);
}

use std::ffi::c_void;

/// Most outputs a checkpointed function may return.
const MAX_OUTPUTS: usize = 64;

unsafe extern "C" fn call_trampoline<F>(
    user: *mut c_void,
    inputs: *const *mut C_tensor,
    n_in: i64,
    outputs: *mut *mut C_tensor,
    max_out: i64,
    n_out: *mut i64,
) -> i32
where
    F: Fn(&[Tensor]) -> Result<Vec<Tensor>, String>,
{
    let f = &*(user as *const F);
    let ins: Vec<Tensor> = (0..n_in as usize)
        .map(|i| Tensor::clone_from_ptr(*inputs.add(i)))
        .collect();
    let fail = |msg: String| {
        let c = std::ffi::CString::new(msg.replace('\0', " ")).unwrap_or_default();
        rwkvtune_set_error(c.as_ptr());
        -1
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&ins))) {
        Ok(Ok(outs)) if outs.len() <= max_out as usize => {
            for (i, t) in outs.into_iter().enumerate() {
                // Ownership moves to C++, which deletes the handle after taking a copy.
                let mut t = std::mem::ManuallyDrop::new(t);
                *outputs.add(i) = t.as_mut_ptr();
                *n_out = i as i64 + 1;
            }
            0
        }
        Ok(Ok(outs)) => fail(format!(
            "{} outputs, at most {max_out} supported",
            outs.len()
        )),
        Ok(Err(msg)) => fail(msg),
        Err(_) => fail("the checkpointed function panicked".into()),
    }
}

unsafe extern "C" fn drop_trampoline<F>(user: *mut c_void) {
    drop(Box::from_raw(user as *mut F));
}

/// Runs `f(inputs)` without keeping its intermediate activations; the backward pass runs it again
/// with grad enabled (PyTorch's reentrant checkpoint). Gradients reach the explicit `inputs` and
/// every tensor `f` captures. At least one input must require grad for captured parameters to
/// get gradients (pass a dummy that does); without grad mode `f` simply runs.
///
/// `f` is owned by the autograd graph until it is freed, and must compute the same thing both
/// times (no fresh randomness).
pub fn checkpoint<F>(f: F, inputs: &[&Tensor]) -> Result<Vec<Tensor>, KernelError>
where
    F: Fn(&[Tensor]) -> Result<Vec<Tensor>, String> + 'static,
{
    let user = Box::into_raw(Box::new(f)) as *mut c_void;
    let ins: Vec<*const C_tensor> = inputs.iter().map(|t| t.as_ptr()).collect();
    let mut outs: Vec<*mut C_tensor> = vec![std::ptr::null_mut(); MAX_OUTPUTS];
    let mut n_out = 0i64;
    // SAFETY: `user` is a leaked Box<F> whose ownership passes to the C++ node (freed through
    // drop_trampoline::<F>); input pointers are live tensors; outputs are new heap tensors.
    let rc = unsafe {
        rwkvtune_checkpoint(
            call_trampoline::<F>,
            drop_trampoline::<F>,
            user,
            ins.as_ptr(),
            ins.len() as i64,
            outs.as_mut_ptr(),
            MAX_OUTPUTS as i64,
            &mut n_out,
        )
    };
    if rc != 0 {
        return Err(last_error());
    }
    // SAFETY: the first n_out entries are new tensors owned by us now.
    Ok(outs[..n_out as usize]
        .iter()
        .map(|&p| unsafe { Tensor::from_ptr(p) })
        .collect())
}
