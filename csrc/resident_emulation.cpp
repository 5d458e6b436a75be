// CPU emulation of the SM-resident CUDA kernel (cuda/resident_cuda.cu), for tests on machines
// without a GPU: it runs the kernel's algorithm lane by lane in float64 with the kernel's own
// thread → data mapping (cuda/resident_layout.h: the plan, the shapes, which rows and k chunks a
// lane holds, the reduce-scatter's ownership, the state and prefetch-ring indices), so that a
// mapping error shows up as a wrong result against the reference (tests/test_resident_mapping.py).
// It also checks what a wrong result might not show: every output written exactly once per step,
// every (row, k) of M held by exactly one lane, float4 state reads free of bank conflicts.
//
//   torch.ops.fused_rnn_emulation.resident(buf, y, h_in, w_hh, relu, backward, sms) -> (buf, h_out)
//     the arguments of one layer's recurrence (recurrence.h, uniform batch, float64):
//     buf [T*B, D*H] (pre-activations, or g in BPTT), y [T*B, D*H] (BPTT; else empty),
//     h_in [D, B, H], w_hh [D, H, H]; sms: the SM count the launch plan assumes.
//     Returns new tensors: buf after the recurrence (h_t or δ_t) and h_out (hy or dh0). The plan
//     assumes an sm_90 GPU: from H = 193 a cluster's CTAs split the rows, each writing its units
//     into every CTA's state (the emulation keeps one state per CTA).
//   torch.ops.fused_rnn_emulation.resident_plan(H, B, D, sms) -> [shape, bt, ctas, threads, k capacity,
//     row capacity (of the cluster), CTAs per cluster]
//   torch.ops.fused_rnn_emulation.resident_mma_plan(H, shape) -> [tiling, CTAs per cluster, k parts,
//     row capacity, tilings of the shape]: the tiling the tensor-core launcher takes on sm_90
//     (mma::tiling_for; -1 and zeros where H is too large)
//   torch.ops.fused_rnn_emulation.resident_mma(buf, y, h_in, w_hh, relu, backward, shape) -> (buf, h_out)
//     the same for the tensor-core kernel (cuda/resident_mma_cuda.cu, cuda/mma_layout.h), shape
//     "m16n8k16" (float16/bfloat16) or "m16n8k8" (TF32): the PTX ISA fragment layouts, the A
//     packing, the B loads (one base word and constant offsets, bank-conflict free), the C
//     ownership; it also checks that the fragment functions cover A, B and C exactly once.
#include <ATen/ops/full.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <vector>

#include "cuda/mma_layout.h"
#include "cuda/resident_layout.h"

namespace fused_rnn {
namespace {

using namespace resident;

// The layout checks that a wrong result might not reveal.
template <class S>
void check_mapping(int64_t H) {
  // Each row group (warp, lane / KL) covers k = 0 .. HK - 1 exactly once over its KL lanes and chunks.
  for (int warp = 0; warp < S::NW; ++warp) {
    for (int jl = 0; jl < S::JL; ++jl) {
      std::vector<int> seen(S::HK, 0);
      for (int kl = 0; kl < S::KL; ++kl)
        for (int q = 0; q < S::QN; ++q)
          for (int e = 0; e < 4; ++e) ++seen.at(4 * S::chunk(jl * S::KL + kl, q) + e);
      for (int k = 0; k < S::HK; ++k) TORCH_CHECK(seen[k] == 1, "resident mapping: k ", k, " held ", seen[k], " times");
    }
  }
  // Rows 0 .. H - 1 each held by exactly one CTA of the cluster, row group and slot r.
  std::vector<int> rows(size_t(S::C) * S::HJ, 0);
  for (int rank = 0; rank < S::C; ++rank)
    for (int warp = 0; warp < S::NW; ++warp)
      for (int jl = 0; jl < S::JL; ++jl)
        for (int r = 0; r < S::R; ++r) ++rows.at(S::row_in_cluster(rank, warp, jl * S::KL, r));
  for (int64_t j = 0; j < H; ++j) TORCH_CHECK(rows[j] == 1, "resident mapping: row ", j, " held ", rows[j], " times");
  // A float4 shared-memory load serves a quarter-warp (8 lanes, 128 bytes) per cycle: its lanes
  // must read the same chunk (a broadcast) or chunks in distinct groups of four banks.
  for (int q = 0; q < S::QN; ++q) {
    for (int quarter = 0; quarter < 4; ++quarter) {
      std::array<int, 8> owner;
      owner.fill(-1);
      for (int lane = 8 * quarter; lane < 8 * quarter + 8; ++lane) {
        const int c = S::chunk(lane, q), group = c % 8;
        TORCH_CHECK(owner[group] < 0 || owner[group] == c, "resident mapping: bank conflict at q ", q, " lane ", lane);
        owner[group] = c;
      }
    }
  }
}

struct Tensors {
  double* buf;
  const double* y;
  const double* h_in;
  double* h_out;
  const double* w;
  int64_t T, B, H, D;
  bool relu;
};

// One cluster of S::C CTAs (one CTA when C = 1): batch tile starting at c0, direction d. Each CTA
// (rank) has its own registers, state and prefetch ring; its epilogue writes every CTA's state, as
// the kernel's distributed shared-memory stores do.
template <class S, int BT, bool Backward>
void emulate_cta(const Tensors& a, int64_t c0, int d) {
  constexpr int V = S::R * BT, NF = owned_count<S::KL, V>(), C = chains<V>(), INPUTS = Backward ? 2 : 1;
  constexpr int CTAS = S::C;
  const int64_t T = a.T, B = a.B, ld = a.D * a.H;
  const int H = static_cast<int>(a.H);
  const int nb = static_cast<int>(B - c0 < BT ? B - c0 : BT);
  const bool asc = (d == 1) == Backward;
  const double* wg = a.w + int64_t(d) * H * H;
  const double* h_in = a.h_in + int64_t(d) * B * H;
  double* h_out = a.h_out + int64_t(d) * B * H;

  // Registers: w[rank][tid][r][k], the kernel's w[r][4q + e] of CTA rank.
  std::vector<double> wreg(size_t(CTAS) * S::NT * S::R * S::KPT);
  auto W = [&](int rank, int tid, int r, int kk) -> double& {
    return wreg[((size_t(rank) * S::NT + tid) * S::R + r) * S::KPT + kk];
  };
  for (int rank = 0; rank < CTAS; ++rank)
    for (int tid = 0; tid < S::NT; ++tid) {
      const int warp = tid / kWarp, lane = tid % kWarp;
      for (int r = 0; r < S::R; ++r) {
        const int j = S::row_in_cluster(rank, warp, lane, r);
        for (int q = 0; q < S::QN; ++q)
          for (int e = 0; e < 4; ++e) {
            const int k = 4 * S::chunk(lane, q) + e;
            W(rank, tid, r, 4 * q + e) = j < H && k < H ? (Backward ? wg[int64_t(k) * H + j] : wg[int64_t(j) * H + k]) : 0.;
          }
      }
    }
  // The kernel's indexing: the element at processed step 0 plus step · stride.
  auto element = [&](int64_t step, int b, int j) {
    return element_at_step0(T, B, ld, c0, b, d, H, j, asc) + step * step_stride(B, ld, asc);
  };
  // Owned (j, b) of each thread's value i, or j = -1 where it writes nothing.
  auto owned = [&](int rank, int tid, int i, int& j, int& b) {
    const int warp = tid / kWarp, lane = tid % kWarp, kl = lane % S::KL;
    const int v = owned_value<S::KL, V>(kl, i);
    j = S::row_in_cluster(rank, warp, lane, v / BT);
    b = v % BT;
    if (!writes_outputs<S::KL, V>(kl) || j >= H || b >= nb) j = -1;
  };

  std::vector<std::vector<double>> state(CTAS, std::vector<double>(state_words<S, BT>(), 0.));
  std::vector<std::vector<double>> ring(CTAS, std::vector<double>(size_t(kRing) * INPUTS * NF * S::NT, std::nan("")));
  if (!Backward) {
    for (int rank = 0; rank < CTAS; ++rank)
      for (int b = 0; b < nb; ++b)
        for (int k = 0; k < H; ++k) state[rank][state_index(S::HK, BT, 0, b, k)] = h_in[(c0 + b) * H + k];
  }
  auto issue = [&](int64_t step) {
    if (step >= T) return;
    for (int rank = 0; rank < CTAS; ++rank)
      for (int tid = 0; tid < S::NT; ++tid)
        for (int i = 0; i < NF; ++i) {
          int j, b;
          owned(rank, tid, i, j, b);
          if (j < 0) continue;
          const int64_t e = element(step, b, j);
          ring[rank][ring_index(S::NT, INPUTS, NF, step, 0, i, tid)] = a.buf[e];
          if (Backward) ring[rank][ring_index(S::NT, INPUTS, NF, step, 1, i, tid)] = a.y[e];
        }
  };
  // The partial sums of every lane of a warp of CTA rank, then the reduce-scatter across its lanes.
  std::vector<std::array<double, V>> vals(kWarp);
  auto warp_matvec = [&](int rank, int warp, int64_t step) {
    const double* st = state[rank].data() + state_index(S::HK, BT, step, 0, 0);
    for (int lane = 0; lane < kWarp; ++lane) {
      const int tid = warp * kWarp + lane;
      std::array<std::array<double, V>, C> acc{};
      for (int q = 0; q < S::QN; ++q)
        for (int b = 0; b < BT; ++b) {
          const double* x = st + b * S::HK + 4 * S::chunk(lane, q);
          for (int r = 0; r < S::R; ++r)
            for (int e = 0; e < 4; ++e) acc[q % C][r * BT + b] += W(rank, tid, r, 4 * q + e) * x[e];
        }
      for (int i = 0; i < V; ++i) {
        double sum = acc[0][i];
        for (int c = 1; c < C; ++c) sum += acc[c][i];
        vals[lane][i] = sum;
      }
    }
    int n = V;
    for (int m = 1; m < S::KL; m <<= 1) {
      const std::vector<std::array<double, V>> before = vals;
      for (int lane = 0; lane < kWarp; ++lane) {
        const int partner = lane ^ m;
        if (n >= 2) {
          const int half = n / 2;
          const bool upper = (lane & m) != 0, partner_upper = (partner & m) != 0;
          for (int i = 0; i < half; ++i) {
            const double keep = upper ? before[lane][half + i] : before[lane][i];
            const double got = partner_upper ? before[partner][i] : before[partner][half + i];
            vals[lane][i] = keep + got;
          }
        } else {
          vals[lane][0] = before[lane][0] + before[partner][0];
        }
      }
      if (n >= 2) n /= 2;
    }
  };

  for (int64_t s = 0; s < kPrefetch; ++s) issue(s);
  std::vector<int> writes(static_cast<size_t>(BT) * H);
  for (int64_t s = 0; s < T; ++s) {
    issue(s + kPrefetch);
    std::fill(writes.begin(), writes.end(), 0);
    // Step s reads state[s] and writes state[s + 1] (the other buffer) of every CTA, so the order in
    // which the emulation visits the CTAs cannot matter, as the kernel's one barrier per step needs.
    for (int rank = 0; rank < CTAS; ++rank)
      for (int warp = 0; warp < S::NW; ++warp) {
        warp_matvec(rank, warp, s);
        for (int lane = 0; lane < kWarp; ++lane) {
          const int tid = warp * kWarp + lane;
          for (int i = 0; i < NF; ++i) {
            int j, b;
            owned(rank, tid, i, j, b);
            if (j < 0) continue;
            ++writes[size_t(b) * H + j];
            const double in = ring[rank][ring_index(S::NT, INPUTS, NF, s, 0, i, tid)];
            double v;
            if (!Backward) {
              v = a.relu ? (in + vals[lane][i] < 0. ? 0. : in + vals[lane][i]) : std::tanh(in + vals[lane][i]);
              if (s == T - 1) h_out[(c0 + b) * H + j] = v;
            } else {
              const double y = ring[rank][ring_index(S::NT, INPUTS, NF, s, 1, i, tid)];
              const double g = in + (s == 0 ? h_in[(c0 + b) * H + j] : vals[lane][i]);
              v = a.relu ? (y <= 0. ? 0. : g) : g * (1. - y * y);
            }
            a.buf[element(s, b, j)] = v;
            for (int peer = 0; peer < CTAS; ++peer) state[peer][state_index(S::HK, BT, s + 1, b, j)] = v;
          }
        }
      }
    for (int b = 0; b < nb; ++b)
      for (int j = 0; j < H; ++j)
        TORCH_CHECK(writes[size_t(b) * H + j] == 1, "resident emulation: output (b ", b, ", j ", j, ") written ",
                    writes[size_t(b) * H + j], " times at step ", s);
  }
  if (Backward) {
    for (int rank = 0; rank < CTAS; ++rank)
      for (int warp = 0; warp < S::NW; ++warp) {
        warp_matvec(rank, warp, T);
        for (int lane = 0; lane < kWarp; ++lane)
          for (int i = 0; i < NF; ++i) {
            int j, b;
            owned(rank, warp * kWarp + lane, i, j, b);
            if (j >= 0) h_out[(c0 + b) * H + j] = vals[lane][i];
          }
      }
  }
}

// ---- the tensor-core kernel (cuda/resident_mma_cuda.cu, cuda/mma_layout.h) --------------------

// The fragment functions of one mma shape cover A (16×K), B (K×8) and C (16×8) exactly once over
// (lane, element).
template <class S>
void check_fragments() {
  constexpr int a_elems = mma::kARegisters * S::kPerRegister, b_elems = mma::kBRegisters * S::kPerRegister;
  std::vector<int> a(16 * S::K, 0), b(S::K * 8, 0), c(16 * 8, 0);
  for (int lane = 0; lane < mma::kWarp; ++lane) {
    for (int i = 0; i < a_elems; ++i) ++a.at(S::a_row(lane, i) * S::K + S::a_col(lane, i));
    for (int i = 0; i < b_elems; ++i) ++b.at(S::b_row(lane, i) * 8 + S::b_col(lane, i));
    for (int i = 0; i < mma::kCValues; ++i) ++c.at(mma::c_row(lane, i) * 8 + mma::c_col(lane, i));
  }
  for (int n : a) TORCH_CHECK(n == 1, "mma emulation: an A element held ", n, " times");
  for (int n : b) TORCH_CHECK(n == 1, "mma emulation: a B element held ", n, " times");
  for (int n : c) TORCH_CHECK(n == 1, "mma emulation: a C element held ", n, " times");
}

// The 16-bit state as the mbarrier exchange stores it (mma_layout.h, paired_word: a lane and its
// partner swap one value per fragment row half and each stores one 32-bit word) holds what the
// element stores wrote into state[s + 1]: every (batch row < nb, unit < H) exactly once, the
// element past an odd H 0, and as many words as the kernel arms its barrier for (nb·⌈H/2⌉).
//   val(rank, warp, lane, i): the step's value i of a lane, 0 where it owns none
template <class Tl, class Val>
void check_paired_words(const std::vector<double>& state, int64_t s, int nb, int H, int NW, Val&& val) {
  using S = typename Tl::Shape;
  constexpr int KTT = Tl::KT * Tl::KP;
  std::vector<int> covered(size_t(nb) * H, 0);
  int64_t words = 0;
  for (int rank = 0; rank < Tl::C; ++rank)
    for (int warp = 0; warp < NW; ++warp) {
      if (Tl::k_part(warp) != 0) continue;
      for (int lane = 0; lane < mma::kWarp; ++lane)
        for (int h = 0; h < 2; ++h) {
          const mma::PairedWord w = mma::paired_word(lane, h);
          const int unit = mma::kRowsPerWarp * Tl::tile(rank, warp) + w.unit;
          if (unit >= H || w.col >= nb) continue;
          TORCH_CHECK(unit % 2 == 0, "mma emulation: a paired word starts at odd unit ", unit);
          const double kept = val(rank, warp, lane, w.kept);
          // what the partner sends: its own paired_word's choice (each lane sends one value a half)
          const int partner = lane ^ mma::kPairPartnerMask;
          const double received = val(rank, warp, partner, mma::paired_word(partner, h).sent);
          const double lo = w.high ? kept : received, hi = w.high ? received : kept;
          ++words;
          for (int e = 0; e < 2; ++e) {
            const double v = e == 0 ? lo : hi;
            if (unit + e >= H) {
              TORCH_CHECK(v == 0., "mma emulation: a paired word's element past H is not 0");
              continue;
            }
            ++covered[size_t(w.col) * H + unit + e];
            const double stored = state[mma::state_element<S, KTT>(s + 1, w.col, unit + e)];
            TORCH_CHECK(v == stored, "mma emulation: paired word (unit ", unit, ", batch row ", w.col, ") element ", e,
                        " differs from the element store");
          }
        }
    }
  for (int n : covered) TORCH_CHECK(n == 1, "mma emulation: a state element in ", n, " paired words");
  TORCH_CHECK(words == int64_t(nb) * ((H + 1) / 2), "mma emulation: ", words, " paired words, the barrier expects ",
              int64_t(nb) * ((H + 1) / 2));
}

// One cluster (Tl::C CTAs; one CTA when C = 1) of resident_mma_kernel<., KT, KP, C, Backward>: batch
// tile c0 .. c0 + 7, direction d, lane by lane, in float64 (the kernel's operand rounding is not
// emulated: this checks the layout). Each CTA has its own state; the epilogue writes all of them.
template <class Tl, bool Backward>
void emulate_mma_cta(const Tensors& a, int64_t c0, int d) {
  using S = typename Tl::Shape;
  constexpr int KT = Tl::KT, KP = Tl::KP, CTAS = Tl::C, KTT = KT * KP;
  constexpr int C = mma::chains<KT>(), PER_WORD = 4 / S::kElementBytes;
  constexpr int a_elems = mma::kARegisters * S::kPerRegister;
  const int64_t T = a.T, B = a.B, ld = a.D * a.H;
  const int H = static_cast<int>(a.H);
  const int NW = KP == 1 && CTAS == 1 ? mma::warps_for(a.H) : Tl::kWarps;  // as the launcher launches
  const int nb = static_cast<int>(B - c0 < mma::kBatchTile ? B - c0 : mma::kBatchTile);
  const bool asc = (d == 1) == Backward;
  const double* wg = a.w + int64_t(d) * H * H;
  const double* h_in = a.h_in + int64_t(d) * B * H;
  double* h_out = a.h_out + int64_t(d) * B * H;

  // A fragments: afrag[(((rank·NW + warp)·32 + lane)·KT + kt)·a_elems + i].
  std::vector<double> afrag(size_t(CTAS) * NW * mma::kWarp * KT * a_elems);
  auto A_at = [&](int rank, int warp, int lane, int kt, int i) -> double& {
    return afrag[(((size_t(rank) * NW + warp) * mma::kWarp + lane) * KT + kt) * a_elems + i];
  };
  for (int rank = 0; rank < CTAS; ++rank)
    for (int warp = 0; warp < NW; ++warp)
      for (int lane = 0; lane < mma::kWarp; ++lane)
        for (int kt = 0; kt < KT; ++kt)
          for (int i = 0; i < a_elems; ++i) {
            const int j = mma::kRowsPerWarp * Tl::tile(rank, warp) + S::a_row(lane, i);
            const int k = Tl::k_part(warp) * KT * S::K + kt * S::K + S::a_col(lane, i);
            A_at(rank, warp, lane, kt, i) = j < H && k < H ? (Backward ? wg[k * H + j] : wg[j * H + k]) : 0.;
          }
  std::vector<std::vector<double>> state(
      CTAS, std::vector<double>(size_t(2) * mma::kBatchTile * mma::state_row_words<S, KTT>() * PER_WORD, 0.));
  if (!Backward) {
    for (int rank = 0; rank < CTAS; ++rank)
      for (int b = 0; b < nb; ++b)
        for (int k = 0; k < H; ++k) state[rank][mma::state_element<S, KTT>(0, b, k)] = h_in[(c0 + b) * H + k];
  }
  const int64_t first_row = ((asc ? 0 : T - 1) * B + c0) * ld + int64_t(d) * H, step_rows = asc ? B * ld : -B * ld;
  // The value i of a lane of (rank, warp): its row and batch row, and whether it is an output (the
  // k part 0 warp of the tile owns the tile's values).
  auto owned = [&](int rank, int warp, int lane, int i, int& j, int& b) {
    j = mma::kRowsPerWarp * Tl::tile(rank, warp) + mma::c_row(lane, i);
    b = mma::c_col(lane, i);
    return Tl::k_part(warp) == 0 && j < H && b < nb;
  };

  // m[warp][lane][i]: every warp's mma pass over CTA rank's state of `step`, as the kernel issues
  // it; then the k part 0 warps add their tile's other parts (in k part order).
  std::vector<std::array<std::array<double, mma::kCValues>, mma::kWarp>> m(NW);
  auto cta_mma = [&](int rank, int64_t step) {
    for (int warp = 0; warp < NW; ++warp) {
      const int k0 = Tl::k_part(warp) * KT * S::K;
      std::vector<std::array<std::array<double, mma::kCValues>, C>> acc(mma::kWarp);
      for (auto& chain : acc)
        for (auto& v : chain) v.fill(0.);
      for (int kt = 0; kt < KT; ++kt) {
        double Am[16][S::K], Bm[S::K][8];
        std::array<int, 32> bank[mma::kBRegisters] = {};
        for (int lane = 0; lane < mma::kWarp; ++lane) {
          for (int i = 0; i < a_elems; ++i) Am[S::a_row(lane, i)][S::a_col(lane, i)] = A_at(rank, warp, lane, kt, i);
          // The kernel's B loads: one base word per lane and step, constant offsets per k tile and register.
          const int64_t base = mma::state_element<S, KTT>(step, S::b_col(lane, 0), k0 + S::b_row(lane, 0)) / PER_WORD;
          for (int r = 0; r < mma::kBRegisters; ++r) {
            const int first = r * S::kPerRegister;
            const int64_t word = base + (kt * S::K + S::b_row(lane, first) - S::b_row(lane, 0)) / PER_WORD;
            ++bank[r][word % 32];
            for (int e = 0; e < S::kPerRegister; ++e) {
              const int i = first + e, k = k0 + kt * S::K + S::b_row(lane, i);
              TORCH_CHECK((word * PER_WORD + e == mma::state_element<S, KTT>(step, S::b_col(lane, i), k)),
                          "mma emulation: B register ", r, " of lane ", lane, " does not hold element ", i);
              Bm[S::b_row(lane, i)][S::b_col(lane, i)] = state[rank][word * PER_WORD + e];
            }
          }
        }
        // The 32 B-register loads of one register index hit 32 distinct banks.
        for (int r = 0; r < mma::kBRegisters; ++r)
          for (int n : bank[r]) TORCH_CHECK(n == 1, "mma emulation: bank conflict in the B loads");
        for (int lane = 0; lane < mma::kWarp; ++lane)
          for (int i = 0; i < mma::kCValues; ++i) {
            double sum = 0.;
            for (int k = 0; k < S::K; ++k) sum += Am[mma::c_row(lane, i)][k] * Bm[k][mma::c_col(lane, i)];
            acc[lane][kt % C][i] += sum;
          }
      }
      for (int lane = 0; lane < mma::kWarp; ++lane)
        for (int i = 0; i < mma::kCValues; ++i) {
          double sum = acc[lane][0][i];
          for (int c = 1; c < C; ++c) sum += acc[lane][c][i];
          m[warp][lane][i] = sum;
        }
    }
    for (int warp = 0; warp < NW; ++warp) {
      if (Tl::k_part(warp) != 0) continue;
      for (int part = 1; part < KP; ++part)
        for (int lane = 0; lane < mma::kWarp; ++lane)
          for (int i = 0; i < mma::kCValues; ++i) m[warp][lane][i] += m[warp + part][lane][i];
    }
  };

  std::vector<int> writes(size_t(mma::kBatchTile) * H);
  // vals[((rank·NW + warp)·32 + lane)·4 + i]: the step's value i of a lane, 0 where it owns none
  std::vector<double> vals(size_t(CTAS) * NW * mma::kWarp * mma::kCValues);
  auto val = [&](int rank, int warp, int lane, int i) -> double& {
    return vals[((size_t(rank) * NW + warp) * mma::kWarp + lane) * mma::kCValues + i];
  };
  for (int64_t s = 0; s < T; ++s) {
    std::fill(writes.begin(), writes.end(), 0);
    std::fill(vals.begin(), vals.end(), 0.);
    const int64_t base = first_row + s * step_rows;
    // Step s reads state[s] and writes state[s + 1] of every CTA: the visiting order cannot matter.
    for (int rank = 0; rank < CTAS; ++rank) {
      cta_mma(rank, s);
      for (int warp = 0; warp < NW; ++warp)
        for (int lane = 0; lane < mma::kWarp; ++lane)
          for (int i = 0; i < mma::kCValues; ++i) {
            int j, b;
            if (!owned(rank, warp, lane, i, j, b)) continue;
            ++writes[size_t(b) * H + j];
            const int64_t e = base + b * ld + j;
            double v;
            if (!Backward) {
              const double z = a.buf[e] + m[warp][lane][i];
              v = a.relu ? (z < 0. ? 0. : z) : std::tanh(z);
            } else {
              const double g = a.buf[e] + (s == 0 ? h_in[(c0 + b) * H + j] : m[warp][lane][i]);
              v = a.relu ? (a.y[e] <= 0. ? 0. : g) : g * (1. - a.y[e] * a.y[e]);
            }
            a.buf[e] = v;
            val(rank, warp, lane, i) = v;
            for (int peer = 0; peer < CTAS; ++peer) state[peer][mma::state_element<S, KTT>(s + 1, b, j)] = v;
          }
    }
    if constexpr (S::kElementBytes == 2) check_paired_words<Tl>(state[0], s, nb, H, NW, val);
    for (int b = 0; b < nb; ++b)
      for (int j = 0; j < H; ++j)
        TORCH_CHECK(writes[size_t(b) * H + j] == 1, "mma emulation: output (b ", b, ", j ", j, ") written ",
                    writes[size_t(b) * H + j], " times at step ", s);
  }
  for (int rank = 0; rank < CTAS; ++rank) {
    if (Backward) cta_mma(rank, T);
    for (int warp = 0; warp < NW; ++warp)
      for (int lane = 0; lane < mma::kWarp; ++lane)
        for (int i = 0; i < mma::kCValues; ++i) {
          int j, b;
          if (!owned(rank, warp, lane, i, j, b)) continue;
          h_out[(c0 + b) * H + j] = Backward ? m[warp][lane][i] : a.buf[first_row + (T - 1) * step_rows + b * ld + j];
        }
  }
}

at::Tensor checked(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kDouble && t.device().is_cpu(), "resident emulation: ", name,
              " must be a float64 CPU tensor");
  return t.contiguous();
}

// The arguments of both emulation ops, checked: the tensors the emulation writes (a copy of buf, and
// h_out) and reads, kept alive beside the raw view of them the emulated kernels take.
struct Arguments {
  at::Tensor buf, y, h_in, w, h_out;
  Tensors view;

  Arguments(const at::Tensor& buf_in, const at::Tensor& y_in, const at::Tensor& h_in_in, const at::Tensor& w_in,
            bool relu, bool backward)
      : buf(checked(buf_in, "buf").clone()), h_in(checked(h_in_in, "h_in")), w(checked(w_in, "w_hh")) {
    TORCH_CHECK(h_in.dim() == 3 && w.dim() == 3 && buf.dim() == 2,
                "resident emulation: buf [T*B, D*H], h_in [D, B, H], w_hh [D, H, H]");
    const int64_t D = w.size(0), H = w.size(2), B = h_in.size(1);
    TORCH_CHECK(B > 0 && H > 0 && buf.size(0) % B == 0 && buf.size(1) == D * H,
                "resident emulation: inconsistent shapes");
    if (backward) {
      y = checked(y_in, "y");
      TORCH_CHECK(y.sizes() == buf.sizes(), "resident emulation: y must have buf's shape");
    }
    h_out = at::full({D, B, H}, std::nan(""), h_in.options());
    view = Tensors{buf.data_ptr<double>(), backward ? y.data_ptr<double>() : nullptr, h_in.data_ptr<double>(),
                   h_out.data_ptr<double>(), w.data_ptr<double>(), buf.size(0) / B, B, H, D, relu};
  }
};

std::tuple<at::Tensor, at::Tensor> emulate_resident(const at::Tensor& buf_in, const at::Tensor& y_in,
                                                    const at::Tensor& h_in_in, const at::Tensor& w_in, bool relu,
                                                    bool backward, int64_t sms) {
  const Arguments args(buf_in, y_in, h_in_in, w_in, relu, backward);
  const Tensors& a = args.view;
  const int64_t D = a.D, H = a.H, B = a.B;
  const Plan p = plan(H, B, D, static_cast<int>(sms));
  TORCH_CHECK(p.shape >= 0, "resident emulation: H = ", H, " is over the regime's largest shape (", kMaxHidden, ")");
  with_shape(p.shape, [&](auto shape) {
    using S = decltype(shape);
    check_mapping<S>(H);
    with_batch_tile(p.bt, [&](auto btc) {
      constexpr int BT = decltype(btc)::value;
      if constexpr (BT <= S::MaxBT) {
        for (int d = 0; d < D; ++d)
          for (int64_t c0 = 0; c0 < B; c0 += BT) {
            if (backward) {
              emulate_cta<S, BT, true>(a, c0, d);
            } else {
              emulate_cta<S, BT, false>(a, c0, d);
            }
          }
      } else {
        TORCH_CHECK(false, "resident plan: batch tile ", p.bt, " over the shape's MaxBT ", S::MaxBT);
      }
    });
  });
  return {args.buf, args.h_out};
}

template <class S>
void emulate_mma_shape(const Tensors& a, bool backward) {
  check_fragments<S>();
  const int tiling = mma::tiling_for<S>(a.H);
  TORCH_CHECK(tiling >= 0, "resident mma emulation: H = ", a.H, " is over the largest tiling");
  mma::with_tiling<S>(tiling, [&](auto t) {
    using Tl = decltype(t);
    for (int d = 0; d < a.D; ++d)
      for (int64_t c0 = 0; c0 < a.B; c0 += mma::kBatchTile) {
        if (backward) {
          emulate_mma_cta<Tl, true>(a, c0, d);
        } else {
          emulate_mma_cta<Tl, false>(a, c0, d);
        }
      }
  });
}

// shape: "m16n8k16" (the float16/bfloat16 kernels) or "m16n8k8" (the TF32 kernel).
std::tuple<at::Tensor, at::Tensor> emulate_resident_mma(const at::Tensor& buf_in, const at::Tensor& y_in,
                                                        const at::Tensor& h_in_in, const at::Tensor& w_in, bool relu,
                                                        bool backward, c10::string_view shape) {
  TORCH_CHECK(shape == "m16n8k16" || shape == "m16n8k8", "resident mma emulation: shape m16n8k16 or m16n8k8");
  const Arguments args(buf_in, y_in, h_in_in, w_in, relu, backward);
  if (shape == "m16n8k16") {
    emulate_mma_shape<mma::M16N8K16>(args.view, backward);
  } else {
    emulate_mma_shape<mma::M16N8K8>(args.view, backward);
  }
  return {args.buf, args.h_out};
}

std::vector<int64_t> resident_plan(int64_t H, int64_t B, int64_t D, int64_t sms) {
  const Plan p = plan(H, B, D, static_cast<int>(sms));
  std::vector<int64_t> out{p.shape, p.bt, p.ctas, 0, 0, 0, p.cluster};
  if (p.shape >= 0) {
    with_shape(p.shape, [&](auto shape) {
      using S = decltype(shape);
      out[3] = S::NT;
      out[4] = S::HK;
      out[5] = int64_t(S::C) * S::HJ;
    });
  }
  return out;
}

template <class S>
std::vector<int64_t> mma_plan_of(int64_t H) {
  const int tiling = mma::tiling_for<S>(H);
  std::vector<int64_t> out{tiling, 0, 0, 0, mma::kTilings<S>};
  if (tiling >= 0) {
    mma::with_tiling<S>(tiling, [&](auto t) {
      using Tl = decltype(t);
      out[1] = Tl::C;
      out[2] = Tl::KP;
      out[3] = Tl::kHidden;
    });
  }
  return out;
}

std::vector<int64_t> resident_mma_plan(int64_t H, c10::string_view shape) {
  TORCH_CHECK(shape == "m16n8k16" || shape == "m16n8k8", "resident mma plan: shape m16n8k16 or m16n8k8");
  return shape == "m16n8k16" ? mma_plan_of<mma::M16N8K16>(H) : mma_plan_of<mma::M16N8K8>(H);
}

}  // namespace

TORCH_LIBRARY(fused_rnn_emulation, m) {
  m.def("resident(Tensor buf, Tensor y, Tensor h_in, Tensor w_hh, bool relu, bool backward, int sms) -> (Tensor, Tensor)");
  m.def("resident_plan(int H, int B, int D, int sms) -> int[]", TORCH_FN(resident_plan));
  m.def("resident_mma_plan(int H, str shape) -> int[]", TORCH_FN(resident_mma_plan));
  m.def("resident_mma(Tensor buf, Tensor y, Tensor h_in, Tensor w_hh, bool relu, bool backward, str shape) -> (Tensor, Tensor)");
  m.impl("resident", c10::DispatchKey::CPU, TORCH_FN(emulate_resident));
  m.impl("resident_mma", c10::DispatchKey::CPU, TORCH_FN(emulate_resident_mma));
}

}  // namespace fused_rnn
