#!/usr/bin/env python
"""What one training step of a tiny model costs in PyTorch before any RNN arithmetic: the floor
under fused_rnn's fwd+bwd speedup at tiny sizes.

    python benchmarks/autograd_floor.py                        # B3 T4 I10 H20 (the SimpleRNN shape)
    python benchmarks/autograd_floor.py --shape 1,1000,10,20 --threads 1

Times, interleaved in one process (benchmark.py's method and timer), the fwd+bwd step of
benchmark.py, (output.sum() + h_n.sum()).backward() with the parameters' and the input's
gradients, for
  - nn.Linear(I, H) on the same [T, B, I] input (loss output.sum() + output[-1].sum()): one autograd
    node with the same leaves (weight, bias, input), the smallest graph of this shape;
  - fused_rnn.RNN and nn.RNN(I, H), as in benchmark.py;
and the forward alone (no_grad) of each. Prints a Markdown table of µs per call and each time over
the Linear's: where fused_rnn.RNN sits near 1x, what is left is the framework's per-call cost
(module call, autograd graph and engine, gradient accumulation), not the RNN.
"""
import argparse
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark  # noqa: E402  (Timer, measure, cpu_model: one timing method for all scripts)

import fused_rnn  # noqa: E402


def step(module, x, last_state):
    params = list(module.parameters())
    xi = x.detach().requires_grad_()

    def run():
        xi.grad = None
        for p in params:
            p.grad = None
        out = module(xi)
        if last_state:
            out, h_n = out
            (out.sum() + h_n.sum()).backward()
        else:
            (out.sum() + out[-1].sum()).backward()
    return run


def forward(module, x):
    def run():
        with torch.no_grad():
            module(x)
    return run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="3,4,10,20", help="B,T,I,H (time-major input [T, B, I])")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-time", type=float, default=0.5, help="seconds of samples per candidate")
    args = p.parse_args(argv)
    B, T, I, H = (int(v) for v in args.shape.split(","))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(T, B, I)
    ref = nn.RNN(I, H)
    fused = fused_rnn.RNN(I, H)  # same weights, own Parameters (own .grad)
    fused.load_state_dict(ref.state_dict())
    linear = nn.Linear(I, H)
    models = {"nn.Linear (floor)": (linear, False), "fused_rnn.RNN": (fused, True), "nn.RNN": (ref, True)}
    cfg = {"target_s": args.min_time, "sample_s": 5e-3, "min_rounds": 9, "max_rounds": 400,
           "warmup_s": args.min_time / 2, "warmup_calls": 3, "max_s": 60.0}
    timer = benchmark.Timer("cpu")
    res = {}
    for mode, make in (("fwd", lambda m, s: forward(m, x)), ("fwd+bwd", lambda m, s: step(m, x, s))):
        r = benchmark.measure({name: make(m, s) for name, (m, s) in models.items()}, timer, cfg)
        res[mode] = {name: v["median_s"] * 1e6 for name, v in r.items()}
    print(f"B{B} T{T} I{I} H{H}, float32, {args.threads} threads, torch {torch.__version__}, "
          f"{benchmark.cpu_model()}, load average {os.getloadavg()[0]:.2f}\n")
    print("| model | fwd µs/call | fwd × floor | fwd+bwd µs/call | fwd+bwd × floor |")
    print("|---|---|---|---|---|")
    for name in models:
        f, fb = res["fwd"][name], res["fwd+bwd"][name]
        print(f"| {name} | {f:.1f} | {f / res['fwd']['nn.Linear (floor)']:.2f}× | {fb:.1f} | "
              f"{fb / res['fwd+bwd']['nn.Linear (floor)']:.2f}× |")


if __name__ == "__main__":
    main()
