//! The C++ libtorch ops rwkvtune needs and tch cannot express: custom autograd Functions and a
//! fused optimizer kernel, behind a small C ABI (`csrc/shim.h`).
//!
//! - [`wkv7`]: the RWKV-7 recurrence `S_t = S_{t-1} (diag(w_t) + a_t b_tᵀ) + v_t k_tᵀ`,
//!   `y_t = S_t r_t`, per batch element and head, with the state `S` ∈ ℝ^{N×N} (row = value
//!   channel, column = key channel); `backward()` from Rust reaches every input, the initial state
//!   included. It accumulates in fp32 (fp64 for fp64 inputs) whatever the input dtype; the
//!   returned state is always in that accumulation dtype, never bf16/fp16.
//! - [`head_ce`]: output head + token cross-entropy + L2Wrap, chunked so the logits never exist
//!   whole.
//! - [`checkpoint`]: reentrant activation checkpointing of a Rust closure.
//! - [`adamw_step`]: one AdamW update through libtorch's fused kernel; [`clear_grad`].

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

// ---- output head + cross-entropy ---------------------------------------------------------------

extern "C" {
    fn rwkvtune_head_ce(
        x: *const C_tensor,
        weight: *const C_tensor,
        labels: *const C_tensor,
        ce_scale: f64,
        l2_scale: f64,
        loss_out: *mut *mut C_tensor,
    ) -> i32;
}

/// The language-modelling loss of hidden states `x` [N, C] under the head `weight` [V, C],
/// without materialising the [N, V] logits: `ce_scale · Σ_{scored r} (logsumexp(z_r) − z_r[y_r])`
/// with `z = x weightᵀ` and `labels` [N] int64 (−100 = not scored).
///
/// The gradient additionally carries L2Wrap: `l2_scale · max(z_r)` at the argmax of every row
/// (scored or not); 0 turns it off. Returns a 0-dim tensor (fp32, fp64 for fp64 inputs) whose
/// `backward()` reaches `x` and `weight` in their own dtypes. The logits are computed in the
/// inputs' dtype, everything after them in fp32/fp64.
pub fn head_ce(
    x: &Tensor,
    weight: &Tensor,
    labels: &Tensor,
    ce_scale: f64,
    l2_scale: f64,
) -> Result<Tensor, KernelError> {
    let mut loss: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: live tch tensors in; on success one new heap tensor out, owned by tch from here.
    let rc = unsafe {
        rwkvtune_head_ce(
            x.as_ptr(),
            weight.as_ptr(),
            labels.as_ptr(),
            ce_scale,
            l2_scale,
            &mut loss,
        )
    };
    if rc != 0 {
        return Err(last_error());
    }
    // SAFETY: see above.
    Ok(unsafe { Tensor::from_ptr(loss) })
}

// ---- fused AdamW -------------------------------------------------------------------------------

extern "C" {
    fn rwkvtune_adamw(
        param: *const C_tensor,
        grad: *const C_tensor,
        exp_avg: *const C_tensor,
        exp_avg_sq: *const C_tensor,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        step: i64,
        grad_scale: f64,
    ) -> i32;
    fn rwkvtune_clear_grad(t: *const C_tensor) -> i32;
}

/// Hyper-parameters of one [`adamw_step`].
#[derive(Debug, Clone, Copy)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub eps: f64,
    /// The step being taken, counted from 1 (bias correction).
    pub step: i64,
    /// Multiplies the gradient before use (gradient clipping's coefficient; 1 for none).
    pub grad_scale: f64,
}

/// Updates `param`, `exp_avg` and `exp_avg_sq` (fp32, contiguous) in place with decoupled weight
/// decay, in one pass: `p ← p(1 − lr·wd)`, `m ← β1 m + (1−β1) g`, `v ← β2 v + (1−β2) g²`,
/// `p ← p − lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + eps)`, with `g = grad_scale · grad`.
pub fn adamw_step(
    param: &Tensor,
    grad: &Tensor,
    exp_avg: &Tensor,
    exp_avg_sq: &Tensor,
    h: AdamWStep,
) -> Result<(), KernelError> {
    // SAFETY: live tch tensors; the op mutates param and the moments in place, nothing is returned.
    let rc = unsafe {
        rwkvtune_adamw(
            param.as_ptr(),
            grad.as_ptr(),
            exp_avg.as_ptr(),
            exp_avg_sq.as_ptr(),
            h.lr,
            h.beta1,
            h.beta2,
            h.weight_decay,
            h.eps,
            h.step,
            h.grad_scale,
        )
    };
    if rc != 0 {
        return Err(last_error());
    }
    Ok(())
}

/// Drops `t`'s gradient (PyTorch's `zero_grad(set_to_none=True)`): the next backward stores its
/// result as the new `.grad` instead of adding it into a zeroed buffer.
pub fn clear_grad(t: &Tensor) -> Result<(), KernelError> {
    // SAFETY: a live tch tensor; only its grad slot changes.
    if unsafe { rwkvtune_clear_grad(t.as_ptr()) } != 0 {
        return Err(last_error());
    }
    Ok(())
}
