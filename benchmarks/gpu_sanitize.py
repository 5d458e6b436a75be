"""A small forward + backward through every CUDA regime, for compute-sanitizer (memcheck, racecheck).

    compute-sanitizer --tool memcheck python benchmarks/gpu_sanitize.py [DTYPE ...] [REGIME ...]

DTYPE (float32, bfloat16, float16, float64) and REGIME (auto, grid, step, gemm, resident) arguments limit the
run to those dtypes / regimes (default: all). The resident regimes take unpacked input only (float32
on the FFMA kernel, bfloat16 on the tensor-core kernel; float64 falls back to the automatic choice,
as the printed regime shows), so that regime runs unpacked.

The FUSED_RNN_CUDA_REGIME switch (set through fused_rnn._C.set_switch) forces the cooperative (grid)
and per-step (step) kernels, or the per-step GEMM path, at small sizes; each configuration also
checks its output against the CPU kernels, so a run that the sanitizer passes but that computes
garbage still fails (exit code 1).
"""
import sys

import torch

import fused_rnn


def main() -> int:
    assert torch.cuda.is_available() and fused_rnn.cuda_available(), "needs a GPU and a CUDA build"
    torch.manual_seed(0)
    failures = 0
    regimes = ("auto", "grid", "step", "gemm", "resident")  # resident: float32, float16, bfloat16
    dtypes = ("float32", "bfloat16", "float16", "float64")
    only_regimes = [a for a in sys.argv[1:] if a in regimes] or regimes
    only_dtypes = [a for a in sys.argv[1:] if a in dtypes] or dtypes
    for regime in only_regimes:
        fused_rnn._C.set_switch("FUSED_RNN_CUDA_REGIME", regime)  # the environment is read only at import
        for dtype, H in ((torch.float32, 33), (torch.bfloat16, 20), (torch.float16, 20), (torch.float64, 9)):
            if str(dtype).split(".")[-1] not in only_dtypes:
                continue
            rnn = fused_rnn.RNN(6, H, num_layers=2, bidirectional=True, dtype=dtype)
            lengths = torch.tensor([5, 3, 5, 1, 2])
            x = torch.randn(5, 5, 6, dtype=dtype)
            results = []
            for dev in ("cpu", "cuda"):
                m = rnn.to(dev)
                xd = x.to(dev).detach().requires_grad_()  # a fresh leaf per device
                if regime == "resident":
                    out, hn = m(xd)
                else:
                    out, hn = m(torch.nn.utils.rnn.pack_padded_sequence(xd, lengths, enforce_sorted=False))
                (out.data.float().square().sum() + hn.float().sum()).backward()
                results.append([out.data, hn, xd.grad] + [p.grad for p in m.parameters()])
                m.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 0.1, torch.float16: 0.02}[dtype]
            worst = max(((c.cpu().double() - g.double()).abs().max() / (1 + g.double().abs().max())).item()
                        for g, c in zip(*results))
            ok = worst <= tol
            failures += not ok
            print(f"regime={regime:8s} (ran {fused_rnn._C.last_cuda_regime():8s}) dtype={str(dtype):15s} H={H:3d} "
                  f"max rel. diff vs CPU {worst:.2e} {'ok' if ok else 'MISMATCH'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
