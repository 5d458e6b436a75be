"""The benchmark scripts without a GPU: benchmarks/benchmark.py end to end on the CPU at tiny shapes
(it runs, its correctness check passes, and every row carries the error against float64 of both
implementations, fused within the tests' 2x rule, packed-input rows included; no timing is
asserted), and the GPU check's report (gpu_report.py) and acceptance table (acceptance.py) on
made-up logs and results."""
import json
import os
import subprocess
import sys

from conftest import benchmark_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_script_reports_error_against_float64(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "benchmark.py"), "--shapes", "3,4,10,20 2,5,6,8,2,T 4,6,5,7,2,T,P",
         "--dtype", "float32,bfloat16", "--no-onnx", "--min-time", "0.01", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.load(open(tmp_path / "results.json"))["rows"]
    assert len(rows) == 3 * 2 * 2  # shapes x dtypes x modes
    packed = [r for r in rows if r["shape"]["packed"]]
    assert len(packed) == 4 and all(r["label"] == "B4 T6 I5 H7 L2 bi packed" for r in packed)
    # lengths 6, 5, 3, 1 (T down to T/4): FLOP over their 15 rows, not B*T = 24
    fwd_flop = 2 * 15 * 2 * ((5 + 7) * 7 + (2 * 7 + 7) * 7)
    assert sorted(r["flop"] for r in packed) == [fwd_flop, fwd_flop, 3 * fwd_flop, 3 * fwd_flop]
    atol = {"float32": 1e-6, "bfloat16": 4e-3}
    for r in rows:
        assert r["check"]["ok"], r["check"]
        e = r["error_vs_float64"]
        assert 0 <= e["fused"] <= 2 * e["nn.RNN"] + atol[r["dtype"]], (r["label"], r["dtype"], r["mode"], e)
    table = [line for line in open(tmp_path / "results.md") if line.startswith("|")]
    assert "error vs float64: fused / nn.RNN" in table[0]
    assert len(table) == 2 + len(rows) and not any("⚠" in line for line in table)


def test_gpu_report_reads_a_cut_off_test_log(tmp_path):
    """benchmarks/gpu_report.py, for a test stage killed before pytest wrote its junit report (a kernel
    that never returned): the outcomes come from the pytest -v log, with the test that was running."""
    gpu_report = benchmark_script("gpu_report")
    (tmp_path / "tests_resident.log").write_text(
        "============================= test session starts ==============================\n"
        "tests/test_cuda.py::test_a[x] PASSED                                      [  1%]\n"
        "tests/test_cuda.py::test_b[y] FAILED                                      [  2%]\n"
        "tests/test_cuda.py::test_c[z] PASSED                                      [  3%]\n"
        "tests/test_cuda.py::test_resident_tf32_cluster_exchange[H512-mbarrier] \n")
    result = gpu_report.tests(str(tmp_path), "test_cuda_resident.xml", "tests_resident.log")
    assert result["summary"] == ("no junit report (the stage was cut off); from the log: 1 failed, 2 passed; "
                                 "running when cut off: `tests/test_cuda.py::test_resident_tf32_cluster_exchange"
                                 "[H512-mbarrier]`")
    assert result["failed"] == [{"test": "tests/test_cuda.py::test_b[y]", "message": "(from the log)"}]
    assert "no log" in gpu_report.tests(str(tmp_path), "missing.xml", "missing.log")["summary"]


def test_gpu_report_sanitizer_summary_counts_configurations(tmp_path):
    """The sanitizer line of the GPU report: the tool's summary, and how many of gpu_sanitize.py's
    configurations finished and passed, so that a stage cut off half way, a mismatch against the CPU
    and a kernel other than the one a cluster case names each show in the report."""
    gpu_report = benchmark_script("gpu_report")
    (tmp_path / "memcheck_resident.log").write_text(
        "regime=cluster  (ran resident_cluster         ) dtype=float32  H=201 tf32=off exchange=barrier  "
        "max rel. diff vs CPU 1.0e-07 ok\n"
        "regime=cluster  (ran resident                 ) dtype=float32  H=301 tf32=off exchange=barrier  "
        "max rel. diff vs CPU 1.0e-07 ok WRONG KERNEL (expected resident_cluster)\n"
        "regime=cluster  (ran resident_tf32            ) dtype=float32  H=201 tf32=on  exchange=barrier  "
        "max rel. diff vs CPU 9.0e-01 MISMATCH\n"
        "========= ERROR SUMMARY: 0 errors\n")
    summary = gpu_report.sanitizer(str(tmp_path), "memcheck_resident")
    assert summary == ("WRONG KERNEL (expected resident_cluster); MISMATCH; ERROR SUMMARY: 0 errors; "
                       "3 configurations finished, 1 ok")
    assert gpu_report.sanitizer(str(tmp_path), "racecheck_resident") == "not run"


def test_acceptance_table_judges_the_issue_rows():
    """benchmarks/acceptance.py on made-up GPU results: a row under its criterion's speedup is named,
    a sweep row the run lacks is counted, a run is judged only by the criteria of its own TF32 setting,
    a criterion no run covers says so, and the error rule reads benchmark.py's verdict."""
    acceptance = benchmark_script("acceptance")

    def row(k, dtype, mode, speedup, within_2x=True):
        B, H, L, bidir, packed = k
        label = f"B{B} T128 I{H} H{H}" + (f" L{L}" if L > 1 else "") + (" bi" if bidir else "") + (
            " packed" if packed else "")
        return {"shape": {"B": B, "T": 128, "I": H, "H": H, "L": L, "bidir": bidir, "packed": packed},
                "label": label, "dtype": dtype, "mode": mode, "baseline_dtype": dtype,
                "speedup": {"vs_nn.RNN": speedup}, "check": {"ok": True},
                "error_vs_float64": {"fused": 1e-3, "nn.RNN": 1e-3, "within_2x": within_2x}}

    env = {"device": "cuda", "tf32": "off", "cuda_regime": "auto"}
    f32 = [row(k, "float32", m, 1.9 if (k[:2] == (8, 64) and m == "fwd") else 2.5)
           for k in acceptance.sweep() for m in ("fwd", "fwdbwd") if not (k[:2] == (256, 2048) and m == "fwdbwd")]
    f16 = [row(k, "float16", m, 1.2, within_2x=k[:2] != (1, 64)) for k in acceptance.sweep() for m in ("fwd", "fwdbwd")]
    f16 += [row((64, 128, 1, False, False), "float16", "fwd", 9.0)]  # H 128: not a sweep row, ignored
    lines = acceptance.table({"bench": {"environment": env, "rows": f32},
                              "half": {"environment": dict(env, tf32="on"), "rows": f16},
                              "cpu": {"environment": {"device": "cpu"}, "rows": f32}})
    cells = {(ln.split(" | ")[1], ln.split(" | ")[2]): ln.split(" | ")[3:] for ln in lines[2:]}
    assert cells[("float32, TF32 off: every row >= 1.0x", "bench (auto, TF32 off)")] == ["43/43", "1", "— |"]
    assert cells[("float32, TF32 off, H <= 256, B <= 64: fwd >= 2x", "bench (auto, TF32 off)")] == [
        "7/8", "—", "B8 T128 I64 H64 float32 fwd: 1.90x |"]
    assert cells[("float32, TF32 off, H 512-1024, B <= 64: fwd+bwd >= 1.5x", "bench (auto, TF32 off)")][0] == "**yes**"
    assert cells[("float32, TF32 on: every row >= 1.0x", "(no run has these rows)")] == ["—", "—", "— |"]
    assert cells[("float16: every row >= 1.0x", "half (auto, TF32 on)")][0] == "**yes**"
    assert cells[("float16, H 512-1024, B <= 64: >= 1.5x", "half (auto, TF32 on)")][0] == "0/12"
    err = cells[("float16: error against float64 <= 2x nn.RNN's", "half (auto, TF32 on)")]
    assert err[:2] == ["42/44", "—"] and err[2].count("fused 1.0e-03 against nn.RNN 1.0e-03") == 2
    assert not any("cpu (" in ln for ln in lines)


def test_acceptance_reads_the_generation_row():
    """acceptance.generation on a table as benchmarks/generation.py writes it: a row under 1.0x and a
    row whose capture failed fall short; another shape's table is not the issue's row."""
    acceptance = benchmark_script("acceptance")
    head = ("# Generation row: 256 calls of T = 1, B = 1, I = H = 256, float32, NVIDIA H200, torch 2.11, "
            "cuDNN 91900, fused regime forced: auto\n\n"
            "| TF32 | mode | nn.RNN µs/step | fused µs/step | fused regime | speedup | max rel diff of final h |\n"
            "|---|---|---|---|---|---|---|\n")
    text = head + ("| off | eager | 10.00 | 5.00 | single | 2.00× | 1.0e-06 |\n"
                   "| off | graph | 4.00 | 5.00 | single | 0.80× | 1.0e-06 |\n"
                   "| on | eager | 10.00 | 5.00 | single | 2.00× | 1.0e-03 |\n"
                   "| on | graph | 4.00 | error: capture failed | single | — | 1.0e-03 |\n")
    (line,) = acceptance.generation("generation_auto_h256", text)
    cells = line.split(" | ")
    assert cells[2:6] == ["generation_auto_h256", "2/4", "—", "TF32 on graph: no speedup (see the table); TF32 off graph: 0.80x |"]
    good = text.replace("0.80×", "1.25×").replace("error: capture failed | single | —", "3.00 | single | 1.33×")
    assert acceptance.generation("g", good)[0].split(" | ")[3] == "**yes**"
    assert acceptance.generation("g", text.replace("I = H = 256", "I = H = 128")) == []
