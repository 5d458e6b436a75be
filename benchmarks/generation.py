"""The generation row: successive T = 1 calls with the hidden state carried and each output fed
back as the next input (B = 1, I = H = 256 by default). This is the one-to-many use of an RNN,
sampling a sequence step by step, where per-call latency is everything. It times nn.RNN (cuDNN)
against fused_rnn.RNN, eager and with the whole loop captured in one CUDA graph, with TF32 off and
on, interleaved in one process on one GPU.

    python benchmarks/generation.py [--steps 256] [--hidden 256] [--batch 1] [--reps 20]
        [--seq-len 1] [--dtype float32|float16|bfloat16] [--cuda-regime auto|resident|...] [--out FILE.md]

With --seq-len T each call runs T steps (the output fed back is then [T, B, H]): a few long calls,
eager against graph-captured, tell how much of a regime's time per step is host work (launches,
library calls) that a CUDA graph of the call's own step loop would remove, e.g. the per-step GEMM
regime: --steps 4 --seq-len 128 --batch 64 --hidden 2048 --dtype float16 --cuda-regime gemm.

Prints a Markdown table: µs per generated step (median over reps), the speedup of fused over
nn.RNN, and the largest relative difference of the final hidden state between the two.
"""
import argparse
import statistics
import sys

import torch
from torch import nn

import fused_rnn


def generate(rnn, x0, h0, steps):
    """steps calls of rnn on one time step, the output fed back as the next input: the last h."""
    x, h = x0, h0
    for _ in range(steps):
        x, h = rnn(x, h)
    return h


def timed(fn, reps):
    """Median milliseconds of fn() over reps runs (CUDA events), after two warm-up runs."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def captured(rnn, x0, h0, steps):
    """The generation loop captured in one CUDA graph: (replay function, final-h tensor)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        generate(rnn, x0, h0, steps)  # warm-up outside the capture (workspace, kernel choice)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        h = generate(rnn, x0, h0, steps)
    return graph.replay, h


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--seq-len", type=int, default=1, help="steps per call (T)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    p.add_argument("--cuda-regime", default="auto", help="FUSED_RNN_CUDA_REGIME for the fused module")
    p.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = p.parse_args(argv)
    if not (torch.cuda.is_available() and fused_rnn.cuda_available()):
        sys.exit("needs a GPU and a CUDA build of fused_rnn")
    fused_rnn._C.set_switch("FUSED_RNN_CUDA_REGIME", args.cuda_regime)
    torch.manual_seed(0)
    H, B, T, steps = args.hidden, args.batch, args.seq_len, args.steps
    dtype = getattr(torch, args.dtype)
    base = nn.RNN(H, H, device="cuda", dtype=dtype)
    fused = fused_rnn.RNN.from_torch(base)
    x0 = torch.randn(T, B, H, device="cuda", dtype=dtype)
    h0 = torch.randn(1, B, H, device="cuda", dtype=dtype)
    steps_total = steps * T
    lines = [f"# Generation row: {steps} calls of T = {T}, B = {B}, I = H = {H}, {args.dtype}, "
             f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
             f"fused regime forced: {args.cuda_regime}", "",
             "| TF32 | mode | nn.RNN µs/step | fused µs/step | fused regime | speedup | max rel diff of final h |",
             "|---|---|---|---|---|---|---|"]
    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        with torch.no_grad():
            for tf32 in ((False, True) if dtype == torch.float32 else (False,)):
                torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
                h_base = generate(base, x0, h0, steps)
                h_fused = generate(fused, x0, h0, steps)
                regime = fused_rnn._C.last_cuda_regime()
                diff = ((h_fused - h_base).abs().max() / h_base.abs().max().clamp_min(1e-30)).item()
                for mode in ("eager", "graph"):
                    fns, failed = {}, {}
                    for name, m in (("base", base), ("fused", fused)):
                        try:
                            fns[name] = (lambda m=m: generate(m, x0, h0, steps)) if mode == "eager" else \
                                captured(m, x0, h0, steps)[0]
                        except RuntimeError as e:  # a capture that fails is a result, not a crash
                            failed[name] = f"error: {str(e).splitlines()[0][:60]}"
                    ms = {name: [] for name in fns}
                    for _ in range(3):  # interleaved rounds
                        for name, fn in fns.items():
                            ms[name].append(timed(fn, args.reps))
                    us = {n: statistics.median(v) * 1e3 / steps_total for n, v in ms.items()}
                    cell = {n: failed.get(n) or f"{us[n]:.2f}" for n in ("base", "fused")}
                    speedup = f"{us['base'] / us['fused']:.2f}×" if len(us) == 2 else "—"
                    lines.append(f"| {('on' if tf32 else 'off') if dtype == torch.float32 else 'n/a'} | {mode} | {cell['base']} | {cell['fused']} | {regime} | "
                                 f"{speedup} | {diff:.1e} |")
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
