// One AdamW update of one tensor through libtorch's fused kernel (CPU and CUDA): a single pass
// over parameter, gradient and both moments instead of the ~10 passes and two temporaries of the
// same update written as separate tensor ops. tch does not expose `_fused_adamw_`, hence the shim.
//
// `grad_scale`: the gradient is multiplied by it first (gradient clipping's coefficient);
// libtorch's kernel divides by its `grad_scale`, so it gets the reciprocal.

#include "shim.h"

#include <c10/core/GradMode.h>

extern "C" int rwkvtune_adamw(tensor_ptr param, tensor_ptr grad, tensor_ptr exp_avg,
                              tensor_ptr exp_avg_sq, double lr, double beta1, double beta2,
                              double weight_decay, double eps, int64_t step, double grad_scale) {
  SHIM_TRY({
    TORCH_CHECK(param->is_contiguous() && exp_avg->is_contiguous() && exp_avg_sq->is_contiguous(),
                "adamw: parameter and moments must be contiguous");
    TORCH_CHECK(param->scalar_type() == at::kFloat && exp_avg->scalar_type() == at::kFloat &&
                    exp_avg_sq->scalar_type() == at::kFloat,
                "adamw: parameter and moments must be fp32 (mixed precision keeps fp32 masters)");
    TORCH_CHECK(step >= 1, "adamw: step counts from 1");
    c10::NoGradGuard no_grad;  // an optimizer step is not part of any graph
    const auto opts = param->options();
    at::Tensor g = grad->to(opts).contiguous();
    at::Tensor steps = at::full({}, static_cast<double>(step), opts);
    std::optional<at::Tensor> inv_scale;
    if (grad_scale != 1.0) inv_scale = at::full({}, 1.0 / grad_scale, opts);
    at::_fused_adamw_({*param}, {g}, {*exp_avg}, {*exp_avg_sq}, {}, {steps}, lr, beta1, beta2,
                      weight_decay, eps, /*amsgrad=*/false, /*maximize=*/false, inv_scale,
                      std::nullopt);
    return 0;
  })
}

// Drops a tensor's .grad (PyTorch's zero_grad(set_to_none=True)): the next backward then adopts
// the freshly computed gradient instead of adding it into a zeroed buffer, which saves two passes
// over every gradient per step. tch can only zero a gradient in place.
extern "C" int rwkvtune_clear_grad(tensor_ptr t) {
  SHIM_TRY({
    t->mutable_grad().reset();
    return 0;
  })
}
