// The loops of a CPU recurrence task (recurrence_task.h), written once and compiled once per
// instruction set: included by recurrence_tasks_baseline.cpp and recurrence_tasks_avx2.cpp, each
// of which defines FUSED_RNN_CPU_ISA (the namespace of its build) first.
//
// Forward, per step t of the direction's order: C = pre_t + h_{t-1}·W_hhᵀ, then h_t = act(C), in
// place in `out`. BPTT, against that order: δ_t = (g_t + δ_next·W_hh) ⊙ act'(h_t), in place in dpre.
#pragma once

#include <algorithm>
#include <cstdint>

#include "cpu/blas.h"
#include "cpu/recurrence_task.h"
#include "cpu/simd.h"

namespace fused_rnn::cpu::FUSED_RNN_CPU_ISA {

template <typename T>
FUSED_RNN_INLINE void step_gemm(const StepGemm<T>& g, int64_t m, const T* a, int64_t lda, T* c, int64_t ldc) {
  if (m <= 0) return;
  if (g.blas) {
    blas_gemm_acc<T>(g.transpose, m, g.H, g.H, a, lda, g.w, g.H, c, ldc);
  } else {
    gemm_acc<T>(m, g.H, g.H, a, lda, g.panels, c, ldc);
  }
}

template <typename T>
FUSED_RNN_INLINE void copy_rows(int64_t m, int64_t H, const T* src, int64_t lds, T* dst, int64_t ldd) {
  for (int64_t i = 0; i < m; ++i) std::copy(src + i * lds, src + i * lds + H, dst + i * ldd);
}

template <typename T>
FUSED_RNN_INLINE void add_rows(int64_t m, int64_t H, const T* src, int64_t lds, T* dst, int64_t ldd) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < H; ++j) dst[i * ldd + j] += src[i * lds + j];
}

template <typename T>
void forward_task(const Task<T>& k) {
  const StepLayout& lay = *k.lay;
  const int64_t H = k.H, ld = k.ld, b0 = k.b0;
  auto row = [&](int64_t t, int64_t b) { return k.buf + (lay.offset[t] + b) * ld; };
  for (const auto s : c10::irange(lay.T)) {
    const int64_t t = k.reverse ? lay.T - 1 - s : s;
    const int64_t hi = std::min(lay.batch[t], k.b1), n = hi - b0;
    if (n <= 0) continue;
    T* c = row(t, b0);
    if (s == 0) {
      step_gemm(k.gemm, n, k.h_in + b0 * H, H, c, ld);
    } else if (!k.reverse) {
      step_gemm(k.gemm, n, row(t - 1, b0), ld, c, ld);
    } else {
      // Rows alive at t+1 carry their state; the others start their reverse pass here from h0.
      const int64_t carried = std::clamp<int64_t>(lay.batch[t + 1] - b0, 0, n);
      step_gemm(k.gemm, carried, row(t + 1, b0), ld, c, ld);
      step_gemm(k.gemm, n - carried, k.h_in + (b0 + carried) * H, H, c + carried * ld, ld);
    }
    activate<T>(n, H, c, ld, k.relu);
    if (!k.reverse) {  // sequences whose last step is t: rows [batch[t+1], batch[t])
      const int64_t first = std::max(lay.batch[t + 1], b0);
      if (first < hi) copy_rows<T>(hi - first, H, row(t, first), ld, k.h_out + first * H, H);
    }
  }
  if (k.reverse && k.b1 > b0) copy_rows<T>(k.b1 - b0, H, row(0, b0), ld, k.h_out + b0 * H, H);
}

template <typename T>
void backward_task(const Task<T>& k) {
  const StepLayout& lay = *k.lay;
  const int64_t H = k.H, ld = k.ld, b0 = k.b0;
  auto row = [&](int64_t t, int64_t b) { return k.buf + (lay.offset[t] + b) * ld; };
  auto yrow = [&](int64_t t, int64_t b) { return k.y + (lay.offset[t] + b) * ld; };
  // dh0 rows of this task start at zero; each row gets δ_first·W_hh once.
  if (k.b1 > b0) std::fill(k.h_out + b0 * H, k.h_out + k.b1 * H, T(0));
  for (const auto s : c10::irange(lay.T)) {
    // BPTT walks each direction against its forward order.
    const int64_t t = k.reverse ? s : lay.T - 1 - s;
    const int64_t hi = std::min(lay.batch[t], k.b1), n = hi - b0;
    if (n <= 0) continue;
    T* d = row(t, b0);
    // Rows that also live at the next step of the forward order get δ_next·W_hh; the rest get
    // the hy gradient (their forward pass ended at t).
    const int64_t carried = k.reverse ? (s == 0 ? 0 : n) : std::clamp<int64_t>(lay.batch[t + 1] - b0, 0, n);
    if (carried > 0) step_gemm(k.gemm, carried, k.reverse ? row(t - 1, b0) : row(t + 1, b0), ld, d, ld);
    add_rows<T>(n - carried, H, k.h_in + (b0 + carried) * H, H, d + carried * ld, ld);
    activation_grad<T>(n, H, d, ld, yrow(t, b0), ld, k.relu);
    if (k.reverse) {  // rows whose reverse pass began at t read h0 there
      const int64_t first = std::max(lay.batch[t + 1], b0);
      if (first < hi) step_gemm(k.gemm, hi - first, row(t, first), ld, k.h_out + first * H, H);
    }
  }
  if (!k.reverse && k.b1 > b0) step_gemm(k.gemm, k.b1 - b0, row(0, b0), ld, k.h_out + b0 * H, H);
}

template void forward_task<float>(const Task<float>&);
template void forward_task<double>(const Task<double>&);
template void backward_task<float>(const Task<float>&);
template void backward_task<double>(const Task<double>&);

}  // namespace fused_rnn::cpu::FUSED_RNN_CPU_ISA
