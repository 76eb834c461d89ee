"""Fixes to evaluate, DD-Ranking's protocol, relabel, save and import: the set's labelling
teachers checked, students reused across the sets of a run, random subsets drawn apart from
Random sets, progress lines that say what trains, a non-finite teacher named, a relabelled
set's save said as such, an export's soft labels imported back."""
import copy
import dataclasses
import zlib

import pytest
import torch
from conftest import train_tiny_teachers

import infer_fast.student
import infer_fast.teacher
from infer_fast.data import load_dataset
from infer_fast.dd_ranking import DDRankingProtocol, evaluate_set_dd_ranking
from infer_fast.evaluate import (RUNS, NO_LABELLING_RECORD, Protocol, evaluate_set, format_report, random_subset,
                                 train_full_data)
from infer_fast.methods.random import random_set
from infer_fast.relabel import relabel, relabel_directory
from infer_fast.storage import (DistilledSetError, export_imagefolder, import_imagefolder, load_distilled,
                                save_distilled)
from infer_fast.teacher import load_teacher

TINY = {"model": "convnet-w8-d2", "epochs": 1, "batch_size": 50}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    paths = train_tiny_teachers(tmp_path_factory.mktemp("teachers"), seeds=(0, 1))
    return paths, [load_teacher(p)[0] for p in paths]


@pytest.fixture(scope="module")
def train():
    return load_dataset("fashion-mnist-mini", "train")


def untrained(*args, **kwargs):
    raise AssertionError("no student may train")


def fake_student(source, test, config, **kwargs):
    """A stand-in for train_student where the flow, not the accuracy, is tested."""
    return {"final_accuracy": 0.5, "history": [{"epoch": config.epochs, "test_accuracy": 0.5}]}


def test_a_set_labelled_by_other_teachers_is_refused_and_one_recording_none_is_noted(teachers, train, tmp_path,
                                                                                     monkeypatch):
    """Static labels: the random subsets are labelled by the teachers given, so they must be
    the set's; a set relabelled by others is refused before any training (both protocols),
    naming its teachers; a set that records none is evaluated, the report saying so."""
    (path0, path1), (t0, t1) = teachers
    save_distilled(random_set(train, 2, seed=100), tmp_path / "set")
    labelled = relabel_directory(tmp_path / "set", [path0])
    assert load_distilled(tmp_path / "set").hyperparameters["relabel"]["teachers_sha256"] == \
        labelled.hyperparameters["relabel"]["teachers_sha256"]
    monkeypatch.setattr(infer_fast.student, "train_student", untrained)
    with pytest.raises(ValueError, match=rf"relabelled with 1 teacher \({path0}\); evaluate with those teachers"):
        evaluate_set(labelled, [t1], Protocol(student=TINY, seeds=1), full_data_checkpoint=path0, device="cpu",
                     progress=False)
    with pytest.raises(ValueError, match="relabelled with 1 teacher"):
        evaluate_set_dd_ranking(labelled, [t1], DDRankingProtocol(student=TINY, rounds=1, test_interval=1,
                                                                  soft_labels="static"),
                                full_data_checkpoint=path0, device="cpu", progress=False)

    monkeypatch.setattr(infer_fast.student, "train_student", fake_student)
    report = evaluate_set(labelled, [t0], Protocol(student=TINY, seeds=1), full_data_checkpoint=path0,
                          device="cpu", progress=False)
    assert report["set"]["labelling_teachers"]["teachers"] == [path0]
    assert report["set"]["labelling_teachers"]["checked"] is True
    assert "those that labelled the set" in report["protocol"]["random_subset"]
    older = dataclasses.replace(labelled, hyperparameters={"selection": "random"})  # (relabelled before the record)
    for made in (evaluate_set(older, [t1], Protocol(student=TINY, seeds=1), full_data_checkpoint=path0, device="cpu",
                              progress=False),
                 evaluate_set_dd_ranking(older, [t1], DDRankingProtocol(student=TINY, rounds=1, lr_grid=(0.01,),
                                                                        test_interval=1, soft_labels="static"),
                                         full_data_checkpoint=path0, device="cpu", progress=False)):
        assert made["set"]["labelling_teachers"] == {"teachers": None, "checked": False, "note": NO_LABELLING_RECORD}
        assert "could not be checked" in made["protocol"]["random_subset"]
        assert "note: labelling teachers not checked" in format_report(made)


def content_student(trained):
    """A stand-in for train_student (each config appended to ``trained``) whose accuracies
    follow from what the student reads: its images, the stored soft labels if its config takes
    them, its config; a result reused for another student would differ."""
    def train(source, test, config, **kwargs):
        trained.append(config)
        reads = [source.images.double().sum().item(), config.labels, config.dynamic, config.augmentation, config.mix,
                 config.seed, config.lr]
        if config.labels == "soft" and not config.dynamic:
            reads.append(source.soft_labels.double().sum().item())
        accuracy = zlib.crc32(repr(reads).encode()) / 2 ** 32
        return {"final_accuracy": accuracy, "history": [{"epoch": config.epochs, "test_accuracy": accuracy}]}
    return train


def test_students_are_trained_once_across_the_sets_of_a_run(teachers, train, monkeypatch):
    """With one memo, a second set trains only its own students (the random subsets' are the
    first set's), and a set of the same images without soft labels (INFER+Dyn's of INFER's)
    reuses its hard-label students too; the reports equal those made without a memo."""
    (path0, _), (t0, _) = teachers
    first = relabel(random_set(train, 2, seed=100), [t0])
    second = relabel(random_set(train, 2, seed=200), [t0])
    same_images = dataclasses.replace(first, soft_labels=None, hyperparameters={})
    protocol = Protocol(student=TINY, seeds=2)
    trained = []
    monkeypatch.setattr(infer_fast.student, "train_student", content_student(trained))
    kw = dict(full_data_checkpoint=path0, device="cpu", progress=False)
    alone = [evaluate_set(first, [t0], protocol, **kw), evaluate_set(second, [t0], protocol, **kw)]
    assert len(trained) == 2 * 2 * 2 * len(RUNS)  # (2 sets, 2 seeds, the set and its random subset)
    trained.clear()
    memo = {}
    shared = [evaluate_set(first, [t0], protocol, reuse=memo, **kw), evaluate_set(second, [t0], protocol, reuse=memo, **kw)]
    assert len(trained) == 2 * (2 * len(RUNS) + len(RUNS))  # (the second set's random subsets: the first's students)
    assert shared == alone
    trained.clear()
    dyn = evaluate_set(same_images, [t0], dataclasses.replace(protocol, soft_labels="per-batch"), reuse=memo, **kw)
    assert len(trained) == 2 * 4 and all(c.dynamic for c in trained)  # (hard-label runs reused: the same images)
    for seed in range(2):
        for name in ("hard", "hard_plain"):
            for which in ("set", "random"):
                assert dyn["per_seed"][seed][f"{which}_{name}"] == alone[0]["per_seed"][seed][f"{which}_{name}"]


def test_dd_ranking_students_are_trained_once_across_the_sets_of_a_run(teachers, train, monkeypatch):
    (path0, _), (t0, _) = teachers
    first, second = (relabel(random_set(train, 2, seed=s), [t0]) for s in (100, 200))
    protocol = DDRankingProtocol(student=TINY, rounds=1, lr_grid=(0.01, 0.05), test_interval=1, soft_labels="static")
    trained = []
    monkeypatch.setattr(infer_fast.student, "train_student", content_student(trained))
    kw = dict(full_data_checkpoint=path0, device="cpu", progress=False)
    alone = [evaluate_set_dd_ranking(ds, [t0], protocol, **kw) for ds in (first, second)]
    trained.clear()
    memo = {}
    shared = [evaluate_set_dd_ranking(ds, [t0], protocol, reuse=memo, **kw) for ds in (first, second)]
    assert len(trained) == protocol.student_count() + 4 * 2  # (the second set: its own 4 runs on the grid of 2)
    assert shared == alone


def test_the_full_data_run_is_trained_once_with_a_memo(monkeypatch, capsys):
    """The full-data run says what it trains before its epoch lines, and a memo keeps it."""
    runs = []

    def fake_teacher(config, path, progress):
        runs.append(config.seed)
        return {"test_accuracy": 0.7}

    monkeypatch.setattr(infer_fast.teacher, "train_teacher", fake_teacher)
    memo = {}
    for _ in range(2):
        assert train_full_data("convnet-w8-d2", "fashion-mnist-mini", None, "cpu", 1, True, reuse=memo) == 0.7
    assert runs == [0]
    assert ("full-data run (hard labels, for HLR): convnet-w8-d2 on the whole fashion-mnist-mini training split, "
            "1 epoch of the teacher recipe") in capsys.readouterr().err


def test_a_random_set_is_not_compared_with_itself(train):
    """`distill --method random --seed S` and the evaluation's random subset of seed S are
    different images: the subsets are drawn from a stream of their own."""
    for seed in (0, 1):
        made = random_set(train, 2, seed)
        subset = random_subset(train, 2, seed, [], "cpu", static_labels=False)
        assert subset.images.shape == made.images.shape and not torch.equal(subset.images, made.images)
        assert torch.equal(subset.images, random_subset(train, 2, seed, [], "cpu", static_labels=False).images)


def test_progress_lines_say_what_trains(teachers, train, monkeypatch, capsys):
    (path0, _), (t0, _) = teachers
    monkeypatch.setattr(infer_fast.student, "train_student", fake_student)
    evaluate_set(relabel(random_set(train, 2, seed=100), [t0]), [t0], Protocol(student=TINY, seeds=1),
                 full_data_checkpoint=path0, device="cpu", progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert "seed 1/1, the set: static soft labels, crop_flip + mixup" in lines
    assert "seed 1/1, the random subset: hard labels, no augmentation or mixing" in lines
    assert not any("none + none" in line for line in lines)


def test_relabel_names_the_teacher_whose_logits_are_not_finite(teachers, train):
    (_, _), (t0, t1) = teachers
    overflowing = copy.deepcopy(t1)
    with torch.no_grad():
        first_conv = next(m for m in overflowing.modules() if isinstance(m, torch.nn.Conv2d))
        first_conv.weight.fill_(3e38)  # (finite weights, inf/nan logits)
    with pytest.raises(ValueError, match=r"^teacher 2/2 \(bad\.pt\) gives non-finite logits"):
        relabel(random_set(train, 1), [t0, overflowing], teacher_names=["good.pt", "bad.pt"])
    with pytest.raises(ValueError, match=r"^teacher 2/2 gives non-finite logits"):
        relabel(random_set(train, 1), [t0, overflowing])


def test_saving_a_relabelled_set_says_relabelled(teachers, train, tmp_path, capsys):
    """A run saves a set, relabels it and saves it again: the second line says relabelled."""
    (_, _), (t0, _) = teachers
    ds = random_set(train, 2)
    save_distilled(ds, tmp_path / "set", progress=True)
    relabel(ds, [t0])
    save_distilled(ds, tmp_path / "set", overwrite=True, progress=True)
    first, second = capsys.readouterr().err.splitlines()
    assert first.startswith("saving random set (20 stored images") and first.endswith(f"-> {tmp_path / 'set'}")
    assert second.startswith("relabelled random set (20 stored images") and second.endswith(f"-> {tmp_path / 'set'}")


def test_importing_an_export_takes_its_soft_labels(teachers, train, tmp_path):
    """An export's own soft labels come back with its images unless others are given (rows as
    the export wrote them); an export whose images changed since is refused, saying how on."""
    (_, _), (t0, _) = teachers
    ds = relabel(random_set(train, 2, seed=3), [t0])
    export_imagefolder(ds, tmp_path / "e")
    imported = import_imagefolder(tmp_path / "e", "fashion-mnist-mini")
    assert torch.equal(imported.images, ds.images) and torch.equal(imported.soft_labels, ds.soft_labels)
    assert imported.hyperparameters["soft_labels_source"]["taken"].startswith("by default")
    next((tmp_path / "e").glob("0/*.png")).unlink()
    with pytest.raises(DistilledSetError, match="move soft_labels.safetensors away to import the images without"):
        import_imagefolder(tmp_path / "e", "fashion-mnist-mini")
