// A minimal standalone program for the open question of compute-sanitizer racecheck on bfloat16
// (benchmarks/gpu_notes.md): every bf16 regime of the recurrence kernel stopped racecheck with
// "Internal Sanitizer Error: The Sanitizer failed to handle a hardware exception", while memcheck,
// float32 and float64 were clean. This program has none of the recurrence: one kernel converts
// 16-bit values from global memory to float (the kernel's static_cast<acc_t>(buf[idx])), stages
// them in shared memory, synchronises, reduces and converts back (static_cast<T>(v)). Built three
// ways (racecheck_probe.py does it): with c10::BFloat16 (torch's type, as the recurrence kernel), with
// CUDA's __nv_bfloat16, and with c10::Half. If racecheck also fails here, the tool is at fault for
// that type; if it passes, the cause is in the recurrence kernel.
//
//   nvcc -std=c++17 -arch=sm_90 [-DPROBE_TYPE=1|2|3] -I<torch include> bf16_minimal.cu -o probe
//   compute-sanitizer --tool racecheck ./probe
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#ifndef PROBE_TYPE
#define PROBE_TYPE 1
#endif
#if PROBE_TYPE == 1
#include <c10/util/BFloat16.h>
using T = c10::BFloat16;
__host__ __device__ inline float to_float(T v) { return static_cast<float>(v); }
__host__ __device__ inline T from_float(float v) { return static_cast<T>(v); }
#elif PROBE_TYPE == 2
using T = __nv_bfloat16;
__device__ inline float to_float(T v) { return __bfloat162float(v); }
__device__ inline T from_float(float v) { return __float2bfloat16_rn(v); }
#else
#include <c10/util/Half.h>
using T = c10::Half;
__host__ __device__ inline float to_float(T v) { return static_cast<float>(v); }
__host__ __device__ inline T from_float(float v) { return static_cast<T>(v); }
#endif

constexpr int kThreads = 256;

// out[b] = Σ_i in[b][i] over a row of n values staged through shared memory, for T steps in place
// (each step adds the row sum back into element 0), with the kernel's barrier pattern.
__global__ void probe(T* data, int n, int steps) {
  __shared__ float row[kThreads];
  T* mine = data + blockIdx.x * n;
  for (int s = 0; s < steps; ++s) {
    float v = 0.f;
    for (int i = threadIdx.x; i < n; i += kThreads) v += to_float(mine[i]);
    row[threadIdx.x] = v;
    __syncthreads();
    for (int w = kThreads / 2; w > 0; w /= 2) {
      if (threadIdx.x < w) row[threadIdx.x] += row[threadIdx.x + w];
      __syncthreads();
    }
    if (threadIdx.x == 0) mine[0] = from_float(0.5f * row[0]);
    __syncthreads();
  }
}

int main() {
  const int blocks = 8, n = 1000, steps = 16;
  T* d = nullptr;
  if (cudaMalloc(&d, sizeof(T) * blocks * n) != cudaSuccess) return 2;
  T* h = static_cast<T*>(std::malloc(sizeof(T) * blocks * n));
  const unsigned short one = PROBE_TYPE == 3 ? 0x3C00 : 0x3F80;  // 1.0 in float16 / bfloat16 bits
  for (int i = 0; i < blocks * n; ++i) std::memcpy(&h[i], &one, sizeof(one));
  cudaMemcpy(d, h, sizeof(T) * blocks * n, cudaMemcpyHostToDevice);
  probe<<<blocks, kThreads>>>(d, n, steps);
  const cudaError_t err = cudaDeviceSynchronize();
  std::printf("probe type %d: %s\n", PROBE_TYPE, cudaGetErrorString(err));
  cudaFree(d);
  std::free(h);
  return err == cudaSuccess ? 0 : 1;
}
