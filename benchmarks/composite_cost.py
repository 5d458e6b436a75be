"""What the routes beyond first-order reverse mode cost, against nn.RNN doing the same (CPU).

fused_rnn runs torch.func transforms, forward-mode AD and create_graph backward through its composite
formulation (csrc/rnn_composite.cpp), not the fused kernels; this times each of those against nn.RNN
on the same weights with benchmark.py's method (warm-up, interleaved rounds, median). It also times the copy of `output` that
the CPU training path keeps so that an in-place change of the output before backward works as with
nn.RNN, against the whole forward + backward.

    python benchmarks/composite_cost.py [--threads 2] [--min-time 0.5] [--out FILE.md]
"""
import argparse
import os
import sys

import torch
import torch.func as tf
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark  # noqa: E402  (Timer, measure: one timing method for all scripts)

import fused_rnn  # noqa: E402

SHAPES = [  # B, T, I, H
    (3, 4, 10, 20),
    (32, 128, 64, 128),
]


def tasks(m, x, h):
    params = {k: v.detach() for k, v in m.named_parameters()}

    def loss(p, x):
        out, hn = tf.functional_call(m, p, (x, h))
        return out.sin().sum() + hn.sum()

    def fwd_bwd():
        xx = x.clone().requires_grad_()
        out, hn = m(xx, h)
        (out.sin().sum() + hn.sum()).backward()

    def double_backward():
        xx = x.clone().requires_grad_()
        out, hn = m(xx, h)
        g, = torch.autograd.grad(out.sin().sum() + hn.sum(), xx, create_graph=True)
        g.pow(2).sum().backward()

    return {
        "fwd+bwd": fwd_bwd,
        "double backward": double_backward,
        "torch.func.grad": lambda: tf.grad(loss)(params, x),
        "torch.func.jvp": lambda: tf.jvp(lambda x: loss(params, x), (x,), (torch.ones_like(x),)),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-time", type=float, default=0.5, help="seconds of samples per candidate")
    p.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    timer = benchmark.Timer("cpu")
    cfg = {"target_s": args.min_time, "sample_s": 5e-3, "min_rounds": 9, "max_rounds": 400,
           "warmup_s": args.min_time / 2, "warmup_calls": 3, "max_s": 60.0}
    lines = [f"torch {torch.__version__}, fused_rnn {fused_rnn.__version__}, {args.threads} threads, float32, CPU",
             "", "| B | T | I | H | task | nn.RNN ms | fused ms | fused / nn.RNN |", "|---|---|---|---|---|---|---|---|"]
    clone_lines = ["", "| B | T | I | H | fused fwd+bwd ms | copy of output ms | share |", "|---|---|---|---|---|---|---|"]
    for B, T, I, H in SHAPES:
        ref = nn.RNN(I, H)
        fused = fused_rnn.RNN(I, H)
        fused.load_state_dict(ref.state_dict())
        x, h = torch.randn(T, B, I), torch.randn(1, B, H)
        ref_tasks, fused_tasks = tasks(ref, x, h), tasks(fused, x, h)
        for name in ref_tasks:
            r = benchmark.measure({"nn.RNN": ref_tasks[name], "fused": fused_tasks[name]}, timer, cfg)
            t_ref, t_fused = r["nn.RNN"]["median_s"], r["fused"]["median_s"]
            lines.append(f"| {B} | {T} | {I} | {H} | {name} | {t_ref * 1e3:.3f} | {t_fused * 1e3:.3f} | "
                         f"{t_fused / t_ref:.2f} |")
        out = fused(x, h)[0].detach()
        r = benchmark.measure({"step": fused_tasks["fwd+bwd"], "copy": out.clone}, timer, cfg)
        t_step, t_copy = r["step"]["median_s"], r["copy"]["median_s"]
        clone_lines.append(f"| {B} | {T} | {I} | {H} | {t_step * 1e3:.3f} | {t_copy * 1e3:.4f} | "
                           f"{100 * t_copy / t_step:.1f} % |")
    text = "\n".join(lines + clone_lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
