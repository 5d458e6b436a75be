"""torch.ops.fused_rnn.* against fused_rnn.reference.rnn_reference in float64 (forward, reserve,
backward, with packed batch_sizes and dropout masks), gradcheck, torch.library.opcheck, double
backward, and dropout semantics of the functional form and the module."""
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence

import fused_rnn
from conftest import OP_CONFIG, TOL, op_args, op_fn, op_inputs
from fused_rnn.functional import RNNFunction
from fused_rnn.reference import rnn_reference

F64 = TOL[torch.float64]


CASES = {
    "1layer": dict(num_layers=1, bidirectional=False),
    "1layer_relu_nobias": dict(num_layers=1, bidirectional=False, relu=True, has_biases=False),
    "bidir_2layer": dict(),
    "3layer_relu": dict(num_layers=3, bidirectional=False, relu=True),
    "packed": dict(packed=True, bidirectional=False),
    "packed_bidir_3layer": dict(packed=True, num_layers=3, B=5, T=7),
    "mask": dict(mask_p=0.4),
    "mask_packed_relu_nobias": dict(mask_p=0.5, packed=True, relu=True, has_biases=False, B=4),
    "mask_all_zero": dict(mask_p=1.0, num_layers=3, bidirectional=False),
    "T1_B1_H1": dict(T=1, B=1, H=1),
}


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_reference(case, poison):
    args = op_args(**CASES[case])
    out, hy, reserve = torch.ops.fused_rnn.rnn_forward(**args)
    ref_out, ref_hy = rnn_reference(**args)
    torch.testing.assert_close(out, ref_out, **F64)
    torch.testing.assert_close(hy, ref_hy, **F64)
    # reserve[l] = output of layer l (before dropout): the reference stack cut after layer l.
    L, D = args["num_layers"], 2 if args["bidirectional"] else 1
    per = (4 if args["has_biases"] else 2) * D
    assert reserve.shape == (L - 1, *out.shape)
    for layer in range(L - 1):
        cut = dict(args, num_layers=layer + 1, weights=args["weights"][:(layer + 1) * per],
                   hx=args["hx"][:(layer + 1) * D],
                   dropout_mask=None if args["dropout_mask"] is None else args["dropout_mask"][:layer])
        torch.testing.assert_close(reserve[layer], rnn_reference(**cut)[0], **F64)


@pytest.mark.parametrize("case", CASES)
def test_backward_matches_reference(case, poison):
    args = op_args(**CASES[case], requires_grad=True)
    leaves = op_inputs(args)
    out, hy, _ = torch.ops.fused_rnn.rnn_forward(**args)
    ref_out, ref_hy = rnn_reference(**args)
    g_out, g_hy = torch.randn_like(ref_out), torch.randn_like(ref_hy)
    got = torch.autograd.grad((out * g_out).sum() + (hy * g_hy).sum(), leaves)
    want = torch.autograd.grad((ref_out * g_out).sum() + (ref_hy * g_hy).sum(), leaves)
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, **F64, msg=lambda m, i=i: f"gradient {i}: {m}")
    # The raw backward op gives the same, and through RNNFunction too.
    with torch.no_grad():
        out2, _, reserve = torch.ops.fused_rnn.rnn_forward(**args)
        gi, ghx, gw = torch.ops.fused_rnn.rnn_backward(g_out, g_hy, args["input"], args["hx"], args["weights"],
                                                       args["batch_sizes"], args["dropout_mask"], out2, reserve,
                                                       *(args[k] for k in OP_CONFIG))
    for i, (a, b) in enumerate(zip([gi, ghx, *gw], want)):
        torch.testing.assert_close(a, b, **F64, msg=lambda m, i=i: f"rnn_backward gradient {i}: {m}")
    fo, fh, _ = RNNFunction.apply(args["input"], args["hx"], args["batch_sizes"], args["dropout_mask"],
                                  *(args[k] for k in OP_CONFIG), *args["weights"])
    got = torch.autograd.grad((fo * g_out).sum() + (fh * g_hy).sum(), leaves)
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, **F64, msg=lambda m, i=i: f"RNNFunction gradient {i}: {m}")


def test_backward_with_only_one_output_used():
    """An unused output (no gradient materialised) counts as zeros, through the op and RNNFunction."""
    args = op_args(num_layers=2, bidirectional=True, requires_grad=True)
    leaves = op_inputs(args)
    function_args = (args["input"], args["hx"], None, None, *(args[k] for k in OP_CONFIG), *args["weights"])
    for pick in (0, 1):
        want = torch.autograd.grad(rnn_reference(**args)[pick].sum(), leaves)
        for outputs in (torch.ops.fused_rnn.rnn_forward(**args), RNNFunction.apply(*function_args)):
            got = torch.autograd.grad(outputs[pick].sum(), leaves)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, **F64)


@pytest.mark.parametrize("case", ["1layer", "bidir_2layer", "packed_bidir_3layer", "mask_packed_relu_nobias"])
def test_gradcheck_op(case):
    kw = dict(CASES[case], T=4, B=3, I=3, H=3)
    args = op_args(**kw, requires_grad=True)
    assert torch.autograd.gradcheck(op_fn(args), op_inputs(args))


@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck_module(packed):
    model = fused_rnn.RNN(3, 3, 2, bidirectional=True, dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    hx = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    if packed:
        seqs = [torch.randn(n, 3, dtype=torch.float64) for n in (2, 4, 1)]
        packed_x = pack_sequence(seqs, enforce_sorted=False)
        x = packed_x.data.clone().requires_grad_()
    else:
        x = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)

    def f(x, hx, *params):
        inp = nn.utils.rnn.PackedSequence(x, packed_x.batch_sizes, packed_x.sorted_indices,
                                          packed_x.unsorted_indices) if packed else x
        out, hn = torch.func.functional_call(model, dict(zip(names, params)), (inp, hx))
        return (out.data if packed else out), hn

    assert torch.autograd.gradcheck(f, (x, hx, *[p.detach().clone().requires_grad_() for p in model.parameters()]))


OPCHECK_CASES = ["1layer_relu_nobias", "bidir_2layer", "packed_bidir_3layer", "mask", "mask_packed_relu_nobias"]


@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck_forward(case):
    args = op_args(**dict(CASES[case], T=4, B=3, I=3, H=4), requires_grad=True)
    torch.library.opcheck(torch.ops.fused_rnn.rnn_forward, tuple(args.values()))


@pytest.mark.parametrize("case", ["bidir_2layer", "mask_packed_relu_nobias"])
def test_opcheck_backward(case):
    args = op_args(**dict(CASES[case], T=4, B=3, I=3, H=4))
    out, hy, reserve = torch.ops.fused_rnn.rnn_forward(**args)
    bargs = (torch.randn_like(out), torch.randn_like(hy), args["input"], args["hx"], args["weights"],
             args["batch_sizes"], args["dropout_mask"], out, reserve, *(args[k] for k in OP_CONFIG))
    torch.library.opcheck(torch.ops.fused_rnn.rnn_backward, bargs)


def test_fake_kernels_match_real_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    for case in CASES:
        args = op_args(**CASES[case])
        real = torch.ops.fused_rnn.rnn_forward(**args)
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fake_args = {k: (mode.from_tensor(v) if isinstance(v, torch.Tensor) and k != "batch_sizes" else v)
                         for k, v in args.items()}
            fake_args["weights"] = [mode.from_tensor(w) for w in args["weights"]]
            fake = torch.ops.fused_rnn.rnn_forward(**fake_args)
        for r, f in zip(real, fake):
            assert r.shape == f.shape and r.dtype == f.dtype, case


# ---- dropout -------------------------------------------------------------------------------------

def test_functional_dropout_mask_matches_reference():
    """fused_rnn.rnn in training draws an inverted-dropout mask; with the same RNG state the
    reference given that very mask reproduces output and h_n."""
    args = op_args(num_layers=3, bidirectional=True, T=6, B=4, H=5)
    ws = args["weights"]
    torch.manual_seed(7)
    out, hy = fused_rnn.rnn(args["input"], args["hx"], ws, num_layers=3, bidirectional=True, dropout=0.3,
                            training=True)
    torch.manual_seed(7)
    mask = fused_rnn.functional.dropout_mask((2, 6, 4, 10), 0.3, args["input"])
    assert set(mask.unique().tolist()) == {0.0, 1 / 0.7}
    ref_out, ref_hy = rnn_reference(args["input"], args["hx"], ws, None, mask, 3, True, False, True)
    torch.testing.assert_close(out, ref_out, **F64)
    torch.testing.assert_close(hy, ref_hy, **F64)
    no_drop = rnn_reference(args["input"], args["hx"], ws, None, None, 3, True, False, True)[0]
    assert (out - no_drop).abs().max() > 1e-3
    # eval (training=False) ignores dropout
    out_eval, _ = fused_rnn.rnn(args["input"], args["hx"], ws, num_layers=3, bidirectional=True, dropout=0.3)
    torch.testing.assert_close(out_eval, no_drop, **F64)


def test_module_eval_has_no_dropout():
    ref, fused = nn.RNN(4, 6, 3, dropout=0.5, dtype=torch.float64), fused_rnn.RNN(4, 6, 3, dropout=0.5,
                                                                                  dtype=torch.float64)
    fused.load_state_dict(ref.state_dict())
    ref.eval()
    fused.eval()
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    a, b = fused(x), fused(x)
    assert torch.equal(a[0], b[0])
    torch.testing.assert_close(a[0], ref(x)[0], **F64)
    torch.testing.assert_close(a[1], ref(x)[1], **F64)


def test_module_training_dropout_statistics():
    """Training, p=0.3, L=2: runs differ, and layer 1 sees about 30% of layer 0's outputs zeroed.
    With W_ih of layer 1 = identity-like selection, layer 1's pre-activation reveals the mask."""
    p, H, T, B = 0.3, 16, 50, 40
    model = fused_rnn.RNN(H, H, 2, dropout=p, bias=False, dtype=torch.float64)
    with torch.no_grad():
        model.weight_hh_l1.zero_()
        model.weight_ih_l1.copy_(torch.eye(H))
        model.weight_ih_l0.copy_(torch.eye(H))
        model.weight_hh_l0.zero_()
    x = torch.rand(T, B, H, dtype=torch.float64) + 0.1  # layer 0 output tanh(x) > 0 everywhere
    out1, _ = model(x)
    out2, _ = model(x)
    assert not torch.equal(out1, out2)
    # Layer 1 output is tanh(mask * tanh(x)) : exactly 0 where dropped, tanh(tanh(x)/(1-p)) elsewhere.
    dropped = out1 == 0
    frac = dropped.double().mean().item()
    assert abs(frac - p) < 0.02, frac  # 32000 Bernoulli draws: std 0.0026
    kept = torch.tanh(torch.tanh(x) / (1 - p))
    torch.testing.assert_close(out1[~dropped], kept[~dropped], **F64)
    model.eval()
    torch.testing.assert_close(model(x)[0], torch.tanh(torch.tanh(x)), **F64)


def test_module_dropout_one_zeroes_upper_layer_input():
    model = fused_rnn.RNN(3, 5, 3, dropout=1.0, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    hx = torch.randn(3, 2, 5, dtype=torch.float64)
    out, hn = model(x, hx)
    # p = 1: layers 1 and 2 each see zero input; each is then a 1-layer RNN on zeros from its hx.
    sd = model.state_dict()
    for layer in (1, 2):
        single = fused_rnn.RNN(5, 5, 1, dtype=torch.float64)
        single.load_state_dict({k.replace(f"l{layer}", "l0"): v for k, v in sd.items() if k.endswith(f"l{layer}")})
        want_out, want_hn = single(torch.zeros(4, 2, 5, dtype=torch.float64), hx[layer:layer + 1])
        torch.testing.assert_close(hn[layer:layer + 1], want_hn, **F64)
        if layer == 2:
            torch.testing.assert_close(out, want_out, **F64)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert torch.equal(model.weight_ih_l0.grad, torch.zeros_like(model.weight_ih_l0))


def test_dropout_single_layer_warns_and_is_ignored():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        model = fused_rnn.RNN(3, 4, 1, dropout=0.5, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a, b = model(x)[0], model(x)[0]
    assert torch.equal(a, b)


# ---- fused_rnn._C.rnn_forward: the eager entry point (csrc/python_module.cpp) -------------------

def test_eager_entry_point_is_the_op():
    """Same results, bit for bit, as torch.ops, and the same autograd node (C++ autograd kernel)."""
    args = op_args(requires_grad=True, mask_p=0.3)
    values = list(args.values())
    fast = fused_rnn._C.rnn_forward(*values)
    slow = torch.ops.fused_rnn.rnn_forward(*values)
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)
    assert type(fast[0].grad_fn) is type(slow[0].grad_fn) and fast[0].grad_fn is not None
    inputs = [args["input"], args["hx"], *args["weights"]]
    g_fast = torch.autograd.grad(fast[0].sum() + fast[1].sum(), inputs)
    g_slow = torch.autograd.grad(slow[0].sum() + slow[1].sum(), inputs)
    for a, b in zip(g_fast, g_slow):
        assert torch.equal(a, b)
    with torch.no_grad():
        assert fused_rnn._C.rnn_forward(*values)[0].grad_fn is None


@pytest.mark.parametrize("entry", ["eager_entry", "functional", "functional_packed"])
def test_hx_none_is_zeros(entry):
    """hx=None means nn.RNN's zeros, whichever path creates them (C++ in the eager entry, Python for
    packed input)."""
    args = op_args(packed=entry == "functional_packed")
    values = list(args.values())
    want = torch.ops.fused_rnn.rnn_forward(values[0], torch.zeros_like(args["hx"]), *values[2:])
    if entry == "eager_entry":
        got = fused_rnn._C.rnn_forward(values[0], None, *values[2:])
    else:
        got = fused_rnn.rnn(args["input"], None, args["weights"], num_layers=2, bidirectional=True,
                            batch_sizes=args["batch_sizes"])
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_eager_entry_point_rejects_bad_arguments():
    args = op_args()
    values = list(args.values())
    with pytest.raises(TypeError, match="takes 9 positional arguments"):
        fused_rnn._C.rnn_forward(*values[:8])
    with pytest.raises(TypeError, match="hx must be a Tensor"):
        fused_rnn._C.rnn_forward(values[0], 0.5, *values[2:])
    with pytest.raises(RuntimeError, match="hx=None needs unpacked input"):
        packed = op_args(packed=True)
        fused_rnn._C.rnn_forward(packed["input"], None, *list(packed.values())[2:])
    with pytest.raises(TypeError, match="weights must be a list"):
        fused_rnn._C.rnn_forward(*values[:2], values[2][0], *values[3:])
    with pytest.raises(TypeError, match="bidirectional must be a bool"):
        fused_rnn._C.rnn_forward(*values[:6], 1, *values[7:])
    with pytest.raises(RuntimeError, match="Expected hidden size"):  # the op's own checks still run
        fused_rnn._C.rnn_forward(values[0], values[1][:, :1], *values[2:])


def test_module_call_visible_to_torch_function_and_dispatch_modes():
    """A __torch_function__ mode sees the op (the module then calls it through torch.ops); a
    __torch_dispatch__ mode sees it on the eager entry point too (it dispatches like the op)."""
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record:
        def __init__(self):
            self.seen = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.seen.append(str(func))
            return func(*args, **(kwargs or {}))

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append(str(func))
            return func(*args, **(kwargs or {}))

    class FunctionRecord(Record, TorchFunctionMode):
        pass

    class DispatchRecord(Record, TorchDispatchMode):
        pass

    model = fused_rnn.RNN(4, 6, dtype=torch.float64)
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    want = model(x)[0]
    for mode in (FunctionRecord(), DispatchRecord()):
        with mode:
            got = model(x)[0]
        assert any("fused_rnn.rnn_forward" in s for s in mode.seen), mode.seen
        assert torch.equal(got, want)
