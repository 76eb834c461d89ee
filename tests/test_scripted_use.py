"""infer-fast driven by scripts: results.json names a run's sets from its run directory (a run
continued from another working directory, or copied, reads its own sets), `~` in a config
file's paths is the home folder, a config read from a pipe (`run <(envsubst < t.yaml)`), and
progress messages on stderr with the results alone on stdout (`cmd > result.txt`)."""
import argparse
import json
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch

from conftest import train_tiny_teachers
from infer_fast.config import merge
from infer_fast.pipeline import PipelineConfig, load_pipeline_config, run_pipeline, set_directory

torch.set_num_threads(1)

STUDENT = {"model": "convnet-w8-d2", "epochs": 1, "batch_size": 64, "device": "cpu"}


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    return train_tiny_teachers(tmp_path_factory.mktemp("teacher"), seeds=(0,))[0]


def random_run(out, teacher):
    """A tiny run: one teacher checkpoint, random's set at ipc 2, one student of one epoch."""
    return PipelineConfig(dataset="fashion-mnist-mini", teachers=[{"path": teacher}], out=str(out), ipc=[2],
                          methods=["random"], student=dict(STUDENT), seeds=1, device="cpu",
                          feature_duplication=False)


def recorded_directory(run_dir) -> str:
    with open(os.path.join(run_dir, "results.json")) as f:
        return json.load(f)["sets"]["random/ipc2"]["directory"]


# ---- 1: results.json names the sets from the run directory -------------------------------------

def test_set_directories_are_recorded_from_the_run_directory(tmp_path, monkeypatch, teacher_path):
    """A run made as ``runs/a`` from one directory records its set as ``sets/random-ipc2``; a copy
    of it continued from elsewhere (its file recorded as before, from the first session's working
    directory) records its own set, not the original's."""
    first = tmp_path / "first"
    first.mkdir()
    monkeypatch.chdir(first)
    run_pipeline(random_run("runs/a", teacher_path), progress=False)
    assert recorded_directory("runs/a") == "sets/random-ipc2"

    copy = tmp_path / "copy"
    shutil.copytree(first / "runs" / "a", copy)
    results = json.loads((copy / "results.json").read_text())
    results["sets"]["random/ipc2"]["directory"] = "runs/a/sets/random-ipc2"  # (as recorded before)
    (copy / "results.json").write_text(json.dumps(results))
    monkeypatch.chdir(tmp_path)
    continued = run_pipeline(random_run(copy, teacher_path), progress=False)
    assert recorded_directory(copy) == "sets/random-ipc2"
    assert set_directory(copy, continued["sets"]["random/ipc2"]) == copy / "sets" / "random-ipc2"


def test_the_demo_previews_the_set_of_its_out_directory(tmp_path, monkeypatch):
    """`demo --out ../A/demo-output` from another directory draws the INFER set of that run,
    not the path as results.json records it from the working directory."""
    import infer_fast.pipeline
    import infer_fast.storage
    from infer_fast import demo

    previewed = []
    monkeypatch.setattr(infer_fast.pipeline, "run_pipeline", lambda cfg, progress: {
        "sets": {"infer/ipc10": {"directory": "sets/infer-ipc10"}}, "table": []})
    monkeypatch.setattr(infer_fast.pipeline, "format_table", lambda results: "")
    monkeypatch.setattr(infer_fast.storage, "write_preview", lambda source, png: previewed.append(source) or png)
    out = tmp_path / "A" / "demo-output"
    demo.run_demo(out_dir=str(out), progress=False)
    assert previewed == [out / "sets" / "infer-ipc10"]


# ---- 2: `~` in a config file's paths --------------------------------------------------------------

def test_home_in_a_run_config_is_expanded(tmp_path, monkeypatch):
    from infer_fast.distill import distill_random

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    distill_random("fashion-mnist-mini", 2, tmp_path / "home" / "sets" / "theirs", seed=0)  # (read when loaded)
    (tmp_path / "run.yaml").write_text(
        "dataset: fashion-mnist-mini\nout: ~/runs/r\nteachers: [{path: ~/t.pt}]\nmethods: [random]\n"
        "external: {Theirs: ~/sets/theirs}\nstudent: {model: convnet-w8-d2, epochs: 1}\n")
    cfg = load_pipeline_config(str(tmp_path / "run.yaml"))
    home = str(tmp_path / "home")
    assert cfg.out == os.path.join(home, "runs", "r") and cfg.teachers == [{"path": os.path.join(home, "t.pt")}]
    assert cfg.external == {"Theirs": os.path.join(home, "sets", "theirs")}


@pytest.mark.parametrize("command, text, option, expected", [
    ("teacher", "dataset: fashion-mnist-mini\nout: ~/t.pt\n", "out", "t.pt"),
    ("teacher", "pretrained: resnet18-imagenet\nweights: ~/w.pth\n", "weights", "w.pth"),
    ("distill", "dataset: fashion-mnist-mini\nteachers: [~/a.pt, ~/b.pt]\n", "teachers", ["a.pt", "b.pt"]),
])
def test_home_in_a_command_config_is_expanded(tmp_path, monkeypatch, command, text, option, expected):
    """`teacher --config` and `distill --config`: a path option (kind PATH or PATHS) from the file."""
    from infer_fast.cli import teacher_options
    from infer_fast.methods.distill_options import distill_options

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "c.yaml").write_text(text)
    declared = teacher_options() if command == "teacher" else distill_options()
    merged = merge(argparse.Namespace(), str(tmp_path / "c.yaml"), declared, declared)
    in_home = [str(tmp_path / name) for name in expected] if isinstance(expected, list) else str(tmp_path / expected)
    assert merged[option] == in_home


# ---- 3: a config read from a pipe ------------------------------------------------------------------

RUN_CONFIG = "dataset: fashion-mnist-mini\nout: r\nteachers: [{path: t.pt}]\nmethods: [random]\nseeds: 2\n"


def test_a_run_config_from_a_pipe_is_read(tmp_path):
    """`run <(envsubst < t.yaml)` names /dev/fd/N, a pipe: read once, as a file."""
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as writer:
        writer.write(RUN_CONFIG)
    try:
        cfg = load_pipeline_config(f"/dev/fd/{read_end}")
    finally:
        os.close(read_end)
    assert (cfg.out, cfg.methods, cfg.seeds) == ("r", ["random"], 2)


def test_a_teacher_config_from_a_named_pipe_is_read(tmp_path):
    from infer_fast.cli import teacher_options

    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    # (a daemon: a refused config leaves the writer waiting for a reader, and must not hang the tests)
    writer = threading.Thread(target=fifo.write_text, args=("dataset: fashion-mnist-mini\nepochs: 3\n",),
                              daemon=True)
    writer.start()
    declared = teacher_options()
    merged = merge(argparse.Namespace(), str(fifo), declared, declared)
    writer.join(timeout=10)
    assert merged == {"dataset": "fashion-mnist-mini", "epochs": 3}


def test_a_directory_is_still_refused_as_a_config(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load_pipeline_config(str(tmp_path))


# ---- 4: progress on stderr, results on stdout -------------------------------------------------------

def test_progress_goes_to_stderr_and_the_results_to_stdout(tmp_path, capsys, teacher_path):
    run_pipeline(random_run(tmp_path / "run", teacher_path), progress=True)
    out, err = capsys.readouterr()
    assert "| Random | 2 |" in out and f"results in {tmp_path / 'run' / 'results.json'}" in out
    for progress in ("teachers: convnet-w8-d2 ", "distilling Random ipc 2 -> ", "saving random set (20 stored images",
                     "student 1/1: Random ipc 2 seed 0 "):
        assert progress in err and progress not in out


def test_saving_a_set_says_so_on_stderr(tmp_path, capsys):
    from infer_fast.data import load_dataset
    from infer_fast.methods.random import random_set
    from infer_fast.storage import save_distilled

    save_distilled(random_set(load_dataset("fashion-mnist-mini", "train"), 2), tmp_path / "set", progress=True)
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("saving random set (20 stored images")


def test_set_directory_reads_the_records_of_before_as_this_run_directorys_sets(tmp_path):
    """results.json of before recorded a run's own set relative to its session's working
    directory (or absolute): read as the set of that name in the run directory given."""
    run_dir = tmp_path / "copy"
    assert set_directory(run_dir, {"directory": "runs/x/sets/infer-ipc10"}) == run_dir / "sets" / "infer-ipc10"
    assert set_directory(run_dir, {"directory": "sets/infer-ipc10"}) == run_dir / "sets" / "infer-ipc10"
    external = str(tmp_path / "elsewhere" / "set")
    assert set_directory(run_dir, {"directory": external}) == Path(external)
