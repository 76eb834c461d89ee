"""What a run records: a student's history gives each epoch the rate it trained at (not the
next epoch's), an import of our export names the method that made the set, and a relabelled
set keeps the time it was created."""
import json

import pytest
import torch
from conftest import kill_after_save

import infer_fast.student
from infer_fast.cli import main
from infer_fast.data import load_dataset
from infer_fast.methods.random import random_set
from infer_fast.relabel import relabel_directory
from infer_fast.storage import DistilledSetError, export_imagefolder, import_imagefolder, load_distilled, save_distilled
from infer_fast.student import StudentConfig, half_cosine_factor, train_student

TINY = dict(model="convnet-w8-d2", batch_size=16, lr=0.002, device="cpu", eval_batch_size=500)


@pytest.mark.parametrize("schedule", ["half-cosine", "cosine"])
def test_each_epochs_history_records_the_rate_its_first_step_used(labelled_set, schedule, monkeypatch):
    """20 images in batches of 16: 2 steps an epoch. The rate is read off the optimizer at each
    step (before the bug: the rate after the epoch's last step, the next epoch's)."""
    used = []
    real_step = infer_fast.student.StudentRun.step

    def recording_step(run, *args):
        used.append(run.optimizer.param_groups[0]["lr"])
        return real_step(run, *args)

    monkeypatch.setattr(infer_fast.student.StudentRun, "step", recording_step)
    cfg = StudentConfig(**TINY, epochs=3, schedule=schedule)
    history = train_student(labelled_set, load_dataset("fashion-mnist-mini", "test"), cfg, progress=False)["history"]
    assert len(used) == 6 and [record["lr"] for record in history] == used[::2]
    assert history[0]["lr"] == 0.002
    if schedule == "half-cosine":  # (constant within an epoch)
        assert used[1::2] == used[::2] and history[2]["lr"] == pytest.approx(0.002 * half_cosine_factor(2, 3))


def test_a_checkpoint_of_before_resumes_with_each_epochs_own_rate(labelled_set, tmp_path, monkeypatch):
    """A checkpoint written without a format_version recorded the next epoch's rate: read back,
    its history gives each epoch its own, so the resumed run's history is the uninterrupted one's."""
    test = load_dataset("fashion-mnist-mini", "test")
    cfg = StudentConfig(**TINY, epochs=3, schedule="half-cosine")
    whole = train_student(labelled_set, test, cfg, progress=False)
    path = tmp_path / "student.pt"
    restore = kill_after_save(monkeypatch, infer_fast.student, lambda saved: saved["epochs_done"] == 1)
    with pytest.raises(KeyboardInterrupt):
        train_student(labelled_set, test, cfg, progress=False, checkpoint=str(path))
    restore()
    state = torch.load(path, weights_only=True)
    assert state["format_version"] == 2 and state["history"][0]["lr"] == 0.002
    del state["format_version"]  # as written before: epoch 1 recorded epoch 2's rate
    state["history"][0]["lr"] = 0.002 * half_cosine_factor(1, 3)
    torch.save(state, path)
    resumed = train_student(labelled_set, test, cfg, progress=False, checkpoint=str(path), resume=True)
    assert resumed["history"] == whole["history"]


@pytest.fixture(scope="module")
def exported_random_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "ex"
    export_imagefolder(random_set(load_dataset("fashion-mnist-mini", "train"), 1, seed=0), folder)
    return folder


def test_import_of_our_export_records_the_method_its_listing_names(exported_random_set, tmp_path):
    assert json.loads((exported_random_set / "export.json").read_text())["method"] == "random"
    assert main(["import", str(exported_random_set), "--dataset", "fashion-mnist-mini",
                 "--out", str(tmp_path / "im")]) == 0
    assert load_distilled(tmp_path / "im").hyperparameters["source_method"] == "random"
    # a name given wins; an imported set's export names the method its import recorded
    given = import_imagefolder(exported_random_set, "fashion-mnist-mini", name="RDED")
    assert given.hyperparameters["source_method"] == "RDED"
    export_imagefolder(tmp_path / "im", tmp_path / "again")
    again = import_imagefolder(tmp_path / "again", "fashion-mnist-mini")
    assert again.hyperparameters["source_method"] == "random"
    listing = tmp_path / "again" / "export.json"
    listing.write_text(json.dumps({**json.loads(listing.read_text()), "method": 3}))  # (a hand edit)
    with pytest.raises(DistilledSetError, match=r"export\.json: method must be a method's name, got 3"):
        import_imagefolder(tmp_path / "again", "fashion-mnist-mini")


def test_relabel_keeps_the_sets_creation_time_and_stamps_the_rewrite(teacher, tmp_path):
    directory = tmp_path / "set"
    save_distilled(random_set(load_dataset("fashion-mnist-mini", "train"), 1, seed=0), directory)
    manifest_path = directory / "manifest.json"
    fresh = json.loads(manifest_path.read_text())
    assert "modified" not in fresh  # (a set as first written: its creation is its last write)
    old = "2020-01-02T03:04:05+00:00"  # (a set made long ago: a relabel now must not move it)
    manifest_path.write_text(json.dumps({**fresh, "created": old}))
    relabel_directory(directory, [teacher[0]])
    rewritten = json.loads(manifest_path.read_text())
    assert rewritten["created"] == old and rewritten["modified"] > old
    assert load_distilled(directory).created == old
    from infer_fast.storage.report import inspect_report  # (inspect: both dates, this version the writer)

    assert f"created {old}, rewritten {rewritten['modified']})" in inspect_report(directory)
