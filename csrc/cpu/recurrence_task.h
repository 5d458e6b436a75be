// One task of the CPU recurrence (recurrence_cpu.cpp): one direction of a block of batch rows,
// run over the whole time loop on one thread. The task bodies are compiled once per instruction
// set (recurrence_task_body.h); this header is what the driver and the builds share.
#pragma once

#include <cstdint>

#include "recurrence.h"

namespace fused_rnn::cpu {

// C[m, H] += A[m, H] · op(W_hh) for one direction: op = ᵀ in the forward, identity in BPTT.
template <typename T>
struct StepGemm {
  const T* w = nullptr;        // [H, H] row-major W_hh
  const T* panels = nullptr;   // packed op(W_hh) for the micro-kernel, or null when using BLAS
  int64_t H = 0;
  bool transpose = false;
  bool blas = false;
};

// One task: direction `reverse` of rows [b0, b1).
template <typename T>
struct Task {
  const StepLayout* lay;
  StepGemm<T> gemm;
  T* buf;           // out (forward) or dpre (backward), already offset to this direction's columns
  int64_t ld;       // D*H
  const T* y;       // backward only: forward output, same offset and ld as buf
  const T* h_in;    // forward: h0 [B, H]; backward: ghy [B, H]
  T* h_out;         // forward: hy [B, H]; backward: dh0 [B, H]
  int64_t H;
  bool reverse;
  bool relu;
  int64_t b0, b1;
};

// The task bodies (recurrence_task_body.h) of each build, for T = float and double.
namespace baseline {
template <typename T>
void forward_task(const Task<T>& k);
template <typename T>
void backward_task(const Task<T>& k);
}  // namespace baseline

namespace avx2 {
// False where recurrence_tasks_avx2.cpp compiled to nothing (not x86-64 GCC/Clang).
bool compiled();
template <typename T>
void forward_task(const Task<T>& k);
template <typename T>
void backward_task(const Task<T>& k);
}  // namespace avx2

}  // namespace fused_rnn::cpu
