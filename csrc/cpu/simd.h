// Hand-vectorised building blocks of the CPU recurrence, written once with GCC/Clang vector
// extensions and compiled once per instruction set: recurrence_tasks_baseline.cpp (any x86-64)
// and recurrence_tasks_avx2.cpp (AVX2+FMA for every function in the file, picked at run time by
// recurrence_cpu.cpp). Each includer names its namespace, FUSED_RNN_CPU_ISA, so the two builds
// of these inline functions never meet at link time.
//
//   gemm_acc      C[M, N] += A[M, K] · W, W given as panels (panel_layout.h); kTileRows×NR register tile
//   activate      C = tanh(C) or relu(C) in place on a [M, N] block
//   activation_grad  D *= act'(Y) in place
#pragma once

#ifndef FUSED_RNN_CPU_ISA
#error "define FUSED_RNN_CPU_ISA (the namespace of this build) before including simd.h"
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/panel_layout.h"

#ifndef FUSED_RNN_INLINE
#define FUSED_RNN_INLINE inline __attribute__((always_inline))
#endif

namespace fused_rnn::cpu::FUSED_RNN_CPU_ISA {

template <typename T>
struct Simd {
  typedef T vec __attribute__((vector_size(32)));  // 8 floats or 4 doubles
  static constexpr int kLanes = 32 / sizeof(T);
  static constexpr int kNR = kPanelWidth<T>;
  static constexpr int kMR = kTileRows;
  static_assert(kNR == 2 * kLanes, "a panel row is two vectors");

  static FUSED_RNN_INLINE vec load(const T* p) {
    vec v;
    std::memcpy(&v, p, sizeof(vec));
    return v;
  }
  static FUSED_RNN_INLINE void store(T* p, vec v) { std::memcpy(p, &v, sizeof(vec)); }
  // Every lane x, as one initializer: in a file compiled for AVX2 GCC makes that one vbroadcastss
  // from memory (load port only). Not vec{} + x: adding +0.0 is not an identity for -0.0, so the
  // compiler has to keep that add in the innermost loop. Not a shuffle of lane 0: that becomes a
  // scalar load plus a register broadcast, which takes an FMA pipe on some cores (a third slower on
  // Zen 3: benchmarks/cpu_notes.md). And only in a file compiled for the target: a function-level
  // target attribute lowers this as the baseline ISA (scalar loads + vinsertps) before inlining.
  static FUSED_RNN_INLINE vec splat(T x) {
    if constexpr (kLanes == 8) {
      return vec{x, x, x, x, x, x, x, x};
    } else {
      return vec{x, x, x, x};
    }
  }
};

// C[MR_, ncols] += A[MR_, K] · panel[K, NR], ncols <= NR. Accumulators stay in registers.
template <typename T, int MR_>
FUSED_RNN_INLINE void gemm_tile(int64_t K, const T* a, int64_t lda, const T* panel, T* c, int64_t ldc,
                                int64_t ncols) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int L = S::kLanes;
  vec acc0[MR_], acc1[MR_];
  for (int i = 0; i < MR_; ++i) {
    if (ncols == S::kNR) {
      acc0[i] = S::load(c + i * ldc);
      acc1[i] = S::load(c + i * ldc + L);
    } else {
      T tmp[S::kNR] = {};
      std::copy(c + i * ldc, c + i * ldc + ncols, tmp);
      acc0[i] = S::load(tmp);
      acc1[i] = S::load(tmp + L);
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    const vec b0 = S::load(panel + k * S::kNR);
    const vec b1 = S::load(panel + k * S::kNR + L);
    for (int i = 0; i < MR_; ++i) {
      const vec ai = S::splat(a[i * lda + k]);
      acc0[i] += ai * b0;
      acc1[i] += ai * b1;
    }
  }
  for (int i = 0; i < MR_; ++i) {
    if (ncols == S::kNR) {
      S::store(c + i * ldc, acc0[i]);
      S::store(c + i * ldc + L, acc1[i]);
    } else {
      T tmp[S::kNR];
      S::store(tmp, acc0[i]);
      S::store(tmp + L, acc1[i]);
      std::copy(tmp, tmp + ncols, c + i * ldc);
    }
  }
}

// C[M, N] += A[M, K] · W, W as panels from pack_panels (panel_layout.h).
template <typename T>
FUSED_RNN_INLINE void gemm_acc(int64_t M, int64_t N, int64_t K, const T* a, int64_t lda, const T* panels, T* c,
                               int64_t ldc) {
  constexpr int NR = Simd<T>::kNR, MR = Simd<T>::kMR;
  for (int64_t p = 0; p * NR < N; ++p) {
    const T* panel = panels + p * K * NR;
    const int64_t ncols = std::min<int64_t>(NR, N - p * NR);
    T* cp = c + p * NR;
    int64_t i = 0;
    for (; i + MR <= M; i += MR) gemm_tile<T, MR>(K, a + i * lda, lda, panel, cp + i * ldc, ldc, ncols);
    switch (M - i) {
      case 5: gemm_tile<T, 5>(K, a + i * lda, lda, panel, cp + i * ldc, ldc, ncols); break;
      case 4: gemm_tile<T, 4>(K, a + i * lda, lda, panel, cp + i * ldc, ldc, ncols); break;
      case 3: gemm_tile<T, 3>(K, a + i * lda, lda, panel, cp + i * ldc, ldc, ncols); break;
      case 2: gemm_tile<T, 2>(K, a + i * lda, lda, panel, cp + i * ldc, ldc, ncols); break;
      case 1: gemm_tile<T, 1>(K, a + i * lda, lda, panel, cp + i * ldc, ldc, ncols); break;
      default: break;
    }
  }
}

// Applies f to a row of n elements a vector at a time; the tail goes through a padded copy so f
// only ever sees whole vectors (written explicitly: GCC does not vectorise these loops itself).
template <typename T, typename F>
FUSED_RNN_INLINE void for_each_vec(int64_t n, T* x, F f) {
  using S = Simd<T>;
  constexpr int L = S::kLanes;
  int64_t j = 0;
  for (; j + L <= n; j += L) S::store(x + j, f(S::load(x + j), j));
  if (j < n) {
    T tmp[L] = {};
    std::copy(x + j, x + n, tmp);
    S::store(tmp, f(S::load(tmp), j));
    std::copy(tmp, tmp + (n - j), x + j);
  }
}

// tanh for float vectors: the [13/6] rational approximation used by Eigen's fast tanh, on x
// clamped to ±7.90531 (where it reaches ±1 in float). A few ulp of error
// (tests/test_cpu_kernels.py bounds it); NaN passes through the clamps unchanged. Beyond |x| = 9,
// where float tanh is exactly ±1, the result is exactly ±1 as well (FMA rounding alone can leave
// the rational 1 ulp short), so saturated units have tanh' = 0 exactly, as in nn.RNN. Below
// |x| = 2^-12 the result is x itself, within 1/3 ulp of tanh x (x - x³/3): there the rational's
// numerator p·x underflows into subnormals and loses digits (some 100 ulp near 1e-38).
FUSED_RNN_INLINE Simd<float>::vec tanh_rational(Simd<float>::vec x_in) {
  using S = Simd<float>;
  const S::vec hi = S::splat(7.90531110763549805f), lo = -hi;
  const S::vec sat = S::splat(9.0f), one = S::splat(1.0f), tiny = S::splat(0x1p-12f);
  S::vec x = x_in > hi ? hi : x_in;
  x = x < lo ? lo : x;
  const S::vec x2 = x * x;
  S::vec p = S::splat(-2.76076847742355e-16f);
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  p = p * x;
  S::vec q = S::splat(1.19825839466702e-06f);
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  S::vec r = p / q;
  const S::vec ax = x_in < -x_in ? -x_in : x_in;
  r = ax < tiny ? x_in : r;
  r = x_in > sat ? one : r;
  return x_in < -sat ? -one : r;
}

template <typename T>
FUSED_RNN_INLINE void activate(int64_t M, int64_t N, T* c, int64_t ldc, bool relu) {
  using vec = typename Simd<T>::vec;
  const vec zero = Simd<T>::splat(T(0));
  for (int64_t i = 0; i < M; ++i) {
    T* row = c + i * ldc;
    if (relu) {
      // Select on x < 0, not x > 0, so NaN propagates as through nn.RNN's relu (clamp_min).
      for_each_vec<T>(N, row, [&](vec x, int64_t) { return x < zero ? zero : x; });
    } else if constexpr (sizeof(T) == sizeof(float)) {
      for_each_vec<T>(N, row, [&](vec x, int64_t) { return tanh_rational(x); });
    } else {
      for (int64_t j = 0; j < N; ++j) row[j] = std::tanh(row[j]);  // float64: libm's, speed secondary
    }
  }
}

// D[M, N] *= act'(Y): tanh' = 1 - y², relu' = [!(y <= 0)]: like nn.RNN's threshold_backward, a NaN
// output passes its gradient through (selecting on y > 0 would zero it).
template <typename T>
FUSED_RNN_INLINE void activation_grad(int64_t M, int64_t N, T* d, int64_t ldd, const T* y, int64_t ldy, bool relu) {
  using S = Simd<T>;
  using vec = typename S::vec;
  const vec zero = S::splat(T(0)), one = S::splat(T(1));
  for (int64_t i = 0; i < M; ++i) {
    T* drow = d + i * ldd;
    const T* yrow = y + i * ldy;
    int64_t j = 0;
    for (; j + S::kLanes <= N; j += S::kLanes) {
      const vec yv = S::load(yrow + j), dv = S::load(drow + j);
      S::store(drow + j, relu ? (yv <= zero ? zero : dv) : dv * (one - yv * yv));
    }
    for (; j < N; ++j) drow[j] = relu ? (yrow[j] <= T(0) ? T(0) : drow[j]) : drow[j] * (T(1) - yrow[j] * yrow[j]);
  }
}

}  // namespace fused_rnn::cpu::FUSED_RNN_CPU_ISA
