// The per-step GEMM regime for float16 and bfloat16 (recurrence.h contract, any StepLayout), for
// hidden sizes beyond what one cluster holds. Per step and direction:
//   1. one cuBLAS GEMM (cublas_gemm.h): the recurrent product in fp32, from half operands, into an
//      fp32 scratch acc [B, H], never rounded;
//   2. one pointwise kernel: the activation (forward) or its derivative (BPTT) in fp32 on
//      pre_t + acc (the bias is in pre_t already, from the projection), rounded to the half type
//      once, with hy's rows (forward) or the hy gradient (BPTT) in the same pass.
// Two launches a step, both made directly (no ATen dispatch per step), against ATen's path
// (recurrence_gemm.cpp: an addmm_ that rounds pre_t + h·W_hhᵀ to the half type, then tanh_ in place,
// then a copy for hy). The BPTT's dh0 rows are one more GEMM with a half result where sequences begin.
//
// FUSED_RNN_CUDA_GEMM_GRAPH=reuse: the step loop runs from a CUDA graph, recorded on the second call
// of a kind and replayed on staged copies of each later call's tensors (staged_replay.h), so the
// host's per-step work (the launches, cuBLAS's own call overhead) is paid once per kind instead of
// per step. Not while the caller's stream is being captured (then the launches go into the caller's
// graph), nor for fewer than kGraphMinSteps steps.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAGraph.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <array>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "cuda/activation.cuh"
#include "cuda/cublas_gemm.h"
#include "cuda/gemm_steps_half.h"
#include "staged_replay.h"
#include "switches.h"

namespace fused_rnn {
namespace cuda {
namespace {

// Launch shape of the epilogues: one block row per batch row (grid.x, so any B), blocks of up to
// kThreads columns (grid.y): no division per element.
constexpr int kThreads = 256;

struct EpilogueLaunch {
  dim3 grid;
  unsigned threads;
};

EpilogueLaunch epilogue_launch(int64_t n, int64_t H) {
  const int64_t threads = std::min<int64_t>(kThreads, (H + 31) / 32 * 32);
  return {dim3(static_cast<unsigned>(n), static_cast<unsigned>((H + threads - 1) / threads)),
          static_cast<unsigned>(threads)};
}

// out rows [0, n) of one step and direction (row r = blockIdx.x), in place: out[r, j] = act(out[r, j] + acc[r, j]),
// rounded once; rows r >= ending (their pass ends at this step) also go to hy[r, j].
//   out [n, H] row stride ld (a direction's columns of [N, D*H]), acc [n, H] fp32 contiguous,
//   hy [n, H] contiguous (the direction's [B, H], first n rows)
template <typename T>
__global__ void forward_step_epilogue(T* __restrict__ out, int64_t ld, const float* __restrict__ acc,
                                      T* __restrict__ hy, int64_t H, int64_t ending, bool relu) {
  const int64_t r = blockIdx.x, j = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (j >= H) return;
  const int64_t i = r * H + j;
  const T h = static_cast<T>(act(static_cast<float>(out[r * ld + j]) + acc[i], relu));
  out[r * ld + j] = h;
  if (r >= ending) hy[i] = h;
}

// δ rows [0, n) of one step and direction (row r = blockIdx.x), in place:
// dpre[r, j] = (g + from_next) · act'(y[r, j]), with g = dpre[r, j] on entry; from_next = acc[r, j]
// (δ of the next step · W_hh, fp32) for the rows that live on (r < carried), else the hy gradient
// ghy[r, j]. act' from the output y: 1 - y² for
// tanh, y > 0 for relu (nn.RNN's threshold_backward: 0 at y = 0).
//   dpre, y [n, H] row stride ld; acc [n, H] fp32 contiguous; ghy [n, H] contiguous
template <typename T>
__global__ void backward_step_epilogue(T* __restrict__ dpre, const T* __restrict__ y, int64_t ld,
                                       const float* __restrict__ acc, const T* __restrict__ ghy, int64_t H,
                                       int64_t carried, bool relu) {
  const int64_t r = blockIdx.x, j = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (j >= H) return;
  const int64_t i = r * H + j;
  const float g = static_cast<float>(dpre[r * ld + j]) + (r < carried ? acc[i] : static_cast<float>(ghy[i]));
  const float yv = static_cast<float>(y[r * ld + j]);
  const float d = relu ? (yv > 0.f ? 1.f : 0.f) : 1.f - yv * yv;
  dpre[r * ld + j] = static_cast<T>(g * d);
}

// c = a·b on cuBLAS, which must take it (the views here are always ones it reads as they lie).
void gemm(const at::Tensor& c, const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(cublas_gemm(c, a, b, 0.0f), "fused_rnn: the half GEMM regime's cuBLAS call was refused");
}

template <typename T>
void forward(const at::Tensor& out, const at::Tensor& h0, const at::Tensor& w_hh, const StepLayout& lay, bool relu,
             const at::Tensor& hy, const at::Tensor& acc, cudaStream_t stream) {
  const int64_t D = w_hh.size(0), H = w_hh.size(2);
  std::array<at::Tensor, 2> outs, wts, h0s;  // per direction, made once, not per step
  std::array<T*, 2> hys{};
  for (int64_t d = 0; d < D; ++d) {
    outs[d] = out.narrow(1, d * H, H);  // [N, H], row stride D*H
    wts[d] = w_hh[d].t();               // [H, H]: h·W_hhᵀ
    h0s[d] = h0[d];                     // [B, H]
    hys[d] = hy[d].data_ptr<T>();       // [B, H]
  }
  for_each_pass_step(lay, D, /*backward=*/false, [&](const PassStep& p) {
    const at::Tensor &od = outs[p.d], &wt = wts[p.d];
    // acc rows: the previous step's h (continued rows), else h0, times W_hhᵀ
    if (p.linked_rows > 0) gemm(acc.narrow(0, 0, p.linked_rows), od.narrow(0, p.linked_row0, p.linked_rows), wt);
    if (p.linked_rows < p.n) {
      gemm(acc.narrow(0, p.linked_rows, p.n - p.linked_rows), h0s[p.d].narrow(0, p.linked_rows, p.n - p.linked_rows),
           wt);
    }
    const EpilogueLaunch e = epilogue_launch(p.n, H);
    forward_step_epilogue<T><<<e.grid, e.threads, 0, stream>>>(
        od.data_ptr<T>() + p.row0 * D * H, D * H, acc.const_data_ptr<float>(), hys[p.d], H, p.boundary, relu);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

template <typename T>
void backward(const at::Tensor& dpre, const at::Tensor& y, const at::Tensor& ghy, const at::Tensor& w_hh,
              const StepLayout& lay, bool relu, const at::Tensor& dh0, const at::Tensor& acc, cudaStream_t stream) {
  const int64_t D = w_hh.size(0), H = w_hh.size(2);
  std::array<at::Tensor, 2> gs, ws, dh0s;  // per direction, made once, not per step
  std::array<const T*, 2> ys{}, ghys{};
  for (int64_t d = 0; d < D; ++d) {
    gs[d] = dpre.narrow(1, d * H, H);                   // [N, H], row stride D*H
    ys[d] = y.narrow(1, d * H, H).const_data_ptr<T>();  // [N, H], row stride D*H
    ws[d] = w_hh[d];                                    // [H, H]: δ·W_hh
    ghys[d] = ghy[d].const_data_ptr<T>();               // [B, H]
    dh0s[d] = dh0[d];                                   // [B, H]
  }
  for_each_pass_step(lay, D, /*backward=*/true, [&](const PassStep& p) {
    const at::Tensor &gd = gs[p.d], &w = ws[p.d];
    // acc rows: the next step's δ times W_hh, for the rows that live on
    if (p.linked_rows > 0) gemm(acc.narrow(0, 0, p.linked_rows), gd.narrow(0, p.linked_row0, p.linked_rows), w);
    const EpilogueLaunch e = epilogue_launch(p.n, H);
    backward_step_epilogue<T><<<e.grid, e.threads, 0, stream>>>(
        gd.data_ptr<T>() + p.row0 * D * H, ys[p.d] + p.row0 * D * H, D * H, acc.const_data_ptr<float>(), ghys[p.d], H,
        p.linked_rows, relu);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t beginning = p.n - p.boundary;  // rows [boundary, n) began their pass here: dh0 = δ·W_hh
    if (beginning > 0) gemm(dh0s[p.d].narrow(0, p.boundary, beginning), gd.narrow(0, p.row0 + p.boundary, beginning), w);
  });
}

bool half_type(const at::Tensor& t) { return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16; }

// The passes as staged_replay.h's step loops: the fp32 scratch allocated in the pass (in a capture,
// from the graph's private pool, which keeps it for the replays), on the current stream.
template <typename T>
void forward_steps(const at::Tensor& out, const at::Tensor& h0, const at::Tensor& w_hh, const StepLayout& lay,
                   bool relu, const at::Tensor& hy) {
  const at::Tensor acc = at::empty({h0.size(1), w_hh.size(2)}, out.options().dtype(at::kFloat));
  forward<T>(out, h0, w_hh, lay, relu, hy, acc, c10::cuda::getCurrentCUDAStream().stream());
}

template <typename T>
void backward_steps(const at::Tensor& dpre, const at::Tensor& y, const at::Tensor& ghy, const at::Tensor& w_hh,
                    const StepLayout& lay, bool relu, const at::Tensor& dh0) {
  const at::Tensor acc = at::empty({ghy.size(1), w_hh.size(2)}, dpre.options().dtype(at::kFloat));
  backward<T>(dpre, y, ghy, w_hh, lay, relu, dh0, acc, c10::cuda::getCurrentCUDAStream().stream());
}

// Fewer steps than this run eagerly: the staging copies and the graph launch cost about what a
// few steps' launches do.
constexpr int64_t kGraphMinSteps = 4;
// Kinds recorded per process at most (each keeps a graph and a staged copy of its tensors).
constexpr size_t kMaxGraphs = 16;

// Never destroyed: a graph's destruction at exit could come after CUDA's teardown.
StagedReplay& graph_cache() {
  static StagedReplay* const cache = new StagedReplay(kMaxGraphs);
  return *cache;
}

std::mutex graph_devices_mutex;
std::set<c10::DeviceIndex>& graph_devices() {  // devices with recordings, for clear_step_graphs()
  static std::set<c10::DeviceIndex>* const devices = new std::set<c10::DeviceIndex>();
  return *devices;
}

// The stream the step loops replayed on the current stream are captured on: created for this alone,
// one per replay stream, never the pool's. A capture's cuBLAS workspace is the one ATen keeps for
// the capture stream, allocated in the first capture's private pool and dropped when any graph
// captured on that stream is destroyed. On a pool stream a torch.cuda.graph of the user's would
// share it, and destroying theirs would free memory ours still replays on; graphs replayed on two
// streams at once would share it too. Ours are destroyed only all together (clear_step_graphs).
c10::cuda::CUDAStream capture_stream(const c10::cuda::CUDAStream& replay) {
  static std::mutex mutex;
  static auto* const streams = new std::map<std::pair<c10::DeviceIndex, c10::StreamId>, cudaStream_t>();
  const std::lock_guard<std::mutex> lock(mutex);
  cudaStream_t& s = (*streams)[{replay.device_index(), replay.id()}];
  if (s == nullptr) C10_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));  // never destroyed
  return c10::cuda::getStreamFromExternal(s, replay.device_index());
}

// A step loop captured into a CUDA graph on capture_stream() (capture cannot use the default
// stream), in thread-local mode (another thread's unsafe calls do not invalidate it), replayed on
// the current stream. at::cuda::CUDAGraph gives it a private memory pool, as torch.cuda.graph does.
class CapturedSteps final : public StagedReplay::Recording {
 public:
  explicit CapturedSteps(const std::function<void()>& body) {
    const c10::cuda::CUDAStream side = capture_stream(c10::cuda::getCurrentCUDAStream());
    const c10::cuda::CUDAStreamGuard on_side(side);
    graph_.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
    try {
      body();
    } catch (...) {
      try {
        graph_.capture_end();  // leaves the stream and the allocator out of capture; the graph is dropped
      } catch (...) {
      }
      throw;
    }
    graph_.capture_end();
    const std::lock_guard<std::mutex> lock(graph_devices_mutex);
    graph_devices().insert(side.device_index());
  }
  void replay() override { graph_.replay(); }

 private:
  at::cuda::CUDAGraph graph_;
};

std::unique_ptr<StagedReplay::Recording> capture_steps(std::function<void()> body) {
  return std::make_unique<CapturedSteps>(body);
}

// The switch asks for graphs, the loop is long enough, and the stream is not being captured. Then
// the kind's context: the device and the stream (a kind's staging tensors are used in its order).
std::optional<std::vector<int64_t>> graph_context(const StepLayout& lay, const at::Device& device) {
  if (switches::gemm_graph() != switches::GemmGraph::Reuse || lay.T < kGraphMinSteps) return std::nullopt;
  const c10::cuda::CUDAStream stream = c10::cuda::getCurrentCUDAStream(device.index());
  // (the current stream of the current device: the caller's guard has made it the buffers')
  if (c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None) return std::nullopt;
  return std::vector<int64_t>{device.index(), stream.id()};
}

// A pass: by replay where graph_context allows it and its kind is recorded (or records now), else
// eagerly. replay(context) is replay_forward_steps or replay_backward_steps on the call's tensors.
template <class Replay, class Eager>
void run_pass(const StepLayout& lay, const at::Device& device, Replay&& replay, Eager&& eager) {
  StagedReplay::Outcome o = StagedReplay::Outcome::Eager;
  if (std::optional<std::vector<int64_t>> context = graph_context(lay, device)) o = replay(std::move(*context));
  if (o == StagedReplay::Outcome::Eager) {
    eager();
  } else {
    switches::record_cuda_regime("gemm_graph");
  }
}

}  // namespace

bool gemm_steps_half_forward(const at::Tensor& out, const at::Tensor& h0, const at::Tensor& w_hh,
                             const StepLayout& lay, bool relu, const at::Tensor& hy) {
  if (!half_type(out) || !cublas_available()) return false;
  const int64_t B = h0.size(1), H = w_hh.size(2);
  if (B == 0 || H == 0 || out.size(0) == 0) return true;
  const c10::cuda::CUDAGuard guard(out.device());
  AT_DISPATCH_REDUCED_FLOATING_TYPES(out.scalar_type(), "fused_rnn_gemm_steps_half_forward", [&] {
    run_pass(
        lay, out.device(),
        [&](std::vector<int64_t> context) {
          return replay_forward_steps(graph_cache(), std::move(context), out, h0, w_hh, lay, relu, hy,
                                      forward_steps<scalar_t>, capture_steps);
        },
        [&] { forward_steps<scalar_t>(out, h0, w_hh, lay, relu, hy); });
  });
  return true;
}

bool gemm_steps_half_backward(const at::Tensor& dpre, const at::Tensor& y, const at::Tensor& ghy,
                              const at::Tensor& w_hh, const StepLayout& lay, bool relu, const at::Tensor& dh0) {
  if (!half_type(dpre) || !cublas_available()) return false;
  const int64_t B = ghy.size(1), H = w_hh.size(2);
  if (B == 0 || H == 0 || dpre.size(0) == 0) return true;
  const c10::cuda::CUDAGuard guard(dpre.device());
  AT_DISPATCH_REDUCED_FLOATING_TYPES(dpre.scalar_type(), "fused_rnn_gemm_steps_half_backward", [&] {
    run_pass(
        lay, dpre.device(),
        [&](std::vector<int64_t> context) {
          return replay_backward_steps(graph_cache(), std::move(context), dpre, y, ghy, w_hh, lay, relu, dh0,
                                       backward_steps<scalar_t>, capture_steps);
        },
        [&] { backward_steps<scalar_t>(dpre, y, ghy, w_hh, lay, relu, dh0); });
  });
  return true;
}

int64_t clear_step_graphs() {
  // Under the cache's lock (no call can replay meanwhile), which a recording also holds when it
  // takes graph_devices_mutex: the same lock order.
  return static_cast<int64_t>(graph_cache().clear([] {
    const std::lock_guard<std::mutex> lock(graph_devices_mutex);
    for (const c10::DeviceIndex d : graph_devices()) {  // no replay may be pending when a graph goes
      const c10::cuda::CUDAGuard guard(d);
      C10_CUDA_CHECK(cudaDeviceSynchronize());
    }
    graph_devices().clear();
  }));
}

}  // namespace cuda
}  // namespace fused_rnn
