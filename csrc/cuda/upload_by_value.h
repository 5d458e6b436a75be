// Host values to a new device tensor without a host→device copy (upload_by_value.cu): sync-free
// and safe to capture in a CUDA graph.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace fused_rnn {
namespace cuda {

// A new int64 tensor [values.size()] on device, written on the current stream.
at::Tensor upload_by_value(const std::vector<int64_t>& values, at::Device device);

}  // namespace cuda
}  // namespace fused_rnn
