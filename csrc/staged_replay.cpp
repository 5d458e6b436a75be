#include "staged_replay.h"

#include <ATen/ops/empty_strided.h>

#include <utility>

namespace fused_rnn {
namespace {

// Kinds counted at most (a process calling with ever new shapes stops counting, and runs eagerly,
// rather than growing the map without bound).
constexpr size_t kMaxKinds = 4096;

// Appends what a recording depends on in t's layout: dtype, device, sizes, strides.
void append_layout(std::vector<int64_t>& key, const at::Tensor& t) {
  key.push_back(static_cast<int64_t>(t.scalar_type()));
  key.push_back(static_cast<int64_t>(t.device().type()));
  key.push_back(t.device().index());
  key.push_back(t.dim());
  for (const int64_t s : t.sizes()) key.push_back(s);
  for (const int64_t s : t.strides()) key.push_back(s);
}

// Whether every arg can be staged as it lies: dense, and no two sharing storage.
bool stageable(const std::vector<at::Tensor>& args) {
  for (size_t i = 0; i < args.size(); ++i) {
    if (!args[i].defined() || !args[i].is_non_overlapping_and_dense()) return false;
    for (size_t j = 0; j < i; ++j)
      if (args[i].storage().is_alias_of(args[j].storage())) return false;
  }
  return true;
}

void copy_in(const std::vector<at::Tensor>& staged, const std::vector<at::Tensor>& args) {
  for (size_t i = 0; i < args.size(); ++i) staged[i].copy_(args[i]);
}

void copy_out(const std::vector<at::Tensor>& args, const std::vector<at::Tensor>& staged,
              const std::vector<bool>& written) {
  for (size_t i = 0; i < args.size(); ++i)
    if (written[i]) args[i].copy_(staged[i]);
}

}  // namespace

StagedReplay::Outcome StagedReplay::run(std::vector<int64_t> kind, const std::vector<at::Tensor>& args,
                                        const std::vector<bool>& written, const Loop& loop, const Recorder& record) {
  TORCH_INTERNAL_ASSERT(written.size() == args.size(), "fused_rnn: StagedReplay::run: one written flag per arg");
  if (!stageable(args)) return Outcome::Eager;
  kind.push_back(static_cast<int64_t>(args.size()));
  for (const at::Tensor& t : args) append_layout(kind, t);

  const std::lock_guard<std::mutex> lock(mutex_);
  auto it = entries_.find(kind);
  if (it == entries_.end()) {
    if (entries_.size() >= kMaxKinds) return Outcome::Eager;
    it = entries_.emplace(std::move(kind), Entry{}).first;
  }
  Entry& e = it->second;
  if (e.recording) {
    copy_in(e.staged, args);
    e.recording->replay();
    copy_out(args, e.staged, written);
    return Outcome::Replayed;
  }
  if (e.failed || ++e.calls < 2 || recorded_ >= capacity_) return Outcome::Eager;

  std::vector<at::Tensor> staged;
  for (const at::Tensor& t : args) staged.push_back(at::empty_strided(t.sizes(), t.strides(), t.options()));
  try {
    // The body owns the staging tensors and the loop: a recording may be replayed after this call.
    e.recording = record([loop, staged] { loop(staged); });
  } catch (...) {
    e.failed = true;
    throw;
  }
  e.staged = std::move(staged);
  ++recorded_;
  copy_in(e.staged, args);
  e.recording->replay();
  copy_out(args, e.staged, written);
  return Outcome::Recorded;
}

size_t StagedReplay::clear(const std::function<void()>& quiesce) {
  const std::lock_guard<std::mutex> lock(mutex_);
  if (quiesce) quiesce();
  const size_t dropped = recorded_;
  entries_.clear();
  recorded_ = 0;
  return dropped;
}

namespace {

// context, then the pass, the activation and the batch table (which also gives T).
std::vector<int64_t> step_loop_kind(std::vector<int64_t> context, const StepLayout& lay, bool relu, bool backward) {
  context.push_back(backward);
  context.push_back(relu);
  context.insert(context.end(), lay.batch.begin(), lay.batch.end());
  return context;
}

}  // namespace

StagedReplay::Outcome replay_forward_steps(StagedReplay& cache, std::vector<int64_t> context, const at::Tensor& out,
                                           const at::Tensor& h0, const at::Tensor& w_hh, const StepLayout& lay,
                                           bool relu, const at::Tensor& hy, ForwardSteps steps,
                                           const StagedReplay::Recorder& record) {
  // The loop owns a copy of the layout: a recording may be replayed after this call.
  const auto loop = [steps = std::move(steps), lay, relu](const std::vector<at::Tensor>& t) {
    steps(t[0], t[1], t[2], lay, relu, t[3]);
  };
  return cache.run(step_loop_kind(std::move(context), lay, relu, false), {out, h0, w_hh, hy},
                   {true, false, false, true}, loop, record);
}

StagedReplay::Outcome replay_backward_steps(StagedReplay& cache, std::vector<int64_t> context, const at::Tensor& dpre,
                                            const at::Tensor& y, const at::Tensor& ghy, const at::Tensor& w_hh,
                                            const StepLayout& lay, bool relu, const at::Tensor& dh0,
                                            BackwardSteps steps, const StagedReplay::Recorder& record) {
  const auto loop = [steps = std::move(steps), lay, relu](const std::vector<at::Tensor>& t) {
    steps(t[0], t[1], t[2], t[3], lay, relu, t[4]);
  };
  return cache.run(step_loop_kind(std::move(context), lay, relu, true), {dpre, y, ghy, w_hh, dh0},
                   {true, false, false, false, true}, loop, record);
}

}  // namespace fused_rnn
