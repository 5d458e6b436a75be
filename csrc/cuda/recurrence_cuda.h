// The CUDA recurrence (forward and BPTT of one layer, all directions), same contract as the CPU one
// in recurrence.h; only compiled in CUDA builds (FUSED_RNN_WITH_CUDA).
#pragma once

#include <ATen/core/Tensor.h>
#include <cuda_runtime_api.h>

#include "recurrence.h"

namespace fused_rnn {

void recurrence_forward_cuda(const at::Tensor& out, const at::Tensor& h0, const at::Tensor& w_hh,
                             const StepLayout& lay, bool relu, const at::Tensor& hy);
void recurrence_backward_cuda(const at::Tensor& dpre, const at::Tensor& y, const at::Tensor& ghy,
                              const at::Tensor& w_hh, const StepLayout& lay, bool relu, const at::Tensor& dh0);

namespace cuda {
struct RecParams;
// Defined in recurrence_launch.cuh; instantiated for float/double in recurrence_cuda.cu and for
// Half/BFloat16 in recurrence_cuda_half.cu (two translation units that compile in parallel).
template <typename T>
void launch_recurrence(const RecParams& p, at::Device device, cudaStream_t stream);
// The SM-resident regime (resident_cuda.cu), float32 only: launches and returns true, or returns
// false without launching when the call is outside it (packed input, H over its largest shape, a
// cluster shape where clusters is false (not sm_90) or the GPU cannot schedule the cluster).
bool launch_resident(const RecParams& p, int sms, bool clusters, cudaStream_t stream);
// The tensor-core resident regime (resident_mma_cuda.cu): float16 and bfloat16, and float32 on TF32
// (the caller decides that TF32 is allowed). Launches and returns true, or returns false without
// launching (packed input, H over its largest tile count, another dtype).
// clusters: whether thread-block clusters may be used (sm_90) for the larger H.
bool launch_resident_mma(const RecParams& p, at::ScalarType dtype, bool clusters, cudaStream_t stream);
}  // namespace cuda

}  // namespace fused_rnn
