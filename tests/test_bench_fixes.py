"""Fixes of the benchmarks and the GPU session's plumbing: a wrong result never wins a target,
a run cut short says so and what it did not measure, a failed run of a step fails the step,
RDED's decode rows keep every worker busy, and no timed call allocates its upstream gradient."""
import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import BENCH, torch_threads


def load_bench(name: str):
    """A fresh copy of bench/<name>.py (the tests patch its globals)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # (its imports of the other bench modules)
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_call_timer(device):
    """ms of one call: the tests check what is recorded, not the timings."""
    def timer(fn):
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3
    return timer


def tiny_ops(monkeypatch, *workloads):
    """bench_ops with ``workloads`` ((name, batch, shape per image) each) as its cpu-target
    preset, no compose cases, and a one-call timer."""
    ops = load_bench("bench_ops")
    monkeypatch.setitem(ops.PRESETS, "cpu-target", [ops.workload(name, batch, [shape]) for name, batch, shape in workloads])
    monkeypatch.setitem(ops.COMPOSE_PRESETS, "cpu-target", [])
    monkeypatch.setattr(ops, "make_timer", one_call_timer)
    return ops


def zeros_loss(x, running_mean, running_var, groups=1, backend=None):
    """A fast, wrong bn_stat_loss: zeros, no work."""
    return (x.reshape(-1)[:1] * 0).expand(groups)


def test_a_wrong_fast_implementation_is_marked_failed_and_the_run_fails(tmp_path, monkeypatch):
    ops = tiny_ops(monkeypatch, ("ResNet-18 224^2 b100 stand-in", 4, (8, 4, 4)))
    assert "ResNet-18 224^2 b100 stand-in".startswith(ops.RESNET18_WORKLOAD)  # (its x the eager hook target)
    monkeypatch.setattr(ops, "bn_stat_loss", zeros_loss)
    out = tmp_path / "ops.json"
    with torch_threads(1):
        status = ops.main(["--preset", "cpu-target", "--no-compile", "--threads", "1", "--out", str(out)])
    assert status == 1
    result = json.loads(out.read_text())  # (written before the run ends with the failure)
    assert result["complete"] is True
    rows = {(r["op"], r["impl"]): r for r in result["results"]}
    assert rows[("bn_stat_loss", "cpu")]["correct"] is False and rows[("bn_stat_loss", "cpu")]["fwd_rel_err"] == 1.0
    assert rows[("eval_bn+loss", "BN + cpu")]["correct"] is False  # (its loss is the wrong op's)
    for right in (("bn_stat_loss", "eager hook"), ("eval_bn+loss", "eager BN + hook"), ("eval_bn+loss", "fused cpu")):
        row = rows[right]
        assert row["correct"] is True and row["fwd_rel_err"] <= row["tolerance"] and row["grad_rel_err"] <= row["tolerance"]
    # however fast it is, its target is never met (the GPU's checks, from these rows)
    bn = [r for r in result["results"] if r["op"] == "bn_stat_loss"]
    for r in bn:
        r["fwd_bwd_ms"] = 100.0 if r["impl"] == "eager hook" else 0.001
    (check,) = [c for c in ops.kernel_targets(bn, 1000.0, "cpu", quiet=True) if c["impl"] == "cpu"]
    assert check["what"] == ops.X_EAGER and check["value"] >= check["target"]
    assert check["correct"] is False and check["met"] is False
    assert ops.target_outcome(check) == "FAILED (wrong result)"


def test_the_overhead_mode_checks_each_result_against_the_baseline(tmp_path, monkeypatch):
    ops = load_bench("bench_ops")
    monkeypatch.setattr(ops, "bn_stat_loss", zeros_loss)
    monkeypatch.setattr(ops, "interleaved_host_times", lambda fns, baseline, device, rounds: {
        name: {"host_us": 1.0, "ratio": 0.1} for name in fns})
    out = tmp_path / "overhead.json"
    with torch_threads(1):
        assert ops.main(["--overhead", "--threads", "1", "--out", str(out)]) == 1
    result = json.loads(out.read_text())
    rows = {(r["op"], r["impl"]): r for r in result["results"]}
    assert rows[("bn_stat_loss", "cpu")]["correct"] is False and rows[("bn_stat_loss", "eager hook")]["correct"]
    assert rows[("ufc_compose", "cpu")]["correct"] is True
    targets = {t["op"]: t for t in result["targets"]}
    assert targets["bn_stat_loss"]["met"] is False and targets["bn_stat_loss"]["ratio"] <= 0.5


class Killed(BaseException):
    """What the step's time limit does to the run: it ends wherever it is."""


def test_a_run_cut_short_says_incomplete_and_what_it_did_not_measure(tmp_path, monkeypatch):
    ops = tiny_ops(monkeypatch, ("first", 2, (4, 2, 2)), ("second", 2, (4, 2, 2)))
    real, benched = ops.bench_bn, []

    def cut_after_the_first(work, *args, **kwargs):
        if benched:
            raise Killed
        benched.append(work["name"])
        return real(work, *args, **kwargs)

    monkeypatch.setattr(ops, "bench_bn", cut_after_the_first)
    out = tmp_path / "ops.json"
    with torch_threads(1), pytest.raises(Killed):
        ops.main(["--preset", "cpu-target", "--no-compile", "--threads", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["complete"] is False and {r["workload"] for r in result["results"]} == {"first"}

    # the GPU's targets of such a run: those of the workloads it never reached are listed
    impls = ["eager hook", "compile(hook)", "torch", "cuda"]
    planned = ops.planned_targets(ops.PRESETS["gpu"], [False, True], torch.float32, impls)
    done = "(100,64,112,112)"
    rows = [{"op": "bn_stat_loss", "workload": done, "layout": "nchw", "dtype": "float32", "impl": impl,
             "shapes": [(100, 64, 112, 112)],
             "bytes_x": 100 * 64 * 112 * 112 * 4, "fwd_bwd_ms": ms, "fwd_bwd_GBps": 3000.0, "correct": True}
            for impl, ms in (("eager hook", 2.0), ("compile(hook)", 1.0), ("cuda", 0.3))]
    checks = ops.kernel_targets(rows, 4000.0, "cuda", quiet=True)
    assert {c["what"] for c in checks} == {ops.FASTER_THAN_COMPILE, ops.BANDWIDTH_SHARE}
    not_measured = ops.targets_not_measured(planned, checks)
    assert len(not_measured) == len(planned) - len(checks)
    assert {"impl": "cuda", "case": f"{ops.RESNET18_WORKLOAD} nchw", "what": ops.X_EAGER,
            "target": ops.RESNET18_TARGET} in not_measured
    assert all(t["impl"] == "cuda" for t in not_measured)  # (the baselines and torch have none)

    summary = load_bench("gpu_summary")
    text = "\n".join(summary.ops_lines({"environment": {"device": "NVIDIA H100", "copy_bandwidth_GBps": 4000.0},
                                        "complete": False, "results": rows, "targets": checks,
                                        "targets_not_measured": not_measured}))
    assert "INCOMPLETE" in text
    assert f"cuda (auto): 2/2 met, {len(not_measured)} not measured" in text
    assert f"NOT MEASURED {ops.RESNET18_WORKLOAD} nchw: x the eager hook (target 3.0)" in text


def test_the_targets_workloads_come_first_in_the_gpu_preset():
    """A run cut short by the step's limit has measured the workloads of the ResNet-18 and
    bandwidth targets (all but the 'faster than torch.compile' check every workload has)."""
    ops = load_bench("bench_ops")
    special = [bool(set(ops.case_targets(w["name"], w["shapes"], ops.workload_bytes(w, torch.float32),
                                         ["eager hook", "compile(hook)"])) - {ops.FASTER_THAN_COMPILE})
               for w in ops.PRESETS["gpu"]]
    assert ops.PRESETS["gpu"][0]["name"].startswith(ops.RESNET18_WORKLOAD)
    assert special == sorted(special, reverse=True) and special[0]


def test_layouts_times_only_the_layouts_given(tmp_path, monkeypatch):
    ops = tiny_ops(monkeypatch, ("tiny", 2, (4, 2, 2)))
    out = tmp_path / "ops.json"
    with torch_threads(1):
        assert ops.main(["--preset", "cpu-target", "--no-compile", "--threads", "1", "--layouts", "channels_last",
                         "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["layouts"] == ["channels_last"] and {r["layout"] for r in result["results"]} == {"channels_last"}
    for bad in (["--layouts", "nhwc"], ["--layouts", "nchw", "--channels-last"]):
        with pytest.raises(SystemExit) as exit_:
            ops.main(["--preset", "cpu-target", *bad, "--out", str(out)])
        assert exit_.value.code == 2


# gpu_session.sh's python, on a CPU: every bf16 run crashes, the others write an empty JSON; the
# summary is the real one
FAILING_BF16_PYTHON = """#!/bin/sh
case "$1" in -c) echo 0; exit 0 ;; esac
case "$*" in *gpu_summary.py*) exec "$REAL_PYTHON" "$@" ;; esac
case "$*" in *bf16*) echo "Traceback (most recent call last): simulated crash" >&2; exit 1 ;; esac
out= previous=
for arg in "$@"; do [ "$previous" = --out ] && out=$arg; previous=$arg; done
echo '{}' > "$out"
"""


@pytest.mark.parametrize("step, first, missing", [
    ("rded", "rded.json", "rded-bf16.json, rded-bf16-channels-last.json"),
    ("student", "student.json", "student-bf16.json, student-bf16-device.json"),
])
def test_a_failed_run_fails_its_step_and_the_summary_names_its_json(tmp_path, step, first, missing):
    python = tmp_path / "python"
    python.write_text(FAILING_BF16_PYTHON)
    python.chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=str(python), REAL_PYTHON=sys.executable)
    session = lambda name: subprocess.run(["bash", str(BENCH / "gpu_session.sh"), name], env=env,  # noqa: E731
                                          capture_output=True, text=True, timeout=60)
    proc = session(step)
    assert proc.returncode == 1, proc.stderr
    assert (out / f"{step}.status").read_text() == "1\n"
    assert (out / first).exists() and "simulated crash" in (out / f"{step}.log").read_text()
    summary = session("summary")
    assert summary.returncode == 0, summary.stderr
    assert f"  {step:<9} failed (1)\n" in summary.stdout
    assert f"{step}: MISSING {missing} (a run failed, or did not run; see {step}.log)" in summary.stdout


def test_decode_rows_give_every_worker_batches_of_one_class(monkeypatch, tmp_path):
    from PIL import Image

    rded = load_bench("bench_rded")

    def few_tiny_jpegs(root, n, seed, quick):
        paths = [os.path.join(root, f"{i}.JPEG") for i in range(n)]
        for path in paths:
            Image.new("RGB", (24, 20), (30, 60, 90)).save(path)
        return [{"path": p} for p in paths]

    loaders = []
    real_source = rded.make_source

    def recording_source(decoder, paths, size, workers, batch, device):
        loaders.append({"files": len(paths), "workers": workers, "batch": batch})
        return real_source(decoder, paths, size, workers, batch, device)

    monkeypatch.setattr(rded, "generate_images", few_tiny_jpegs)
    monkeypatch.setattr(rded, "make_source", recording_source)
    rows = rded.decode_rows(3, 8, [0, 2], 1, torch.device("cpu"), 0, True, batch=5)
    assert [r["workers"] for r in rows] == [0, 2]
    for row, loader in zip(rows, loaders):
        # one class's candidates per batch, two batches per worker: none idle (3 files, read again as needed)
        assert loader["batch"] == row["batch"] == 5
        assert row["batches"] >= 2 * max(row["workers"], 1) and loader["files"] == row["images"] == 5 * row["batches"]
        assert row["files"] == 3 and row["images_per_s"] > 0


def test_decode_from_projects_with_an_earlier_runs_decode_rate(tmp_path):
    rded = load_bench("bench_rded")
    earlier = tmp_path / "rded.json"
    earlier.write_text(json.dumps({"settings": {"size": 32}, "results": [
        {"section": "scoring"}, {"section": "decode", "workers": 8, "images_per_s": 500.0}]}))
    args = rded.parse_args(["--quick", "--decode-from", str(earlier)])
    assert args.decode_rows == [{"section": "decode", "workers": 8, "images_per_s": 500.0}]
    p = rded.projection(1.0, 0.5, args.decode_rows[0], 1000, 300, str(earlier))
    assert p["decoding_s"] == pytest.approx(1000 * 300 / 500.0) and p["decode_from"] == str(earlier)
    summary = load_bench("gpu_summary")
    lines = summary.rded_lines({"settings": {"family": "imagenet", "candidates": 300, "crops": 5, "size": 224,
                                             "teachers": "resnet18-imagenet", "precision": "bf16"},
                                "results": [{"section": "scoring", "s_per_class": 1.0, "crops_per_s": 1500.0},
                                            {"section": "forward only", "s_per_class": 0.5}], "projection": p})
    assert "decode 500 images/s with 8 workers, from rded.json" in lines[1]
    with pytest.raises(SystemExit):  # (decoded to another size: its rate is not this run's)
        rded.parse_args(["--quick", "--size", "64", "--decode-from", str(earlier)])


def count_allocations(monkeypatch, fn) -> int:
    """torch.ones / torch.ones_like calls during ``fn()``."""
    calls = []
    for name in ("ones", "ones_like"):
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, real=real, **k: calls.append(1) or real(*a, **k))
    try:
        fn()
    finally:
        monkeypatch.undo()
    return len(calls)


def test_no_timed_fused_call_allocates_its_upstream_gradient(monkeypatch):
    ops = load_bench("bench_ops")
    fused = ops.overhead_cases(torch.device("cpu"), ["cpu"])["eval_bn+loss"][1]["fused cpu"]
    assert count_allocations(monkeypatch, fused) == 0
    with torch_threads(torch.get_num_threads()):  # (the suite sets its threads at import: restored)
        suite = load_bench("test_cpu_benchmarks")
    x = torch.randn(2, 3, 4, 4).requires_grad_()
    timed = suite.KERNEL_CASES["bn_eval_with_stat_loss cpu"](x, torch.zeros(3), torch.ones(3))
    assert count_allocations(monkeypatch, timed) == 0
    (grad,) = timed()
    assert grad.shape == x.shape
