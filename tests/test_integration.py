"""fused_rnn.RNN inside real training code: DistributedDataParallel (gloo, 2 processes), mixed precision
on the CPU (autocast, .half(), .bfloat16()), serialization (torch.save/load, pickle, deepcopy, state_dict
round trips with nn.RNN) and torch.func.functional_call.

Reference everywhere: nn.RNN with the same parameters. Shapes: T steps, B batch, I input, H hidden.
"""
import copy
import datetime
import io
import os
import pickle
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import fused_rnn
from conftest import assert_within_2x, max_error, twin


class SeqModel(nn.Module):
    """Many-to-one: an RNN (fused or nn) over [B, T, I], then Linear on the last step."""

    def __init__(self, rnn_cls=fused_rnn.RNN, input_size=6, hidden_size=9, num_layers=2, out=3, **kw):
        super().__init__()
        self.rnn = rnn_cls(input_size, hidden_size, num_layers=num_layers, batch_first=True, **kw)
        d = 2 if kw.get("bidirectional") else 1
        self.fc = nn.Linear(d * hidden_size, out)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.fc(y[:, -1])


def _twins(**kw):
    """(fused, nn) SeqModels with identical parameters, those a SeqModel gets from seed 0."""
    torch.manual_seed(0)
    ref, fused = twin(lambda cls: SeqModel(cls, **kw))
    return fused, ref


# ---- DistributedDataParallel ------------------------------------------------------------------------

DDP_STEPS, DDP_BATCH, DDP_T, DDP_LR = 3, 8, 5, 0.1


def _ddp_data(step):
    """The global batch of one step: x [DDP_BATCH, DDP_T, 6], target [DDP_BATCH, 3]."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(DDP_BATCH, DDP_T, 6, generator=g), torch.randn(DDP_BATCH, 3, generator=g)


def _train(model, rank=0, world=1):
    """DDP_STEPS of SGD on this rank's contiguous shard of each global batch (mean loss per shard; DDP
    averages gradients over ranks, so every rank sees the gradient of the global mean loss).
    Returns the gradients of every step and the final parameters, by name."""
    opt = torch.optim.SGD(model.parameters(), lr=DDP_LR)
    grads = []
    for step in range(DDP_STEPS):
        x, target = _ddp_data(step)
        shard = slice(rank * DDP_BATCH // world, (rank + 1) * DDP_BATCH // world)
        opt.zero_grad()
        nn.functional.mse_loss(model(x[shard]), target[shard]).backward()
        grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})
        opt.step()
    return grads, {n: p.detach().clone() for n, p in model.named_parameters()}


def _ddp_worker(rank, world, port, out_dir):
    torch.set_num_threads(1)  # the two processes share the cores
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))
    try:
        torch.manual_seed(0)
        model = SeqModel()
        model.rnn.flatten_parameters()  # nn.RNN's API; a no-op here
        ddp = nn.parallel.DistributedDataParallel(model)
        grads, params = _train(ddp, rank, world)
        # DDP prefixes names with "module."; strip it for comparison with the plain model.
        strip = lambda d: {k.removeprefix("module."): v for k, v in d.items()}  # noqa: E731
        torch.save({"grads": [strip(g) for g in grads], "params": strip(params)},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo "
                    "is not available in this build")
def test_ddp_gloo_two_processes_match_single_process(tmp_path):
    world = 2
    # spawn, not fork: a parent that has already run autograd on worker threads (any earlier test in
    # this process, e.g. a compiled training step) cannot be forked safely.
    ctx = mp.start_processes(_ddp_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + 180
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail("DDP workers did not finish within 180 s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()

    torch.manual_seed(0)
    single_grads, single_params = _train(SeqModel())
    for rank in range(world):
        res = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert len(res["grads"]) == DDP_STEPS
        for step, (got, exp) in enumerate(zip(res["grads"], single_grads)):
            assert got.keys() == exp.keys()
            for name in exp:
                torch.testing.assert_close(got[name], exp[name], rtol=1e-5, atol=1e-6,
                                           msg=lambda m: f"rank {rank} step {step} grad {name}: {m}")
        for name in single_params:
            torch.testing.assert_close(res["params"][name], single_params[name], rtol=1e-5, atol=1e-6)
    # The weights really moved: the test would be void if training were a no-op.
    torch.manual_seed(0)
    start = dict(SeqModel().named_parameters())
    assert (single_params["rnn.weight_hh_l1"] - start["rnn.weight_hh_l1"]).abs().max() > 1e-4


# ---- mixed precision on the CPU ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_autocast_matches_nn_rnn(dtype):
    """Like nn.RNN, the RNN runs in the autocast dtype (outputs and h_n in that dtype); the error against
    the float32 result is at most 2x nn.RNN's own error in that dtype, and gradients reach the float32
    parameters in float32."""
    torch.manual_seed(0)
    ref = nn.RNN(6, 16, num_layers=2, bidirectional=True, batch_first=True)
    fused = fused_rnn.RNN.from_torch(copy.deepcopy(ref))
    x = torch.randn(5, 7, 6)
    out32, h32 = ref(x)
    results = []
    for m in (ref, fused):
        with torch.autocast("cpu", dtype=dtype):
            out, h = m(x)
        (out.float().square().sum() + h.float().sum()).backward()
        results.append((out, h, {n: p.grad for n, p in m.named_parameters()}))
    (out_r, h_r, g_r), (out_f, h_f, g_f) = results
    assert out_r.dtype == out_f.dtype == dtype and h_r.dtype == h_f.dtype == dtype
    assert_within_2x(out_f, out_r, out32, 1e-3, "output")
    assert_within_2x(h_f, h_r, h32, 1e-3, "h_n")
    assert max_error(out_f, out_r) < 3e-2
    for name, g in g_f.items():
        assert g.dtype == torch.float32 and torch.isfinite(g).all()
        torch.testing.assert_close(g, g_r[name], rtol=5e-2, atol=5e-2 * g_r[name].abs().max().item())


def test_cpu_autocast_in_a_model_trains():
    """A few autocast training steps of a fused model stay within bfloat16 noise of nn.RNN's."""
    fused, ref = _twins()
    x, target = torch.randn(8, 5, 6), torch.randn(8, 3)
    losses = []
    for m in (fused, ref):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        curve = []
        for _ in range(5):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.mse_loss(m(x).float(), target)
            loss.backward()
            opt.step()
            curve.append(loss.item())
        losses.append(torch.tensor(curve))
    assert losses[0][-1] < losses[0][0]
    torch.testing.assert_close(losses[0], losses[1], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_and_bfloat16_modules_on_cpu(dtype):
    """.half()/.bfloat16() modules: same output and gradient dtypes as nn.RNN, values within 2x nn.RNN's
    rounding error. The reference is float32 arithmetic on the same (rounded) weights and input."""
    torch.manual_seed(0)
    ref = nn.RNN(6, 16, num_layers=2, batch_first=True).to(dtype)
    fused = fused_rnn.RNN.from_torch(copy.deepcopy(ref))
    ref32 = copy.deepcopy(ref).float()
    x32 = torch.randn(4, 9, 6).to(dtype).float().requires_grad_()
    out32, _ = ref32(x32)
    out32.sum().backward()
    xs = [x32.detach().to(dtype).requires_grad_() for _ in range(2)]
    (out_r, h_r), (out_f, h_f) = ref(xs[0]), fused(xs[1])
    assert out_f.dtype == out_r.dtype == dtype and h_f.dtype == h_r.dtype == dtype
    assert_within_2x(out_f, out_r, out32, 1e-3, "output")
    out_r.float().sum().backward()
    out_f.float().sum().backward()
    assert xs[1].grad.dtype == dtype and fused.weight_ih_l0.grad.dtype == dtype
    assert_within_2x(xs[1].grad, xs[0].grad, x32.grad, 1e-3, "grad of input")
    assert_within_2x(fused.weight_hh_l0.grad, ref.weight_hh_l0.grad, ref32.weight_hh_l0.grad, 1e-3,
                     "grad of weight_hh_l0")


# ---- serialization ----------------------------------------------------------------------------------

def _same_outputs(a, b, x):
    with torch.no_grad():
        ya, yb = a(x), b(x)
    torch.testing.assert_close(ya, yb, rtol=0, atol=0)


@pytest.mark.parametrize("whole", ["module", "model"])
def test_torch_save_load_whole(whole, tmp_path):
    fused, _ = _twins(bidirectional=True)
    obj = fused.rnn if whole == "module" else fused
    torch.save(obj, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    assert type(loaded) is type(obj)
    rnn = loaded if whole == "module" else loaded.rnn
    assert isinstance(rnn, fused_rnn.RNN) and rnn.bidirectional and rnn.num_layers == 2
    x = torch.randn(3, 5, 6)
    _same_outputs(obj, loaded, x)
    out = loaded(x)
    (out[0] if whole == "module" else out).sum().backward()  # still trainable
    assert rnn.weight_hh_l1_reverse.grad is not None


def test_state_dict_round_trips_with_nn_rnn(tmp_path):
    """fused -> file (weights_only=True) -> nn.RNN, and nn.RNN -> fused: identical keys and outputs."""
    fused, ref = _twins(bidirectional=True, nonlinearity="relu")
    torch.save(fused.state_dict(), tmp_path / "sd.pt")
    sd = torch.load(tmp_path / "sd.pt", weights_only=True)
    torch.manual_seed(123)
    ref2 = SeqModel(nn.RNN, bidirectional=True, nonlinearity="relu")
    ref2.load_state_dict(sd)  # strict: same keys
    x = torch.randn(4, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(ref2(x), fused(x), rtol=1e-5, atol=1e-6)
    torch.manual_seed(321)
    fused2 = SeqModel(fused_rnn.RNN, bidirectional=True, nonlinearity="relu")
    fused2.load_state_dict(ref2.state_dict())
    assert list(fused2.state_dict()) == list(ref2.state_dict())
    _same_outputs(fused2, fused, x)


def test_deepcopy_and_pickle_are_independent():
    fused, _ = _twins()
    x = torch.randn(2, 4, 6)
    for clone in (copy.deepcopy(fused), pickle.loads(pickle.dumps(fused))):
        _same_outputs(clone, fused, x)
        assert clone.rnn.weight_hh_l0.data_ptr() != fused.rnn.weight_hh_l0.data_ptr()
        with torch.no_grad():
            clone.rnn.weight_hh_l0.add_(1.0)
        with torch.no_grad():
            assert not torch.equal(clone(x), fused(x))  # the copy owns its weights ...
    torch.testing.assert_close(fused.rnn.weight_hh_l0, _twins()[0].rnn.weight_hh_l0)  # ... the original is intact


def test_functional_call():
    """torch.func.functional_call with replacement parameters: output equals a module holding those
    parameters, and gradients flow to the replacement tensors, not to the module's own."""
    fused, ref = _twins()
    torch.manual_seed(7)
    params = {n: (torch.randn_like(p) * 0.3).requires_grad_() for n, p in fused.named_parameters()}
    x = torch.randn(3, 5, 6)
    y = torch.func.functional_call(fused, params, (x,))
    ref.load_state_dict({n: p.detach() for n, p in params.items()})
    torch.testing.assert_close(y, ref(x), rtol=1e-5, atol=1e-6)
    y.sum().backward()
    ref.zero_grad()
    ref(x).sum().backward()
    for n, p in params.items():
        torch.testing.assert_close(p.grad, dict(ref.named_parameters())[n].grad, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in fused.parameters())


def test_buffer_io_round_trip_keeps_config():
    """torch.save into a buffer keeps every constructor argument (repr included)."""
    m = fused_rnn.RNN(4, 5, 3, "relu", bias=False, batch_first=True, dropout=0.25, bidirectional=True)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    m2 = torch.load(buf, weights_only=False)
    assert repr(m2) == repr(m) == repr(nn.RNN(4, 5, 3, "relu", bias=False, batch_first=True, dropout=0.25,
                                             bidirectional=True))
    assert m2.state_dict().keys() == m.state_dict().keys()


def test_readme_usage_snippet_runs_as_written():
    """The README's Usage block, executed as it stands: every name it uses is defined there, and it
    ends with the models it describes."""
    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
    block = readme.split("## Usage", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    scope = {}
    exec(compile(block, "README.md (Usage)", "exec"), scope)
    assert type(scope["fused"]) is fused_rnn.RNN and type(scope["model"][1]) is fused_rnn.RNN
    assert scope["output"].shape == (3, 4, 20) and scope["h_n"].shape == (2, 3, 20)
