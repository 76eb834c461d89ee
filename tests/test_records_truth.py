"""What records say is what happened: a full-data accuracy read from a checkpoint records the
checkpoint (not the protocol's epochs of a run never trained), a pretrained teacher records
no training settings (older checkpoints read so too), the teacher's progress bar shows the
rate a step took, and an imported set's export names the method it was imported from."""
import dataclasses
import json
import math

import pytest
import torch

import infer_fast.evaluate as evaluate_mod
import infer_fast.student
import infer_fast.teacher as teacher_mod
from infer_fast.cli import main
from infer_fast.data import load_dataset
from infer_fast.evaluate import Protocol, evaluate_set
from infer_fast.methods.random import random_set
from infer_fast.models import create_model
from infer_fast.storage import DistilledSetError, export_imagefolder, import_imagefolder, save_distilled
from infer_fast.teacher import TeacherConfig, load_teacher, pretrained_teacher, train_teacher

TINY = {"model": "convnet-w8-d2", "epochs": 1, "batch_size": 50}
DATASET = "fashion-mnist-mini"


def fake_student(source, test, config, **kwargs):
    """A stand-in for train_student: what the report records is tested, not the accuracy."""
    return {"final_accuracy": 0.5, "history": [{"epoch": config.epochs, "test_accuracy": 0.5}]}


# ---- 1. the full-data accuracy's record -----------------------------------------------------------

def test_a_full_data_accuracy_read_from_a_checkpoint_records_it_not_the_protocols_epochs(teacher, labelled_set,
                                                                                        monkeypatch):
    path, model = teacher
    monkeypatch.setattr(infer_fast.student, "train_student", fake_student)
    report = evaluate_set(labelled_set, [model], Protocol(student=TINY, seeds=1), full_data_checkpoint=path,
                          device="cpu", progress=False)
    assert "full_data_epochs" not in report["protocol"]  # (no full-data run of 30 epochs was trained)
    full = report["full_data_hard"]
    assert full["checkpoint"] == path and full["epochs"] == 1  # (the tiny teacher's one epoch)
    assert full["source"] == f"recorded in {path} (convnet-w8-d2, 1 epoch)"
    assert full["accuracy"] == load_teacher(path)[1]["test_accuracy"]

    # trained here: the protocol's epochs, as the run had them
    monkeypatch.setattr(evaluate_mod, "train_full_data", lambda *a, **k: 0.75)
    trained = evaluate_set(labelled_set, [model], Protocol(student=TINY, seeds=1, full_data_epochs=3),
                           device="cpu", progress=False)
    assert trained["protocol"]["full_data_epochs"] == 3 and trained["full_data_hard"]["epochs"] == 3
    assert "checkpoint" not in trained["full_data_hard"] and "trained here" in trained["full_data_hard"]["source"]


def test_evaluate_cli_report_names_the_checkpoint_behind_the_full_data_accuracy(teacher, labelled_set, tmp_path,
                                                                               monkeypatch, capsys):
    path, _ = teacher
    save_distilled(labelled_set, tmp_path / "set")
    monkeypatch.setattr(infer_fast.student, "train_student", fake_student)
    assert main(["evaluate", str(tmp_path / "set"), "--teachers", path, "--full-data-checkpoint", path, "--seeds", "1",
                 "--model", "convnet-w8-d2", "--epochs", "1", "--device", "cpu", "--quiet",
                 "--out", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert "full_data_epochs" not in report["protocol"]
    assert report["full_data_hard"]["checkpoint"] == path and report["full_data_hard"]["epochs"] == 1
    assert f"recorded in {path} (convnet-w8-d2, 1 epoch)" in capsys.readouterr().out


def test_score_reports_of_before_and_now_stand_under_the_same_protocol(teacher, labelled_set, monkeypatch):
    """A run keeps a set's scores made under the same protocol settings: a report that reads its
    full-data accuracy from a checkpoint (no full_data_epochs) and one of before (which recorded
    the protocol's 30 anyway) both stand."""
    from infer_fast.pipeline import _protocol_changes

    path, model = teacher
    monkeypatch.setattr(infer_fast.student, "train_student", fake_student)
    protocol = Protocol(student=TINY, seeds=1)
    report = evaluate_set(labelled_set, [model], protocol, full_data_checkpoint=path, device="cpu", progress=False)
    older = {**report, "protocol": {**report["protocol"], "full_data_epochs": 30}}
    older["full_data_hard"] = {k: v for k, v in report["full_data_hard"].items() if k in ("accuracy", "source")}
    assert _protocol_changes(report, protocol, DATASET) == []
    assert _protocol_changes(older, protocol, DATASET) == []
    assert _protocol_changes(report, dataclasses.replace(protocol, seeds=2), DATASET) == ["seeds"]
    # (another full_data_epochs changes nothing the report read from a checkpoint: it is not rescored)
    assert _protocol_changes(report, dataclasses.replace(protocol, full_data_epochs=5), DATASET) == []
    assert _protocol_changes(older, dataclasses.replace(protocol, full_data_epochs=5), DATASET) == ["full_data_epochs"]


# ---- 2. a pretrained teacher's record -------------------------------------------------------------

@pytest.fixture
def weights(tmp_path):
    """A built-in model's state_dict saved with torch.save: what --weights takes."""
    path = tmp_path / "weights.pth"
    torch.save(create_model("convnet-w8-d2", num_classes=10, in_channels=1, image_size=28).state_dict(), path)
    return path


def test_a_pretrained_teacher_records_no_training_settings(weights, tmp_path, capsys):
    out = tmp_path / "t.pt"
    assert main(["teacher", "--pretrained", "convnet-w8-d2", "--weights", str(weights), "--dataset", DATASET,
                 "--out", str(out)]) == 0
    saved = torch.load(out, weights_only=True)
    assert saved["epochs_done"] == 0 and saved["history"] == []
    assert saved["config"] == {"dataset": DATASET, "model": "convnet-w8-d2", "pretrained": str(weights)}
    _, meta = load_teacher(out, dataset=DATASET)
    assert "epochs" not in meta["config"] and "lr" not in meta["config"]
    assert f"pretrained weights from {weights}" in capsys.readouterr().out


def test_an_older_pretrained_checkpoint_reads_without_its_placeholder_settings(weights, tmp_path, capsys):
    """A checkpoint of before recorded a TeacherConfig's placeholders (epochs 1, lr 0.1): it still
    loads, read without them; kept as the pretrained teacher it is; not continued as a training."""
    out = str(tmp_path / "old.pt")
    pretrained_teacher("convnet-w8-d2", DATASET, out, pretrained=str(weights))
    saved = torch.load(out, weights_only=True)
    placeholders = dataclasses.asdict(TeacherConfig(dataset=DATASET, model="convnet-w8-d2", epochs=1))
    torch.save({**saved, "config": {**placeholders, "pretrained": str(weights)}}, out)
    _, meta = load_teacher(out, dataset=DATASET)
    assert meta["config"] == {"dataset": DATASET, "model": "convnet-w8-d2", "pretrained": str(weights)}
    kept = pretrained_teacher("convnet-w8-d2", DATASET, out, pretrained=str(weights))
    assert "epochs" not in kept["config"] and "already holds" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"already holds pretrained weights \(convnet-w8-d2\), not a training"):
        train_teacher(TeacherConfig(dataset=DATASET, model="convnet-w8-d2", epochs=1, device="cpu"), out,
                      progress=False)


def test_a_measured_pretrained_teacher_as_the_full_data_run_records_no_epochs(weights, tmp_path):
    out = str(tmp_path / "measured.pt")
    meta = pretrained_teacher("convnet-w8-d2", DATASET, out, pretrained=str(weights), evaluate_on_test=True)
    assert meta["test_accuracy"] is not None
    record = evaluate_mod.checkpoint_full_data(out, load_teacher(out)[1])
    assert record == {"source": f"recorded in {out} (convnet-w8-d2, pretrained weights)", "checkpoint": out,
                      "epochs": None, "trained_here": False}


# ---- 3. the teacher's progress bar ------------------------------------------------------------------

def test_teacher_progress_bar_shows_the_rate_each_step_took(tmp_path, monkeypatch):
    real_bar, shown = teacher_mod.progress_bar, []

    def recording_bar(*args, **kwargs):
        bar = real_bar(*args, **kwargs)
        set_postfix = bar.set_postfix

        def record(*a, **k):
            shown.append(k["lr"])
            return set_postfix(*a, **k)
        bar.set_postfix = record
        return bar

    monkeypatch.setattr(teacher_mod, "progress_bar", recording_bar)
    monkeypatch.setattr(teacher_mod, "evaluate", lambda *a, **k: 0.5)  # (the test pass: not what is shown)
    cfg = TeacherConfig(dataset=DATASET, model="convnet-w8-d1", epochs=1, batch_size=256, lr=0.05, device="cpu")
    train_teacher(cfg, str(tmp_path / "t.pt"), progress=True)
    steps = teacher_mod.training_steps(len(load_dataset(DATASET, "train")), cfg.batch_size)
    # (cosine over the steps: step s takes lr (1 + cos(pi s / T)) / 2; shown at the first and the last)
    took = [cfg.lr * (1 + math.cos(math.pi * s / steps)) / 2 for s in (0, steps - 1)]
    assert shown == [f"{lr:.4f}" for lr in took]  # (not the next step's: 0.0000 after the last)


# ---- 4. an imported set's export, a hand-edited listing ------------------------------------------

@pytest.fixture
def exported(tmp_path):
    folder = tmp_path / "export"
    export_imagefolder(random_set(load_dataset(DATASET, "train"), 1, seed=0), folder)
    return folder


def test_an_imported_sets_export_names_the_method_it_came_from(exported, tmp_path):
    imported = import_imagefolder(exported, DATASET)
    assert imported.method == "external" and imported.hyperparameters["source_method"] == "random"
    export_imagefolder(imported, tmp_path / "again")
    assert json.loads((tmp_path / "again" / "export.json").read_text())["method"] == "random"
    assert import_imagefolder(tmp_path / "again", DATASET).hyperparameters["source_method"] == "random"
    named = import_imagefolder(exported, DATASET, name="RDED")  # (a name given wins, and is exported)
    export_imagefolder(named, tmp_path / "named")
    assert json.loads((tmp_path / "named" / "export.json").read_text())["method"] == "RDED"
    unknown = dataclasses.replace(imported, hyperparameters={**imported.hyperparameters, "source_method": "unknown"})
    export_imagefolder(unknown, tmp_path / "unknown")  # (not known: said as an imported set's, read back unknown)
    assert json.loads((tmp_path / "unknown" / "export.json").read_text())["method"] == "external"
    assert import_imagefolder(tmp_path / "unknown", DATASET).hyperparameters["source_method"] == "unknown"


def test_a_hand_edited_listing_method_is_refused_with_the_way_around(exported, tmp_path, capsys):
    listing = exported / "export.json"
    listing.write_text(json.dumps({**json.loads(listing.read_text()), "method": "my-own-method"}))
    assert import_imagefolder(exported, DATASET).hyperparameters["source_method"] == "my-own-method"  # (any name)
    listing.write_text(json.dumps({**json.loads(listing.read_text()), "method": ["not", "a", "name"]}))
    with pytest.raises(DistilledSetError, match=r"method must be a method's name, got \['not'.*import --name METHOD"):
        import_imagefolder(exported, DATASET)
    argv = ["import", str(exported), "--dataset", DATASET]
    assert main(argv + ["--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "import --name METHOD" in err and len(err.strip().splitlines()) == 1
    assert main(argv + ["--out", str(tmp_path / "named"), "--name", "mine"]) == 0
    with pytest.raises(DistilledSetError, match="name must be the name of the method that made the set"):
        import_imagefolder(exported, DATASET, name=" ")
