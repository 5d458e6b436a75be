"""fused_rnn.RNN against torch.nn.RNN with the same state_dict on the CPU: outputs, h_n and the
gradients of input, hx and every parameter, over the configuration matrix, unbatched, packed and
odd sizes; plus a long sequence against a float64 reference, and determinism."""
import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence

import fused_rnn
from conftest import TOL, assert_same_results, run, twins

CONFIGS = list(itertools.product(("tanh", "relu"), (True, False), (False, True), (False, True), (1, 2, 3)))


def _input(T, B, I, batch_first, dtype):
    return torch.randn((B, T, I) if batch_first else (T, B, I), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("nonlinearity,bias,batch_first,bidirectional,num_layers", CONFIGS)
def test_matches_nn_rnn(nonlinearity, bias, batch_first, bidirectional, num_layers, dtype):
    I, H, T, B = 5, 7, 6, 3
    ref, fused = twins(I, H, num_layers, nonlinearity, bias=bias, batch_first=batch_first,
                       bidirectional=bidirectional, dtype=dtype)
    x = _input(T, B, I, batch_first, dtype)
    hx = torch.randn(num_layers * (2 if bidirectional else 1), B, H, dtype=dtype)
    for h in (None, hx):
        assert_same_results(run(ref, x, h), run(fused, x, h), dtype)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional,num_layers,nonlinearity", [(False, 1, "tanh"), (True, 2, "relu"),
                                                                   (True, 3, "tanh")])
def test_unbatched(batch_first, bidirectional, num_layers, nonlinearity):
    ref, fused = twins(4, 6, num_layers, nonlinearity, batch_first=batch_first, bidirectional=bidirectional)
    x = torch.randn(5, 4, dtype=torch.float64)
    hx = torch.randn(num_layers * (2 if bidirectional else 1), 6, dtype=torch.float64)
    for h in (None, hx):
        r, f = run(ref, x, h), run(fused, x, h)
        assert f["output"].shape == (5, 6 * (2 if bidirectional else 1)) and f["h_n"].shape == hx.shape
        assert_same_results(r, f, torch.float64)


def _packed(lengths, I, dtype, enforce_sorted):
    seqs = [torch.randn(n, I, dtype=dtype) for n in lengths]
    return seqs, pack_sequence(seqs, enforce_sorted=enforce_sorted)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("bidirectional,num_layers", [(False, 1), (True, 1), (False, 2), (True, 3)])
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed(enforce_sorted, bidirectional, num_layers, dtype):
    lengths = [7, 5, 5, 2, 1] if enforce_sorted else [2, 7, 1, 5, 4]
    # batch_first must not matter for packed input
    ref, fused = twins(3, 5, num_layers, bidirectional=bidirectional, batch_first=num_layers == 2, dtype=dtype)
    _, x = _packed(lengths, 3, dtype, enforce_sorted)
    assert (x.sorted_indices is None) == enforce_sorted
    hx = torch.randn(num_layers * (2 if bidirectional else 1), len(lengths), 5, dtype=dtype)
    for h in (None, hx):
        assert_same_results(run(ref, x, h), run(fused, x, h), dtype)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_packed_unsorted_equals_per_sequence(bidirectional):
    """Each sequence of an unsorted pack, with its own hx column, gives what it gives alone: the
    sorted_indices / unsorted_indices are honoured for hx and h_n, and the reverse direction starts
    at each sequence's own end."""
    lengths = [3, 6, 1, 4]
    fused = fused_rnn.RNN(3, 4, 2, bidirectional=bidirectional, dtype=torch.float64)
    seqs, x = _packed(lengths, 3, torch.float64, enforce_sorted=False)
    hx = torch.randn(4 if bidirectional else 2, len(lengths), 4, dtype=torch.float64)
    out, hn = fused(x, hx)
    padded, out_lengths = nn.utils.rnn.pad_packed_sequence(out)
    assert out_lengths.tolist() == lengths
    for b, s in enumerate(seqs):
        o_b, h_b = fused(s, hx[:, b])
        torch.testing.assert_close(padded[:lengths[b], b], o_b, **TOL[torch.float64])
        torch.testing.assert_close(hn[:, b], h_b, **TOL[torch.float64])
        assert not padded[lengths[b]:, b].any()


@pytest.mark.parametrize("H", [1, 7, 33, 65])
@pytest.mark.parametrize("T,B", [(1, 1), (1, 5), (9, 1), (4, 3)])
def test_odd_sizes(H, T, B):
    ref, fused = twins(3, H, 2, bidirectional=True)
    x = torch.randn(T, B, 3, dtype=torch.float64)
    hx = torch.randn(4, B, H, dtype=torch.float64)
    assert_same_results(run(ref, x, hx), run(fused, x, hx), torch.float64)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_batch_size_zero(batch_first, bidirectional):
    ref, fused = twins(3, 4, 2, batch_first=batch_first, bidirectional=bidirectional)
    x = _input(5, 0, 3, batch_first, torch.float64)
    r, f = run(ref, x), run(fused, x)
    DH = 8 if bidirectional else 4
    assert f["output"].shape == r["output"].shape == ((0, 5, DH) if batch_first else (5, 0, DH))
    assert f["h_n"].shape == r["h_n"].shape
    assert_same_results(r, f, torch.float64)
    assert all(g.abs().sum() == 0 for n, g in f.items() if n.startswith("grad:") and n != "grad:input")


def test_long_sequence_float32_error():
    """T=1000, H=20 in float32: the fused error against a float64 reference is within 2x of nn.RNN's
    own float32 error (plus a tiny atol), and far below any accumulation blow-up."""
    T, I, H = 1000, 10, 20
    ref64 = nn.RNN(I, H, dtype=torch.float64)
    ref32, fused32 = twins(I, H, dtype=torch.float32)
    ref32.load_state_dict(ref64.state_dict())
    fused32.load_state_dict(ref64.state_dict())
    x = torch.randn(T, 1, I, dtype=torch.float64)
    r64 = run(ref64, x)
    grads = [n for n in r64 if n.startswith("grad:")]
    errs = {}
    for name, m in (("torch", ref32), ("fused", fused32)):
        r = run(m, x.float())
        errs[name] = (
            (r["output"].double() - r64["output"]).abs().max().item(),
            max((r[n].double() - r64[n]).abs().max().item() / r64[n].abs().max().item() for n in grads),
        )
    assert errs["fused"][0] <= 2 * errs["torch"][0] + 1e-6, errs
    assert errs["fused"][1] <= 2 * errs["torch"][1] + 1e-6, errs
    assert errs["fused"][0] < 1e-5, errs


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_deterministic(threads, bidirectional):
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fused = fused_rnn.RNN(16, 64, 2, bidirectional=bidirectional)
        x = torch.randn(20, 47, 16)  # large enough for the multi-thread split
        hx = torch.randn(4 if bidirectional else 2, 47, 64)
        a, b = run(fused, x, hx), run(fused, x, hx)
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), name
    finally:
        torch.set_num_threads(prev)


def test_nan_inf_propagate_like_nn_rnn():
    for nonlinearity in ("tanh", "relu"):
        ref, fused = twins(3, 5, 2, nonlinearity, bidirectional=True)
        x = torch.randn(6, 4, 3, dtype=torch.float64)
        x[2, 1, 0] = float("nan")
        x[4, 3, 2] = float("inf")
        x[1, 0, 1] = float("-inf")
        with torch.no_grad():
            ro, rh = ref(x)
            fo, fh = fused(x)
        assert ro.isnan().any()
        assert torch.equal(fo.isnan(), ro.isnan()) and torch.equal(fh.isnan(), rh.isnan())
        torch.testing.assert_close(fo, ro, equal_nan=True, **TOL[torch.float64])
        torch.testing.assert_close(fh, rh, equal_nan=True, **TOL[torch.float64])


@pytest.mark.parametrize("batch_first", [False, True])
def test_non_contiguous_input_and_hx(batch_first):
    """Strided input and stride-0 (expanded) hx views, differentiated through the views."""
    ref, fused = twins(4, 6, 2, batch_first=batch_first, bidirectional=True)
    results = []
    for m in (ref, fused):
        torch.manual_seed(9)
        base = torch.randn(10, 7, 9, dtype=torch.float64, requires_grad=True)
        h_base = torch.randn(1, 6, 1, dtype=torch.float64, requires_grad=True)
        x = base[::2, 1:, ::2][:, :, :4]  # [5, 6, 4], strided in every dimension
        B = 5 if batch_first else 6
        hx = h_base[:, :B].expand(4, B, 6)
        assert not x.is_contiguous() and not hx.is_contiguous()
        out, hn = m(x, hx)
        (out.square().sum() + hn.sum()).backward()
        results.append((out, hn, base.grad, h_base.grad, m.weight_ih_l1.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, **TOL[torch.float64])


def test_backward_in_eval_mode_and_no_grad():
    ref, fused = twins(3, 5, 2)
    ref.eval()
    fused.eval()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    assert_same_results(run(ref, x), run(fused, x), torch.float64)
    with torch.no_grad():
        out, hn = fused(x)
    assert out.grad_fn is None and hn.grad_fn is None
    torch.testing.assert_close(out, ref(x)[0].detach(), **TOL[torch.float64])


def test_output_types_and_dtypes():
    fused = fused_rnn.RNN(3, 4, 2, batch_first=True)
    out, hn = fused(torch.randn(2, 5, 3))
    assert out.shape == (2, 5, 4) and hn.shape == (2, 2, 4)
    assert out.dtype == hn.dtype == torch.float32
    packed_out, _ = fused(pack_sequence([torch.randn(3, 3), torch.randn(2, 3)]))
    assert isinstance(packed_out, nn.utils.rnn.PackedSequence)


# ---- the module's API: parameters, state_dict, init, repr, converters ------------------------------

API_CONFIGS = [dict(), dict(num_layers=3, bidirectional=True), dict(num_layers=2, bias=False, batch_first=True),
               dict(nonlinearity="relu", dropout=0.25, num_layers=2)]


@pytest.mark.parametrize("kwargs", API_CONFIGS)
def test_parameters_state_dict_init_repr_attributes(kwargs):
    torch.manual_seed(3)
    ref = nn.RNN(5, 7, **kwargs)
    torch.manual_seed(3)
    fused = fused_rnn.RNN(5, 7, **kwargs)
    ref_params, fused_params = list(ref.named_parameters()), list(fused.named_parameters())
    assert [n for n, _ in fused_params] == [n for n, _ in ref_params]
    for (n, a), (_, b) in zip(ref_params, fused_params):
        assert a.shape == b.shape and a.dtype == b.dtype, n
        assert torch.equal(a, b), n  # same init, same RNG order
    stdv = 1 / 7 ** 0.5
    assert all(p.abs().max() <= stdv for _, p in fused_params)
    assert list(fused.state_dict().keys()) == list(ref.state_dict().keys())
    assert repr(fused) == repr(ref)  # both classes are named RNN
    for attr in ("input_size", "hidden_size", "num_layers", "nonlinearity", "mode", "bias", "batch_first", "dropout",
                 "bidirectional", "proj_size"):
        assert getattr(fused, attr) == getattr(ref, attr), attr
        assert type(getattr(fused, attr)) is type(getattr(ref, attr)), attr
    assert [[p.shape for p in ws] for ws in fused.all_weights] == [[p.shape for p in ws] for ws in ref.all_weights]
    assert all(p is getattr(fused, n) for ws, names in zip(fused.all_weights, fused._all_weights)
               for p, n in zip(ws, names))
    fused.flatten_parameters()
    assert not isinstance(fused, nn.RNN)


def test_state_dict_interchange_both_ways():
    ref = nn.RNN(4, 6, 2, bidirectional=True, dtype=torch.float64)
    fused = fused_rnn.RNN(4, 6, 2, bidirectional=True, dtype=torch.float64)
    fused.load_state_dict(ref.state_dict())  # nn.RNN checkpoint -> fused
    back = nn.RNN(4, 6, 2, bidirectional=True, dtype=torch.float64)
    back.load_state_dict(fused.state_dict())  # fused checkpoint -> nn.RNN (strict)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    for m in (fused, back):
        torch.testing.assert_close(m(x)[0], ref(x)[0], **TOL[torch.float64])


def test_constructor_positional_and_device_dtype():
    a = fused_rnn.RNN(3, 4, 2, "relu", False, True, 0.0, True, device="cpu", dtype=torch.float64)
    b = nn.RNN(3, 4, 2, "relu", False, True, 0.0, True)
    assert repr(a) == repr(b)
    assert (a.nonlinearity, a.bias, a.batch_first, a.bidirectional) == ("relu", False, True, True)
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in a.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_from_torch_to_torch_share_parameters(dtype):
    ref = nn.RNN(3, 5, 2, nonlinearity="relu", batch_first=True, bidirectional=True, dtype=dtype)
    ref.eval()
    fused = fused_rnn.RNN.from_torch(ref)
    assert type(fused) is fused_rnn.RNN and not fused.training
    assert repr(fused) == repr(ref)
    assert all(a is b for a, b in zip(fused.parameters(), ref.parameters()))
    assert all(p.dtype == dtype and p.device.type == "cpu" for p in fused.parameters())
    x = torch.randn(2, 6, 3, dtype=dtype)
    assert_same_results(run(ref, x), run(fused, x), dtype)
    back = fused.to_torch()
    assert type(back) is nn.RNN
    assert all(a is b for a, b in zip(back.parameters(), fused.parameters()))
    torch.testing.assert_close(back(x)[0], ref(x)[0], rtol=0, atol=0)
    # Parameter updates through one are seen by the other.
    with torch.no_grad():
        ref.weight_hh_l0.add_(0.5)
    assert_same_results(run(ref, x), run(fused, x), dtype)


def test_convert_nested_model():
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(4, 6, 2, batch_first=True, dtype=torch.float64)
            self.blocks = nn.ModuleList([nn.Linear(6, 6, dtype=torch.float64),
                                         nn.Sequential(nn.RNN(6, 3, bidirectional=True, batch_first=True,
                                                              dtype=torch.float64))])

        def forward(self, x):
            y, _ = self.rnn(x)
            y = self.blocks[0](y)
            return self.blocks[1](y)[0]

    model = Encoder()
    params_before = list(model.parameters())
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    want = model(x)
    assert fused_rnn.convert(model) is model
    assert type(model.rnn) is fused_rnn.RNN and type(model.blocks[1][0]) is fused_rnn.RNN
    assert not any(type(m) is nn.RNN for m in model.modules())
    assert all(a is b for a, b in zip(model.parameters(), params_before))
    torch.testing.assert_close(model(x), want, **TOL[torch.float64])
    single = fused_rnn.convert(nn.RNN(2, 3))
    assert type(single) is fused_rnn.RNN
    with pytest.raises(TypeError, match="expected a torch.nn.RNN or fused_rnn.RNN"):
        fused_rnn.RNN.from_torch(nn.GRU(2, 3))


def test_convert_keeps_shared_modules_hooks_and_attributes():
    """convert() replaces an nn.RNN registered twice by one fused module in both places, and the fused
    module keeps the nn.RNN's hooks (whose handles still remove them) and the user's attributes."""
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.RNN(3, 4, dtype=torch.float64)
            self.dec = self.enc
            self.stack = nn.Sequential(self.enc)

    model = Model()
    calls = []
    model.enc.register_forward_pre_hook(lambda m, args: calls.append("pre"))
    handle = model.enc.register_forward_hook(lambda m, args, out: calls.append("fwd"))
    model.enc.register_full_backward_hook(lambda m, gin, gout: calls.append("bwd"))
    model.enc.tag = "encoder"
    keys = list(model.state_dict())
    fused_rnn.convert(model)
    assert type(model.enc) is fused_rnn.RNN and model.dec is model.enc and model.stack[0] is model.enc
    assert list(model.state_dict()) == keys and model.enc.tag == "encoder"
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    model.dec(x)[0].sum().backward()
    assert calls == ["pre", "fwd", "bwd"]
    handle.remove()
    calls.clear()
    model.enc(x)
    assert calls == ["pre"]
    # convert on an nn.RNN itself moves its hooks too
    rnn = nn.RNN(3, 4)
    rnn.register_forward_hook(lambda m, args, out: calls.append("root"))
    fused_rnn.convert(rnn)(torch.randn(2, 1, 3))
    assert calls[-1] == "root"


def test_rnn_base_helpers_and_assigned_flat_weights():
    """nn.RNNBase's public helpers (check_forward_args, check_input, get_expected_hidden_size,
    check_hidden_size, permute_hidden) answer as nn.RNN's; and a list assigned to _flat_weights is what
    forward runs on, as in nn.RNN, until a weight is assigned by name, the module is moved, or
    _init_flat_weights is called."""
    import copy

    x = torch.randn(5, 2, 3, dtype=torch.float64)
    sums = []
    for make in (lambda r: r, lambda r: fused_rnn.RNN.from_torch(copy.deepcopy(r))):
        torch.manual_seed(0)
        m = make(nn.RNN(3, 4, 2, batch_first=True, dtype=torch.float64))
        m.check_forward_args(x, torch.zeros(2, 5, 4, dtype=torch.float64), None)
        with pytest.raises(RuntimeError, match=r"Expected hidden size \(2, 5, 4\), got \[2, 2, 4\]"):
            m.check_forward_args(x, torch.zeros(2, 2, 4, dtype=torch.float64), None)
        with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size"):
            m.check_input(torch.zeros(2, 2, 5, dtype=torch.float64), None)
        assert m.get_expected_hidden_size(x, torch.tensor([3, 1])) == (2, 3, 4)
        assert m.permute_hidden(torch.arange(3.0).view(1, 3, 1), torch.tensor([2, 0, 1])).flatten().tolist() == [
            2.0, 0.0, 1.0]
        # (a fresh list each time: nn.RNN's __setattr__ writes a weight assigned by name into the list)
        halves = [w.detach() * 0.5 for w in m._flat_weights]
        m._flat_weights = list(halves)
        run = [m(x)[0]]
        m.weight_hh_l1 = nn.Parameter(halves[5] * 2)  # a weight assigned by name: the module's weights again
        run.append(m(x)[0])
        m._flat_weights = list(halves)
        m.double()  # moved: its own weights again
        run.append(m(x)[0])
        m._flat_weights = list(halves)
        m._init_flat_weights()
        run.append(m(x)[0])
        # torch.func.functional_call swaps the module's own weights: those, not the assigned list, then
        # the module's own again (nn.RNN's forward saw its weights change and rebuilt its list)
        m._flat_weights = list(halves)
        run.append(torch.func.functional_call(m, {n: p * 0.3 for n, p in m.named_parameters()}, (x,))[0])
        run.append(m(x)[0])
        m._flat_weights = list(halves)
        m.register_parameter("bias_hh_l0", nn.Parameter(m.bias_hh_l0.detach() + 1))
        run.append(m(x)[0])
        # a copy runs on its own weights (nn.RNN's __setstate__ rebuilds its list), the original not
        m._flat_weights = list(halves)
        run += [copy.deepcopy(m)(x)[0], m(x)[0]]
        sums.append(run)
    for want, got in zip(*sums):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(sums[1][0], sums[1][1])


@pytest.mark.parametrize("packed", [False, True])
def test_dropout_draws_nn_rnns_masks_on_the_cpu(packed):
    """In training with dropout between layers, the same seed gives the same masks as nn.RNN on the CPU
    (one Bernoulli draw per layer's output, in nn.RNN's order) and leaves the generator in the same
    state: the outputs match, and so does the next random number."""
    ref = nn.RNN(3, 4, 3, dropout=0.5, bidirectional=True, dtype=torch.float64)
    fused = fused_rnn.RNN.from_torch(ref)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    if packed:
        x = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([6, 4]))
    results = []
    for m in (ref, fused):
        torch.manual_seed(7)
        out, hn = m(x)
        results.append((out.data if packed else out, hn, torch.rand(1)))
    for want, got in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.manual_seed(8)
    assert not torch.allclose(fused(x)[1], results[1][1])  # a different seed, other masks


def test_forward_reads_mode_as_nn_rnn_does():
    """nn.RNN's forward computes with .mode (RNN_TANH, else relu) and ignores .nonlinearity, which only
    its __init__ reads; fused_rnn.RNN does the same, and from_torch / to_torch carry both."""
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    for attr, value in (("mode", "RNN_RELU"), ("nonlinearity", "relu"), ("nonlinearity", "gelu")):
        ref = nn.RNN(3, 4, dtype=torch.float64)
        fused = fused_rnn.RNN.from_torch(ref)
        setattr(ref, attr, value)
        setattr(fused, attr, value)
        torch.testing.assert_close(fused(x)[0], ref(x)[0], rtol=1e-12, atol=1e-12)
        twin = fused_rnn.RNN.from_torch(ref)
        assert (twin.mode, twin.nonlinearity) == (ref.mode, ref.nonlinearity)
        torch.testing.assert_close(twin(x)[0], ref(x)[0], rtol=1e-12, atol=1e-12)
        back = fused.to_torch()
        assert (back.mode, back.nonlinearity) == (fused.mode, fused.nonlinearity)
    assert (ref(x)[0] < 0).any()  # .nonlinearity edited: still tanh, as nn.RNN


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype):
    """float16/bfloat16 on the CPU run in float32 and round once at the end: output and h_n equal
    those of a float32 model on the same (rounded) values, rounded to dtype. The gradients (which use
    the rounded outputs) are within 1 eps of float32 (relative to the tensor's largest element), and
    within 2x of nn.RNN's own error in that dtype."""
    torch.manual_seed(5)
    ref = nn.RNN(4, 6, 2, bidirectional=True, dtype=dtype)
    half = fused_rnn.RNN(4, 6, 2, bidirectional=True, dtype=dtype)
    full = fused_rnn.RNN(4, 6, 2, bidirectional=True)
    half.load_state_dict(ref.state_dict())
    full.load_state_dict(ref.state_dict())
    x = torch.randn(7, 3, 4).to(dtype)
    g_out = torch.randn(7, 3, 12).to(dtype)
    results = []
    for m, dt in ((full, torch.float32), (half, dtype), (ref, dtype)):
        xi = x.to(dt).detach().clone().requires_grad_()
        out, hn = m(xi)
        assert out.dtype == hn.dtype == dt
        (out * g_out.to(dt)).sum().backward()
        results.append([out, hn, xi.grad] + [p.grad for p in m.parameters()])
    want, got, torch_got = results
    eps = torch.finfo(dtype).eps
    for a, b in zip(got[:2], want[:2]):
        torch.testing.assert_close(a, b.to(dtype), rtol=eps, atol=eps * 1e-3)
    for i, (a, b, c) in enumerate(zip(got[2:], want[2:], torch_got[2:])):
        scale = b.abs().max().item()
        err, torch_err = (a.float() - b).abs().max().item() / scale, (c.float() - b).abs().max().item() / scale
        assert err <= eps and err <= 2 * torch_err, (i, err, torch_err)
