"""Bisects the bfloat16 racecheck failure (benchmarks/gpu_notes.md) on a GPU machine, in one run.

On c9d0886, compute-sanitizer racecheck stopped every bfloat16 regime of the recurrence kernel with
"Internal Sanitizer Error: The Sanitizer failed to handle a hardware exception", then an
illegal-address error. memcheck, float32 and float64 were clean and every CUDA test passed. This
script runs racecheck separately on each case below, each in its own process under a time limit, and
prints one table row per case (exit code, the sanitizer's summary or error line):

  1. the recurrence through benchmarks/gpu_sanitize.py, per dtype (float16 was never tried, bfloat16;
     float32 as the control) and per regime (auto = single, step: W_hh not in shared memory,
     resident: the tensor-core kernel, entirely different code). Which of these fail tells whether
     16-bit types in general, only bf16, one kernel or all kernels trigger it.
  2. bf16_minimal.cu, a standalone program with no recurrence (16-bit global loads converted to
     float, shared-memory staging, barriers, conversion back), built three ways: c10::BFloat16,
     CUDA's __nv_bfloat16, c10::Half. If it fails too, racecheck itself fails on that type: the
     minimal program is the reproducer. If it passes while case 1 fails, the cause is in the kernel.

    python benchmarks/racecheck_probe/racecheck_probe.py [--sanitizer PATH] [--out FILE.md]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SUMMARY = re.compile(r"(RACECHECK SUMMARY: .*|ERROR SUMMARY: .*|Internal Sanitizer Error.*|cuda\w*Error\w*.*|"
                     r"probe type .*|MISMATCH.*)")


def sanitizer_path(given):
    if given:
        return given
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "bin", "compute-sanitizer")):
            return os.path.join(home, "bin", "compute-sanitizer")
    return shutil.which("compute-sanitizer")


def racecheck(san, cmd, limit=60):
    """(exit code, the summary lines) of one racecheck run."""
    try:
        done = subprocess.run([san, "--tool", "racecheck", "--error-exitcode", "3", *cmd], capture_output=True,
                              text=True, timeout=limit, cwd=ROOT)
        text, rc = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as e:
        text, rc = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout"
    found = list(dict.fromkeys(m.group(1).strip()[:120] for m in SUMMARY.finditer(text)))
    if found:
        return rc, "; ".join(found[:4])
    return rc, text.strip().splitlines()[-1][:120] if text.strip() else "no output"


def build_minimal(kind, tmp):
    """bf16_minimal.cu built for this GPU with PROBE_TYPE = kind; the binary's path, or an error text."""
    import torch
    from torch.utils import cpp_extension

    major, minor = torch.cuda.get_device_capability()
    nvcc = os.path.join(cpp_extension.CUDA_HOME or "/usr/local/cuda", "bin", "nvcc")
    out = os.path.join(tmp, f"probe{kind}")
    cmd = [nvcc, "-std=c++17", f"-arch=sm_{major}{minor}", f"-DPROBE_TYPE={kind}",
           *[f"-I{d}" for d in cpp_extension.include_paths()], os.path.join(HERE, "bf16_minimal.cu"), "-o", out]
    done = subprocess.run(cmd, capture_output=True, text=True)
    return out if done.returncode == 0 else f"build failed: {done.stderr.strip().splitlines()[-1][:100]}"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sanitizer", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    san = sanitizer_path(args.sanitizer)
    if san is None:
        sys.exit("compute-sanitizer not found")
    rows = ["| case | exit code | racecheck says |", "|---|---|---|"]
    script = os.path.join(ROOT, "benchmarks", "gpu_sanitize.py")
    cases = [(dtype, regime) for dtype in ("float16", "bfloat16") for regime in ("auto", "step", "resident")]
    for dtype, regime in cases + [("float32", "auto")]:  # float32: the control, clean on c9d0886
        rc, said = racecheck(san, [sys.executable, script, dtype, regime])
        rows.append(f"| recurrence {dtype} {regime} | {rc} | {said} |")
        print(rows[-1], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for kind, name in ((1, "c10::BFloat16"), (2, "__nv_bfloat16"), (3, "c10::Half")):
            binary = build_minimal(kind, tmp)
            if not os.path.isfile(binary):
                rows.append(f"| minimal {name} | — | {binary} |")
            else:
                rc, said = racecheck(san, [binary])
                rows.append(f"| minimal {name} | {rc} | {said} |")
            print(rows[-1], flush=True)
    text = "\n".join(rows)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
