"""Weights that are not plain registered Parameters: torch.nn.utils.parametrize parametrizations
(parametrizations.weight_norm / spectral_norm / orthogonal and custom ones), the hook-based
torch.nn.utils.weight_norm / spectral_norm, and weights deleted and re-assigned as plain tensors or
views. fused_rnn.RNN runs each as nn.RNN does: the same outputs, h_n and gradients, those of the
parametrizations' own parameters (weight_g, weight_v, original0, ...) included, in float64 to 1e-10.

Ports of PyTorch's test_rnn_weight_norm, test_RNN_cudnn_weight_norm, test_partial_flat_weights and of
its parametrization tests on RNN weights (a device move becomes a dtype move: no GPU is needed), plus
from_torch / to_torch / convert of such modules."""
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import fused_rnn
from conftest import TOL, assert_close_scaled, assert_same_results, run, twins

DT = torch.float64
I, H, L, T, B = 3, 4, 2, 5, 2
# nn.RNN(3, 4, 2, bidirectional=True)'s 16 weights, in nn.RNN's flat order.
NAMES = [f"{kind}_l{layer}{suffix}" for layer in range(L) for suffix in ("", "_reverse")
         for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.nn.utils.(weight|spectral)_norm.*is deprecated:FutureWarning")


def _data():
    g = torch.Generator().manual_seed(5)
    return torch.randn(T, B, I, generator=g, dtype=DT), torch.randn(2 * L, B, H, generator=g, dtype=DT)


def _pair(apply, **kwargs):
    """(nn.RNN, fused_rnn.RNN) with the same state, each then given the same parametrization by
    apply(module) from the same seed (spectral norm and orthogonal draw random numbers)."""
    ref, fused = twins(I, H, L, bidirectional=True, **kwargs)
    for m in (ref, fused):
        torch.manual_seed(7)
        apply(m)
    return ref, fused


class Symmetric(nn.Module):
    def forward(self, x):
        return x.triu() + x.triu(1).transpose(-1, -2)


class Scale(nn.Module):
    def forward(self, x):
        return 1.5 * x


class Factors(nn.Module):
    """A parametrization with two original tensors (original0, original1): W = A * B elementwise."""

    def forward(self, a, b):
        return a * b

    def right_inverse(self, w):
        return w, torch.ones_like(w)


# parametrization -> the weights it applies to (orthogonal and Symmetric need matrices, Symmetric square ones).
PARAMETRIZATIONS = {
    "weight_norm": (lambda m, n: parametrizations.weight_norm(m, n),
                    ["weight_ih_l0", "weight_hh_l0", "weight_ih_l1_reverse", "bias_ih_l0", "bias_hh_l1_reverse"]),
    "spectral_norm": (lambda m, n: parametrizations.spectral_norm(m, n),
                      ["weight_ih_l0", "weight_hh_l0", "weight_ih_l1_reverse", "bias_ih_l0"]),
    "orthogonal": (lambda m, n: parametrizations.orthogonal(m, n),
                   ["weight_ih_l0", "weight_hh_l0", "weight_ih_l1_reverse", "weight_hh_l1_reverse"]),
    "symmetric": (lambda m, n: parametrize.register_parametrization(m, n, Symmetric()),
                  ["weight_hh_l0", "weight_hh_l1_reverse"]),
    "two_originals": (lambda m, n: parametrize.register_parametrization(m, n, Factors()),
                      ["weight_ih_l0", "weight_hh_l1", "bias_hh_l0_reverse"]),
}
PARAM_CASES = [(p, n) for p, (_, names) in PARAMETRIZATIONS.items() for n in names]


@pytest.mark.parametrize("mode", ["train", "eval", "train_cached"])
@pytest.mark.parametrize("kind,name", PARAM_CASES)
def test_parametrization_matches_nn_rnn(kind, name, mode):
    """PyTorch's parametrization tests on an RNN weight: forward and backward through the
    parametrization, gradients reaching its own parameters (original, original0/1)."""
    apply, _ = PARAMETRIZATIONS[kind]
    ref, fused = _pair(lambda m: apply(m, name))
    assert parametrize.is_parametrized(fused, name) and name not in fused._parameters
    assert type(fused).__name__ == "ParametrizedRNN"
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in ref.named_parameters()]
    if mode == "eval":
        ref.eval(), fused.eval()
    x, hx = _data()
    for h in (None, hx):
        if mode == "train_cached":
            with parametrize.cached():
                results = run(ref, x, h), run(fused, x, h)
        elif kind == "spectral_norm" and mode == "train":
            # Each access of a weight under spectral norm runs a power iteration in training mode;
            # nn.RNN reads each weight four times per forward (its flat-weights refresh), fused_rnn
            # once. Under cached() nn.RNN reads it once too: the same single iteration.
            with parametrize.cached():
                expected = run(ref, x, h)
            results = expected, run(fused, x, h)
        else:
            results = run(ref, x, h), run(fused, x, h)
        assert_same_results(*results, DT)
        assert any(k.startswith("grad:parametrizations.") for k in results[1])
    for (n, a), (_, b) in zip(ref.named_buffers(), fused.named_buffers()):  # spectral norm's _u, _v
        torch.testing.assert_close(b, a, **TOL[DT], msg=n)


def test_several_and_stacked_parametrizations():
    """Every weight of a 2-layer bidirectional RNN weight-normed, two of them with a second
    parametrization on top, one with caching."""
    def apply(m):
        for n in NAMES:
            parametrizations.weight_norm(m, n)
        parametrize.register_parametrization(m, "weight_hh_l0", Scale())
        parametrize.register_parametrization(m, "bias_ih_l1_reverse", Scale())

    ref, fused = _pair(apply)
    assert not fused._parameters
    x, hx = _data()
    assert_same_results(run(ref, x, hx), run(fused, x, hx), DT)
    with parametrize.cached():
        assert_same_results(run(ref, x), run(fused, x), DT)


def test_all_weights_of_a_parametrized_module():
    ref, fused = _pair(lambda m: parametrizations.weight_norm(m, "weight_hh_l1_reverse"))
    for ws_ref, ws_fused, names in zip(ref.all_weights, fused.all_weights, fused._all_weights):
        for a, b, n in zip(ws_ref, ws_fused, names):
            torch.testing.assert_close(b, a, **TOL[DT], msg=n)
            assert isinstance(b, nn.Parameter) == (n != "weight_hh_l1_reverse"), n
    assert sum(isinstance(w, nn.Parameter) for w in fused._flat_weights) == len(NAMES) - 1


def test_deepcopy_of_a_parametrized_module():
    ref, fused = _pair(lambda m: parametrizations.orthogonal(m, "weight_hh_l0"))
    clone = copy.deepcopy(fused)
    x, hx = _data()
    assert_same_results(run(ref, x, hx), run(clone, x, hx), DT)


# ---- hook-based torch.nn.utils.weight_norm / spectral_norm ------------------------------------------

@pytest.mark.parametrize("name", ["weight_ih_l0", "weight_hh_l0", "bias_hh_l0", "weight_hh_l1_reverse"])
def test_rnn_weight_norm(name):
    """PyTorch's test_rnn_weight_norm: weight norm turns the weight into a plain tensor, removing it
    restores the Parameter (and only it); the module runs as nn.RNN does in both states, the
    gradients of <name>_g and <name>_v included."""
    ref, fused = twins(I, H, L, bidirectional=True)
    x, hx = _data()
    before = run(fused, x, hx)
    for m in (ref, fused):
        nn.utils.weight_norm(m, name=name)
    assert sum(isinstance(p, nn.Parameter) for p in fused._flat_weights) == len(NAMES) - 1
    assert not isinstance(getattr(fused, name), nn.Parameter)
    during = run(fused, x, hx)
    assert_same_results(run(ref, x, hx), during, DT)
    assert {f"grad:{name}_g", f"grad:{name}_v"} <= during.keys()
    assert_close_scaled(during["output"], before["output"], DT)  # the reparametrization does not change the function

    for m in (ref, fused):
        nn.utils.remove_weight_norm(m, name=name)
    assert sum(isinstance(p, nn.Parameter) for p in fused._flat_weights) == len(NAMES)
    assert name in fused._parameters and fused._parameters[name] is not None
    assert name + "_v" not in fused._parameters and name + "_g" not in fused._parameters
    params = dict(fused.named_parameters())
    assert name in params and name + "_v" not in params and name + "_g" not in params
    assert_same_results(run(ref, x, hx), run(fused, x, hx), DT)


@pytest.mark.parametrize("api", ["hooks", "parametrizations"])
def test_weight_norm_then_dtype_move(api):
    """PyTorch's test_RNN_cudnn_weight_norm, the move to the GPU replaced by one to float64: the
    module computed in float32 gives the same output after weight norm and the move."""
    name = "weight_hh_l0"
    ref, fused = twins(I, H, L, bidirectional=True, dtype=torch.float32)
    x = torch.randn(T, B, I)
    expected = fused(x)[0]
    for m in (ref, fused):
        if api == "hooks":
            nn.utils.weight_norm(m, name=name)
        else:
            parametrizations.weight_norm(m, name=name)
        m.double()
    out_ref, out_fused = ref(x.double())[0], fused(x.double())[0]
    torch.testing.assert_close(out_fused, out_ref, **TOL[DT])
    torch.testing.assert_close(out_fused.float(), expected, **TOL[torch.float32])
    if api == "hooks":
        nn.utils.remove_weight_norm(fused, name=name)
        torch.testing.assert_close(fused(x.double())[0], out_ref, **TOL[DT])


@pytest.mark.parametrize("name", ["weight_hh_l0", "weight_ih_l1_reverse"])
def test_rnn_spectral_norm_hooks(name):
    """The hook-based torch.nn.utils.spectral_norm: one power iteration per forward in training mode
    (in both), the buffers updated alike; eval mode; removal."""
    ref, fused = _pair(lambda m: nn.utils.spectral_norm(m, name=name))
    x, hx = _data()
    for _ in range(2):
        assert_same_results(run(ref, x, hx), run(fused, x, hx), DT)
    for (n, a), (_, b) in zip(ref.named_buffers(), fused.named_buffers()):
        torch.testing.assert_close(b, a, **TOL[DT], msg=n)
    ref.eval(), fused.eval()
    assert_same_results(run(ref, x, hx), run(fused, x, hx), DT)
    for m in (ref, fused):
        nn.utils.remove_spectral_norm(m, name=name)
    assert isinstance(fused._parameters[name], nn.Parameter)
    assert_same_results(run(ref, x, hx), run(fused, x, hx), DT)


# ---- weights deleted, re-assigned as plain tensors or views --------------------------------------

def test_partial_flat_weights():
    """PyTorch's test_partial_flat_weights, the move to the GPU replaced by one to float64: a module
    with a weight deleted can still be moved, and runs again once the weight is re-assigned as a
    plain tensor (not a Parameter); the gradient flows back through it."""
    ref, fused = twins(10, 6, 2, dtype=torch.float32)
    x = torch.randn(3, 2, 10)
    expected = fused(x)[0]
    outs, grads = [], []
    for m in (ref, fused):
        weight_orig = m.weight_hh_l0
        del m.weight_hh_l0
        assert not hasattr(m, "weight_hh_l0")
        m.double()  # moving with a weight missing does not throw
        m.weight_hh_l0 = weight_orig.double()
        assert not isinstance(m.weight_hh_l0, nn.Parameter) and "weight_hh_l0" not in m._parameters
        out = m(x.double())[0]
        out.sum().backward()
        outs.append(out)
        grads.append(weight_orig.grad)
    torch.testing.assert_close(outs[1], outs[0], **TOL[DT])
    torch.testing.assert_close(outs[1].float(), expected, **TOL[torch.float32])
    torch.testing.assert_close(grads[1], grads[0], **TOL[DT])


REASSIGNMENTS = {
    # name -> the tensor put in its place, from a leaf `base` of shape [H, 2H]
    "weight_hh_l0": lambda base: base[:, :H],                  # a non-contiguous view
    "weight_ih_l1_reverse": lambda base: base * 0.5,           # a plain non-leaf tensor, [H, 2H]
    "weight_hh_l1": lambda base: base[:, H:].t(),              # a transposed view
    "bias_ih_l0_reverse": lambda base: base[1, ::2],           # a strided row view
    "weight_ih_l0": lambda base: base[:, :I].detach().clone(),  # a plain leaf tensor, no grad
}


@pytest.mark.parametrize("name", REASSIGNMENTS)
def test_weight_reassigned_as_plain_tensor_or_view(name):
    ref, fused = twins(I, H, L, bidirectional=True)
    torch.manual_seed(11)
    base = torch.randn(H, 2 * H, dtype=DT)
    bases = []
    for m in (ref, fused):
        b = base.clone().requires_grad_()
        bases.append(b)
        delattr(m, name)
        setattr(m, name, REASSIGNMENTS[name](b))
        assert name not in m._parameters
    x, hx = _data()
    assert_same_results(run(ref, x, hx), run(fused, x, hx), DT)
    if bases[0].grad is not None:
        torch.testing.assert_close(bases[1].grad, bases[0].grad, **TOL[DT])
    else:
        assert bases[1].grad is None


def test_deleted_weight_raises_naming_it():
    # nn.RNN keeps running with the tensor it cached before the deletion; fused_rnn looks the
    # weights up on every call and says which one is missing.
    fused = fused_rnn.RNN(I, H, L)
    del fused.weight_hh_l1
    with pytest.raises(AttributeError, match="'RNN' object has no attribute 'weight_hh_l1'"):
        fused(torch.randn(T, B, I))


# ---- from_torch / to_torch / convert -----------------------------------------------------------------

def _check_shared_twin(src, dst, x, hx):
    """dst computes what src computes, and its backward reaches src's own leaves."""
    assert list(dst.state_dict().keys()) == list(src.state_dict().keys())
    assert [n for n, _ in dst.named_parameters()] == [n for n, _ in src.named_parameters()]
    assert all(a is b for a, b in zip(dst.parameters(), src.parameters()))
    expected = run(src, x, hx)
    got = run(dst, x, hx)  # its grads land in the shared leaves
    assert_same_results(expected, got, DT)


def test_from_torch_to_torch_convert_share_parametrizations():
    ref = nn.RNN(I, H, L, bidirectional=True, dtype=DT)
    parametrizations.orthogonal(ref, "weight_hh_l1")  # registered first: first in the state_dict
    parametrizations.weight_norm(ref, "weight_hh_l0")
    parametrize.register_parametrization(ref, "bias_ih_l0", Factors())
    x, hx = _data()
    fused = fused_rnn.RNN.from_torch(ref)
    assert isinstance(fused, fused_rnn.RNN) and type(fused).__name__ == "ParametrizedRNN"
    for n in ("weight_hh_l1", "weight_hh_l0", "bias_ih_l0"):
        assert fused.parametrizations[n] is ref.parametrizations[n]
    _check_shared_twin(ref, fused, x, hx)
    back = fused.to_torch()
    assert isinstance(back, nn.RNN) and parametrize.is_parametrized(back, "weight_hh_l0")
    _check_shared_twin(fused, back, x, hx)
    model = nn.Sequential(ref, nn.Identity())
    assert fused_rnn.convert(model) is model and isinstance(model[0], fused_rnn.RNN)
    assert model[0].parametrizations["weight_hh_l0"] is ref.parametrizations["weight_hh_l0"]
    assert isinstance(fused_rnn.convert(ref), fused_rnn.RNN)


def test_from_torch_weight_norm_hooks():
    ref = nn.RNN(I, H, L, bidirectional=True, dtype=DT)
    nn.utils.weight_norm(ref, "weight_ih_l1")
    x, hx = _data()
    fused = fused_rnn.RNN.from_torch(ref)
    assert fused.weight_ih_l1_g is ref.weight_ih_l1_g and fused.weight_ih_l1_v is ref.weight_ih_l1_v
    _check_shared_twin(ref, fused, x, hx)
    nn.utils.remove_weight_norm(fused, "weight_ih_l1")  # the hook came along
    assert isinstance(fused._parameters["weight_ih_l1"], nn.Parameter)
    assert_close_scaled(fused(x, hx)[0], ref(x, hx)[0], DT)


def test_from_torch_spectral_norm_hooks():
    ref = nn.RNN(I, H, L, bidirectional=True, dtype=DT).eval()
    nn.utils.spectral_norm(ref, "weight_hh_l0")
    x, hx = _data()
    fused = fused_rnn.RNN.from_torch(ref)
    assert fused.weight_hh_l0_u is ref.weight_hh_l0_u
    _check_shared_twin(ref, fused, x, hx)
    state = fused.state_dict()
    assert state._metadata[""].get("spectral_norm") == ref.state_dict()._metadata[""].get("spectral_norm")
    fresh = nn.utils.spectral_norm(fused_rnn.RNN(I, H, L, bidirectional=True, dtype=DT), "weight_hh_l0").eval()
    fresh.load_state_dict(state)
    assert_close_scaled(fresh(x, hx)[0], ref(x, hx)[0], DT)
    nn.utils.remove_spectral_norm(fused, "weight_hh_l0")
    assert not fused._forward_pre_hooks


def test_from_torch_plain_tensor_and_deleted_weights():
    ref = nn.RNN(I, H, L, bidirectional=True, dtype=DT)
    plain = ref.weight_hh_l0.detach() * 1.0
    del ref.weight_hh_l0
    ref.weight_hh_l0 = plain
    fused = fused_rnn.RNN.from_torch(ref)
    assert fused.weight_hh_l0 is plain and "weight_hh_l0" not in fused._parameters
    x, hx = _data()
    assert_same_results(run(ref, x, hx), run(fused, x, hx), DT)
    back = fused.to_torch()
    assert back.weight_hh_l0 is plain
    assert_same_results(run(ref, x, hx), run(back, x, hx), DT)
    del fused.bias_hh_l1
    assert not hasattr(fused.to_torch(), "bias_hh_l1")


def test_functional_call_and_compile_of_a_parametrized_module():
    ref, fused = _pair(lambda m: parametrizations.weight_norm(m, "weight_hh_l0"))
    x, hx = _data()
    params = {k: v.detach() * 1.1 for k, v in ref.named_parameters()}
    expected = torch.func.functional_call(ref, params, (x, hx))
    got = torch.func.functional_call(fused, params, (x, hx))
    for a, b in zip(expected, got):
        assert_close_scaled(b, a, DT)
    compiled = torch.compile(fused, fullgraph=True)
    for a, b in zip(ref(x, hx), compiled(x, hx)):
        assert_close_scaled(b, a, DT)
