// CUDA kernel source, run on the CPU: enough of CUDA's built-ins for a kernel's own .cuh to compile
// as host C++ and run, one fiber per CUDA thread, so that tests on machines without a GPU execute
// the kernel code itself (not a model of it) against a reference (recurrence_kernel_on_cpu.cpp).
//
// cuda_on_cpu_builtins.h gives the kernel's source the CUDA qualifiers (__global__, __shared__, ...),
// threadIdx / blockIdx / blockDim / gridDim, __syncthreads, cooperative_groups::this_grid().sync(),
// float4 / double2 and __ldcg; this header is the runtime that launches it.
//
// How a launch runs (cuda_on_cpu.cpp), all on the calling OS thread: the CTAs of a plain launch
// one after another; those of a cooperative launch in turns, each running up to the next grid
// barrier with its own shared memory swapped in. Within a CTA its threads are fibers that run, one
// at a time, from one barrier to the next. The order in which the CTAs, and the fibers of a CTA
// between two barriers, run is a launch parameter: ascending or descending index, or shuffled
// anew each time. A kernel whose result depends on that order reads or writes memory that another
// thread writes without a barrier between them: run it with several orders and compare. A launch
// also fails, with a message, where the CUDA rules are broken in a way a wrong result might not
// show:
//   - a barrier that the CTA's threads reach at different places in the code, or that some
//     threads reach after others have exited (CUDA: undefined); a grid barrier that some CTAs
//     never reach;
//   - a write to dynamic shared memory past the launch's size (it is filled with 0xFF bytes, a
//     NaN in every floating-point type, before each CTA, so a read of shared memory that no thread
//     wrote shows up in the result too), a fiber's stack overflowing;
//   - a grid barrier in a launch that is not cooperative.
// Warp-level operations (shuffles, votes), thread-block clusters and statically sized __shared__
// arrays (they would be each thread's own) are not provided.
//
// The dynamic shared memory is an array of the including translation unit, declared by the
// kernel as `extern __shared__ unsigned char name[]`, defined by the translation unit at namespace
// scope with a capacity, and passed to launch() (SharedMemory).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>

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

// __syncthreads and grid.sync(), from the place in the code that calls them.
void block_barrier(const char* file, int line);
void grid_barrier(const char* file, int line);

enum class Order { Ascending, Descending, Shuffled };

struct LaunchConfig {
  Dim3 grid, block;
  size_t smem_bytes = 0;    // dynamic shared memory of the launch
  bool cooperative = false;  // all CTAs at once, grid barriers allowed
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
