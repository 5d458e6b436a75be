#include "switches.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string_view>
#include <vector>

namespace fused_rnn::switches {
namespace {

// One switch: its variable, its values (index = the enum's value, the first is the default), and
// the current choice, atomic so that a set() from one thread and a kernel reading it on another
// never race.
struct Switch {
  const char* name;
  std::vector<std::string_view> values;
  std::atomic<int> choice{0};

  Switch(const char* n, std::vector<std::string_view> v) : name(n), values(std::move(v)) {
    const char* env = std::getenv(name);
    const int i = env == nullptr ? -1 : index_of(env);
    if (i >= 0) choice = i;
  }

  // The index of value among values, or -1.
  int index_of(std::string_view value) const {
    for (size_t i = 0; i < values.size(); ++i)
      if (values[i] == value) return static_cast<int>(i);
    return -1;
  }
};

Switch& cpu_regime_switch() {
  static Switch s("FUSED_RNN_CPU_REGIME", {"fused", "gemm"});
  return s;
}
Switch& cpu_isa_switch() {
  static Switch s("FUSED_RNN_CPU_ISA", {"auto", "avx2", "baseline"});
  return s;
}
Switch& cuda_regime_switch() {
  static Switch s("FUSED_RNN_CUDA_REGIME", {"auto", "grid", "step", "gemm", "resident", "tuned"});
  return s;
}

Switch& cuda_gemm_tf32_switch() {
  static Switch s("FUSED_RNN_CUDA_GEMM_TF32", {"matmul", "rnn"});
  return s;
}

Switch& cluster_exchange_switch() {
  static Switch s("FUSED_RNN_CUDA_CLUSTER_EXCHANGE", {"barrier", "mbarrier"});
  return s;
}

Switch& gemm_graph_switch() {
  static Switch s("FUSED_RNN_CUDA_GEMM_GRAPH", {"off", "reuse"});
  return s;
}

// Read at load, not at the first kernel call: the environment of the process start is what counts.
const bool kReadAtLoad = (cpu_regime_switch(), cpu_isa_switch(), cuda_regime_switch(), cuda_gemm_tf32_switch(),
                          cluster_exchange_switch(), gemm_graph_switch(), true);

Switch& by_name(const std::string& name) {
  for (Switch* s : {&cpu_regime_switch(), &cpu_isa_switch(), &cuda_regime_switch(), &cuda_gemm_tf32_switch(),
                    &cluster_exchange_switch(), &gemm_graph_switch()})
    if (name == s->name) return *s;
  TORCH_CHECK_VALUE(false, "unknown fused_rnn switch '", name,
                    "': expected FUSED_RNN_CPU_REGIME, FUSED_RNN_CPU_ISA, FUSED_RNN_CUDA_REGIME, "
                    "FUSED_RNN_CUDA_GEMM_TF32, FUSED_RNN_CUDA_CLUSTER_EXCHANGE or FUSED_RNN_CUDA_GEMM_GRAPH");
}

}  // namespace

CpuRegime cpu_regime() { return static_cast<CpuRegime>(cpu_regime_switch().choice.load(std::memory_order_relaxed)); }
CpuIsa cpu_isa() { return static_cast<CpuIsa>(cpu_isa_switch().choice.load(std::memory_order_relaxed)); }
CudaRegime cuda_regime() {
  return static_cast<CudaRegime>(cuda_regime_switch().choice.load(std::memory_order_relaxed));
}
CudaGemmTf32 cuda_gemm_tf32() {
  return static_cast<CudaGemmTf32>(cuda_gemm_tf32_switch().choice.load(std::memory_order_relaxed));
}
ClusterExchange cluster_exchange() {
  return static_cast<ClusterExchange>(cluster_exchange_switch().choice.load(std::memory_order_relaxed));
}
GemmGraph gemm_graph() { return static_cast<GemmGraph>(gemm_graph_switch().choice.load(std::memory_order_relaxed)); }

void set(const std::string& name, const std::string& value) {
  Switch& s = by_name(name);
  const int i = s.index_of(value);
  if (i >= 0) {
    s.choice = i;
    return;
  }
  std::string allowed;
  for (const auto& v : s.values) allowed += (allowed.empty() ? "" : ", ") + std::string(v);
  TORCH_CHECK_VALUE(false, name, " must be one of ", allowed, ", got '", value, "'");
}

std::string get(const std::string& name) {
  const Switch& s = by_name(name);
  return std::string(s.values[s.choice.load()]);
}

namespace {
thread_local const char* last_regime = "";
}  // namespace

void record_cuda_regime(const char* regime) { last_regime = regime; }
const char* last_cuda_regime() { return last_regime; }

namespace {
std::mutex tuning_mutex;
std::vector<std::string>& tuning_lines() {
  static std::vector<std::string> lines;
  return lines;
}
}  // namespace

void record_tuning(std::string line) {
  const std::lock_guard<std::mutex> lock(tuning_mutex);
  tuning_lines().push_back(std::move(line));
}

std::vector<std::string> tuning_log() {
  const std::lock_guard<std::mutex> lock(tuning_mutex);
  return tuning_lines();
}

}  // namespace fused_rnn::switches
