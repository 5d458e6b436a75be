// The tuned regime choice (FUSED_RNN_CUDA_REGIME=tuned; opt-in until a GPU run validates it): on the
// first call of a kind, every applicable route runs a few steps on trial buffers and is timed; the
// fastest is remembered for the process. A choice measured on the GPU at hand cannot pick a loser
// among the candidates, whatever its SM count, clocks or cuDNN version, where a cost model's
// constants would have to be measured first. Used by recurrence_cuda.cu, which knows the routes.
#pragma once

#include <ATen/core/Tensor.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace fused_rnn {
namespace cuda {

// What a choice depends on, besides the route's own applicability: one per kind of call.
struct TuneKey {
  int device;
  at::ScalarType dtype;
  int64_t B, H, D;
  int64_t steps;  // min(T, kTuneSteps): a short call (T = 1, generation) is its own kind
  bool backward;
  bool tf32;       // cuDNN's RNN flag allows TF32 (float32 takes the TF32 kernels)
  bool gemm_tf32;  // the stack's GEMMs run on TF32 (FUSED_RNN_CUDA_GEMM_TF32 and the flags)
  bool operator<(const TuneKey& o) const {
    return std::tie(device, dtype, B, H, D, steps, backward, tf32, gemm_tf32) <
           std::tie(o.device, o.dtype, o.B, o.H, o.D, o.steps, o.backward, o.tf32, o.gemm_tf32);
  }
};

// Trials run at most this many steps.
constexpr int64_t kTuneSteps = 16;

struct TuneCandidate {
  const char* name;
  // Runs the trial once on the current stream; false (nothing launched) where the route does not
  // apply to the call.
  std::function<bool()> run;
};

// The remembered choice for key: an index into the candidates it was tuned over, or nullopt.
std::optional<int> tuned_choice(const TuneKey& key);

// Times each candidate on stream (after restore(), a warm-up run, then restore() and one run
// between two events) and remembers and returns the index of the fastest; nullopt, remembering
// nothing, where none applies. Each tuning adds a line to switches::tuning_log(). Synchronises the
// stream: the caller makes sure it is not capturing. A candidate that throws is left out (its error
// named in the log).
std::optional<int> tune(const TuneKey& key, const std::vector<TuneCandidate>& candidates,
                        const std::function<void()>& restore, cudaStream_t stream);

}  // namespace cuda
}  // namespace fused_rnn
