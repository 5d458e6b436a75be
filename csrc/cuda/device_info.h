// The current CUDA device's attributes that the launch planners need, queried once per device.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <mutex>

#include "cuda/device_attributes.h"

namespace fused_rnn {
namespace cuda {

// The current device's attributes, queried once per device and process (they never change), not
// on every launch.
inline DeviceAttributes device_info() {
  constexpr int kMaxDevices = 64;
  static DeviceAttributes known[kMaxDevices];
  static std::once_flag queried[kMaxDevices];
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  TORCH_INTERNAL_ASSERT(dev >= 0 && dev < kMaxDevices, "fused_rnn: device index ", dev, " out of range");
  std::call_once(queried[dev], [dev] {
    DeviceAttributes info;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&info.sms, cudaDevAttrMultiProcessorCount, dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&info.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&info.coop, cudaDevAttrCooperativeLaunch, dev));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&info.major, cudaDevAttrComputeCapabilityMajor, dev));
    known[dev] = info;
  });
  return known[dev];
}

}  // namespace cuda
}  // namespace fused_rnn
