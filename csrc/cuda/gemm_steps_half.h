// The per-step GEMM regime for float16/bfloat16 on CUDA (gemm_steps_half.cu): the recurrence.h
// contract, fp32 products and activations, one rounding per value.
#pragma once

#include <ATen/core/Tensor.h>

#include "recurrence.h"

namespace fused_rnn {
namespace cuda {

// Run the layer's forward / BPTT recurrence and return true; or return false, doing nothing, where
// it does not apply (another dtype, or cuBLAS's entry point missing from the process: then ATen's
// per-step path, recurrence_gemm.cpp, runs instead).
bool gemm_steps_half_forward(const at::Tensor& out, const at::Tensor& h0, const at::Tensor& w_hh,
                             const StepLayout& lay, bool relu, const at::Tensor& hy);
bool gemm_steps_half_backward(const at::Tensor& dpre, const at::Tensor& y, const at::Tensor& ghy,
                              const at::Tensor& w_hh, const StepLayout& lay, bool relu, const at::Tensor& dh0);

// FUSED_RNN_CUDA_GEMM_GRAPH=reuse: drops every recorded step loop and its staging tensors, after
// synchronising the devices they ran on; returns how many it dropped (fused_rnn._C.clear_step_graphs).
int64_t clear_step_graphs();

}  // namespace cuda
}  // namespace fused_rnn
