// The runtime of cuda_on_cpu.h: CUDA threads as fibers (ucontext) on the calling OS thread, their
// barriers (CTA, warp, cluster, grid), deferred cp.async copies and distributed shared memory.
#include "cuda_on_cpu.h"

#include <ucontext.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace fused_rnn {
namespace cuda_on_cpu {
namespace {

constexpr size_t kStackBytes = 32 * 1024;  // per fiber; the kernels' frames take a few KB
constexpr size_t kStackCanary = 1024;      // bytes at the stack's far end that must stay untouched
constexpr unsigned char kCanary = 0xA5;
constexpr unsigned char kSmemFill = 0xFF;  // a NaN in float, double, half and bfloat16
constexpr unsigned kWarp = 32;
constexpr size_t kMmaWords = 10;  // a lane's mma.sync operands: a[4], b[2], c[4]

// Where a thread waits: a barrier of its CTA, its warp (a shuffle), its cluster or the grid, or an
// mbarrier phase that has not completed yet (Spin: it tries again when next resumed).
enum class Scope { Block, Warp, Cluster, Grid, Spin };

struct CopyAsync {
  void* dst;
  const void* src;
  size_t bytes;
};

struct Fiber {
  enum State { Ready, Waiting, Exited } state = Ready;
  ucontext_t context;
  std::unique_ptr<unsigned char[]> stack;
  Dim3 idx;
  Scope scope = Scope::Block;  // where it waits
  const char* file = nullptr;
  int line = 0;
  std::vector<CopyAsync> open_group;                 // cp.async copies not yet committed
  std::vector<std::vector<CopyAsync>> groups;        // committed, not yet complete (oldest first)
  bool retrying = false;                             // resumed from Spin to try its mbarrier again
};

const char* scope_name(Scope s) {
  switch (s) {
    case Scope::Block: return "__syncthreads()";
    case Scope::Warp: return "a warp shuffle";
    case Scope::Cluster: return "cluster.sync()";
    case Scope::Grid: return "grid.sync()";
    case Scope::Spin: return "an mbarrier wait";
  }
  return "";
}

std::string where(const Fiber& f) { return std::string(scope_name(f.scope)) + " at " + f.file + ":" + std::to_string(f.line); }
bool same_place(const Fiber& a, const Fiber& b) {
  return a.scope == b.scope && a.line == b.line && std::strcmp(a.file, b.file) == 0;
}

std::string cta_name(const Dim3& b) {
  return "CTA (" + std::to_string(b.x) + ", " + std::to_string(b.y) + ", " + std::to_string(b.z) + ")";
}

class Cta;

// What the fibers of a launch reach through the CUDA built-ins.
struct LaunchState {
  const LaunchConfig* config;
  SharedMemory smem;
  std::vector<Dim3> idx;                            // CTA i's blockIdx
  std::vector<std::vector<unsigned char>> saved;    // co-scheduled launches: each CTA's shared memory
  size_t running = 0;                               // the CTA whose shared memory is smem.base()
  Cta* cta = nullptr;                               // the CTA whose fiber runs
  uint64_t progress = 0;      // counts every step any thread takes other than a failed mbarrier retry
  std::string error;  // a rule a thread broke (found inside the fiber, thrown by the scheduler)
};
thread_local LaunchState* current = nullptr;  // the launch running on this OS thread

// One CTA: its threads as fibers, run by resume() until every thread has exited or waits at a
// barrier wider than the CTA (cluster or grid).
class Cta {
 public:
  Cta(const LaunchConfig& config, const std::function<void()>& kernel, Dim3 idx, uint64_t seed)
      : config_(config), kernel_(kernel), idx_(idx),
        rng_(seed ^ (uint64_t(idx.x) << 20) ^ (uint64_t(idx.y) << 40) ^ uint64_t(idx.z)) {
    const Dim3 bd = config.block;
    const size_t n = size_t(bd.x) * bd.y * bd.z;
    fibers_.resize(n);
    shfl_turn_.assign(n, 0);
    shfl_.assign(2 * (n + kWarp), 0);
    mma_.assign(2 * (n + kWarp) * kMmaWords, 0);
    for (size_t i = 0; i < n; ++i) {
      Fiber& f = fibers_[i];
      f.idx = Dim3{unsigned(i % bd.x), unsigned(i / bd.x % bd.y), unsigned(i / (size_t(bd.x) * bd.y))};
      f.stack.reset(new unsigned char[kStackBytes]);
      std::memset(f.stack.get(), kCanary, kStackCanary);  // the stack grows down, towards this end
      getcontext(&f.context);
      f.context.uc_stack.ss_sp = f.stack.get();
      f.context.uc_stack.ss_size = kStackBytes;
      f.context.uc_link = &scheduler_;
      makecontext(&f.context, fiber_main, 0);
    }
  }

  const Dim3& idx() const { return idx_; }
  const LaunchConfig& config() const { return config_; }
  Fiber& fiber() { return fibers_[running_]; }
  size_t thread() const { return running_; }
  ucontext_t* scheduler() { return &scheduler_; }
  bool exited() const { return done_; }
  // After resume(): some threads wait on an mbarrier (the CTA goes on once a peer's stores land).
  bool stalled() const { return stalled_; }
  // The barrier every thread waits at, after resume() returned with the CTA neither exited nor stalled.
  const Fiber& waiting() const { return *waiting_; }
  uint32_t& shfl_turn(size_t thread) { return shfl_turn_[thread]; }
  // The words a shuffle or an mma.sync of warp `warp` exchanges: two sets per warp, taken in turn by
  // a lane's successive warp-synchronous operations (the CTA's own: a CTA may be swapped out with a
  // shuffle half done).
  uint32_t* shfl_words(size_t warp, uint32_t turn) { return shfl_.data() + (2 * warp + (turn & 1)) * kWarp; }
  uint32_t* mma_words(size_t warp, uint32_t turn) { return mma_.data() + (2 * warp + (turn & 1)) * kWarp * kMmaWords; }

  // Runs the threads until every one has exited, waits at a barrier beyond the CTA (cluster, grid),
  // or some wait on an mbarrier. released: the launch has released the cluster or grid barrier the
  // threads wait at.
  void resume(Order order, bool released) {
    const size_t n = fibers_.size();
    std::vector<size_t> perm(n);
    std::iota(perm.begin(), perm.end(), size_t(0));
    if (order == Order::Descending) std::reverse(perm.begin(), perm.end());
    for (Fiber& f : fibers_) {
      if (f.state != Fiber::Waiting) continue;
      if (f.scope == Scope::Spin || (released && (f.scope == Scope::Cluster || f.scope == Scope::Grid))) {
        f.retrying = f.scope == Scope::Spin;
        f.state = Fiber::Ready;
      }
    }
    for (;;) {
      if (order == Order::Shuffled) std::shuffle(perm.begin(), perm.end(), rng_);
      for (size_t i : perm) {
        Fiber& f = fibers_[i];
        if (f.state != Fiber::Ready) continue;
        running_ = i;
        const bool retry = f.retrying;
        f.retrying = false;
        swapcontext(&scheduler_, &f.context);
        if (!current->error.empty()) fail(current->error);
        if (!(retry && f.state == Fiber::Waiting && f.scope == Scope::Spin)) ++current->progress;
      }
      // Every thread now waits or has exited.
      for (const Fiber& f : fibers_) {
        if (!std::all_of(f.stack.get(), f.stack.get() + kStackCanary, [](unsigned char c) { return c == kCanary; })) {
          fail("a thread's stack overflowed");
        }
        if (f.state == Fiber::Exited && (!f.open_group.empty() || !f.groups.empty())) {
          fail("a thread exited with cp.async copies it never waited for");
        }
      }
      if (release_warps()) continue;
      stalled_ = std::any_of(fibers_.begin(), fibers_.end(),
                             [](const Fiber& f) { return f.state == Fiber::Waiting && f.scope == Scope::Spin; });
      if (stalled_) return;  // the launch resumes it once others have run
      waiting_ = nullptr;
      size_t exited = 0;
      for (const Fiber& f : fibers_) {
        if (f.state == Fiber::Exited) {
          ++exited;
        } else if (waiting_ == nullptr) {
          waiting_ = &f;
        } else if (!same_place(f, *waiting_)) {
          fail("divergent barriers: threads wait at " + where(*waiting_) + " and at " + where(f));
        }
      }
      if (waiting_ == nullptr) {  // every thread has exited
        done_ = true;
        return;
      }
      if (exited > 0) {
        fail(std::to_string(n - exited) + " threads wait at " + where(*waiting_) + ", which " + std::to_string(exited) +
             " exited threads never reach");
      }
      if (waiting_->scope != Scope::Block) return;  // a barrier beyond the CTA: the launch decides
      for (Fiber& f : fibers_) f.state = Fiber::Ready;
      ++current->progress;
    }
  }

  [[noreturn]] void fail(const std::string& what) const { throw std::runtime_error(cta_name(idx_) + ": " + what); }

 private:
  // Releases the warps whose 32 threads all wait at the same shuffle; true if any. A warp some of
  // whose threads wait at a shuffle while others have exited or wait elsewhere can never go on.
  bool release_warps() {
    bool released = false;
    for (size_t w0 = 0; w0 < fibers_.size(); w0 += kWarp) {
      const size_t w1 = std::min(fibers_.size(), w0 + kWarp);
      const Fiber* shuffling = nullptr;
      for (size_t i = w0; i < w1; ++i) {
        if (fibers_[i].state == Fiber::Waiting && fibers_[i].scope == Scope::Warp) shuffling = &fibers_[i];
      }
      if (shuffling == nullptr) continue;
      bool all_there = true;
      for (size_t i = w0; i < w1; ++i) {
        const Fiber& f = fibers_[i];
        if (f.state == Fiber::Waiting && f.scope == Scope::Spin) {
          all_there = false;  // it may get there once its mbarrier completes
        } else if (f.state == Fiber::Exited || !same_place(f, *shuffling)) {
          fail("thread " + std::to_string(i) + " " + (f.state == Fiber::Exited ? "has exited" : "waits at " + where(f)) +
               " while its warp's lanes wait at " + where(*shuffling));
        }
      }
      if (w1 - w0 != kWarp) fail("a warp shuffle in a partial warp");
      if (!all_there) continue;
      for (size_t i = w0; i < w1; ++i) fibers_[i].state = Fiber::Ready;
      released = true;
    }
    return released;
  }

  static void fiber_main() {
    current->cta->kernel_();
    current->cta->fiber().state = Fiber::Exited;
    // returning resumes uc_link: the scheduler
  }

  const LaunchConfig& config_;
  const std::function<void()>& kernel_;
  Dim3 idx_;
  std::mt19937_64 rng_;
  std::vector<Fiber> fibers_;
  std::vector<uint32_t> shfl_turn_;
  std::vector<uint32_t> shfl_, mma_;
  ucontext_t scheduler_;
  size_t running_ = 0;
  const Fiber* waiting_ = nullptr;
  bool done_ = false;
  bool stalled_ = false;
};

LaunchState& launch_state() {
  if (current == nullptr || current->cta == nullptr) {
    throw std::logic_error("cuda_on_cpu: a CUDA built-in used outside a launch");
  }
  return *current;
}

Fiber& current_fiber() { return launch_state().cta->fiber(); }

// A rule broken inside a thread: the thread stops for good and the scheduler throws.
[[noreturn]] void fiber_fail(const std::string& what) {
  LaunchState& st = launch_state();
  st.error = what;
  Fiber& f = current_fiber();
  f.state = Fiber::Waiting;
  swapcontext(&f.context, st.cta->scheduler());
  __builtin_unreachable();  // never resumed
}

void wait_at(Scope scope, const char* file, int line) {
  Fiber& f = current_fiber();
  f.state = Fiber::Waiting;
  f.scope = scope;
  f.file = file;
  f.line = line;
  swapcontext(&f.context, current->cta->scheduler());
}

void check_smem_tail(const Cta& cta, const unsigned char* shared, SharedMemory smem) {
  for (size_t i = cta.config().smem_bytes; i < smem.capacity; ++i) {
    if (shared[i] != kSmemFill) {
      cta.fail("wrote shared memory at byte " + std::to_string(i) + ", past the launch's " +
               std::to_string(cta.config().smem_bytes) + " bytes");
    }
  }
}

const std::vector<size_t>& ordered(std::vector<size_t>& v, Order order, std::mt19937_64& rng) {
  if (order == Order::Descending) std::reverse(v.begin(), v.end());
  if (order == Order::Shuffled) std::shuffle(v.begin(), v.end(), rng);
  return v;
}

// Runs a co-scheduled launch (cooperative, or in clusters): every CTA in turn, its shared memory
// swapped in, until it waits at a cluster or grid barrier, waits on an mbarrier, or exits; then
// every cluster or grid barrier whose CTAs all wait at it is released, until every CTA has exited.
// A round in which no thread takes a step is a deadlock.
void run_co_scheduled(LaunchState& st, const std::function<void()>& kernel, Order order, uint64_t seed) {
  const LaunchConfig& config = *st.config;
  const size_t n = st.idx.size();
  std::vector<std::unique_ptr<Cta>> ctas;
  for (size_t i = 0; i < n; ++i) ctas.emplace_back(new Cta(config, kernel, st.idx[i], seed));
  // Each CTA's shared memory, swapped in while it runs; past the launch's size the live array stays
  // the fill (check_smem_tail), so only the launch's bytes are swapped.
  const size_t bytes = config.smem_bytes;
  st.saved.assign(n, std::vector<unsigned char>(bytes, kSmemFill));
  std::vector<char> released(n, 0);
  unsigned char* shared = st.smem.base();
  std::memset(shared, kSmemFill, st.smem.capacity);
  std::mt19937_64 rng(seed);
  std::vector<size_t> turn(n);
  for (;;) {
    const uint64_t progress = st.progress;
    std::iota(turn.begin(), turn.end(), size_t(0));
    for (size_t i : ordered(turn, order, rng)) {
      if (ctas[i]->exited()) continue;
      std::memcpy(shared, st.saved[i].data(), bytes);
      st.running = i;
      st.cta = ctas[i].get();
      ctas[i]->resume(order, released[i] != 0);
      released[i] = 0;
      st.cta = nullptr;
      check_smem_tail(*ctas[i], shared, st.smem);
      std::memcpy(st.saved[i].data(), shared, bytes);
    }
    // Each group of CTAs that a barrier joins (the cluster, or the grid) is released once all of
    // them wait at one place.
    bool active = false;
    const size_t group = config.cooperative ? n : config.cluster;
    for (size_t g0 = 0; g0 < n; g0 += group) {
      const Cta* waiting = nullptr;
      const Cta* exited = nullptr;
      bool stalled = false;
      for (size_t i = g0; i < g0 + group; ++i) {
        const Cta& c = *ctas[i];
        if (c.exited()) {
          exited = &c;
        } else if (c.stalled()) {
          stalled = true;
        } else if (waiting == nullptr) {
          waiting = &c;
        } else if (!same_place(c.waiting(), waiting->waiting())) {
          c.fail("waits at " + where(c.waiting()) + " while " + cta_name(waiting->idx()) + " waits at " +
                 where(waiting->waiting()));
        }
      }
      if (waiting == nullptr && !stalled) continue;  // the group has exited
      active = true;
      if (waiting == nullptr || stalled) continue;  // not all there yet
      const Scope scope = waiting->waiting().scope;
      if (scope == Scope::Grid && !config.cooperative) waiting->fail(where(waiting->waiting()) + " in a launch that is not cooperative");
      if (scope == Scope::Cluster && config.cluster == 1) waiting->fail(where(waiting->waiting()) + " in a launch without clusters");
      if (exited != nullptr) {
        waiting->fail(where(waiting->waiting()) + " never completes: " + cta_name(exited->idx()) + " has exited");
      }
      for (size_t i = g0; i < g0 + group; ++i) released[i] = 1;
      ++st.progress;
    }
    if (!active) return;
    if (st.progress == progress) {
      for (const auto& c : ctas) {
        if (c->stalled()) c->fail("deadlock: its threads wait on an mbarrier phase that never completes");
      }
      throw std::runtime_error("cuda_on_cpu: deadlock");
    }
  }
}

}  // namespace

Order order_named(const std::string& name) {
  if (name == "ascending") return Order::Ascending;
  if (name == "descending") return Order::Descending;
  if (name == "shuffled") return Order::Shuffled;
  throw std::invalid_argument("order must be ascending, descending or shuffled, got " + name);
}

const Dim3& thread_idx() { return current_fiber().idx; }
const Dim3& block_idx() { return launch_state().cta->idx(); }
const Dim3& block_dim() { return launch_state().config->block; }
const Dim3& grid_dim() { return launch_state().config->grid; }
void block_barrier(const char* file, int line) { wait_at(Scope::Block, file, line); }
void grid_barrier(const char* file, int line) { wait_at(Scope::Grid, file, line); }
void cluster_barrier(const char* file, int line) { wait_at(Scope::Cluster, file, line); }

uint32_t shfl_xor(uint32_t mask, uint32_t value, int lane_mask, const char* file, int line) {
  LaunchState& st = launch_state();
  Cta& cta = *st.cta;
  if (mask != 0xffffffffu) fiber_fail("a warp shuffle with a partial mask");
  if (lane_mask < 0 || lane_mask >= int(kWarp)) fiber_fail("a shuffle lane mask out of range");
  const size_t t = cta.thread(), lane = t % kWarp, warp = t / kWarp;
  uint32_t& turn = cta.shfl_turn(t);
  uint32_t* words = cta.shfl_words(warp, turn);
  ++turn;
  words[lane] = value;
  wait_at(Scope::Warp, file, line);  // every lane has written its word
  return words[lane ^ size_t(lane_mask)];
}

namespace {

float f16_to_float(uint32_t h) {
  const uint32_t sign = (h >> 15) & 1u, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  float v;
  if (exp == 0) {
    v = std::ldexp(static_cast<float>(man), -24);
  } else if (exp == 31) {
    v = man ? NAN : INFINITY;
  } else {
    v = std::ldexp(static_cast<float>(man | 0x400u), int(exp) - 25);
  }
  return sign ? -v : v;
}
float bf16_to_float(uint32_t h) { return __builtin_bit_cast(float, h << 16); }
float tf32_to_float(uint32_t w) { return __builtin_bit_cast(float, w & 0xffffe000u); }

// Element i of a lane's fragment register set `regs`: 16-bit types two per register (element 2r
// in the low half of register r), tf32 one per register.
float element(MmaKind kind, const uint32_t* regs, int i) {
  switch (kind) {
    case MmaKind::F16: return f16_to_float((regs[i / 2] >> (16 * (i % 2))) & 0xffffu);
    case MmaKind::BF16: return bf16_to_float((regs[i / 2] >> (16 * (i % 2))) & 0xffffu);
    case MmaKind::TF32: return tf32_to_float(regs[i]);
  }
  return 0.f;
}

}  // namespace

void mma_sync(MmaKind kind, float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, const char* file,
              int line) {
  // Every lane writes its fragments; after the rendezvous each computes its own four d values.
  LaunchState& st = launch_state();
  Cta& cta = *st.cta;
  const size_t t = cta.thread(), lane = t % kWarp, warp = t / kWarp;
  constexpr size_t kWords = kMmaWords;
  uint32_t& turn = cta.shfl_turn(t);
  uint32_t* set = cta.mma_words(warp, turn);
  ++turn;
  uint32_t* mine = set + lane * kWords;
  for (int r = 0; r < 4; ++r) mine[r] = a[r];
  mine[4] = b0;
  mine[5] = b1;
  for (int i = 0; i < 4; ++i) mine[6 + i] = __builtin_bit_cast(uint32_t, d[i]);
  wait_at(Scope::Warp, file, line);

  // The PTX ISA's fragment layouts, with groupID = lane >> 2 and threadID_in_group = lane % 4.
  const int K = kind == MmaKind::TF32 ? 8 : 16;
  double A[16][16] = {}, B[16][8] = {};
  for (int l = 0; l < int(kWarp); ++l) {
    const uint32_t* w = set + l * kWords;
    const int group = l >> 2, tig = l % 4;
    if (kind == MmaKind::TF32) {
      // m16n8k8 .tf32: a0..a3: row groupID (a0, a2) or groupID + 8 (a1, a3), col threadID_in_group
      // (a0, a1) or + 4 (a2, a3); b0, b1: row threadID_in_group (b0) or + 4 (b1), col groupID.
      for (int i = 0; i < 4; ++i) A[group + (i % 2 ? 8 : 0)][tig + (i >= 2 ? 4 : 0)] = element(kind, w, i);
      for (int i = 0; i < 2; ++i) B[tig + (i ? 4 : 0)][group] = element(kind, w + 4, i);
    } else {
      // m16n8k16 .f16/.bf16: a0..a7: row groupID for a0, a1, a4, a5, else groupID + 8; col
      // threadID_in_group * 2 + (i & 1), + 8 for a4..a7; b0..b3: row threadID_in_group * 2 + (i & 1),
      // + 8 for b2, b3; col groupID.
      for (int i = 0; i < 8; ++i) {
        const bool low_rows = i < 2 || (i >= 4 && i < 6);
        A[group + (low_rows ? 0 : 8)][tig * 2 + (i & 1) + (i >= 4 ? 8 : 0)] = element(kind, w, i);
      }
      for (int i = 0; i < 4; ++i) B[tig * 2 + (i & 1) + (i >= 2 ? 8 : 0)][group] = element(kind, w + 4, i);
    }
  }
  // c0..c3 (and d): row groupID for c0, c1, else groupID + 8; col threadID_in_group * 2 + (i & 1).
  const int group = int(lane) >> 2, tig = int(lane) % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = group + (i < 2 ? 0 : 8), col = tig * 2 + (i & 1);
    double sum = d[i];
    for (int k = 0; k < K; ++k) sum += A[row][k] * B[k][col];
    d[i] = static_cast<float>(sum);
  }
}

void copy_async(void* dst, const void* src, size_t bytes) { current_fiber().open_group.push_back({dst, src, bytes}); }
void commit_group() {
  Fiber& f = current_fiber();
  f.groups.push_back(std::move(f.open_group));
  f.open_group.clear();
}
void wait_group(int n) {
  Fiber& f = current_fiber();
  while (f.groups.size() > size_t(std::max(n, 0))) {
    for (const CopyAsync& c : f.groups.front()) std::memcpy(c.dst, c.src, c.bytes);
    f.groups.erase(f.groups.begin());
  }
}

void trap(const char* file, int line) { fiber_fail(std::string("__trap() at ") + file + ":" + std::to_string(line)); }

unsigned cluster_rank() {
  LaunchState& st = launch_state();
  return st.cta->idx().x % st.config->cluster;
}


namespace {

// The shared memory of the cluster's CTA `rank` (this CTA's own, or a peer's saved copy), at the
// offset of `local` in this CTA's, for `bytes` bytes.
unsigned char* in_cluster_cta(const void* local, size_t bytes, unsigned rank) {
  LaunchState& st = launch_state();
  const unsigned c = st.config->cluster;
  if (rank >= c) fiber_fail("a distributed shared-memory access to rank " + std::to_string(rank) + " of a cluster of " + std::to_string(c));
  const ptrdiff_t offset = static_cast<const unsigned char*>(local) - st.smem.base();
  if (offset < 0 || size_t(offset) + bytes > st.config->smem_bytes) {
    fiber_fail("a distributed shared-memory access outside the launch's shared memory");
  }
  const size_t peer = st.running - st.cta->idx().x % c + rank;  // CTAs of a cluster: consecutive x
  unsigned char* base = c == 1 || st.saved.empty() || peer == st.running ? st.smem.base() : st.saved[peer].data();
  return base + offset;
}

// The emulation's state of an mbarrier, in its 8 bytes.
struct Mbarrier {
  uint16_t pending, arrivals;  // arrivals: per phase; the phase parity in arrivals' top bit
  int32_t tx;
  unsigned phase() const { return arrivals >> 15; }
  void complete_if_done() {
    if (pending == 0 && tx == 0) {
      arrivals ^= 0x8000u;
      pending = arrivals & 0x7fffu;
    }
  }
};
static_assert(sizeof(Mbarrier) == 8, "an mbarrier is 64 bits");

Mbarrier load_mbarrier(const void* p) {
  Mbarrier m;
  std::memcpy(&m, p, sizeof m);
  return m;
}
void store_mbarrier(void* p, const Mbarrier& m) { std::memcpy(p, &m, sizeof m); }

}  // namespace

unsigned shared_offset(const void* p) {
  LaunchState& st = launch_state();
  const ptrdiff_t offset = static_cast<const unsigned char*>(p) - st.smem.base();
  if (offset < 0 || size_t(offset) >= st.config->smem_bytes) fiber_fail("a shared-memory address outside the launch's shared memory");
  return static_cast<unsigned>(offset);
}

void mbarrier_init(void* bar, unsigned arrivals) {
  if (arrivals == 0 || arrivals >= 0x8000u) fiber_fail("mbarrier.init with " + std::to_string(arrivals) + " arrivals");
  store_mbarrier(in_cluster_cta(bar, 8, cluster_rank()), Mbarrier{uint16_t(arrivals), uint16_t(arrivals), 0});
}

void mbarrier_arrive_expect_tx(void* bar, unsigned bytes) {
  unsigned char* p = in_cluster_cta(bar, 8, cluster_rank());
  Mbarrier m = load_mbarrier(p);
  if (m.pending == 0) fiber_fail("an mbarrier arrival beyond its count");
  m.tx += static_cast<int32_t>(bytes);
  --m.pending;
  m.complete_if_done();
  store_mbarrier(p, m);
}

bool mbarrier_test_wait_parity(unsigned address, unsigned parity) {
  LaunchState& st = launch_state();
  if (size_t(address) + 8 > st.config->smem_bytes) fiber_fail("an mbarrier wait outside the launch's shared memory");
  return load_mbarrier(st.smem.base() + address).phase() != (parity & 1u);
}

void mbarrier_spin(const char* file, int line) { wait_at(Scope::Spin, file, line); }

void store_async_in_cluster_cta(void* local, uint32_t value, void* local_bar, unsigned rank) {
  std::memcpy(in_cluster_cta(local, 4, rank), &value, 4);
  unsigned char* p = in_cluster_cta(local_bar, 8, rank);
  Mbarrier m = load_mbarrier(p);
  m.tx -= 4;
  m.complete_if_done();
  store_mbarrier(p, m);
}

void store_in_cluster_cta(void* local, const void* value, size_t bytes, unsigned rank) {
  std::memcpy(in_cluster_cta(local, bytes, rank), value, bytes);
}

void launch(const LaunchConfig& config, const std::function<void()>& kernel, SharedMemory smem, Order order,
            uint64_t seed) {
  const Dim3 g = config.grid, b = config.block;
  const size_t nctas = size_t(g.x) * g.y * g.z, threads = size_t(b.x) * b.y * b.z;
  if (nctas == 0 || threads == 0 || threads > 1024 || config.cluster == 0 || g.x % config.cluster != 0 ||
      (config.cluster > 1 && config.cooperative)) {
    throw std::runtime_error("cuda_on_cpu: invalid launch: " + std::to_string(nctas) + " CTAs of " +
                             std::to_string(threads) + " threads, clusters of " + std::to_string(config.cluster));
  }
  if (config.smem_bytes > smem.capacity) {
    throw std::runtime_error("cuda_on_cpu: the launch asks for " + std::to_string(config.smem_bytes) +
                             " bytes of shared memory, more than the emulation's " + std::to_string(smem.capacity));
  }
  if (current != nullptr) throw std::logic_error("cuda_on_cpu: a launch inside a launch");
  LaunchState st;
  st.config = &config;
  st.smem = smem;
  for (unsigned z = 0; z < g.z; ++z)
    for (unsigned y = 0; y < g.y; ++y)
      for (unsigned x = 0; x < g.x; ++x) st.idx.push_back(Dim3{x, y, z});
  struct Current {
    explicit Current(LaunchState* s) { current = s; }
    ~Current() { current = nullptr; }
  } running(&st);

  if (config.cooperative || config.cluster > 1) {
    run_co_scheduled(st, kernel, order, seed);
    return;
  }
  // CTAs one after another, in the launch's order.
  std::mt19937_64 rng(seed);
  std::vector<size_t> turn(nctas);
  std::iota(turn.begin(), turn.end(), size_t(0));
  unsigned char* shared = smem.base();
  for (size_t i : ordered(turn, order, rng)) {
    Cta cta(config, kernel, st.idx[i], seed);
    std::memset(shared, kSmemFill, smem.capacity);
    st.running = i;
    st.cta = &cta;
    for (;;) {
      const uint64_t progress = st.progress;
      cta.resume(order, false);
      if (!cta.stalled()) break;
      if (st.progress == progress) cta.fail("deadlock: its threads wait on an mbarrier phase that never completes");
    }
    st.cta = nullptr;
    if (!cta.exited()) cta.fail(where(cta.waiting()) + " in a launch that is not cooperative");
    check_smem_tail(cta, shared, smem);
  }
}

}  // namespace cuda_on_cpu
}  // namespace fused_rnn
