// Thread → data mapping of the tensor-core resident recurrence (resident_mma_kernel.cuh), written once
// and compiled twice: by nvcc for the kernel and by the host compiler for its CPU emulation
// (resident_emulation.cpp, tests/test_resident_mapping.py), like resident_layout.h.
//
// The regime: one CTA per (batch tile of up to 8 rows, direction); warp w owns the 16 rows
// 16w .. 16w + 15 of M (W_hh forward, W_hhᵀ in BPTT) and holds them, for every k tile, as mma.sync A
// fragments in registers for all T steps. Per step a warp issues one mma per k tile with the state
// as the B operand (K × 8: k by batch row) read from shared memory, adds its accumulator chains,
// and applies the epilogue to the four C values each lane owns; one __syncthreads per step.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 / mma.m16n8k8"), lane = 4·g + t
// with g = lane / 4 (groupID) and t = lane % 4 (threadID_in_group):
//   m16n8k16 (.f16, .bf16): A 16×16 in 8 elements (4 registers of 2), B 16×8 in 4 (2 registers of 2)
//     a_i: row g + 8·((i / 2) % 2), col 2t + i % 2 + 8·(i / 4)     b_i: row (k) 2t + i % 2 + 8·(i / 2), col g
//   m16n8k8 (.tf32): A 16×8 in 4 elements (4 registers), B 8×8 in 2 (2 registers)
//     a_i: row g + 8·(i % 2), col t + 4·(i / 2)                    b_i: row (k) t + 4·i, col g
//   C/D 16×8 fp32, both shapes: c_i: row g + 8·(i / 2), col 2t + i % 2
// Element i of a fragment sits in register i / per_register, in its low half when i is even
// (f16/bf16 pairs).
#pragma once

#include <cstdint>
#include <type_traits>

#ifndef FUSED_RNN_HD
#ifdef __CUDACC__
#define FUSED_RNN_HD __host__ __device__ __forceinline__
#else
#define FUSED_RNN_HD inline
#endif
#endif

namespace fused_rnn::mma {

constexpr int kWarp = 32;
constexpr int kRowsPerWarp = 16;  // the mma's M
constexpr int kBatchTile = 8;     // the mma's N: batch rows per CTA
constexpr int kARegisters = 4;    // 32-bit registers of an A fragment (both shapes)
constexpr int kBRegisters = 2;
constexpr int kCValues = 4;

struct M16N8K16 {  // float16 and bfloat16 operands
  static constexpr int K = 16;
  static constexpr int kElementBytes = 2;
  static constexpr int kPerRegister = 2;
  static FUSED_RNN_HD int a_row(int lane, int i) { return lane / 4 + 8 * ((i / 2) % 2); }
  static FUSED_RNN_HD int a_col(int lane, int i) { return 2 * (lane % 4) + i % 2 + 8 * (i / 4); }
  static FUSED_RNN_HD int b_row(int lane, int i) { return 2 * (lane % 4) + i % 2 + 8 * (i / 2); }
  static FUSED_RNN_HD int b_col(int lane, int) { return lane / 4; }
};

struct M16N8K8 {  // tf32 operands
  static constexpr int K = 8;
  static constexpr int kElementBytes = 4;
  static constexpr int kPerRegister = 1;
  static FUSED_RNN_HD int a_row(int lane, int i) { return lane / 4 + 8 * (i % 2); }
  static FUSED_RNN_HD int a_col(int lane, int i) { return lane % 4 + 4 * (i / 2); }
  static FUSED_RNN_HD int b_row(int lane, int i) { return lane % 4 + 4 * i; }
  static FUSED_RNN_HD int b_col(int lane, int) { return lane / 4; }
};

FUSED_RNN_HD int c_row(int lane, int i) { return lane / 4 + 8 * (i / 2); }
FUSED_RNN_HD int c_col(int lane, int i) { return 2 * (lane % 4) + i % 2; }

// The 16-bit state in 32-bit words, for the mbarrier exchange (st.async stores only 32-bit words):
// a word holds two elements of a state row, units (rows of C) 2w and 2w + 1 of one batch row (a
// column of C), the even one in its low half. C gives units r and r + 1 (r even) of a column pair to
// lanes L and L ^ 4 (c_row: lane / 4), so the two swap one value per row half h of the fragment
// (values 2h, 2h + 1) and each stores one word:
//   even c_row: (unit c_row(L, 2h), column c_col(L, 2h)):      low = its value 2h, high = the partner's 2h
//   odd c_row:  (unit c_row(L, 2h) - 1, column c_col(L, 2h + 1)): low = the partner's 2h + 1, high = its 2h + 1
// So a lane sends its value 2h + 1 (even c_row) or 2h (odd) and keeps the other.
constexpr int kPairPartnerMask = 4;  // lane ^ 4: the other unit of the pair
struct PairedWord {
  int unit;   // even: the word's low element's row of C
  int col;    // its column of C (batch row)
  int kept;   // the lane's own value in the word: index into its C values
  int sent;   // the value it sends to its partner
  bool high;  // whether the received value is the high element (else the low)
};
FUSED_RNN_HD PairedWord paired_word(int lane, int h) {
  const bool odd = (c_row(lane, 2 * h) & 1) != 0;
  return odd ? PairedWord{c_row(lane, 2 * h) - 1, c_col(lane, 2 * h + 1), 2 * h + 1, 2 * h, false}
             : PairedWord{c_row(lane, 2 * h), c_col(lane, 2 * h), 2 * h, 2 * h + 1, true};
}

// Independent accumulator chains per warp: k tile kt accumulates into chain kt % chains. Four keep
// a step's dependent mma chain at KT / 4; the largest tile count (64 A registers a lane at 512
// threads) keeps two, which its registers allow without spilling (ptxas gate).
template <int KT>
constexpr int chains() {
  return KT < 4 ? KT : (KT >= 16 ? 2 : 4);
}

// Register sets of prefetched step inputs: the loads of step s + sets - 1 are issued at step s.
// Three (two steps ahead) where registers allow; the largest tile count keeps two.
template <int KT>
constexpr int prefetch_sets() {
  return KT >= 16 ? 2 : 3;
}

// The state (the B operand, rounded to the operand type) in shared memory: [2][kBatchTile][words]
// 32-bit words per batch row; a row holds KT·K elements and is padded to 4 (mod 32) words, so that
// the B loads (word g·words + const + t) of the 32 lanes hit 32 distinct banks.
template <class Shape, int KT>
constexpr int state_row_words() {
  constexpr int w = KT * Shape::K * Shape::kElementBytes / 4;
  return w + ((4 - w % 32) + 32) % 32;
}
template <class Shape, int KT>
constexpr int64_t smem_bytes() {
  return int64_t(2) * kBatchTile * state_row_words<Shape, KT>() * 4;
}
// Element index (in operand-sized elements) of state (step parity, batch row b, k).
template <class Shape, int KT>
FUSED_RNN_HD int64_t state_element(int64_t step, int b, int k) {
  constexpr int per_word = 4 / Shape::kElementBytes;
  return ((step & 1) * kBatchTile + b) * int64_t(state_row_words<Shape, KT>()) * per_word + k;
}

// How the rows and k of M are split (one instantiation of the kernel):
//   KT  k tiles a warp holds (its A fragments: KT·4 registers a lane)
//   KP  warps that share one 16-row tile of M, each holding KT k tiles of it (k parts): their
//       partial sums meet in shared memory, and the first of them (kp = 0) runs the epilogue
//   C   CTAs of a thread-block cluster (sm_90) that split the 16-row tiles; each writes its units
//       of h_t into every CTA's state (distributed shared memory), one cluster barrier per step
// The row and k capacity is KT·KP·K; warp w of CTA rank r holds the tile r·tiles_per_cta + w / KP,
// k part w % KP.
template <class Shape_, int KT_, int KP_ = 1, int C_ = 1>
struct Tiling {
  using Shape = Shape_;
  static constexpr int KT = KT_;
  static constexpr int KP = KP_;
  static constexpr int C = C_;
  static constexpr int kHidden = KT * KP * Shape::K;
  static constexpr int kTiles = (kHidden + kRowsPerWarp - 1) / kRowsPerWarp;  // 16-row tiles of M
  static constexpr int kTilesPerCta = (kTiles + C - 1) / C;
  static constexpr int kWarps = kTilesPerCta * KP;
  static_assert(C >= 1 && C <= 16, "a cluster holds at most 16 CTAs");
  static_assert(kWarps * kWarp <= 1024, "at most 1024 threads per CTA");
  static FUSED_RNN_HD int tile(int rank, int warp) { return rank * kTilesPerCta + warp / KP; }
  static FUSED_RNN_HD int k_part(int warp) { return warp % KP; }
  // Shared memory: the state, then (KP > 1) the partial sums [warp][value][lane].
  static constexpr int64_t partial_words() { return KP > 1 ? int64_t(kWarps) * kCValues * kWarp : 0; }
  static constexpr int64_t smem_bytes() { return mma::smem_bytes<Shape, KT * KP>() + partial_words() * 4; }
};
FUSED_RNN_HD int64_t partial_index(int warp, int i, int lane) { return (int64_t(warp) * kCValues + i) * kWarp + lane; }

// Warps a one-CTA launch needs for hidden size H (a cluster launches Tiling::kWarps).
inline int warps_for(int64_t H) { return static_cast<int>((H + kRowsPerWarp - 1) / kRowsPerWarp); }

// The tilings instantiated, smallest first; the launcher takes the first that holds H.
//   m16n8k16 (f16/bf16): one CTA for H ≤ 32, 64, 128, 192, 256 (A: up to 64 registers a lane);
//     clusters (sm_90) of 4 CTAs × 16 warps for H ≤ 512 (2 k parts) and of 16 CTAs × 16 warps for
//     H ≤ 1024 (4 k parts; a non-portable cluster size, which the launcher checks)
//   m16n8k8 (tf32): one CTA for H ≤ 32, 64, 128, 192; clusters of 2 for H ≤ 256 (2 k parts) and of
//     8 for H ≤ 512 (4 k parts)
template <class Shape>
constexpr int kTilings = 7;
template <class Shape, class F>
void with_tiling(int i, F&& f) {
  if constexpr (std::is_same_v<Shape, M16N8K16>) {
    switch (i) {
      case 0: f(Tiling<Shape, 2>{}); break;
      case 1: f(Tiling<Shape, 4>{}); break;
      case 2: f(Tiling<Shape, 8>{}); break;
      case 3: f(Tiling<Shape, 12>{}); break;
      case 4: f(Tiling<Shape, 16>{}); break;
      case 5: f(Tiling<Shape, 16, 2, 4>{}); break;
      default: f(Tiling<Shape, 16, 4, 16>{}); break;
    }
  } else {
    switch (i) {
      case 0: f(Tiling<Shape, 4>{}); break;
      case 1: f(Tiling<Shape, 8>{}); break;
      case 2: f(Tiling<Shape, 16>{}); break;
      case 3: f(Tiling<Shape, 24>{}); break;
      case 4: f(Tiling<Shape, 16, 2, 2>{}); break;
      default: f(Tiling<Shape, 16, 4, 8>{}); break;
    }
  }
}
template <>
constexpr int kTilings<M16N8K8> = 6;

// The first tiling that holds H (clusters only where allowed: sm_90), or -1.
template <class Shape>
int tiling_for(int64_t H, bool clusters = true) {
  int found = -1;
  for (int i = 0; i < kTilings<Shape> && found < 0; ++i) {
    with_tiling<Shape>(i, [&](auto t) {
      using Tl = decltype(t);
      if (H <= Tl::kHidden && (Tl::C == 1 || clusters)) found = i;
    });
  }
  return found;
}

}  // namespace fused_rnn::mma
