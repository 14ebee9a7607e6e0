// RWKV-7 "wkv7" recurrence as a libtorch autograd Function, CPU implementation.
//
// Per batch element b and head h, with state S in R^{N x N} (row i = value channel, column j = key
// channel):
//   sa_t[i]  = sum_j S_{t-1}[i][j] * a_t[j]
//   S_t[i][j] = S_{t-1}[i][j] * w_t[j] + sa_t[i] * b_t[j] + v_t[i] * k_t[j]
//   y_t[i]   = sum_j S_t[i][j] * r_t[j]
// i.e. S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T, y_t = S_t r_t. The model passes
// a = -kappa, b = kappa * iclr and w = the per-step decay in (0, 1).
//
// Inputs r, w, k, v, a, b: [B, T, H, N] (any float dtype, any strides); s0: [B, H, N, N].
// Outputs y [B, T, H, N] in r's dtype and the final state [B, H, N, N] in the accumulation dtype
// (fp32, or fp64 when the inputs are fp64 so tests can compare against a float64 oracle).
//
// Backward recomputes states inside chunks of CHUNK steps from checkpoints saved by the forward
// pass, so memory is O(T/CHUNK * N^2) per head instead of O(T * N^2).

#include "shim.h"

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <vector>

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {

constexpr int64_t CHUNK = 16;

struct Dims {
  int64_t B, T, H, N;
  int64_t n_chunks() const { return (T + CHUNK - 1) / CHUNK; }
  // Offset of (b, t, h, 0) in a contiguous [B, T, H, N] tensor.
  int64_t seq(int64_t b, int64_t t, int64_t h) const { return ((b * T + t) * H + h) * N; }
};

Dims check_inputs(const at::Tensor& r, const at::Tensor& w, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& a, const at::Tensor& b, const at::Tensor& s0) {
  TORCH_CHECK(r.dim() == 4, "wkv7: r must be [B, T, H, N], got ", r.sizes());
  Dims d{r.size(0), r.size(1), r.size(2), r.size(3)};
  TORCH_CHECK(d.T >= 1, "wkv7: sequence length must be >= 1");
  const char* names[] = {"w", "k", "v", "a", "b"};
  const at::Tensor* ts[] = {&w, &k, &v, &a, &b};
  for (int i = 0; i < 5; ++i) {
    TORCH_CHECK(ts[i]->sizes() == r.sizes(), "wkv7: ", names[i], " has shape ", ts[i]->sizes(),
                " but r has ", r.sizes());
  }
  TORCH_CHECK(s0.dim() == 4 && s0.size(0) == d.B && s0.size(1) == d.H && s0.size(2) == d.N &&
                  s0.size(3) == d.N,
              "wkv7: state must be [B, H, N, N] = [", d.B, ", ", d.H, ", ", d.N, ", ", d.N, "], got ",
              s0.sizes());
  for (const at::Tensor* t : {&r, &w, &k, &v, &a, &b, &s0}) {
    TORCH_CHECK(at::isFloatingType(t->scalar_type()), "wkv7: inputs must be floating point, got ",
                t->scalar_type());
    TORCH_CHECK(t->device() == r.device(), "wkv7: all inputs must be on one device");
  }
  return d;
}

// x · y with 8 independent partial sums. A single running sum is one serial chain of dependent
// adds, which the compiler may not reorder (that would change the rounding) and which then runs
// at one add per FPU latency; eight chains vectorise and overlap (the wkv7 step ran ~3x faster).
template <typename acc_t>
inline acc_t dot(const acc_t* x, const acc_t* y, int64_t n) {
  acc_t part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; ++l) part[l] += x[j + l] * y[j + l];
  acc_t tail = 0;
  for (; j < n; ++j) tail += x[j] * y[j];
  return ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7])) +
         tail;
}

// One forward step for one head. s: [N, N] state, updated in place; y: [N] output.
template <typename acc_t>
inline void step_forward(acc_t* s, const acc_t* r, const acc_t* w, const acc_t* k, const acc_t* v,
                         const acc_t* a, const acc_t* b, acc_t* y, int64_t N) {
  for (int64_t i = 0; i < N; ++i) {
    acc_t* row = s + i * N;
    const acc_t sa = dot(row, a, N);
    const acc_t vi = v[i];
    for (int64_t j = 0; j < N; ++j) row[j] = row[j] * w[j] + sa * b[j] + vi * k[j];
    y[i] = dot(row, r, N);
  }
}

template <typename acc_t>
void forward_kernel(const Dims& d, const acc_t* r, const acc_t* w, const acc_t* k, const acc_t* v,
                    const acc_t* a, const acc_t* b, const acc_t* s0, acc_t* y, acc_t* s_out,
                    acc_t* ckpt /* [B, H, n_chunks, N, N], may be null */) {
  const int64_t N = d.N, NN = N * N, nc = d.n_chunks();
  at::parallel_for(0, d.B * d.H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t bi = bh / d.H, h = bh % d.H;
      acc_t* s = s_out + bh * NN;
      std::copy(s0 + bh * NN, s0 + (bh + 1) * NN, s);
      for (int64_t t = 0; t < d.T; ++t) {
        if (ckpt && t % CHUNK == 0) std::copy(s, s + NN, ckpt + (bh * nc + t / CHUNK) * NN);
        const int64_t o = d.seq(bi, t, h);
        step_forward(s, r + o, w + o, k + o, v + o, a + o, b + o, y + o, N);
      }
    }
  });
}

template <typename acc_t>
void backward_kernel(const Dims& d, const acc_t* r, const acc_t* w, const acc_t* k, const acc_t* v,
                     const acc_t* a, const acc_t* b, const acc_t* ckpt, const acc_t* dy,
                     const acc_t* ds_out, acc_t* dr, acc_t* dw, acc_t* dk, acc_t* dv, acc_t* da,
                     acc_t* db, acc_t* ds0) {
  const int64_t N = d.N, NN = N * N, nc = d.n_chunks();
  at::parallel_for(0, d.B * d.H, 1, [&](int64_t begin, int64_t end) {
    // states[c] = S after step t0 + c - 1 of the current chunk (states[0] = the checkpoint).
    std::vector<acc_t> states((CHUNK + 1) * NN);
    std::vector<acc_t> y_scratch(N), sa(N), dsa(N);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t bi = bh / d.H, h = bh % d.H;
      acc_t* dS = ds0 + bh * NN;  // running gradient w.r.t. the current state
      std::copy(ds_out + bh * NN, ds_out + (bh + 1) * NN, dS);
      for (int64_t c = nc - 1; c >= 0; --c) {
        const int64_t t0 = c * CHUNK, t1 = std::min(d.T, t0 + CHUNK);
        std::copy(ckpt + (bh * nc + c) * NN, ckpt + (bh * nc + c + 1) * NN, states.begin());
        for (int64_t t = t0; t < t1; ++t) {
          acc_t* next = states.data() + (t - t0 + 1) * NN;
          std::copy(next - NN, next, next);
          const int64_t o = d.seq(bi, t, h);
          step_forward(next, r + o, w + o, k + o, v + o, a + o, b + o, y_scratch.data(), N);
        }
        for (int64_t t = t1 - 1; t >= t0; --t) {
          const int64_t o = d.seq(bi, t, h);
          const acc_t* S_prev = states.data() + (t - t0) * NN;
          const acc_t* S_cur = S_prev + NN;
          const acc_t *rt = r + o, *wt = w + o, *kt = k + o, *vt = v + o, *at = a + o, *bt = b + o;
          const acc_t* dyt = dy + o;
          // y = S_cur r  =>  dS_cur += dy r^T, dr = S_cur^T dy
          for (int64_t j = 0; j < N; ++j) dr[o + j] = 0;
          for (int64_t i = 0; i < N; ++i) {
            const acc_t* row = S_cur + i * N;
            acc_t* drow = dS + i * N;
            const acc_t dyi = dyt[i];
            for (int64_t j = 0; j < N; ++j) {
              drow[j] += dyi * rt[j];
              dr[o + j] += row[j] * dyi;
            }
          }
          // sa = S_prev a (recomputed).
          for (int64_t i = 0; i < N; ++i) sa[i] = dot(S_prev + i * N, at, N);
          // S_cur = S_prev diag(w) + sa b^T + v k^T
          for (int64_t j = 0; j < N; ++j) {
            dw[o + j] = 0;
            dk[o + j] = 0;
            db[o + j] = 0;
          }
          for (int64_t i = 0; i < N; ++i) {
            const acc_t* prow = S_prev + i * N;
            const acc_t* drow = dS + i * N;
            const acc_t vi = vt[i], sai = sa[i];
            for (int64_t j = 0; j < N; ++j) {
              const acc_t g = drow[j];
              dw[o + j] += g * prow[j];
              dk[o + j] += g * vi;
              db[o + j] += g * sai;
            }
            dv[o + i] = dot(drow, kt, N);
            dsa[i] = dot(drow, bt, N);
          }
          // da = S_prev^T dsa; dS_prev = dS_cur diag(w) + dsa a^T
          for (int64_t j = 0; j < N; ++j) da[o + j] = 0;
          for (int64_t i = 0; i < N; ++i) {
            const acc_t* prow = S_prev + i * N;
            acc_t* drow = dS + i * N;
            const acc_t dsai = dsa[i];
            for (int64_t j = 0; j < N; ++j) {
              da[o + j] += dsai * prow[j];
              drow[j] = drow[j] * wt[j] + dsai * at[j];
            }
          }
        }
      }
    }
  });
}

at::ScalarType acc_type(const at::Tensor& r) {
  return r.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Contiguous CPU copy in the accumulation dtype; the kernels read raw pointers.
at::Tensor prep(const at::Tensor& t, at::ScalarType acc) {
  return t.to(at::kCPU, acc).contiguous();
}

struct Wkv7 : public torch::autograd::Function<Wkv7> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& r, const at::Tensor& w,
                               const at::Tensor& k, const at::Tensor& v, const at::Tensor& a,
                               const at::Tensor& b, const at::Tensor& s0) {
    const Dims d = check_inputs(r, w, k, v, a, b, s0);
    const auto acc = acc_type(r);
    // Dispatch point: a CUDA kernel slots in here. Until then CUDA tensors run on the CPU kernel.
    at::Tensor rc = prep(r, acc), wc = prep(w, acc), kc = prep(k, acc), vc = prep(v, acc),
               ac = prep(a, acc), bc = prep(b, acc), sc = prep(s0, acc);
    auto opts = rc.options();
    at::Tensor y = at::empty({d.B, d.T, d.H, d.N}, opts);
    at::Tensor s_out = at::empty({d.B, d.H, d.N, d.N}, opts);
    const bool need_grad = ctx != nullptr;
    at::Tensor ckpt = need_grad ? at::empty({d.B, d.H, d.n_chunks(), d.N, d.N}, opts) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(acc, "wkv7_forward", [&] {
      forward_kernel<scalar_t>(d, rc.data_ptr<scalar_t>(), wc.data_ptr<scalar_t>(),
                               kc.data_ptr<scalar_t>(), vc.data_ptr<scalar_t>(),
                               ac.data_ptr<scalar_t>(), bc.data_ptr<scalar_t>(),
                               sc.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                               s_out.data_ptr<scalar_t>(),
                               need_grad ? ckpt.data_ptr<scalar_t>() : nullptr);
    });
    if (ctx) {
      ctx->save_for_backward({rc, wc, kc, vc, ac, bc, ckpt});
      // Gradients go back in each input's own dtype and device.
      std::vector<int64_t> dtypes;
      for (const at::Tensor* t : {&r, &w, &k, &v, &a, &b, &s0})
        dtypes.push_back(static_cast<int64_t>(t->scalar_type()));
      ctx->saved_data["dtypes"] = dtypes;
      ctx->saved_data["device"] = r.device();
    }
    const auto dev = r.device();
    return {y.to(dev, r.scalar_type()), s_out.to(dev)};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto saved = ctx->get_saved_variables();
    const at::Tensor &r = saved[0], &w = saved[1], &k = saved[2], &v = saved[3], &a = saved[4],
                     &b = saved[5], &ckpt = saved[6];
    const Dims d{r.size(0), r.size(1), r.size(2), r.size(3)};
    const auto acc = r.scalar_type();
    at::Tensor dy = grad_out[0].defined() ? prep(grad_out[0], acc) : at::zeros_like(r);
    at::Tensor ds = grad_out[1].defined() ? prep(grad_out[1], acc)
                                          : at::zeros({d.B, d.H, d.N, d.N}, r.options());
    at::Tensor dr = at::empty_like(r), dw = at::empty_like(r), dk = at::empty_like(r),
               dv = at::empty_like(r), da = at::empty_like(r), db = at::empty_like(r),
               ds0 = at::empty({d.B, d.H, d.N, d.N}, r.options());
    AT_DISPATCH_FLOATING_TYPES(acc, "wkv7_backward", [&] {
      backward_kernel<scalar_t>(
          d, r.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
          v.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
          ckpt.data_ptr<scalar_t>(), dy.data_ptr<scalar_t>(), ds.data_ptr<scalar_t>(),
          dr.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(),
          dv.data_ptr<scalar_t>(), da.data_ptr<scalar_t>(), db.data_ptr<scalar_t>(),
          ds0.data_ptr<scalar_t>());
    });
    const auto dtypes = ctx->saved_data["dtypes"].toIntVector();
    const auto dev = ctx->saved_data["device"].toDevice();
    variable_list out;
    int idx = 0;
    for (at::Tensor* g : {&dr, &dw, &dk, &dv, &da, &db, &ds0})
      out.push_back(g->to(dev, static_cast<at::ScalarType>(dtypes[idx++])));
    return out;
  }
};

}  // namespace

extern "C" int rwkvtune_wkv7(tensor_ptr r, tensor_ptr w, tensor_ptr k, tensor_ptr v, tensor_ptr a,
                             tensor_ptr b, tensor_ptr s0, tensor_ptr* y_out, tensor_ptr* s_out) {
  SHIM_TRY({
    variable_list out;
    const bool grad = at::GradMode::is_enabled() &&
                      (r->requires_grad() || w->requires_grad() || k->requires_grad() ||
                       v->requires_grad() || a->requires_grad() || b->requires_grad() ||
                       s0->requires_grad());
    if (grad) {
      out = Wkv7::apply(*r, *w, *k, *v, *a, *b, *s0);
    } else {
      // Inference: no checkpoints, no autograd node.
      out = Wkv7::forward(nullptr, *r, *w, *k, *v, *a, *b, *s0);
    }
    *y_out = new at::Tensor(out[0]);
    *s_out = new at::Tensor(out[1]);
    return 0;
  })
}

extern "C" const char* rwkvtune_last_error() { return shim_last_error().c_str(); }
