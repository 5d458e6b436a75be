// The recurrence as one library GEMM and one pointwise op per step (any device; see the .cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "recurrence.h"

namespace fused_rnn {

// The CUDA build takes this path for float32/float64 when B·H² is at least this (B64 H1024,
// B256 H512, ...); the H200 measurement behind the number is in benchmarks/results/.
constexpr int64_t kGemmRecurrenceMinWork = int64_t(1) << 26;

void recurrence_forward_gemm(const at::Tensor& out, const at::Tensor& h0, const at::Tensor& w_hh,
                             const at::Tensor& batch_sizes, bool relu, const at::Tensor& hy);
void recurrence_backward_gemm(const at::Tensor& dpre, const at::Tensor& y, const at::Tensor& ghy,
                              const at::Tensor& w_hh, const at::Tensor& batch_sizes, bool relu,
                              const at::Tensor& dh0);

}  // namespace fused_rnn
