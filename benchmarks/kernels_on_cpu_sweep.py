"""The GPU quick sweep's shapes (acceptance.py) through the CUDA kernels' CPU execution
(csrc/cuda_on_cpu.h), on the launch plans the launchers make for an H100 (132 SMs, 227 KB of shared
memory per CTA, clusters): no GPU needed, no timing. For each shape, dtype and kernel it runs a few
steps forward and BPTT, with the threads in ascending and in descending order, and reports the plan,
whether both orders gave the same bits, and the largest error against nn.RNN in float64
(tests/test_kernel_on_cpu.py's reference). It says whether the kernels compute the right thing at
the sizes a GPU run will time; how fast they do it only a GPU can say.

    python benchmarks/kernels_on_cpu_sweep.py [--steps 2] [--out FILE.md]

A cooperative or cluster launch keeps all of its CTAs alive at once: the largest (H = 2048, 128
CTAs of 512 threads) take about 1 GB of fiber stacks.
"""
import argparse
import math
import os
import platform
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fused_rnn  # noqa: E402,F401  (the emulation ops)
from acceptance import SWEEP_B, SWEEP_H  # noqa: E402
from test_kernel_on_cpu import reference  # noqa: E402

H100 = dict(sms=132, smem_optin=232448)
MODES = ("single", "grid", "step")
ORDERS = ("ascending", "descending")
RESIDENT_MAX_H = 512
MMA_MAX_H = {torch.float16: 1024, torch.bfloat16: 1024, torch.float32: 512}


def run(kernel, dtype, T, B, H, D):
    gen = torch.Generator().manual_seed(H * 7 + B)
    w = (torch.randn(D, H, H, generator=gen, dtype=torch.float64) / math.sqrt(H)).to(dtype)
    h0 = torch.randn(D, B, H, generator=gen, dtype=torch.float64).to(dtype)
    pre = torch.randn(T * B, D * H, generator=gen, dtype=torch.float64).to(dtype)
    g = torch.randn(T * B, D * H, generator=gen, dtype=torch.float64).to(dtype)
    ghy = torch.randn(D, B, H, generator=gen, dtype=torch.float64).to(dtype)
    ops = torch.ops.fused_rnn_emulation

    def call(buf, y, h, backward, order):
        if kernel == "default":
            return ops.recurrence_kernel(buf, y, h, w, None, False, backward, "auto", H100["sms"],
                                         H100["smem_optin"], order, 1)
        if kernel == "resident":
            return ops.resident_kernel(buf, y, h, w, False, backward, H100["sms"], True, False, order, 1)
        return ops.resident_mma_kernel(buf, y, h, w, False, backward, True, False, order, 1)

    ref_out, ref_hy = reference(pre, h0, w, False, None)
    ref_delta, ref_dh0 = reference(pre, h0, w, False, None, grads=(g, ghy))
    t0 = time.perf_counter()
    errors, same, plan = [], True, None
    for backward in (False, True):
        args = (g, ref_out.to(dtype), ghy) if backward else (pre, torch.empty(0), h0)
        runs = [call(*args, backward, order) for order in ORDERS]
        plan = runs[0][2]
        same &= all(torch.equal(r[0], runs[0][0]) and torch.equal(r[1], runs[0][1]) for r in runs[1:])
        want = (ref_delta, ref_dh0) if backward else (ref_out, ref_hy)
        errors.append(max((runs[0][0].double() - want[0]).abs().max().item(),
                          (runs[0][1].double() - want[1]).abs().max().item()))
    return plan, same, errors, time.perf_counter() - t0


def plan_text(kernel, plan):
    if kernel == "default":
        mode, bt, ctas, dirs, threads, smem, J, C = plan[:8]
        return f"{MODES[mode]} bt{bt} {ctas}x{dirs} CTAs x {threads} thr, J{J} C{C}, {smem} B"
    if kernel == "resident":
        return f"shape {plan[0]} bt{plan[1]} cluster {plan[2]}, {plan[3]} CTAs"
    return f"tiling {plan[0]} KT{plan[1]} KP{plan[2]} cluster {plan[3]}, {plan[4]} warps"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    cases = []
    for H in SWEEP_H:
        for B in SWEEP_B:
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                cases.append(("default", dtype, H, B))
            if H <= RESIDENT_MAX_H:
                cases.append(("resident", torch.float32, H, B))
            for dtype in (torch.float16, torch.bfloat16, torch.float32):
                if H <= MMA_MAX_H[dtype]:
                    cases.append(("tensor cores" if dtype != torch.float32 else "tensor cores (TF32)", dtype, H, B))
    for kernel, dtype, H, B in cases:
        k = "mma" if kernel.startswith("tensor") else kernel
        try:
            plan, same, errors, secs = run(k, dtype, args.steps, B, H, 1)
        except RuntimeError as e:  # a broken CUDA rule, or a plan the kernel refuses
            rows.append(f"| {kernel} | {str(dtype)[6:]} | {B} | {H} | | FAILED: {str(e).splitlines()[0][:120]} | | | |")
            print(rows[-1], flush=True)
            continue
        rows.append(f"| {kernel} | {str(dtype)[6:]} | {B} | {H} | {plan_text(k, plan)} | "
                    f"{'yes' if same else 'NO'} | {errors[0]:.1e} | {errors[1]:.1e} | {secs:.1f} |")
        print(rows[-1], flush=True)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    text = "\n".join([
        f"# The GPU quick sweep's shapes through the CUDA kernels' CPU execution ({time.strftime('%Y-%m-%d')}, {rev})",
        "",
        f"`python benchmarks/kernels_on_cpu_sweep.py --steps {args.steps}` on {platform.node() or 'this machine'} "
        f"(CPU only, torch {torch.__version__}): each kernel's own source run by csrc/cuda_on_cpu.h on the plan its "
        f"launcher makes for an H100 (132 SMs, 227 KB shared memory, clusters), T = {args.steps}, D = 1, tanh, "
        "forward and BPTT, threads in ascending and descending order. Errors: largest absolute difference "
        "from nn.RNN in float64 (outputs and final state; δ and dh0). No timing: nothing here ran on a GPU. "
        "The default kernel's rows show its own plan; on a GPU, float32 calls with B·H² ≥ 2^27 take the per-step "
        "GEMMs instead unless a kernel regime is forced, and the resident and tensor-core kernels are opt-in "
        "(FUSED_RNN_CUDA_REGIME=resident).",
        "",
        "| kernel | dtype | B | H | plan | same bits both orders | fwd error | BPTT error | CPU s |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ])
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
