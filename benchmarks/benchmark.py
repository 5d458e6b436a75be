#!/usr/bin/env python
"""fused_rnn.RNN against torch.nn.RNN (and ONNX Runtime's RNN operator on the CPU).

    python benchmarks/benchmark.py --quick                  # CPU, 2 threads, < 3 min on 2 cores
    python benchmarks/benchmark.py                          # CPU, full sweep
    python benchmarks/benchmark.py --device cuda --quick    # GPU: the GPU issues' acceptance sweep (22 shapes)
    python benchmarks/benchmark.py --shapes "1,1000,10,20,1,F 16,128,64,128,2,T 64,128,256,256,1,F,P" --modes fwd

Shapes are written B,T,I,H,L,bidirectional[,P] (input is time-major [T, B, I]; P: a PackedSequence of
B sequences whose lengths fall evenly from T to T/4, in a fixed shuffled order). Per row and mode it
reports the per-step latency (µs/step = median time per call / T), achieved GFLOP/s and the speedup
nn.RNN time / fused time. Method (benchmarks/README.md): correctness check
first, warm-up, then interleaved samples of A, B (and ONNX Runtime) in one process and the median;
torch.cuda.Event timing on the GPU, time.perf_counter with a fixed thread count on the CPU.

Outputs in --out (default benchmarks/out): results.md (the table printed to stdout), results.json
(every sample and the environment), speedup.png (when matplotlib is installed).
"""
import argparse
import copy
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

import fused_rnn

import acceptance  # benchmarks/acceptance.py (this script's folder is on sys.path when run as a script)

DTYPES = {"float32": torch.float32, "float64": torch.float64,
          "bfloat16": torch.bfloat16, "float16": torch.float16}
# Max |fused - nn.RNN| / max(1, max |nn.RNN|) above which a row is flagged. Loose enough for a
# different summation order over long sequences, far below what a wrong kernel produces.
TOLERANCE = {"float64": 1e-9, "float32": 1e-4, "float32+tf32": 2e-2, "bfloat16": 6e-2, "float16": 1e-2}
FLOP_FORMULA = ("fwd FLOP = sum over layers l of 2*B*T*D*(I_l*H + H*H), I_0 = I, I_l = D*H; "
                "fwd+bwd FLOP = 3 x fwd (dh recurrence, dW_hh, dW_ih, dx)")


@dataclass(frozen=True)
class Shape:
    B: int
    T: int
    I: int
    H: int
    L: int = 1
    bidir: bool = False
    packed: bool = False  # input as a PackedSequence of lengths(): T down to T/4

    @property
    def D(self):
        return 2 if self.bidir else 1

    def lengths(self):
        """The packed row's sequence lengths [B]: evenly from T down to max(1, T // 4), in a fixed
        shuffled order (so pack_padded_sequence(enforce_sorted=False) has a real permutation)."""
        low = max(1, self.T // 4)
        lens = torch.tensor([self.T - (self.T - low) * b // max(1, self.B - 1) for b in range(self.B)])
        return lens[torch.randperm(self.B, generator=torch.Generator().manual_seed(1))]

    def steps(self):
        """Rows of input the recurrence runs: B*T, or the sum of the lengths when packed."""
        return int(self.lengths().sum()) if self.packed else self.B * self.T

    def label(self):
        return f"B{self.B} T{self.T} I{self.I} H{self.H}" + (f" L{self.L}" if self.L > 1 else "") + \
            (" bi" if self.bidir else "") + (" packed" if self.packed else "")

    def fwd_flop(self):
        steps = self.steps()
        return sum(2 * steps * self.D * ((self.I if l == 0 else self.D * self.H) * self.H + self.H * self.H)
                   for l in range(self.L))


S = Shape
# The rows the README quotes come first; they are samples of the general picture, never tuned for.
CPU_QUICK = [S(3, 4, 10, 20), S(1, 1000, 10, 20), S(32, 128, 64, 128), S(16, 128, 64, 128, 2, True),
             S(16, 512, 128, 256), S(64, 256, 256, 512)]
CPU_FULL = CPU_QUICK + [S(1, 100, 32, 64), S(8, 256, 32, 64), S(1, 512, 128, 128), S(128, 64, 64, 128),
                        S(4, 256, 128, 256, 3), S(1, 128, 512, 1024), S(32, 64, 1024, 1024)]
# The GPU quick sweep is the GPU issues' acceptance sweep, defined once in acceptance.py: B in {1, 8,
# 64, 256} x H in {64, 256, 512, 1024, 2048} at T = 128, I = H, then a 2-layer bidirectional H = 256
# row and a packed-input row. The full sweep adds the same B x H at T = 1024.
CUDA_QUICK = [S(B, acceptance.T, H, H, L, bidir, packed) for B, H, L, bidir, packed in acceptance.sweep()]
CUDA_FULL = CUDA_QUICK + [S(B, 1024, H, H) for H in acceptance.SWEEP_H for B in acceptance.SWEEP_B]


def parse_shapes(text):
    """'B,T,I,H[,L[,bidir[,P]]]' items separated by spaces or ';'. bidir: T/F, 1/0, true/false, bi/uni;
    P (or packed): packed input."""
    shapes = []
    for item in text.replace(";", " ").split():
        parts = item.split(",")
        if not 4 <= len(parts) <= 7:
            raise argparse.ArgumentTypeError(f"shape {item!r}: expected B,T,I,H[,L[,bidir[,P]]]")
        nums = [int(p) for p in parts[:5]]
        bidir = False
        if len(parts) >= 6:
            flag = parts[5].strip().lower()
            if flag not in ("t", "f", "1", "0", "true", "false", "bi", "uni", "2"):
                raise argparse.ArgumentTypeError(f"shape {item!r}: bidirectional flag {parts[5]!r}")
            bidir = flag in ("t", "1", "true", "bi", "2")
        packed = len(parts) == 7
        if packed and parts[6].strip().lower() not in ("p", "packed"):
            raise argparse.ArgumentTypeError(f"shape {item!r}: packed flag {parts[6]!r} (expected P)")
        shapes.append(Shape(*nums, bidir=bidir, packed=packed))
    return shapes


# ---- environment ---------------------------------------------------------------------------------

def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(args, device):
    env = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "fused_rnn": fused_rnn.__version__, "fused_rnn_cuda_kernels": fused_rnn.cuda_available(),
        "loadavg_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "device": device, "dtypes": args.dtype, "modes": args.modes, "quick": args.quick,
    }
    try:
        # FUSED_RNN_GIT_COMMIT names the commit where the checkout's git metadata is missing or stale
        # (a copied working tree on a GPU machine).
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["git_commit"] = os.environ.get("FUSED_RNN_GIT_COMMIT") or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, text=True,
                                           capture_output=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    if device == "cpu":
        env["threads"] = torch.get_num_threads()
    else:
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=torch.cuda.get_device_name(0), gpu_sms=props.multi_processor_count,
                   gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   tf32=args.tf32, cuda_regime=args.cuda_regime, gemm_tf32=args.gemm_tf32,
                   cluster_exchange=fused_rnn._C.get_switch("FUSED_RNN_CUDA_CLUSTER_EXCHANGE"),
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    try:
        import onnxruntime
        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        env["onnxruntime"] = None
    return env


# ---- ONNX Runtime ---------------------------------------------------------------------------------

def onnx_session(rnn: nn.RNN, threads):
    """An ONNX Runtime session computing `rnn` (time-major, inference): one ONNX RNN node per layer
    (W = weight_ih, R = weight_hh, B = concat(b_ih, b_hh), one slice per direction), layers joined by
    Transpose+Reshape of Y [T, D, B, H] to [T, B, D*H]. Returns (session, None) or (None, reason)."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as e:
        return None, f"onnx/onnxruntime not installed ({e.name})"
    if rnn.weight_ih_l0.dtype != torch.float32:
        return None, "ORT's CPU RNN kernel is float32 only"
    D, H = (2 if rnn.bidirectional else 1), rnn.hidden_size
    sfx = ["", "_reverse"][:D]
    nodes, inits, x = [], [], "X"
    for l in range(rnn.num_layers):
        def stack(name):
            return torch.stack([getattr(rnn, f"{name}_l{l}{s}").detach() for s in sfx]).numpy()
        inits += [numpy_helper.from_array(stack("weight_ih"), f"W{l}"),
                  numpy_helper.from_array(stack("weight_hh"), f"R{l}")]
        ins = [x, f"W{l}", f"R{l}"]
        if rnn.bias:
            bias = torch.stack([torch.cat([getattr(rnn, f"bias_ih_l{l}{s}"), getattr(rnn, f"bias_hh_l{l}{s}")])
                                for s in sfx]).detach().numpy()
            inits.append(numpy_helper.from_array(bias, f"B{l}"))
            ins.append(f"B{l}")
        last = l == rnn.num_layers - 1
        nodes.append(helper.make_node(
            "RNN", ins, [f"Y{l}", f"Y_h{l}"], hidden_size=H, layout=0,
            direction="bidirectional" if D == 2 else "forward",
            activations=[rnn.nonlinearity.capitalize()] * D))
        # Y: [T, D, B, H] -> [T, B, D*H], the next layer's input and the module's output
        nodes.append(helper.make_node("Transpose", [f"Y{l}"], [f"Yt{l}"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [f"Yt{l}", "flat"], ["Y" if last else f"X{l + 1}"]))
        x = f"X{l + 1}"
    # h_n of every layer, [L*D, B, H] as nn.RNN returns it
    nodes.append(helper.make_node("Concat", [f"Y_h{l}" for l in range(rnn.num_layers)], ["Y_h"], axis=0))
    inits.append(numpy_helper.from_array(torch.tensor([0, 0, -1]).numpy(), "flat"))
    graph = helper.make_graph(
        nodes, "rnn", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", rnn.input_size])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", "B", D * H]),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [D * rnn.num_layers, "B", H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = min(model.ir_version, 8)  # readable by any onnxruntime that has opset 14
    onnx.checker.check_model(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # ORT's pool threads busy-wait after each run by default, stealing the cores from the interleaved
    # torch calls; a production process running other work would disable it too.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]), None
    except Exception as e:  # noqa: BLE001  (any ORT failure only removes the ORT column)
        return None, f"onnxruntime failed: {type(e).__name__}: {e}"


# ---- timing ---------------------------------------------------------------------------------------

class Timer:
    """Times `inner` back-to-back calls of fn: CUDA events on the GPU, perf_counter on the CPU."""

    def __init__(self, device):
        self.cuda = device == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn, inner):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / inner
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t0) / inner


def measure(cands, timer, cfg):
    """cands: {name: fn}. Warm-up each, then `rounds` interleaved rounds (order reversed every other
    round so drift hits all alike); each sample averages `inner` calls so that it lasts >= sample_s.
    Returns {name: {"median_s", "samples_s", "inner", "rounds", "warmup_calls"}}."""
    est, warm = {}, {}
    for name, fn in cands.items():
        times, t_end = [], time.perf_counter() + cfg["warmup_s"]
        while len(times) < cfg["warmup_calls"] or time.perf_counter() < t_end:
            timer.sync()
            t0 = time.perf_counter()
            fn()
            timer.sync()
            times.append(time.perf_counter() - t0)
        est[name], warm[name] = statistics.median(times[1:]), len(times)
    inner = {n: max(1, round(cfg["sample_s"] / max(e, 1e-9))) for n, e in est.items()}
    longest = max(inner[n] * est[n] for n in cands)
    rounds = min(cfg["max_rounds"], max(cfg["min_rounds"], math.ceil(cfg["target_s"] / longest)))
    samples = {n: [] for n in cands}
    names = list(cands)
    t_stop = time.perf_counter() + cfg["max_s"]  # a loaded machine must not stretch the sweep unboundedly
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            samples[name].append(timer(cands[name], inner[name]))
        if r + 1 >= 3 and time.perf_counter() > t_stop:
            break
    return {n: {"median_s": statistics.median(samples[n]), "samples_s": samples[n], "inner": inner[n],
                "rounds": len(samples[n]), "warmup_calls": warm[n]} for n in cands}


# ---- one shape --------------------------------------------------------------------------------------

# The tests' atol (tests/test_cuda.py ATOL) in the float64 column's 2x rule.
ATOL_VS_FLOAT64 = {"float32": 1e-6, "float16": 1e-3, "bfloat16": 4e-3}


def max_rel_diff(a, b):
    """max |a - b| / max(1, max |b|), in float64."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item() if b.numel() else 0.0


def prepare(x, lengths, requires_grad=False):
    """The module input for x [T, B, I]: x itself, or (lengths given) x packed as a PackedSequence.
    Returns (input, leaf): leaf is the tensor whose .grad is the input gradient."""
    if lengths is None:
        leaf = x.detach().requires_grad_(requires_grad)
        return leaf, leaf
    p = nn.utils.rnn.pack_padded_sequence(x.detach(), lengths, enforce_sorted=False)
    leaf = p.data.detach().requires_grad_(requires_grad)
    return nn.utils.rnn.PackedSequence(leaf, p.batch_sizes, p.sorted_indices, p.unsorted_indices), leaf


def call(mod, inp):
    """mod(inp) -> (output [T, B, D*H], or the packed output's rows [N, D*H]; h_n)."""
    out, hn = mod(inp)
    return (out.data if isinstance(out, nn.utils.rnn.PackedSequence) else out), hn


def bench_shape(shape, dtype_name, modes, device, args, cfg, timer):
    """Correctness check, then timing of every mode. Returns a list of result rows (dicts)."""
    dtype = DTYPES[dtype_name]
    torch.manual_seed(0)
    ref = nn.RNN(shape.I, shape.H, shape.L, bidirectional=shape.bidir, device=device)
    notes = []
    # cuDNN has no bfloat16 RNN: nn.RNN then runs float16, from the same bf16-rounded weights
    base_dtype = dtype
    if device == "cuda" and dtype == torch.bfloat16:
        try:
            with torch.no_grad():
                copy.deepcopy(ref).to(dtype)(torch.randn(1, 1, shape.I, device=device, dtype=dtype))
        except RuntimeError as e:
            base_dtype = torch.float16
            notes.append(f"nn.RNN has no bfloat16 here ({str(e).splitlines()[0][:80]}); baseline in float16")
    fused_mod = fused_rnn.RNN.from_torch(copy.deepcopy(ref).to(dtype))
    base = copy.deepcopy(ref).to(dtype).to(base_dtype)
    base.flatten_parameters()
    x = torch.randn(shape.T, shape.B, shape.I, device=device, dtype=dtype)
    x_base = x.to(base_dtype)
    lengths = shape.lengths() if shape.packed else None

    tol_key = "float32+tf32" if (dtype == torch.float32 and device == "cuda" and args.tf32 != "off") else dtype_name
    tol = TOLERANCE["bfloat16" if base_dtype != dtype else tol_key]
    check = {"tolerance": tol}
    errors = {}
    regime = ""
    # --- correctness: forward output and h_n, then (if timed) every gradient -------------------
    with torch.no_grad():
        y_ref, h_ref = call(base, prepare(x_base, lengths)[0])
        try:
            y, h = call(fused_mod, prepare(x, lengths)[0])
            regime = fused_rnn._C.last_cuda_regime() if device == "cuda" else ""
            check["fwd_output"] = max_rel_diff(y, y_ref)
            check["fwd_h_n"] = max_rel_diff(h, h_ref)
        except Exception as e:  # noqa: BLE001  (a missing kernel is a result, not a crash)
            errors["fused"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    # Error against float64 (below float64 itself): the same dtype-rounded weights and input run in
    # float64 by nn.RNN, each implementation's largest relative difference from it, forward (output,
    # h_n) and backward (every gradient). The tests' rule: fused at most 2x nn.RNN's.
    accuracy = {}
    ref64 = copy.deepcopy(ref).to(dtype).double() if dtype != torch.float64 and "fused" not in errors else None
    if ref64 is not None:
        with torch.no_grad():
            y64, h64 = call(ref64, prepare(x.double(), lengths)[0])
        accuracy["fwd"] = {"fused": max(max_rel_diff(y, y64), max_rel_diff(h, h64)),
                           "nn.RNN": max(max_rel_diff(y_ref, y64), max_rel_diff(h_ref, h64))}
    if "fwdbwd" in modes and "fused" not in errors:
        grads = []
        for mod, inp in ((base, x_base), (fused_mod, x)) + (((ref64, x.double()),) if ref64 is not None else ()):
            packed_or_x, leaf = prepare(inp, lengths, requires_grad=True)
            out, hn = call(mod, packed_or_x)
            (out.sum() + hn.sum()).backward()
            grads.append([leaf.grad] + [p.grad for p in mod.parameters()])
            mod.zero_grad(set_to_none=True)
        check["bwd_grads"] = max(max_rel_diff(g, r) for g, r in zip(grads[1], grads[0]))
        if ref64 is not None:
            accuracy["fwdbwd"] = {name: max(max_rel_diff(g, r) for g, r in zip(grads[i], grads[2]))
                                  for i, name in ((1, "fused"), (0, "nn.RNN"))}
    for e in accuracy.values():  # the tests' rule, decided here once for the table and gpu_report.py
        e["within_2x"] = e["fused"] <= 2 * e["nn.RNN"] + ATOL_VS_FLOAT64.get(dtype_name, 0.0)

    ort_sess = None
    if device == "cpu" and "fwd" in modes and not args.no_onnx and shape.packed:
        notes.append("ONNX Runtime skipped: packed input (the ORT graph here takes padded input only)")
    elif device == "cpu" and "fwd" in modes and not args.no_onnx:
        ort_sess, why = onnx_session(base, args.threads)
        if ort_sess is None:
            notes.append(f"ONNX Runtime skipped: {why}")
        else:
            x_np = x.numpy()
            y_ort, h_ort = ort_sess.run(None, {"X": x_np})
            check["ort_fwd_output"] = max(max_rel_diff(torch.from_numpy(y_ort), y_ref),
                                          max_rel_diff(torch.from_numpy(h_ort), h_ref))
    worst = max([v for k, v in check.items() if k != "tolerance"], default=0.0)
    check["ok"] = worst <= tol
    if not check["ok"]:
        notes.append(f"WARNING: max rel diff {worst:.2e} > tolerance {tol:.0e} ({check})")

    rows = []
    for mode in modes:
        if mode == "fwd":
            def fwd(mod, inp):
                packed_or_x = prepare(inp, lengths)[0]

                def run():
                    with torch.no_grad():
                        mod(packed_or_x)
                return run
            cands = {"nn.RNN": fwd(base, x_base)}
            if "fused" not in errors:
                cands["fused"] = fwd(fused_mod, x)
            if ort_sess is not None:
                cands["onnxruntime"] = lambda s=ort_sess, a=x.numpy(): s.run(None, {"X": a})
        else:
            def fwdbwd(mod, inp):
                params = list(mod.parameters())
                packed_or_x, leaf = prepare(inp, lengths, requires_grad=True)

                def run():
                    leaf.grad = None
                    for p in params:
                        p.grad = None
                    out, hn = call(mod, packed_or_x)
                    (out.sum() + hn.sum()).backward()
                return run
            cands = {"nn.RNN": fwdbwd(base, x_base)}
            if "fused" not in errors:
                cands["fused"] = fwdbwd(fused_mod, x)
        res = measure(cands, timer, cfg)
        flop = shape.fwd_flop() * (1 if mode == "fwd" else 3)
        impls = {}
        for name, r in res.items():
            q = statistics.quantiles(r["samples_s"], n=4) if len(r["samples_s"]) > 1 else [r["median_s"]] * 3
            impls[name] = dict(r, us_per_step=r["median_s"] / shape.T * 1e6, gflops=flop / r["median_s"] / 1e9,
                               iqr_over_median=(q[2] - q[0]) / r["median_s"])
        noisy = [n for n, i in impls.items() if i.get("iqr_over_median", 0) > 0.25]
        if noisy:
            notes.append(f"{mode}: noisy samples (IQR > 25% of median) for {', '.join(noisy)} — "
                         "another process is probably competing for the cores (OpenMP threads then wait on each "
                         "other at every parallel region; compare --threads 1)")
        for name, err in errors.items():
            impls[name] = {"error": err}
        speed = {}
        if "fused" in res:
            speed["vs_nn.RNN"] = res["nn.RNN"]["median_s"] / res["fused"]["median_s"]
            if "onnxruntime" in res:
                speed["vs_onnxruntime"] = res["onnxruntime"]["median_s"] / res["fused"]["median_s"]
        rows.append({"shape": asdict(shape), "label": shape.label(), "mode": mode, "dtype": dtype_name,
                     "baseline_dtype": str(base_dtype).replace("torch.", ""), "flop": flop,
                     "impls": impls, "speedup": speed, "check": check, "notes": notes, "fused_regime": regime,
                     "error_vs_float64": accuracy.get(mode)})
    return rows


# ---- report -----------------------------------------------------------------------------------------

def header_lines(env):
    dev = (f"GPU {env['gpu']} ({env['gpu_sms']} SMs, {env['gpu_memory_gib']} GiB), host CPU {env['cpu']}"
           if env["device"] == "cuda" else
           f"CPU {env['cpu']}, {env['cpu_count']} cores ({env['cpu_affinity']} usable), "
           f"{env['threads']} threads (torch.set_num_threads; ORT intra-op threads alike)")
    lines = [f"# fused_rnn benchmark — {env['device']}, {env['date']}", "",
             f"- Machine: {dev}; {env['platform']}",
             f"- torch {env['torch']}, CUDA {env['torch_cuda']}, cuDNN {env['cudnn']}, "
             f"fused_rnn {env['fused_rnn']} (git {env['git_commit']}, CUDA kernels: {env['fused_rnn_cuda_kernels']}), "
             f"onnxruntime {env['onnxruntime'] or 'not installed'}",
             f"- dtype {', '.join(env['dtypes'])}; TF32 "
             + (f"{env['tf32']} (cudnn.allow_tf32={env['cudnn_allow_tf32']}, "
                f"cuda.matmul.allow_tf32={env['matmul_allow_tf32']}, FUSED_RNN_CUDA_GEMM_TF32="
                f"{env.get('gemm_tf32', 'matmul')}, FUSED_RNN_CUDA_CLUSTER_EXCHANGE="
                f"{env.get('cluster_exchange', 'barrier')}); fused regime forced: "
                f"{env.get('cuda_regime', 'auto')}" if env["device"] == "cuda" else "n/a (CPU)"),
             "- Method: correctness check, warm-up, interleaved samples (nn.RNN / fused / ORT), median; "
             + ("CUDA events" if env["device"] == "cuda" else "time.perf_counter")
             + "; fwd under torch.no_grad(), fwd+bwd = forward + (output.sum()+h_n.sum()).backward(), "
               "input requires grad, grads set to None per call; time-major input, h0 = zeros, tanh; "
               "packed rows: lengths T down to T/4 in a shuffled order, packed once outside the timed call, "
               "GFLOP/s over the packed rows",
             "- max rel diff: fused against nn.RNN, max |a - b| / max(1, max |b|) over the outputs (fwd) and "
             "gradients (fwd+bwd); error vs float64: each against nn.RNN run in float64 on the same dtype-rounded "
             "weights and input (⚠: fused over 2x nn.RNN's error plus the tests' atol)",
             f"- µs/step = median time per call / T; GFLOP/s from: {FLOP_FORMULA}",
             "- speedup = nn.RNN time / fused time (> 1: fused faster); vs ORT = ORT time / fused time"]
    if env["device"] == "cpu":
        lines.append(f"- Shared CPU machine: absolute times are indicative only, quote the ratios; 1-min load "
                     f"average {env['loadavg_start']:.1f} at start, {env['loadavg_end']:.1f} at end")
    return lines


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def table_lines(rows, multi_dtype):
    has_ort = any("onnxruntime" in r["impls"] for r in rows)
    cols = (["B", "T", "I", "H", "L", "dir"] + (["dtype"] if multi_dtype else []) + ["mode"]
            + (["fused regime"] if any(r.get("fused_regime") for r in rows) else [])
            + ["nn.RNN µs/step", "fused µs/step"] + (["ORT µs/step"] if has_ort else [])
            + ["nn.RNN GFLOP/s", "fused GFLOP/s", "speedup"] + (["vs ORT"] if has_ort else [])
            + ["max rel diff"]
            + (["error vs float64: fused / nn.RNN"] if any(r.get("error_vs_float64") for r in rows) else []))
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        s, im = r["shape"], r["impls"]

        def get(name, key, spec):
            if name not in im:
                return "—"
            return "error" if "error" in im[name] else fmt(im[name][key], spec)
        sp = r["speedup"]
        diffs = [v for k, v in r["check"].items() if k not in ("tolerance", "ok") and k.startswith(
            ("fwd", "bwd") if r["mode"] == "fwdbwd" else "fwd")]
        diff = fmt(max(diffs), ".1e") if diffs else "—"
        if not r["check"]["ok"]:
            diff += " ⚠"
        cells = ([s["B"], s["T"], s["I"], s["H"], s["L"],
                  ("bi" if s["bidir"] else "uni") + (" packed" if s.get("packed") else "")]
                 + ([r["dtype"] + ("" if r["baseline_dtype"] == r["dtype"] else f" (nn.RNN {r['baseline_dtype']})")]
                    if multi_dtype else [])
                 + ["fwd" if r["mode"] == "fwd" else "fwd+bwd"]
                 + ([r.get("fused_regime") or "—"] if "fused regime" in cols else [])
                 + [get("nn.RNN", "us_per_step", ".2f"), get("fused", "us_per_step", ".2f")]
                 + ([get("onnxruntime", "us_per_step", ".2f")] if has_ort else [])
                 + [get("nn.RNN", "gflops", ".3g"), get("fused", "gflops", ".3g"),
                    fmt(sp.get("vs_nn.RNN"), ".2f") + ("×" if "vs_nn.RNN" in sp else "")]
                 + ([fmt(sp.get("vs_onnxruntime"), ".2f") + ("×" if "vs_onnxruntime" in sp else "")] if has_ort else [])
                 + [diff])
        if "error vs float64: fused / nn.RNN" in cols:
            e = r.get("error_vs_float64")
            cells.append("—" if not e else f"{fmt(e['fused'], '.1e')} / {fmt(e['nn.RNN'], '.1e')}"
                         + ("" if e["within_2x"] else " ⚠"))
        out.append("| " + " | ".join(str(c) for c in cells) + " |")
    return out


def plot(rows, path, env):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed: no plot (pip install matplotlib)"
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    series = [("fwd", "vs_nn.RNN", "fwd vs nn.RNN"), ("fwdbwd", "vs_nn.RNN", "fwd+bwd vs nn.RNN"),
              ("fwd", "vs_onnxruntime", "fwd vs ONNX Runtime")]
    series = [s for s in series if any(r["mode"] == s[0] and s[1] in r["speedup"] for r in rows)]
    if not series:
        return "no speedups to plot (fused failed everywhere?)"
    n_labels = max(len({r["label"] for r in rows if r["dtype"] == d}) for d in dtypes)
    fig, axes = plt.subplots(len(dtypes), 1, figsize=(max(8, 0.55 * n_labels * len(series) / 2 + 3),
                                                      4.8 * len(dtypes)), squeeze=False)
    for ax, dt in zip(axes[:, 0], dtypes):
        sub = [r for r in rows if r["dtype"] == dt]
        labels = list(dict.fromkeys(r["label"] for r in sub))
        width = 0.8 / len(series)
        for k, (mode, key, name) in enumerate(series):
            vals = [next((r["speedup"].get(key, math.nan) for r in sub if r["label"] == lab and r["mode"] == mode),
                         math.nan) for lab in labels]
            xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(labels))]
            bars = ax.bar(xs, vals, width, label=name)
            ax.bar_label(bars, labels=["" if math.isnan(v) else f"{v:.2g}" for v in vals], fontsize=7)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("speedup of fused_rnn (×, log)")
        machine = env.get("gpu") or f"{env['cpu']}, {env['threads']} threads"
        ax.set_title(f"fused_rnn speedup — {machine}, {dt}", fontsize=10)
        ax.margins(y=0.15)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


class Progress:
    """tqdm on stderr if installed, else a plain text bar."""

    def __init__(self, total):
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="row", file=sys.stderr, dynamic_ncols=True)
        except ImportError:
            self.bar = None
        self.total, self.done, self.t0 = total, 0, time.perf_counter()

    def update(self, desc):
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(desc)
            self.bar.update(1)
            return
        n = int(30 * self.done / self.total)
        sys.stderr.write(f"\r[{'#' * n}{'.' * (30 - n)}] {self.done}/{self.total} "
                         f"{time.perf_counter() - self.t0:5.0f}s {desc[:40]:<40}")
        sys.stderr.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        else:
            sys.stderr.write("\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--quick", action="store_true", help="key shapes only, shorter measurements")
    p.add_argument("--out", default=os.path.join("benchmarks", "out"), help="output folder")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads, ORT)")
    p.add_argument("--dtype", default=None,
                   help="comma list of float32,float64,bfloat16,float16 (default: float32 on the CPU; "
                        "float32 and bfloat16 on CUDA; on CUDA float32 is always included in the sweep)")
    p.add_argument("--tf32", choices=["on", "off", "default"], default="off",
                   help="CUDA: torch.backends.cudnn.allow_tf32 and cuda.matmul.allow_tf32 both on or off "
                        "(default off: true fp32 for both nn.RNN and fused), or 'default': PyTorch's defaults, "
                        "cuDNN on and matmul off (what users get)")
    p.add_argument("--gemm-tf32", choices=["matmul", "rnn"], default="matmul",
                   help="CUDA: FUSED_RNN_CUDA_GEMM_TF32, which flags let the fused stack's float32 GEMMs use TF32")
    p.add_argument("--cuda-regime", choices=["auto", "grid", "step", "gemm", "resident", "tuned"], default="auto",
                   help="CUDA: forces a fused regime (FUSED_RNN_CUDA_REGIME, through fused_rnn._C.set_switch); "
                        "the table's 'fused regime' column names the one the forward took")
    p.add_argument("--shapes", type=parse_shapes, default=None,
                   help='override the sweep: "B,T,I,H[,L[,bidir]] ..." e.g. "1,1000,10,20 16,128,64,128,2,T"')
    p.add_argument("--modes", default="fwd,fwdbwd", help="comma list of fwd,fwdbwd")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds of samples per candidate and measurement (default 0.2, quick 0.05)")
    p.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime even if installed")
    args = p.parse_args(argv)

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("fwd", "fwdbwd") for m in modes):
        p.error(f"--modes: expected a comma list of fwd,fwdbwd, got {args.modes!r}")
    args.modes = modes
    if args.dtype is None:
        dtypes = ["float32"] if args.device == "cpu" else ["float32", "bfloat16"]
    else:
        dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
        if args.device == "cuda" and args.shapes is None and "float32" not in dtypes:
            dtypes.insert(0, "float32")
    if not dtypes or any(d not in DTYPES for d in dtypes):
        p.error(f"--dtype: expected a comma list of {','.join(DTYPES)}, got {args.dtype!r}")
    args.dtype = dtypes

    if args.device == "cuda":
        if not torch.cuda.is_available():
            p.error("--device cuda: torch sees no GPU")
        torch.backends.cudnn.allow_tf32 = args.tf32 in ("on", "default")
        torch.backends.cuda.matmul.allow_tf32 = args.tf32 == "on"
        fused_rnn._C.set_switch("FUSED_RNN_CUDA_GEMM_TF32", args.gemm_tf32)
        torch.backends.cudnn.benchmark = False
        fused_rnn._C.set_switch("FUSED_RNN_CUDA_REGIME", args.cuda_regime)
        if not fused_rnn.cuda_available():
            print("note: this fused_rnn build has no CUDA kernels; fused rows will show 'error'", file=sys.stderr)
    else:
        torch.set_num_threads(args.threads)
    shapes = args.shapes or {("cpu", True): CPU_QUICK, ("cpu", False): CPU_FULL,
                             ("cuda", True): CUDA_QUICK, ("cuda", False): CUDA_FULL}[(args.device, args.quick)]
    target = args.min_time if args.min_time is not None else (0.05 if args.quick else 0.2)
    cfg = {"target_s": target, "sample_s": 2e-3 if args.quick else 5e-3, "min_rounds": 5 if args.quick else 9,
           "max_rounds": 200 if args.quick else 400, "warmup_s": target / 2, "warmup_calls": 3,
           "max_s": 6.0 if args.quick else 60.0}
    timer = Timer(args.device)
    env = environment(args, args.device)
    env["timing"] = cfg

    rows, notes = [], []
    t_start = time.perf_counter()
    bar = Progress(len(shapes) * len(dtypes))
    for dt in dtypes:
        for shape in shapes:
            t_row = time.perf_counter()
            try:
                new = bench_shape(shape, dt, modes, args.device, args, cfg, timer)
                for r in new:
                    r["shape_wall_s"] = round(time.perf_counter() - t_row, 2)
            except Exception as e:  # noqa: BLE001  (one failing shape must not lose the sweep)
                notes.append(f"{shape.label()} {dt}: skipped, {type(e).__name__}: {str(e).splitlines()[0][:160]}")
            else:
                rows += new
                for n in new[0]["notes"]:
                    notes.append(f"{shape.label()} {dt}: {n}")
            bar.update(f"{shape.label()} {dt}")
            if args.device == "cuda":
                torch.cuda.empty_cache()
    bar.close()
    env["wall_s"] = round(time.perf_counter() - t_start, 1)
    env["loadavg_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    os.makedirs(args.out, exist_ok=True)
    ort_notes = sorted({n.split(": ", 1)[1] for n in notes if "ONNX Runtime skipped" in n})
    notes = [n for n in notes if "ONNX Runtime skipped" not in n] + ort_notes
    plot_msg = plot(rows, os.path.join(args.out, "speedup.png"), env)
    md = header_lines(env) + [""] + table_lines(rows, len(dtypes) > 1) + [""]
    md += [f"- {n}" for n in notes]
    md.append(f"- Wall time {env['wall_s']} s; raw samples in results.json"
              + (f"; {plot_msg}" if plot_msg else "; plot in speedup.png"))
    tuning = fused_rnn._C.tuning_log() if args.device == "cuda" else []
    if tuning:  # --cuda-regime tuned: what each kind of call measured and took
        env["tuning_log"] = tuning
        md += ["", "Regime choices (FUSED_RNN_CUDA_REGIME=tuned: trial time per route, µs for the first "
               "min(T, 16) steps):", ""] + [f"- {line}" for line in tuning]
    text = "\n".join(md) + "\n"
    print(text)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"environment": env, "flop_formula": FLOP_FORMULA, "notes": notes, "rows": rows}, f, indent=1)
    print(f"wrote {args.out}/results.md, results.json" + ("" if plot_msg else ", speedup.png"), file=sys.stderr)
    return 0 if all(r["check"]["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
