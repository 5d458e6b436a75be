// CUDA's built-ins for a kernel's source compiled as host C++ and run by cuda_on_cpu.h: include it
// after every other header and right before the kernel's (it defines CUDA's qualifiers, such as
// __shared__, as macros). It defines FUSED_RNN_CUDA_ON_CPU, under which a kernel header leaves out
// the CUDA toolkit's headers.
#pragma once

#define FUSED_RNN_CUDA_ON_CPU 1

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cuda_on_cpu.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// (no std header may follow: theirs spell __attribute__((__noinline__)))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__  // dynamic shared memory only: see cuda_on_cpu.h
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__ __restrict
#define threadIdx (::fused_rnn::cuda_on_cpu::thread_idx())
#define blockIdx (::fused_rnn::cuda_on_cpu::block_idx())
#define blockDim (::fused_rnn::cuda_on_cpu::block_dim())
#define gridDim (::fused_rnn::cuda_on_cpu::grid_dim())

inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::fused_rnn::cuda_on_cpu::block_barrier(file, line);
}

namespace cooperative_groups {
struct grid_group {
  void sync(const char* file = __builtin_FILE(), int line = __builtin_LINE()) const {
    ::fused_rnn::cuda_on_cpu::grid_barrier(file, line);
  }
};
inline grid_group this_grid() { return {}; }
struct cluster_group {
  unsigned block_rank() const { return ::fused_rnn::cuda_on_cpu::cluster_rank(); }
  void sync(const char* file = __builtin_FILE(), int line = __builtin_LINE()) const {
    ::fused_rnn::cuda_on_cpu::cluster_barrier(file, line);
  }
};
inline cluster_group this_cluster() { return {}; }
}  // namespace cooperative_groups

inline float __shfl_xor_sync(unsigned mask, float value, int lane_mask, const char* file = __builtin_FILE(),
                             int line = __builtin_LINE()) {
  return __builtin_bit_cast(float, ::fused_rnn::cuda_on_cpu::shfl_xor(mask, __builtin_bit_cast(uint32_t, value),
                                                                        lane_mask, file, line));
}
// __trap(): the thread stops the launch with an error (cuda_on_cpu.h).
inline void __trap(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::fused_rnn::cuda_on_cpu::trap(file, line);
}
// A generic → shared address: the offset in the CTA's shared memory.
inline unsigned __cvta_generic_to_shared(const void* p) { return ::fused_rnn::cuda_on_cpu::shared_offset(p); }
inline unsigned __float_as_uint(float x) { return __builtin_bit_cast(unsigned, x); }
inline float __uint_as_float(unsigned x) { return __builtin_bit_cast(float, x); }

// may_alias: the kernels read float arrays through these, as CUDA allows.
struct __attribute__((aligned(16), may_alias)) float4 {
  float x, y, z, w;
};
struct __attribute__((aligned(16), may_alias)) double2 {
  double x, y;
};

template <typename T>
inline T __ldcg(const T* p) {
  return *p;
}
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

// CUDA's overloaded math in the global namespace (fma(float, float, float) is fmaf, not a double fma).
using std::fma;
using std::max;
using std::min;
using std::tanh;
