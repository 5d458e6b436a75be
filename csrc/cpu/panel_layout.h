// The packed layout of W_hh that the CPU micro-kernel (simd.h) reads, shared by every instruction-set
// build of it: packing happens once per call in recurrence_cpu.cpp, whichever build then runs.
//
//   panels  [ceil(N / NR), K, NR]: column panels NR wide, zero padded, NR = kPanelWidth<T>
//           (two 32-byte vectors: 16 floats or 8 doubles)
#pragma once

#include <cstdint>

namespace fused_rnn::cpu {

template <typename T>
inline constexpr int kPanelWidth = 64 / sizeof(T);

// Rows of the micro-kernel's register tile: 6 rows x 2 vectors = 12 accumulators, enough to hide
// the FMA latency (4 rows were measurably slower once the broadcasts were single loads:
// benchmarks/cpu_notes.md).
inline constexpr int kTileRows = 6;

// Panels of the [K, N] matrix whose element (k, n) is w[k * stride_k + n * stride_n].
template <typename T>
void pack_panels(const T* w, int64_t K, int64_t N, int64_t stride_k, int64_t stride_n, T* panels) {
  constexpr int NR = kPanelWidth<T>;
  for (int64_t p = 0; p * NR < N; ++p) {
    T* dst = panels + p * K * NR;
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t j = 0; j < NR; ++j) {
        const int64_t n = p * NR + j;
        dst[k * NR + j] = n < N ? w[k * stride_k + n * stride_n] : T(0);
      }
    }
  }
}

template <typename T>
int64_t packed_size(int64_t K, int64_t N) {
  constexpr int NR = kPanelWidth<T>;
  return (N + NR - 1) / NR * NR * K;
}

}  // namespace fused_rnn::cpu
