// CPU emulation of the float16/bfloat16 per-step GEMM regime's CUDA graph
// (FUSED_RNN_CUDA_GEMM_GRAPH=reuse, cuda/gemm_steps_half.cu), for tests on machines without a GPU.
// The same StagedReplay cache and step-loop adapters (staged_replay.h) run ATen's per-step GEMM
// loop (recurrence_gemm.cpp) on the CPU, with a recorder that keeps the loop's body and runs it at
// each replay, as a CUDA graph replays the launches it captured on the tensors it captured them on.
// So a staging mistake (a tensor not copied in or back, a body reading the recording call's
// tensors instead of the staging ones, a layout the body does not own) shows up as a wrong result
// on the calls after the recording (tests/test_staged_replay.py).
//
//   torch.ops.fused_rnn_emulation.staged_forward(out, h0, w_hh, batch_sizes, relu, hy) -> str
//   torch.ops.fused_rnn_emulation.staged_backward(dpre, y, ghy, w_hh, batch_sizes, relu, dh0) -> str
//     recurrence.h's passes of one layer, in place, on CPU tensors; batch_sizes: PackedSequence's
//     (or None: uniform, B = h0.size(1)). Returns what ran: "eager", "recorded" or "replayed".
//   torch.ops.fused_rnn_emulation.staged_reset(capacity) -> int
//     drops every recording, makes the cache record at most capacity kinds; returns how many
//     recordings it dropped
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <memory>
#include <optional>
#include <string>

#include "recurrence_gemm.h"
#include "staged_replay.h"

namespace fused_rnn {
namespace {

// A "recording" that keeps the body and runs it at each replay: nothing runs when it is made.
struct KeptBody final : StagedReplay::Recording {
  std::function<void()> body;
  explicit KeptBody(std::function<void()> b) : body(std::move(b)) {}
  void replay() override { body(); }
};

std::unique_ptr<StagedReplay>& cache() {
  static std::unique_ptr<StagedReplay> c = std::make_unique<StagedReplay>(8);
  return c;
}

std::unique_ptr<StagedReplay::Recording> keep(std::function<void()> body) {
  return std::make_unique<KeptBody>(std::move(body));
}

std::string outcome_name(StagedReplay::Outcome o) {
  switch (o) {
    case StagedReplay::Outcome::Eager: return "eager";
    case StagedReplay::Outcome::Recorded: return "recorded";
    case StagedReplay::Outcome::Replayed: return "replayed";
  }
  return "";
}

void check_cpu(std::initializer_list<const at::Tensor*> ts) {
  for (const at::Tensor* t : ts) TORCH_CHECK(t->device().is_cpu(), "staged replay emulation: CPU tensors");
}

void forward_steps(const at::Tensor& out, const at::Tensor& h0, const at::Tensor& w_hh, const StepLayout& lay,
                   bool relu, const at::Tensor& hy) {
  recurrence_forward_gemm(out, h0, w_hh, lay, relu, hy, nullptr);
}

void backward_steps(const at::Tensor& dpre, const at::Tensor& y, const at::Tensor& ghy, const at::Tensor& w_hh,
                    const StepLayout& lay, bool relu, const at::Tensor& dh0) {
  recurrence_backward_gemm(dpre, y, ghy, w_hh, lay, relu, dh0, nullptr);
}

std::string staged_forward(const at::Tensor& out, const at::Tensor& h0, const at::Tensor& w_hh,
                           const std::optional<at::Tensor>& batch_sizes, bool relu, const at::Tensor& hy) {
  check_cpu({&out, &h0, &w_hh, &hy});
  const StepLayout lay(batch_sizes.value_or(at::Tensor()), out.size(0), h0.size(1));
  const StagedReplay::Outcome o =
      replay_forward_steps(*cache(), {}, out, h0, w_hh, lay, relu, hy, forward_steps, keep);
  if (o == StagedReplay::Outcome::Eager) forward_steps(out, h0, w_hh, lay, relu, hy);
  return outcome_name(o);
}

std::string staged_backward(const at::Tensor& dpre, const at::Tensor& y, const at::Tensor& ghy,
                            const at::Tensor& w_hh, const std::optional<at::Tensor>& batch_sizes, bool relu,
                            const at::Tensor& dh0) {
  check_cpu({&dpre, &y, &ghy, &w_hh, &dh0});
  const StepLayout lay(batch_sizes.value_or(at::Tensor()), dpre.size(0), ghy.size(1));
  const StagedReplay::Outcome o =
      replay_backward_steps(*cache(), {}, dpre, y, ghy, w_hh, lay, relu, dh0, backward_steps, keep);
  if (o == StagedReplay::Outcome::Eager) backward_steps(dpre, y, ghy, w_hh, lay, relu, dh0);
  return outcome_name(o);
}

int64_t staged_reset(int64_t capacity) {
  TORCH_CHECK(capacity >= 0, "staged replay emulation: capacity must be >= 0");
  const int64_t dropped = static_cast<int64_t>(cache()->clear());
  cache() = std::make_unique<StagedReplay>(static_cast<size_t>(capacity));
  return dropped;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fused_rnn_emulation, m) {
  m.def("staged_forward(Tensor(a!) out, Tensor h0, Tensor w_hh, Tensor? batch_sizes, bool relu, "
        "Tensor(b!) hy) -> str");
  m.def("staged_backward(Tensor(a!) dpre, Tensor y, Tensor ghy, Tensor w_hh, Tensor? batch_sizes, bool relu, "
        "Tensor(b!) dh0) -> str");
  m.def("staged_reset(int capacity) -> int", TORCH_FN(staged_reset));
  m.impl("staged_forward", c10::DispatchKey::CPU, TORCH_FN(staged_forward));
  m.impl("staged_backward", c10::DispatchKey::CPU, TORCH_FN(staged_backward));
}

}  // namespace fused_rnn
