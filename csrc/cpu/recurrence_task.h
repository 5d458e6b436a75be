// One task of the CPU recurrence (recurrence_cpu.cpp): one direction of a block of batch rows,
// run over the whole time loop on one thread. The task bodies are compiled once per instruction
// set (recurrence_task_body.h); this header is what the driver and the builds share.
#pragma once

#include <cstdint>

#include "step_layout.h"

namespace fused_rnn::cpu {

// C[m, H] += A[m, H] · op(W_hh) for one direction: op = ᵀ in the forward, identity in BPTT.
template <typename scalar_t>
struct StepGemm {
  const scalar_t* w = nullptr;        // [H, H] row-major W_hh
  const scalar_t* panels = nullptr;   // packed op(W_hh) for the micro-kernel, or null when using BLAS
  int64_t H = 0;
  bool transpose = false;
  bool blas = false;
};

// One task: direction `reverse` of rows [b0, b1).
template <typename scalar_t>
struct Task {
  const StepLayout* lay;
  StepGemm<scalar_t> gemm;
  scalar_t* buf;           // out (forward) or dpre (backward), already offset to this direction's columns
  int64_t ld;       // D*H
  const scalar_t* y;       // backward only: forward output, same offset and ld as buf
  const scalar_t* carry_in;  // what enters where a row's pass begins: h0 [B, H] (forward), ghy [B, H] (BPTT)
  scalar_t* carry_out;       // what leaves where it ends: hy [B, H] (forward), dh0 [B, H] (BPTT)
  int64_t H;
  bool reverse;
  bool relu;
  int64_t b0, b1;
};

// The task bodies (recurrence_task_body.h) of each build, for T = float and double.
namespace baseline {
template <typename scalar_t>
void forward_task(const Task<scalar_t>& k);
template <typename scalar_t>
void backward_task(const Task<scalar_t>& k);
}  // namespace baseline

namespace avx2 {
// False where recurrence_tasks_avx2.cpp compiled to nothing (not x86-64 GCC/Clang).
bool compiled();
template <typename scalar_t>
void forward_task(const Task<scalar_t>& k);
template <typename scalar_t>
void backward_task(const Task<scalar_t>& k);
}  // namespace avx2

}  // namespace fused_rnn::cpu
