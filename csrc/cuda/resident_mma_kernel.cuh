// The tensor-core SM-resident recurrence (forward and BPTT of one layer, uniform batch): float16
// and bfloat16 on mma.sync.m16n8k16, float32 with TF32 allowed on mma.sync.m16n8k8.tf32, fp32
// accumulation always. The mapping and its fragment layouts are in mma_layout.h, shared with the
// CPU emulation that tests them; recurrence.h has the contract.
//
// Per CTA (batch tile c0 .. c0 + 7, direction d): warp w holds M's rows 16w .. 16w + 15 (M = W_hh
// forward, W_hhᵀ in BPTT) as A fragments of every k tile, converted to the operand type once. Per
// processed step s (t = s or T - 1 - s):
//   1. loads of step s + 2's inputs for the lane's four C values into registers (a 3-set rotation
//      unrolled in the step loop, so no register moves wait on a load)
//   2. one mma per k tile, B = the state [k][batch row] from shared memory (operand type), into
//      chains() independent accumulators, added in chain order
//   3. epilogue on the lane's four values (fp32):
//        forward  h = act(pre + m)        → out (hy: copied from the last step's out at the end)
//        BPTT     δ = (g + m) ⊙ act'(y)   → dpre                    (m = ghy at s = 0)
//      and the value rounded to the operand type into state[s + 1]: h (or δ) is kept in fp32 for
//      the outputs and rounded once per step for the next step's mma (as cuDNN's half kernels do)
//   4. __syncthreads (the only barrier); in a cluster, the cluster's barrier, or (with
//      FUSED_RNN_CUDA_CLUSTER_EXCHANGE=mbarrier) st.async stores of 32-bit words completing on each
//      receiver's mbarrier, waited for before the next step's mma (16-bit state: two units a word,
//      paired across lanes by one shuffle per fragment row half, mma_layout.h)
// BPTT ends with one more mma pass: dh0 = M·δ of the last processed step.
// The launch is in resident_mma_cuda.cu; the kernel also compiles as host C++ for its CPU execution
// in tests (resident_mma_kernel_on_cpu.cpp, cuda_on_cpu.h), which supplies the conversions and mma.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#ifndef FUSED_RNN_CUDA_ON_CPU
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

#include <cstdint>
#include <type_traits>

#include "cuda/activation.cuh"
#include "cuda/cluster.cuh"
#include "cuda/mma_layout.h"
#include "cuda/rec_params.h"

namespace fused_rnn {
namespace cuda {
// Unnamed, as when the kernel lived in resident_mma_cuda.cu: its symbol names, which the ptxas gate
// and the SASS and profile reports match, stay the same. One translation unit includes it.
namespace {

using namespace mma;

// The operand type of a storage type T: how a float becomes an mma operand element and how two
// (or one) of them fill a 32-bit register.
template <typename T>
struct Operand;
template <>
struct Operand<c10::Half> {
  using Shape = M16N8K16;
  using Bits = unsigned short;
#ifdef FUSED_RNN_CUDA_ON_CPU
  static Bits bits(float v) { return c10::Half(v).x; }  // round to nearest even, as __float2half_rn
  static unsigned pack(float lo, float hi) { return bits(lo) | (unsigned(bits(hi)) << 16); }
  static void mma(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    cuda_on_cpu::mma_sync(cuda_on_cpu::MmaKind::F16, d, a, b0, b1, __FILE__, __LINE__);
  }
#else
  __device__ static unsigned pack(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const unsigned*>(&h);
  }
  __device__ static Bits bits(float v) { return __half_as_ushort(__float2half_rn(v)); }
  __device__ static void mma(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#endif
};
template <>
struct Operand<c10::BFloat16> {
  using Shape = M16N8K16;
  using Bits = unsigned short;
#ifdef FUSED_RNN_CUDA_ON_CPU
  static Bits bits(float v) { return c10::BFloat16(v).x; }  // round to nearest even, as __float2bfloat16_rn
  static unsigned pack(float lo, float hi) { return bits(lo) | (unsigned(bits(hi)) << 16); }
  static void mma(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    cuda_on_cpu::mma_sync(cuda_on_cpu::MmaKind::BF16, d, a, b0, b1, __FILE__, __LINE__);
  }
#else
  __device__ static unsigned pack(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const unsigned*>(&h);
  }
  __device__ static Bits bits(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
  __device__ static void mma(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#endif
};
template <>
struct Operand<float> {  // TF32: rounded to nearest (ties away), as cuDNN's and cuBLAS's TF32
  using Shape = M16N8K8;
  using Bits = unsigned;
#ifdef FUSED_RNN_CUDA_ON_CPU
  // cvt.rna.tf32.f32: to 10 mantissa bits, ties away from zero (finite values), low 13 bits zero
  static unsigned tf32(float v) { return (__float_as_uint(v) + 0x1000u) & 0xffffe000u; }
#else
  __device__ static unsigned tf32(float v) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(v));
    return r;
  }
#endif
  __device__ static unsigned pack(float v, float) { return tf32(v); }
  __device__ static Bits bits(float v) { return tf32(v); }
#ifdef FUSED_RNN_CUDA_ON_CPU
  static void mma(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    cuda_on_cpu::mma_sync(cuda_on_cpu::MmaKind::TF32, d, a, b0, b1, __FILE__, __LINE__);
  }
#else
  __device__ static void mma(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#endif
};

// Element i of the state, rounded to the operand type, in every CTA of the cluster.
template <class Op, int C>
__device__ __forceinline__ void store_everywhere(unsigned* state, int64_t i, float v) {
  store_in_every_cta<C>(reinterpret_cast<typename Op::Bits*>(state) + i, Op::bits(v));
}

// A 32-bit word of the state in every CTA of the cluster with st.async, each store counting its 4
// bytes on the receiving CTA's barrier at bar's offset (st.async has no 16-bit form: 16-bit state
// goes two elements to a word, mma_layout.h's paired_word).
template <int C>
__device__ __forceinline__ void store_async_everywhere(unsigned* word, unsigned bits, unsigned long long* bar) {
  store_async_in_every_cta<C>(word, bits, bar);
}

// Mbar (clusters only): the step's exchange completes on mbarriers instead of a cluster barrier
// (cluster.cuh; FUSED_RNN_CUDA_CLUSTER_EXCHANGE=mbarrier), as in resident_kernel.cuh.
template <typename scalar_t, int KT, int KP, int CL, bool Backward, bool Mbar = false>
__global__ void __launch_bounds__(Tiling<typename Operand<scalar_t>::Shape, KT, KP, CL>::kWarps * kWarp, 1)
    resident_mma_kernel(const RecParams p) {
  using Op = Operand<scalar_t>;
  using S = typename Op::Shape;
  using Tl = Tiling<S, KT, KP, CL>;
  static_assert(!Mbar || CL > 1, "the mbarrier exchange is for clusters");
  constexpr int kWordElements = 4 / static_cast<int>(sizeof(typename Op::Bits));  // state elements a word
  constexpr int KTT = KT * KP;  // k tiles of a whole row: the state's row length
  constexpr int C = chains<KT>(), PER_WORD = 4 / S::kElementBytes;
  extern __shared__ unsigned state_words[];  // [2][kBatchTile][state_row_words] operand elements
  float* partial = reinterpret_cast<float*>(state_words + 2 * kBatchTile * state_row_words<S, KTT>());
  // Mbar: one barrier per state buffer, after the partial sums (Tiling::smem_bytes is a multiple of 8)
  unsigned long long* bars =
      reinterpret_cast<unsigned long long*>(reinterpret_cast<unsigned char*>(state_words) + Tl::smem_bytes());

  const int tid = static_cast<int>(threadIdx.x), warp = tid / kWarp, lane = tid % kWarp;
  const int H = static_cast<int>(p.H), d = static_cast<int>(blockIdx.y);
  // 32-bit indices (the launcher checks that every buffer has fewer than 2^31 elements): registers
  // are scarce here.
  const int T = static_cast<int>(p.T), B = static_cast<int>(p.B), ld = static_cast<int>(p.D * p.H);
  const int c0 = static_cast<int>(blockIdx.x / CL) * kBatchTile;
  const int nb = B - c0 < kBatchTile ? B - c0 : kBatchTile;
  const bool asc = (d == 1) == Backward;
  const int rank = cluster_rank<CL>();
  const int row0 = kRowsPerWarp * Tl::tile(rank, warp), kp = Tl::k_part(warp), k0 = kp * KT * S::K;

  scalar_t* buf = static_cast<scalar_t*>(p.buf);
  const scalar_t* yv = static_cast<const scalar_t*>(p.y);
  const scalar_t* h_in = static_cast<const scalar_t*>(p.h_in) + int64_t(d) * B * H;
  scalar_t* h_out = static_cast<scalar_t*>(p.h_out) + int64_t(d) * B * H;
  const scalar_t* wg = static_cast<const scalar_t*>(p.w) + int64_t(d) * H * H;

  // The state first (zeros, h0 in the forward), while no A fragment occupies registers: the set-up's
  // divisions and indices would otherwise not fit beside them.
  constexpr int words = 2 * kBatchTile * state_row_words<S, KTT>();
  for (int i = tid; i < words; i += static_cast<int>(blockDim.x)) state_words[i] = 0u;
  __syncthreads();
  if (!Backward) {  // h0, rounded, into state[0]
    for (int i = tid; i < nb * H; i += static_cast<int>(blockDim.x))
      store_everywhere<Op, 1>(state_words, state_element<S, KTT>(0, i / H, i % H),
                              static_cast<float>(h_in[(int64_t(c0) + i / H) * H + i % H]));
  }
  if constexpr (Mbar) state_barriers_init(bars, tid);
  // a cluster's peers store into this state (and count on its barriers) only once it is initialised
  step_barrier<CL>();

  // A fragments of this warp's 16 rows, its k part's k tiles; zero outside H.
  unsigned a[KT][kARegisters];
#pragma unroll
  for (int kt = 0; kt < KT; ++kt)
#pragma unroll
    for (int r = 0; r < kARegisters; ++r) {
      float v[2] = {0.f, 0.f};
#pragma unroll
      for (int e = 0; e < S::kPerRegister; ++e) {
        const int i = r * S::kPerRegister + e;
        const int j = row0 + S::a_row(lane, i), k = k0 + kt * S::K + S::a_col(lane, i);
        // 32-bit offsets: H ≤ 1024 here, so H·H is far below 2^31.
        if (j < H && k < H) v[e] = static_cast<float>(wg[Backward ? k * H + j : j * H + k]);
      }
      a[kt][r] = Op::pack(v[0], v[1]);
    }

  // The lane's four C values i: row j_of(i), batch row b_of(i) (c_row / c_col); the k part 0 warp of
  // a tile owns them (real outputs when j < H and b < nb). Their offset in buf and y at a processed
  // step: row_base(step) + offset(i).
  const int j_lo = row0 + c_row(lane, 0), b_lo = c_col(lane, 0);
  auto j_of = [&](int i) { return j_lo + (c_row(lane, i) - c_row(lane, 0)); };
  auto b_of = [&](int i) { return b_lo + (c_col(lane, i) - c_col(lane, 0)); };
  auto owns = [&](int i) { return kp == 0 && j_of(i) < H && b_of(i) < nb; };
  const int first_row = ((asc ? 0 : T - 1) * B + c0) * ld + d * H, step_rows = asc ? B * ld : -B * ld;
  auto row_base = [&](int step) { return first_row + step * step_rows; };
  auto offset = [&](int i) { return b_of(i) * ld + j_of(i); };


  // m[i] = Σ_k M[j_of(i), k]·state[step][b_of(i)][k] for the lane's four values (complete in the
  // k part 0 warp; with KP > 1 the parts meet in shared memory, behind a __syncthreads).
  auto matvec = [&](int step, float (&m)[kCValues]) {
    float acc[C][kCValues];
#pragma unroll
    for (int c = 0; c < C; ++c)
#pragma unroll
      for (int i = 0; i < kCValues; ++i) acc[c][i] = 0.f;
    // One base address per step; every k tile and register is a constant offset from it (the
    // register's first element r·per_register lies b_row(r·per) - b_row(0) elements past element 0,
    // the same for every lane), so the loads take immediate offsets, not an address register each.
    const unsigned* lane_state =
        state_words + state_element<S, KTT>(step, S::b_col(lane, 0), k0 + S::b_row(lane, 0)) / PER_WORD;
#pragma unroll
    for (int kt = 0; kt < KT; ++kt) {
      unsigned b[kBRegisters];
#pragma unroll
      for (int r = 0; r < kBRegisters; ++r) {
        const int i = r * S::kPerRegister;  // the register's first element
        b[r] = lane_state[(kt * S::K + S::b_row(lane, i) - S::b_row(lane, 0)) / PER_WORD];
      }
      Op::mma(acc[kt % C], a[kt], b[0], b[1]);
    }
#pragma unroll
    for (int i = 0; i < kCValues; ++i) {
      float sum = acc[0][i];
#pragma unroll
      for (int c = 1; c < C; ++c) sum += acc[c][i];
      m[i] = sum;
    }
    if constexpr (KP > 1) {
#pragma unroll
      for (int i = 0; i < kCValues; ++i) partial[partial_index(warp, i, lane)] = m[i];
      __syncthreads();
      if (kp == 0) {
#pragma unroll
        for (int i = 0; i < kCValues; ++i) {
          float sum = m[i];
#pragma unroll
          for (int part = 1; part < KP; ++part) sum += partial[partial_index(warp + part, i, lane)];
          m[i] = sum;
        }
      }
    }
  };
  auto load = [&](int step, float (&in)[kCValues], float (&yy)[kCValues]) {
    if (step >= T) return;
    const int base = row_base(step);
#pragma unroll
    for (int i = 0; i < kCValues; ++i) {
      if (!owns(i)) continue;
      in[i] = static_cast<float>(buf[base + offset(i)]);
      if constexpr (Backward) yy[i] = static_cast<float>(yv[base + offset(i)]);
    }
  };
  // Mbar: the bytes each CTA receives a step: every word of state[s + 1] holding a unit < H of a
  // batch row < nb, once (16-bit: units 2w and 2w + 1 share word w)
  const unsigned step_bytes =
      static_cast<unsigned>(nb) * static_cast<unsigned>((H + kWordElements - 1) / kWordElements) * 4u;
  // Step s: issue the loads of step s + ahead into `next`, then the mma pass and the epilogue on `cur`.
  // (the 16-bit mbarrier forward kernels load each step's inputs at its start, behind its wait and
  // mma pass: a second set of registers for them spills these kernels)
  constexpr int sets = Mbar && kWordElements == 2 && !Backward ? 1 : prefetch_sets<KT>(), ahead = sets - 1;
  auto step = [&](int s, const float (&cur)[kCValues], const float (&cur_y)[kCValues], float (&next)[kCValues],
                  float (&next_y)[kCValues]) {
    load(s + ahead, next, next_y);
    if constexpr (Mbar) state_step_begin(bars, s, tid, step_bytes);
    float m[kCValues];
    matvec(s, m);
    // Mbar: every warp's reads of state[s] come before this CTA's stores of the step (with k parts,
    // matvec's own __syncthreads orders them), so a peer holding all of them (it is at step s + 1)
    // may overwrite state[s] of this CTA
    if constexpr (Mbar && KP == 1) __syncthreads();
    const int base = row_base(s);
    // The epilogue on value i (row j, batch row b), written to buf; returns the value.
    auto epilogue = [&](int i, int j, int b) {
      float v;
      if constexpr (!Backward) {
        v = act(cur[i] + m[i], p.relu);
      } else {
        const float g = cur[i] + (s == 0 ? static_cast<float>(h_in[(int64_t(c0) + b) * H + j]) : m[i]);
        v = p.relu ? (cur_y[i] <= 0.f ? 0.f : g) : g * (1.f - cur_y[i] * cur_y[i]);
      }
      buf[base + offset(i)] = static_cast<scalar_t>(v);
      return v;
    };
    if constexpr (Mbar && kWordElements == 2) {
      // 16-bit state: two units to a word (mma_layout.h, paired_word), one row half of the fragment
      // at a time (two values live, not four). A unit past H, or one the lane does not own,
      // contributes 0 (M is 0 in those columns); the word is stored when its low unit is below H
      // and its batch row below nb, by the k part 0 warp.
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        // 0 where the lane owns no value
        const float v_lo = owns(2 * h) ? epilogue(2 * h, j_of(2 * h), b_of(2 * h)) : 0.f;
        const float v_hi = owns(2 * h + 1) ? epilogue(2 * h + 1, j_of(2 * h + 1), b_of(2 * h + 1)) : 0.f;
        const PairedWord w = paired_word(lane, h);
        // w.kept / w.sent are 2h and 2h + 1 in one order or the other: selected, not indexed (a
        // register array indexed at run time would go to local memory)
        const float kept = w.kept == 2 * h ? v_lo : v_hi, sent = w.sent == 2 * h ? v_lo : v_hi;
        const float received = __shfl_xor_sync(0xffffffffu, sent, kPairPartnerMask);
        const int unit = row0 + w.unit;
        if (kp == 0 && unit < H && w.col < nb) {
          const float lo = w.high ? kept : received, hi = w.high ? received : kept;
          const unsigned word = static_cast<unsigned>(Op::bits(lo)) | (static_cast<unsigned>(Op::bits(hi)) << 16);
          store_async_everywhere<CL>(state_words + state_element<S, KTT>(s + 1, w.col, unit) / 2, word,
                                     state_barrier_of_step(bars, s));
        }
      }
    } else {
#pragma unroll
      for (int i = 0; i < kCValues; ++i) {
        if (!owns(i)) continue;
        const int j = j_of(i), b = b_of(i);
        const float v = epilogue(i, j, b);
        if constexpr (Mbar) {
          store_async_everywhere<CL>(state_words + state_element<S, KTT>(s + 1, b, j), Op::bits(v),
                                     state_barrier_of_step(bars, s));
        } else {
          store_everywhere<Op, CL>(state_words, state_element<S, KTT>(s + 1, b, j), v);
        }
      }
    }
    // Mbar: the CTA's own barrier, so that the next step's partial sums overwrite this step's only
    // after the k part 0 warps have read them
    if constexpr (Mbar) {
      __syncthreads();
    } else {
      step_barrier<CL>();
    }
  };

  // The register sets rotate with the unrolled steps: set s % sets holds step s's inputs.
  float in0[kCValues] = {}, in1[kCValues] = {}, in2[kCValues] = {};
  float y0[kCValues] = {}, y1[kCValues] = {}, y2[kCValues] = {};
  if constexpr (sets == 1) {
    for (int s = 0; s < T; ++s) step(s, in0, y0, in0, y0);  // loads into the set the step then reads
  } else if constexpr (sets == 3) {
    load(0, in0, y0);
    load(1, in1, y1);
    for (int s = 0; s < T; s += 3) {
      step(s, in0, y0, in2, y2);
      if (s + 1 < T) step(s + 1, in1, y1, in0, y0);
      if (s + 2 < T) step(s + 2, in2, y2, in1, y1);
    }
  } else {
    load(0, in0, y0);
    for (int s = 0; s < T; s += 2) {
      step(s, in0, y0, in1, y1);
      if (s + 1 < T) step(s + 1, in1, y1, in0, y0);
    }
  }
  if constexpr (Mbar) state_wait_filled(bars, T);  // every store into this CTA has landed
  if constexpr (!Backward) {  // hy: the last step's output, which this lane wrote (same rounding)
    const int base = row_base(T - 1);
#pragma unroll
    for (int i = 0; i < kCValues; ++i)
      if (owns(i)) h_out[(int64_t(c0) + b_of(i)) * H + j_of(i)] = buf[base + offset(i)];
  } else {  // dh0 = M·δ of the last processed step (dh0 = δ_0·W_hh)
    float m[kCValues];
    matvec(T, m);
#pragma unroll
    for (int i = 0; i < kCValues; ++i)
      if (owns(i)) h_out[(int64_t(c0) + b_of(i)) * H + j_of(i)] = static_cast<scalar_t>(m[i]);
  }
  if constexpr (Mbar) step_barrier<CL>();  // no CTA of the cluster leaves before its peers are done
}

}  // namespace
}  // namespace cuda
}  // namespace fused_rnn
