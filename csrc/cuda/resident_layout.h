// Thread → data mapping of the SM-resident recurrence (resident_kernel.cuh), written once and
// compiled twice: by nvcc for the kernel and by the host compiler for its CPU emulation
// (resident_emulation.cpp, checked against a float64 reference in tests/test_resident_mapping.py).
// Every index the kernel computes comes from a function here, so the emulation exercises the
// kernel's own layout, not a re-derivation of it.
//
// The regime: one CTA per (batch tile of BT rows, direction) keeps all of M (W_hh forward, W_hhᵀ in
// BPTT) in registers for all T steps and the state v [2][BT][HK] double-buffered in shared memory,
// so a step is one mat-vec, a warp-shuffle reduction, the epilogue and one __syncthreads.
//
// Per step, lane `lane` of warp `warp` owns R rows j = row(warp, lane, r) of M and the k values
// k = 4·chunk(lane, q) + e (q < KPT/4, e < 4) of each; it holds M[j, k] in registers and reads v as
// float4 chunks. The KL lanes that share a row (consecutive lanes, lane % KL = kl) add their V =
// R·BT partial sums by a reduce-scatter butterfly over lane masks 1, 2, … KL/2: while a lane holds
// two or more values a stage halves them (the lane with the mask bit set keeps the upper half and
// sends the lower), after that a stage is an all-reduce. Lane kl then owns the values
// owned_value(kl, i), i < owned_count, and writes them if writes_outputs(kl).
#pragma once

#include <cstdint>
#include <type_traits>

#ifdef __CUDACC__
#define FUSED_RNN_HD __host__ __device__ __forceinline__
#else
#define FUSED_RNN_HD inline
#endif

namespace fused_rnn::resident {

constexpr int kWarp = 32;
// Steps of the pre-activation (and, in BPTT, of the forward output) each lane has in flight: its
// cp.async copies for step s + kPrefetch are issued at step s, so their global-memory latency
// overlaps kPrefetch steps of work instead of following the mat-vec.
constexpr int kPrefetch = 3;
constexpr int kRing = kPrefetch + 1;  // ring slots: step s reads slot s % kRing while s + kPrefetch fills

// KL lanes split a row's k range (KL·KPT ≥ H), each lane holds R rows, NW warps; C CTAs of a
// thread-block cluster (sm_90) split the rows: CTA rank r holds rows r·HJ .. r·HJ + HJ - 1 of M,
// computes those units of h_t and writes them into the state of every CTA of the cluster
// (distributed shared memory), and a cluster barrier replaces the per-step __syncthreads.
template <int KL_, int KPT_, int R_, int NW_, int MaxBT_, int C_ = 1>
struct Shape {
  static constexpr int KL = KL_;
  static constexpr int KPT = KPT_;
  static constexpr int R = R_;
  static constexpr int NW = NW_;
  static constexpr int MaxBT = MaxBT_;  // largest batch tile whose registers fit (ptxas gate)
  static constexpr int C = C_;          // CTAs per cluster (1: no cluster)
  static constexpr int JL = kWarp / KL;  // row groups per warp
  static constexpr int NT = NW * kWarp;  // threads per CTA
  static constexpr int QN = KPT / 4;     // float4 chunks per lane
  static constexpr int HK = KL * KPT;    // k capacity (v rows are padded to it with zeros)
  static constexpr int HJ = NW * JL * R; // row capacity of one CTA (of the cluster: C·HJ)
  static_assert(KL == 2 || KL == 4 || KL == 8 || KL == 16, "KL: a power of two that divides a warp");
  static_assert(KPT % 4 == 0, "k values are read as float4 chunks");
  static_assert(R == 1 || R == 2 || R == 4, "the reduce-scatter halves R·BT values: a power of two");
  static_assert(NT <= 1024, "at most 1024 threads per CTA");
  static_assert(C >= 1 && C <= 8, "a portable cluster: at most 8 CTAs");

  static FUSED_RNN_HD int row(int warp, int lane, int r) { return (warp * JL + lane / KL) * R + r; }
  // The row of M that slot r of a lane holds in CTA `rank` of the cluster.
  static FUSED_RNN_HD int row_in_cluster(int rank, int warp, int lane, int r) { return rank * HJ + row(warp, lane, r); }
  // Interleaved chunks: the 8 lanes of a quarter-warp read 8 distinct consecutive (or equal,
  // broadcast) 16-byte chunks, so a float4 shared-memory load has no bank conflict.
  static FUSED_RNN_HD int chunk(int lane, int q) { return q * KL + lane % KL; }
};

// Independent FMA chains per accumulator: a lane with few accumulators splits its k range so that
// the dependent chain is KPT / chains FMAs long.
template <int V>
constexpr int chains() {
  return V >= 4 ? 1 : 4 / V;
}

// Values a lane holds after the reduce-scatter of V values over KL lanes.
template <int KL, int V>
constexpr int owned_count() {
  return V >= KL ? V / KL : 1;
}

// Original index (r·BT + b) of the i-th value lane kl holds after the reduce-scatter.
template <int KL, int V>
FUSED_RNN_HD int owned_value(int kl, int i) {
  int index = i, n = V;
  for (int m = 1; m < KL; m <<= 1) {
    if (n >= 2) {
      n /= 2;
      if (kl & m) index += n;
    }
  }
  return index;
}

// The all-reduce stages leave several lanes with the same sums: the one with those mask bits clear
// writes them.
template <int KL, int V>
FUSED_RNN_HD bool writes_outputs(int kl) {
  int n = V;
  for (int m = 1; m < KL; m <<= 1) {
    if (n >= 2) {
      n /= 2;
    } else if (kl & m) {
      return false;
    }
  }
  return true;
}

// Shared-memory words: the state v [2][BT][HK] and the prefetch ring
// [kRing][inputs][owned][NT] (inputs = 1 forward: pre_t; 2 in BPTT: g_t and y_t).
template <class S, int BT>
constexpr int64_t state_words() {
  return int64_t(2) * BT * S::HK;
}
template <class S, int BT, bool Backward>
constexpr int64_t smem_bytes() {
  constexpr int V = S::R * BT;
  return (state_words<S, BT>() + int64_t(kRing) * (Backward ? 2 : 1) * owned_count<S::KL, V>() * S::NT) * 4;
}
FUSED_RNN_HD int64_t state_index(int HK, int BT, int64_t step, int b, int k) {
  return ((step & 1) * BT + b) * int64_t(HK) + k;
}
FUSED_RNN_HD int64_t ring_index(int NT, int inputs, int owned, int64_t step, int input, int i, int tid) {
  return (((step % kRing) * inputs + input) * owned + i) * int64_t(NT) + tid;
}

// Where the value (batch row b of the tile at c0, unit j, direction d) of processed step `step` lives
// in the step-major buffers [T·B, D·H]: element_at_step0 + step·step_stride (t = step ascending, or
// T - 1 - step descending). Computed once per lane, so a step adds one product instead of
// recomputing the whole index.
FUSED_RNN_HD int64_t step_stride(int64_t B, int64_t ld, bool ascending) { return ascending ? B * ld : -B * ld; }
FUSED_RNN_HD int64_t element_at_step0(int64_t T, int64_t B, int64_t ld, int64_t c0, int b, int d, int64_t H, int j,
                                      bool ascending) {
  return ((ascending ? 0 : T - 1) * B + c0 + b) * ld + int64_t(d) * H + j;
}

// The shapes, smallest first; the launcher takes the first whose capacities hold H.
//   H ≤ 32:  4 warps, 8 k values per lane                 W: 8 registers per lane
//   H ≤ 64:  8 warps, 16 k values per lane                W: 16
//   H ≤ 128: 16 warps, 32 k values per lane               W: 32
//   H ≤ 192: 12 warps, 48 k values and 2 rows per lane     W: 96 (384 threads: 168 registers a lane)
//   H ≤ 256: clusters of 2 CTAs (sm_90), each 128 rows: 16 warps, 8 lanes × 32 k per row, 2 rows
//            per lane                                      W: 64
//   H ≤ 512: clusters of 8 CTAs (sm_90), each 64 rows: 16 warps, 16 lanes × 32 k per row, 2 rows
//            per lane                                      W: 64
using Shape32 = Shape<4, 8, 1, 4, 8>;
using Shape64 = Shape<4, 16, 1, 8, 8>;
using Shape128 = Shape<4, 32, 1, 16, 8>;
using Shape192 = Shape<4, 48, 2, 12, 2>;
using Shape256C2 = Shape<8, 32, 2, 16, 2, 2>;
using Shape512C8 = Shape<16, 32, 2, 16, 2, 8>;
constexpr int kShapes = 6;
constexpr int64_t kMaxHidden = Shape512C8::HK;  // with clusters (sm_90)

template <class F>
void with_shape(int shape, F&& f) {
  switch (shape) {
    case 0: f(Shape32{}); break;
    case 1: f(Shape64{}); break;
    case 2: f(Shape128{}); break;
    case 3: f(Shape192{}); break;
    case 4: f(Shape256C2{}); break;
    default: f(Shape512C8{}); break;
  }
}

template <class F>
void with_batch_tile(int bt, F&& f) {
  switch (bt) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    default: f(std::integral_constant<int, 8>{}); break;
  }
}

struct Plan {
  int shape = -1;  // index into the shapes above; -1: H too large for this regime
  int bt = 0;      // batch rows per CTA
  int cluster = 0; // CTAs per cluster (the shape's C)
  int64_t ctas = 0;
};

// The shape that holds H (clusters only where the GPU has them: sm_90), and the smallest batch tile
// whose CTAs (C per tile and direction) still fit the SMs in one wave: a CTA's step time hardly
// depends on its batch rows, so more CTAs of fewer rows finish sooner until the SMs run out.
inline Plan plan(int64_t H, int64_t B, int64_t D, int sms, bool clusters = true) {
  Plan p;
  int max_bt = 0;
  for (int s = 0; s < kShapes && p.shape < 0; ++s) {
    with_shape(s, [&](auto shape) {
      using S = decltype(shape);
      if (H <= S::HK && H <= int64_t(S::C) * S::HJ && (S::C == 1 || clusters)) {
        p.shape = s;
        p.cluster = S::C;
        max_bt = S::MaxBT;
      }
    });
  }
  if (p.shape < 0) return p;
  p.bt = max_bt;
  for (int bt = 1; bt < max_bt; bt *= 2) {
    if (p.cluster * D * ((B + bt - 1) / bt) <= sms) {
      p.bt = bt;
      break;
    }
  }
  p.ctas = p.cluster * D * ((B + p.bt - 1) / p.bt);
  return p;
}

}  // namespace fused_rnn::resident
