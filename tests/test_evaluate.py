"""infer-fast evaluate: one protocol, the set and a random subset of its budget under soft and
hard labels with and without augmentation, the full-data accuracy, DD-Ranking's scores."""
import json
import math

import pytest

from infer_fast.cli import main
from infer_fast.data import load_dataset
from infer_fast.methods.random import random_set
from infer_fast.evaluate import RUNS, Protocol, evaluate_set, format_report
from infer_fast.scores import dd_ranking_scores
from infer_fast.storage import save_distilled
from infer_fast.teacher import load_teacher

FAST_STUDENT = {"model": "convnet-w8-d2", "epochs": 2, "batch_size": 50, "temperature": 4.0}


def test_report_holds_every_accuracy_and_the_scores_follow_from_them(teacher, labelled_set):
    path, model = teacher
    protocol = Protocol(student=FAST_STUDENT, seeds=2, weight=0.5)
    report = evaluate_set(labelled_set, [model], protocol, full_data_checkpoint=path, device="cpu", progress=False)
    assert report["full_data_hard"]["accuracy"] == load_teacher(path)[1]["test_accuracy"]
    assert report["full_data_hard"]["source"] == f"recorded in {path} (convnet-w8-d2, 1 epoch)"  # (one teacher epoch)
    assert len(report["per_seed"]) == 2
    for seed in report["per_seed"]:
        for which in ("set", "random"):
            for name, *_ in RUNS:
                assert 0.0 <= seed[f"{which}_{name}"] <= 1.0
        expected = dd_ranking_scores({
            "full_hard": report["full_data_hard"]["accuracy"], "set_hard": seed["set_hard_plain"],
            "set_soft": seed["set_soft"], "random_soft": seed["random_soft"],
            "set_soft_plain": seed["set_soft_plain"], "random_soft_plain": seed["random_soft_plain"]})
        for name in ("hlr", "ior", "lrs", "ars"):
            assert seed[name] == pytest.approx(expected[name])
    lrs = [s["lrs"] for s in report["per_seed"]]
    assert report["scores"]["lrs"]["mean"] == pytest.approx(sum(lrs) / 2)
    assert report["scores"]["lrs"]["std"] == pytest.approx(abs(lrs[0] - lrs[1]) / 2)
    assert report["protocol"]["student_config"]["device"] == "cpu"  # (where they trained, not the protocol's "auto")
    assert report["protocol"]["student_config"]["epochs"] == 2 and report["protocol"]["runs"]["hard_plain"] == \
        {"labels": "hard", "augmentation_and_mixing": False}
    json.dumps(report, allow_nan=False)  # plain JSON
    table = format_report(report)
    assert "LRS" in table and "random subset" in table and "hard_plain" in table


def test_full_data_accuracy_trained_when_no_checkpoint_is_given(teacher, labelled_set):
    report = evaluate_set(labelled_set, [teacher[1]], Protocol(student=FAST_STUDENT, seeds=1, full_data_epochs=1),
                          device="cpu", progress=False)
    assert "trained here" in report["full_data_hard"]["source"]
    assert 0.3 < report["full_data_hard"]["accuracy"] <= 1.0 and math.isfinite(report["scores"]["ars"]["mean"])


@pytest.mark.parametrize("fields, match", [
    (dict(recipe="mnist"), "recipe must be one of cifar, imagenet"),
    (dict(student={"labels": "hard"}), "labels is set by the evaluation"),
    (dict(student={"epochs": 0}), "epochs must be a positive integer"),
    (dict(student={"epochz": 3}), "unknown option.s. epochz; allowed: augment_on, augmentation, batch_size"),  # (not a TypeError)
    (dict(seeds=0), "seeds must be a positive integer"),
    (dict(weight=2), "weight must be in"),
])
def test_bad_protocols_are_refused_when_made(fields, match):
    with pytest.raises(ValueError, match=match):  # (so before any training: no such protocol can exist)
        Protocol(**fields)


def test_cli_writes_the_report(teacher, labelled_set, tmp_path, capsys):
    save_distilled(labelled_set, tmp_path / "set")
    argv = ["evaluate", str(tmp_path / "set"), "--teachers", teacher[0], "--full-data-checkpoint", teacher[0],
            "--seeds", "1", "--model", "convnet-w8-d2", "--epochs", "1", "--device", "cpu", "--quiet",
            "--out", str(tmp_path / "report.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["format"] == "infer-fast-evaluation" and "LRS" in out and str(tmp_path / "report.json") in out
    unlabelled = random_set(load_dataset("fashion-mnist-mini", "train"), 2)
    save_distilled(unlabelled, tmp_path / "bare")
    assert main(["evaluate", str(tmp_path / "bare"), "--teachers", teacher[0], "--device", "cpu"]) == 2
    assert "relabel it first" in capsys.readouterr().err


def test_a_set_without_soft_labels_names_the_flag_and_its_methods_labels():
    """Evaluating an unlabelled set under static labels names the flag that evaluates it as is,
    and says when its method's students take per-batch labels (RDED's)."""
    from types import SimpleNamespace

    from infer_fast.evaluate import check_evaluable

    for method, said in (("rded", r"\(--soft-labels per-batch\) \(RDED's students take them\)$"),
                         ("sre2l", r"\(--soft-labels per-batch\)$"), ("imported", r"\(--soft-labels per-batch\)$")):
        with pytest.raises(ValueError, match=said):
            check_evaluable(SimpleNamespace(method=method, has_soft_labels=False), [], "cpu", static_labels=True)


def test_a_protocol_keeps_its_own_copy_of_the_student_fields():
    """A protocol is checked when made and cannot change after: the caller's dict, changed
    later, changes neither ours nor DD-Ranking's."""
    from infer_fast.dd_ranking import DDRankingProtocol
    from infer_fast.evaluate import Protocol

    for make in (Protocol, DDRankingProtocol):
        fields = {"epochs": 40}
        protocol = make(student=fields)
        fields["epochs"] = -1
        assert protocol.student == {"epochs": 40}


def test_an_evaluation_stopped_from_python_says_it_continues_by_being_called_again(teacher, labelled_set, tmp_path,
                                                                                    monkeypatch):
    """A stop in one of its students names the evaluation's checkpoints folder and call, not the
    student's own (whose resume=True evaluate_set does not take); without a folder, nothing."""
    import signal

    import infer_fast.student
    from infer_fast import interrupts

    def stopped(*args, **kwargs):
        exc = interrupts.Interrupted(signal.SIGINT)
        exc.how_to_continue = "progress is saved in s.pt: run it again with resume=True to continue"
        raise exc

    monkeypatch.setattr(infer_fast.student, "train_student", stopped)
    path, model = teacher
    protocol = Protocol(student=FAST_STUDENT, seeds=1)
    with pytest.raises(interrupts.Interrupted) as info:
        evaluate_set(labelled_set, [model], protocol, full_data_checkpoint=path, device="cpu", progress=False,
                     checkpoints=str(tmp_path / "ck"))
    assert str(info.value) == (f"SIGINT: progress is saved in {tmp_path / 'ck'}: call evaluate_set again with the "
                               "same checkpoints to continue")
    with pytest.raises(interrupts.Interrupted) as info:
        evaluate_set(labelled_set, [model], protocol, full_data_checkpoint=path, device="cpu", progress=False)
    assert str(info.value) == "SIGINT"
