"""Everything autograd and torch.func can ask of fused_rnn beyond one first-order backward: double
backward (create_graph), forward-mode AD, batched gradients, and the torch.func transforms. These run
the composite formulation (csrc/rnn_composite.h); each result is held to the same computation through
fused_rnn.reference (plain autograd over the step-by-step specification) or through nn.RNN.

Shapes: T steps, B batch, I input, H hidden, D directions, L layers.
"""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.func as tf
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_sequence

from conftest import F64, TOL, assert_same_results, op_args, op_fn, op_inputs, reference_fn, twins
import fused_rnn
from fused_rnn.functional import RNNFunction

CONFIGS = {
    "tanh_2layer_bi": dict(num_layers=2, bidirectional=True),
    "relu_1layer": dict(num_layers=1, bidirectional=False, relu=True),
    "packed_bi_nobias": dict(num_layers=2, bidirectional=True, packed=True, has_biases=False),
    "dropout_mask": dict(num_layers=3, bidirectional=False, mask_p=0.4),
}


def _scalar(f):
    """A scalar loss of both outputs, nonlinear so second derivatives are not trivially zero."""
    return lambda *args: (lambda o: o[0].sin().sum() + (o[1] ** 2).sum())(f(*args))


@pytest.mark.parametrize("config", CONFIGS)
def test_double_backward_matches_reference(config):
    """d/dθ of |∂L/∂θ|² (a gradient penalty): second-order terms through every argument."""
    a = op_args(**CONFIGS[config])
    results = []
    for f in (op_fn(a), reference_fn(a)):
        leaves = [t.detach().clone().requires_grad_() for t in op_inputs(a)]
        grads = torch.autograd.grad(_scalar(f)(*leaves), leaves, create_graph=True)
        penalty = sum((g ** 2).sum() for g in grads)
        results.append(torch.autograd.grad(penalty, leaves))
    assert_same_results(results[1], results[0], F64, scaled=False)


@pytest.mark.parametrize("config", ["tanh_2layer_bi", "packed_bi_nobias"])
def test_gradcheck_batched_forward_ad_and_gradgradcheck(config):
    a = op_args(T=3, B=2, I=2, H=3, **CONFIGS[config])
    leaves = [t.detach().clone().requires_grad_() for t in op_inputs(a)]
    f = op_fn(a)
    assert torch.autograd.gradcheck(f, leaves, check_batched_grad=True, check_forward_ad=True)
    assert torch.autograd.gradgradcheck(f, leaves, check_batched_grad=True)


@pytest.mark.parametrize("config", CONFIGS)
def test_forward_mode_dual_tensors(config):
    a = op_args(**CONFIGS[config])
    tangents = [torch.randn_like(t) for t in op_inputs(a)]
    results = []
    for f in (op_fn(a), reference_fn(a)):
        with fwAD.dual_level():
            duals = [fwAD.make_dual(t, v) for t, v in zip(op_inputs(a), tangents)]
            out, hy = f(*duals)
            results.append([fwAD.unpack_dual(out).tangent, fwAD.unpack_dual(hy).tangent])
    assert all(t.abs().sum() > 0 for t in results[0])  # not the silent zeros of an opaque node
    assert_same_results(results[1], results[0], F64, scaled=False)


TRANSFORMS = {
    "grad": lambda f, args: tf.grad(f, argnums=tuple(range(len(args))))(*args),
    "grad_and_value": lambda f, args: tf.grad_and_value(f, argnums=(0, 2))(*args),
    "vjp": lambda f, args: tf.vjp(f, *args)[1](torch.tensor(1.0, dtype=torch.float64)),
    "jacrev": lambda f, args: tf.jacrev(f, argnums=(0, 1))(*args),
    "jvp": lambda f, args: tf.jvp(f, args, tuple(torch.ones_like(t) for t in args)),
    "jacfwd": lambda f, args: tf.jacfwd(f, argnums=(0, 3))(*args),
    "hessian": lambda f, args: tf.hessian(f, argnums=1)(*args),
}


@pytest.mark.parametrize("config", ["tanh_2layer_bi", "relu_1layer", "packed_bi_nobias"])
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_torch_func_transforms_match_reference(transform, config):
    a = op_args(T=3, B=2, I=3, H=3, **CONFIGS[config])
    got = TRANSFORMS[transform](_scalar(op_fn(a)), op_inputs(a))
    expected = TRANSFORMS[transform](_scalar(reference_fn(a)), op_inputs(a))
    assert_same_results(expected, got, F64, scaled=False)


@pytest.mark.parametrize("transform", ["jacrev", "jacfwd", "hessian"])
def test_module_jacobians_and_hessian_match_nn_rnn(transform):
    """The use that motivates it: Jacobians/Hessians of a trained RNN's dynamics via functional_call."""
    ref, fused = twins(3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    h = torch.randn(4, 2, 4, dtype=torch.float64)

    def loss(m):
        return lambda params, h: (lambda o: o[0].tanh().sum() + o[1].sum())(tf.functional_call(m, params, (x, h)))
    fn = {"jacrev": tf.jacrev, "jacfwd": tf.jacfwd, "hessian": tf.hessian}[transform]
    results = [fn(loss(m), argnums=1)(dict(m.named_parameters()), h) for m in (ref, fused)]
    assert_same_results(results[0], results[1], F64, scaled=False)


def test_autograd_functional_jacobian_vectorized_and_hessian():
    ref, fused = twins(3, 4, nonlinearity="relu")
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    jac = [torch.autograd.functional.jacobian(lambda x: m(x)[0], x, vectorize=True) for m in (ref, fused)]
    hes = [torch.autograd.functional.hessian(lambda x: m(x)[0].sin().sum(), x, vectorize=True) for m in (ref, fused)]
    assert_same_results(jac[0], jac[1], F64, scaled=False)
    assert_same_results(hes[0], hes[1], F64, scaled=False)


def test_per_sample_gradients_vmap_of_grad():
    ref, fused = twins(3, 4, num_layers=2)
    xs = torch.randn(5, 4, 3, dtype=torch.float64)  # 5 samples of unbatched [T, I]

    def loss(m):
        return lambda params, x: tf.functional_call(m, params, (x,))[0].sin().sum()
    params = {k: v.detach() for k, v in fused.named_parameters()}
    got = tf.vmap(tf.grad(loss(fused)), in_dims=(None, 0))(params, xs)
    ref_params = {k: v.detach() for k, v in ref.named_parameters()}
    for k in params:
        expected = torch.stack([tf.grad(loss(ref))(ref_params, x)[k] for x in xs])
        torch.testing.assert_close(got[k], expected, **TOL[torch.float64])


def test_vmap_of_the_forward():
    """nn.RNN itself cannot be vmapped; fused_rnn can (the composite batching rule)."""
    ref, fused = twins(3, 4, bidirectional=True)
    xs = torch.randn(5, 4, 3, dtype=torch.float64)
    out, hy = tf.vmap(fused)(xs)
    for i, x in enumerate(xs):
        o, h = ref(x)
        torch.testing.assert_close(out[i], o, **TOL[torch.float64])
        torch.testing.assert_close(hy[i], h, **TOL[torch.float64])


def test_packed_sequence_under_grad_and_jacfwd():
    """PackedSequence built outside the transform (torch's own pack_sequence has no functorch support)."""
    ref, fused = twins(3, 4, bidirectional=True)
    pk = pack_sequence([torch.randn(n, 3, dtype=torch.float64) for n in (2, 4, 3)], enforce_sorted=False)

    def loss(m):
        def f(data):
            out, hy = m(PackedSequence(data, pk.batch_sizes, pk.sorted_indices, pk.unsorted_indices))
            return out.data.sin().sum() + hy.sum()
        return f
    data = pk.data.detach().clone().requires_grad_()
    loss(ref)(data).backward()
    for transform in (tf.grad, tf.jacfwd):
        torch.testing.assert_close(transform(loss(fused))(pk.data), data.grad, **TOL[torch.float64])


@pytest.mark.parametrize("path", ["module", "op", "RNNFunction"])
def test_gradient_penalty_keeps_second_order_terms(path):
    """create_graph=True then differentiate again, through each entry point."""
    ref, fused = twins(3, 4, num_layers=2)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    h = torch.zeros(2, 2, 4, dtype=torch.float64)

    def second_order(m, call):
        xx = x.clone().requires_grad_()
        g, = torch.autograd.grad(call(m, xx).sin().sum(), xx, create_graph=True)
        return torch.autograd.grad(g.pow(2).sum(), [xx, *m.parameters()])
    calls = {
        "module": lambda m, xx: m(xx)[0],
        "op": lambda m, xx: torch.ops.fused_rnn.rnn_forward(xx, h, list(m.parameters()), None, None, 2, False, False,
                                                             True)[0],
        "RNNFunction": lambda m, xx: RNNFunction.apply(xx, h, None, None, 2, False, False, True, *m.parameters())[0],
    }
    expected = second_order(ref, lambda m, xx: m(xx, h)[0])
    got = second_order(fused, calls[path])
    assert_same_results(expected, got, F64, scaled=False)


def test_tied_weights_double_backward():
    """One tensor in two weight positions: each position's partial gradient, summed once by autograd."""
    ref, fused = twins(3, 4, num_layers=2)
    shared = torch.randn(4, 4, dtype=torch.float64) * 0.5
    for m in (ref, fused):
        m.weight_hh_l0 = m.weight_ih_l1 = nn.Parameter(shared.clone())
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    results = []
    for m in (ref, fused):
        g, = torch.autograd.grad(m(x)[0].sin().sum(), m.weight_hh_l0, create_graph=True)
        results.append((g, torch.autograd.grad(g.pow(2).sum(), m.weight_hh_l0)[0]))
    assert_same_results(results[0], results[1], F64, scaled=False)


@pytest.mark.parametrize("inplace", ["relu_", "mul_", "dropout"])
def test_inplace_change_of_output_before_backward(inplace):
    """nn.RNN on the CPU accepts an in-place op on its output before backward; so does fused_rnn."""
    ref, fused = twins(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    ops = {"relu_": torch.relu_, "mul_": lambda o: o.mul_(2.0),
           "dropout": lambda o: nn.functional.dropout(o, 0.5, training=True, inplace=True)}
    grads = []
    for m in (ref, fused):
        xx = x.clone().requires_grad_()
        out, hy = m(xx)
        torch.manual_seed(3)
        ops[inplace](out)
        (out.sum() + hy.sum()).backward()
        grads.append([xx.grad] + [p.grad for p in m.parameters()])
    assert_same_results(grads[0], grads[1], F64, scaled=False)


def test_rnn_function_allows_inplace_change_of_output():
    a = op_args(num_layers=2, bidirectional=False)
    leaves = [t.detach().clone().requires_grad_() for t in op_inputs(a)]
    results = []
    for f in (lambda *t: RNNFunction.apply(t[0], t[1], None, None, 2, False, False, True, *t[2:])[:2],
              reference_fn(a)):
        for t in leaves:
            t.grad = None
        out, hy = f(*leaves)
        out.mul_(3.0)
        (out.sin().sum() + hy.sum()).backward()
        results.append([t.grad.clone() for t in leaves])
    assert_same_results(results[1], results[0], F64, scaled=False)


def _inplace_trial(make, bidirectional, needs, target, create_graph=False, T=5):
    """One forward of make(ref) (ref: a 2-layer nn.RNN), target changed in place, then backward:
    ("ok", gradients of the leaves that require grad) or ("error",) for the version-counter error."""
    torch.manual_seed(0)
    ref = nn.RNN(3, 4, 2, bidirectional=bidirectional, dtype=torch.float64)
    m = make(ref)
    x = torch.randn(T, 2, 3, dtype=torch.float64)
    hx = torch.randn(4 if bidirectional else 2, 2, 4, dtype=torch.float64)
    tensors = dict(ref.named_parameters(), x=x, hx=hx)
    for name, t in tensors.items():
        t.requires_grad_(any(name == n or (n == "params" and name not in ("x", "hx"))
                             or (n == "l1" and "_l1" in name) for n in needs))
    out, hy = m(x, hx)
    with torch.no_grad():
        tensors[target].add_(0.5)
    leaves = [t for t in tensors.values() if t.requires_grad]
    try:
        grads = torch.autograd.grad(out.sin().sum() + hy.sum(), leaves, create_graph=create_graph)
    except RuntimeError as e:
        # the version-counter error (nn.RNN's names a view of hx where hx itself was changed)
        assert "modified by an inplace operation" in str(e) or "has been modified inplace" in str(e), str(e)
        return ("error",)
    return ("ok", grads)


@pytest.mark.parametrize("T", [5, 1])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("needs", [("x", "hx", "params"), ("x",), ("hx",), ("params",), ("l1",), ("weight_ih_l0",),
                                   ("weight_hh_l1",), ("bias_hh_l0",), ("x", "weight_hh_l0")])
def test_inplace_change_between_forward_and_backward_as_nn_rnn(needs, bidirectional, T):
    """An argument changed in place between forward and backward is a version-counter error exactly
    where nn.RNN's is: where the gradients asked for read it (nn.RNN's autograd saves only those).
    A bias never is (an EMA or weight-decay step on it before backward is fine); the input not where
    only hx's gradient is wanted; hx not where no W_hh requires grad; and so on."""
    targets = ["x", "hx"] + [n for n, _ in nn.RNN(3, 4, 2, bidirectional=bidirectional).named_parameters()]
    for target in targets:
        want = _inplace_trial(lambda ref: ref, bidirectional, needs, target, T=T)
        got = _inplace_trial(fused_rnn.RNN.from_torch, bidirectional, needs, target, T=T)
        assert got[0] == want[0], (needs, target, want[0])
        if want[0] == "ok":
            assert_same_results(want[1], got[1], F64, scaled=False)
    # RNNFunction (the same node in Python) reads what the C++ node reads
    for target in targets:
        def through_function(ref):
            def call(x, hx):
                w = [p for p in ref.parameters()]
                return RNNFunction.apply(x, hx, None, None, 2, bidirectional, False, True, *w)[:2]
            return call
        got = _inplace_trial(through_function, bidirectional, needs, target, T=T)
        want = _inplace_trial(fused_rnn.RNN.from_torch, bidirectional, needs, target, T=T)
        assert got[0] == want[0], (needs, target, "RNNFunction")


def test_double_backward_refuses_an_unread_argument_changed_in_place():
    """create_graph=True recomputes the forward from all its arguments: a bias changed in place
    between forward and backward, which a first-order backward never reads, is a version-counter
    error there (never a silently different second derivative), in the op's node and RNNFunction."""
    assert _inplace_trial(fused_rnn.RNN.from_torch, False, ("params",), "bias_ih_l0")[0] == "ok"
    assert _inplace_trial(fused_rnn.RNN.from_torch, False, ("params",), "bias_ih_l0", create_graph=True) == ("error",)
    assert _inplace_trial(fused_rnn.RNN.from_torch, False, ("params",), "weight_ih_l1", create_graph=True)[0] == "error"
    ok = _inplace_trial(fused_rnn.RNN.from_torch, False, ("params",), "x", create_graph=True)
    assert ok[0] == "error"  # x unread (no grad wanted of it), yet the recomputation needs it

    def through_function(ref):
        return lambda x, hx: RNNFunction.apply(x, hx, None, None, 2, False, False, True, *ref.parameters())[:2]
    assert _inplace_trial(through_function, False, ("params",), "bias_hh_l1")[0] == "ok"
    assert _inplace_trial(through_function, False, ("params",), "bias_hh_l1", create_graph=True) == ("error",)


@pytest.mark.parametrize("how", ["checkpoint_reentrant", "checkpoint", "save_on_cpu"])
def test_activation_checkpointing_and_saved_tensor_hooks(how):
    """torch.utils.checkpoint (both kinds, with dropout between layers: the recomputation replays the
    RNG) and torch.autograd.graph.save_on_cpu give nn.RNN's gradients."""
    import torch.utils.checkpoint as ckpt

    grads = []
    for make in (lambda r: r, fused_rnn.RNN.from_torch):
        torch.manual_seed(0)
        m = make(nn.RNN(3, 4, 3, dropout=0.3, bidirectional=True, dtype=torch.float64))
        x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
        torch.manual_seed(1)
        if how == "save_on_cpu":
            with torch.autograd.graph.save_on_cpu():
                out, hn = m(x)
        else:
            out, hn = ckpt.checkpoint(m, x, use_reentrant=how == "checkpoint_reentrant")
        (out.sin().sum() + hn.sum()).backward()
        grads.append([x.grad] + [p.grad for p in m.parameters()])
    assert_same_results(grads[0], grads[1], F64, scaled=False)


@pytest.mark.parametrize("path", ["module", "RNNFunction"])
@pytest.mark.parametrize("pattern", ["frozen_rnn_trainable_upstream", "frozen_input_weights", "no_input_grad"])
def test_gradient_penalty_through_arguments_the_first_backward_does_not_read(pattern, path):
    """Double backward where the first-order backward leaves some arguments unread (kept outside
    save_for_backward): the second-order terms still reach them and what produced them. A frozen RNN
    behind a trainable Linear, penalised on the gradient of its input; a frozen layer-0 W_ih; an input
    without grad. Against nn.RNN's double backward."""
    results = []
    for fused in (False, True):
        torch.manual_seed(0)
        up = nn.Linear(3, 3, dtype=torch.float64)
        ref = nn.RNN(3, 4, 2, bidirectional=True, dtype=torch.float64)
        if pattern == "frozen_rnn_trainable_upstream":
            ref.requires_grad_(False)
        elif pattern == "frozen_input_weights":
            ref.weight_ih_l0.requires_grad_(False)
            ref.weight_ih_l0_reverse.requires_grad_(False)
        if not fused:
            rnn = ref
        elif path == "module":
            rnn = fused_rnn.RNN.from_torch(ref)
        else:
            def rnn(x, ref=ref):
                return RNNFunction.apply(x, torch.zeros(4, 2, 4, dtype=torch.float64), None, None, 2, True, False,
                                         True, *ref.parameters())[:2]
        z = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=pattern != "no_input_grad")
        x = up(z)
        out, hn = rnn(x)
        loss = out.sin().sum() + (hn ** 2).sum()
        wrt = [x] if x.requires_grad else [p for p in ref.parameters() if p.requires_grad][:2]
        penalty = sum(g.square().sum() for g in torch.autograd.grad(loss, wrt, create_graph=True))
        leaves = [p for p in (*up.parameters(), *ref.parameters()) if p.requires_grad]
        results.append(torch.autograd.grad(loss + penalty, leaves))
    assert_same_results(results[0], results[1], F64, scaled=False)


def test_autograd_node_name_says_what_it_is():
    """Tensors print grad_fn=<...CppNode<fused_rnn::RnnBackward>> (as ATen's XBackward0 nodes read),
    the name anomaly mode reports: not an anonymous namespace's."""
    out, hn = fused_rnn.RNN(3, 4)(torch.randn(5, 2, 3, requires_grad=True))
    assert out.grad_fn.name() == hn.grad_fn.name() == "torch::autograd::CppNode<fused_rnn::RnnBackward>"
