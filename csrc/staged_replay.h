// Replaying a recorded step loop on staged copies of each call's tensors: how the float16/bfloat16
// per-step GEMM regime runs its loop from a CUDA graph (cuda/gemm_steps_half.cu,
// FUSED_RNN_CUDA_GEMM_GRAPH=reuse), with the recording emulated on the CPU by
// staged_replay_emulation.cpp so that this logic is tested without a GPU.
//
// A recording (a CUDA graph) bakes in the addresses of the tensors it was recorded on, and each
// call brings new tensors. So each kind of call owns staging tensors, made when the kind is
// recorded, shaped and strided as the call's: a call copies its tensors in, replays the recording
// (which reads and writes only the staging tensors), and copies back the tensors the loop writes.
// That costs one pass over the call's tensors each way; the recording saves the host's per-step
// work (two launches a step and direction, one of them a cuBLAS call).
//
// A kind is recorded on its second call (a recording pays only where it is replayed) and replayed
// from then on. At most `capacity` kinds are recorded per cache; their staging tensors and graphs
// stay until clear(). Thread-safe: one call at a time per cache.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "step_layout.h"

namespace fused_rnn {

class StagedReplay {
 public:
  // A recorded loop: replay() runs it again, on the tensors it was recorded on.
  struct Recording {
    virtual ~Recording() = default;
    virtual void replay() = 0;
  };
  // Records body (which owns everything it reads: it may be run again long after the call that
  // made it) and returns the recording. Recording need not run the body's work: a CUDA graph
  // capture only records it; the run is the replay that follows.
  using Recorder = std::function<std::unique_ptr<Recording>(std::function<void()> body)>;
  // The step loop, on tensors shaped and strided as the call's args, in the same order.
  using Loop = std::function<void(const std::vector<at::Tensor>& tensors)>;

  enum class Outcome {
    Eager,     // nothing ran: the caller runs its loop itself
    Recorded,  // this call recorded its kind, then replayed it
    Replayed,  // this call replayed its kind's recording
  };

  explicit StagedReplay(size_t capacity) : capacity_(capacity) {}

  // Runs loop over args by replay where the kind is recorded (or records it, on its second call).
  //   kind:    what the recorded loop depends on besides its tensors' contents and layouts (the step
  //            layout, the activation, the stream); the args' dtypes, devices, sizes and strides
  //            are added here
  //   args:    every tensor the loop reads or writes
  //   written: written[i] says the loop writes args[i] (copied back after the replay)
  // Eager where an arg is not dense or two share storage (staged copies would not alias as they
  // do), or where the cache is full.
  Outcome run(std::vector<int64_t> kind, const std::vector<at::Tensor>& args, const std::vector<bool>& written,
              const Loop& loop, const Recorder& record);

  // Drops every recording and staging tensor and returns how many kinds were recorded. quiesce (if
  // given) runs first, under the cache's lock, so that no call replays between it and the drop:
  // there the caller waits for the replays already launched.
  size_t clear(const std::function<void()>& quiesce = {});

 private:
  struct Entry {
    int64_t calls = 0;
    bool failed = false;  // its recording threw: never tried again
    std::vector<at::Tensor> staged;
    std::unique_ptr<Recording> recording;
  };

  const size_t capacity_;
  std::mutex mutex_;
  std::map<std::vector<int64_t>, Entry> entries_;
  size_t recorded_ = 0;
};

// The recurrence.h step loops of one layer through a StagedReplay, for the CUDA regime and its CPU
// emulation alike: which tensors each pass reads and writes, and its kind (context, e.g. the
// stream, then the pass, the activation and the step layout's batch table).
//   forward: out [N, D*H] read and written, h0 [D, B, H], w_hh [D, H, H], hy [D, B, H] written
//   BPTT:    dpre [N, D*H] read and written, y [N, D*H], ghy [D, B, H], w_hh, dh0 [D, B, H] written
using ForwardSteps = std::function<void(const at::Tensor& out, const at::Tensor& h0, const at::Tensor& w_hh,
                                        const StepLayout& lay, bool relu, const at::Tensor& hy)>;
using BackwardSteps = std::function<void(const at::Tensor& dpre, const at::Tensor& y, const at::Tensor& ghy,
                                         const at::Tensor& w_hh, const StepLayout& lay, bool relu,
                                         const at::Tensor& dh0)>;

StagedReplay::Outcome replay_forward_steps(StagedReplay& cache, std::vector<int64_t> context, const at::Tensor& out,
                                           const at::Tensor& h0, const at::Tensor& w_hh, const StepLayout& lay,
                                           bool relu, const at::Tensor& hy, ForwardSteps steps,
                                           const StagedReplay::Recorder& record);
StagedReplay::Outcome replay_backward_steps(StagedReplay& cache, std::vector<int64_t> context, const at::Tensor& dpre,
                                            const at::Tensor& y, const at::Tensor& ghy, const at::Tensor& w_hh,
                                            const StepLayout& lay, bool relu, const at::Tensor& dh0,
                                            BackwardSteps steps, const StagedReplay::Recorder& record);

}  // namespace fused_rnn
