"""Writes the GPU check's results file (Markdown + JSON) from the logs of benchmarks/gpu_check.sh.

    python benchmarks/gpu_report.py WORK_DIR OUT.md OUT.json

WORK_DIR holds stages.tsv (stage, exit code, seconds, note), the stage logs, test_cuda.xml and the
benchmark's bench/results.{md,json}. Only reads what the stages produced; never runs anything on the GPU
except the version queries (torch.cuda.get_device_name and friends).
"""
import json
import os
import platform
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import acceptance  # benchmarks/acceptance.py (this script's folder is on sys.path when run as a script)


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as e:  # noqa: BLE001  (the report must still be written)
        return f"unavailable ({e})"


def environment():
    env = {"host": platform.node(), "python": platform.python_version(),
           "gpu": sh("nvidia-smi --query-gpu=name --format=csv,noheader | head -1"),
           "driver": sh("nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1"),
           "compute_cap": sh("nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1"),
           "nvcc": sh("nvcc --version | tail -2 | head -1") or sh("$CUDA_HOME/bin/nvcc --version | tail -2 | head -1"),
           "cpu_cores": os.cpu_count()}
    try:
        import torch

        env.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                   tf32_default={"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                                 "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32})
    except Exception as e:  # noqa: BLE001
        env["torch"] = f"import failed: {e}"
    return env


def stages(work):
    rows = []
    path = os.path.join(work, "stages.tsv")
    if os.path.exists(path):
        for line in open(path):
            name, rc, secs, note = (line.rstrip("\n").split("\t") + ["", "", "", ""])[:4]
            rows.append({"stage": name, "exit_code": rc, "seconds": secs, "note": note})
    return rows


def tests_from_log(log_path):
    """What a pytest -v log says when its junit report is missing (the stage was killed, e.g. by a
    kernel that never returned): the outcomes printed so far and the test that was running."""
    if not os.path.exists(log_path):
        return {"summary": "no junit report and no log (tests did not run)"}
    outcomes, failed, running = {}, [], None
    for line in open(log_path, errors="replace"):
        m = re.match(r"(tests/\S+::\S+)\s+(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", line)
        if m:
            outcomes[m.group(2)] = outcomes.get(m.group(2), 0) + 1
            if m.group(2) in ("FAILED", "ERROR"):
                failed.append({"test": m.group(1), "message": "(from the log)"})
            running = None
            continue
        m = re.match(r"(tests/\S+::\S+)\s*$", line)
        if m:
            running = m.group(1)
    counts = ", ".join(f"{n} {k.lower()}" for k, n in sorted(outcomes.items())) or "no test finished"
    summary = f"no junit report (the stage was cut off); from the log: {counts}"
    if running:
        summary += f"; running when cut off: `{running}`"
    return {"summary": summary, "failed": failed}


def tests(work, name="test_cuda.xml", log="tests.log"):
    path = os.path.join(work, name)
    if not os.path.exists(path):
        return tests_from_log(os.path.join(work, log))
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    keys = ("tests", "failures", "errors", "skipped", "time")
    summary = {k: suite.get(k) for k in keys}
    failed = []
    for case in suite.iter("testcase"):
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None:
                failed.append({"test": f"{case.get('classname')}::{case.get('name')}",
                               "message": (node.get("message") or "")[:400]})
    summary["failed"] = failed
    return summary


def sanitizer(work, tool):
    path = os.path.join(work, f"{tool}.log")
    if not os.path.exists(path):
        return "not run"
    text = open(path, errors="replace").read()
    found = re.findall(r"(ERROR SUMMARY: .*|RACECHECK SUMMARY: .*|compute-sanitizer not found.*|MISMATCH.*|"
                       r"WRONG KERNEL.*)", text)
    runs = re.findall(r"^regime=.*$", text, re.M)  # one line per configuration gpu_sanitize.py finished
    checked = f"{len(runs)} configurations finished, {sum(r.endswith(' ok') for r in runs)} ok"
    return "; ".join(found + [checked]) if found else f"no summary line (see log); {checked}"


def ncu_summary(text):
    """Per profiled kernel: its name line, duration, throughputs and the stall-reason rule text."""
    keep = re.compile(r"(recurrence_kernel|Duration|Compute \(SM\) Throughput|Memory Throughput|"
                      r"Warp Cycles Per Issued Instruction|Issue Slots Busy|No Eligible|stalled|Registers Per Thread|"
                      r"profiled forward)")
    out = []
    for line in text.splitlines():
        if keep.search(line):
            line = line.strip()
            out.append("    " + (line if len(line) <= 400 else line[:400] + " ..."))
    return out


def compact_table(bench):
    """One table over every benchmark run: a row per (shape, dtype, mode), a column per run, the
    speedup of fused over nn.RNN in the cell (a trailing ! below 1.0x, ⚠ where the fused error
    against float64 broke the 2x rule or the correctness check failed). The table gpu_check.sh
    prints last."""
    runs = [d for d, b in bench.items() if b]
    cells, order = {}, []
    for d in runs:
        for r in bench[d]["rows"]:
            key = (r["label"], r["dtype"], "fwd" if r["mode"] == "fwd" else "fwd+bwd")
            if key not in cells:
                cells[key] = {}
                order.append(key)
            sp = r.get("speedup", {}).get("vs_nn.RNN")
            e = r.get("error_vs_float64")  # benchmark.py's verdict on the tests' 2x rule
            bad = not r["check"].get("ok", True) or (e and not e.get("within_2x", True))
            cells[key][d] = "error" if sp is None else f"{sp:.2f}x" + ("!" if sp < 1.0 else "") + (" ⚠" if bad else "")
    if not order:
        return ["(no benchmark results)"]
    lines = ["| shape | dtype | mode | " + " | ".join(runs) + " |", "|" + "---|" * (3 + len(runs))]
    for key in order:
        lines.append("| " + " | ".join(key) + " | " + " | ".join(cells[key].get(d, "—") for d in runs) + " |")
    return lines


def main():
    work, md_path, json_path = sys.argv[1:4]
    env = environment()
    st = stages(work)
    tr = tests(work)
    tr_resident = tests(work, "test_cuda_resident.xml", "tests_resident.log")
    san = {tool: sanitizer(work, tool)
           for tool in ("memcheck", "racecheck", "memcheck_resident", "racecheck_resident", "memcheck_new_paths")}
    # bench: the default run (float32 + bfloat16, TF32 off); bench_*: the extra runs of gpu_check.sh.
    bench_dirs = sorted(d for d in os.listdir(work) if d.startswith("bench") and os.path.isdir(os.path.join(work, d)))
    bench_md, bench = {}, {}
    for d in bench_dirs or ["bench"]:
        md, js = os.path.join(work, d, "results.md"), os.path.join(work, d, "results.json")
        bench_md[d] = open(md).read() if os.path.exists(md) else f"(no benchmark results: see {d}.log)"
        bench[d] = json.load(open(js)) if os.path.exists(js) else None
    ncu_path = os.path.join(work, "ncu.log")
    ncu = ncu_summary(open(ncu_path, errors="replace").read()) if os.path.exists(ncu_path) else []

    lines = [f"# GPU check: {env['gpu']}", "",
             "Written by benchmarks/gpu_check.sh (build for this GPU, tests/test_cuda.py, compute-sanitizer, "
             "benchmarks/benchmark.py --device cuda).", "",
             "| | |", "|---|---|"]
    for k in ("gpu", "compute_cap", "driver", "torch", "torch_cuda", "cudnn", "nvcc", "python", "cpu_cores"):
        lines.append(f"| {k} | {env.get(k)} |")
    lines.append(f"| TF32 (defaults at report time) | {env.get('tf32_default')}; the tests force IEEE fp32; the "
                 "benchmark states its own setting below |")
    lines += ["", "## Stages", "", "| stage | exit code | seconds | note |", "|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['exit_code']} | {r['seconds']} | {r['note']} |" for r in st]
    for title, result in (("tests/test_cuda.py -m 'not opt_in' (the validated paths)", tr),
                          ("tests/test_cuda.py -m opt_in (the opt-in paths: resident, tuned, half GEMMs, "
                           "GEMM TF32 rule)", tr_resident)):
        lines += ["", f"## {title}", ""]
        if "tests" in result:
            lines.append(f"{result['tests']} tests, {result['failures']} failures, {result['errors']} errors, "
                         f"{result['skipped']} skipped, {result['time']} s")
        else:
            lines.append(result["summary"])
        lines += [f"- FAILED `{f['test']}`: {f['message']}" for f in result.get("failed", [])]
    lines += ["", "## compute-sanitizer (benchmarks/gpu_sanitize.py: every regime, fwd + bwd)", ""]
    lines += [f"- {tool}: {summary}" for tool, summary in san.items()]
    if ncu:
        lines += ["", "## Nsight Compute (benchmarks/gpu_profile.py; full output in ncu.log)", ""]
        lines += ncu
    compact = compact_table(bench)
    accepted = acceptance.table(bench)
    for name in sorted(f for f in os.listdir(work) if f.startswith("generation_") and f.endswith(".md")):
        accepted += acceptance.generation(name[:-3], open(os.path.join(work, name)).read())
    lines += ["", "## The GPU issues' acceptance rows (benchmarks/acceptance.py)", ""] + accepted
    lines += ["", "## Compact: speedup of fused over nn.RNN, every benchmark run (! below 1.0x)", ""] + compact
    for d, md in bench_md.items():
        lines += ["", f"## Benchmark `{d}` (benchmarks/benchmark.py --device cuda)", "", md]
    costs = os.path.join(work, "sync_costs.md")
    if os.path.exists(costs):
        lines += ["", "## Synchronisation and chain costs (benchmarks/microbench/sync_costs.cu)", "",
                  open(costs).read().replace("# Synchronisation and chain costs: ", "", 1)]
    probe = os.path.join(work, "racecheck_probe.md")
    if os.path.exists(probe):
        lines += ["", "## racecheck probe (benchmarks/racecheck_probe/racecheck_probe.py)", "", open(probe).read()]
    for name in sorted(f for f in os.listdir(work) if f.startswith("generation_") and f.endswith(".md")):
        lines += ["", f"## `{name[:-3]}` (benchmarks/generation.py)", "",
                  open(os.path.join(work, name)).read().replace("# Generation row", "Generation row", 1)]
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(json_path, "w") as f:
        json.dump({"environment": env, "stages": st, "tests": tr, "tests_resident": tr_resident, "sanitizer": san, "benchmark": bench}, f, indent=1)
    print(f"wrote {md_path} and {json_path}")
    print("\nThe GPU issues' acceptance rows:\n")
    print("\n".join(accepted))
    print("\nSpeedup of fused over nn.RNN, every benchmark run (! below 1.0x):\n")
    print("\n".join(compact))


if __name__ == "__main__":
    main()
