"""Hostile operating environments: a legacy non-UTF-8 locale, a file system without flock, an
output path that is not UTF-8, a blank or bad WORLD_SIZE, a requeued `distill --resume` run
again after its set was saved."""
import errno
import fcntl
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import train_tiny_teachers
from infer_fast._io import OutputPathError, check_writable
from infer_fast.output_lock import lock_path, output_lock

torch.set_num_threads(1)
DATASET = "fashion-mnist-mini"
NOT_UTF8 = os.fsdecode(b"bad\xffdir")  # (a Latin-1 folder name: its bytes are not UTF-8)


def _cli(capsys, *args):
    from infer_fast.cli import main

    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return train_tiny_teachers(tmp_path_factory.mktemp("teachers"), seeds=(0,))[0]


# 1. a legacy locale (its encoding not UTF-8): the files the package writes are UTF-8 all the same

def test_run_writes_its_report_under_an_ascii_locale(tmp_path):
    """`run` wrote results.md in the locale's encoding: its dashes failed under Latin-1 or ASCII
    after all the work, and every rerun failed the same."""
    script = textwrap.dedent(f"""
        import locale, sys
        if locale.getpreferredencoding(False).lower().replace("-", "") == "utf8":
            sys.exit(77)  # (UTF-8 anyway: nothing to show)
        from infer_fast.pipeline import PipelineConfig, run_pipeline
        cfg = PipelineConfig.from_dict(dict(
            dataset="{DATASET}", out="run", ipc=[1], methods=["random"], seeds=1, device="cpu",
            teachers=[{{"model": "convnet-w8-d2", "epochs": 1, "batch_size": 256, "lr": 0.05, "seed": 0}}],
            student={{"model": "convnet-w8-d2", "epochs": 1, "batch_size": 64, "device": "cpu"}}))
        run_pipeline(cfg, progress=False)
    """)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
           "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    if done.returncode == 77:
        pytest.skip("this Python runs in UTF-8 mode whatever the locale")
    assert done.returncode == 0, done.stderr[-2000:]
    report = (tmp_path / "run" / "results.md").read_text(encoding="utf-8")
    assert "\u2013" in report or "\u00b1" in report  # (the characters the locale could not encode)
    assert json.loads((tmp_path / "run" / "results.json").read_text(encoding="utf-8"))["finished"]


# 2. a file system without flock (Lustre without -o flock, some FUSE)

def _failing_flock(code):
    """flock as a file system without it (or failing otherwise) has it: raising ``code``."""
    def flock(fd, operation):
        raise OSError(code, os.strerror(code))

    return flock


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK])
def test_no_flock_is_one_clear_error_leaving_nothing(tmp_path, monkeypatch, code):
    monkeypatch.setattr(fcntl, "flock", _failing_flock(code))
    out = tmp_path / "set"
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OutputPathError, match=rf"cannot lock output directory {out}: the file system of "
                       rf"{lock_path(out)} does not support flock .*-o flock, or put the output on another"):
        with output_lock(out, "output directory"):
            pass
    assert not lock_path(out).exists()  # (no empty lock file left)
    assert len(os.listdir("/proc/self/fd")) == fds  # (its file closed)


def test_no_flock_stops_a_command_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fcntl, "flock", _failing_flock(errno.ENOSYS))
    status, _, err = _cli(capsys, "distill", "--method", "random", "--dataset", DATASET, "--ipc", 1,
                          "--out", tmp_path / "s")
    assert status == 2 and "does not support flock" in err and "-o flock" in err and len(err.splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_another_lock_failure_is_not_called_a_missing_flock(tmp_path, monkeypatch):
    monkeypatch.setattr(fcntl, "flock", _failing_flock(errno.EIO))
    with pytest.raises(OSError) as raised:
        with output_lock(tmp_path / "set"):
            pass
    assert raised.value.errno == errno.EIO and not isinstance(raised.value, OutputPathError)


# 3. an output path that is not UTF-8

def test_a_path_that_is_not_utf8_is_refused_before_work(tmp_path, capsys):
    bad = tmp_path / NOT_UTF8
    bad.mkdir()
    with pytest.raises(OutputPathError, match="not valid UTF-8") as raised:
        check_writable(bad / "s1", "output directory", kind="directory")
    str(raised.value).encode("utf-8")  # (shown with the bad byte replaced: printable anywhere)
    assert "bad\ufffddir" in str(raised.value)
    status, _, err = _cli(capsys, "distill", "--method", "random", "--dataset", DATASET, "--ipc", 1, "--out", bad / "s1")
    assert status == 2 and "not valid UTF-8" in err and len(err.splitlines()) == 1
    assert os.listdir(bad) == []  # (nothing made, no lock left)


def test_a_set_under_a_path_that_is_not_utf8_says_so_when_read(tmp_path, capsys):
    from infer_fast.methods.random import distill_random
    from infer_fast.storage import load_distilled
    from infer_fast.storage.distilled_set import DistilledSetError

    distill_random(DATASET, 1, tmp_path / "s1", seed=0)
    moved = tmp_path / NOT_UTF8
    moved.mkdir()
    os.rename(tmp_path / "s1", moved / "s1")  # (a folder renamed since: not refused at the save)
    with pytest.raises(DistilledSetError, match=r"bad\ufffddir/s1: its path is not valid UTF-8") as raised:
        load_distilled(moved / "s1")
    str(raised.value).encode("utf-8")
    status, _, err = _cli(capsys, "inspect", moved / "s1")
    assert status == 2 and "its path is not valid UTF-8" in err and len(err.splitlines()) == 1


def test_imported_soft_labels_under_a_path_that_is_not_utf8_say_so(tmp_path):
    from safetensors.torch import save_file

    from infer_fast.storage.distilled_set import DistilledSetError
    from infer_fast.storage.importer import _read_soft_labels

    folder = tmp_path / NOT_UTF8
    folder.mkdir()
    save_file({"soft": torch.zeros(2, 10)}, os.fspath(folder / "soft.safetensors"))
    with pytest.raises(DistilledSetError, match="its path is not valid UTF-8") as raised:
        _read_soft_labels(folder / "soft.safetensors", 2, 10)
    str(raised.value).encode("utf-8")


# 4. WORLD_SIZE, RANK, LOCAL_RANK as a job script may leave them

@pytest.mark.parametrize("value", ["", " "])
def test_a_blank_world_size_is_one_process(monkeypatch, capsys, value):
    from infer_fast.distributed import init_from_env, launched_world_size

    monkeypatch.setenv("WORLD_SIZE", value)
    monkeypatch.setenv("RANK", "")
    assert launched_world_size() == 1 and init_from_env() == (0, 1)
    status, out, err = _cli(capsys, "datasets")
    assert status == 0 and DATASET in out and err == ""


@pytest.mark.parametrize("variables, message", [
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a positive integer: torchrun sets it; unset it to run one process"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0' is not a positive integer"),
    ({"WORLD_SIZE": "-2"}, "WORLD_SIZE='-2' is not a positive integer"),
    ({"WORLD_SIZE": "2", "RANK": "x"}, "RANK='x' is not a non-negative integer: torchrun sets it"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 is not below WORLD_SIZE=2"),
])
def test_a_bad_launch_variable_is_one_line(monkeypatch, variables, message):
    from infer_fast.distributed import launched_rank

    monkeypatch.delenv("RANK", raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        launched_rank()


def test_a_bad_local_rank_is_one_line(monkeypatch):
    from infer_fast.distributed import launched_local_rank

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "-1")
    with pytest.raises(ValueError, match="LOCAL_RANK='-1' is not a non-negative integer"):
        launched_local_rank()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launched_local_rank() == 1


# 5. a requeued job: `distill --resume` again after its set was saved

@pytest.mark.parametrize("method, options", [
    ("sre2l", ["--iterations", 2]),
    ("rded", ["--candidates-per-class", 4, "--factor", 1]),
    ("infer", ["--iterations", 2, "--ipc", 2]),
    ("cda", ["--iterations", 2]),
])
def test_resume_of_a_finished_set_has_nothing_to_do(tmp_path, capsys, teacher, method, options):
    out = tmp_path / "rq"
    distill = ["distill", "--method", method, "--dataset", DATASET, "--teachers", teacher, "--ipc", 1, "--out", out,
               "--device", "cpu", "--quiet", *options]
    status, _, err = _cli(capsys, *distill, "--resume")
    assert status == 0, err
    manifest = (out / "manifest.json").read_text(encoding="utf-8")
    assert json.loads(manifest)["request"]["method"] == method
    status, out_text, err = _cli(capsys, *distill, "--resume")  # (the job requeued)
    assert status == 0, err
    assert f"{out}: already distilled; nothing to do" in out_text
    assert (out / "manifest.json").read_text(encoding="utf-8") == manifest  # (untouched)
    status, _, err = _cli(capsys, *distill)  # without --resume: refused as ever
    assert status == 2 and "already exists" in err


def test_resume_of_another_request_on_a_finished_set_is_refused(tmp_path, capsys, teacher):
    out = tmp_path / "rq"

    def distill(teachers, iterations):
        return _cli(capsys, "distill", "--method", "sre2l", "--dataset", DATASET, "--teachers", teachers, "--ipc", 1,
                    "--out", out, "--device", "cpu", "--quiet", "--resume", "--iterations", iterations)

    assert distill(teacher, 2)[0] == 0
    status, _, err = distill(teacher, 3)
    assert status == 2 and f"set '{out}' belongs to another run (iterations differs; recorded iterations=2)" in err
    retrained = tmp_path / "retrained.pt"  # (other weights: the set is not this request's)
    checkpoint = torch.load(teacher, weights_only=True)
    checkpoint["state_dict"] = {k: v + 1 if v.is_floating_point() else v for k, v in checkpoint["state_dict"].items()}
    torch.save(checkpoint, retrained)
    status, _, err = distill(retrained, 2)
    assert status == 2 and "(the teachers' weights (or their order) differ)" in err


def test_resume_with_a_leftover_checkpoint_keeps_the_refusal(tmp_path, capsys, teacher):
    from infer_fast.distill.run import recovery_checkpoint_path

    out = tmp_path / "rq"
    distill = ["distill", "--method", "sre2l", "--dataset", DATASET, "--teachers", teacher, "--ipc", 1, "--out", out,
               "--device", "cpu", "--quiet", "--resume", "--iterations", 2]
    assert _cli(capsys, *distill)[0] == 0
    recovery_checkpoint_path(out).write_bytes(b"")  # (a run killed after saving its set)
    status, _, err = _cli(capsys, *distill)
    assert status == 2 and "a recovery checkpoint is beside it" in err
