"""Smoke tests of the op benchmark's host-cost mode and of the GPU session's summary: they run
and write what they promise (the timings themselves are benchmarks, never asserted here)."""
import json

from conftest import run_bench_script


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
