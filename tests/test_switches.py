"""The kernels' run-time switches FUSED_RNN_CPU_REGIME, FUSED_RNN_CPU_ISA, FUSED_RNN_CUDA_REGIME,
FUSED_RNN_CUDA_GEMM_TF32, FUSED_RNN_CUDA_CLUSTER_EXCHANGE and FUSED_RNN_CUDA_GEMM_GRAPH:
read from the environment once, when the library loads; set and read back through fused_rnn._C (what
conftest's `switch` fixture uses); unknown names and values refused; the ISA switch reaching the CPU
kernels. Plus a build check of the CPU kernels' threads. What the regime switches route where:
test_gemm_recurrence.py (CPU) and test_cuda.py."""
import os
import subprocess
import sys

import pytest
import torch

import fused_rnn

# Each switch's values, its default first, in the order its error message lists them.
SWITCHES = {
    "FUSED_RNN_CPU_REGIME": ("fused", "gemm"),
    "FUSED_RNN_CPU_ISA": ("auto", "avx2", "baseline"),
    "FUSED_RNN_CUDA_REGIME": ("auto", "grid", "step", "gemm", "resident", "tuned"),
    "FUSED_RNN_CUDA_GEMM_TF32": ("matmul", "rnn"),
    "FUSED_RNN_CUDA_CLUSTER_EXCHANGE": ("barrier", "mbarrier"),
    "FUSED_RNN_CUDA_GEMM_GRAPH": ("off", "reuse"),
}


@pytest.mark.parametrize("name", SWITCHES)
def test_every_value_reads_back_and_others_are_refused(name, switch):
    default, *others = SWITCHES[name]
    for value in (*others, default):
        switch(name, value)
        assert fused_rnn._C.get_switch(name) == value
    with pytest.raises(ValueError, match=f"^{name} must be one of {', '.join(SWITCHES[name])}, got 'Auto'$"):
        fused_rnn._C.set_switch(name, "Auto")
    assert fused_rnn._C.get_switch(name) == default  # a refused value changes nothing


def test_unknown_switch_name_is_refused():
    for call in (lambda: fused_rnn._C.get_switch("FUSED_RNN_ISA"),
                 lambda: fused_rnn._C.set_switch("FUSED_RNN_ISA", "auto")):
        with pytest.raises(ValueError, match="unknown fused_rnn switch 'FUSED_RNN_ISA'"):
            call()


_CHILD = """
import os
import fused_rnn
C = fused_rnn._C
print(*(C.get_switch(n) for n in ("FUSED_RNN_CPU_ISA", "FUSED_RNN_CPU_REGIME", "FUSED_RNN_CUDA_REGIME",
                                  "FUSED_RNN_CUDA_GEMM_TF32", "FUSED_RNN_CUDA_CLUSTER_EXCHANGE",
                                  "FUSED_RNN_CUDA_GEMM_GRAPH")),
      C.cpu_isa_in_use())
os.environ["FUSED_RNN_CPU_ISA"] = "auto"
print(C.get_switch("FUSED_RNN_CPU_ISA"), C.cpu_isa_in_use())
"""


def test_environment_is_read_once_at_load():
    """A process started with the variables set begins with their values (an unknown one: the default);
    changing the environment afterwards changes nothing."""
    env = dict(os.environ, FUSED_RNN_CPU_ISA="baseline", FUSED_RNN_CPU_REGIME="gemm", FUSED_RNN_CUDA_REGIME="fast",
               FUSED_RNN_CUDA_GEMM_TF32="rnn", FUSED_RNN_CUDA_CLUSTER_EXCHANGE="mbarrier",
               FUSED_RNN_CUDA_GEMM_GRAPH="reuse")
    proc = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["baseline gemm auto rnn mbarrier reuse baseline", "baseline baseline"]


def test_isa_switch_takes_effect(switch):
    """Forcing the baseline build shows in cpu_isa_in_use() on any CPU. Where the CPU has AVX2 the two
    builds differ in the last bits of float32 (FMA contraction in the AVX2 one only), so the switch
    does reach the kernel and test_cpu_kernels.py does run both; they agree to rounding."""
    model = fused_rnn.RNN(16, 64)
    x = torch.randn(30, 7, 16) * 2
    with torch.no_grad():
        switch("FUSED_RNN_CPU_ISA", "avx2")
        forced_avx2 = fused_rnn._C.cpu_isa_in_use()
        a = model(x)[0]
        switch("FUSED_RNN_CPU_ISA", "baseline")
        assert fused_rnn._C.cpu_isa_in_use() == "baseline"
        b = model(x)[0]
        switch("FUSED_RNN_CPU_ISA", "auto")
        assert fused_rnn._C.cpu_isa_in_use() == forced_avx2  # auto: AVX2 where the CPU has it
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert forced_avx2 == "avx2"
    if forced_avx2 == "avx2":
        assert not torch.equal(a, b)


def test_parallel_for_runs_on_every_thread():
    """A build check: the row-block tasks use at::parallel_for, whose OpenMP pragma only runs threads
    in code compiled with -fopenmp (without it, it silently ran on one thread)."""
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert fused_rnn._C.parallel_threads_used() == 2
        torch.set_num_threads(1)
        assert fused_rnn._C.parallel_threads_used() == 1
    finally:
        torch.set_num_threads(prev)
