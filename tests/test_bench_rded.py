"""Smoke test of the RDED benchmark's --quick mode: it runs, writes the rows it promises and a
projection made from them (the timings themselves are benchmarks, never asserted here)."""

import pytest
from conftest import run_bench_json, run_bench_script


def test_quick_mode_writes_every_row_and_the_projection(tmp_path):
    proc, result = run_bench_json("bench_rded.py", tmp_path / "rded.json", "--quick")
    settings, recipe = result["settings"], result["recipe"]
    assert settings["quick"] and settings["ipc"] == 1 and settings["classes"] == 2
    assert (recipe["factor"], recipe["candidates_per_class"], recipe["crops_per_image"]) == (2, 8, 2)
    rows = {r["section"]: r for r in result["results"]}
    assert set(rows) == {"scoring", "forward only", "decode"}
    decodes = [r for r in result["results"] if r["section"] == "decode"]
    assert [r["workers"] for r in decodes] == settings["workers"] and settings["workers"][0] >= 1  # (RDED's own first)
    for name in ("scoring", "forward only"):
        assert len(rows[name]["s_per_class_runs"]) == 2 and rows[name]["s_per_class"] > 0
        assert rows[name]["crops_per_s"] == pytest.approx(16 / rows[name]["s_per_class"])
    assert rows["decode"]["files"] == 6 and rows["decode"]["images_per_s"] > 0
    p = result["projection"]
    assert p["classes"] == 1000 and p["scoring_s"] == pytest.approx(1000 * rows["scoring"]["s_per_class"])
    assert p["decoding_s"] == pytest.approx(1000 * 8 / rows["decode"]["images_per_s"])
    assert p["overlapped_s"] == max(p["scoring_s"], p["decoding_s"])
    assert p["serial_s"] == pytest.approx(p["scoring_s"] + p["decoding_s"])
    assert "projected 1000 classes" in proc.stdout
    # and the GPU session's summary reports it (rded.json is what its rded step leaves)
    summary = run_bench_script("gpu_summary.py", tmp_path, timeout=60)
    assert summary.returncode == 0, summary.stderr
    assert "rded      not run" in summary.stdout  # (no status file: the benchmark ran outside the session)
    assert "rded (imagenet recipe, 8 candidates x 2 crops, 32 px, resnet18-imagenet, fp32):" in summary.stdout
    assert f"projected 1000 classes (decoding with the first): {p['overlapped_s'] / 60:.1f} min overlapped" \
        in summary.stdout


def test_bf16_and_channels_last_scoring(tmp_path):
    """--precision bf16 and --channels-last: RDED's options, recorded in the recipe; the GPU
    session's rded step runs them into rded-bf16.json and rded-bf16-channels-last.json, which its
    summary reports beside rded.json."""
    proc, result = run_bench_json("bench_rded.py", tmp_path / "rded-bf16.json", "--quick", "--precision", "bf16")
    assert result["recipe"]["precision"] == "bf16" and "resnet18-imagenet, bf16" in proc.stdout
    assert result["recipe"]["channels_last"] is False
    proc, result = run_bench_json("bench_rded.py", tmp_path / "rded-bf16-channels-last.json", "--quick",
                                  "--precision", "bf16", "--channels-last")
    assert result["recipe"]["channels_last"] is True and "resnet18-imagenet, bf16 channels_last" in proc.stdout
    summary = run_bench_script("gpu_summary.py", tmp_path, timeout=60)
    assert "rded (imagenet recipe, 8 candidates x 2 crops, 32 px, resnet18-imagenet, bf16):" in summary.stdout
    assert "rded (imagenet recipe, 8 candidates x 2 crops, 32 px, resnet18-imagenet, bf16 channels_last):" \
        in summary.stdout


@pytest.mark.parametrize("args, message", [
    (["--ipc", "10"], "--candidates 8 is too few for ipc 10 at factor 2"),
    (["--workers", "2,x"], "--workers takes comma-separated integers, got '2,x'"),
    (["--classes", "0"], "--classes must be a positive integer"),  # (a given 0 is not the default)
])
def test_bad_settings_are_refused(args, message):
    proc = run_bench_script("bench_rded.py", "--quick", *args, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr
