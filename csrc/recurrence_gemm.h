// The recurrence as one library GEMM and one pointwise op per step (any device; see the .cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "recurrence.h"

namespace fused_rnn {

// The CUDA build takes this path for float32/float64 when B·H² is at least this (B128 H1024,
// B64 H2048, B512 H512, ...): there cuBLAS's tiled GEMM beats the persistent kernel's per-CTA
// mat-vec, while this path's cost is flat (cuBLAS fills few SMs with M = B rows) and the kernel's
// grows with B·H² (the measurements that place it: benchmarks/gpu_notes.md).
constexpr int64_t kGemmRecurrenceMinWork = int64_t(1) << 27;

// gemm: the device's own matrix product (RecurrenceKernels::gemm), or null for ATen's.
void recurrence_forward_gemm(const at::Tensor& out, const at::Tensor& h0, const at::Tensor& w_hh,
                             const StepLayout& lay, bool relu, const at::Tensor& hy, GemmFn gemm);
void recurrence_backward_gemm(const at::Tensor& dpre, const at::Tensor& y, const at::Tensor& ghy,
                              const at::Tensor& w_hh, const StepLayout& lay, bool relu, const at::Tensor& dh0,
                              GemmFn gemm);

}  // namespace fused_rnn
