// The CUDA recurrence kernel, forward and BPTT; see recurrence.h for the contract and
// recurrence_launch.cuh for the launch planner that picks a regime and instantiation per call.
//
// One kernel body, three regimes (chosen per call by launch_recurrence from H, B and the device):
//   Single  W_hh of a direction fits one CTA's shared memory: one CTA per (batch tile, direction)
//           owns all of W_hh and the running state h (fp32) on chip for all T steps; a step costs
//           two __syncthreads and no grid-wide barrier. CTAs are independent, so any B works.
//   Grid    W_hh does not fit one CTA: a cooperative persistent launch (co-residency checked with
//           the occupancy API) where C CTAs split the hidden units, each keeping its rows of W_hh in
//           shared memory for all steps; the state goes through an L2-resident fp32 double buffer
//           and grid.sync() separates the steps. Directions run concurrently when the grid fits,
//           else one launch per direction.
//   Step    always correct fallback (any H, or no cooperative launch): the same body, one launch
//           per step, W_hh read from global memory (L2) and h staged in k-tiles.
//
// Per step and batch tile of BT rows, each CTA computes m[b, j] = Σ_k M[j, k]·v[b, k] for its units
// j, with M = W_hh (forward, v = h_{t-1}) or W_hhᵀ (BPTT, v = δ of the previous processed step).
// Thread (ks, j) owns unit j and the k-range ks of KS splits; the KS partial sums are added in a
// fixed order (deterministic, no atomics). All accumulation is in acc_t (fp32, or fp64 for double).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include "cuda/activation.cuh"
#include "cuda/rec_params.h"

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace fused_rnn {
namespace cuda {

template <typename T>
using acc_type = std::conditional_t<std::is_same<T, double>::value, double, float>;

// How one launch splits the work: C CTAs of J units per batch group, NBG batch groups that take
// the tiles g, g + NBG, ...; directions d0 .. d0 + gridDim.y - 1; processing steps [s0, s1)
// (s == T is the BPTT's final dh0 = δ_first·W_hh pass); KT = k-tile of the staged v.
struct Launch {
  int J, C, NBG, KT, d0;
  int64_t s0, s1;
};

enum class Mode { Single, Grid, Step };

constexpr int kMaxThreads = 512;
constexpr int kPrefetch = 4;  // epilogue items per thread whose inputs are loaded before the mat-vec

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
__host__ __device__ inline size_t align16(size_t x) { return (x + 15) & ~size_t(15); }
__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }


// BT consecutive accumulators from shared memory, vectorised where the row is 16-byte aligned.
template <int BT, typename A>
__device__ __forceinline__ void load_row(const A* p, A (&v)[BT]) {
  if constexpr (std::is_same<A, float>::value && BT % 4 == 0) {
#pragma unroll
    for (int i = 0; i < BT / 4; ++i) {
      const float4 q = reinterpret_cast<const float4*>(p)[i];
      v[4 * i] = q.x; v[4 * i + 1] = q.y; v[4 * i + 2] = q.z; v[4 * i + 3] = q.w;
    }
  } else if constexpr (std::is_same<A, double>::value && BT % 2 == 0) {
#pragma unroll
    for (int i = 0; i < BT / 2; ++i) {
      const double2 q = reinterpret_cast<const double2*>(p)[i];
      v[2 * i] = q.x; v[2 * i + 1] = q.y;
    }
  } else {
#pragma unroll
    for (int i = 0; i < BT; ++i) v[i] = p[i];
  }
}

// Shared memory: [W slice: H x J of T, Single/Grid only] [v: KT x BT acc] [partials: KS x BT x J acc].
template <typename T>
size_t smem_bytes(Mode m, int64_t H, int64_t J, int64_t KT, int BT, int threads) {
  using acc_t = acc_type<T>;
  const size_t w = m == Mode::Step ? 0 : align16(size_t(H) * J * sizeof(T));
  return w + align16(size_t(KT) * BT * sizeof(acc_t)) + size_t(threads) * BT * sizeof(acc_t);
}

template <typename T, int BT, Mode M>
__global__ void __launch_bounds__(kMaxThreads, 1) recurrence_kernel(const RecParams p, const Launch L) {
  using acc_t = acc_type<T>;
  extern __shared__ __align__(16) unsigned char smem[];

  const int64_t T_ = p.T, B = p.B, ld = p.D * p.H;
  const int H = static_cast<int>(p.H);
  const int d = L.d0 + static_cast<int>(blockIdx.y);
  // Processing order: the forward runs direction 0 ascending and direction 1 descending in t;
  // BPTT the opposite.
  const bool asc = (d == 1) == p.backward;
  const int cu = static_cast<int>(blockIdx.x) % L.C, bg = static_cast<int>(blockIdx.x) / L.C;
  const int j0 = cu * L.J;
  const int J = min(L.J, H - j0);
  const int nt = static_cast<int>(blockDim.x);
  const int KS = nt / J;
  const int tid = static_cast<int>(threadIdx.x), my_j = tid % J, my_ks = tid / J;
  const int KT = L.KT;
  const int64_t nchunks = ceil_div(B, BT);

  T* ws = reinterpret_cast<T*>(smem);
  const size_t w_bytes = M == Mode::Step ? 0 : align16(size_t(H) * J * sizeof(T));
  acc_t* vs = reinterpret_cast<acc_t*>(smem + w_bytes);  // staged v (Single: the state itself), [k][BT]
  acc_t* part = vs + align16(size_t(KT) * BT * sizeof(acc_t)) / sizeof(acc_t);  // [KS][BT][J]

  T* buf = static_cast<T*>(p.buf);
  const T* yv = static_cast<const T*>(p.y);
  const T* hin = static_cast<const T*>(p.h_in) + d * B * H;
  T* hout = static_cast<T*>(p.h_out) + d * B * H;
  const T* wg = static_cast<const T*>(p.w) + int64_t(d) * H * H;
  acc_t* xbuf = static_cast<acc_t*>(p.scratch);
  auto xslot = [&](int64_t s) { return xbuf + ((s & 1) * p.D + d) * B * H; };
  acc_t* last = xbuf == nullptr ? nullptr : xbuf + (2 * p.D + d) * B * H;

  auto batch_at = [&](int64_t t) -> int64_t { return p.steps ? p.steps[t] : (t < T_ ? B : 0); };
  auto offset_at = [&](int64_t t) -> int64_t { return p.steps ? p.steps[T_ + 1 + t] : t * B; };

  // Stage this CTA's M[j, k] as ws[k*J + j] (conflict-free reads: lanes take consecutive j).
  if constexpr (M != Mode::Step) {
    const int64_t n = int64_t(J) * H;
    if (!p.backward) {  // M[j, k] = W[j0 + j, k]: read rows of W (k fastest, coalesced)
      for (int64_t i = tid; i < n; i += nt) {
        const int j = static_cast<int>(i / H), k = static_cast<int>(i % H);
        ws[k * J + j] = wg[int64_t(j0 + j) * H + k];
      }
    } else {  // M[j, k] = W[k, j0 + j]
      for (int64_t i = tid; i < n; i += nt) {
        const int k = static_cast<int>(i / J), j = static_cast<int>(i % J);
        ws[k * J + j] = wg[int64_t(k) * H + j0 + j];
      }
    }
  }
  for (int i = tid; i < KT * BT; i += nt) vs[i] = acc_t(0);
  __syncthreads();

  auto weight = [&](int k) -> acc_t {
    if constexpr (M != Mode::Step) {
      return static_cast<acc_t>(ws[k * J + my_j]);
    } else {
      return static_cast<acc_t>(p.backward ? wg[int64_t(k) * H + j0 + my_j] : wg[int64_t(j0 + my_j) * H + k]);
    }
  };

  // Split of a full k-tile among the KS threads of a unit (32-bit: my_ks·KT < 2^31 for every regime).
  const int kb_full = my_ks * KT / KS, ke_full = (my_ks + 1) * KT / KS;

  // part[ks][b][j] = Σ_{k in split ks} M[j, k]·v[b, k]; load_v(b, k) supplies v (Grid/Step: staged
  // per k-tile; Single: v is already the state in vs and the caller has synchronised). Ends with
  // a __syncthreads so the partials are visible.
  auto matvec = [&](auto&& load_v) {
    acc_t a[BT];
#pragma unroll
    for (int b = 0; b < BT; ++b) a[b] = acc_t(0);
    for (int k0 = 0; k0 < H; k0 += KT) {
      const int kt = min(KT, H - k0);
      if constexpr (M != Mode::Single) {
        for (int i = tid; i < kt * BT; i += nt) {
          const int b = i / kt, kk = i % kt;
          vs[kk * BT + b] = load_v(b, k0 + kk);
        }
        __syncthreads();
      }
      if (my_ks < KS) {
        // This thread's k-range of the tile; full tiles use the split computed once per launch.
        const int kb = k0 + (kt == KT ? kb_full : my_ks * kt / KS);
        const int ke = k0 + (kt == KT ? ke_full : (my_ks + 1) * kt / KS);
#pragma unroll 4
        for (int k = kb; k < ke; ++k) {
          const acc_t w = weight(k);
          acc_t v[BT];
          load_row<BT>(vs + (k - k0) * BT, v);
#pragma unroll
          for (int b = 0; b < BT; ++b) a[b] = fma(w, v[b], a[b]);
        }
      }
      if constexpr (M != Mode::Single) {
        if (k0 + KT < H) __syncthreads();  // before the next tile overwrites vs
      }
    }
    if (my_ks < KS) {
#pragma unroll
      for (int b = 0; b < BT; ++b) part[(my_ks * BT + b) * J + my_j] = a[b];
    }
    __syncthreads();
  };
  auto reduce = [&](int b, int j) {
    acc_t m = part[b * J + j];
    for (int ks = 1; ks < KS; ++ks) m += part[(ks * BT + b) * J + j];
    return m;
  };

  for (int64_t s = L.s0; s < L.s1; ++s) {
    if (s == T_) {
      // BPTT only: dh0[b] = δ_first[b]·W_hh, δ_first = the row's last processed δ.
      for (int64_t ci = bg; ci < nchunks; ci += L.NBG) {
        const int64_t c0 = ci * BT;
        const int nb = static_cast<int>(min64(BT, B - c0));
        if constexpr (M == Mode::Single) {
          __syncthreads();  // the last step's epilogue wrote vs
          matvec([](int, int) { return acc_t(0); });
        } else {
          matvec([&](int b, int k) { return b < nb ? __ldcg(last + (c0 + b) * H + k) : acc_t(0); });
        }
        for (int i = tid; i < nb * J; i += nt) {
          const int b = i / J, j = i % J;
          hout[(c0 + b) * H + j0 + j] = static_cast<T>(reduce(b, j));
        }
      }
      continue;
    }
    const int64_t t = asc ? s : T_ - 1 - s;
    const int64_t nact = batch_at(t), nnext = batch_at(t + 1), off = offset_at(t);
    // A row reads the state of the previous processed step if it was alive there; otherwise it
    // starts here (forward: from h0; BPTT: from the hy gradient). It ends here when it is not
    // alive at the next processed step.
    auto reads_state = [&](int64_t row) { return asc ? s > 0 : row < nnext; };
    auto is_final = [&](int64_t row) { return asc ? row >= nnext : t == 0; };

    for (int64_t ci = bg; ci < nchunks; ci += L.NBG) {
      const int64_t c0 = ci * BT;
      const int nb = static_cast<int>(max64(0, min64(BT, nact - c0)));
      if (nb == 0) break;  // alive rows are a prefix; later tiles are empty too (CTA-uniform)
      const int nitems = nb * J;  // epilogue items (b, j) of this tile; thread tid takes tid, tid + nt, ...
      auto index_of = [&](int i) { return (off + c0 + i / J) * ld + int64_t(d) * H + j0 + i % J; };
      // Load this step's pre-activations (and, in BPTT, the forward outputs) of the first kPrefetch
      // items now, so that their global-memory latency overlaps the mat-vec instead of following it.
      acc_t pre_in[kPrefetch], pre_y[kPrefetch];
#pragma unroll
      for (int q = 0; q < kPrefetch; ++q) {
        const int i = tid + q * nt;
        if (i < nitems) {
          const int64_t idx = index_of(i);
          pre_in[q] = static_cast<acc_t>(buf[idx]);
          pre_y[q] = p.backward ? static_cast<acc_t>(yv[idx]) : acc_t(0);
        }
      }
      if constexpr (M == Mode::Single) {
        // Rows that start at this step load h0 into the state (forward: every row at the first
        // step; reverse direction of a packed batch: the rows not alive at the step before).
        const bool any_start = asc ? s == 0 : nnext < c0 + nb;
        if (!p.backward && any_start) {
          for (int i = tid; i < nb * H; i += nt) {
            const int b = i / H, k = i % H;
            if (!reads_state(c0 + b)) vs[k * BT + b] = static_cast<acc_t>(hin[(c0 + b) * H + k]);
          }
        }
        __syncthreads();
        matvec([](int, int) { return acc_t(0); });
      } else {
        const acc_t* prev = xslot(s + 1);  // slot of step s - 1
        matvec([&](int b, int k) -> acc_t {
          if (b >= nb) return acc_t(0);
          const int64_t row = c0 + b;
          if (reads_state(row)) return __ldcg(prev + row * H + k);
          return p.backward ? acc_t(0) : static_cast<acc_t>(hin[row * H + k]);
        });
      }
      acc_t* cur = M == Mode::Single ? nullptr : xslot(s);
      // Item i: in = pre_t (forward) or g_t (BPTT) at buf[idx], yy = h_t (BPTT only).
      auto epilogue = [&](int i, acc_t in, acc_t yy) {
        const int b = i / J, j = i % J, jg = j0 + j;
        const int64_t row = c0 + b;
        const acc_t m = reduce(b, j);
        acc_t v;
        if (!p.backward) {
          v = act(in + m, p.relu);
          if (is_final(row)) hout[row * H + jg] = static_cast<T>(v);
        } else {
          const acc_t g = in + (reads_state(row) ? m : static_cast<acc_t>(hin[row * H + jg]));
          v = p.relu ? (yy <= acc_t(0) ? acc_t(0) : g) : g * (acc_t(1) - yy * yy);
          if (M != Mode::Single && is_final(row)) last[row * H + jg] = v;
        }
        buf[index_of(i)] = static_cast<T>(v);
        if constexpr (M == Mode::Single) {
          vs[jg * BT + b] = v;  // safe: every read of vs in this step happened before matvec's last sync
        } else {
          cur[row * H + jg] = v;
        }
      };
#pragma unroll
      for (int q = 0; q < kPrefetch; ++q) {
        const int i = tid + q * nt;
        if (i < nitems) epilogue(i, pre_in[q], pre_y[q]);
      }
      for (int i = tid + kPrefetch * nt; i < nitems; i += nt) {
        const int64_t idx = index_of(i);
        epilogue(i, static_cast<acc_t>(buf[idx]), p.backward ? static_cast<acc_t>(yv[idx]) : acc_t(0));
      }
    }
    if constexpr (M == Mode::Grid) {
      if (s + 1 < L.s1) cooperative_groups::this_grid().sync();
    }
  }
}

}  // namespace cuda
}  // namespace fused_rnn
