"""Smoke test of the student benchmark's --quick mode: it runs, writes the three rows it
promises and a projection made from them, and the GPU session's summary reports it (the
timings themselves are benchmarks, never asserted here)."""
import math

import pytest
from conftest import run_bench_json, run_bench_script


def test_quick_mode_writes_every_row_and_the_projection(tmp_path):
    proc, result = run_bench_json("bench_student.py", tmp_path / "student.json", "--quick")
    settings, config = result["settings"], result["config"]
    assert settings["recipe"] == "imagenet" and (settings["steps"], settings["rounds"], settings["size"]) == (2, 1, 32)
    assert (config["model"], config["batch_size"], config["epochs"]) == ("convnet-w8-d2", 8, 300)
    assert (config["augmentation"], config["mix"]) == ("resized_crop_flip", "cutmix")  # the ImageNet recipe's
    rows = {r["section"]: r for r in result["results"]}
    assert set(rows) == {"host prep", "device step", "train loop"}
    for row in rows.values():
        assert len(row["ms_per_step_rounds"]) == 1 and row["ms_per_step"] > 0
        assert row["images_per_s"] == pytest.approx(1000 * 8 / row["ms_per_step"])
    ms = {name: row["ms_per_step"] for name, row in rows.items()}
    p = result["projection"]
    assert p["images"] == 10000 and p["steps"] == 300 * math.ceil(10000 / 8)
    assert p["loop_h"] == pytest.approx(p["steps"] * ms["train loop"] / 3600e3)
    assert p["serial_h"] == pytest.approx(p["steps"] * (ms["host prep"] + ms["device step"]) / 3600e3)
    assert p["overlapped_h"] == pytest.approx(p["steps"] * max(ms["host prep"], ms["device step"]) / 3600e3)
    assert p["loop_of_serial"] == pytest.approx(ms["train loop"] / (ms["host prep"] + ms["device step"]))
    assert "projected 10000 images x 300 epochs" in proc.stdout
    summary = run_bench_script("gpu_summary.py", tmp_path, timeout=60)
    assert summary.returncode == 0, summary.stderr
    assert "student   not run" in summary.stdout  # (no status file: the benchmark ran outside the session)
    assert "student (convnet-w8-d2, imagenet recipe, batch 8, 32 px, fp32): host prep" in summary.stdout
    assert f"projected 10000 images x 300 epochs: {p['loop_h']:.2f} h" in summary.stdout


def test_profile_says_where_each_part_spends_its_time(tmp_path):
    _, result = run_bench_json("bench_student.py", tmp_path / "student.json", "--quick", "--profile")
    rows = {r["section"]: r for r in result["results"]}
    assert "profile" not in rows["train loop"]
    for name in ("host prep", "device step"):
        profile = rows[name]["profile"]
        assert profile["by"] == "host time" and 0 < len(profile["top"]) <= 12  # (a CPU run: host time for both)
        assert all(op["ms"] > 0 and 0 < op["share"] <= 1 and op["calls"] >= 1 for op in profile["top"])
    assert any("upsample" in op["name"] for op in rows["host prep"]["profile"]["top"])  # RandomResizedCrop's resize
    assert any("convolution" in op["name"] for op in rows["device step"]["profile"]["top"])
    summary = run_bench_script("gpu_summary.py", tmp_path, timeout=60)
    assert "    host prep (host time): " in summary.stdout and "    device step (host time): " in summary.stdout


def test_dynamic_students_and_other_epoch_counts(tmp_path):
    """--dynamic: an INFER+Dyn student, its batches labelled by the named teachers; --epochs: the
    projected run's epochs (INFER+Dyn's reduced count in `infer-fast run`)."""
    proc, result = run_bench_json("bench_student.py", tmp_path / "student.json", "--quick", "--dynamic",
                                  "convnet-w8-d2,convnet-w8-d2", "--epochs", "75")
    config, p = result["config"], result["projection"]
    assert config["dynamic"] and config["epochs"] == 75 and p["epochs"] == 75 and p["steps"] == 75 * 1250
    assert "labelled by convnet-w8-d2,convnet-w8-d2 on every batch" in proc.stdout
    summary = run_bench_script("gpu_summary.py", tmp_path, timeout=60)
    assert "32 px, fp32, labelled by convnet-w8-d2,convnet-w8-d2 on every batch): host prep" in summary.stdout


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--epochs", "0"], "--epochs must be a positive integer"),
])
def test_bad_settings_are_refused(args, message):
    proc = run_bench_script("bench_student.py", "--quick", *args, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr


def test_a_bf16_channels_last_student(tmp_path):
    """--precision bf16 --channels-last (--augment-on device): the student computes so
    (StudentConfig's options); the GPU session runs both into student-bf16.json and
    student-bf16-device.json, which its summary reports beside student.json."""
    proc, result = run_bench_json("bench_student.py", tmp_path / "student-bf16.json", "--quick", "--precision", "bf16",
                                  "--channels-last")
    assert (result["config"]["precision"], result["config"]["channels_last"]) == ("bf16", True)
    assert "32 px, bf16 channels_last, augmented on the host: 2 steps x 1 rounds" in proc.stdout
    proc, result = run_bench_json("bench_student.py", tmp_path / "student-bf16-device.json", "--quick", "--precision",
                                  "bf16", "--channels-last", "--augment-on", "device")
    assert result["config"]["augment_on"] == "device" and "augmented on the device" in proc.stdout
    summary = run_bench_script("gpu_summary.py", tmp_path, timeout=60)
    assert "student (convnet-w8-d2, imagenet recipe, batch 8, 32 px, bf16 channels_last): host prep" in summary.stdout
    assert "32 px, bf16 channels_last, augmented on the device): host prep" in summary.stdout
