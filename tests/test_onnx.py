"""torch.onnx.export (the torch.export-based exporter) of models holding fused_rnn.RNN: the graph uses
ONNX's own RNN operator (one node per layer) and ONNX Runtime reproduces the PyTorch outputs.

Needs the optional packages onnx, onnxscript (used by torch.onnx.export) and onnxruntime.
"""
import pytest
import torch
from torch import nn

import fused_rnn

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx onnxscript onnxruntime)")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install onnx onnxscript onnxruntime)")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnx onnxscript "
                          "onnxruntime)")
if not hasattr(torch.onnx, "ops") or not hasattr(torch.onnx.ops, "symbolic_multi_out"):
    pytest.skip("torch.onnx.ops.symbolic_multi_out needs torch >= 2.8", allow_module_level=True)


class Head(nn.Module):
    """RNN (fused or nn) then Linear at every step; returns (logits [B, T, 3] or [T, B, 3], h_n)."""

    def __init__(self, rnn_cls, **kw):
        super().__init__()
        self.rnn = rnn_cls(5, 7, **kw)
        self.fc = nn.Linear(7 * (2 if kw.get("bidirectional") else 1), 3)

    def forward(self, x, hx=None):
        y, h = self.rnn(x, hx)
        return self.fc(y), h


def _export(model, args, **kw):
    return torch.onnx.export(model, args, dynamo=True, verbose=False, **kw).model_proto


def _run(proto, args):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)})


# (constructor kwargs, hx given): every option and both hx cases, in four exports.
CONFIGS = [
    (dict(), False),
    (dict(batch_first=True, nonlinearity="relu"), True),
    (dict(num_layers=2, bidirectional=True, bias=False), True),
    (dict(num_layers=3, batch_first=True, bidirectional=True, nonlinearity="relu"), False),
]


@pytest.mark.parametrize("kw,with_hx", CONFIGS,
                         ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default" if isinstance(c, dict)
                         else ("hx" if c else "no_hx"))
def test_export_uses_onnx_rnn_and_onnxruntime_matches(kw, with_hx):
    torch.manual_seed(0)
    model = Head(fused_rnn.RNN, **kw).eval()
    ref = Head(nn.RNN, **kw).eval()
    ref.load_state_dict(model.state_dict())
    L, D = kw.get("num_layers", 1), 2 if kw.get("bidirectional") else 1
    B, T = 3, 6
    x = torch.randn(B, T, 5) if kw.get("batch_first") else torch.randn(T, B, 5)
    args = (x, torch.randn(L * D, B, 7)) if with_hx else (x,)

    proto = _export(model, args)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("RNN") == L, ops
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}, "only standard ONNX operators"
    for node in proto.graph.node:
        if node.op_type == "RNN":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs["hidden_size"] == 7
            assert attrs["direction"] == (b"bidirectional" if D == 2 else b"forward")
            act = b"Relu" if kw.get("nonlinearity") == "relu" else b"Tanh"
            assert list(attrs["activations"]) == [act] * D

    got = _run(proto, args)
    with torch.no_grad():
        expected, from_nn = model(*args), ref(*args)
    assert len(got) == 2
    for g, e, r in zip(got, expected, from_nn):
        torch.testing.assert_close(torch.from_numpy(g), e, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.from_numpy(g), r, rtol=1e-5, atol=1e-5)

    # The ONNX path is taken only while exporting: afterwards the module runs the fused op and trains.
    out, _ = model.train()(*args)
    torch.testing.assert_close(out.detach(), expected[0], rtol=0, atol=0)
    out.sum().backward()
    assert model.rnn.weight_hh_l0.grad is not None


@pytest.mark.filterwarnings("ignore:# The axis name")
def test_dynamic_batch_and_time():
    """One exported graph serves other batch sizes and sequence lengths."""
    torch.manual_seed(0)
    model = fused_rnn.RNN(5, 7, num_layers=2, bidirectional=True, batch_first=True).eval()
    batch, time = torch.export.Dim("batch"), torch.export.Dim("time")
    proto = _export(model, (torch.randn(3, 4, 5), torch.randn(4, 3, 7)),
                    dynamic_shapes=({0: batch, 1: time}, {1: batch}))
    x, hx = torch.randn(6, 9, 5), torch.randn(4, 6, 7)
    got = _run(proto, (x, hx))
    with torch.no_grad():
        expected = model(x, hx)
    for g, e in zip(got, expected):
        assert g.shape == tuple(e.shape)
        torch.testing.assert_close(torch.from_numpy(g), e, rtol=1e-5, atol=1e-5)
