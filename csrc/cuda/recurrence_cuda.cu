// CUDA recurrence entry points (recurrence.h contract) and the CUDA registration of the ops.
// The persistent kernel lives in recurrence_kernel.cuh and its launch planner in
// recurrence_launch.cuh; this file picks the route of each layer (run_layer), fills the params
// struct once per call, dispatches on dtype and instantiates the float/double launchers.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "column_major_gemm.h"
#include "cuda/cublas_gemm.h"
#include "cuda/device_info.h"
#include "cuda/gemm_steps_half.h"
#include "cuda/recurrence_cuda.h"
#include "cuda/recurrence_launch.cuh"
#include "cuda/regime_tuner.h"
#include "cuda/resident_layout.h"
#include "cuda/upload_by_value.h"
#include "recurrence_gemm.h"
#include "rnn_stack.h"
#include "switches.h"

namespace fused_rnn {
namespace cuda {
template void launch_recurrence<float>(const RecParams&, at::Device, cudaStream_t);
template void launch_recurrence<double>(const RecParams&, at::Device, cudaStream_t);
// Instantiated in recurrence_cuda_half.cu: not again here, where the dtype dispatch below calls them.
extern template void launch_recurrence<c10::Half>(const RecParams&, at::Device, cudaStream_t);
extern template void launch_recurrence<c10::BFloat16>(const RecParams&, at::Device, cudaStream_t);
}  // namespace cuda

namespace {

// nn.RNN's TF32 rule for float32 on CUDA: cuDNN's RNN flag (torch.backends.cudnn.rnn.fp32_precision,
// which the legacy torch.backends.cudnn.allow_tf32 sets together with the convolution flag). Asked
// per operator: the operator-less query throws once a user sets the RNN and convolution flags apart,
// where nn.RNN runs on.
bool rnn_allows_tf32() { return at::globalContext().allowTF32CuDNN(at::Float32Op::RNN); }

void check_buffers(std::initializer_list<const at::Tensor*> ts, const at::Tensor& ref) {
  for (const at::Tensor* t : ts) {
    if (!t->defined()) continue;
    TORCH_CHECK(t->is_contiguous(), "fused_rnn: internal buffers must be contiguous");
    TORCH_CHECK(t->device() == ref.device() && t->scalar_type() == ref.scalar_type(),
                "fused_rnn: recurrence buffers must share device and dtype");
  }
}

// The SM-resident regimes (opt-in, FUSED_RNN_CUDA_REGIME=resident, until a GPU run validates them):
// the tensor-core kernel for float16 and bfloat16, and for float32 where TF32 is allowed
// (torch.backends.cudnn.allow_tf32, nn.RNN's rule); the FFMA kernel for float32 otherwise. False
// (nothing launched) where they do not apply.
bool launch_resident_regime(const cuda::RecParams& p, at::ScalarType st, cudaStream_t stream) {
  const cuda::DeviceAttributes dev = cuda::device_info();
  const bool clusters = dev.major >= 9;
  const bool tf32 = st == at::kFloat && rnn_allows_tf32();
  if ((st == at::kHalf || st == at::kBFloat16 || tf32) && cuda::launch_resident_mma(p, st, clusters, stream)) {
    return true;
  }
  // float32 beyond the TF32 kernel's sizes, or with TF32 off: the FFMA kernel (IEEE fp32 is
  // allowed wherever TF32 is), in clusters on sm_90.
  return st == at::kFloat && cuda::launch_resident(p, dev.sms, clusters, stream);
}

// RecurrenceKernels::gemm: float32 on TF32 through cuBLAS directly (cublas_gemm.cu) where
// FUSED_RNN_CUDA_GEMM_TF32=rnn asks for nn.RNN's rule, cuDNN's RNN flag allows TF32 and
// torch.backends.cuda.matmul does not (where it does, ATen's own GEMM is TF32 already). Every other
// product is left to ATen.
bool gemm_cuda(const at::Tensor& c, const at::Tensor& a, const at::Tensor& b, const at::Tensor& addend) {
  if (c.scalar_type() != at::kFloat || switches::cuda_gemm_tf32() != switches::CudaGemmTf32::Rnn ||
      !rnn_allows_tf32() || at::globalContext().allowTF32CuBLAS() || !column_major_gemm(c, a, b)) {
    return false;
  }
  // A bias goes into c first, for β = 1. Should cuBLAS's entry point be missing after all (false),
  // ATen's addmm_out still writes all of c = bias + a·b, whatever c holds.
  if (addend.defined() && !addend.is_same(c)) c.copy_(addend.expand_as(c));
  return cuda::cublas_gemm(c, a, b, addend.defined() ? 1.0f : 0.0f);
}

// The per-step GEMM recurrence instead of the persistent kernel: float32 and float64 steps of at
// least kGemmRecurrenceMinWork multiply-adds (B·H²), where cuBLAS's tiled GEMM is faster than the
// kernel's per-CTA mat-vec (recurrence_gemm.cpp). The FUSED_RNN_CUDA_REGIME switch: gemm forces it
// for every dtype, grid or step rule it out, resident rules it out where a resident kernel applies.
// float16/bfloat16 take it only when forced (opt-in until a GPU run measures where it wins), in
// gemm_steps_half.cu: fp32 products and activations, each value rounded to the half type once.
bool use_gemm_recurrence(const at::Tensor& buf, int64_t B, int64_t H) {
  const at::ScalarType st = buf.scalar_type();
  const bool half = st == at::kHalf || st == at::kBFloat16;
  if (st != at::kFloat && st != at::kDouble && !half) return false;
  switch (switches::cuda_regime()) {
    case switches::CudaRegime::Gemm: return true;
    case switches::CudaRegime::Grid:
    case switches::CudaRegime::Step: return false;
    case switches::CudaRegime::Resident:
      if (half || (st == at::kFloat && H <= resident::kMaxHidden)) return false;
      return B * H * H >= kGemmRecurrenceMinWork;
    default: return !half && B * H * H >= kGemmRecurrenceMinWork;
  }
}

// One layer's recurrence, as recurrence.h has it:
//   buf [N, D*H] (out, or dpre in BPTT), y [N, D*H] (BPTT; else undefined),
//   h_in [D, B, H] (h0, or ghy), h_out [D, B, H] (hy, or dh0), w_hh [D, H, H].
struct LayerCall {
  const at::Tensor& buf;
  const at::Tensor& y;
  const at::Tensor& h_in;
  const at::Tensor& w_hh;
  const StepLayout& lay;
  bool relu;
  const at::Tensor& h_out;
  bool backward;
};

// The ways to run a layer: the persistent kernels (recurrence_launch.cuh picks single, grid or
// step), the SM-resident kernels, or one GEMM and one pointwise pass per step.
enum class Route { Kernel, Resident, Gemm };

cuda::RecParams rec_params(const LayerCall& c) {
  check_buffers({&c.buf, &c.y, &c.h_in, &c.w_hh, &c.h_out}, c.buf);
  TORCH_CHECK(c.lay.uniform() || (c.lay.table.defined() && c.lay.table.device() == c.buf.device()),
              "fused_rnn: internal error: a packed layout must carry its step table on the buffers' device");
  return cuda::RecParams{c.buf.data_ptr(), c.y.defined() ? c.y.data_ptr() : nullptr, c.h_in.data_ptr(),
                         c.h_out.data_ptr(), c.w_hh.data_ptr(),
                         c.lay.uniform() ? nullptr : c.lay.table.const_data_ptr<int64_t>(), nullptr, c.lay.T,
                         c.h_in.size(1), c.w_hh.size(2), c.w_hh.size(0), c.relu, c.backward};
}

// Runs the call by route r and returns true, or returns false, launching nothing, where r does not
// apply (Resident outside its kernels' sizes, dtypes and layouts).
bool run_route(Route r, const LayerCall& c) {
  if (c.h_in.size(1) == 0 || c.w_hh.size(2) == 0 || c.buf.size(0) == 0) return true;  // B, H or N is 0
  const c10::cuda::CUDAGuard guard(c.buf.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  switch (r) {
    case Route::Gemm:
      switches::record_cuda_regime("gemm");  // or gemm_graph, recorded by the half regime's replay
      if (c.backward) {
        if (!cuda::gemm_steps_half_backward(c.buf, c.y, c.h_in, c.w_hh, c.lay, c.relu, c.h_out)) {
          recurrence_backward_gemm(c.buf, c.y, c.h_in, c.w_hh, c.lay, c.relu, c.h_out, gemm_cuda);
        }
      } else if (!cuda::gemm_steps_half_forward(c.buf, c.h_in, c.w_hh, c.lay, c.relu, c.h_out)) {
        recurrence_forward_gemm(c.buf, c.h_in, c.w_hh, c.lay, c.relu, c.h_out, gemm_cuda);
      }
      return true;
    case Route::Resident:
      return launch_resident_regime(rec_params(c), c.buf.scalar_type(), stream);
    case Route::Kernel:
      break;
  }
  const cuda::RecParams p = rec_params(c);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.buf.scalar_type(), "fused_rnn_recurrence_cuda", [&] {
    cuda::launch_recurrence<scalar_t>(p, c.buf.device(), stream);
  });
  return true;
}

// The route the switch gives (FUSED_RNN_CUDA_REGIME other than tuned: forced, or the fixed rule).
Route switch_route(const LayerCall& c) {
  if (use_gemm_recurrence(c.buf, c.h_in.size(1), c.w_hh.size(2))) return Route::Gemm;
  return switches::cuda_regime() == switches::CudaRegime::Resident ? Route::Resident : Route::Kernel;
}

// FUSED_RNN_CUDA_REGIME=tuned: the measured fastest route for this kind of call (regime_tuner.h),
// tuning it on the first such call: each route runs min(T, kTuneSteps) steps on copies of the
// call's first steps. nullopt (the fixed rule decides) for packed input, or while the stream is
// being captured into a CUDA graph (a trial must synchronise).
std::optional<Route> tuned_route(const LayerCall& c) {
  if (!c.lay.uniform()) return std::nullopt;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(c.buf.device().index()).stream();
  // (the current stream of the current device: the op's guard has made it the buffers')
  if (c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None) return std::nullopt;
  static constexpr Route kRoutes[] = {Route::Kernel, Route::Resident, Route::Gemm};
  const at::ScalarType st = c.buf.scalar_type();
  const int64_t B = c.h_in.size(1), steps = std::min(c.lay.T, cuda::kTuneSteps);
  const cuda::TuneKey key{c.buf.device().index(), st, B, c.w_hh.size(2), c.w_hh.size(0), steps, c.backward,
                          st == at::kFloat && rnn_allows_tf32(),
                          st == at::kFloat && at::globalContext().allowTF32CuBLAS()};
  if (const std::optional<int> i = cuda::tuned_choice(key)) return kRoutes[*i];

  const int64_t rows = steps * B;  // the trial: the call's first steps, on copies
  const at::Tensor source = c.buf.narrow(0, 0, rows);
  const at::Tensor buf = source.clone(), h_out = at::empty_like(c.h_out);
  const at::Tensor y = c.y.defined() ? c.y.narrow(0, 0, rows).clone() : at::Tensor();
  const StepLayout lay(at::Tensor(), rows, B);
  const LayerCall trial{buf, y, c.h_in, c.w_hh, lay, c.relu, h_out, c.backward};
  std::vector<cuda::TuneCandidate> candidates;
  for (const Route r : kRoutes) {
    candidates.push_back({r == Route::Kernel ? "kernel" : r == Route::Resident ? "resident" : "gemm",
                          [&trial, r] { return run_route(r, trial); }});
  }
  const std::optional<int> best = cuda::tune(key, candidates, [&] { buf.copy_(source); }, stream);
  if (!best) return std::nullopt;
  return kRoutes[*best];
}

void run_layer(const LayerCall& c) {
  Route r = switch_route(c);
  if (switches::cuda_regime() == switches::CudaRegime::Tuned) r = tuned_route(c).value_or(r);
  if (!run_route(r, c)) run_route(Route::Kernel, c);  // Resident where its kernels do not apply
}

}  // namespace

void recurrence_forward_cuda(const at::Tensor& out, const at::Tensor& h0, const at::Tensor& w_hh,
                             const StepLayout& lay, bool relu, const at::Tensor& hy) {
  run_layer(LayerCall{out, at::Tensor(), h0, w_hh, lay, relu, hy, /*backward=*/false});
}

void recurrence_backward_cuda(const at::Tensor& dpre, const at::Tensor& y, const at::Tensor& ghy,
                              const at::Tensor& w_hh, const StepLayout& lay, bool relu, const at::Tensor& dh0) {
  run_layer(LayerCall{dpre, y, ghy, w_hh, lay, relu, dh0, /*backward=*/true});
}

namespace {

const RecurrenceKernels kCudaKernels{recurrence_forward_cuda, recurrence_backward_cuda, nullptr, nullptr,
                                     cuda::upload_by_value, gemm_cuda};

// float32 follows cuDNN's RNN TF32 flag (rnn_allows_tf32), the switch nn.RNN obeys: where it forbids TF32,
// the stack's cuBLAS GEMMs are held to IEEE fp32 as well (a thread-local guard; no global state is
// touched). The recurrence kernels always use fp32 FMA.
struct CudnnTf32Rule {
  std::optional<at::NoTF32Guard> no_tf32;
  CudnnTf32Rule() {
    if (!rnn_allows_tf32()) no_tf32.emplace();
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_forward_cuda(
    const at::Tensor& input, const at::Tensor& hx, at::TensorList weights, const std::optional<at::Tensor>& batch_sizes,
    const std::optional<at::Tensor>& dropout_mask, int64_t num_layers, bool bidirectional, bool relu, bool has_biases) {
  const CheckedRnnArgs checked(input, hx, weights, batch_sizes, dropout_mask, num_layers, bidirectional, relu,
                                has_biases);
  const RnnArgs& a = checked.args;
  const c10::cuda::CUDAGuard guard(input.device());
  const CudnnTf32Rule tf32;
  return rnn_forward_stack(a, kCudaKernels);
}

std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> rnn_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& input, const at::Tensor& hx,
    at::TensorList weights, const std::optional<at::Tensor>& batch_sizes, const std::optional<at::Tensor>& dropout_mask,
    const at::Tensor& output, const at::Tensor& reserve, int64_t num_layers, bool bidirectional, bool relu,
    bool has_biases) {
  const CheckedRnnArgs checked(input, hx, weights, batch_sizes, dropout_mask, num_layers, bidirectional, relu,
                                has_biases);
  const RnnArgs& a = checked.args;
  check_rnn_backward_args(a, grad_output, grad_hy, output, reserve);
  const c10::cuda::CUDAGuard guard(input.device());
  const CudnnTf32Rule tf32;
  return rnn_backward_stack(a, grad_output, grad_hy, output, reserve, kCudaKernels);
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CUDA, m) {
  m.impl("rnn_forward", &rnn_forward_cuda);
  m.impl("rnn_backward", &rnn_backward_cuda);
}

}  // namespace fused_rnn
