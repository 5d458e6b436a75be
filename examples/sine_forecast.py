"""Many-to-many use of fused_rnn.RNN: an output at every step. The input is a noisy sine wave of
random frequency, amplitude and phase; at every step t the model predicts the clean wave one step
ahead, s(t + 1), from the noisy samples up to t (denoising plus one-step forecasting). Data are
generated here; no download.

    pip install matplotlib
    python examples/sine_forecast.py [--device cuda]

Prints the test MSE against two baselines and saves a PNG of prediction against truth (--out).
"""
import argparse
import math
import os
import time

import matplotlib
import torch
from torch import nn

import fused_rnn

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def make_waves(n, steps, noise, generator):
    """noisy [n, steps, 1] and clean one-step-ahead targets [n, steps, 1]."""
    freq = torch.empty(n, 1).uniform_(0.04, 0.12, generator=generator) * 2 * math.pi  # radians per step
    amp = torch.empty(n, 1).uniform_(0.5, 1.5, generator=generator)
    phase = torch.empty(n, 1).uniform_(0, 2 * math.pi, generator=generator)
    t = torch.arange(steps + 1, dtype=torch.float32)
    clean = amp * torch.sin(freq * t + phase)                  # [n, steps + 1]
    noisy = clean[:, :-1] + noise * torch.randn(n, steps, generator=generator)
    return noisy.unsqueeze(-1), clean[:, 1:].unsqueeze(-1)


class Forecaster(nn.Module):
    """x [B, T, 1] -> prediction [B, T, 1]: a 2-layer fused RNN, then Linear at every step."""

    def __init__(self, hidden_size=32):
        super().__init__()
        self.rnn = fused_rnn.RNN(1, hidden_size, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, x):
        out, _ = self.rnn(x)  # [B, T, H]: every step's output
        return self.head(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=400, help="training steps")
    p.add_argument("--noise", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (small model: 1 is fastest)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "sine_forecast.png"))
    args = p.parse_args()
    if args.device.startswith("cuda") and not (torch.cuda.is_available() and fused_rnn.cuda_available()):
        p.error("--device cuda needs a GPU and a CUDA build of fused_rnn")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    x_tr, y_tr = (t.to(args.device) for t in make_waves(2048, 100, args.noise, gen))
    x_te, y_te = (t.to(args.device) for t in make_waves(256, 200, args.noise, gen))  # longer than training

    model = Forecaster().to(args.device)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    start = time.perf_counter()
    for step in range(args.steps):
        idx = torch.randint(len(x_tr), (64,), generator=gen).to(args.device)
        loss = nn.functional.mse_loss(model(x_tr[idx]), y_tr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  train MSE {loss.item():.4f}")
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.1f} s")

    model.eval()
    with torch.no_grad():
        pred = model(x_te)
    warm = 10  # the first steps have too little history to know the frequency
    mse = nn.functional.mse_loss(pred[:, warm:], y_te[:, warm:]).item()
    naive = nn.functional.mse_loss(x_te[:, warm:], y_te[:, warm:]).item()  # "next = current noisy sample"
    print(f"test MSE (steps >= {warm}): model {mse:.4f} | repeat the noisy input {naive:.4f} | "
          f"noise variance {args.noise ** 2:.4f}")
    assert mse < naive, "the model should beat repeating the noisy input"

    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    for ax, i in zip(axes, range(3)):
        ax.plot(x_te[i, :, 0].cpu(), ".", ms=3, color="0.6", label="noisy input x(t)")
        ax.plot(y_te[i, :, 0].cpu(), color="k", lw=1.5, label="truth s(t+1)")
        ax.plot(pred[i, :, 0].cpu(), color="tab:red", lw=1.2, label="prediction at step t")
    axes[0].set_title(f"fused_rnn.RNN many-to-many forecast (test sequences, 2x longer than training); "
                      f"MSE {mse:.4f} vs {naive:.4f}")
    axes[0].legend(loc="upper right", ncol=3, fontsize=8)
    axes[-1].set_xlabel("step t")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
