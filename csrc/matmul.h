// The stack's matrix products (rnn_stack.cpp, recurrence_gemm.cpp), through the device's own GEMM
// where it takes the call (RecurrenceKernels::gemm), else ATen's.
#pragma once

#include <ATen/core/Tensor.h>

#include "recurrence.h"

namespace fused_rnn {

// c = addend + a·b, written into c (a view of any strides; it never aliases a or b).
//   addend undefined: c = a·b;   addend is c itself: c += a·b;   else addend broadcasts to c (a bias).
// device_gemm: RecurrenceKernels::gemm, or null for ATen's (at::mm_out / Tensor::addmm_ /
// at::addmm_out: what the stack called before the hook existed).
void matmul_into(GemmFn device_gemm, const at::Tensor& c, const at::Tensor& a, const at::Tensor& b,
                 const at::Tensor& addend = at::Tensor());

// a·b in a new tensor [a.size(0), b.size(1)] (contiguous), through matmul_into.
at::Tensor matmul(GemmFn device_gemm, const at::Tensor& a, const at::Tensor& b);

}  // namespace fused_rnn
