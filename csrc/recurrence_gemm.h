// The recurrence as one library GEMM and one pointwise op per step (any device; see the .cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "recurrence.h"

namespace fused_rnn {

// The CUDA build takes this path for float32/float64 when B·H² is at least this (B128 H1024,
// B64 H2048, B512 H512, ...). Measured on an H200 (benchmarks/results/h200-20261127-0504.md), fp32
// µs/step, persistent kernel vs this path: B64 H1024 25.8 vs 36.7, B64 H2048 135 vs 40,
// B256 H1024 90 vs 40. This path is flat at ~40 µs/step there (cuBLAS fills few SMs with M = B rows)
// while the kernel grows with B·H², so the switch sits between 2^26 and 2^28.
constexpr int64_t kGemmRecurrenceMinWork = int64_t(1) << 27;

void recurrence_forward_gemm(const at::Tensor& out, const at::Tensor& h0, const at::Tensor& w_hh,
                             const at::Tensor& batch_sizes, bool relu, const at::Tensor& hy);
void recurrence_backward_gemm(const at::Tensor& dpre, const at::Tensor& y, const at::Tensor& ghy,
                              const at::Tensor& w_hh, const at::Tensor& batch_sizes, bool relu,
                              const at::Tensor& dh0);

}  // namespace fused_rnn
