"""The GPU issues' "done when" rows, checked on benchmark.py results.

    python benchmarks/acceptance.py RESULTS_DIR [RESULTS_DIR ...]     (each holds a results.json)

gpu_report.py puts the same table in the GPU check's results file. Each criterion is a set of rows of
the GPU quick sweep (sweep() below, which benchmark.py runs as CUDA_QUICK: T = 128, I = H, B in {1, 8,
64, 256}, H in {64, 256, 512, 1024, 2048}, a 2-layer bidirectional H = 256 row and a packed-input row,
both B = 64, which the "H <= 256, B <= 64" criteria count too), a dtype, the TF32 setting the run had,
the modes, and the speedup over nn.RNN (cuDNN) each row must reach; the error rows ask benchmark.py's
own verdict on the tests' rule (fused error against float64 at most 2x nn.RNN's). For every run that
has rows of a criterion it gives the rows met, the sweep rows the run lacks, and the rows that fall
short. It reads results only; it judges nothing that was not measured (a criterion no run covers says
so).

Sources: issue 11 (float32: every row >= 1.0x with TF32 off and on; H <= 256, B <= 64: fwd >= 2x
TF32 off, >= 1.5x on; H 512-1024, B <= 64: fwd >= 2x, fwd+bwd >= 1.5x, both TF32 settings) and
issue 12 (float16: every row >= 1.0x, >= 1.5x at B <= 64, H 512-1024; bfloat16 every row >= 1.0x
against cuDNN bfloat16, or cuDNN float16 where the table says so; error within the 2x rule).
"""
import json
import os
import re
import sys
from typing import Callable, NamedTuple, Tuple

SWEEP_B = (1, 8, 64, 256)
SWEEP_H = (64, 256, 512, 1024, 2048)
T = 128


def sweep():
    """The quick sweep's shapes as (B, H, L, bidir, packed)."""
    return ([(B, H, 1, False, False) for H in SWEEP_H for B in SWEEP_B]
            + [(64, 256, 2, True, False), (64, 256, 1, False, True)])


def key(shape):
    """A result row's shape as sweep() writes it, or None where it is not a sweep shape."""
    if shape["T"] != T or shape["I"] != shape["H"]:
        return None
    k = (shape["B"], shape["H"], shape["L"], bool(shape["bidir"]), bool(shape.get("packed", False)))
    return k if k in sweep() else None


class Criterion(NamedTuple):
    issue: int
    text: str
    dtypes: Tuple[str, ...]
    tf32: str  # "off", "on" (on: the run allowed TF32 to cuDNN, --tf32 on or default), "any"
    rows: Callable  # (B, H, L, bidir, packed) -> bool
    modes: Tuple[str, ...]  # "fwd", "fwdbwd"
    min_speedup: float = 0.0  # 0: the error rule instead of a speedup


def every(k):
    return True


def small(k):  # H <= 256, B <= 64
    return k[1] <= 256 and k[0] <= 64


def mid(k):  # H 512-1024, B <= 64
    return 512 <= k[1] <= 1024 and k[0] <= 64


BOTH = ("fwd", "fwdbwd")
CRITERIA = (
    Criterion(11, "float32, TF32 off: every row >= 1.0x", ("float32",), "off", every, BOTH, 1.0),
    Criterion(11, "float32, TF32 on: every row >= 1.0x", ("float32",), "on", every, BOTH, 1.0),
    Criterion(11, "float32, TF32 off, H <= 256, B <= 64: fwd >= 2x", ("float32",), "off", small, ("fwd",), 2.0),
    Criterion(11, "float32, TF32 on, H <= 256, B <= 64: fwd >= 1.5x", ("float32",), "on", small, ("fwd",), 1.5),
    Criterion(11, "float32, TF32 off, H 512-1024, B <= 64: fwd >= 2x", ("float32",), "off", mid, ("fwd",), 2.0),
    Criterion(11, "float32, TF32 on, H 512-1024, B <= 64: fwd >= 2x", ("float32",), "on", mid, ("fwd",), 2.0),
    Criterion(11, "float32, TF32 off, H 512-1024, B <= 64: fwd+bwd >= 1.5x", ("float32",), "off", mid,
              ("fwdbwd",), 1.5),
    Criterion(11, "float32, TF32 on, H 512-1024, B <= 64: fwd+bwd >= 1.5x", ("float32",), "on", mid,
              ("fwdbwd",), 1.5),
    Criterion(12, "float16: every row >= 1.0x", ("float16",), "any", every, BOTH, 1.0),
    Criterion(12, "float16, H 512-1024, B <= 64: >= 1.5x", ("float16",), "any", mid, BOTH, 1.5),
    Criterion(12, "bfloat16: every row >= 1.0x (baseline in the table)", ("bfloat16",), "any", every, BOTH, 1.0),
    Criterion(12, "float16: error against float64 <= 2x nn.RNN's", ("float16",), "any", every, BOTH),
    Criterion(12, "bfloat16: error against float64 <= 2x nn.RNN's", ("bfloat16",), "any", every, BOTH),
)


def run_tf32(env):
    """'on' where the run let cuDNN use TF32 (--tf32 on, or default: PyTorch's defaults), else 'off'."""
    return "off" if env.get("tf32", "off") == "off" else "on"


def judge(criterion, results):
    """(rows met, rows found, sweep rows missing, ["shape dtype mode: value", ...] short)."""
    env = results["environment"]
    if env.get("device") != "cuda" or (criterion.tf32 != "any" and run_tf32(env) != criterion.tf32):
        return None
    wanted = {(k, d, m) for k in sweep() if criterion.rows(k) for d in criterion.dtypes for m in criterion.modes}
    found, short = set(), []
    for r in results["rows"]:
        k = key(r["shape"])
        if k is None or (k, r["dtype"], r["mode"]) not in wanted:
            continue
        found.add((k, r["dtype"], r["mode"]))
        mode = "fwd" if r["mode"] == "fwd" else "fwd+bwd"
        baseline = "" if r.get("baseline_dtype", r["dtype"]) == r["dtype"] else f" (nn.RNN {r['baseline_dtype']})"
        where = f"{r['label']} {r['dtype']}{baseline} {mode}"
        if criterion.min_speedup:
            sp = r.get("speedup", {}).get("vs_nn.RNN")
            if sp is None or sp < criterion.min_speedup or not r["check"].get("ok", True):
                short.append(f"{where}: " + ("no fused time" if sp is None else f"{sp:.2f}x")
                             + ("" if r["check"].get("ok", True) else ", failed the correctness check"))
        else:
            e = r.get("error_vs_float64")
            if not e or not e.get("within_2x", False):
                short.append(f"{where}: " + ("no error measured" if not e else
                                             f"fused {e['fused']:.1e} against nn.RNN {e['nn.RNN']:.1e}"))
    if not found:
        return None
    return len(found) - len(short), len(found), len(wanted - found), short


MAX_NAMED = 8  # rows short of a criterion named per table cell


def table(runs):
    """runs: {name: results.json contents or None}. Markdown lines: a row per (criterion, run that has
    its rows), the runs' regime and TF32 setting named."""
    lines = ["| issue | criterion | run (regime, TF32) | met | sweep rows not in the run | short of it |",
             "|---|---|---|---|---|---|"]
    for c in CRITERIA:
        any_run = False
        for name, res in runs.items():
            if not res:
                continue
            verdict = judge(c, res)
            if verdict is None:
                continue
            any_run = True
            met, found, missing, short = verdict
            env = res["environment"]
            run = f"{name} ({env.get('cuda_regime', 'auto')}, TF32 {env.get('tf32', 'off')})"
            mark = "**yes**" if met == found and not missing else f"{met}/{found}"
            named = "; ".join(short[:MAX_NAMED])
            if len(short) > MAX_NAMED:
                named += f"; and {len(short) - MAX_NAMED} more"
            lines.append(f"| {c.issue} | {c.text} | {run} | {mark} | {missing or '—'} | {named or '—'} |")
        if not any_run:
            lines.append(f"| {c.issue} | {c.text} | (no run has these rows) | — | — | — |")
    return lines


def generation(name, text):
    """The generation row (issue 11: B = 1, H = 256, successive T = 1 calls, >= 1.0x eager and graph-
    captured, TF32 off and on) judged on a table of benchmarks/generation.py: one table line, or
    none where the file is another shape or dtype."""
    if not re.search(r"# Generation row: 256 calls of T = 1, B = 1, I = H = 256, float32,", text):
        return []
    cells, short = [], []
    for line in text.splitlines():
        m = re.match(r"\| (off|on) \| (eager|graph) \|.*\| ([0-9.]+)× \|[^|]*\|$", line)
        if m:
            cells.append(m.groups())
        elif re.match(r"\| (off|on) \| (eager|graph) \|", line):
            tf32, mode = line.split(" | ")[:2]
            short.append(f"TF32 {tf32.strip('| ')} {mode}: no speedup (see the table)")
    short += [f"TF32 {tf32} {mode}: {sp}x" for tf32, mode, sp in cells if float(sp) < 1.0]
    found = len(cells) + sum("no speedup" in x for x in short)
    missing = 4 - found
    met = found - len(short)
    mark = "**yes**" if met == 4 else f"{met}/{found}"
    return [f"| 11 | generation row (B 1, H 256, 256 calls of T = 1), TF32 off and on, eager and graph: >= 1.0x "
            f"| {name} | {mark} | {missing or '—'} | {'; '.join(short) or '—'} |"]


def main(argv):
    runs = {}
    for d in argv:
        path = os.path.join(d, "results.json")
        runs[os.path.basename(os.path.normpath(d))] = json.load(open(path)) if os.path.exists(path) else None
    print("\n".join(table(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
