"""The YAML presets shipped with infer-fast (configs/, installed as infer_fast/configs/): a
config argument that is not an existing file names one (``infer-fast run fashion-mnist``,
``infer-fast teacher --config teacher-fashion-mnist``), defined once in infer_fast.config."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infer_fast import config as config_module
from infer_fast.config import config_file, load_yaml, merge, preset_folder, preset_names
from infer_fast.run_config import load_pipeline_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def test_every_shipped_preset_is_named():
    assert PRESETS and preset_names() == PRESETS
    # (the checkout's configs/, or the installed package's copy of it, as `make test` runs)
    for name in PRESETS:
        assert (Path(preset_folder()) / f"{name}.yaml").read_bytes() == (CONFIGS / f"{name}.yaml").read_bytes()


@pytest.mark.parametrize("name", PRESETS)
def test_a_preset_loads_by_name_as_its_file(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # (anywhere: not beside configs/)
    from_file = load_yaml(str(CONFIGS / f"{name}.yaml"))
    assert from_file
    for spelled in (name, f"{name}.yaml", f"configs/{name}.yaml"):  # (the README's spelling, too)
        assert load_yaml(spelled) == from_file, spelled


def test_an_experiment_preset_runs_by_name_and_a_teacher_preset_merges_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_pipeline_config("fashion-mnist") == load_pipeline_config(str(CONFIGS / "fashion-mnist.yaml"))
    allowed = load_yaml(str(CONFIGS / "teacher-fashion-mnist-mini.yaml"))
    by_name = merge(argparse.Namespace(epochs=1), "teacher-fashion-mnist-mini", allowed)
    assert by_name == {**allowed, "epochs": 1}


def test_an_existing_path_wins_over_a_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fashion-mnist").write_text("seeds: 7\n")
    assert load_yaml("fashion-mnist") == {"seeds": 7}
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "cifar10.yaml").write_text("seeds: 8\n")
    assert load_yaml("configs/cifar10.yaml") == {"seeds": 8}
    assert config_file("cifar10.yaml") == os.path.join(preset_folder(), "cifar10.yaml")  # (no such file here)
    # a directory is no config file: the preset of its name (a data folder "cifar10", say)
    (tmp_path / "cifar100").mkdir()
    assert config_file("cifar100") == os.path.join(preset_folder(), "cifar100.yaml")


def test_an_unknown_name_is_one_error_listing_the_presets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for missing in ("fashion-mnst", "other/fashion-mnist.yaml", "configs/no-such.yaml"):
        with pytest.raises(FileNotFoundError) as info:
            load_yaml(missing)
        message = str(info.value)
        assert f"config file {missing!r} does not exist, and no preset has that name" in message
        assert f"presets: {', '.join(PRESETS)}" in message and "\n" not in message
    (tmp_path / "somedir").mkdir()
    with pytest.raises(IsADirectoryError, match=r"'somedir' is a directory, expected a file or a preset's name \(presets: "):
        load_yaml("somedir")


def test_the_presets_of_an_installed_package_and_none(tmp_path, monkeypatch):
    """Installed, the presets sit in the package (infer_fast/configs/); a package with neither
    that nor a checkout around it has none, and says so."""
    installed = tmp_path / "site" / "infer_fast"
    (installed / "configs").mkdir(parents=True)
    (installed / "configs" / "mine.yaml").write_text("seeds: 2\n")
    monkeypatch.setattr(config_module, "__file__", str(installed / "config.py"))
    monkeypatch.chdir(tmp_path)
    assert preset_folder() == str(installed / "configs") and preset_names() == ["mine"]
    assert load_yaml("mine") == {"seeds": 2}
    bare = tmp_path / "bare" / "infer_fast"
    bare.mkdir(parents=True)
    (tmp_path / "bare" / "configs").mkdir()  # (no setup.py beside it: not a checkout)
    monkeypatch.setattr(config_module, "__file__", str(bare / "config.py"))
    assert preset_folder() is None and preset_names() == []
    with pytest.raises(FileNotFoundError, match=r"no preset has that name \(no presets are installed\)"):
        load_yaml("mine")


def test_the_run_command_names_the_presets_in_its_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "infer_fast", "run", "no-such-preset"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "'no-such-preset' does not exist, and no preset has that name (presets: cifar10, " in result.stderr
