// The attributes of a CUDA device that the launch planners need (device_info.h queries them).
// Plain C++, so that plans can also be made for a device described by hand (recurrence_plan.h).
#pragma once

namespace fused_rnn {
namespace cuda {

struct DeviceAttributes {
  int sms = 0, smem_optin = 0, coop = 0, major = 0;  // major: compute capability (9: clusters)
};

}  // namespace cuda
}  // namespace fused_rnn
