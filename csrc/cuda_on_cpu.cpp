// The runtime of cuda_on_cpu.h: CUDA threads as fibers (ucontext) on the calling OS thread, barriers.
#include "cuda_on_cpu.h"

#include <ucontext.h>

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

struct Fiber {
  enum State { Ready, AtBarrier, Exited } state = Ready;
  ucontext_t context;
  std::unique_ptr<unsigned char[]> stack;
  Dim3 idx;
  const char* file = nullptr;  // the barrier it waits at
  int line = 0;
  bool grid = false;
};

std::string cta_name(const Dim3& b) {
  return "CTA (" + std::to_string(b.x) + ", " + std::to_string(b.y) + ", " + std::to_string(b.z) + ")";
}

std::string where(const Fiber& f) {
  return std::string(f.grid ? "grid.sync() at " : "__syncthreads() at ") + f.file + ":" + std::to_string(f.line);
}

class Cta;
thread_local Cta* current_cta = nullptr;  // the CTA whose fiber runs on this OS thread

// One CTA: its threads as fibers, run by resume() from one grid barrier (or the start) to the next
// (or the end).
class Cta {
 public:
  Cta(const LaunchConfig& config, const std::function<void()>& kernel, Dim3 idx, uint64_t seed)
      : config_(config), kernel_(kernel), idx_(idx), rng_(seed ^ (uint64_t(idx.x) << 20) ^ (uint64_t(idx.y) << 40) ^ idx.z) {
    const Dim3 bd = config.block;
    const size_t n = size_t(bd.x) * bd.y * bd.z;
    fibers_.resize(n);
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
  ucontext_t* scheduler() { return &scheduler_; }
  bool exited() const { return waiting_ == nullptr; }
  // The grid barrier every thread waits at (after resume() returned with the CTA not exited).
  const Fiber& waiting() const { return *waiting_; }

  // Runs the threads through the CTA's barriers until every thread has exited or waits at a grid
  // barrier. Throws where the threads break a rule (cuda_on_cpu.h).
  void resume(Order order) {
    const size_t n = fibers_.size();
    std::vector<size_t> perm(n);
    std::iota(perm.begin(), perm.end(), size_t(0));
    if (order == Order::Descending) std::reverse(perm.begin(), perm.end());
    for (Fiber& f : fibers_) {
      if (f.state == Fiber::AtBarrier) f.state = Fiber::Ready;
    }
    current_cta = this;
    for (;;) {
      if (order == Order::Shuffled) std::shuffle(perm.begin(), perm.end(), rng_);
      for (size_t i : perm) {
        if (fibers_[i].state != Fiber::Ready) continue;
        running_ = i;
        swapcontext(&scheduler_, &fibers_[i].context);
      }
      // Every thread now waits at a barrier or has exited.
      waiting_ = nullptr;
      size_t exited = 0;
      for (const Fiber& f : fibers_) {
        if (f.state == Fiber::Exited) {
          ++exited;
        } else if (waiting_ == nullptr) {
          waiting_ = &f;
        } else if (f.grid != waiting_->grid || f.line != waiting_->line || std::strcmp(f.file, waiting_->file) != 0) {
          fail("divergent barriers: threads wait at " + where(*waiting_) + " and at " + where(f));
        }
      }
      for (const Fiber& f : fibers_) {
        if (!std::all_of(f.stack.get(), f.stack.get() + kStackCanary, [](unsigned char c) { return c == kCanary; })) {
          fail("a thread's stack overflowed");
        }
      }
      if (waiting_ == nullptr) break;  // every thread has exited
      if (exited > 0) {
        fail(std::to_string(n - exited) + " threads wait at " + where(*waiting_) + ", which " + std::to_string(exited) +
             " exited threads never reach");
      }
      if (waiting_->grid) break;
      for (Fiber& f : fibers_) f.state = Fiber::Ready;
    }
    current_cta = nullptr;
  }

  [[noreturn]] void fail(const std::string& what) const {
    current_cta = nullptr;
    throw std::runtime_error(cta_name(idx_) + ": " + what);
  }

 private:
  static void fiber_main() {
    current_cta->kernel_();
    current_cta->fiber().state = Fiber::Exited;
    // returning resumes uc_link: the scheduler
  }

  const LaunchConfig& config_;
  const std::function<void()>& kernel_;
  Dim3 idx_;
  std::mt19937_64 rng_;
  std::vector<Fiber> fibers_;
  ucontext_t scheduler_;
  size_t running_ = 0;
  const Fiber* waiting_ = nullptr;
};

Fiber& current_fiber() {
  if (current_cta == nullptr) throw std::logic_error("cuda_on_cpu: a CUDA built-in used outside a launch");
  return current_cta->fiber();
}

void wait_at_barrier(const char* file, int line, bool grid) {
  Fiber& f = current_fiber();
  f.state = Fiber::AtBarrier;
  f.file = file;
  f.line = line;
  f.grid = grid;
  swapcontext(&f.context, current_cta->scheduler());
}

void check_smem_tail(const Cta& cta, const unsigned char* shared, SharedMemory smem) {
  for (size_t i = cta.config().smem_bytes; i < smem.capacity; ++i) {
    if (shared[i] != kSmemFill) {
      cta.fail("wrote shared memory at byte " + std::to_string(i) + ", past the launch's " +
               std::to_string(cta.config().smem_bytes) + " bytes");
    }
  }
}

}  // namespace

const Dim3& thread_idx() { return current_fiber().idx; }
const Dim3& block_idx() {
  current_fiber();
  return current_cta->idx();
}
const Dim3& block_dim() {
  current_fiber();
  return current_cta->config().block;
}
const Dim3& grid_dim() {
  current_fiber();
  return current_cta->config().grid;
}
void block_barrier(const char* file, int line) { wait_at_barrier(file, line, false); }
void grid_barrier(const char* file, int line) { wait_at_barrier(file, line, true); }

void launch(const LaunchConfig& config, const std::function<void()>& kernel, SharedMemory smem, Order order,
            uint64_t seed) {
  const Dim3 g = config.grid, b = config.block;
  const size_t nctas = size_t(g.x) * g.y * g.z, threads = size_t(b.x) * b.y * b.z;
  if (nctas == 0 || threads == 0 || threads > 1024) {
    throw std::runtime_error("cuda_on_cpu: invalid launch: " + std::to_string(nctas) + " CTAs of " +
                             std::to_string(threads) + " threads");
  }
  if (config.smem_bytes > smem.capacity) {
    throw std::runtime_error("cuda_on_cpu: the launch asks for " + std::to_string(config.smem_bytes) +
                             " bytes of shared memory, more than the emulation's " + std::to_string(smem.capacity));
  }
  std::vector<Dim3> idx;
  for (unsigned z = 0; z < g.z; ++z)
    for (unsigned y = 0; y < g.y; ++y)
      for (unsigned x = 0; x < g.x; ++x) idx.push_back(Dim3{x, y, z});
  std::mt19937_64 rng(seed);
  auto ordered = [&](std::vector<size_t> v) {
    if (order == Order::Descending) std::reverse(v.begin(), v.end());
    if (order == Order::Shuffled) std::shuffle(v.begin(), v.end(), rng);
    return v;
  };
  std::vector<size_t> all(nctas);
  std::iota(all.begin(), all.end(), size_t(0));
  unsigned char* shared = smem.base();

  if (!config.cooperative) {  // CTAs one after another, in the launch's order
    for (size_t i : ordered(all)) {
      Cta cta(config, kernel, idx[i], seed);
      std::memset(shared, kSmemFill, smem.capacity);
      cta.resume(order);
      if (!cta.exited()) cta.fail(where(cta.waiting()) + " in a launch that is not cooperative");
      check_smem_tail(cta, shared, smem);
    }
    return;
  }
  // Cooperative: every CTA runs to the next grid barrier, in turn, with its own shared memory
  // swapped in, until all have exited.
  std::vector<std::unique_ptr<Cta>> ctas;
  std::vector<std::vector<unsigned char>> saved(nctas, std::vector<unsigned char>(smem.capacity, kSmemFill));
  for (size_t i = 0; i < nctas; ++i) ctas.emplace_back(new Cta(config, kernel, idx[i], seed));
  for (;;) {
    for (size_t i : ordered(all)) {
      std::memcpy(shared, saved[i].data(), smem.capacity);
      ctas[i]->resume(order);
      check_smem_tail(*ctas[i], shared, smem);
      std::memcpy(saved[i].data(), shared, smem.capacity);
    }
    const Cta* at_barrier = nullptr;
    const Cta* exited = nullptr;
    for (const auto& c : ctas) {
      if (c->exited()) {
        exited = c.get();
      } else if (at_barrier == nullptr) {
        at_barrier = c.get();
      } else if (c->waiting().line != at_barrier->waiting().line ||
                 std::strcmp(c->waiting().file, at_barrier->waiting().file) != 0) {
        c->fail("divergent grid barriers: at " + where(c->waiting()) + " while " + cta_name(at_barrier->idx()) +
                " waits at " + where(at_barrier->waiting()));
      }
    }
    if (at_barrier == nullptr) return;  // every CTA has exited
    if (exited != nullptr) {
      at_barrier->fail(where(at_barrier->waiting()) + " never completes: " + cta_name(exited->idx()) + " has exited");
    }
  }
}

}  // namespace cuda_on_cpu
}  // namespace fused_rnn
