// The Python module fused_rnn._C. Importing it loads this library, which runs the op registrations
// (ops.cpp, autograd.cpp, cuda/). It also offers:
//   with_cuda()       whether the CUDA kernels were compiled in
//   cublas_found()    whether the CUDA build's direct cuBLAS calls found their entry point
//   clear_step_graphs()  drops the half GEMM regime's recorded CUDA graphs (FUSED_RNN_CUDA_GEMM_GRAPH)
//   parallel_threads_used()  how many threads one at::parallel_for in this library spreads over:
//                     a build check (compiled without -fopenmp, parallel_for runs on the caller only)
//   rnn_forward(...)  the rnn_forward op, same arguments and results as torch.ops.fused_rnn.rnn_forward
//                     (and hx may be None for zeros, with unpacked [T, B, I] input),
//                     called through the dispatcher's typed handle. torch.ops matches the arguments
//                     against the schema in Python and boxes them (as long as a whole tiny RNN's
//                     forward takes); this entry parses nine
//                     positional arguments by hand. It dispatches exactly like the op (autograd,
//                     Python dispatch modes included); fused_rnn/ops.py uses it only where no
//                     __torch_function__ override could want to see the call.
//   set_switch / get_switch, cpu_isa_in_use(), last_cuda_regime(), tuning_log(): the run-time
//                     switches (switches.h) and what they led to
#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pythoncapi_compat.h>

#include <atomic>
#include <optional>
#include <string>
#include <vector>

#include "cpu/recurrence_cpu.h"
#ifdef FUSED_RNN_WITH_CUDA
#include "cuda/cublas_gemm.h"
#include "cuda/gemm_steps_half.h"
#endif
#include "op_handles.h"
#include "switches.h"


namespace {

PyObject* with_cuda(PyObject*, PyObject*) {
#ifdef FUSED_RNN_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

// Whether the direct cuBLAS calls (cuda/cublas_gemm.cu) found cublasGemmEx in the libcublas torch
// loaded; False in a build without CUDA. Needs no GPU: a CUDA build of torch loads libcublas at import.
PyObject* cublas_found(PyObject*, PyObject*) {
#ifdef FUSED_RNN_WITH_CUDA
  if (fused_rnn::cuda::cublas_available()) Py_RETURN_TRUE;
#endif
  Py_RETURN_FALSE;
}

// FUSED_RNN_CUDA_GEMM_GRAPH=reuse keeps up to 16 recorded step loops with staged copies of their
// tensors; this frees them (after synchronising their devices) and returns how many; 0 without CUDA.
PyObject* clear_step_graphs(PyObject*, PyObject*) {
  HANDLE_TH_ERRORS
  int64_t dropped = 0;
#ifdef FUSED_RNN_WITH_CUDA
  dropped = fused_rnn::cuda::clear_step_graphs();
#endif
  return PyLong_FromLongLong(dropped);
  END_HANDLE_TH_ERRORS
}

PyObject* parallel_threads_used(PyObject*, PyObject*) {
  HANDLE_TH_ERRORS
  const int n = at::get_num_threads();
  std::vector<std::atomic<int>> seen(n);
  {
    pybind11::gil_scoped_release no_gil;
    at::parallel_for(0, 4 * n, 1, [&](int64_t, int64_t) {
      const int tid = at::get_thread_num();
      if (tid >= 0 && tid < n) seen[tid].store(1);
    });
  }
  long used = 0;
  for (const auto& s : seen) used += s.load();
  return PyLong_FromLong(used);
  END_HANDLE_TH_ERRORS
}

const at::Tensor& tensor_arg(PyObject* o, const char* name) {
  TORCH_CHECK_TYPE(THPVariable_Check(o), "fused_rnn._C.rnn_forward: ", name, " must be a Tensor, got ",
                   Py_TYPE(o)->tp_name);
  return THPVariable_Unpack(o);
}

std::optional<at::Tensor> optional_tensor_arg(PyObject* o, const char* name) {
  if (o == Py_None) return std::nullopt;
  return tensor_arg(o, name);
}

bool bool_arg(PyObject* o, const char* name) {
  TORCH_CHECK_TYPE(PyBool_Check(o), "fused_rnn._C.rnn_forward: ", name, " must be a bool, got ", Py_TYPE(o)->tp_name);
  return o == Py_True;
}

// rnn_forward(input, hx, weights, batch_sizes, dropout_mask, num_layers, bidirectional, relu, has_biases)
PyObject* rnn_forward(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  TORCH_CHECK_TYPE(nargs == 9, "fused_rnn._C.rnn_forward takes 9 positional arguments, got ", nargs);
  const at::Tensor& input = tensor_arg(args[0], "input");
  PyObject* seq = args[2];
  TORCH_CHECK_TYPE(PyList_Check(seq) || PyTuple_Check(seq), "fused_rnn._C.rnn_forward: weights must be a list");
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  PyObject** items = PySequence_Fast_ITEMS(seq);
  std::vector<at::Tensor> weights;
  weights.reserve(n);
  for (Py_ssize_t i = 0; i < n; ++i) weights.push_back(tensor_arg(items[i], "weights[i]"));
  const std::optional<at::Tensor> batch_sizes = optional_tensor_arg(args[3], "batch_sizes");
  const std::optional<at::Tensor> dropout_mask = optional_tensor_arg(args[4], "dropout_mask");
  TORCH_CHECK_TYPE(PyLong_Check(args[5]) && !PyBool_Check(args[5]), "fused_rnn._C.rnn_forward: num_layers must be an int");
  const int64_t num_layers = PyLong_AsLongLong(args[5]);
  if (num_layers == -1 && PyErr_Occurred()) return nullptr;
  const bool bidirectional = bool_arg(args[6], "bidirectional");
  const bool relu = bool_arg(args[7], "relu");
  const bool has_biases = bool_arg(args[8], "has_biases");
  // hx None: nn.RNN's zeros [L*D, B, H], H from W_hh [H, H] (created here: cheaper than in Python).
  at::Tensor hx_zeros;
  if (args[1] == Py_None) {
    TORCH_CHECK(!batch_sizes, "fused_rnn._C.rnn_forward: hx=None needs unpacked input");
    TORCH_CHECK(input.dim() == 3, "input must have 3 dimensions [T, B, I], got ", input.dim());
    TORCH_CHECK(weights.size() >= 2 && weights[1].dim() == 2, "fused_rnn._C.rnn_forward: weights[1] must be W_hh [H, H]");
    hx_zeros = at::zeros({num_layers * (bidirectional ? 2 : 1), input.size(1), weights[1].size(0)}, input.options());
  }
  const at::Tensor& hx = args[1] == Py_None ? hx_zeros : tensor_arg(args[1], "hx");

  std::tuple<at::Tensor, at::Tensor, at::Tensor> r;
  {
    pybind11::gil_scoped_release no_gil;
    r = fused_rnn::rnn_forward_op().call(input, hx, weights, batch_sizes, dropout_mask, num_layers, bidirectional,
                                         relu, has_biases);
  }
  PyObject* output = THPVariable_Wrap(std::move(std::get<0>(r)));
  PyObject* hy = THPVariable_Wrap(std::move(std::get<1>(r)));
  PyObject* reserve = THPVariable_Wrap(std::move(std::get<2>(r)));
  PyObject* out = output && hy && reserve ? PyTuple_Pack(3, output, hy, reserve) : nullptr;
  Py_XDECREF(output);
  Py_XDECREF(hy);
  Py_XDECREF(reserve);
  return out;
  END_HANDLE_TH_ERRORS
}

// set_switch(name, value) / get_switch(name): the run-time switches of switches.h.
PyObject* set_switch(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  const char* name = nullptr;
  const char* value = nullptr;
  if (!PyArg_ParseTuple(args, "ss", &name, &value)) return nullptr;
  fused_rnn::switches::set(name, value);
  Py_RETURN_NONE;
  END_HANDLE_TH_ERRORS
}

PyObject* get_switch(PyObject*, PyObject* args) {
  HANDLE_TH_ERRORS
  const char* name = nullptr;
  if (!PyArg_ParseTuple(args, "s", &name)) return nullptr;
  return PyUnicode_FromString(fused_rnn::switches::get(name).c_str());
  END_HANDLE_TH_ERRORS
}

PyObject* cpu_isa_in_use(PyObject*, PyObject*) { return PyUnicode_FromString(fused_rnn::cpu_isa_in_use()); }

PyObject* last_cuda_regime(PyObject*, PyObject*) {
  return PyUnicode_FromString(fused_rnn::switches::last_cuda_regime());
}

PyObject* tuning_log(PyObject*, PyObject*) {
  HANDLE_TH_ERRORS
  const std::vector<std::string> lines = fused_rnn::switches::tuning_log();
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(lines.size()));
  if (list == nullptr) return nullptr;
  for (size_t i = 0; i < lines.size(); ++i) {
    PyObject* s = PyUnicode_FromString(lines[i].c_str());
    if (s == nullptr) {
      Py_DECREF(list);
      return nullptr;
    }
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), s);
  }
  return list;
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"with_cuda", with_cuda, METH_NOARGS, "True if the CUDA kernels were compiled in."},
    {"cublas_found", cublas_found, METH_NOARGS,
     "True if the direct cuBLAS calls of the CUDA build found cublasGemmEx in the process (no GPU needed)."},
    {"clear_step_graphs", clear_step_graphs, METH_NOARGS,
     "Frees the CUDA graphs FUSED_RNN_CUDA_GEMM_GRAPH=reuse recorded and their staging tensors, after "
     "synchronising their devices; returns how many it freed (0 in a build without CUDA)."},
    {"parallel_threads_used", parallel_threads_used, METH_NOARGS,
     "Threads one at::parallel_for in this library runs on (1 if built without OpenMP)."},
    {"rnn_forward", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(rnn_forward)), METH_FASTCALL,
     "torch.ops.fused_rnn.rnn_forward without torch.ops' argument parsing (see python_module.cpp)."},
    {"set_switch", set_switch, METH_VARARGS,
     "set_switch(name, value): sets a run-time switch (FUSED_RNN_CPU_REGIME, FUSED_RNN_CPU_ISA, "
     "FUSED_RNN_CUDA_REGIME, FUSED_RNN_CUDA_GEMM_TF32, FUSED_RNN_CUDA_CLUSTER_EXCHANGE, "
     "FUSED_RNN_CUDA_GEMM_GRAPH) for this process; the environment is read once, at import."},
    {"get_switch", get_switch, METH_VARARGS, "get_switch(name): the current value of a run-time switch."},
    {"cpu_isa_in_use", cpu_isa_in_use, METH_NOARGS,
     "'avx2' or 'baseline': the build of the CPU task loops that runs now."},
    {"last_cuda_regime", last_cuda_regime, METH_NOARGS,
     "The regime of the last CUDA recurrence launched by this thread ('single', 'grid', 'step', 'gemm', 'gemm_graph', "
     "'resident', 'resident_cluster', 'resident_cluster_mbarrier', 'resident_mma', "
     "'resident_mma_mbarrier', 'resident_tf32', 'resident_tf32_mbarrier'; '' before any)."},
    {"tuning_log", tuning_log, METH_NOARGS,
     "FUSED_RNN_CUDA_REGIME=tuned: one line per regime choice made in this process (the kind of call, each "
     "candidate's trial time, the choice)."},
    {nullptr, nullptr, 0, nullptr}};
PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods, nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
