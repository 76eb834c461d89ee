"""Smoke test of bench/bench_recovery.py: a tiny reduced run on CPU writes the JSON it promises,
row by row (a run cut short keeps its rows), with a row that ran out of memory recorded, and
the steady-state time per iteration."""
import importlib.util
import json

import pytest
import torch
from conftest import BENCH, run_bench_script, torch_threads

from infer_fast.distill import RecoveryOutOfMemoryError

SCRIPT = BENCH / "bench_recovery.py"
TINY = ["--iterations", "1", "--ufcs", "2", "--reference-ufcs", "1", "--threads", "1", "--device", "cpu"]


def run_bench(*flags: str):
    return run_bench_script("bench_recovery.py", *flags, timeout=120)


@pytest.mark.parametrize("preset, shrink", [
    ("cifar100", ["--classes", "4", "--size", "8"]),
    ("imagenet", ["--classes", "4", "--size", "32", "--teachers", "resnet18-imagenet"]),
])
def test_tiny_run_writes_rows_and_projections(tmp_path, preset, shrink):
    out = tmp_path / "recovery.json"
    proc = run_bench("--preset", preset, *shrink, *TINY, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "REDUCED" in proc.stdout
    result = json.loads(out.read_text())
    assert result["preset"] == preset and result["reduced"] is True
    assert result["shapes"]["classes"] == 4
    assert result["environment"]["device"].startswith("CPU")
    rows = {r["row"]: r for r in result["rows"]}
    assert set(rows) == {"reference", "toolkit", "toolkit fused BN", "toolkit fused BN + channels_last",
                         "toolkit bf16+channels_last"}
    for r in rows.values():
        assert r["ms_per_ufc_iteration"] > 0 and r["images_per_s"] > 0 and r["speedup_vs_reference"] > 0
    assert rows["reference"]["speedup_vs_reference"] == pytest.approx(1.0)
    assert result["projections"] and all(p["hours"] > 0 for p in result["projections"])
    assert all(p["unit"].startswith("CPU-hours") for p in result["projections"])


def test_rows_a_chunked_plan_does_not_allow_are_recorded_not_fatal(tmp_path):
    """With a chunk size (a plan that chunks the batch) the fused-BN rows do not apply: each is
    a row naming why, the others are timed, the JSON is written."""
    out = tmp_path / "recovery.json"
    proc = run_bench("--preset", "cifar100", "--classes", "4", "--size", "8", "--chunk-size", "3", *TINY,
                     "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = {r["row"]: r for r in json.loads(out.read_text())["rows"]}
    for name in ("toolkit fused BN", "toolkit fused BN + channels_last", "toolkit bf16+channels_last"):
        assert rows[name]["error"].startswith("does not apply: fused_bn (--fused-bn) does not apply with chunk_size")
        assert rows[name]["speedup_vs_reference"] is None
    assert rows["toolkit"]["ms_per_ufc_iteration"] > 0 and rows["toolkit"]["chunk_size"] == 3


def load_bench_module():
    spec = importlib.util.spec_from_file_location("bench_recovery", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("flags, message", [
    (["--preset", "cifar100", "--iterations", "0"], "--iterations must be a positive integer"),
    (["--preset", "imagenet", "--size", "16"], "--size must be at least 32"),
    (["--preset", "cifar100", "--teachers", "nope"], "--teachers: unknown model(s) nope"),
    (["--preset", "cifar100", "--compile", "default", "--iterations", "1"], "--compile times the iterations after"),
])
def test_bad_flags_are_refused(capsys, flags, message):
    bench = load_bench_module()
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(flags + ["--device", "cpu"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def run_main(bench, *flags: str) -> int:
    with torch_threads(1):  # (main sets the process's thread count)
        return bench.main([*TINY, *flags])  # (the flags given win)


def test_a_row_out_of_memory_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    """recover_ufcs turns CUDA's out-of-memory into its RecoveryOutOfMemoryError (a
    MemoryError): the row records it, the other rows are timed, the JSON is written."""
    bench = load_bench_module()
    real = bench.recover_ufcs

    def recover(natural, teachers, mean, std, config, **kwargs):
        if config.fused_bn:  # (what the engine raises for a batch that did not fit)
            raise RecoveryOutOfMemoryError("recovery ran out of CUDA memory of cuda:0 in the batch teacher 0")
        return real(natural, teachers, mean, std, config, **kwargs)

    monkeypatch.setattr(bench, "recover_ufcs", recover)
    out = tmp_path / "recovery.json"
    steady = ["--iterations", str(bench.STEADY_FROM + 1)]
    assert run_main(bench, "--preset", "cifar100", "--classes", "4", "--size", "8", "--out", str(out), *steady) == 0
    result = json.loads(out.read_text())
    rows = {r["row"]: r for r in result["rows"]}
    for name in ("toolkit fused BN", "toolkit fused BN + channels_last", "toolkit bf16+channels_last"):
        assert rows[name]["error"] == "out of memory: recovery ran out of CUDA memory of cuda:0 in the batch teacher 0"
        assert rows[name]["speedup_vs_reference"] is None
    assert result["complete"] is True and result["iterations"] == bench.STEADY_FROM + 1
    for name in ("reference", "toolkit"):  # timed, each saying which time it reports
        assert rows[name]["ms_per_ufc_iteration"] > 0 and rows[name]["ms_per_ufc_iteration_total"] > 0
        assert rows[name]["per_iteration_timing"].split(":")[0] in ("steady state", "total")
    assert rows["toolkit"]["speedup_vs_reference"] > 0


def test_an_error_other_than_out_of_memory_still_stops_the_run(tmp_path, monkeypatch):
    bench = load_bench_module()

    def broken(*args, **kwargs):
        raise RuntimeError("a bug, not a measurement")

    monkeypatch.setattr(bench, "recover_ufcs", broken)
    with pytest.raises(RuntimeError, match="a bug, not a measurement"):
        run_main(bench, "--preset", "cifar100", "--classes", "4", "--size", "8", "--out", str(tmp_path / "r.json"))


class Killed(BaseException):
    """What a time limit's signal does to the run: it ends wherever it is."""


def test_a_run_ended_after_its_first_teacher_keeps_its_rows(tmp_path, monkeypatch):
    """gpu_session.sh ends a step at its time limit: the rows measured by then are in the JSON
    (written after every row), marked incomplete. ResNet-18 comes first in the ImageNet preset."""
    bench = load_bench_module()
    assert bench.PRESETS["imagenet"]["teachers"][0] == "resnet18-imagenet"
    real, made = bench.create_model, []

    def create_model(name, **kwargs):
        made.append(name)
        if len(made) == 2:  # the second teacher: the limit is reached
            raise Killed
        return real(name, **kwargs)

    monkeypatch.setattr(bench, "create_model", create_model)
    out = tmp_path / "recovery.json"
    with pytest.raises(Killed):
        run_main(bench, "--preset", "cifar100", "--classes", "4", "--size", "8", "--teachers", "resnet18,convnet",
                 "--out", str(out))
    result = json.loads(out.read_text())
    assert result["complete"] is False and result["teachers"] == ["resnet18", "convnet"]
    assert [r["teacher"] for r in result["rows"]] == ["resnet18"] * 5
    assert all(r["ms_per_ufc_iteration"] > 0 for r in result["rows"])
    assert {p["row"] for p in result["projections"]} == {r["row"] for r in result["rows"]}
    assert list(tmp_path.iterdir()) == [out]  # (written whole: nothing half-written beside it)


@pytest.mark.parametrize("iterations", [10, 3])
def test_the_steady_state_leaves_out_the_per_call_costs(monkeypatch, iterations):
    """A row's time per iteration is (T(n) - T(STEADY_FROM)) / (n - STEADY_FROM): a CUDA graph's
    warm-up and capture, the final pass and transfers (the same in both runs) cancel. With n <=
    STEADY_FROM only the total is measured, and the row says so."""
    bench = load_bench_module()
    runs = []
    # each call: 2 s of per-call costs, then 0.1 s per iteration (of both UFCs together)
    monkeypatch.setattr(bench, "wall_seconds", lambda fn, device: (fn(), 2.0 + 0.1 * runs[-1])[1])
    row = bench.measure("toolkit", "resnet18", 10, 2, iterations, torch.device("cpu"),
                        run=lambda n: runs.append(n) or {"cuda_graph": ["captured"]}, group_size=2)
    total_ms = (2.0 + 0.1 * iterations) * 1e3 / (iterations * 2)
    assert row["ms_per_ufc_iteration_total"] == pytest.approx(total_ms)
    assert row["cuda_graph"] == ["captured"]
    if iterations > bench.STEADY_FROM:
        assert runs == [1, iterations, bench.STEADY_FROM]  # a warm-up, then both timed runs
        assert row["ms_per_ufc_iteration"] == pytest.approx(50.0)
        assert row["per_iteration_timing"] == (f"steady state: (T({iterations}) - T({bench.STEADY_FROM})) / "
                                               f"{iterations - bench.STEADY_FROM} iterations")
    else:
        assert runs == [1, iterations]
        assert row["ms_per_ufc_iteration"] == pytest.approx(total_ms)
        assert row["per_iteration_timing"].startswith(f"total: T({iterations}) / {iterations} iterations")
    assert row["images_per_s"] == pytest.approx(10 / row["ms_per_ufc_iteration"] * 1e3)
