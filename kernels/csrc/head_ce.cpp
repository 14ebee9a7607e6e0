// Output head + token cross-entropy + L2Wrap as one autograd Function, chunked over rows.
//
// With logits z = x Wᵀ (x [N, C], W [V, C]) and labels y (-100 = not scored):
//   loss      = ce_scale · Σ_{scored r} (logsumexp(z_r) − z_r[y_r])
//   ∂loss/∂z_r = ce_scale · scored_r · (softmax(z_r) − onehot(y_r))
//              + l2_scale · max(z_r) · onehot(argmax z_r)          (L2Wrap: gradient, no value)
//   ∂x = ∂z W,  ∂W = ∂zᵀ x.
//
// The loss is a scalar, so its backward only rescales these gradients by the incoming scalar.
// The forward pass therefore computes them right away, one chunk of rows at a time, and the [N, V]
// logits never exist at once: memory is O(chunk · V) instead of several [N, V] buffers, and no
// logits are recomputed. With a vocabulary of 65536 the head is most of a small model's step, and
// the separate log_softmax / nll / max / their backwards each made a full pass over [N, V].
//
// Numerics: logits are computed in the inputs' dtype (as the model's own head would) and
// everything after that in fp32 (fp64 for fp64 inputs). The saved gradients stay in that
// accumulation dtype until backward has applied the incoming scale (the fp16 loss scale), so fp16
// gradients are only rounded once they are scaled.

#include "shim.h"

#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

constexpr int64_t IGNORE_INDEX = -100;
// Logit elements per chunk: 16 Mi (64 MiB in fp32; 256 rows of a 65536 vocabulary). Smaller
// chunks keep the logits in cache but cost more: every chunk re-reads and re-writes the whole
// [V, C] ∂W, and the GEMMs lose efficiency on few rows (t2x128, 2 threads, ctx 512 × 2: 4 Mi
// elements 670 ms per step, 16 Mi 590 ms, all rows at once 570 ms for 4× the memory).
constexpr int64_t CHUNK_ELEMENTS = int64_t{1} << 24;

void check_inputs(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& labels) {
  TORCH_CHECK(x.dim() == 2, "head_ce: hidden states must be [N, C], got ", x.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == x.size(1), "head_ce: head weight must be [V, ",
              x.size(1), "], got ", weight.sizes());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == x.size(0), "head_ce: labels must be [",
              x.size(0), "], got ", labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong, "head_ce: labels must be int64");
  TORCH_CHECK(x.device() == weight.device() && x.device() == labels.device(),
              "head_ce: hidden states, weight and labels must be on one device");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(), "head_ce: hidden states are ",
              x.scalar_type(), " but the head weight is ", weight.scalar_type());
}

struct HeadCe : public torch::autograd::Function<HeadCe> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& labels, double ce_scale, double l2_scale) {
    check_inputs(x, weight, labels);
    const int64_t N = x.size(0), C = x.size(1), V = weight.size(0);
    const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    const auto aopts = x.options().dtype(acc);
    const bool grad_x = ctx && x.requires_grad();
    const bool grad_w = ctx && weight.requires_grad();

    if (N > 0) {
      const at::Tensor scored = labels.ne(IGNORE_INDEX);
      const bool in_range = (labels.lt(V) & labels.ge(0)).logical_or(scored.logical_not()).all().item<bool>();
      TORCH_CHECK(in_range, "head_ce: a label is outside the vocabulary [0, ", V, ") and is not -100");
    }
    const at::Tensor wt = weight.t();
    // The gradient products run in the accumulation dtype (a no-op view for fp32/fp64).
    const at::Tensor w_acc = grad_x ? weight.to(acc) : at::Tensor();
    const at::Tensor x_acc = grad_w ? x.to(acc) : at::Tensor();
    at::Tensor dx = grad_x ? at::empty({N, C}, aopts) : at::Tensor();
    at::Tensor dw = grad_w ? at::empty({V, C}, aopts) : at::Tensor();  // set by the first chunk

    const int64_t rows =
        std::max<int64_t>(1, std::min<int64_t>(N, CHUNK_ELEMENTS / std::max<int64_t>(V, 1)));
    at::Tensor z_buf = at::empty({rows, V}, aopts);
    // libtorch's CPU softmax may run in place (each row is read before it is written); elsewhere
    // the probabilities get their own buffer.
    at::Tensor p_buf = x.is_cpu() ? z_buf : at::empty({rows, V}, aopts);
    at::Tensor loss = at::zeros({}, aopts);
    for (int64_t r0 = 0; r0 < N; r0 += rows) {
      const int64_t R = std::min(rows, N - r0);
      const at::Tensor xc = x.narrow(0, r0, R);
      at::Tensor z = z_buf.narrow(0, 0, R);
      if (x.scalar_type() == acc) {
        at::mm_out(z, xc, wt);
      } else {
        z.copy_(at::mm(xc, wt));
      }
      const auto [m, arg] = at::max(z, 1);
      const at::Tensor lab = labels.narrow(0, r0, R);
      const at::Tensor scored = lab.ne(IGNORE_INDEX);
      const at::Tensor target = at::where(scored, lab, at::zeros({}, lab.options()));
      const at::Tensor z_target = z.gather(1, target.unsqueeze(1)).squeeze(1);
      at::Tensor p = p_buf.narrow(0, 0, R);
      at::_softmax_out(p, z, 1, false);
      // softmax at the argmax is exp(0)/Σexp(z − m) = 1/Σ, so logsumexp = m − log p[argmax];
      // it never underflows (p[argmax] ≥ 1/V), unlike log p[label].
      const at::Tensor lse = m - at::log(p.gather(1, arg.unsqueeze(1)).squeeze(1));
      loss.add_(((lse - z_target) * scored).sum());
      if (!grad_x && !grad_w) continue;
      // ∂z_r = w_r p_r − w_r e_{y_r} + a_r e_{argmax_r} is never formed: the row weights scale
      // the [R, C] factors instead of the [R, V] probabilities, and the one-hot terms become
      // gathers and index_adds of single rows of W and x.
      const at::Tensor w_row = (scored.to(acc) * ce_scale).unsqueeze(1);
      const at::Tensor a_row = (m * l2_scale).unsqueeze(1);
      if (grad_x) {
        at::Tensor dx_rows = dx.narrow(0, r0, R);
        at::mm_out(dx_rows, p, w_acc);
        dx_rows.mul_(w_row).sub_(w_acc.index_select(0, target) * w_row);
        if (l2_scale != 0.0) dx_rows.add_(w_acc.index_select(0, arg) * a_row);
      }
      if (grad_w) {
        const at::Tensor xr = x_acc.narrow(0, r0, R);
        const at::Tensor xw = xr * w_row;
        if (r0 == 0) {
          at::mm_out(dw, p.t(), xw);
        } else {
          dw.addmm_(p.t(), xw);
        }
        dw.index_add_(0, target, -xw);
        if (l2_scale != 0.0) dw.index_add_(0, arg, xr * a_row);
      }
    }
    loss.mul_(ce_scale);
    if (ctx) {
      ctx->saved_data["dx"] = dx;
      ctx->saved_data["dw"] = dw;
      ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
      ctx->saved_data["w_dtype"] = static_cast<int64_t>(weight.scalar_type());
    }
    return {loss};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    // Taken out of the context so that, when no cast is needed, autograd can adopt the tensor as
    // the parameter's .grad instead of copying it.
    at::Tensor dx = ctx->saved_data["dx"].toTensor();
    at::Tensor dw = ctx->saved_data["dw"].toTensor();
    ctx->saved_data.erase("dx");
    ctx->saved_data.erase("dw");
    const auto x_dtype = static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt());
    const auto w_dtype = static_cast<at::ScalarType>(ctx->saved_data["w_dtype"].toInt());
    // Usually 1 (no accumulation, no fp16 loss scale): then the [V, C] pass is skipped.
    const double g = grad_out[0].item<double>();
    variable_list out(5);
    if (dx.defined()) out[0] = (g == 1.0 ? dx : dx.mul_(g)).to(x_dtype);
    if (dw.defined()) out[1] = (g == 1.0 ? dw : dw.mul_(g)).to(w_dtype);
    return out;
  }
};

}  // namespace

extern "C" int rwkvtune_head_ce(tensor_ptr x, tensor_ptr weight, tensor_ptr labels,
                                double ce_scale, double l2_scale, tensor_ptr* loss_out) {
  SHIM_TRY({
    const bool grad = at::GradMode::is_enabled() && (x->requires_grad() || weight->requires_grad());
    variable_list out = grad ? HeadCe::apply(*x, *weight, *labels, ce_scale, l2_scale)
                             : HeadCe::forward(nullptr, *x, *weight, *labels, ce_scale, l2_scale);
    *loss_out = new at::Tensor(out[0]);
    return 0;
  })
}
