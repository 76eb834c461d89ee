"""Processes sharing work wait for each other instead of both doing it: a run whose teachers/
folder is shared with another run waits for the teacher the other is writing, then reuses it
(or refuses it when its settings differ); evaluations sharing a decode cache wait for the one
decoding the split and map its file; the cache's record is never seen half-written."""
import concurrent.futures
import filecmp
import glob
import io
import json
import os
import shutil
import sys
import threading

import pytest
import torch

from infer_fast import teacher as teacher_module
from infer_fast.data import DECODE_LOG_ENV, FolderImageSet, decoded_cache, load_dataset, write_image_folder
from infer_fast.output_lock import output_lock
from infer_fast.pipeline import TEACHERS_DIR, PipelineConfig, prepare_teachers

torch.set_num_threads(1)

TEACHER = {"model": "convnet-w8-d2", "epochs": 1, "batch_size": 256, "lr": 0.05, "seed": 0}
WAIT_S = 30  # (a bound for a broken build only: each side goes on as soon as the other has done its part)


class WatchedStream(io.StringIO):
    """A stderr that says (``waiting``) when a process has printed that it waits for a lock."""

    def __init__(self):
        super().__init__()
        self.waiting = threading.Event()

    def write(self, text):
        written = super().write(text)
        if "waiting for process" in self.getvalue():
            self.waiting.set()
        return written


def hold_while_waited_for(output, what, write, stderr):
    """Run in a thread: hold ``output``'s lock as another process writing it would; once the
    waiter has said it waits, ``write`` the output, then let go. Returns whether it was waited for."""
    held = threading.Event()

    def holder():
        with output_lock(output, what):
            held.set()
            waited_for = stderr.waiting.wait(WAIT_S)
            write()
        return waited_for

    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(holder)
    assert held.wait(WAIT_S)
    pool.shutdown(wait=False)
    return future


def run_config(out, **teacher):
    return PipelineConfig.from_dict(dict(
        dataset="fashion-mnist-mini", teachers=[{**TEACHER, **teacher}], out=str(out), ipc=[2], methods=["random"],
        student={"model": "convnet-w8-d2", "epochs": 1, "device": "cpu"}, seeds=1, device="cpu"))


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory):
    """A finished teacher of TEACHER's settings: what the other run writes into the shared folder."""
    return prepare_teachers(run_config(tmp_path_factory.mktemp("first")), progress=False)[0]


def second_run_sharing_teachers(tmp_path, monkeypatch, trained_teacher, **teacher):
    """A run whose teachers/ is a link to a shared folder in which another process is writing
    the teacher it needs (the trained one, written once it waits); returns its config, the
    holder's future, the shared teacher's path, the trainings it did and its stderr."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / TEACHERS_DIR).symlink_to(shared)
    cfg = run_config(tmp_path / "run", **teacher)
    path = shared / os.path.basename(trained_teacher)
    trainings = []
    real_train_epochs = teacher_module._train_epochs
    monkeypatch.setattr(teacher_module, "_train_epochs", lambda *a, **k: trainings.append(1) or real_train_epochs(*a, **k))
    stderr = WatchedStream()
    monkeypatch.setattr(sys, "stderr", stderr)
    holder = hold_while_waited_for(path, "teacher checkpoint", lambda: shutil.copy(trained_teacher, path), stderr)
    return cfg, holder, path, trainings, stderr


def test_a_run_waits_for_a_shared_teacher_being_trained_then_reuses_it(tmp_path, monkeypatch, capsys, trained_teacher):
    cfg, holder, path, trainings, stderr = second_run_sharing_teachers(tmp_path, monkeypatch, trained_teacher)
    paths = prepare_teachers(cfg, progress=False)
    assert holder.result() is True  # it waited for the holder...
    # (the run names its teacher by its own path, through the link)
    assert f"waiting for process {os.getpid()} to finish writing teacher checkpoint {paths[0]}" in stderr.getvalue()
    assert trainings == []  # ...then found the teacher trained: not trained again
    assert "already trained" in capsys.readouterr().out
    assert os.path.realpath(paths[0]) == os.path.realpath(path) and filecmp.cmp(path, trained_teacher, shallow=False)


def test_a_run_of_other_teacher_settings_is_refused_once_the_shared_teacher_is_written(
        tmp_path, monkeypatch, trained_teacher):
    cfg, holder, path, trainings, _ = second_run_sharing_teachers(tmp_path, monkeypatch, trained_teacher, lr=0.2)
    with pytest.raises(ValueError, match=r"lr differs"):
        prepare_teachers(cfg, progress=False)
    assert holder.result() is True and trainings == []
    assert filecmp.cmp(path, trained_teacher, shallow=False)  # the other run's teacher kept, not overwritten


@pytest.fixture(scope="module")
def folder_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=gen)
    write_image_folder(str(root / "train"), images, torch.arange(3).repeat_interleave(2), class_names=["a", "b", "c"])
    split = load_dataset({"name": "imagefolder", "image_size": 16, "in_memory": False}, data_root=str(root))
    assert isinstance(split, FolderImageSet)
    return split


def test_an_evaluation_waits_for_the_one_decoding_a_shared_cache_then_maps_its_file(
        tmp_path, monkeypatch, folder_split):
    made = decoded_cache(folder_split, str(tmp_path / "made"))  # what the other evaluation decodes
    made_files = glob.glob(str(tmp_path / "made" / "*.u8*"))
    shared = tmp_path / "shared"
    cache_path = shared / os.path.basename(next(f for f in made_files if f.endswith(".u8")))
    stderr = WatchedStream()
    monkeypatch.setattr(sys, "stderr", stderr)
    log = tmp_path / "decodes.log"
    monkeypatch.setenv(DECODE_LOG_ENV, str(log))
    holder = hold_while_waited_for(cache_path, "decode cache",
                                   lambda: [shutil.copy(f, shared) for f in made_files], stderr)
    cached = decoded_cache(folder_split, str(shared))
    assert holder.result() is True
    assert f"waiting for process {os.getpid()} to finish writing decode cache {cache_path}" in stderr.getvalue()
    assert not log.exists()  # nothing decoded: the holder's file mapped
    assert torch.equal(cached.images, made.images)


def test_the_cache_record_is_written_atomically(tmp_path, monkeypatch, folder_split):
    """A decode stopped while writing its record leaves no half record for a reader to find
    (it would take the cache for unfinished and decode the split again)."""
    real_dump = json.dump

    def stopped_halfway(obj, f, **options):
        f.write('{"shape": ')
        raise RuntimeError("stopped while writing the record")

    monkeypatch.setattr(json, "dump", stopped_halfway)
    with pytest.raises(RuntimeError, match="stopped"):
        decoded_cache(folder_split, str(tmp_path / "cache"))
    names = os.listdir(tmp_path / "cache")
    assert len(names) == 1 and names[0].endswith(".u8")  # the pixels only: no record, no temporary, no lock
    monkeypatch.setattr(json, "dump", real_dump)
    decoded_cache(folder_split, str(tmp_path / "cache"))
    record = json.loads((tmp_path / "cache" / (names[0] + ".json")).read_text())
    assert record["shape"] == [6, 3, 16, 16]


def test_a_cache_on_a_file_system_without_flock_is_still_decoded(tmp_path, monkeypatch, folder_split):
    """Nobody can hold the cache's lock there: each process decodes its own copy, as before the
    lock (not refused: the cache is an optimisation)."""
    import errno
    import fcntl

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    cached = decoded_cache(folder_split, str(tmp_path / "cache"))
    assert torch.equal(cached.images, folder_split.to_memory().images)
    names = sorted(os.listdir(tmp_path / "cache"))  # the pixels and their record: no lock file left
    assert len(names) == 2 and names[0].endswith(".u8") and names[1] == names[0] + ".json"
