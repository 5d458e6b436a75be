// CUDA kernel source, run on the CPU: enough of CUDA's built-ins for a kernel's own .cuh to compile
// as host C++ and run, one fiber per CUDA thread, so that tests on machines without a GPU execute
// the kernel code itself, not a model of it (recurrence_kernel_on_cpu.cpp, resident_kernel_on_cpu.cpp,
// resident_mma_kernel_on_cpu.cpp; tests/test_kernel_on_cpu.py).
//
// cuda_on_cpu_builtins.h gives the kernel's source CUDA's qualifiers (__global__, __shared__, ...),
// threadIdx / blockIdx / blockDim / gridDim, __syncthreads, cooperative groups' grid and cluster
// sync and block_rank, __shfl_xor_sync, float4 / double2, __ldg / __ldcg, __trap; this header is
// the runtime that launches it, and what a kernel's CPU branches call (cp.async, mma.sync,
// distributed shared memory, mbarriers).
//
// How a launch runs (cuda_on_cpu.cpp), all on the calling OS thread:
//   - The CTAs of a plain launch run one after another. Those of a co-scheduled launch
//     (cooperative, or in clusters of LaunchConfig::cluster CTAs along x) take turns, each with its
//     own shared memory swapped in, until it waits at a grid or cluster barrier, waits on an
//     mbarrier, or exits.
//   - Within a CTA its threads are fibers that run, one at a time, from one barrier to the next.
//   - Warp shuffles (full-warp masks only) and mma.sync are rendezvous of the warp's 32 threads.
//   - cp.async copies are deferred until the thread's wait_group lets them complete, so a read of
//     their destination before the wait sees the old contents.
//   - Stores into a peer CTA's shared memory land in its saved copy; mbarriers keep their state in
//     their own 8 bytes (below).
// The order in which the CTAs, and the fibers of a CTA between two barriers, run is a launch
// parameter: ascending or descending index, or shuffled anew each time. A kernel whose result
// depends on that order reads or writes memory that another thread writes without a barrier
// between them: run it with several orders and compare. A launch also fails, with a message,
// where the CUDA rules are broken in a way a wrong result might not show:
//   - a barrier that the CTA's threads reach at different places in the code, or that some
//     threads reach after others have exited (CUDA: undefined); a grid or cluster barrier that some
//     CTAs never reach; a shuffle that some lanes of a warp never reach;
//   - a write to dynamic shared memory past the launch's size (it is filled with 0xFF bytes, a
//     NaN in every floating-point type, before each CTA, so a read of shared memory that no thread
//     wrote shows up in the result too), a fiber's stack overflowing;
//   - a grid barrier in a launch that is not cooperative, a cluster barrier outside a cluster;
//   - an mbarrier phase that never completes (a round of the launch in which no thread steps on).
// Votes, ldmatrix and statically sized __shared__ arrays (they would be each thread's own) are
// not provided.
//
// The dynamic shared memory is an array of the including translation unit, declared by the
// kernel as `extern __shared__ T name[]`, defined by the translation unit with the same type and
// namespace and a capacity, and passed to launch() (SharedMemory).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace fused_rnn {
namespace cuda_on_cpu {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

// The running fiber's built-ins.
const Dim3& thread_idx();
const Dim3& block_idx();
const Dim3& block_dim();
const Dim3& grid_dim();

// __syncthreads, grid.sync() and cluster.sync(), from the place in the code that calls them.
void block_barrier(const char* file, int line);
void grid_barrier(const char* file, int line);
void cluster_barrier(const char* file, int line);

// __shfl_xor_sync(0xffffffff, value, lane_mask) on a 32-bit word.
uint32_t shfl_xor(uint32_t mask, uint32_t value, int lane_mask, const char* file, int line);

// cp.async: a copy of `bytes` from global src to shared dst, performed when a wait_group lets it
// complete; commit_group closes the thread's current group of copies; wait_group(n) completes all
// but the n most recent groups.
void copy_async(void* dst, const void* src, size_t bytes);
void commit_group();
void wait_group(int n);

// mma.sync.aligned.{m16n8k16 f16 | m16n8k16 bf16 | m16n8k8 tf32}.row.col.f32 with fp32 accumulation:
// d = a·b + d of the warp, each lane giving its fragments in the PTX ISA's layout (a rendezvous of
// the warp's 32 threads, like a shuffle). Products and sums are computed in double and rounded to
// float once per element (the hardware's order of additions is unspecified). tf32 operands: the
// low 13 bits of each 32-bit word are ignored, as the tensor cores do.
enum class MmaKind { F16, BF16, TF32 };
void mma_sync(MmaKind kind, float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, const char* file,
              int line);

// mbarriers (sm_90) in shared memory, as the PTX ISA describes them: a phase completes when its
// pending arrivals and its transaction bytes (expect_tx adds, st.async's complete_tx subtracts; the
// count may go negative first) both reach 0. The 8 bytes of the mbarrier hold the emulation's
// state. A thread whose wait finds its phase incomplete parks (mbarrier_spin) until the launch
// resumes it; a round of the launch in which no thread takes a step is a deadlock, reported as an
// error (the kernel's 20-second trap on a GPU).
unsigned shared_offset(const void* p);  // __cvta_generic_to_shared: the offset in the CTA's shared memory
void mbarrier_init(void* bar, unsigned arrivals);
void mbarrier_arrive_expect_tx(void* bar, unsigned bytes);
bool mbarrier_test_wait_parity(unsigned address, unsigned parity);  // address: shared_offset(bar)
void mbarrier_spin(const char* file, int line);
// st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 into the cluster's CTA `rank`, at the
// offsets of `local` and `local_bar` in this CTA.
void store_async_in_cluster_cta(void* local, uint32_t value, void* local_bar, unsigned rank);

// __trap(): stops the launch with an error naming the place.
[[noreturn]] void trap(const char* file, int line);

// The CTA's rank in its cluster, and a store of `bytes` at the shared-memory address `local` of
// this CTA mapped into the shared memory of the cluster's CTA `rank` (mapa + st.shared::cluster).
unsigned cluster_rank();
void store_in_cluster_cta(void* local, const void* value, size_t bytes, unsigned rank);

enum class Order { Ascending, Descending, Shuffled };
// "ascending", "descending" or "shuffled"; throws std::invalid_argument on another name.
Order order_named(const std::string& name);

struct LaunchConfig {
  Dim3 grid, block;
  size_t smem_bytes = 0;    // dynamic shared memory of the launch
  bool cooperative = false;  // all CTAs at once, grid barriers allowed
  unsigned cluster = 1;      // CTAs per cluster along x (grid.x a multiple of it)
};

// The including translation unit's dynamic shared memory array, and its capacity.
struct SharedMemory {
  unsigned char* (*base)();
  size_t capacity;
};

// Runs kernel() in every thread of every CTA of the launch; throws std::runtime_error on the first
// broken rule (above). seed: the shuffled order's.
void launch(const LaunchConfig& config, const std::function<void()>& kernel, SharedMemory smem, Order order,
            uint64_t seed);

}  // namespace cuda_on_cpu
}  // namespace fused_rnn
