"""What the routes beyond first-order reverse mode cost, against nn.RNN doing the same (CPU).

fused_rnn runs torch.func transforms, forward-mode AD and create_graph backward through its composite
formulation (csrc/rnn_composite.cpp), not the fused kernels; this times each of those against nn.RNN
on the same weights, interleaved, median of many samples. It also times the copy of `output` that
the CPU training path keeps so that an in-place change of the output before backward works as with
nn.RNN, against the whole forward + backward.

    python benchmarks/composite_cost.py [--threads 2] [--out FILE.md]
"""
import argparse
import statistics
import time

import torch
import torch.func as tf
from torch import nn

import fused_rnn

SHAPES = [  # B, T, I, H
    (3, 4, 10, 20),
    (32, 128, 64, 128),
]


def median_time(fns, repeats, min_samples=5):
    """Interleaved samples of each fn; returns the median seconds per call of each."""
    samples = [[] for _ in fns]
    for _ in range(max(min_samples, repeats)):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            samples[i].append(time.perf_counter() - t0)
    return [statistics.median(s) for s in samples]


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
    p.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lines = [f"torch {torch.__version__}, fused_rnn {fused_rnn.__version__}, {args.threads} threads, float32, CPU",
             "", "| B | T | I | H | task | nn.RNN ms | fused ms | fused / nn.RNN |", "|---|---|---|---|---|---|---|---|"]
    clone_lines = ["", "| B | T | I | H | fused fwd+bwd ms | copy of output ms | share |", "|---|---|---|---|---|---|---|"]
    for B, T, I, H in SHAPES:
        ref = nn.RNN(I, H)
        fused = fused_rnn.RNN(I, H)
        fused.load_state_dict(ref.state_dict())
        x, h = torch.randn(T, B, I), torch.randn(1, B, H)
        ref_tasks, fused_tasks = tasks(ref, x, h), tasks(fused, x, h)
        repeats = 200 if B * T * H < 10**5 else 20
        for name in ref_tasks:
            for fn in (ref_tasks[name], fused_tasks[name]):
                fn()  # warm-up
            t_ref, t_fused = median_time([ref_tasks[name], fused_tasks[name]], repeats)
            lines.append(f"| {B} | {T} | {I} | {H} | {name} | {t_ref * 1e3:.3f} | {t_fused * 1e3:.3f} | "
                         f"{t_fused / t_ref:.2f} |")
        out = fused(x, h)[0].detach()
        t_step, t_copy = median_time([fused_tasks["fwd+bwd"], out.clone], repeats)
        clone_lines.append(f"| {B} | {T} | {I} | {H} | {t_step * 1e3:.3f} | {t_copy * 1e3:.4f} | "
                           f"{100 * t_copy / t_step:.1f} % |")
    text = "\n".join(lines + clone_lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
