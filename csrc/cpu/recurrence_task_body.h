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

template <typename scalar_t>
FUSED_RNN_INLINE void step_gemm(const StepGemm<scalar_t>& g, int64_t m, const scalar_t* a, int64_t lda, scalar_t* c, int64_t ldc) {
  if (m <= 0) return;
  if (g.blas) {
    blas_gemm_acc<scalar_t>(g.transpose, m, g.H, g.H, a, lda, g.w, g.H, c, ldc);
  } else {
    gemm_acc<scalar_t>(m, g.H, g.H, a, lda, g.panels, c, ldc);
  }
}

template <typename scalar_t>
FUSED_RNN_INLINE void copy_rows(int64_t m, int64_t H, const scalar_t* src, int64_t lds, scalar_t* dst, int64_t ldd) {
  for (int64_t i = 0; i < m; ++i) std::copy(src + i * lds, src + i * lds + H, dst + i * ldd);
}

template <typename scalar_t>
FUSED_RNN_INLINE void add_rows(int64_t m, int64_t H, const scalar_t* src, int64_t lds, scalar_t* dst, int64_t ldd) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < H; ++j) dst[i * ldd + j] += src[i * lds + j];
}

template <typename scalar_t>
void forward_task(const Task<scalar_t>& task) {
  const StepLayout& lay = *task.lay;
  const StepRule rule = lay.rule();
  const int64_t H = task.H, ld = task.ld, b0 = task.b0;
  auto row = [&](int64_t t, int64_t b) { return task.buf + (lay.offset[t] + b) * ld; };
  for (const auto s : c10::irange(lay.T)) {
    const int64_t t = rule.step(s, task.reverse);
    const int64_t hi = std::min(lay.batch[t], task.b1), n = hi - b0;
    if (n <= 0) continue;
    scalar_t* c = row(t, b0);
    // Continued rows add the previous step's state; the others begin here, from h0.
    const int64_t carried = std::clamp<int64_t>(rule.continued_rows(t, task.reverse) - b0, 0, n);
    if (carried > 0) step_gemm(task.gemm, carried, row(rule.prev_step(t, task.reverse), b0), ld, c, ld);
    step_gemm(task.gemm, n - carried, task.carry_in + (b0 + carried) * H, H, c + carried * ld, ld);
    activate<scalar_t>(n, H, c, ld, task.relu);
    const int64_t first = std::max(rule.first_ending_row(t, task.reverse), b0);  // rows whose pass ends here
    if (first < hi) copy_rows<scalar_t>(hi - first, H, row(t, first), ld, task.carry_out + first * H, H);
  }
}

template <typename scalar_t>
void backward_task(const Task<scalar_t>& task) {
  const StepLayout& lay = *task.lay;
  const StepRule rule = lay.rule();
  const int64_t H = task.H, ld = task.ld, b0 = task.b0;
  auto row = [&](int64_t t, int64_t b) { return task.buf + (lay.offset[t] + b) * ld; };
  auto yrow = [&](int64_t t, int64_t b) { return task.y + (lay.offset[t] + b) * ld; };
  // dh0 rows of this task start at zero; each row gets δ·W_hh once, at the step its pass began.
  if (task.b1 > b0) std::fill(task.carry_out + b0 * H, task.carry_out + task.b1 * H, scalar_t(0));
  for (const auto s : c10::irange(lay.T)) {
    const int64_t t = rule.step(s, !task.reverse);  // against the direction's forward order
    const int64_t hi = std::min(lay.batch[t], task.b1), n = hi - b0;
    if (n <= 0) continue;
    scalar_t* d = row(t, b0);
    // Rows that live on at the next step of the forward order get δ_next·W_hh; the rest end their
    // pass here and get the hy gradient.
    const int64_t carried = std::clamp<int64_t>(rule.first_ending_row(t, task.reverse) - b0, 0, n);
    if (carried > 0) step_gemm(task.gemm, carried, row(rule.next_step(t, task.reverse), b0), ld, d, ld);
    add_rows<scalar_t>(n - carried, H, task.carry_in + (b0 + carried) * H, H, d + carried * ld, ld);
    activation_grad<scalar_t>(n, H, d, ld, yrow(t, b0), ld, task.relu);
    const int64_t first = std::max(rule.continued_rows(t, task.reverse), b0);  // rows whose pass began here
    if (first < hi) step_gemm(task.gemm, hi - first, row(t, first), ld, task.carry_out + first * H, H);
  }
}

template void forward_task<float>(const Task<float>&);
template void forward_task<double>(const Task<double>&);
template void backward_task<float>(const Task<float>&);
template void backward_task<double>(const Task<double>&);

}  // namespace fused_rnn::cpu::FUSED_RNN_CPU_ISA
