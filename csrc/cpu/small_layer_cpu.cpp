// The GEMMs around the recurrence, for tiny layers, as plain loops (recurrence.h: SmallProjectionFn,
// SmallLayerGradsFn). At a few thousand multiply-adds a library call costs more in overhead than the
// arithmetic itself: the forward's addmm (a bias add, a transpose view, expand + copy of the bias,
// the BLAS call) and each of the backward's five GEMMs (MKL may even wake a second thread for a
// 12x20x10 product) cost tens of times what these loops do (benchmarks/cpu_notes.md).
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "checks.h"
#include "cpu/recurrence_cpu.h"

namespace fused_rnn {
namespace {

// At most this many multiply-adds (N·I·D·H): the loop below runs ~2 of them per cycle, so the
// largest projection it takes costs about as much as the library call's fixed overhead.
constexpr int64_t kSmallProjectionMaxMacs = 8192;
// At most this many multiply-adds for a layer's gradients (N·D·H·(2·I_l + H)): the loops vectorise
// along rows, ~4-8 per cycle, so the largest case costs about what the six library calls' overhead
// does, and usually far less.
constexpr int64_t kSmallGradsMaxMacs = int64_t(1) << 16;

// True when every tensor is contiguous and of type st (the loops read raw rows).
bool contiguous_of_type(at::ScalarType st, std::initializer_list<const at::Tensor*> ts) {
  for (const at::Tensor* t : ts)
    if (!t->is_contiguous() || t->scalar_type() != st) return false;
  return true;
}

// out [N, D*H] row n, direction d: o[j] = b_ih[j] + b_hh[j] + Σ_i x[i]·W[j, i], four output columns
// at a time (four independent accumulation chains; the sum over i runs in order for each).
template <typename T>
void project(T* out, const T* in, int64_t N, int64_t I, int64_t H, int64_t D, const T* const* w,
             const T* const* b_ih, const T* const* b_hh) {
  for (int64_t n = 0; n < N; ++n) {
    const T* x = in + n * I;
    for (int64_t d = 0; d < D; ++d) {
      const T* W = w[d];
      T* o = out + n * D * H + d * H;
      auto bias = [&](int64_t j) { return b_ih[d] != nullptr ? b_ih[d][j] + b_hh[d][j] : T(0); };
      int64_t j = 0;
      for (; j + 4 <= H; j += 4) {
        T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        const T *w0 = W + j * I, *w1 = w0 + I, *w2 = w1 + I, *w3 = w2 + I;
        for (int64_t i = 0; i < I; ++i) {
          const T xi = x[i];
          a0 += xi * w0[i];
          a1 += xi * w1[i];
          a2 += xi * w2[i];
          a3 += xi * w3[i];
        }
        o[j] = a0 + bias(j);
        o[j + 1] = a1 + bias(j + 1);
        o[j + 2] = a2 + bias(j + 2);
        o[j + 3] = a3 + bias(j + 3);
      }
      for (; j < H; ++j) {
        T a = 0;
        for (int64_t i = 0; i < I; ++i) a += x[i] * W[j * I + i];
        o[j] = a + bias(j);
      }
    }
  }
}

// acc[M, K] += Σ_rows g[r, :]ᵀ · v[r, :], i.e. acc[j, k] += g[j] · v[k] for each row pair (g, v):
// the inner loop runs along the row of acc and v, so it vectorises.
template <typename T>
void outer_acc(T* acc, const T* g, int64_t M, const T* v, int64_t K) {
  for (int64_t j = 0; j < M; ++j) {
    const T gj = g[j];
    T* a = acc + j * K;
    for (int64_t k = 0; k < K; ++k) a[k] += gj * v[k];
  }
}

// Per direction d, with ld = D*H and rows in step-major order (recurrence.h):
//   dw_ih[d] [H, I] = Σ_n δ[n, d]ᵀ x[n]         dw_hh[d] [H, H] = Σ_n δ[n, d]ᵀ h_prev(n, d)
//   db[d]    [H]    = Σ_n δ[n, d]                dx [N, I] = Σ_d δ[:, d] · W_ih[d]
// Every sum runs over n (or j) in order: deterministic, whatever the thread count.
template <typename T>
void layer_grads(const T* dpre, const T* x, const T* y, const T* h0, const StepLayout& lay, int64_t I, int64_t H,
                 int64_t D, const T* const* w_ih, T* const* dw_ih, T* const* dw_hh, T* const* db, T* dx) {
  const int64_t N = lay.rows(), B = lay.B, ld = D * H;
  const StepRule rule = lay.rule();
  for (int64_t d = 0; d < D; ++d) {
    std::fill(dw_ih[d], dw_ih[d] + H * I, T(0));
    std::fill(dw_hh[d], dw_hh[d] + H * H, T(0));
    if (db[d] != nullptr) std::fill(db[d], db[d] + H, T(0));
    const bool reverse = d == 1;
    for (int64_t t = 0; t < lay.T; ++t) {
      for (int64_t b = 0; b < lay.batch[t]; ++b) {
        const int64_t n = lay.offset[t] + b;
        const T* g = dpre + n * ld + d * H;
        // The state step t read: the previous step's output for a continued row, else h0.
        const T* h_prev = b < rule.continued_rows(t, reverse)
                              ? y + (lay.offset[rule.prev_step(t, reverse)] + b) * ld + d * H
                              : h0 + (d * B + b) * H;
        outer_acc(dw_ih[d], g, H, x + n * I, I);
        outer_acc(dw_hh[d], g, H, h_prev, H);
        if (db[d] != nullptr)
          for (int64_t j = 0; j < H; ++j) db[d][j] += g[j];
      }
    }
  }
  for (int64_t n = 0; n < N; ++n) {
    T* o = dx + n * I;
    std::fill(o, o + I, T(0));
    for (int64_t d = 0; d < D; ++d) {
      const T* g = dpre + n * ld + d * H;
      for (int64_t j = 0; j < H; ++j) {
        const T gj = g[j];
        const T* w = w_ih[d] + j * I;
        for (int64_t i = 0; i < I; ++i) o[i] += gj * w[i];
      }
    }
  }
}

}  // namespace

bool small_projection_cpu(const at::Tensor& out, const at::Tensor& in, at::TensorList params, int64_t D,
                          bool has_biases) {
  const int64_t N = in.size(0), I = in.size(1), H = out.size(1) / D;
  if (N * I * D * H > kSmallProjectionMaxMacs) return false;
  const at::ScalarType st = out.scalar_type();
  if (st != at::kFloat && st != at::kDouble) return false;
  if (!contiguous_of_type(st, {&out, &in})) return false;
  for (const at::Tensor& p : params)
    if (!contiguous_of_type(st, {&p})) return false;
  const int64_t per = weights_per_direction(has_biases);
  AT_DISPATCH_FLOATING_TYPES(st, "fused_rnn_small_projection", [&] {
    const scalar_t* w[2] = {nullptr, nullptr};
    const scalar_t* bi[2] = {nullptr, nullptr};
    const scalar_t* bh[2] = {nullptr, nullptr};
    for (int64_t d = 0; d < D; ++d) {
      w[d] = params[d * per].data_ptr<scalar_t>();
      if (has_biases) {
        bi[d] = params[d * per + 2].data_ptr<scalar_t>();
        bh[d] = params[d * per + 3].data_ptr<scalar_t>();
      }
    }
    project<scalar_t>(out.data_ptr<scalar_t>(), in.data_ptr<scalar_t>(), N, I, H, D, w, bi, bh);
  });
  return true;
}

bool small_layer_grads_cpu(const at::Tensor& dpre, const at::Tensor& in, const at::Tensor& y, const at::Tensor& h0,
                           const StepLayout& lay, at::TensorList params, int64_t D, bool has_biases, at::Tensor* grads,
                           at::Tensor& dx) {
  const int64_t N = in.size(0), I = in.size(1), H = dpre.size(1) / D;
  if (N * D * H * (2 * I + H) > kSmallGradsMaxMacs) return false;
  const at::ScalarType st = dpre.scalar_type();
  if (st != at::kFloat && st != at::kDouble) return false;
  if (!contiguous_of_type(st, {&dpre, &in, &y, &h0})) return false;
  const int64_t per = weights_per_direction(has_biases);
  for (int64_t d = 0; d < D; ++d)
    if (!contiguous_of_type(st, {&params[d * per]})) return false;
  const auto opts = dpre.options();
  for (int64_t d = 0; d < D; ++d) {
    grads[d * per + 0] = at::empty({H, I}, opts);
    grads[d * per + 1] = at::empty({H, H}, opts);
    if (has_biases) {
      grads[d * per + 2] = at::empty({H}, opts);
      grads[d * per + 3] = at::empty({H}, opts);  // a copy: op outputs may not alias each other
    }
  }
  dx = at::empty({N, I}, opts);
  AT_DISPATCH_FLOATING_TYPES(st, "fused_rnn_small_layer_grads", [&] {
    const scalar_t* w[2] = {nullptr, nullptr};
    scalar_t *dw_ih[2] = {nullptr, nullptr}, *dw_hh[2] = {nullptr, nullptr}, *db[2] = {nullptr, nullptr};
    for (int64_t d = 0; d < D; ++d) {
      w[d] = params[d * per].data_ptr<scalar_t>();
      dw_ih[d] = grads[d * per].data_ptr<scalar_t>();
      dw_hh[d] = grads[d * per + 1].data_ptr<scalar_t>();
      if (has_biases) db[d] = grads[d * per + 2].data_ptr<scalar_t>();
    }
    layer_grads<scalar_t>(dpre.data_ptr<scalar_t>(), in.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                          h0.data_ptr<scalar_t>(), lay, I, H, D, w, dw_ih, dw_hh, db, dx.data_ptr<scalar_t>());
    for (int64_t d = 0; d < D && has_biases; ++d) std::copy(db[d], db[d] + H, grads[d * per + 3].data_ptr<scalar_t>());
  });
  return true;
}

}  // namespace fused_rnn
