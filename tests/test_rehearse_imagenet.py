"""bench/rehearse_imagenet.py's --device (issue 18): checked before any work, the device every
step of the rehearsed run computes on (its config's ``device``) and recorded in its JSON."""
import json
import os

import pytest
import torch
import yaml
from conftest import BENCH, run_bench_script

from infer_fast.data import DECODE_LOG_ENV


def test_an_unknown_device_is_refused_before_any_work(tmp_path):
    proc = run_bench_script("rehearse_imagenet.py", "--device", "tpu", "--json", tmp_path / "r.json", timeout=120)
    assert proc.returncode == 2 and "error: --device must be cpu or cuda[:N], got 'tpu'" in proc.stderr
    assert not (tmp_path / "r.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is available")
def test_cuda_without_a_gpu_is_refused_before_any_work(tmp_path):
    proc = run_bench_script("rehearse_imagenet.py", "--device", "cuda", "--json", tmp_path / "r.json", timeout=120)
    assert proc.returncode == 2 and "error: --device cuda: no CUDA GPU is available" in proc.stderr
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("device", [None, "cpu", "cuda"])
def test_the_device_goes_into_the_run_config_and_the_record(tmp_path, monkeypatch, device):
    monkeypatch.syspath_prepend(str(BENCH))
    import rehearse_imagenet

    if device == "cuda":  # what the script does with it, on any machine (the run itself is stood in for)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(rehearse_imagenet, "environment", lambda device, threads: {"device": f"GPU {device}"})

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(rehearse_imagenet.tempfile, "mkdtemp", lambda prefix: str(work))
    configs = []

    def run_of_the_config(cmd, env, cwd, log_path):  # stands in for `infer-fast run CONFIG`
        with open(cmd[-1]) as f:
            config = yaml.safe_load(f)
        configs.append(config)
        os.makedirs(config["out"])
        with open(os.path.join(config["out"], "results.json"), "w") as f:
            json.dump({"timing": {"steps": {"test split": {"seconds": 0.5, "peak_rss_gib": 0.4}}}}, f)
        with open(env[DECODE_LOG_ENV], "w") as f:
            f.write(os.path.join(config["data_root"], "val", "n0", "a.JPEG") + "\n")
        open(log_path, "w").close()
        return {"returncode": 0, "wall_s": 1.0, "process_tree_peak_rss_gib": 0.5}

    monkeypatch.setattr(rehearse_imagenet, "run_measured", run_of_the_config)
    out = tmp_path / "rehearsal.json"
    chosen = ["--device", device] if device else []
    assert rehearse_imagenet.main(["--classes", "2", "--train-per-class", "1", *chosen, "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    expected = device or "cpu"  # (the default)
    assert configs[0]["device"] == expected and record["device"] == expected
    assert record["config"].endswith(f"device: {expected}\n")
    assert record["environment"]["device"].startswith("GPU cuda" if device == "cuda" else "CPU")
    assert record["tree"] == {"classes": 2, "train_per_class": 1, "val_per_class": 1}
    assert record["decoded_files"] == {"val": 1}
    assert not work.exists()  # (removed after a run that succeeded; --keep keeps it)
    work.mkdir()
    assert rehearse_imagenet.main(["--classes", "2", "--train-per-class", "1", "--keep", "--json", str(out)]) == 0
    assert (work / "run.log").exists()
