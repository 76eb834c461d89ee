"""One writer per output (issue 20 point 2): a second distill, relabel or run on an output in
use is refused at start by name; leftovers of writers killed mid-save are removed by the next
one; a run refused before work leaves no directory behind."""
import os

import pytest
import torch

from infer_fast.output_lock import OutputInUseError, lock_path, output_lock, stale_leftovers
from infer_fast.pipeline import RUN_FOLDERS

DATASET = "fashion-mnist-mini"


def _cli(capsys, *args):
    from infer_fast.cli import main

    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def test_second_writer_refused_naming_the_output_and_the_holder(tmp_path):
    out = tmp_path / "set"
    with output_lock(out, "output directory"):
        assert lock_path(out).exists() and lock_path(out).name == ".set.lock"
        with pytest.raises(OutputInUseError, match=rf"output directory {out} is being written by process {os.getpid()}"):
            with output_lock(out, "output directory"):
                pass
    assert not lock_path(out).exists()  # released and removed
    with output_lock(out):  # free again
        pass


def test_lock_left_by_a_killed_holder_does_not_block(tmp_path):
    """A SIGKILLed holder leaves its lock file, but the kernel released the flock with the
    process: the next writer goes on (and removes the file when done)."""
    out = tmp_path / "set"
    lock_path(out).write_text("process 999999")
    with output_lock(out):
        assert lock_path(out).read_text() == f"process {os.getpid()}"
    assert not lock_path(out).exists()


def test_concurrent_distill_refused_before_any_work(capsys, tmp_path):
    out = tmp_path / "fm"
    with output_lock(out, "output directory"):
        status, _, err = _cli(capsys, "distill", "--dataset", DATASET, "--method", "random", "--ipc", "2", "--out", out)
    assert status == 2 and f"output directory {out} is being written by process" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == []  # no set, no checkpoint, no lock file


def test_leftovers_of_a_killed_save_are_removed_by_the_next_writer(capsys, tmp_path):
    """What a SIGKILL during a set's save (or a checkpoint's) leaves beside the output is
    removed when the next writer of that output starts; other outputs' files are not touched."""
    out = tmp_path / "fm"
    leftovers = [tmp_path / ".fm.tmp-0123456789ab", tmp_path / ".fm.old-0123456789ab",
                 tmp_path / ".fm.recovery.pt.tmp-4242"]
    leftovers[0].mkdir()
    (leftovers[0] / "images.safetensors").write_bytes(b"partial")
    leftovers[1].mkdir()
    leftovers[2].write_bytes(b"partial")
    others = [tmp_path / ".fm2.tmp-0123456789ab", tmp_path / "fm.notes"]
    others[0].mkdir()
    others[1].write_text("mine")
    assert stale_leftovers(out) == sorted(str(p) for p in leftovers)
    status, _, err = _cli(capsys, "distill", "--dataset", DATASET, "--method", "random", "--ipc", "2", "--out", out)
    assert status == 0, err
    assert sorted(os.listdir(tmp_path)) == sorted(["fm", ".fm2.tmp-0123456789ab", "fm.notes"])


def test_relabel_holds_the_set(capsys, tmp_path):
    from infer_fast.distill import distill_random
    from infer_fast.storage import load_distilled

    distill_random(DATASET, 2, tmp_path / "set", seed=0)
    before = load_distilled(tmp_path / "set")
    with output_lock(tmp_path / "set", "distilled set"):
        status, _, err = _cli(capsys, "relabel", tmp_path / "set", "--teachers", tmp_path / "t.pt")
    assert status == 2 and f"distilled set {tmp_path / 'set'} is being written by process" in err
    assert torch.equal(load_distilled(tmp_path / "set").images, before.images)


def test_run_refused_before_work_leaves_no_directory(capsys, tmp_path):
    """A missing teacher checkpoint or a corrupt external set is refused before the run
    directory is made or any set is written."""
    from infer_fast.distill import distill_random

    base = f"dataset: {DATASET}\nipc: [2]\nmethods: [random]\nstudent: {{epochs: 1}}\ndevice: cpu\n"
    config = tmp_path / "missing.yaml"
    config.write_text(base + f"out: {tmp_path / 'run1'}\nteachers: [{{path: {tmp_path / 'nowhere.pt'}}}]\n")
    status, _, err = _cli(capsys, "run", config)
    assert status == 2 and "nowhere.pt" in err and not (tmp_path / "run1").exists()

    distill_random(DATASET, 2, tmp_path / "theirs", seed=0)
    (tmp_path / "theirs" / "images.safetensors").write_bytes(b"corrupt")
    config = tmp_path / "external.yaml"
    config.write_text(base + f"out: {tmp_path / 'run2'}\nteachers: [{{model: convnet-w8-d2, epochs: 1}}]\n"
                      f"external: {{Theirs: {tmp_path / 'theirs'}}}\n")
    status, _, err = _cli(capsys, "run", config)
    assert status == 2 and "images.safetensors" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run2").exists()


def test_concurrent_run_refused(capsys, tmp_path):
    """A run directory's lock lives inside it (it may sit in a folder the user cannot write)."""
    out = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(f"dataset: {DATASET}\nipc: [2]\nmethods: [random]\nstudent: {{epochs: 1}}\ndevice: cpu\n"
                      f"out: {out}\nteachers: [{{model: convnet-w8-d2, epochs: 1}}]\n")
    with output_lock(out, "run directory", inside=True):
        assert lock_path(out, inside=True) == out / ".lock" and (out / ".lock").exists()
        status, _, err = _cli(capsys, "run", config)
        assert status == 2 and f"run directory {out} is being written by process" in err
        assert os.listdir(out) == [".lock"]  # nothing else written
    assert not out.exists()  # (made for the lock and left empty: removed with it)


def test_a_run_directorys_leftovers_are_found_in_its_subfolders_too(tmp_path):
    """A student or teacher checkpoint written atomically inside a run directory leaves its
    temporary file in students/ or teachers/ when killed mid-save: the next run removes it."""
    run = tmp_path / "run"
    leftovers = [run / ".results.json.tmp-1", run / "students" / ".infer-ipc2-seed0.pt.tmp-2",
                 run / "teachers" / ".teacher0-convnet.pt.tmp-3"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    (run / "students" / "infer-ipc2-seed0.pt").write_bytes(b"kept")
    user = run / "notes" / ".draft.old-v1"  # (a folder the run does not write: the user's)
    user.parent.mkdir()
    user.write_bytes(b"the user's")
    assert stale_leftovers(run, RUN_FOLDERS) == sorted(str(p) for p in leftovers)
    with output_lock(run, "run directory", inside=True, folders=RUN_FOLDERS):
        pass
    assert not any(p.exists() for p in leftovers) and (run / "students" / "infer-ipc2-seed0.pt").exists()
    assert user.exists()


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_checkpoints_folders_leftovers_are_removed_by_the_next_writer(capsys, tmp_path, command):
    """train's and evaluate's --checkpoints DIR (locked from inside): a kill during a
    checkpoint's save left its temporary file at the top of DIR, and each such kill one more,
    never removed (the sweep looked beside DIR, and in a run directory's folders only)."""
    from infer_fast._io import TEMP, hidden_sibling
    from infer_fast.distill import distill_random

    distill_random(DATASET, 1, tmp_path / "set", seed=0)
    folder = tmp_path / "ck"
    folder.mkdir()
    leftovers = [hidden_sibling(folder / "seed0.pt", TEMP, "4242"), hidden_sibling(folder / "seed0.pt", TEMP, "4343")]
    for path in leftovers:
        with open(path, "wb") as f:
            f.write(b"partial")
    (folder / ".notes").write_text("the user's")
    assert stale_leftovers(folder, inside=True) == sorted(leftovers) and stale_leftovers(folder) == []
    if command == "evaluate":
        from conftest import train_tiny_teachers

        (teacher,) = train_tiny_teachers(tmp_path, seeds=(0,))
        extra = ["--teachers", teacher, "--soft-labels", "per-batch", "--full-data-epochs", "1", "--out",
                 tmp_path / "report.json"]
    else:
        extra = ["--labels", "hard"]
    status, _, err = _cli(capsys, command, tmp_path / "set", "--model", "convnet-w8-d2", "--epochs", "1", "--seeds", "1",
                          "--device", "cpu", "--quiet", "--checkpoints", folder, *extra)
    assert status == 0, err
    assert not any(os.path.exists(p) for p in leftovers) and (folder / ".notes").read_text() == "the user's"


def test_the_sweep_never_walks_into_another_output(tmp_path):
    """Hidden files named like a writer's leftovers inside an output that is not a run directory
    (a distilled set's folder, a folder a command then refuses) are the user's: kept."""
    out = tmp_path / "home"
    kept = [out / "sub" / ".bashrc.old-2024", out / ".data.tmp-x", out / "notes" / ".draft.old-v1"]
    for path in kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"the user's")
    assert stale_leftovers(out) == []
    with output_lock(out, "output directory"):
        pass
    assert all(p.exists() for p in kept)


def test_teacher_holds_its_checkpoint(capsys, tmp_path):
    out = tmp_path / "t.pt"
    with output_lock(out, "teacher checkpoint"):
        status, _, err = _cli(capsys, "teacher", "--dataset", DATASET, "--model", "convnet-w8-d1", "--epochs", "1",
                              "--out", out)
    assert status == 2 and f"teacher checkpoint {out} is being written by process {os.getpid()}" in err
    assert not out.exists()


@pytest.mark.parametrize("args", [("teacher", "--dataset", DATASET, "--out", "t.pt"),
                                  ("relabel", "set", "--teachers", "t.pt"),
                                  ("evaluate", "set", "--teachers", "t.pt", "--out", "report.json"),
                                  ("export", "set", "--to", "imagefolder", "out"),
                                  ("import", "folder", "--dataset", DATASET, "--out", "imported"),
                                  ("demo", "--out", "demo")])
def test_one_process_commands_refuse_torchrun(capsys, monkeypatch, tmp_path, args):
    """Under torchrun every rank would do the whole work and write the same output (the others
    then fail on it, or write it twice)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")  # (as torchrun sets it: refused before any process group)
    status, _, err = _cli(capsys, *args)
    assert status == 2 and f"infer-fast {args[0]} runs in one process, not under torchrun" in err
    assert os.listdir(tmp_path) == []


def test_a_rank_whose_peer_stopped_says_so_in_one_line(capsys, monkeypatch):
    """A collective that fails because another rank exited (its own line says why) is not an
    internal error to report: one line, status 2."""
    from infer_fast import cli

    lost = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                        "[127.0.0.1]:25292. This is typically caused by a remote worker crashing.")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert cli._failed("distill", lost, ()) == 2
    err = capsys.readouterr().err
    assert err.startswith("infer-fast distill (rank 0 of 2): error: another rank stopped, so this one cannot go on "
                          "(its own line says why): [/pytorch/") and err.count("\n") == 1
    monkeypatch.setenv("WORLD_SIZE", "1")  # (one process: no peer to lose, whatever the message says)
    assert cli._failed("distill", lost, ()) == 1
    assert "internal error" in capsys.readouterr().err


def test_a_replaced_set_left_by_a_kill_gives_back_the_users_files(tmp_path):
    """Killed between renaming a relabelled set in and moving the user's files back, the old set
    (``.<name>.old-*``) still holds them: the next writer's lock moves them into the set before
    it removes that leftover, never over a file of the same name."""
    out = tmp_path / "s"
    (out / "notes").mkdir(parents=True)
    (out / "manifest.json").write_text("{}")
    old = tmp_path / ".s.old-0123456789ab"
    (old / "exported").mkdir(parents=True)
    (old / "NOTES.txt").write_text("mine")
    (old / "notes").mkdir()
    (old / "manifest.json").write_text("{}")
    with output_lock(out, "distilled set"):
        pass
    assert (out / "NOTES.txt").read_text() == "mine" and (out / "exported").is_dir()
    assert old.is_dir() and sorted(os.listdir(old)) == ["manifest.json", "notes"]  # (a clash: kept, not lost)
    (old / "notes").rmdir()
    with output_lock(out, "distilled set"):
        pass
    assert not old.exists()


def test_a_lock_whose_new_folder_another_writer_makes_and_removes_meanwhile_is_taken(tmp_path, monkeypatch):
    """Writers locking outputs in one new folder at once (evaluations sharing a new decode-cache
    folder) make it and remove it, empty, as they let go: an open of the lock file, or the write
    check, finding the folder gone (or made by the other) tries again, where it was refused
    ("No such file or directory", or a folder called a file)."""
    import tempfile

    from infer_fast import output_lock as module

    output = tmp_path / "new" / "sub" / "split.u8"
    real_open, real_mkstemp = os.open, tempfile.mkstemp
    failures = {"open": 1, "mkstemp": 1}

    def open_once_gone(path, *args, **kwargs):
        if str(path).endswith(".split.u8.lock") and failures["open"]:
            failures["open"] -= 1
            raise FileNotFoundError(2, "No such file or directory")  # (the other writer removed the folder)
        return real_open(path, *args, **kwargs)

    def mkstemp_once_gone(*args, **kwargs):
        if failures["mkstemp"]:
            failures["mkstemp"] -= 1
            raise FileNotFoundError(2, "No such file or directory")
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(module.os, "open", open_once_gone)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_once_gone)
    with output_lock(output, "decode cache", wait=True):
        assert lock_path(output).exists()
    assert failures == {"open": 0, "mkstemp": 0} and not (tmp_path / "new").exists()
