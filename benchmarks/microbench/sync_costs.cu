// Microbenchmarks of the costs a recurrence step is built from, for the regime design in
// GPU_PLAN.md ("Synchronisation costs to design around: measure them in the first GPU minute"):
// dependent FFMA / tanhf / mma.sync chains, __syncthreads at 512 threads, the cluster barrier and a
// distributed-shared-memory exchange (each CTA writes a slice into every peer, then the cluster
// barrier; or by st.async completing on mbarriers, with no cluster barrier) for cluster sizes 2..16
// (sm_90), and a cooperative grid.sync over all SMs.
//
// Standalone (no torch): nvcc -std=c++17 -O3 -arch=sm_90 sync_costs.cu -o sync_costs && ./sync_costs
// Prints a Markdown table: per operation, cycles (clock64 in the kernel) and ns (CUDA events over
// the whole launch divided by the repetitions, launch overhead amortised).
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace cg = cooperative_groups;

#define CHECK(x)                                                                        \
  do {                                                                                  \
    cudaError_t e_ = (x);                                                               \
    if (e_ != cudaSuccess) {                                                            \
      std::printf("| %s | error: %s | — |\n", #x, cudaGetErrorString(e_));              \
      return false;                                                                     \
    }                                                                                   \
  } while (0)

constexpr int kReps = 4096;

__device__ long long g_cycles;  // thread 0 of block 0 writes its measured cycles
__device__ float g_sink;

__global__ void ffma_chain(float seed) {
  float a = seed;
  const long long t0 = clock64();
#pragma unroll 16
  for (int i = 0; i < kReps; ++i) a = fmaf(a, 0.999f, 0.001f);
  const long long t1 = clock64();
  if (threadIdx.x == 0) g_cycles = t1 - t0;
  if (a == 12345.f) g_sink = a;
}

__global__ void tanh_chain(float seed) {
  float a = seed;
  const long long t0 = clock64();
#pragma unroll 8
  for (int i = 0; i < kReps; ++i) a = tanhf(a + 0.5f);
  const long long t1 = clock64();
  if (threadIdx.x == 0) g_cycles = t1 - t0;
  if (a == 12345.f) g_sink = a;
}

__global__ void hmma_chain(unsigned seed) {
  float d[4] = {0.f, 0.f, 0.f, 0.f};
  const unsigned a0 = seed, a1 = seed ^ 1u, a2 = seed ^ 2u, a3 = seed ^ 3u, b0 = seed ^ 4u, b1 = seed ^ 5u;
  const long long t0 = clock64();
  for (int i = 0; i < kReps; ++i) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
  const long long t1 = clock64();
  if (threadIdx.x == 0) g_cycles = t1 - t0;
  if (d[0] + d[1] + d[2] + d[3] == 12345.f) g_sink = d[0];
}

__global__ void tf32_chain(unsigned seed) {
  float d[4] = {0.f, 0.f, 0.f, 0.f};
  const unsigned a0 = seed, a1 = seed ^ 1u, a2 = seed ^ 2u, a3 = seed ^ 3u, b0 = seed ^ 4u, b1 = seed ^ 5u;
  const long long t0 = clock64();
  for (int i = 0; i < kReps; ++i) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
  const long long t1 = clock64();
  if (threadIdx.x == 0) g_cycles = t1 - t0;
  if (d[0] + d[1] + d[2] + d[3] == 12345.f) g_sink = d[0];
}

__global__ void block_barrier() {
  const long long t0 = clock64();
  for (int i = 0; i < kReps; ++i) __syncthreads();
  const long long t1 = clock64();
  if (threadIdx.x == 0 && blockIdx.x == 0) g_cycles = t1 - t0;
}

__global__ void cluster_barrier() {
  cg::cluster_group cluster = cg::this_cluster();
  const long long t0 = clock64();
  for (int i = 0; i < kReps; ++i) cluster.sync();
  const long long t1 = clock64();
  if (threadIdx.x == 0 && blockIdx.x == 0) g_cycles = t1 - t0;
}

// The cluster barrier without its memory ordering (arrive.relaxed): what the release/acquire of
// cluster.sync() costs on top (on sm_90 it compiles to MEMBAR.ALL.GPU before the arrive). Orders no
// data, so it cannot replace cluster.sync() where peers' shared-memory writes must be seen.
__global__ void cluster_barrier_relaxed() {
  const long long t0 = clock64();
  for (int i = 0; i < kReps; ++i) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
    asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
#endif
  }
  const long long t1 = clock64();
  if (threadIdx.x == 0 && blockIdx.x == 0) g_cycles = t1 - t0;
}

// Each CTA of the cluster writes `words` floats (its slice of h) into every peer's buffer, then the
// cluster barrier: the exchange a cluster regime would do once per step.
__global__ void dsmem_exchange(int words) {
  extern __shared__ float slice[];  // [cluster size][words]
  cg::cluster_group cluster = cg::this_cluster();
  const unsigned rank = cluster.block_rank(), n = cluster.num_blocks();
  const long long t0 = clock64();
  for (int i = 0; i < kReps; ++i) {
    for (unsigned peer = 0; peer < n; ++peer) {
      float* remote = cluster.map_shared_rank(slice, peer);
      for (int w = threadIdx.x; w < words; w += blockDim.x) remote[rank * words + w] = float(i + w);
    }
    cluster.sync();
  }
  const long long t1 = clock64();
  if (threadIdx.x == 0 && blockIdx.x == 0) g_cycles = t1 - t0;
}

// The exchange above plus the step's output store to global memory (each thread one float, as the
// resident kernels' epilogue writes h_t or δ_t), issued before the cluster barrier (as the kernels
// do now) or just after it. The barrier's MEMBAR.ALL.GPU waits for a global store issued before it;
// one issued after it has a whole step to drain before the next barrier. The difference between the
// two rows is what moving the output stores past the barrier would save per step.
__global__ void dsmem_exchange_global_store(int words, float* out, int store_after_barrier) {
  extern __shared__ float slice[];  // [cluster size][words]
  cg::cluster_group cluster = cg::this_cluster();
  const unsigned rank = cluster.block_rank(), n = cluster.num_blocks();
  float* mine = out + (size_t(blockIdx.x) * blockDim.x + threadIdx.x) * 8;
  const long long t0 = clock64();
  for (int i = 0; i < kReps; ++i) {
    for (unsigned peer = 0; peer < n; ++peer) {
      float* remote = cluster.map_shared_rank(slice, peer);
      for (int w = threadIdx.x; w < words; w += blockDim.x) remote[rank * words + w] = float(i + w);
    }
    if (!store_after_barrier) mine[i & 7] = float(i);
    cluster.sync();
    if (store_after_barrier) mine[i & 7] = float(i);
  }
  const long long t1 = clock64();
  if (threadIdx.x == 0 && blockIdx.x == 0) g_cycles = t1 - t0;
}

// The same exchange completing on mbarriers instead of the cluster barrier (issue 11's design):
// each CTA stores its slice into every peer with st.async, which counts its bytes on the peer's
// mbarrier, and waits on its own mbarrier for the bytes of the step (double-buffered: two barriers,
// phase parity (i / 2) & 1). No MEMBAR.ALL.GPU in the loop (SASS: SYNCS.ARRIVE.TRANS64, STAS,
// SYNCS.PHASECHK.TRANS64.TRYWAIT). A global store per thread before the stores, as the kernels'
// epilogue makes, when global_store is set.
__global__ void dsmem_exchange_mbarrier(int words, float* out, int global_store) {
  extern __shared__ __align__(16) unsigned char raw[];  // [2 mbarriers][2][cluster size][words]
  float* slices = reinterpret_cast<float*>(raw + 16);
  cg::cluster_group cluster = cg::this_cluster();
  const unsigned rank = cluster.block_rank(), n = cluster.num_blocks();
  const unsigned bar0 = static_cast<unsigned>(__cvta_generic_to_shared(raw));
  float* mine = out + (size_t(blockIdx.x) * blockDim.x + threadIdx.x) * 8;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (threadIdx.x == 0) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(bar0));
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(bar0 + 8));
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  cluster.sync();  // the peers' barriers are initialised before any store counts on them
  const unsigned bytes = n * unsigned(words) * 4u;  // what this CTA receives per step
  const long long t0 = clock64();
  for (int i = 0; i < kReps; ++i) {
    const unsigned q = i & 1, bar = bar0 + 8 * q;
    if (threadIdx.x == 0) {
      asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
    }
    if (global_store) mine[i & 7] = float(i);
    const unsigned base = static_cast<unsigned>(__cvta_generic_to_shared(slices + (q * n + rank) * words));
    for (unsigned peer = 0; peer < n; ++peer) {
      unsigned remote_bar;
      asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote_bar) : "r"(bar), "r"(peer));
      for (int w = threadIdx.x; w < words; w += blockDim.x) {
        unsigned remote;
        asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(base + 4u * w), "r"(peer));
        asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];" ::"r"(remote),
                     "r"(__float_as_uint(float(i + w))), "r"(remote_bar)
                     : "memory");
      }
    }
    unsigned done = 0;
    while (!done) {
      asm volatile(
          "{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\n\t"
          "selp.u32 %0, 1, 0, p;\n\t}"
          : "=r"(done)
          : "r"(bar), "r"((i >> 1) & 1)
          : "memory");
    }
  }
  const long long t1 = clock64();
  cluster.sync();  // no CTA leaves while a peer may still count on it
  if (threadIdx.x == 0 && blockIdx.x == 0) g_cycles = t1 - t0;
#endif
}

__global__ void grid_barrier() {
  cg::grid_group grid = cg::this_grid();
  const long long t0 = clock64();
  for (int i = 0; i < kReps / 16; ++i) grid.sync();
  const long long t1 = clock64();
  if (threadIdx.x == 0 && blockIdx.x == 0) g_cycles = (t1 - t0) * 16;  // per kReps, like the others
}

struct Timer {
  cudaEvent_t a, b;
  Timer() {
    cudaEventCreate(&a);
    cudaEventCreate(&b);
  }
  ~Timer() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
};

bool report(const char* what, float ms, int reps_done) {
  long long cycles = 0;
  CHECK(cudaMemcpyFromSymbol(&cycles, g_cycles, sizeof(cycles)));
  std::printf("| %s | %.1f | %.1f |\n", what, double(cycles) / kReps, 1e6 * ms / reps_done);
  return true;
}

// A row's error, named by the row, and false.
bool failed(const char* what, cudaError_t e) {
  std::printf("| %s | error: %s | — |\n", what, cudaGetErrorString(e));
  (void)cudaGetLastError();
  return false;
}

template <typename Launch>
bool timed(const char* what, Launch&& launch, int reps = kReps) {
  Timer t;
  cudaError_t e = launch();  // warm-up
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
  if (e != cudaSuccess) return failed(what, e);
  cudaEventRecord(t.a);
  e = launch();
  cudaEventRecord(t.b);
  if (e == cudaSuccess) e = cudaEventSynchronize(t.b);
  if (e != cudaSuccess) return failed(what, e);
  float ms = 0.f;
  cudaEventElapsedTime(&ms, t.a, t.b);
  return report(what, ms, reps);
}

// One cluster of `cluster` CTAs of `threads` threads (sizes over 8 allowed); the launch's error.
cudaError_t cluster_launch(const void* kernel, int cluster, int threads, size_t smem, void** args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(cluster);
  cfg.blockDim = dim3(threads);
  cfg.dynamicSmemBytes = smem;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = cluster;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelExC(&cfg, kernel, args);
}

int main() {
  int dev = 0, sms = 0, clock_khz = 0, major = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, dev);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, dev);
  std::printf("# Synchronisation and chain costs: %s, %d SMs, max SM clock %.0f MHz\n\n", prop.name, sms,
              clock_khz / 1e3);
  std::printf("| operation (one of %d in a dependent loop) | cycles each (clock64) | ns each (events) |\n", kReps);
  std::printf("|---|---|---|\n");
  timed("FFMA, dependent", [] { ffma_chain<<<1, 32>>>(0.5f); return cudaGetLastError(); });
  timed("tanhf, dependent", [] { tanh_chain<<<1, 32>>>(0.5f); return cudaGetLastError(); });
  timed("mma.sync m16n8k16 f16, dependent", [] { hmma_chain<<<1, 32>>>(0x3c003c00u); return cudaGetLastError(); });
  timed("mma.sync m16n8k8 tf32, dependent", [] { tf32_chain<<<1, 32>>>(0x3f800000u); return cudaGetLastError(); });
  for (int threads : {128, 512}) {
    const std::string name = "__syncthreads, " + std::to_string(threads) + " threads";
    timed(name.c_str(), [threads] { block_barrier<<<1, threads>>>(); return cudaGetLastError(); });
  }
  if (major >= 9) {
    for (const void* k : {reinterpret_cast<const void*>(cluster_barrier), reinterpret_cast<const void*>(dsmem_exchange),
                          reinterpret_cast<const void*>(cluster_barrier_relaxed),
                          reinterpret_cast<const void*>(dsmem_exchange_global_store),
                          reinterpret_cast<const void*>(dsmem_exchange_mbarrier)}) {
      cudaFuncSetAttribute(k, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
    }
    for (int c : {2, 4, 8, 16}) {
      const std::string name = "cluster.sync() (release/acquire), cluster of " + std::to_string(c) + " x 256 threads";
      timed(name.c_str(), [c] {
        return cluster_launch(reinterpret_cast<const void*>(cluster_barrier), c, 256, 0, nullptr);
      });
      const std::string relaxed = "cluster barrier arrive.relaxed (no ordering), cluster of " + std::to_string(c);
      timed(relaxed.c_str(), [c] {
        return cluster_launch(reinterpret_cast<const void*>(cluster_barrier_relaxed), c, 256, 0, nullptr);
      });
    }
    for (int c : {2, 4, 8, 16}) {
      int words = 1024 / c;  // a 1024-unit h split over the cluster: each CTA owns 1024 / c of it
      void* args[] = {&words};
      const size_t smem = size_t(c) * words * sizeof(float);
      const std::string name = "DSMEM exchange of h[1024] fp32 + cluster barrier, cluster of " + std::to_string(c);
      timed(name.c_str(), [&] {
        return cluster_launch(reinterpret_cast<const void*>(dsmem_exchange), c, 256, smem, args);
      });
    }
  }
  if (major >= 9) {
    float* out = nullptr;
    CHECK(cudaMalloc(&out, size_t(16) * 256 * 8 * sizeof(float)));
    for (int c : {2, 8}) {
      for (int after : {0, 1}) {
        int words = 1024 / c;
        void* args[] = {&words, &out, &after};
        const size_t smem = size_t(c) * words * sizeof(float);
        const std::string name = "DSMEM exchange + a global store per thread " +
                                 std::string(after ? "after" : "before") + " the cluster barrier, cluster of " +
                                 std::to_string(c);
        timed(name.c_str(), [&] {
          return cluster_launch(reinterpret_cast<const void*>(dsmem_exchange_global_store), c, 256, smem, args);
        });
      }
    }
    for (int c : {2, 4, 8, 16}) {
      for (int store : {0, 1}) {
        int words = 1024 / c;
        void* args[] = {&words, &out, &store};
        const size_t smem = 16 + 2 * size_t(c) * words * sizeof(float);
        const std::string name = "DSMEM exchange of h[1024] fp32 by st.async + mbarrier (no cluster barrier)" +
                                 std::string(store ? " + a global store per thread" : "") + ", cluster of " +
                                 std::to_string(c);
        timed(name.c_str(), [&] {
          return cluster_launch(reinterpret_cast<const void*>(dsmem_exchange_mbarrier), c, 256, smem, args);
        });
      }
    }
    CHECK(cudaFree(out));
  }
  {
    const std::string name = "grid.sync, " + std::to_string(sms) + " CTAs x 128 threads (cooperative)";
    timed(name.c_str(), [sms] {
      void* args[] = {nullptr};
      return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(grid_barrier), dim3(sms), dim3(128), args, 0, 0);
    }, kReps / 16);
  }
  return 0;
}
