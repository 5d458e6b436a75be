"""GPU-less SASS report of the CUDA kernels: the instruction mix of each kernel and of its hot loop.

Disassembles the built extension (cuobjdump -sass, no GPU needed) and, per kernel, counts the
instruction classes that decide a recurrence step's time: FMAs (FFMA/DFMA/HFMA2) and tensor-core
MMAs (HMMA/DMMA), shared-memory loads and stores (LDS/STS), global loads and stores (LDG/STG),
local-memory traffic (LDL/STL: spills or stack arrays, which should be none), barriers (BAR),
shuffles (SHFL) and grid / cluster synchronisation (the grid barrier's MEMBAR.ALL.GPU; sm_90's
mbarrier SYNCS* and cluster barrier UCGABAR*). The hot loop is
the backward branch's body with the most FMAs/MMAs: the mat-vec's inner loop. Its LDS per FMA is
the figure a register-resident W_hh would bring to ~0.

    python benchmarks/sass_report.py [--so PATH] [--arch sm_90] [--out REPORT.md] [--check]

--check also fails (exit 1) unless the step loop of every SM-resident kernel issues what its layout
predicts: the FFMA kernel the mat-vec's FMAs, one barrier, the reduce-scatter's shuffles; the
tensor-core kernel one HMMA per k tile and one barrier per step; both no local memory.

cuobjdump comes with the CUDA toolkit, or with the triton that torch installs
(triton/backends/nvidia/bin) or pip's nvidia-cuda-cuobjdump.
"""
import argparse
import collections
import glob
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ptxas_gate import demangle, short  # noqa: E402  (one way to name a kernel instantiation)

CLASSES = {  # report column -> opcodes (the part of the mnemonic before the first '.')
    "FMA": ("FFMA", "DFMA", "HFMA2", "FFMA2"),
    "MMA": ("HMMA", "DMMA", "IMMA"),
    "LDS": ("LDS", "LDSM"),
    "STS": ("STS",),
    "LDG": ("LDG",),
    "STG": ("STG",),
    "LDL/STL": ("LDL", "STL"),
    "BAR": ("BAR",),
    "SHFL": ("SHFL",),
}
CLUSTER_PREFIXES = ("SYNCS", "UCGABAR", "MEMBAR.ALL.GPU")
INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")


def find_cuobjdump():
    candidates = [os.path.join(h, "bin", "cuobjdump") for h in (os.environ.get("CUDA_HOME"), "/usr/local/cuda") if h]
    candidates.append(shutil.which("cuobjdump") or "")
    try:
        import site
        for sp in site.getsitepackages():
            candidates += glob.glob(os.path.join(sp, "triton", "backends", "nvidia", "bin", "cuobjdump"))
            candidates += glob.glob(os.path.join(sp, "nvidia", "*", "bin", "cuobjdump"))
    except AttributeError:
        pass
    return next((c for c in candidates if c and os.path.isfile(c)), None)


def functions(sass):
    """{mangled name: [(address, opcode, operands)]} from cuobjdump -sass output. A predicated branch
    keeps its predicate in the operands ("@P1 0x2c80"): hot_loop tells loop back-edges by it."""
    out, name = {}, None
    for line in sass.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            name = m.group(1)
            out[name] = []
            continue
        m = INSTRUCTION.search(line)
        if m and name:
            operands = m.group(4)
            if m.group(3).startswith("BRA") and m.group(2):
                operands = m.group(2).strip() + " " + operands
            out[name].append((int(m.group(1), 16), m.group(3), operands))
    return out


def counts(instructions):
    c = collections.Counter()
    for _, op, _ in instructions:
        base = op.split(".")[0]
        for column, opcodes in CLASSES.items():
            if base in opcodes:
                c[column] += 1
        if op.startswith(CLUSTER_PREFIXES):
            c["grid/cluster sync"] += 1
        # the mbarrier exchange's own (counted, not tabled): GPU-scope fences, mbarrier waits, st.async
        if op.startswith(("MEMBAR.ALL.GPU", "MEMBAR.SC.GPU")):
            c["GPU membar"] += 1
        if op.startswith("SYNCS.PHASECHK"):
            c["mbarrier waits"] += 1
        if base == "STAS":
            c["STAS"] += 1
    c["instructions"] = len(instructions)
    return c


def hot_loop(instructions):
    """Counts of the loop (a predicated backward branch's [target, branch] range) with the most
    FMA/MMA per instruction. An unpredicated backward branch is the return jump of an out-of-line
    stub (e.g. an mbarrier wait's retry), not a loop: its range would mix loop and tail code."""
    best = None
    for address, op, operands in instructions:
        if not op.startswith("BRA") or not operands.startswith("@"):
            continue
        target = re.search(r"0x([0-9a-f]+)", operands)
        if not target or int(target.group(1), 16) >= address:
            continue
        lo = int(target.group(1), 16)
        c = counts([i for i in instructions if lo <= i[0] <= address])
        work = c["FMA"] + c["MMA"]
        if work and (best is None or work / c["instructions"] > (best["FMA"] + best["MMA"]) / best["instructions"]):
            best = c
    return best or collections.Counter()


def resident_expectations(name):
    """What each step of a resident_kernel<Shape<KL, KPT, R, NW, MaxBT>, BT, Backward> must issue per
    lane (resident_layout.h), or None for other kernels: at least R·KPT·BT FMAs (the mat-vec), one
    barrier, the reduce-scatter's shuffles (a stage that halves n values sends n/2, an all-reduce
    stage 1), no local memory."""
    m = re.search(r"resident_kernel<Shape<(\d+), (\d+), (\d+), \d+, \d+(?:, (\d+))?>, (\d+),", name)
    if not m:
        return None
    kl, kpt, r, bt = (int(m.group(i)) for i in (1, 2, 3, 5))
    n, shuffles, mask = r * bt, 0, 1
    while mask < kl:
        shuffles += n // 2 if n >= 2 else 1
        n = n // 2 if n >= 2 else n
        mask *= 2
    return {"min_fma": r * kpt * bt, "SHFL": shuffles}


def mma_expectations(name):
    """What each step of a resident_mma_kernel<T, KT, KP, C, Backward> must issue (mma_layout.h):
    one tensor-core mma per k tile of the warp (HMMA), one barrier (two with k parts: the partial
    sums meet behind a __syncthreads), no local memory."""
    m = re.search(r"resident_mma_kernel<\w+, (\d+), (\d+), \d+,", name)
    return {"MMA": int(m.group(1)), "barriers_per_step": 2 if int(m.group(2)) > 1 else 1} if m else None


def exchanges_on_mbarriers(name):
    """Whether a resident kernel hands a step's h to its cluster peers on mbarriers: the Mbar template
    argument, last of resident_kernel<Shape<...>, BT, Backward, Mbar> and of
    resident_mma_kernel<T, KT, KP, C, Backward, Mbar>."""
    return bool(re.search(r"resident_kernel<Shape<[^>]*>, \d+, (?:true|false), true>$", name)
                or re.search(r"resident_mma_kernel<\w+, \d+, \d+, \d+, (?:true|false), true>$", name))


def check(name, loop):
    """Broken expectations of one kernel's hot loop, as text (empty: it meets them or has none). The
    compiler may unroll the step loop, so the loop holds `steps` steps, one barrier each: the
    per-step counts are the loop's divided by its barriers."""
    want = resident_expectations(name) or mma_expectations(name)
    if want is None:
        return []
    if loop["LDL/STL"]:
        return [f"{loop['LDL/STL']} LDL/STL in the step loop (local memory)"]
    per_step = want.get("barriers_per_step", 1)
    steps = loop["BAR"] // per_step
    if steps < 1 or loop["BAR"] % per_step:
        return [f"{loop['BAR']} barriers in the step loop, not a multiple of {per_step} per step"]
    bad = []
    if loop["FMA"] < steps * want.get("min_fma", 0):
        bad.append(f"{loop['FMA']} FMA over {steps} step(s) < {steps} x {want['min_fma']} "
                   "(the mat-vec is not all in the step loop, or more than one barrier a step)")
    for column in ("MMA", "SHFL"):
        if column in want and loop[column] != steps * want[column]:
            bad.append(f"{loop[column]} {column} over {steps} step(s), expected {steps} x {want[column]}")
    if exchanges_on_mbarriers(name):  # the exchange's point: no GPU-scope fence in the step loop
        if loop["GPU membar"]:
            bad.append(f"{loop['GPU membar']} GPU-scope MEMBAR in the step loop of an mbarrier exchange")
        if loop["mbarrier waits"] < steps or not loop["STAS"]:
            bad.append(f"{loop['mbarrier waits']} mbarrier waits and {loop['STAS']} st.async over {steps} step(s)")
    return bad


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--so", default=None, help="the extension to read (default: the installed fused_rnn._C)")
    p.add_argument("--arch", default="sm_90")
    p.add_argument("--out", default=None, help="also write the report to this Markdown file")
    p.add_argument("--check", action="store_true",
                   help="exit 1 unless every resident kernel's step loop issues what its layout predicts "
                        "(FMAs or HMMAs, barriers, the reduce-scatter's shuffles, no local memory; on mbarriers: "
                        "a wait a step, st.async stores, no GPU-scope fence)")
    args = p.parse_args()
    so = args.so
    if so is None:
        import fused_rnn
        so = fused_rnn._C.__file__
    tool = find_cuobjdump()
    if tool is None:
        sys.exit("cuobjdump not found (CUDA toolkit, triton's bundled copy, or pip install nvidia-cuda-cuobjdump)")
    done = subprocess.run([tool, "-sass", "-arch", args.arch, so], capture_output=True, text=True)
    if done.returncode != 0 or "Function :" not in done.stdout:
        sys.exit(f"no {args.arch} SASS in {so} (built without CUDA kernels for it?)\n{done.stderr[-2000:]}")
    funcs = functions(done.stdout)
    names = demangle(list(funcs))
    cols = ["instructions", "FMA", "MMA", "LDS", "STS", "LDG", "STG", "LDL/STL", "BAR", "SHFL", "grid/cluster sync"]
    lines = [f"SASS of {os.path.basename(so)} for {args.arch} (cuobjdump -sass).", "",
             "| kernel | part | " + " | ".join(cols) + " | LDS per FMA |", "|---|---|" + "---|" * (len(cols) + 1)]
    failures, checked = [], 0
    for mangled in sorted(funcs, key=lambda n: names[n]):
        loop = hot_loop(funcs[mangled])
        for part, c in (("whole", counts(funcs[mangled])), ("hot loop", loop)):
            fma = c["FMA"] + c["MMA"]
            ratio = f"{c['LDS'] / fma:.2f}" if fma else "—"
            lines.append(f"| {short(names[mangled])} | {part} | " + " | ".join(str(c[k]) for k in cols) + f" | {ratio} |")
        checked += (resident_expectations(short(names[mangled])) or mma_expectations(short(names[mangled]))) is not None
        failures += [f"{short(names[mangled])}: {b}" for b in check(short(names[mangled]), loop)]
    if args.check:
        lines += ["", f"Step-loop check: {checked} resident kernels (FFMA and tensor-core), {len(failures)} findings"]
        lines += [f"- {f}" for f in failures]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    if args.check and (failures or not checked):
        sys.exit(1)


if __name__ == "__main__":
    main()
