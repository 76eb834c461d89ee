"""Smoke test of bench/bench_recovery.py: a tiny reduced run on CPU writes the JSON it promises."""
import importlib.util
import json

import pytest
from conftest import BENCH, run_bench_script

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
        assert rows[name]["error"].startswith("does not apply: fused_bn does not apply with chunk_size")
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
