// Activation checkpointing: run a Rust closure without keeping its intermediate activations,
// and run it again (with grad) during the backward pass.
//
// This is PyTorch's reentrant checkpoint: the Function saves only its tensor inputs; backward
// recomputes the closure with grad enabled on detached copies of them, then calls
// torch::autograd::backward on the recomputed outputs. Gradients of tensors the closure captures
// (the block's parameters, LoRA adapters) accumulate into their .grad like any other backward;
// gradients of the explicit inputs are read off the detached copies.
//
// The closure is owned by the autograd node (a capsule in saved_data), so it lives exactly as
// long as the graph that may call it; Rust supplies its drop function.

#include "shim.h"

#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <vector>

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Runs the closure: inputs in, outputs written to `outputs` (up to max_out), count to *n_out.
typedef int (*ckpt_call_t)(void* user, const tensor_ptr* inputs, int64_t n_in, tensor_ptr* outputs,
                           int64_t max_out, int64_t* n_out);
typedef void (*ckpt_drop_t)(void* user);

namespace {

constexpr int64_t MAX_OUT = 64;

struct Closure : torch::CustomClassHolder {
  ckpt_call_t call;
  ckpt_drop_t drop;
  void* user;
  Closure(ckpt_call_t c, ckpt_drop_t d, void* u) : call(c), drop(d), user(u) {}
  ~Closure() override { drop(user); }

  variable_list run(const std::vector<at::Tensor>& inputs) const {
    std::vector<tensor_ptr> in;
    in.reserve(inputs.size());
    for (const auto& t : inputs) in.push_back(const_cast<at::Tensor*>(&t));
    tensor_ptr out[MAX_OUT];
    int64_t n_out = 0;
    if (call(user, in.data(), static_cast<int64_t>(in.size()), out, MAX_OUT, &n_out) != 0) {
      TORCH_CHECK(false, "checkpointed function failed: ", shim_last_error());
    }
    variable_list res;
    for (int64_t i = 0; i < n_out; ++i) {
      res.push_back(*out[i]);
      delete out[i];
    }
    return res;
  }
};

struct Checkpoint : public torch::autograd::Function<Checkpoint> {
  // Inputs must be an at::TensorList: a std::vector argument would not be seen as tensors.
  static variable_list forward(AutogradContext* ctx, at::TensorList inputs,
                               c10::intrusive_ptr<Closure> closure) {
    ctx->save_for_backward(inputs.vec());
    ctx->saved_data["closure"] = c10::IValue::make_capsule(closure);
    return closure->run(inputs.vec());  // apply() runs forward with grad disabled
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto closure = c10::static_intrusive_pointer_cast<Closure>(ctx->saved_data["closure"].toCapsule());
    auto saved = ctx->get_saved_variables();
    std::vector<at::Tensor> inputs;
    for (auto& s : saved) {
      auto d = s.detach();
      d.requires_grad_(s.requires_grad());
      inputs.push_back(d);
    }
    variable_list outs;
    {
      at::AutoGradMode on(true);
      outs = closure->run(inputs);
    }
    std::vector<at::Tensor> roots, root_grads;
    for (size_t i = 0; i < outs.size() && i < grads.size(); ++i) {
      if (outs[i].requires_grad() && grads[i].defined()) {
        roots.push_back(outs[i]);
        root_grads.push_back(grads[i]);
      }
    }
    if (!roots.empty()) torch::autograd::backward(roots, root_grads);
    variable_list res;
    for (auto& d : inputs) res.push_back(d.requires_grad() ? d.grad() : at::Tensor());
    res.push_back(at::Tensor());  // the closure
    return res;
  }
};

}  // namespace

extern "C" int rwkvtune_checkpoint(ckpt_call_t call, ckpt_drop_t drop, void* user,
                                   const tensor_ptr* inputs, int64_t n_in, tensor_ptr* outputs,
                                   int64_t max_out, int64_t* n_out) {
  // Ownership of `user` passes to the closure holder from here on, error or not.
  auto closure = c10::make_intrusive<Closure>(call, drop, user);
  SHIM_TRY({
    std::vector<at::Tensor> in;
    for (int64_t i = 0; i < n_in; ++i) in.push_back(*inputs[i]);
    // Without grad there is nothing to save: just run it.
    auto out = at::GradMode::is_enabled() ? Checkpoint::apply(at::TensorList(in), closure) : closure->run(in);
    TORCH_CHECK(static_cast<int64_t>(out.size()) <= max_out, "too many checkpoint outputs");
    for (size_t i = 0; i < out.size(); ++i) outputs[i] = new at::Tensor(out[i]);
    *n_out = static_cast<int64_t>(out.size());
    return 0;
  })
}

// Lets the Rust side of a checkpointed closure report why it failed.
extern "C" void rwkvtune_set_error(const char* msg) { shim_last_error() = msg; }
