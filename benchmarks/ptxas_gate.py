"""GPU-less gate on the CUDA kernels: compiles every kernel instantiation for each target GPU with
ptxas's resource report and fails on what would cost time or correctness on a GPU nobody can test
on here: spilled registers (local-memory traffic in the step loop), a stack frame, registers that
do not fit the launch bounds' threads on one SM, or static shared memory over the per-block limit.

    python benchmarks/ptxas_gate.py [--arch 90 80] [--out REPORT.md]

Prints one row per kernel (registers, stack, spills, static shared memory, barriers) and exits 1
if any row breaks a rule. Needs nvcc (CUDA_HOME or /usr/local/cuda) and a CUDA build of torch for
the headers; no GPU.
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGISTERS_PER_SM = 65536
STATIC_SMEM_LIMIT = 48 * 1024  # bytes of __shared__ a block may declare statically


def max_threads():
    """recurrence_kernel's __launch_bounds__: kMaxThreads in recurrence_plan.h, read from there."""
    with open(os.path.join(ROOT, "csrc", "cuda", "recurrence_plan.h")) as f:
        return int(re.search(r"constexpr int kMaxThreads = (\d+);", f.read()).group(1))


MAX_THREADS = max_threads()


def launch_threads(name):
    """The threads per CTA a kernel is launched with (its __launch_bounds__), from its short name:
    resident_kernel<Shape<KL, KPT, R, NW, MaxBT, C>, BT, Backward> runs NW warps (resident_layout.h);
    resident_mma_kernel<T, KT, KP, C, Backward> KP warps per 16-row tile of its CTA (mma_layout.h);
    recurrence_kernel up to kMaxThreads."""
    m = re.search(r"Shape<\d+, \d+, \d+, (\d+), \d+(?:, \d+)?>", name)
    if m:
        return 32 * int(m.group(1))
    # resident_mma_kernel<T, KT, KP, C, Backward> (mma_layout.h's Tiling): rows and k capacity
    # KT·KP·K (K = 8 for tf32, else 16) in 16-row tiles, split over C CTAs, KP warps per tile
    m = re.search(r"resident_mma_kernel<(\w+), (\d+), (\d+), (\d+),", name)
    if m:
        k = 8 if m.group(1) == "float" else 16
        kt, kp, c = (int(m.group(i)) for i in (2, 3, 4))
        tiles = -(-kt * kp * k // 16)
        return 32 * -(-tiles // c) * kp
    return MAX_THREADS


def nvcc_path():
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def include_dirs(nvcc):
    import site

    # torch finds the CUDA headers through CUDA_HOME; on a machine without a GPU it would guess.
    os.environ.setdefault("CUDA_HOME", os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))

    from torch.utils import cpp_extension
    try:
        dirs = cpp_extension.include_paths("cuda")
    except TypeError:  # older torch: include_paths(cuda=True)
        dirs = cpp_extension.include_paths(cuda=True)
    for sp in site.getsitepackages():
        dirs += glob.glob(os.path.join(sp, "nvidia", "*", "include"))
    return [os.path.join(ROOT, "csrc")] + dirs


def compile_report(nvcc, source, arch, includes):
    """ptxas's -v report of one translation unit for sm_<arch>, as text."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [nvcc, "-cubin", f"-arch=sm_{arch}", "-O3", "-std=c++20", "--expt-relaxed-constexpr",
               "-Xptxas=-v", "-DFUSED_RNN_WITH_CUDA=1", "-D__CUDA_NO_HALF_OPERATORS__",
               "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
               "-D__CUDA_NO_HALF2_OPERATORS__", *[f"-I{d}" for d in includes], source,
               "-o", os.path.join(tmp, "out.cubin")]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"nvcc failed on {source}:\n{done.stderr[-4000:]}")
        return done.stderr


def demangle(names):
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return {n: n for n in names}
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out))


def parse(report):
    """[(mangled kernel, {registers, stack, spill_stores, spill_loads, smem, barriers})] from ptxas -v."""
    kernels, current = [], None
    for line in report.splitlines():
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            current = {"registers": 0, "stack": 0, "spill_stores": 0, "spill_loads": 0, "smem": 0, "barriers": 0}
            kernels.append((m.group(1), current))
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current["stack"], current["spill_stores"], current["spill_loads"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["registers"] = int(m.group(1))
            b = re.search(r"used (\d+) barriers", line)
            current["barriers"] = int(b.group(1)) if b else 0
            s = re.search(r"(\d+) bytes smem", line)
            current["smem"] = int(s.group(1)) if s else 0
    return kernels


def violations(k, threads):
    bad = []
    if k["spill_stores"] or k["spill_loads"]:
        bad.append(f"spills {k['spill_stores']}/{k['spill_loads']} B")
    if k["stack"]:
        bad.append(f"stack frame {k['stack']} B")
    if k["registers"] * threads > REGISTERS_PER_SM:
        bad.append(f"{k['registers']} registers x {threads} threads > {REGISTERS_PER_SM}")
    if k["smem"] > STATIC_SMEM_LIMIT:
        bad.append(f"static smem {k['smem']} B > {STATIC_SMEM_LIMIT}")
    return bad


def mode_names():
    """The kernel's Mode enumerators in order, read from recurrence_plan.h."""
    with open(os.path.join(ROOT, "csrc", "cuda", "recurrence_plan.h")) as f:
        return [m.strip() for m in re.search(r"enum class Mode \{([^}]*)\}", f.read()).group(1).split(",")]


def short(name, modes=mode_names()):
    """void fused_rnn::cuda::recurrence_kernel<float, 8, (fused_rnn::cuda::Mode)1, true>(...) ->
    recurrence_kernel<float, 8, Grid, true>"""
    name = re.sub(r"\(fused_rnn::cuda::Mode\)(\d+)", lambda m: modes[int(m.group(1))], name)
    name = name.replace("(anonymous namespace)::", "").split("(", 1)[0]
    for prefix in ("fused_rnn::cuda::", "fused_rnn::resident::", "c10::", "void "):
        name = name.replace(prefix, "")
    return name


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", default=["90", "80"], help="compute capabilities (default: 90 80)")
    p.add_argument("--out", default=None, help="also write the table to this Markdown file")
    p.add_argument("--sources", nargs="+", default=None, help="only these .cu files (default: csrc/cuda/*.cu)")
    args = p.parse_args()
    nvcc = nvcc_path()
    if nvcc is None:
        sys.exit("nvcc not found: set CUDA_HOME")
    includes = include_dirs(nvcc)
    sources = args.sources or sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
    rows, failures = [], 0
    for arch in args.arch:
        for source in sources:
            kernels = parse(compile_report(nvcc, source, arch, includes))
            names = demangle([k for k, _ in kernels])
            for mangled, k in kernels:
                threads = launch_threads(short(names[mangled]))
                bad = violations(k, threads)
                failures += bool(bad)
                rows.append(f"| sm_{arch} | {short(names[mangled])} | {threads} | {k['registers']} | {k['stack']} | "
                            f"{k['spill_stores']}/{k['spill_loads']} | {k['smem']} | {k['barriers']} | "
                            f"{'; '.join(bad) or 'ok'} |")
    table = "\n".join(["| arch | kernel | threads | registers | stack B | spill st/ld B | static smem B | barriers | verdict |",
                       "|---|---|---|---|---|---|---|---|---|", *rows])
    print(table)
    print(f"\n{len(rows)} kernel instantiations, {failures} breaking a rule")
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    sys.exit(1 if failures or not rows else 0)


if __name__ == "__main__":
    main()
