"""Smoke tests of the op benchmark's host-cost mode and of the GPU session's summary: they run
and write what they promise, a run cut short what it measured (the timings themselves are
benchmarks, never asserted here); the GPU timer reports the median."""
import importlib.util
import inspect
import json

import pytest
import torch
from conftest import BENCH, run_bench_script, torch_threads


def load_bench_ops():
    spec = importlib.util.spec_from_file_location("bench_ops", BENCH / "bench_ops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_overhead_mode_writes_rows_and_target_checks(tmp_path):
    out = tmp_path / "overhead.json"
    proc = run_bench_script("bench_ops.py", "--overhead", "--rounds", "2", "--threads", "1", "--out", out)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["mode"] == "overhead"
    rows = {(r["op"], r["impl"]): r for r in result["results"]}
    for op, baseline, ours in (("bn_stat_loss", "eager hook", "cpu"), ("eval_bn+loss", "eager BN + hook", "fused cpu"),
                               ("ufc_compose", "eager", "cpu")):
        assert rows[(op, baseline)]["ratio_to_baseline"] == 1.0
        assert rows[(op, ours)]["fwd_bwd_host_us"] > 0
    targets = {t["op"]: t for t in result["targets"]}
    assert set(targets) == {"bn_stat_loss", "eval_bn+loss"}
    assert all(t["target_max_ratio"] == 0.5 and t["met"] == (t["ratio"] <= 0.5) for t in targets.values())
    assert "target bn_stat_loss: cpu at" in proc.stdout


def test_gpu_summary_reads_what_the_steps_left(tmp_path):
    (tmp_path / "build.status").write_text("0\n")
    (tmp_path / "build.seconds").write_text("63\n")
    (tmp_path / "test.status").write_text("1\n")
    (tmp_path / "ops.status").write_text("timed out after 120 s\n")
    (tmp_path / "test.log").write_text("....\n3 failed, 40 passed in 12.0s\n")
    check = {"impl": "cuda", "case": "(100,64,112,112) nchw", "what": "faster than torch.compile(hook)", "value": 0.8,
             "target": 1.0, "met": False, "auto": True}
    (tmp_path / "ops.json").write_text(json.dumps({
        "environment": {"device": "NVIDIA H200", "copy_bandwidth_GBps": 4100.0},
        "results": [{"op": "bn_stat_loss", "workload": "(100,64,112,112)", "layout": "nchw", "dtype": "float32",
                     "impl": "cuda", "fwd_bwd_ms": 0.5}],
        "targets": [check]}))
    proc = run_bench_script("gpu_summary.py", tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "build     ok (63 s)" in text and "test      failed (1)\n" in text and "ops       timed out after 120 s" in text
    assert "overhead  not run" in text and "3 failed, 40 passed" in text
    assert "cuda (auto): 0/1 met" in text and "MISSED (100,64,112,112) nchw: faster than torch.compile(hook) 0.80" in text


class Killed(BaseException):
    """What a time limit's signal does to the run: it ends wherever it is."""


def test_overhead_cut_short_keeps_the_ops_done(tmp_path, monkeypatch):
    """gpu_session.sh ends the overhead step at its time limit: the JSON is written after each
    op, so the ops measured by then are in it with their target checks."""
    ops = load_bench_ops()
    real, timed = ops.interleaved_host_times, []

    def cut_after_the_first_op(fns, baseline, device, rounds, **kwargs):
        if timed:
            raise Killed
        timed.append(baseline)
        return real(fns, baseline, device, rounds, **kwargs)

    monkeypatch.setattr(ops, "interleaved_host_times", cut_after_the_first_op)
    out = tmp_path / "overhead.json"
    with torch_threads(1), pytest.raises(Killed):
        ops.main(["--overhead", "--rounds", "2", "--threads", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert {r["op"] for r in result["results"]} == {"bn_stat_loss"}
    assert {r["impl"] for r in result["results"]} >= {"eager hook", "cpu"}
    assert [t["op"] for t in result["targets"]] == ["bn_stat_loss"]


def test_the_gpu_timer_reports_the_median(monkeypatch):
    """triton's do_bench returns the mean unless told: the timer asks for the median that the
    docstring, README and JSON say, with arguments the installed triton's do_bench takes."""
    testing = pytest.importorskip("triton.testing")
    real, calls = testing.do_bench, []

    def do_bench(fn, **kwargs):
        inspect.signature(real).bind(fn, **kwargs)  # (raises on an argument this triton lacks)
        calls.append(kwargs)
        return 1.5

    monkeypatch.setattr(testing, "do_bench", do_bench)
    timer = load_bench_ops().make_timer(torch.device("cuda"))
    assert timer(lambda: None) == 1.5
    assert calls[0]["return_mode"] == "median"
