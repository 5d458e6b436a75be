"""One forward per regime-representative shape, for Nsight Compute (stall reasons of the recurrence kernel).

    ncu --clock-control none --kernel-name regex:'recurrence_kernel|resident_' --launch-count 9 \\
        --section SpeedOfLight --section WarpStateStats --section SchedulerStats python benchmarks/gpu_profile.py

Shapes (B, H, dtype): the Single regime at small H (latency bound), the Grid regime where it trails
cuDNN (H = 256 float32 does not fit one CTA's shared memory) and in the B <= 64, H = 1024 goal region,
and the Single regime at H = 256 in bfloat16; then the resident regimes forced (FFMA at B1 H64 and
B64 H128 float32, in clusters of 2 at B64 H256 float32, tensor cores at B64 H256 float16 and in
clusters of 16 at B64 H1024 float16). T = 32: a profile needs steps, not a long
sequence.
"""
import torch

import fused_rnn

SHAPES = [(1, 64, torch.float32), (64, 256, torch.float32), (8, 1024, torch.float32), (64, 256, torch.bfloat16)]
# The resident regimes (forced; opt-in until validated): the FFMA kernel and the tensor-core kernel.
RESIDENT_SHAPES = [(1, 64, torch.float32), (64, 128, torch.float32), (64, 256, torch.float32), (64, 256, torch.float16),
                   (64, 1024, torch.float16)]


def main():
    assert torch.cuda.is_available() and fused_rnn.cuda_available(), "needs a GPU and a CUDA build"
    torch.manual_seed(0)
    for regime, shapes in (("auto", SHAPES), ("resident", RESIDENT_SHAPES)):
        fused_rnn._C.set_switch("FUSED_RNN_CUDA_REGIME", regime)
        for B, H, dtype in shapes:
            rnn = fused_rnn.RNN(H, H, device="cuda", dtype=dtype)
            x = torch.randn(32, B, H, device="cuda", dtype=dtype)
            with torch.no_grad():
                rnn(x)
            torch.cuda.synchronize()
            print(f"profiled forward B={B} H={H} {dtype} regime {fused_rnn._C.last_cuda_regime()}")


if __name__ == "__main__":
    main()
