// The input projection of one layer for tiny RNNs (recurrence.h, SmallProjectionFn), as a plain loop:
// at a few thousand multiply-adds the addmm it replaces costs more in call overhead (a bias add, a
// transpose view, expand + copy of the bias, the BLAS call: ~15 µs on the 2-core CI machine) than
// the arithmetic itself (< 1 µs here).
#include <ATen/ATen.h>

#include <cstdint>

#include "recurrence.h"

namespace fused_rnn {
namespace {

// At most this many multiply-adds (N·I·D·H): the loop below runs ~2 of them per cycle, so the
// largest projection it takes costs about as much as the library call's fixed overhead.
constexpr int64_t kSmallProjectionMaxMacs = 8192;

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

}  // namespace

bool small_projection_cpu(const at::Tensor& out, const at::Tensor& in, at::TensorList params, int64_t D,
                          bool has_biases) {
  const int64_t N = in.size(0), I = in.size(1), H = out.size(1) / D;
  if (N * I * D * H > kSmallProjectionMaxMacs) return false;
  const at::ScalarType st = out.scalar_type();
  if (st != at::kFloat && st != at::kDouble) return false;
  if (!out.is_contiguous() || !in.is_contiguous() || in.scalar_type() != st) return false;
  for (const at::Tensor& p : params) {
    if (!p.is_contiguous() || p.scalar_type() != st) return false;
  }
  const int64_t per = has_biases ? 4 : 2;
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

}  // namespace fused_rnn
