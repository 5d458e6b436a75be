// CUDA's built-ins for a kernel's source compiled as host C++ and run by cuda_on_cpu.h: include it
// after every other header and right before the kernel's (it defines CUDA's qualifiers, such as
// __shared__, as macros). It defines FUSED_RNN_CUDA_ON_CPU, under which a kernel header leaves out
// the CUDA toolkit's headers.
#pragma once

#define FUSED_RNN_CUDA_ON_CPU 1

#include <algorithm>
#include <cmath>

#include "cuda_on_cpu.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
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
}  // namespace cooperative_groups

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

// CUDA's overloaded math in the global namespace (fma(float, float, float) is fmaf, not a double fma).
using std::fma;
using std::max;
using std::min;
using std::tanh;
