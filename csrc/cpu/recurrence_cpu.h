// The CPU kernels of the recurrence interface (recurrence.h), registered in ops_cpu.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include "recurrence.h"

namespace fused_rnn {

void recurrence_forward_cpu(const at::Tensor& out, const at::Tensor& h0, const at::Tensor& w_hh,
                            const StepLayout& lay, bool relu, const at::Tensor& hy);
void recurrence_backward_cpu(const at::Tensor& dpre, const at::Tensor& y, const at::Tensor& ghy,
                             const at::Tensor& w_hh, const StepLayout& lay, bool relu, const at::Tensor& dh0);
bool small_projection_cpu(const at::Tensor& out, const at::Tensor& in, at::TensorList params, int64_t D,
                          bool has_biases);
bool small_layer_grads_cpu(const at::Tensor& dpre, const at::Tensor& in, const at::Tensor& y, const at::Tensor& h0,
                           const StepLayout& lay, at::TensorList params, int64_t D, bool has_biases, at::Tensor* grads,
                           at::Tensor& dx);

// "avx2" or "baseline": the build of the task loops the CPU kernels run now (the CPU's instruction
// sets and the FUSED_RNN_CPU_ISA switch decide).
const char* cpu_isa_in_use();

}  // namespace fused_rnn
