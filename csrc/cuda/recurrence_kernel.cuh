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
// The direction is a template parameter: recurrence_kernel<T, BT, M, false> is the forward,
// <T, BT, M, true> the BPTT; a body has no run-time branch on it.
//
// Per step and batch tile of BT rows, each CTA computes m[b, j] = Σ_k M[j, k]·v[b, k] for its units
// j, with M = W_hh (forward, v = h_{t-1}) or W_hhᵀ (BPTT, v = δ of the previous processed step).
// Thread (ks, j) owns unit j and the k-range ks of KS splits; the KS partial sums are added in a
// fixed order (deterministic, no atomics). All accumulation is in acc_t (fp32, or fp64 for double).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#ifndef FUSED_RNN_CUDA_ON_CPU  // the kernel's CPU execution for tests supplies these (cuda_on_cpu.h)
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#endif

#include "cuda/activation.cuh"
#include "cuda/rec_params.h"
#include "cuda/recurrence_plan.h"

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace fused_rnn {
namespace cuda {

// Launch, Mode, kMaxThreads and the shared-memory layout's size: recurrence_plan.h.
constexpr int kPrefetch = 4;  // epilogue items per thread whose inputs are loaded before the mat-vec

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

// What one CTA works on for all its steps: direction d, units j0 .. j0 + J - 1; thread
// tid = my_ks·J + my_j owns unit my_j and the k-split my_ks of KS (threads with my_ks >= KS only
// stage and store); its shared memory and its direction's slices of the global buffers.
template <typename T, int BT>
struct Cta {
  using acc_t = acc_type<T>;
  int H, d, j0, J, nt, KS, tid, my_j, my_ks, KT;
  int kb_full, ke_full;  // this thread's k-range of a full k-tile (32-bit: my_ks·KT < 2^31 for every regime)
  int64_t B, ld;         // ld = D·H: the row stride of buf and y
  T* ws;                 // Single/Grid: M staged, ws[k*J + j] = M[j, k]          [H][J]
  acc_t* vs;             // v staged per k-tile (Single: the state itself)        [KT][BT]
  acc_t* part;           // the mat-vec's KS partial sums                          [KS][BT][J]
  T* buf;                // out (forward) or dpre (BPTT)                           [N, D*H]
  const T* yv;           // BPTT: the forward output                               [N, D*H]
  const T* hin;          // h0 (forward) or ghy (BPTT) of direction d              [B, H]
  T* hout;               // hy (forward) or dh0 (BPTT) of direction d              [B, H]
  const T* wg;           // W_hh of direction d                                     [H, H]
  acc_t* xbuf;           // Grid/Step: the state double buffer                     [2][D][B][H]
  acc_t* last;           // Grid/Step BPTT: each row's last processed δ, direction d [B, H]
};

template <typename T, int BT, Mode M>
__device__ __forceinline__ Cta<T, BT> make_cta(const RecParams& p, const Launch& L, unsigned char* smem) {
  using acc_t = acc_type<T>;
  Cta<T, BT> c;
  c.B = p.B;
  c.ld = p.D * p.H;
  c.H = static_cast<int>(p.H);
  c.d = L.d0 + static_cast<int>(blockIdx.y);
  c.j0 = (static_cast<int>(blockIdx.x) % L.C) * L.J;
  c.J = min(L.J, c.H - c.j0);
  c.nt = static_cast<int>(blockDim.x);
  c.KS = c.nt / c.J;
  c.tid = static_cast<int>(threadIdx.x);
  c.my_j = c.tid % c.J;
  c.my_ks = c.tid / c.J;
  c.KT = L.KT;
  c.kb_full = c.my_ks * c.KT / c.KS;
  c.ke_full = (c.my_ks + 1) * c.KT / c.KS;

  // Shared memory [ws | vs | part], as smem_bytes (recurrence_plan.h) sizes it.
  c.ws = reinterpret_cast<T*>(smem);
  const size_t w_bytes = M == Mode::Step ? 0 : align16(size_t(c.H) * c.J * sizeof(T));
  c.vs = reinterpret_cast<acc_t*>(smem + w_bytes);
  c.part = c.vs + align16(size_t(c.KT) * BT * sizeof(acc_t)) / sizeof(acc_t);

  c.buf = static_cast<T*>(p.buf);
  c.yv = static_cast<const T*>(p.y);
  c.hin = static_cast<const T*>(p.h_in) + c.d * c.B * c.H;
  c.hout = static_cast<T*>(p.h_out) + c.d * c.B * c.H;
  c.wg = static_cast<const T*>(p.w) + int64_t(c.d) * c.H * c.H;
  c.xbuf = static_cast<acc_t*>(p.scratch);
  c.last = c.xbuf == nullptr ? nullptr : c.xbuf + (2 * p.D + c.d) * c.B * c.H;
  return c;
}

// Rows alive at step t of the (possibly packed) batch, and where step t's rows start in buf's N.
__device__ __forceinline__ int64_t batch_at(const RecParams& p, int64_t t) {
  return p.steps ? p.steps[t] : (t < p.T ? p.B : 0);
}
__device__ __forceinline__ int64_t offset_at(const RecParams& p, int64_t t) {
  return p.steps ? p.steps[p.T + 1 + t] : t * p.B;
}

// Grid/Step: the state [B, H] of direction d written at processed step s (read at step s + 1).
template <typename T, int BT>
__device__ __forceinline__ acc_type<T>* state_slot(const Cta<T, BT>& c, const RecParams& p, int64_t s) {
  return c.xbuf + ((s & 1) * p.D + c.d) * c.B * c.H;
}

// Which rows of processed step s (time t) carry state. A row reads the state of the previous
// processed step if it was alive there; otherwise it starts here (forward: from h0; BPTT: from the
// hy gradient). It ends here when it is not alive at the next processed step (nnext rows at t + 1).
struct StepRows {
  bool asc;
  int64_t s, t, nnext;
  __device__ __forceinline__ bool reads_state(int64_t row) const { return asc ? s > 0 : row < nnext; }
  __device__ __forceinline__ bool is_final(int64_t row) const { return asc ? row >= nnext : t == 0; }
};

// ---- the mat-vec ---------------------------------------------------------------------------------

// Stage this CTA's M[j, k] [J, H] as ws[k*J + j] (conflict-free reads: lanes take consecutive j).
template <typename T, int BT, bool Backward>
__device__ __forceinline__ void stage_weights(const Cta<T, BT>& c) {
  const int64_t n = int64_t(c.J) * c.H;
  if constexpr (!Backward) {  // M[j, k] = W[j0 + j, k]: read rows of W (k fastest, coalesced)
    for (int64_t i = c.tid; i < n; i += c.nt) {
      const int j = static_cast<int>(i / c.H), k = static_cast<int>(i % c.H);
      c.ws[k * c.J + j] = c.wg[int64_t(c.j0 + j) * c.H + k];
    }
  } else {  // M[j, k] = W[k, j0 + j]
    for (int64_t i = c.tid; i < n; i += c.nt) {
      const int k = static_cast<int>(i / c.J), j = static_cast<int>(i % c.J);
      c.ws[k * c.J + j] = c.wg[int64_t(k) * c.H + c.j0 + j];
    }
  }
}

// M[my_j, k] of this thread's unit, M = W_hh (forward) or W_hhᵀ (BPTT): from ws (Single/Grid) or
// from W_hh in global memory (Step).
template <typename T, int BT, Mode M, bool Backward>
__device__ __forceinline__ acc_type<T> weight(const Cta<T, BT>& c, int k) {
  using acc_t = acc_type<T>;
  if constexpr (M != Mode::Step) {
    return static_cast<acc_t>(c.ws[k * c.J + c.my_j]);
  } else if constexpr (Backward) {
    return static_cast<acc_t>(c.wg[int64_t(k) * c.H + c.j0 + c.my_j]);
  } else {
    return static_cast<acc_t>(c.wg[int64_t(c.j0 + c.my_j) * c.H + k]);
  }
}

// One batch tile's mat-vec, before the reduction: part[ks][b][j] = Σ_{k in split ks} M[j, k]·v[b, k]
// for the CTA's units j, v [BT, H]. load_v(b, k) supplies v (Grid/Step: staged into vs per k-tile
// of KT; Single: v is already the state in vs [H][BT] and the caller has synchronised). Ends with a
// __syncthreads so the partials are visible to reduce_partials.
template <typename T, int BT, Mode M, bool Backward, typename LoadV>
__device__ __forceinline__ void matvec(const Cta<T, BT>& c, LoadV&& load_v) {
  using acc_t = acc_type<T>;
  acc_t a[BT];
#pragma unroll
  for (int b = 0; b < BT; ++b) a[b] = acc_t(0);
  for (int k0 = 0; k0 < c.H; k0 += c.KT) {
    const int kt = min(c.KT, c.H - k0);
    if constexpr (M != Mode::Single) {
      for (int i = c.tid; i < kt * BT; i += c.nt) {
        const int b = i / kt, kk = i % kt;
        c.vs[kk * BT + b] = load_v(b, k0 + kk);
      }
      __syncthreads();
    }
    if (c.my_ks < c.KS) {
      // This thread's k-range of the tile; full tiles use the split computed once per launch.
      const int kb = k0 + (kt == c.KT ? c.kb_full : c.my_ks * kt / c.KS);
      const int ke = k0 + (kt == c.KT ? c.ke_full : (c.my_ks + 1) * kt / c.KS);
#pragma unroll 4
      for (int k = kb; k < ke; ++k) {
        const acc_t w = weight<T, BT, M, Backward>(c, k);
        acc_t v[BT];
        load_row<BT>(c.vs + (k - k0) * BT, v);
#pragma unroll
        for (int b = 0; b < BT; ++b) a[b] = fma(w, v[b], a[b]);
      }
    }
    if constexpr (M != Mode::Single) {
      if (k0 + c.KT < c.H) __syncthreads();  // before the next tile overwrites vs
    }
  }
  if (c.my_ks < c.KS) {
#pragma unroll
    for (int b = 0; b < BT; ++b) c.part[(c.my_ks * BT + b) * c.J + c.my_j] = a[b];
  }
  __syncthreads();
}

// m[b, j] = Σ_ks part[ks][b][j], added in a fixed order (deterministic, no atomics).
template <typename T, int BT>
__device__ __forceinline__ acc_type<T> reduce_partials(const Cta<T, BT>& c, int b, int j) {
  acc_type<T> m = c.part[b * c.J + j];
  for (int ks = 1; ks < c.KS; ++ks) m += c.part[(ks * BT + b) * c.J + j];
  return m;
}

// ---- the epilogues: item (b, j) of a batch tile, row = c0 + b of the batch, unit jg = j0 + j ----

// Forward: h_t[row, jg] = act(pre_t[row, jg] + m), m = (h_prev·W_hhᵀ)[row, jg] with h_prev the state
// of the previous processed step or h0; also hy[row, jg] where the row ends at this step. Returns h_t.
template <typename T, int BT>
__device__ __forceinline__ acc_type<T> forward_epilogue(const Cta<T, BT>& c, const StepRows& rows, bool relu,
                                                        int64_t row, int jg, acc_type<T> pre, acc_type<T> m) {
  const acc_type<T> v = act(pre + m, relu);
  if (rows.is_final(row)) c.hout[row * c.H + jg] = static_cast<T>(v);
  return v;
}

// BPTT: δ_t[row, jg] = g·act'(y), with g = g_t[row, jg] plus m = (δ_prev·W_hh)[row, jg] (δ of the
// previous processed step) where the row reads state, else plus ghy[row, jg] (its gradient starts
// here); act' from the forward output y
// (relu: 0 where y <= 0; tanh: 1 - y²). Grid/Step keep the row's final δ in last [B, H] for the dh0 pass.
// Returns δ_t.
template <typename T, int BT, Mode M>
__device__ __forceinline__ acc_type<T> bptt_epilogue(const Cta<T, BT>& c, const StepRows& rows, bool relu, int64_t row,
                                                     int jg, acc_type<T> g_in, acc_type<T> y, acc_type<T> m) {
  using acc_t = acc_type<T>;
  const acc_t g = g_in + (rows.reads_state(row) ? m : static_cast<acc_t>(c.hin[row * c.H + jg]));
  const acc_t v = relu ? (y <= acc_t(0) ? acc_t(0) : g) : g * (acc_t(1) - y * y);
  if (M != Mode::Single && rows.is_final(row)) c.last[row * c.H + jg] = v;
  return v;
}

// buf[N, D*H] index of item i = b·J + j of the tile whose first row is c0, at step offset off.
template <typename T, int BT>
__device__ __forceinline__ int64_t item_index(const Cta<T, BT>& c, int64_t off, int64_t c0, int i) {
  return (off + c0 + i / c.J) * c.ld + int64_t(c.d) * c.H + c.j0 + i % c.J;
}

// Item i of a tile: in = pre_t (forward) or g_t (BPTT) at buf[idx], y = h_t (BPTT only). Writes the
// result over buf[idx] and as the state of the next processed step (Single: vs [H][BT] on chip;
// Grid/Step: cur [B, H] in the scratch buffer).
template <typename T, int BT, Mode M, bool Backward>
__device__ __forceinline__ void epilogue(const Cta<T, BT>& c, const StepRows& rows, bool relu, int64_t off,
                                         int64_t c0, acc_type<T>* cur, int i, acc_type<T> in, acc_type<T> y) {
  using acc_t = acc_type<T>;
  const int b = i / c.J, j = i % c.J, jg = c.j0 + j;
  const int64_t row = c0 + b;
  const acc_t m = reduce_partials(c, b, j);
  acc_t v;
  if constexpr (!Backward) {
    v = forward_epilogue(c, rows, relu, row, jg, in, m);
  } else {
    v = bptt_epilogue<T, BT, M>(c, rows, relu, row, jg, in, y, m);
  }
  c.buf[item_index(c, off, c0, i)] = static_cast<T>(v);
  if constexpr (M == Mode::Single) {
    c.vs[jg * BT + b] = v;  // safe: every read of vs in this step happened before matvec's last sync
  } else {
    cur[row * c.H + jg] = v;
  }
}

// ---- BPTT's final pass -----------------------------------------------------------------------------

// Processed step s == T: dh0[b, j] = (δ_first·W_hh)[b, j] [B, H] for the CTA's units, δ_first = each
// row's last processed δ (Single: still the state in vs; Grid/Step: last [B, H]).
template <typename T, int BT, Mode M>
__device__ __forceinline__ void dh0_pass(const Cta<T, BT>& c, const Launch& L, int bg, int64_t nchunks) {
  using acc_t = acc_type<T>;
  for (int64_t ci = bg; ci < nchunks; ci += L.NBG) {
    const int64_t c0 = ci * BT;
    const int nb = static_cast<int>(min64(BT, c.B - c0));
    if constexpr (M == Mode::Single) {
      __syncthreads();  // the last step's epilogue wrote vs
      matvec<T, BT, M, true>(c, [](int, int) { return acc_t(0); });
    } else {
      matvec<T, BT, M, true>(c, [&](int b, int k) { return b < nb ? __ldcg(c.last + (c0 + b) * c.H + k) : acc_t(0); });
    }
    for (int i = c.tid; i < nb * c.J; i += c.nt) {
      const int b = i / c.J, j = i % c.J;
      c.hout[(c0 + b) * c.H + c.j0 + j] = static_cast<T>(reduce_partials(c, b, j));
    }
  }
}

// ---- the kernel --------------------------------------------------------------------------------------

// Processing steps s in [L.s0, L.s1) of direction d for the batch tiles g, g + NBG, ... of this CTA's
// batch group; s == T (BPTT only) is the dh0 pass.
template <typename T, int BT, Mode M, bool Backward>
__global__ void __launch_bounds__(kMaxThreads, 1) recurrence_kernel(const RecParams p, const Launch L) {
  using acc_t = acc_type<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  const Cta<T, BT> c = make_cta<T, BT, M>(p, L, smem);
  const int64_t T_ = p.T;
  // Processing order: the forward runs direction 0 ascending and direction 1 descending in t;
  // BPTT the opposite.
  const bool asc = (c.d == 1) == Backward;
  const int bg = static_cast<int>(blockIdx.x) / L.C;
  const int64_t nchunks = ceil_div(c.B, BT);

  if constexpr (M != Mode::Step) stage_weights<T, BT, Backward>(c);
  for (int i = c.tid; i < c.KT * BT; i += c.nt) c.vs[i] = acc_t(0);
  __syncthreads();

  for (int64_t s = L.s0; s < L.s1; ++s) {
    if constexpr (Backward) {
      if (s == T_) {
        dh0_pass<T, BT, M>(c, L, bg, nchunks);
        continue;
      }
    }
    const int64_t t = asc ? s : T_ - 1 - s;
    const int64_t nact = batch_at(p, t), nnext = batch_at(p, t + 1), off = offset_at(p, t);
    const StepRows rows{asc, s, t, nnext};

    for (int64_t ci = bg; ci < nchunks; ci += L.NBG) {
      const int64_t c0 = ci * BT;
      const int nb = static_cast<int>(max64(0, min64(BT, nact - c0)));
      if (nb == 0) break;  // alive rows are a prefix; later tiles are empty too (CTA-uniform)
      const int nitems = nb * c.J;  // epilogue items (b, j) of this tile; thread tid takes tid, tid + nt, ...
      // Load this step's pre-activations (and, in BPTT, the forward outputs) of the first kPrefetch
      // items now, so that their global-memory latency overlaps the mat-vec instead of following it.
      acc_t pre_in[kPrefetch], pre_y[kPrefetch];
#pragma unroll
      for (int q = 0; q < kPrefetch; ++q) {
        const int i = c.tid + q * c.nt;
        if (i < nitems) {
          const int64_t idx = item_index(c, off, c0, i);
          pre_in[q] = static_cast<acc_t>(c.buf[idx]);
          pre_y[q] = Backward ? static_cast<acc_t>(c.yv[idx]) : acc_t(0);
        }
      }
      if constexpr (M == Mode::Single) {
        if constexpr (!Backward) {
          // Rows that start at this step load h0 into the state (every row at the first step;
          // reverse direction of a packed batch: the rows not alive at the step before).
          const bool any_start = asc ? s == 0 : rows.nnext < c0 + nb;
          if (any_start) {
            for (int i = c.tid; i < nb * c.H; i += c.nt) {
              const int b = i / c.H, k = i % c.H;
              if (!rows.reads_state(c0 + b)) c.vs[k * BT + b] = static_cast<acc_t>(c.hin[(c0 + b) * c.H + k]);
            }
          }
        }
        __syncthreads();
        matvec<T, BT, M, Backward>(c, [](int, int) { return acc_t(0); });
      } else {
        const acc_t* prev = state_slot(c, p, s + 1);  // slot of step s - 1
        matvec<T, BT, M, Backward>(c, [&](int b, int k) -> acc_t {
          if (b >= nb) return acc_t(0);
          const int64_t row = c0 + b;
          if (rows.reads_state(row)) return __ldcg(prev + row * c.H + k);
          return Backward ? acc_t(0) : static_cast<acc_t>(c.hin[row * c.H + k]);
        });
      }
      acc_t* cur = M == Mode::Single ? nullptr : state_slot(c, p, s);
#pragma unroll
      for (int q = 0; q < kPrefetch; ++q) {
        const int i = c.tid + q * c.nt;
        if (i < nitems) epilogue<T, BT, M, Backward>(c, rows, p.relu, off, c0, cur, i, pre_in[q], pre_y[q]);
      }
      for (int i = c.tid + kPrefetch * c.nt; i < nitems; i += c.nt) {
        const int64_t idx = item_index(c, off, c0, i);
        epilogue<T, BT, M, Backward>(c, rows, p.relu, off, c0, cur, i, static_cast<acc_t>(c.buf[idx]),
                                     Backward ? static_cast<acc_t>(c.yv[idx]) : acc_t(0));
      }
    }
    if constexpr (M == Mode::Grid) {
      if (s + 1 < L.s1) cooperative_groups::this_grid().sync();
    }
  }
}

}  // namespace cuda
}  // namespace fused_rnn
