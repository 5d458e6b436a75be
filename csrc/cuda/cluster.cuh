// Thread-block clusters (sm_90) for the resident kernels (resident_kernel.cuh, resident_mma_kernel.cuh):
// the CTA's rank, the per-step barrier and the stores into the peers' shared memory (the launch:
// cluster_launch.cuh). With C = 1 each is the plain-CTA version, so one kernel body serves both.
// The cluster kernels are compiled for sm_80 too, where they are never launched (no cluster is
// planned there) and trap if they were. Under FUSED_RNN_CUDA_ON_CPU (the kernels' CPU execution
// in tests, cuda_on_cpu.h) the rank, the cluster barrier, the stores and the mbarriers are the CPU
// runtime's.
#pragma once

#ifndef FUSED_RNN_CUDA_ON_CPU
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#endif

#include <cstdint>

namespace fused_rnn {
namespace cuda {

template <int C>
__device__ __forceinline__ int cluster_rank() {
  if constexpr (C == 1) {
    return 0;
  } else {
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900) || defined(FUSED_RNN_CUDA_ON_CPU)
    return static_cast<int>(cooperative_groups::this_cluster().block_rank());
#else
    __trap();
    return 0;
#endif
  }
}

// The step barrier: the CTA's, or the cluster's (release/acquire: it also orders the distributed
// shared-memory stores of the step before the peers' reads of the next).
template <int C>
__device__ __forceinline__ void step_barrier() {
  if constexpr (C == 1) {
    __syncthreads();
  } else {
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900) || defined(FUSED_RNN_CUDA_ON_CPU)
    cooperative_groups::this_cluster().sync();
#else
    __trap();
#endif
  }
}

// *local = value in the shared memory of every CTA of the cluster, at the same offset (C = 1: this
// CTA only). Bits: a 16- or 32-bit word. The peers' addresses are mapped per store from the 32-bit
// shared address (mapa), not held in registers across a kernel's step loop, where sixteen 64-bit
// generic pointers would not fit beside the weights.
template <int C, typename Bits>
__device__ __forceinline__ void store_in_every_cta(Bits* local, Bits value) {
  static_assert(sizeof(Bits) == 2 || sizeof(Bits) == 4, "a 16- or 32-bit word");
  if constexpr (C == 1) {
    *local = value;
  } else {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(local));
#pragma unroll
    for (int r = 0; r < C; ++r) {
      unsigned remote;
      asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(address), "r"(r));
      if constexpr (sizeof(Bits) == 2) {
        asm volatile("st.shared::cluster.u16 [%0], %1;\n" ::"r"(remote), "h"(value) : "memory");
      } else {
        asm volatile("st.shared::cluster.u32 [%0], %1;\n" ::"r"(remote), "r"(value) : "memory");
      }
    }
#elif defined(FUSED_RNN_CUDA_ON_CPU)
    for (int r = 0; r < C; ++r) cuda_on_cpu::store_in_cluster_cta(local, &value, sizeof(Bits), static_cast<unsigned>(r));
#else
    __trap();
#endif
  }
}

// ---- the exchange on mbarriers (FUSED_RNN_CUDA_CLUSTER_EXCHANGE=mbarrier; sm_90) ---------------------
// Instead of a cluster barrier after the stores of a step (whose release compiles to MEMBAR.ALL.GPU
// on sm_90, waiting for the step's global stores too), each store into a peer is an st.async that
// counts its bytes on the peer's mbarrier, and each CTA waits on its own mbarrier for the bytes of
// the step. One mbarrier per state buffer (double-buffered state: barrier q for buffer q), arrival
// count 1: one thread of the CTA arms each phase with the bytes it will receive.

// Initialises *bar with one arrival per phase; then mbarrier_init_visible() before the peers may
// count on it (followed by a cluster barrier).
__device__ __forceinline__ void mbarrier_init(unsigned long long* bar) {
#if defined(FUSED_RNN_CUDA_ON_CPU)
  cuda_on_cpu::mbarrier_init(bar, 1);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(static_cast<unsigned>(__cvta_generic_to_shared(bar)))
               : "memory");
#else
  (void)bar;  // (sm_80: never called)
  __trap();
#endif
}
__device__ __forceinline__ void mbarrier_init_visible() {
#if defined(FUSED_RNN_CUDA_ON_CPU)
  // (the CPU execution's shared memory is coherent: nothing to fence)
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#else
  __trap();
#endif
}

// The arrival of this phase, expecting `bytes` more from st.async stores (which may have landed
// already: the transaction count goes negative until the arrival).
__device__ __forceinline__ void mbarrier_expect_bytes(unsigned long long* bar, unsigned bytes) {
#if defined(FUSED_RNN_CUDA_ON_CPU)
  cuda_on_cpu::mbarrier_arrive_expect_tx(bar, bytes);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(
                   static_cast<unsigned>(__cvta_generic_to_shared(bar))),
               "r"(bytes)
               : "memory");
#else
  (void)bar; (void)bytes;  // (sm_80: never called)
  __trap();
#endif
}

// A wait not complete after this long traps (a launch error the host sees, where the process would
// otherwise hang: a step never takes this long, but a wrong byte count would wait forever).
constexpr unsigned long long kMbarrierWaitLimitNs = 20ull * 1000 * 1000 * 1000;

// One try: whether the phase of parity `parity` of the barrier at shared address `address` has
// completed (the hardware may suspend the thread a while before answering no).
__device__ __forceinline__ bool mbarrier_try_wait(unsigned address, unsigned parity) {
#if defined(FUSED_RNN_CUDA_ON_CPU)
  return cuda_on_cpu::mbarrier_test_wait_parity(address, parity);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  unsigned done = 0;
  asm volatile(
      "{\n\t.reg .pred p;\n\t"
      "mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\n\t"
      "selp.u32 %0, 1, 0, p;\n\t}\n"
      : "=r"(done)
      : "r"(address), "r"(parity)
      : "memory");
  return done != 0;
#else
  (void)address; (void)parity;  // (sm_80: never called)
  __trap();
  return true;
#endif
}

// static: one copy per translation unit (it is defined in this header and never inlined).
static __device__ __noinline__ void mbarrier_wait_slow(unsigned address, unsigned parity) {
#if defined(FUSED_RNN_CUDA_ON_CPU)
  // a retry once the launch has run the other threads; a wait that never completes is a deadlock
  while (!mbarrier_try_wait(address, parity)) cuda_on_cpu::mbarrier_spin(__FILE__, __LINE__);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  unsigned long long start, now;
  asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(start));
  while (!mbarrier_try_wait(address, parity)) {
    asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(now));
    if (now - start > kMbarrierWaitLimitNs) __trap();
  }
#else
  (void)address; (void)parity;  // (sm_80: never called)
  __trap();
#endif
}

// Waits until the phase of parity `parity` of *bar has completed; acquire at cluster scope, so the
// peers' st.async data is visible after it. The retries, with their time limit, are out of line.
__device__ __forceinline__ void mbarrier_wait(unsigned long long* bar, unsigned parity) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(bar));
  if (!mbarrier_try_wait(address, parity)) mbarrier_wait_slow(address, parity);
}

// *local = value (32 bits) in the shared memory of every CTA of the cluster, at the same offset, each
// store counting its 4 bytes on that CTA's barrier at local_bar's offset.
template <int C>
__device__ __forceinline__ void store_async_in_every_cta(unsigned* local, unsigned value,
                                                         unsigned long long* local_bar) {
#if defined(FUSED_RNN_CUDA_ON_CPU)
  for (int r = 0; r < C; ++r) cuda_on_cpu::store_async_in_cluster_cta(local, value, local_bar, static_cast<unsigned>(r));
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(local));
  const unsigned bar = static_cast<unsigned>(__cvta_generic_to_shared(local_bar));
#pragma unroll
  for (int r = 0; r < C; ++r) {
    unsigned remote, remote_bar;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(address), "r"(r));
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote_bar) : "r"(bar), "r"(r));
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];\n" ::"r"(remote),
                 "r"(value), "r"(remote_bar)
                 : "memory");
  }
#else
  __trap();
#endif
}

// The double-buffered state of the resident cluster kernels on mbarriers (resident_kernel.cuh,
// resident_mma_kernel.cuh): state[s] lies in buffer s & 1 and barrier bars[q] counts the stores into
// buffer q. Step s reads state[s], which step s - 1 filled (phase (s - 1) / 2 of its barrier), and
// fills state[s + 1]; state[0] is each CTA's own (h0, or zeros), filled before the first cluster
// barrier.

// Thread 0 initialises both barriers, visible to the cluster after its next cluster barrier.
__device__ __forceinline__ void state_barriers_init(unsigned long long* bars, int tid) {
  if (tid == 0) {
    mbarrier_init(bars);
    mbarrier_init(bars + 1);
    mbarrier_init_visible();
  }
}

// The barrier the stores of step s count on: state[s + 1]'s.
__device__ __forceinline__ unsigned long long* state_barrier_of_step(unsigned long long* bars, int64_t s) {
  return bars + ((s + 1) & 1);
}

// Waits until state[s] is complete (s = T after the last step: every store into this CTA landed).
__device__ __forceinline__ void state_wait_filled(unsigned long long* bars, int64_t s) {
  if (s > 0) mbarrier_wait(bars + (s & 1), static_cast<unsigned>((s - 1) >> 1) & 1u);
}

// The start of step s: wait for state[s]; thread 0 arms the phase step s fills with the bytes this
// CTA will receive (that barrier's previous phase was waited for at step s - 1).
__device__ __forceinline__ void state_step_begin(unsigned long long* bars, int64_t s, int tid, unsigned bytes) {
  state_wait_filled(bars, s);
  if (tid == 0) mbarrier_expect_bytes(state_barrier_of_step(bars, s), bytes);
}

}  // namespace cuda
}  // namespace fused_rnn
