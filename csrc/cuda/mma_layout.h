// Thread → data mapping of the tensor-core resident recurrence (resident_mma_cuda.cu), written once
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

// Warps (16-row tiles of M) a CTA runs for hidden size H, and the most a KT instantiation needs.
inline int warps_for(int64_t H) { return static_cast<int>((H + kRowsPerWarp - 1) / kRowsPerWarp); }
template <class Shape, int KT>
constexpr int max_warps() {
  return (KT * Shape::K + kRowsPerWarp - 1) / kRowsPerWarp;
}

// The k-tile counts instantiated, smallest first, and the launcher's choice: the first that holds H.
//   m16n8k16 (f16/bf16): H ≤ 32, 64, 128, 192, 256    A: up to 64 registers a lane, 16 warps
//   m16n8k8 (tf32):      H ≤ 32, 64, 128, 192         A: up to 96 registers a lane, 12 warps
template <class Shape>
struct Tiles;
template <>
struct Tiles<M16N8K16> {
  static constexpr int kCount = 5;
  static constexpr int kValues[kCount] = {2, 4, 8, 12, 16};
};
template <>
struct Tiles<M16N8K8> {
  static constexpr int kCount = 4;
  static constexpr int kValues[kCount] = {4, 8, 16, 24};
};

// The k-tile count for H, or 0 when H is over the largest.
template <class Shape>
constexpr int k_tiles_for(int64_t H) {
  for (int i = 0; i < Tiles<Shape>::kCount; ++i)
    if (H <= int64_t(Tiles<Shape>::kValues[i]) * Shape::K) return Tiles<Shape>::kValues[i];
  return 0;
}

template <class Shape, class F>
void with_k_tiles(int kt, F&& f) {
  if constexpr (std::is_same_v<Shape, M16N8K16>) {
    switch (kt) {
      case 2: f(std::integral_constant<int, 2>{}); break;
      case 4: f(std::integral_constant<int, 4>{}); break;
      case 8: f(std::integral_constant<int, 8>{}); break;
      case 12: f(std::integral_constant<int, 12>{}); break;
      default: f(std::integral_constant<int, 16>{}); break;
    }
  } else {
    switch (kt) {
      case 4: f(std::integral_constant<int, 4>{}); break;
      case 8: f(std::integral_constant<int, 8>{}); break;
      case 16: f(std::integral_constant<int, 16>{}); break;
      default: f(std::integral_constant<int, 24>{}); break;
    }
  }
}

}  // namespace fused_rnn::mma
