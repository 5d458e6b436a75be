"""Checks of the built extension itself: what a green numerical test cannot show.

The AVX2 build of the CPU task loops is picked at run time, so the baseline build must not contain
one AVX2 instruction: on a CPU without AVX2 it would fault. Its correctness rests on compile flags
and include order (recurrence_tasks_avx2.cpp), so it is checked on the machine code."""
import platform
import re
import shutil
import subprocess

import pytest

import fused_rnn
from conftest import benchmark_script

# An AVX (256-bit) register or an FMA / AVX2-only instruction.
AVX2_INSTRUCTION = re.compile(r"\b(ymm\d+|vfn?m(add|sub)\w*|vbroadcast\w*|vperm\w*|vpbroadcast\w*)\b")


def _functions_of(namespace):
    """{demangled function name: instruction lines} for the functions of fused_rnn._C in namespace."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", fused_rnn._C.__file__], check=True,
                         capture_output=True, text=True).stdout
    functions, name = {}, None
    for line in out.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            name = header.group(1) if namespace in header.group(1) and "@plt" not in header.group(1) else None
            if name:
                functions[name] = []
        elif name and line.strip():
            functions[name].append(line)
    return functions


@pytest.mark.skipif(platform.machine() != "x86_64" or shutil.which("objdump") is None,
                    reason="x86-64 check that needs binutils' objdump")
def test_baseline_cpu_build_has_no_avx2_instructions():
    baseline = _functions_of("fused_rnn::cpu::baseline::")
    assert any("forward_task" in n for n in baseline) and any("backward_task" in n for n in baseline)
    offending = {n: [l for l in body if AVX2_INSTRUCTION.search(l)][:3] for n, body in baseline.items()}
    assert not any(offending.values()), {n: l for n, l in offending.items() if l}
    # The pattern does find AVX2 code where it is meant to be (so the check above can fail).
    avx2 = _functions_of("fused_rnn::cpu::avx2::")
    assert any(AVX2_INSTRUCTION.search(l) for body in avx2.values() for l in body)


def _sass_report():
    """benchmarks/sass_report.py as a module."""
    return benchmark_script("sass_report")


@pytest.mark.skipif(not fused_rnn.cuda_available(), reason="built without the CUDA kernels (FUSED_RNN_CUDA=1)")
def test_resident_step_loops_issue_what_the_layout_predicts():
    """The SASS of every SM-resident kernel (no GPU needed): the FFMA kernel's step loop holds the whole
    mat-vec (R·KPT·BT FMAs), one barrier and the reduce-scatter's shuffles; the tensor-core kernel's
    one HMMA per k tile and one barrier per step; neither touches local memory; the kernels that
    exchange on mbarriers wait on one a step, store with st.async and have no GPU-scope fence there."""
    sass_report = _sass_report()
    tool = sass_report.find_cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (CUDA toolkit, or the copy in triton/backends/nvidia/bin)")
    out = subprocess.run([tool, "-sass", "-arch", "sm_90", fused_rnn._C.__file__], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    funcs = sass_report.functions(out.stdout)
    names = sass_report.demangle(list(funcs))
    resident = {sass_report.short(names[m]): f for m, f in funcs.items() if "resident_" in names[m]}
    assert sum("resident_kernel" in n for n in resident) >= 36, sorted(resident)
    assert sum("resident_mma_kernel" in n for n in resident) >= 40, sorted(resident)
    findings = {n: sass_report.check(n, sass_report.hot_loop(f)) for n, f in resident.items()}
    assert not any(findings.values()), {n: f for n, f in findings.items() if f}


def test_sass_check_rules_can_fail():
    """The expectations the SASS test applies, on made-up loop counts: a loop that spills, lacks the
    mat-vec's FMAs or an mma, or has a barrier more than its steps, is refused; a loop the compiler
    unrolled over two steps is not."""
    import collections

    check = _sass_report().check
    name = "resident_kernel<Shape<4, 32, 1, 16, 8>, 8, false>"  # R·KPT·BT = 256 FMAs, 4 + 2 shuffles
    good = collections.Counter({"FMA": 270, "BAR": 1, "SHFL": 6})
    assert check(name, good) == []
    assert check(name, good + good) == []  # two steps unrolled
    assert check(name, good + collections.Counter({"LDL/STL": 2}))
    assert check(name, good + collections.Counter({"BAR": 1}))  # two barriers in one step
    assert check(name, good - collections.Counter({"FMA": 100}))
    assert check(name, good - collections.Counter({"BAR": 1}))
    assert check("recurrence_kernel<float, 8, Grid>", collections.Counter()) == []
    mma = "resident_mma_kernel<Half, 8, 1, 1, false>"  # 8 HMMA and one barrier a step
    assert check(mma, collections.Counter({"MMA": 24, "BAR": 3})) == []
    assert check(mma, collections.Counter({"MMA": 16, "BAR": 3}))  # an mma missing from a step
    assert check(mma, collections.Counter({"MMA": 24, "BAR": 3, "LDL/STL": 1}))
    parts = "resident_mma_kernel<Half, 16, 2, 4, false>"  # k parts: two barriers a step
    assert check(parts, collections.Counter({"MMA": 32, "BAR": 4})) == []
    assert check(parts, collections.Counter({"MMA": 32, "BAR": 2}))
    # the mbarrier exchange (last template argument true): a wait a step, st.async, no GPU-scope fence
    exchange = collections.Counter({"MMA": 32, "BAR": 4, "mbarrier waits": 2, "STAS": 8})
    for mbar in ("resident_mma_kernel<float, 16, 2, 2, false, true>",
                 "resident_kernel<Shape<16, 32, 2, 16, 2, 8>, 1, false, true>"):
        counts = exchange if "mma" in mbar else collections.Counter({"FMA": 140, "BAR": 2, "SHFL": 8,
                                                                     "mbarrier waits": 2, "STAS": 4})
        assert check(mbar, counts) == [], mbar
        assert check(mbar, counts + collections.Counter({"GPU membar": 1})), mbar
        assert check(mbar, counts - collections.Counter({"mbarrier waits": 1})), mbar
        assert check(mbar, counts - collections.Counter({"STAS": 99})), mbar
    barrier_exchange = "resident_mma_kernel<float, 16, 2, 2, false, false>"  # a cluster barrier may fence
    assert check(barrier_exchange, collections.Counter({"MMA": 32, "BAR": 4, "GPU membar": 2})) == []


@pytest.mark.skipif(not fused_rnn.cuda_available(), reason="built without the CUDA kernels (FUSED_RNN_CUDA=1)")
def test_direct_cublas_calls_find_their_entry_point():
    """The CUDA build calls cublasGemmEx directly (csrc/cuda/cublas_gemm.cu: the TF32 GEMM rule, the
    half per-step GEMMs) through the libcublas torch loaded, looked up by soname at run time rather
    than linked. Without it those paths would quietly fall back to ATen; the lookup needs no GPU."""
    assert fused_rnn._C.cublas_found()
