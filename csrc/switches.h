// Run-time switches of the kernels (README "Build switches"): read once from the environment when
// the library loads, and settable from Python (fused_rnn._C.set_switch) so that tests need not
// write os.environ, which a kernel reading getenv on every call would race with.
//   FUSED_RNN_CPU_REGIME   fused (default) | gemm: the CPU runs the device-agnostic per-step GEMM path
//   FUSED_RNN_CPU_ISA      auto (default) | avx2 | baseline: which build of the CPU task loops runs
//   FUSED_RNN_CUDA_REGIME  auto (default) | grid | step | gemm | resident | tuned: forces a CUDA
//                          regime, or (tuned) times the candidates on the first call of each kind and
//                          takes the fastest (resident, tuned: opt-in until a GPU run has validated them)
//   FUSED_RNN_CUDA_CLUSTER_EXCHANGE barrier (default) | mbarrier: how the CTAs of a resident cluster
//                          kernel (FFMA, or tensor cores) hand each other a step's h: stores then a
//                          cluster barrier, or st.async stores completing on mbarriers (cluster.cuh;
//                          opt-in until a GPU run has measured both)
//   FUSED_RNN_CUDA_GEMM_GRAPH off (default) | reuse: reuse records the float16/bfloat16 per-step GEMM
//                          regime's step loop into a CUDA graph on the second call of a kind and
//                          replays it on staged copies of each later call's tensors
//                          (gemm_steps_half.cu, staged_replay.h; opt-in until a GPU run has validated it)
//   FUSED_RNN_CUDA_GEMM_TF32 matmul (default) | rnn: which flags let the CUDA stack's float32 GEMMs
//                          (projections, gradients, the per-step GEMM regime) use TF32. matmul: both
//                          cuDNN's RNN flag and torch.backends.cuda.matmul's; rnn: the RNN flag alone,
//                          nn.RNN's rule (cuda/cublas_gemm.cu; opt-in until a GPU run has validated it)
// An unknown value in the environment means the default; set() refuses it.
#pragma once

#include <string>
#include <vector>

namespace fused_rnn::switches {

enum class CpuRegime { Fused, Gemm };
enum class CpuIsa { Auto, Avx2, Baseline };
enum class CudaRegime { Auto, Grid, Step, Gemm, Resident, Tuned };
enum class CudaGemmTf32 { Matmul, Rnn };
enum class ClusterExchange { Barrier, Mbarrier };
enum class GemmGraph { Off, Reuse };

CpuRegime cpu_regime();
CpuIsa cpu_isa();
CudaRegime cuda_regime();
CudaGemmTf32 cuda_gemm_tf32();
ClusterExchange cluster_exchange();
GemmGraph gemm_graph();

// name: one of the variables above; value: one of its values. Throws c10::ValueError otherwise.
void set(const std::string& name, const std::string& value);
std::string get(const std::string& name);

// What ran, for tests and debugging: the regime of the last CUDA recurrence this thread launched
// ("single", "grid", "step", "gemm", "gemm_graph", "resident", "resident_cluster",
// "resident_cluster_mbarrier", "resident_mma", "resident_mma_mbarrier", "resident_tf32" or
// "resident_tf32_mbarrier"; "" before any).
void record_cuda_regime(const char* regime);
const char* last_cuda_regime();

// FUSED_RNN_CUDA_REGIME=tuned: one line per choice made in this process (what was timed, the times,
// the choice), for fused_rnn._C.tuning_log() and the GPU check's report.
void record_tuning(std::string line);
std::vector<std::string> tuning_log();

}  // namespace fused_rnn::switches
