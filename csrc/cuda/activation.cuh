// The activation of every CUDA recurrence kernel, in the accumulation type. relu selects on z < 0 so
// that NaN propagates as through nn.RNN (its gradient, on y <= 0, is written where it is used).
#pragma once

namespace fused_rnn {
namespace cuda {

__device__ __forceinline__ float act(float z, bool relu) { return relu ? (z < 0.f ? 0.f : z) : tanhf(z); }
__device__ __forceinline__ double act(double z, bool relu) { return relu ? (z < 0. ? 0. : z) : tanh(z); }

}  // namespace cuda
}  // namespace fused_rnn
