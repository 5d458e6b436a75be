"""torch.compile(fullgraph=True) of fused_rnn.RNN for inference and training (static and dynamic
shapes), and torch.export of a model that holds one. Few compiled graphs: compiling is slow here."""
import copy
from typing import Optional

import pytest
import torch
from torch import nn

import fused_rnn
from conftest import TOL, assert_close_scaled


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = fused_rnn.RNN(4, 8, 2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x, hx):
        y, hn = self.rnn(x, hx)
        return self.head(y), hn


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_compile_fullgraph_inference_and_training():
    model = Tagger()
    compiled = torch.compile(model, fullgraph=True)
    x, hx = torch.randn(3, 5, 4), torch.randn(4, 3, 8)
    with torch.no_grad():
        want = model(x, hx)
        got = compiled(x, hx)
    for a, b in zip(got, want):
        assert_close_scaled(a, b, torch.float32)

    # Training step: loss.backward through the compiled graph gives eager's gradients.
    xg = x.clone().requires_grad_()
    out, hn = model(xg, hx)
    (out.square().sum() + hn.sum()).backward()
    want_grads, want_x = _grads(model), xg.grad.clone()
    model.zero_grad()
    xg.grad = None
    out, hn = compiled(xg, hx)
    (out.square().sum() + hn.sum()).backward()
    assert_close_scaled(xg.grad, want_x, torch.float32)
    for n, g in _grads(model).items():
        assert_close_scaled(g, want_grads[n], torch.float32, msg=lambda m, n=n: f"{n}: {m}")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.rnn.weight_hh_l0.detach().clone()
    opt.step()
    assert not torch.equal(before, model.rnn.weight_hh_l0)


def test_compile_dynamic_shapes_training():
    model = fused_rnn.RNN(3, 6, 2, nonlinearity="relu", dtype=torch.float64)
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    torch._dynamo.utils.counters.clear()
    for T, B in ((5, 2), (9, 4), (1, 7)):
        x = torch.randn(T, B, 3, dtype=torch.float64, requires_grad=True)
        out, hn = compiled(x)
        assert out.shape == (T, B, 6) and hn.shape == (2, B, 6)
        out.sum().backward()
        got_x, got_w = x.grad.clone(), model.weight_hh_l0.grad.clone()
        model.zero_grad()
        x.grad = None
        want_out, want_hn = model(x)
        want_out.sum().backward()
        torch.testing.assert_close(out, want_out, **TOL[torch.float64])
        torch.testing.assert_close(hn, want_hn, **TOL[torch.float64])
        torch.testing.assert_close(got_x, x.grad, **TOL[torch.float64])
        torch.testing.assert_close(got_w, model.weight_hh_l0.grad, **TOL[torch.float64])
        model.zero_grad()
        if B == 4:  # the second shape reused the first graph
            assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_export_and_run():
    model = Tagger().eval()
    x, hx = torch.randn(2, 6, 4), torch.randn(4, 2, 8)
    T = torch.export.Dim("T", min=2, max=64)
    ep = torch.export.export(model, (x, hx), dynamic_shapes={"x": {1: T}, "hx": None})
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any("fused_rnn.rnn_forward" in t for t in targets), targets
    x2, hx2 = torch.randn(2, 11, 4), torch.randn(4, 2, 8)  # another sequence length
    for a, b in zip(ep.module()(x2, hx2), model(x2, hx2)):
        assert_close_scaled(a, b, torch.float32)


def test_jit_trace_without_hx_runs_at_other_batch_sizes():
    """torch.jit.trace of a model that omits hx: the zero initial state is traced from the input's
    batch (input.shape[1], or batch_sizes[0] when packed), as nn.RNN's is, not recorded as a
    constant, so the trace runs at other batch sizes and sequence lengths."""
    import warnings

    from torch.nn.utils.rnn import PackedSequence, pack_sequence

    torch.manual_seed(0)
    ref = nn.RNN(3, 4, 2, bidirectional=True, dtype=torch.float64).eval()
    fused = fused_rnn.RNN.from_torch(ref)

    class Packed(nn.Module):  # jit.trace takes tensors: the PackedSequence is built inside
        def __init__(self, rnn):
            super().__init__()
            self.rnn = rnn

        def forward(self, data, batch_sizes):
            out, hn = self.rnn(PackedSequence(data, batch_sizes))
            return out.data, hn

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about Python values
        traced = torch.jit.trace(fused, (torch.randn(5, 2, 3, dtype=torch.float64),))
        p = pack_sequence([torch.randn(4, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)])
        traced_packed = torch.jit.trace(Packed(fused), (p.data, p.batch_sizes), check_trace=False)
    for T, B in ((7, 6), (2, 1)):
        x = torch.randn(T, B, 3, dtype=torch.float64)
        for got, want in zip(traced(x), ref(x)):
            torch.testing.assert_close(got, want, **TOL[torch.float64])
    p = pack_sequence([torch.randn(n, 3, dtype=torch.float64) for n in (6, 5, 5, 2)])
    out, hn = traced_packed(p.data, p.batch_sizes)
    want_out, want_hn = ref(p)
    torch.testing.assert_close(out, want_out.data, **TOL[torch.float64])
    torch.testing.assert_close(hn, want_hn, **TOL[torch.float64])


def test_fx_symbolic_trace_records_the_module_as_nn_rnn_is_recorded():
    """torch.fx.symbolic_trace of a model holding fused_rnn.RNN records one call_module node for it, as
    for nn.RNN (a leaf module, being in torch.nn), with hx or without, and the GraphModule computes
    what the model computes (FX-based tooling works on converted models)."""
    class Model(nn.Module):
        def __init__(self, rnn):
            super().__init__()
            self.rnn = rnn
            self.fc = nn.Linear(8, 2, dtype=torch.float64)

        def forward(self, x, h):
            out, _ = self.rnn(x)
            out2, hn = self.rnn(x, h)
            return self.fc(out[-1] + out2[0]), hn

    torch.manual_seed(0)
    ref = Model(nn.RNN(3, 4, bidirectional=True, dtype=torch.float64))
    fused = Model(fused_rnn.RNN.from_torch(ref.rnn))
    fused.fc = ref.fc
    graphs = [torch.fx.symbolic_trace(m) for m in (ref, fused)]
    calls = [[(n.target, len(n.args)) for n in g.graph.nodes if n.op == "call_module"] for g in graphs]
    assert calls[1] == calls[0] == [("rnn", 1), ("rnn", 2), ("fc", 1)]
    x, h = torch.randn(5, 2, 3, dtype=torch.float64), torch.randn(2, 2, 4, dtype=torch.float64)
    for got, want in zip(graphs[1](x, h), ref(x, h)):
        torch.testing.assert_close(got, want, **TOL[torch.float64])


@pytest.mark.parametrize("x_grad", [True, False])
def test_compiled_autograd_gives_nn_rnn_gradients_with_one_capture(x_grad):
    """Compiled autograd (torch.compile of the backward graph): nn.RNN's gradients, and one capture
    over several optimizer steps (the versions of the arguments the backward does not read are lifted
    inputs of the captured graph, not part of its cache key). Used to fail: CppNode's compiled_args
    refuses a C++ Function that marked an output non-differentiable."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    ref = nn.RNN(3, 4, 2, bidirectional=True, dtype=torch.float64)
    fused = fused_rnn.RNN.from_torch(copy.deepcopy(ref))
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (ref, fused)]
    counters.clear()
    for _ in range(3):
        x = torch.randn(5, 2, 3, dtype=torch.float64)
        grads = []
        for m, opt, compiled in ((ref, opts[0], False), (fused, opts[1], True)):
            xi = x.clone().requires_grad_(x_grad)
            if compiled:
                with torch._dynamo.compiled_autograd._enable(torch.compile(backend="eager")):
                    out, hn = m(xi)
                    (out.sin().sum() + hn.sum()).backward()
            else:
                out, hn = m(xi)
                (out.sin().sum() + hn.sum()).backward()
            grads.append([p.grad.clone() for p in m.parameters()] + ([xi.grad] if x_grad else []))
            opt.step()
            opt.zero_grad()
        for want, got in zip(*grads):
            torch.testing.assert_close(got, want, **TOL[torch.float64])
    assert counters["compiled_autograd"]["captures"] == 1


def test_jit_script_of_a_model_holding_the_rnn():
    """torch.jit.script of a model that holds fused_rnn.RNN (the module's forward compiles to
    fused_rnn/scripting.py's ScriptedForward._script_forward): nn.RNN's outputs and gradients, batched, batch_first, unbatched, with
    and without hx; the same parameters (state_dict keys, an optimizer on the original trains the
    scripted model); dropout in training draws the eager module's masks; nn.RNN's checks; and a
    save / load round trip."""
    import io
    import warnings

    class SimpleRNN(nn.Module):
        def __init__(self, rnn):
            super().__init__()
            self.rnn = rnn
            self.fc = nn.Linear(8, 5, dtype=torch.float64)

        def forward(self, x, h: Optional[torch.Tensor] = None):
            out, hn = self.rnn(x, h)
            return self.fc(out), hn

    torch.manual_seed(0)
    ref = SimpleRNN(nn.RNN(3, 4, 2, batch_first=True, bidirectional=True, dropout=0.5, dtype=torch.float64))
    eager = copy.deepcopy(ref)
    eager.rnn = fused_rnn.RNN.from_torch(eager.rnn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated in torch >= 2.10
        scripted = torch.jit.script(eager)
    assert list(scripted.state_dict()) == list(ref.state_dict())
    assert all(a is b for a, b in zip(scripted.parameters(), eager.parameters()))
    # torch.jit.script writes what __prepare_scriptable__ returns back into the model: the module itself,
    # so the eager model keeps its fused_rnn.RNN (packed input and all)
    assert type(eager.rnn) is fused_rnn.RNN
    ref.eval(), scripted.eval(), eager.eval()
    packed = torch.nn.utils.rnn.pack_sequence([torch.randn(4, 3, dtype=torch.float64)])
    torch.testing.assert_close(eager.rnn(packed)[1], ref.rnn(packed)[1], **TOL[torch.float64])
    for x, h in ((torch.randn(2, 5, 3, dtype=torch.float64), None),
                 (torch.randn(2, 5, 3, dtype=torch.float64), torch.randn(4, 2, 4, dtype=torch.float64)),
                 (torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64))):
        outs = []
        for m in (ref, scripted):
            xi = x.clone().requires_grad_()
            y, hn = m(xi, h)
            (y.sin().sum() + hn.sum()).backward()
            outs.append([y, hn, xi.grad] + [p.grad.clone() for p in m.parameters()])
            m.zero_grad()
        for want, got in zip(*outs):
            torch.testing.assert_close(got, want, **TOL[torch.float64])
    scripted.train()
    eager.train()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    torch.manual_seed(3)
    want = eager(x)[0]
    torch.manual_seed(3)
    torch.testing.assert_close(scripted(x)[0], want, rtol=1e-12, atol=1e-12)
    # (a scripted nn.RNN raises its errors as torch.jit.Error too)
    with pytest.raises(torch.jit.Error, match=r"input.size\(-1\) must be equal to input_size. Expected 3, got 4"):
        scripted(torch.randn(2, 5, 4, dtype=torch.float64))
    with pytest.raises(torch.jit.Error, match=r"Expected hidden size \(4, 2, 4\)"):
        scripted(x, torch.randn(2, 2, 4, dtype=torch.float64))
    buffer = io.BytesIO()
    torch.jit.save(scripted.eval(), buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    torch.testing.assert_close(loaded(x)[0], scripted(x)[0], rtol=0, atol=0)


def test_fx_symbolic_trace_applies_forward_hooks_once():
    """A fused_rnn.RNN with forward hooks under torch.fx.symbolic_trace: FX runs (and records) the hooks
    while tracing through the module's __call__, so the graph calls its forward, not the module, and
    the GraphModule computes what the hooked model computes."""
    class Model(nn.Module):
        def __init__(self, rnn):
            super().__init__()
            self.rnn = rnn

        def forward(self, x):
            return self.rnn(x)[0]

    rnn = fused_rnn.RNN(3, 4, dtype=torch.float64)
    rnn.register_forward_pre_hook(lambda m, args: (args[0] * 2,))
    rnn.register_forward_hook(lambda m, args, out: (out[0] + 1, out[1]))
    model = Model(rnn)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    gm = torch.fx.symbolic_trace(model)
    assert [n.op for n in gm.graph.nodes if n.target in ("rnn", "forward")] == ["get_attr", "call_method"]
    torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)
