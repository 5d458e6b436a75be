// The CPU recurrence's task loops (recurrence_task_body.h) for any x86-64 CPU (or whatever the
// compiler targets by default): the fallback where the CPU lacks AVX2+FMA.
#define FUSED_RNN_CPU_ISA baseline
#include "cpu/recurrence_task_body.h"
