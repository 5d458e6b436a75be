// The SM-resident recurrence kernel for float32 (forward and BPTT of one layer, uniform batch,
// H ≤ resident::kMaxHidden): M = W_hh (forward) or W_hhᵀ (BPTT) lives in registers for all T
// steps, the state double-buffered in shared memory, one __syncthreads per step. From H = 193 the
// rows are split over the CTAs of a thread-block cluster (sm_90), which write their units of h_t
// into every peer's state through distributed shared memory, with one cluster barrier per step. The thread → data
// mapping and the launch plan are in resident_layout.h, shared with the CPU emulation that tests
// them; recurrence.h has the contract.
//
// Per CTA (batch tile c0 .. c0 + BT - 1, direction d) and processed step s (t = s or T - 1 - s):
//   1. issue the cp.async copies of step s + kPrefetch's inputs into the ring (own values only)
//   2. mat-vec: each lane's partial Σ_k M[j, k]·v[b, k] over its k chunks, for its R rows × BT rows
//   3. reduce-scatter of the partials over the KL lanes of a row (warp shuffles)
//   4. wait for step s's copies; epilogue on the values the lane owns:
//        forward  h = act(pre + m)                 → out, state[s + 1], hy at the last step
//        BPTT     δ = (g + m) ⊙ act'(y)            → dpre, state[s + 1]   (m = ghy at s = 0)
//   5. __syncthreads, or the cluster barrier (the only barrier: state[s + 1] complete in every CTA,
//      state[s] free to be overwritten)
// BPTT ends with one more mat-vec, dh0 = M·δ of the last processed step (dh0 = δ_0·W_hh).
// The launch is in resident_cuda.cu; the kernel also compiles as host C++ for its CPU execution in
// tests (resident_kernel_on_cpu.cpp, cuda_on_cpu.h), which replaces the cp.async copies.
#pragma once

#ifndef FUSED_RNN_CUDA_ON_CPU
#include <cuda_runtime.h>
#endif

#include "cuda/activation.cuh"
#include "cuda/cluster.cuh"
#include "cuda/rec_params.h"
#include "cuda/resident_layout.h"

namespace fused_rnn {
namespace cuda {
// Unnamed, as when the kernel lived in resident_cuda.cu: its symbol names, which the ptxas gate and
// the SASS and profile reports match, stay the same. One translation unit includes it.
namespace {

using namespace resident;

// 4-byte asynchronous global → shared copy (sm_80+: cp.async; older GPUs: a plain load and store,
// which the wait below then makes a no-op).
__device__ __forceinline__ void copy_async4(float* dst, const float* src) {
#if defined(FUSED_RNN_CUDA_ON_CPU)
  cuda_on_cpu::copy_async(dst, src, 4);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(src) : "memory");
#else
  *dst = __ldg(src);
#endif
}
__device__ __forceinline__ void commit_copies() {
#if defined(FUSED_RNN_CUDA_ON_CPU)
  cuda_on_cpu::commit_group();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int Pending>
__device__ __forceinline__ void wait_copies() {
#if defined(FUSED_RNN_CUDA_ON_CPU)
  cuda_on_cpu::wait_group(Pending);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
#endif
}

// The reduce-scatter of resident_layout.h: stage mask M with N values still held.
template <int KL, int N, int M, int V>
__device__ __forceinline__ void reduce_stage(float (&v)[V], int lane) {
  if constexpr (M < KL) {
    if constexpr (N >= 2) {
      constexpr int half = N / 2;
      const bool upper = (lane & M) != 0;
#pragma unroll
      for (int i = 0; i < half; ++i) {
        const float send = upper ? v[i] : v[half + i];
        const float keep = upper ? v[half + i] : v[i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, M);
      }
      reduce_stage<KL, half, 2 * M>(v, lane);
    } else {
      v[0] += __shfl_xor_sync(0xffffffffu, v[0], M);
      reduce_stage<KL, N, 2 * M>(v, lane);
    }
  }
}

// part[r·BT + b] = Σ over this lane's k of w[r][k]·v[b][k], in `chains` independent FMA chains
// (chunk q feeds chain q % chains), added in chain order.
template <class S, int BT>
__device__ __forceinline__ void lane_matvec(const float (&w)[S::R][S::KPT], const float* state, int lane,
                                            float (&part)[S::R * BT]) {
  constexpr int V = S::R * BT, C = chains<V>();
  float acc[C][V];
#pragma unroll
  for (int c = 0; c < C; ++c)
#pragma unroll
    for (int i = 0; i < V; ++i) acc[c][i] = 0.f;
#pragma unroll
  for (int q = 0; q < S::QN; ++q) {
#pragma unroll
    for (int b = 0; b < BT; ++b) {
      const float4 x = reinterpret_cast<const float4*>(state + b * S::HK)[S::chunk(lane, q)];
#pragma unroll
      for (int r = 0; r < S::R; ++r) {
        float& a = acc[q % C][r * BT + b];
        a = fmaf(w[r][4 * q + 0], x.x, a);
        a = fmaf(w[r][4 * q + 1], x.y, a);
        a = fmaf(w[r][4 * q + 2], x.z, a);
        a = fmaf(w[r][4 * q + 3], x.w, a);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < V; ++i) {
    float sum = acc[0][i];
#pragma unroll
    for (int c = 1; c < C; ++c) sum += acc[c][i];
    part[i] = sum;
  }
}

// Mbar (clusters only): the step's exchange completes on mbarriers instead of a cluster barrier
// (cluster.cuh; FUSED_RNN_CUDA_CLUSTER_EXCHANGE=mbarrier).
template <class S, int BT, bool Backward, bool Mbar>
__global__ void __launch_bounds__(S::NT, 1) resident_kernel(const RecParams p) {
  static_assert(!Mbar || S::C > 1, "the mbarrier exchange is for clusters");
  constexpr int V = S::R * BT, NF = owned_count<S::KL, V>(), INPUTS = Backward ? 2 : 1;
  extern __shared__ float4 smem4[];
  float* state = reinterpret_cast<float*>(smem4);  // [2][BT][HK]
  float* ring = state + state_words<S, BT>();       // [kRing][INPUTS][NF][NT]
  // Mbar: one barrier per state buffer, after the ring (smem_bytes is a multiple of 16)
  unsigned long long* bars =
      reinterpret_cast<unsigned long long*>(reinterpret_cast<unsigned char*>(smem4) + smem_bytes<S, BT, Backward>());

  const int tid = static_cast<int>(threadIdx.x), warp = tid / kWarp, lane = tid % kWarp, kl = lane % S::KL;
  const int H = static_cast<int>(p.H), d = static_cast<int>(blockIdx.y);
  const int64_t T = p.T, B = p.B, ld = p.D * p.H;
  const int64_t c0 = int64_t(blockIdx.x / S::C) * BT;
  const int rank = cluster_rank<S::C>();  // this CTA's place in its cluster (0 without one)
  const int nb = static_cast<int>(B - c0 < BT ? B - c0 : BT);
  const bool asc = (d == 1) == Backward;  // forward: direction 0 ascending; BPTT the opposite

  float* buf = static_cast<float*>(p.buf);
  const float* yv = static_cast<const float*>(p.y);
  const float* h_in = static_cast<const float*>(p.h_in) + int64_t(d) * B * H;
  float* h_out = static_cast<float*>(p.h_out) + int64_t(d) * B * H;
  const float* wg = static_cast<const float*>(p.w) + int64_t(d) * H * H;

  // M's rows of this lane, zero outside H (so padded k and rows add nothing).
  float w[S::R][S::KPT];
#pragma unroll
  for (int r = 0; r < S::R; ++r) {
    const int j = S::row_in_cluster(rank, warp, lane, r);
#pragma unroll
    for (int q = 0; q < S::QN; ++q)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int k = 4 * S::chunk(lane, q) + e;
        w[r][4 * q + e] = j < H && k < H ? (Backward ? wg[int64_t(k) * H + j] : wg[int64_t(j) * H + k]) : 0.f;
      }
  }

  // The values this lane owns after the reduction: (row j, batch row b), whether it writes them, and
  // their index in buf / y at processed step 0 (step s: + s·stride).
  const bool writer = writes_outputs<S::KL, V>(kl);
  int own_j[NF], own_b[NF];
  bool own[NF];
  int64_t first[NF];
  const int64_t stride = step_stride(B, ld, asc);
#pragma unroll
  for (int i = 0; i < NF; ++i) {
    const int v = owned_value<S::KL, V>(kl, i);
    own_j[i] = S::row_in_cluster(rank, warp, lane, v / BT);
    own_b[i] = v % BT;
    own[i] = writer && own_j[i] < H && own_b[i] < nb;
    first[i] = element_at_step0(T, B, ld, c0, own_b[i], d, H, own_j[i], asc);
  }
  auto issue = [&](int64_t step) {
    if (step < T) {
      const int64_t offset = step * stride;
#pragma unroll
      for (int i = 0; i < NF; ++i) {
        if (!own[i]) continue;
        const int64_t e = first[i] + offset;
        copy_async4(ring + ring_index(S::NT, INPUTS, NF, step, 0, i, tid), buf + e);
        if constexpr (Backward) copy_async4(ring + ring_index(S::NT, INPUTS, NF, step, 1, i, tid), yv + e);
      }
    }
    commit_copies();  // an empty group past the end keeps the count uniform
  };

  for (int i = tid; i < state_words<S, BT>(); i += S::NT) state[i] = 0.f;
  __syncthreads();
  if (!Backward) {  // h0 into state[0]
    for (int i = tid; i < nb * H; i += S::NT) state[state_index(S::HK, BT, 0, i / H, i % H)] = h_in[(c0 + i / H) * H + i % H];
  }
  if constexpr (Mbar) state_barriers_init(bars, tid);
#pragma unroll
  for (int s = 0; s < kPrefetch; ++s) issue(s);
  step_barrier<S::C>();  // a cluster's peers write into this state (and count on its barriers) only once it is initialised

  // Mbar: the bytes each CTA receives a step, every (batch row < nb, unit < H) of state[s + 1] once
  const unsigned step_bytes = static_cast<unsigned>(nb) * static_cast<unsigned>(H) * 4u;
  float m[V];
  for (int64_t s = 0; s < T; ++s) {
    issue(s + kPrefetch);
    if constexpr (Mbar) state_step_begin(bars, s, tid, step_bytes);
    lane_matvec<S, BT>(w, state + state_index(S::HK, BT, s, 0, 0), lane, m);
    reduce_stage<S::KL, V, 1>(m, lane);
    // Mbar: every warp's reads of state[s] come before this CTA's stores of the step, so a peer
    // holding all of them (it is at step s + 1) may overwrite state[s] of this CTA
    if constexpr (Mbar) __syncthreads();
    wait_copies<kPrefetch>();
    const int64_t offset = s * stride;
#pragma unroll
    for (int i = 0; i < NF; ++i) {
      if (!own[i]) continue;
      const int j = own_j[i], b = own_b[i];
      const float in = ring[ring_index(S::NT, INPUTS, NF, s, 0, i, tid)];
      float v;
      if constexpr (!Backward) {
        v = act(in + m[i], p.relu);
        if (s == T - 1) h_out[(c0 + b) * H + j] = v;
      } else {
        const float y = ring[ring_index(S::NT, INPUTS, NF, s, 1, i, tid)];
        const float g = in + (s == 0 ? h_in[(c0 + b) * H + j] : m[i]);
        v = p.relu ? (y <= 0.f ? 0.f : g) : g * (1.f - y * y);
      }
      buf[first[i] + offset] = v;
      unsigned* slot = reinterpret_cast<unsigned*>(state) + state_index(S::HK, BT, s + 1, b, j);
      if constexpr (Mbar) {
        store_async_in_every_cta<S::C>(slot, __float_as_uint(v), state_barrier_of_step(bars, s));
      } else {
        store_in_every_cta<S::C>(slot, __float_as_uint(v));
      }
    }
    if constexpr (!Mbar) step_barrier<S::C>();
  }
  if constexpr (Mbar) state_wait_filled(bars, T);  // every store into this CTA has landed
  if constexpr (Backward) {  // dh0 = M·δ of the last processed step (t = 0 forward order)
    lane_matvec<S, BT>(w, state + state_index(S::HK, BT, T, 0, 0), lane, m);
    reduce_stage<S::KL, V, 1>(m, lane);
#pragma unroll
    for (int i = 0; i < NF; ++i)
      if (own[i]) h_out[(c0 + own_b[i]) * H + own_j[i]] = m[i];
  }
  wait_copies<0>();  // no copy outlives the CTA (the groups past T are empty)
  if constexpr (Mbar) step_barrier<S::C>();  // no CTA of the cluster leaves before its peers are done
}

}  // namespace
}  // namespace cuda
}  // namespace fused_rnn
