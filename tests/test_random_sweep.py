"""Seeded random sweep (property-based style, no hypothesis): fused_rnn.RNN against torch.nn.RNN with the
same state_dict over random configurations (T, B, I, H, layers, directions, bias, nonlinearity,
batch_first, dtype, packed or not, hx or not, input layout, train/eval). Output, h_n and the gradients
of input, hx and every parameter under a random upstream gradient agree within conftest.TOL; a subset
also checks the functional form against fused_rnn.reference.rnn_reference.

Every configuration is drawn from random.Random(seed) alone, and its test id starts with the seed:
`pytest tests/test_random_sweep.py -k s17-` reruns one.

Shapes: T steps, B batch, I input size, H hidden size, D directions, L layers.
"""
import random
from dataclasses import dataclass
from typing import Optional, Tuple

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn
from conftest import assert_same_results, fwd_bwd, twins
from fused_rnn.reference import rnn_reference

SEEDS = range(80)
LAYOUTS = ("contiguous", "transposed", "strided", "expanded")


@dataclass(frozen=True)
class Config:
    seed: int
    T: int
    B: int
    I: int
    H: int
    L: int
    bidirectional: bool
    bias: bool
    nonlinearity: str
    batch_first: bool
    dtype: torch.dtype
    packed: bool
    enforce_sorted: bool
    lengths: Optional[Tuple[int, ...]]
    with_hx: bool
    layout: str
    hx_transposed: bool
    dropout: float
    training: bool
    check_reference: bool

    @property
    def D(self):
        return 2 if self.bidirectional else 1

    def id(self):
        parts = [f"s{self.seed}", f"T{self.T}B{self.B}I{self.I}H{self.H}L{self.L}",
                 "bi" if self.bidirectional else "uni", self.nonlinearity]
        parts += [] if self.bias else ["nobias"]
        parts += ["bf"] if self.batch_first and not self.packed else []
        parts += ["f32" if self.dtype == torch.float32 else "f64"]
        if self.packed:
            parts += ["packed" + ("sorted" if self.enforce_sorted else "unsorted") + "".join(map(str, self.lengths))]
        parts += ["hx" + ("T" if self.hx_transposed else "")] if self.with_hx else []
        parts += [self.layout]
        parts += [f"drop{self.dropout}"] if self.dropout else []
        parts += ["train" if self.training else "eval"]
        parts += ["ref"] if self.check_reference else []
        return "-".join(parts)


def draw(seed: int) -> Config:
    r = random.Random(seed)
    packed = r.random() < 0.3
    T = r.randint(1, 6)
    B = r.randint(1, 4) if packed else (0 if r.random() < 0.08 else r.randint(1, 4))
    I, H, L = r.randint(1, 6), r.randint(1, 6), r.randint(1, 3)
    bidirectional, bias = r.random() < 0.5, r.random() < 0.75
    nonlinearity = r.choice(["tanh", "relu"])
    batch_first = r.random() < 0.4
    dtype = torch.float32 if r.random() < 0.2 else torch.float64
    enforce_sorted, lengths = False, None
    if packed:
        enforce_sorted = r.random() < 0.5
        lengths = [r.randint(1, T) for _ in range(B)]
        lengths[r.randrange(B)] = T  # the longest sequence sets T
        if enforce_sorted:
            lengths.sort(reverse=True)
        lengths = tuple(lengths)
    with_hx = r.random() < 0.6
    layout = r.choice(LAYOUTS)
    hx_transposed = with_hx and r.random() < 0.3
    # Dropout only in eval mode (no effect): its random stream differs from nn.RNN's by design.
    dropout = r.choice([0.0, 0.0, 0.4]) if L > 1 else 0.0
    training = dropout == 0 and r.random() < 0.5
    check_reference = r.random() < 0.3
    return Config(seed, T, B, I, H, L, bidirectional, bias, nonlinearity, batch_first, dtype, packed, enforce_sorted,
                  lengths, with_hx, layout, hx_transposed, dropout, training, check_reference)


CONFIGS = [draw(seed) for seed in SEEDS]


def relayout(values: torch.Tensor, layout: str, gen: torch.Generator):
    """(base, view): base a contiguous tensor, view(base) a tensor of values' shape in the given layout
    with values' values (expanded: values' first element along the expanded dimension, broadcast)."""
    shape = values.shape
    if layout == "contiguous":
        return values.clone(), lambda b: b
    if layout == "transposed":
        return values.transpose(0, 1).contiguous(), lambda b: b.transpose(0, 1)
    if layout == "strided":
        dim = torch.randint(values.dim(), (), generator=gen).item()
        big = list(shape)
        big[dim] *= 2
        base = torch.randn(big, generator=gen, dtype=torch.float64).to(values.dtype)
        index = [slice(None)] * values.dim()
        index[dim] = slice(1, None, 2)
        base[tuple(index)] = values
        return base, lambda b: b[tuple(index)]
    # expanded: a size-1 dimension broadcast to its full size (zero stride)
    dims = [d for d in range(values.dim() - 1) if shape[d] > 0]  # not the feature dimension, not an empty one
    dim = dims[torch.randint(len(dims), (), generator=gen).item()]
    return values.narrow(dim, 0, 1).clone(), lambda b: b.expand(shape)


def make_inputs(cfg: Config):
    """Deterministic data for cfg: (x_base, x_view, make_input(view_tensor), hx_base, hx_view, g_out, g_hn)."""
    gen = torch.Generator().manual_seed(10_000 + cfg.seed)
    dt = cfg.dtype

    def randn(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dt)

    if cfg.packed:
        meta = pack_padded_sequence(torch.zeros(cfg.T, cfg.B, 1), torch.tensor(cfg.lengths),
                                    enforce_sorted=cfg.enforce_sorted)
        N = int(meta.batch_sizes.sum())
        values = randn(N, cfg.I)

        def wrap(data):
            return PackedSequence(data, meta.batch_sizes, meta.sorted_indices, meta.unsorted_indices)
        out_shape = (N, cfg.D * cfg.H)
    else:
        shape = (cfg.B, cfg.T, cfg.I) if cfg.batch_first else (cfg.T, cfg.B, cfg.I)
        values = randn(*shape)

        def wrap(data):
            return data
        out_shape = shape[:2] + (cfg.D * cfg.H,)
    x_base, x_view = relayout(values, cfg.layout, gen)
    hx_base = hx_view = None
    if cfg.with_hx:
        hx_values = randn(cfg.L * cfg.D, cfg.B, cfg.H)
        hx_base, hx_view = relayout(hx_values, "transposed" if cfg.hx_transposed else "contiguous", gen)
    g_out = randn(*out_shape)
    g_hn = randn(cfg.L * cfg.D, cfg.B, cfg.H)
    return x_base, x_view, wrap, hx_base, hx_view, g_out, g_hn


def fwd_bwd_cfg(module, cfg, inputs):
    """fwd_bwd of module in cfg's train/eval mode on fresh leaves of the bases, seen through their
    views: the gradients are those of the bases."""
    x_base, x_view, wrap, hx_base, hx_view, g_out, g_hn = inputs
    module.train(cfg.training)
    leaves = {"input": x_base.clone().requires_grad_()}
    hx = None
    if cfg.with_hx:
        leaves["hx"] = hx_base.clone().requires_grad_()
        hx = hx_view(leaves["hx"])
    return fwd_bwd(module, wrap(x_view(leaves["input"])), hx, leaves, upstream_grads=(g_out, g_hn))


@pytest.mark.parametrize("cfg", CONFIGS, ids=[c.id() for c in CONFIGS])
def test_against_nn_rnn(cfg):
    torch.manual_seed(cfg.seed)
    ref, fused = twins(cfg.I, cfg.H, cfg.L, nonlinearity=cfg.nonlinearity, bias=cfg.bias, batch_first=cfg.batch_first,
                       dropout=cfg.dropout, bidirectional=cfg.bidirectional, dtype=cfg.dtype)
    inputs = make_inputs(cfg)
    assert_same_results(fwd_bwd_cfg(ref, cfg, inputs), fwd_bwd_cfg(fused, cfg, inputs), cfg.dtype)


REFERENCE_CONFIGS = [c for c in CONFIGS if c.check_reference]


@pytest.mark.parametrize("cfg", REFERENCE_CONFIGS, ids=[c.id() for c in REFERENCE_CONFIGS])
def test_functional_against_reference(cfg):
    """fused_rnn.rnn (the functional form) against the step-by-step reference: forward and gradients."""
    torch.manual_seed(cfg.seed)
    module = fused_rnn.RNN(cfg.I, cfg.H, cfg.L, nonlinearity=cfg.nonlinearity, bias=cfg.bias,
                           bidirectional=cfg.bidirectional, dtype=cfg.dtype)
    x_base, x_view, wrap, hx_base, hx_view, g_out, g_hn = make_inputs(cfg)
    batch_sizes = wrap(x_view(x_base)).batch_sizes if cfg.packed else None
    batch_first = cfg.batch_first and not cfg.packed
    hx_values = hx_view(hx_base) if cfg.with_hx else None

    def run(kind):
        xb = x_base.clone().requires_grad_()
        x = x_view(xb)
        weights = [p.detach().clone().requires_grad_() for p in module.parameters()]
        hb = None if hx_values is None else hx_values.detach().clone().requires_grad_()
        if kind == "fused":
            out, hn = fused_rnn.rnn(x, hb, weights, num_layers=cfg.L, nonlinearity=cfg.nonlinearity, bias=cfg.bias,
                                    batch_first=batch_first, bidirectional=cfg.bidirectional, batch_sizes=batch_sizes)
        else:
            h0 = hb
            if h0 is None:
                rows = cfg.B if batch_sizes is None else int(batch_sizes[0])
                h0 = torch.zeros(cfg.L * cfg.D, rows, cfg.H, dtype=cfg.dtype)
            out, hn = rnn_reference(x.transpose(0, 1) if batch_first else x, h0, weights, batch_sizes, None, cfg.L,
                                    cfg.bidirectional, cfg.nonlinearity == "relu", cfg.bias)
            if batch_first:
                out = out.transpose(0, 1)
        ((out * g_out).sum() + (hn * g_hn).sum()).backward()
        res = {"output": out, "h_n": hn, "grad:input": xb.grad}
        if hb is not None:
            res["grad:hx"] = hb.grad
        res.update({f"grad:w{i}": w.grad for i, w in enumerate(weights)})
        return res

    assert_same_results(run("reference"), run("fused"), cfg.dtype)
