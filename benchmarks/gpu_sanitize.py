"""A small forward + backward through every CUDA regime, for compute-sanitizer (memcheck, racecheck).

    compute-sanitizer --tool memcheck python benchmarks/gpu_sanitize.py [DTYPE ...] [REGIME ...]
    python benchmarks/gpu_sanitize.py --list [DTYPE ...] [REGIME ...]     (the configurations; no GPU)

DTYPE (float32, bfloat16, float16, float64) and REGIME (auto, grid, step, gemm, resident, cluster)
arguments limit the run to those dtypes / regimes (default: all but cluster).

The FUSED_RNN_CUDA_REGIME switch (set through fused_rnn._C.set_switch) forces the cooperative (grid)
and per-step (step) kernels, or the per-step GEMM path, at small sizes, two layers, bidirectional,
packed input. The resident regimes take unpacked input only (float32 on the FFMA kernel, and with TF32
allowed on the tensor-core kernel; float16/bfloat16 on the tensor-core kernel; float64 falls back to
the automatic choice, as the printed regime shows).

`cluster` is the resident regime at the hidden sizes that need a thread-block cluster (sm_90): one
odd H in each cluster shape of each kernel (the FFMA kernel, TF32 and m16n8k16 on tensor cores),
each with the cluster barrier and with the exchange on mbarriers (FUSED_RNN_CUDA_CLUSTER_EXCHANGE).
There the regime that ran must be the cluster kernel expected (tests/test_resident_mapping.py checks
on the CPU that these sizes cover every cluster shape the launchers have), so that a run cannot pass
by having fallen back to another kernel. The tensor-core kernel records one name (resident_mma,
resident_tf32) for one CTA and for a cluster; every H here is above what one CTA holds (256 for
float16/bfloat16, 192 for TF32), so that name can only come from a cluster launch.

Every configuration also checks its output and gradients against the CPU kernels, so a run that the
sanitizer passes but that computes garbage still fails (exit code 1). float32 runs in IEEE fp32
unless the configuration says TF32 (torch.backends.cudnn.allow_tf32, nn.RNN's rule).
"""
import sys
from typing import NamedTuple, Optional

import torch

REGIMES = ("auto", "grid", "step", "gemm", "resident", "cluster")
DEFAULT_REGIMES = REGIMES[:-1]
DTYPES = ("float32", "bfloat16", "float16", "float64")

# max |CUDA - CPU| / (1 + max |CPU|) allowed, by the unit roundoff of the arithmetic (TF32 has
# float16's 10-bit mantissa)
TOLERANCE = {"float64": 1e-10, "float32": 1e-4, "tf32": 0.02, "bfloat16": 0.1, "float16": 0.02}


class Config(NamedTuple):
    regime: str  # FUSED_RNN_CUDA_REGIME (cluster: resident)
    dtype: str
    hidden: int
    layers: int
    packed: bool
    tf32: bool = False
    exchange: str = "barrier"  # FUSED_RNN_CUDA_CLUSTER_EXCHANGE
    expect: Optional[str] = None  # the regime that must run (last_cuda_regime()), where it is fixed

    @property
    def switch_regime(self) -> str:
        return "resident" if self.regime == "cluster" else self.regime

    @property
    def tolerance(self) -> float:
        return TOLERANCE["tf32" if self.tf32 else self.dtype]


# One odd H in each cluster shape (resident_layout.h: the FFMA kernel's clusters of 2 to H = 256 and
# of 8 to 512; mma_layout.h: TF32 clusters of 2 to 256 and of 8 to 512, m16n8k16 clusters of 4 to
# 512 and of 16 to 1024): (dtype, H, TF32, regime name with the cluster barrier)
CLUSTER_CASES = (
    ("float32", 201, False, "resident_cluster"),
    ("float32", 301, False, "resident_cluster"),
    ("float32", 201, True, "resident_tf32"),
    ("float32", 301, True, "resident_tf32"),
    ("bfloat16", 301, False, "resident_mma"),
    ("bfloat16", 601, False, "resident_mma"),
    ("float16", 301, False, "resident_mma"),
    ("float16", 601, False, "resident_mma"),
)


def configs(regimes=DEFAULT_REGIMES, dtypes=DTYPES):
    out = []
    for regime in regimes:
        if regime == "cluster":
            for exchange in ("barrier", "mbarrier"):
                for dtype, H, tf32, name in CLUSTER_CASES:
                    expect = name + ("_mbarrier" if exchange == "mbarrier" else "")
                    out.append(Config("cluster", dtype, H, 1, False, tf32, exchange, expect))
            continue
        for dtype, H in (("float32", 33), ("bfloat16", 20), ("float16", 20), ("float64", 9)):
            out.append(Config(regime, dtype, H, 2, regime != "resident"))
            if regime == "resident" and dtype == "float32":
                out.append(Config(regime, dtype, H, 2, False, tf32=True))  # the TF32 tensor-core kernel
    return [c for c in out if c.dtype in dtypes]


def run(config, fused_rnn) -> bool:
    fused_rnn._C.set_switch("FUSED_RNN_CUDA_REGIME", config.switch_regime)  # the environment is read only at import
    fused_rnn._C.set_switch("FUSED_RNN_CUDA_CLUSTER_EXCHANGE", config.exchange)
    torch.backends.cudnn.allow_tf32 = config.tf32
    dtype = getattr(torch, config.dtype)
    rnn = fused_rnn.RNN(6, config.hidden, num_layers=config.layers, bidirectional=True, dtype=dtype)
    lengths = torch.tensor([5, 3, 5, 1, 2])
    x = torch.randn(5, 5, 6, dtype=dtype)
    results = []
    ran = None
    for dev in ("cpu", "cuda"):
        m = rnn.to(dev)
        xd = x.to(dev).detach().requires_grad_()  # a fresh leaf per device
        if config.packed:
            out, hn = m(torch.nn.utils.rnn.pack_padded_sequence(xd, lengths, enforce_sorted=False))
        else:
            out, hn = m(xd)
        if dev == "cuda":
            ran = fused_rnn._C.last_cuda_regime()  # the forward's (the backward runs on autograd's thread)
        out = out.data if config.packed else out  # (.data of a plain tensor would detach it)
        (out.float().square().sum() + hn.float().sum()).backward()
        results.append([out, hn, xd.grad] + [p.grad for p in m.parameters()])
        m.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    worst = max(((c.cpu().double() - g.double()).abs().max() / (1 + g.double().abs().max())).item()
                for g, c in zip(*results))
    ok = worst <= config.tolerance
    right_kernel = config.expect is None or ran == config.expect
    print(f"regime={config.regime:8s} (ran {ran:25s}) dtype={config.dtype:8s} H={config.hidden:3d} "
          f"tf32={'on ' if config.tf32 else 'off'} exchange={config.exchange:8s} "
          f"max rel. diff vs CPU {worst:.2e} {'ok' if ok else 'MISMATCH'}"
          + ("" if right_kernel else f" WRONG KERNEL (expected {config.expect})"), flush=True)
    return ok and right_kernel


def main(argv) -> int:
    regimes = [a for a in argv if a in REGIMES] or DEFAULT_REGIMES
    dtypes = [a for a in argv if a in DTYPES] or DTYPES
    unknown = [a for a in argv if a not in REGIMES + DTYPES + ("--list",)]
    if unknown:
        print(f"unknown arguments {unknown}: expected {REGIMES}, {DTYPES} or --list", file=sys.stderr)
        return 2
    todo = configs(regimes, dtypes)
    if "--list" in argv:
        for c in todo:
            print(c)
        return 0
    import fused_rnn

    assert torch.cuda.is_available() and fused_rnn.cuda_available(), "needs a GPU and a CUDA build"
    torch.manual_seed(0)
    failures = sum(not run(c, fused_rnn) for c in todo)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
