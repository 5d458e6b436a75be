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
