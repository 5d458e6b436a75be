// The tuned regime choice (see regime_tuner.h): trial timing and the process-wide memory of choices.
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include <limits>
#include <map>
#include <mutex>
#include <sstream>

#include "cuda/regime_tuner.h"
#include "switches.h"

namespace fused_rnn {
namespace cuda {
namespace {

struct Memory {
  std::mutex mutex;
  std::map<TuneKey, int> choice;
};

Memory& memory() {
  static Memory m;
  return m;
}

// An event pair's elapsed time, µs.
float elapsed_us(cudaEvent_t a, cudaEvent_t b) {
  float ms = 0;
  C10_CUDA_CHECK(cudaEventSynchronize(b));
  C10_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
  return 1000.f * ms;
}

std::string describe(const TuneKey& k) {
  std::ostringstream s;
  s << "cuda:" << k.device << ' ' << c10::toString(k.dtype) << " B=" << k.B << " H=" << k.H << " D=" << k.D
    << " steps=" << k.steps << (k.backward ? " bptt" : " forward") << (k.tf32 ? " tf32" : "")
    << (k.gemm_tf32 ? " gemm-tf32" : "");
  return s.str();
}

}  // namespace

std::optional<int> tuned_choice(const TuneKey& key) {
  Memory& m = memory();
  const std::lock_guard<std::mutex> lock(m.mutex);
  const auto it = m.choice.find(key);
  if (it == m.choice.end()) return std::nullopt;
  return it->second;
}

std::optional<int> tune(const TuneKey& key, const std::vector<TuneCandidate>& candidates,
                        const std::function<void()>& restore, cudaStream_t stream) {
  cudaEvent_t start, stop;
  C10_CUDA_CHECK(cudaEventCreate(&start));
  C10_CUDA_CHECK(cudaEventCreate(&stop));
  std::ostringstream line;
  line << describe(key) << ':';
  std::optional<int> best;
  float best_us = std::numeric_limits<float>::infinity();
  for (int i = 0; i < static_cast<int>(candidates.size()); ++i) {
    const TuneCandidate& c = candidates[i];
    try {
      restore();
      if (!c.run()) {  // warm-up: lazy set-up (function attributes, cuBLAS heuristics) stays out
        line << ' ' << c.name << " n/a;";
        continue;
      }
      restore();
      C10_CUDA_CHECK(cudaStreamSynchronize(stream));
      C10_CUDA_CHECK(cudaEventRecord(start, stream));
      c.run();
      C10_CUDA_CHECK(cudaEventRecord(stop, stream));
      const float us = elapsed_us(start, stop);
      line << ' ' << c.name << ' ' << us << " us;";
      if (us < best_us) {
        best_us = us;
        best = i;
      }
    } catch (const c10::Error& e) {
      (void)cudaGetLastError();  // a launch error is not sticky: clear it for the next candidate
      line << ' ' << c.name << " failed (" << e.what_without_backtrace() << ");";
    }
  }
  C10_CUDA_CHECK(cudaEventDestroy(start));
  C10_CUDA_CHECK(cudaEventDestroy(stop));
  line << " -> " << (best ? candidates[*best].name : "none");
  switches::record_tuning(line.str());
  if (best) {
    Memory& m = memory();
    const std::lock_guard<std::mutex> lock(m.mutex);
    m.choice[key] = *best;
  }
  return best;
}

}  // namespace cuda
}  // namespace fused_rnn
