"""fused_rnn: a drop-in torch.nn.RNN whose whole recurrence runs in one fused C++/CUDA kernel."""
from . import ops  # noqa: F401  (loads the C++ library and registers fake kernels and autograd)
from .functional import rnn
from .modules import RNN, convert

__all__ = ["RNN", "convert", "rnn", "cuda_available", "__version__"]
__version__ = "0.1.0"


def cuda_available() -> bool:
    """True if this build has the CUDA kernels (whether a GPU is present is torch.cuda's business)."""
    return ops.with_cuda()
