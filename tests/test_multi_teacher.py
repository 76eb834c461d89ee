"""Runs with several teachers: an external set's labelling teachers checked before any work, one
teacher given twice refused everywhere, teachers given as a generator or one model read once, and
one numbering of teachers (from 1, with the count) in every message."""
import json
import re
import shutil

import pytest
import torch

from conftest import train_tiny_teachers
from infer_fast.data import load_dataset
from infer_fast.distill import recover_ufcs
from infer_fast.distill.checkpoints import describe_batch
from infer_fast.distill.config import RecoveryConfig
from infer_fast.dd_ranking import DDRankingProtocol, evaluate_set_dd_ranking
from infer_fast.evaluate import Protocol, evaluate_set
from infer_fast.methods import DistillRequest
from infer_fast.methods.random import random_set
from infer_fast.pipeline import PipelineConfig, run_pipeline
from infer_fast.relabel import relabel, relabel_directory
from infer_fast.results import load_results
from infer_fast.storage import OutputExistsError, save_distilled
from infer_fast.student import StudentConfig, evaluate_seeds, train_student
from infer_fast.teacher import load_teacher, teacher_label

torch.set_num_threads(1)

DATASET = "fashion-mnist-mini"
STUDENT = {"model": "convnet-w8-d2", "epochs": 1, "batch_size": 64, "device": "cpu"}
TINY = {"model": "convnet-w8-d2", "epochs": 1}
DD_RANKING = {"student": TINY, "rounds": 1, "test_interval": 1, "soft_labels": "static"}
SAME = r"teacher 1/2 \({a}\) and teacher 2/2 \({b}\) hold the same weights: give each teacher once"


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """Two tiny teachers (seeds 0, 1) and a byte copy of the first under another name."""
    root = tmp_path_factory.mktemp("teachers")
    t0, t1 = train_tiny_teachers(root, seeds=(0, 1))
    copy = str(root / "copy-of-t0.pt")
    shutil.copyfile(t0, copy)
    return t0, t1, copy


@pytest.fixture(scope="module")
def models(paths):
    return [load_teacher(p)[0] for p in paths[:2]]


@pytest.fixture(scope="module")
def data():
    return load_dataset(DATASET, "train"), load_dataset(DATASET, "test")


def _run_config(out, teachers, **kw):
    values = dict(dataset=DATASET, teachers=teachers, out=str(out), ipc=[2], methods=["random"],
                  student=dict(STUDENT), seeds=1, device="cpu", feature_duplication=False)
    values.update(kw)
    return PipelineConfig.from_dict(values)


def _external(path, data, teachers):
    """A random set at ipc 2, relabelled by ``teachers`` and saved at ``path``."""
    save_distilled(relabel(random_set(data[0], 2, seed=7), teachers), path)
    return str(path)


# ---- 1. an external set's labelling teachers, checked before any work ----------------------------

def test_run_refuses_an_external_set_labelled_by_other_teachers_before_making_its_directory(tmp_path, paths,
                                                                                             models, data):
    t0, t1, _ = paths
    ext = _external(tmp_path / "ext", data, [models[0]])
    cfg = _run_config(tmp_path / "run", [{"path": t0}, {"path": t1}], external={"ext": ext}, scores=True)
    with pytest.raises(ValueError, match=r"^external: ext: the set's soft labels are from other teachers than those "
                                         rf"given here: .*relabel it with the run's teachers \(infer-fast relabel "
                                         rf"{ext} --teachers {t0},{t1}\)$"):
        run_pipeline(cfg, progress=False)
    assert not (tmp_path / "run").exists()  # (no set made, no student trained: refused up front)


def test_the_refusal_says_a_label_the_results_already_record_needs_a_new_one(tmp_path, paths, models, data):
    """Relabelled as the first message said, a set the run directory records under its label is
    refused as another set (a label names one set for the life of a run directory): said at once."""
    t0, t1, _ = paths
    ext = _external(tmp_path / "ext", data, [models[0]])
    teachers = [{"path": t0}, {"path": t1}]
    run = tmp_path / "run"
    run.mkdir()
    results = load_results(run / "results.json", _run_config(run, teachers, external={"ext": ext}))
    (run / "results.json").write_text(json.dumps(results))
    cfg = _run_config(run, teachers, external={"ext": ext}, scores=True)
    with pytest.raises(ValueError, match=r"relabel it with the run's teachers .*, then give it a new label in "
                                         r"external \(.*results.json records ext as the set before"):
        run_pipeline(cfg, progress=False)
    assert sorted(p.name for p in run.iterdir()) == ["results.json"]


def test_a_trained_teacher_is_checked_against_the_external_sets_before_any_set_work(tmp_path, paths, models, data):
    t0, _, _ = paths
    ext = _external(tmp_path / "ext", data, [models[0]])
    trained = {"model": "convnet-w8-d2", "epochs": 1, "batch_size": 256, "lr": 0.05, "seed": 3}
    cfg = _run_config(tmp_path / "run", [{"path": t0}, trained], external={"ext": ext}, scores=True)
    with pytest.raises(ValueError, match=r"^external: ext: the set's soft labels are from other teachers .*"
                                         rf"--teachers {t0},.*teacher1-convnet-w8-d2\.pt\)$"):
        run_pipeline(cfg, progress=False)
    assert not (tmp_path / "run" / "sets").exists() and not (tmp_path / "run" / "students").exists()


# ---- 2. the same teacher given twice ------------------------------------------------------------

def test_distill_refuses_one_teacher_twice_or_a_copy_of_it(tmp_path, paths):
    t0, _, copy = paths
    for i, given in enumerate(([t0, t0], [t0, copy])):
        out = tmp_path / f"set{i}"
        request = DistillRequest(method="infer", dataset=DATASET, ipc=3, out_dir=out, teacher_paths=given,
                                 options={"iterations": 1}, progress=False)
        with pytest.raises(ValueError, match=SAME.format(a=given[0], b=given[1])):
            request.make_set()
        assert not out.exists()


def test_relabel_recovery_dynamic_students_and_evaluation_refuse_one_teacher_twice(tmp_path, paths, models, data):
    t0, _, copy = paths
    train, test = data
    teacher = models[0]
    ds = random_set(train, 2, seed=7)
    with pytest.raises(ValueError, match=SAME.format(a=t0, b=copy)):
        relabel(ds, [teacher, load_teacher(copy)[0]], teacher_names=[t0, copy])
    assert ds.soft_labels is None
    save_distilled(ds, tmp_path / "set")
    with pytest.raises(ValueError, match=SAME.format(a=t0, b=t0)):
        relabel_directory(tmp_path / "set", [t0, t0])
    with pytest.raises(ValueError, match="teacher 1/2 and teacher 2/2 hold the same weights"):
        recover_ufcs(torch.zeros((1, 10, 1, 28, 28), dtype=torch.uint8), [teacher, teacher], train.spec.mean,
                     train.spec.std, RecoveryConfig(iterations=1), progress=False)
    with pytest.raises(ValueError, match="teacher 1/2 and teacher 2/2 hold the same weights"):
        train_student(ds, test, StudentConfig(**STUDENT, dynamic=True), teachers=[teacher, teacher], progress=False)
    labelled = relabel(random_set(train, 2, seed=7), [teacher])
    with pytest.raises(ValueError, match="teacher 1/2 and teacher 2/2 hold the same weights"):
        evaluate_set(labelled, [teacher, teacher], Protocol(student=TINY, seeds=1), full_data_checkpoint=t0,
                     device="cpu", progress=False)
    with pytest.raises(ValueError, match="teacher 1/2 and teacher 2/2 hold the same weights"):
        evaluate_set_dd_ranking(labelled, [teacher, teacher], DDRankingProtocol(**DD_RANKING),
                                full_data_checkpoint=t0, device="cpu", progress=False)


@pytest.mark.parametrize("command", [["train", "--dynamic"], ["evaluate"], ["evaluate", "--protocol", "dd-ranking", "--test-interval", "1"]])
def test_train_and_evaluate_name_the_files_of_one_teacher_given_twice(tmp_path, capsys, paths, data, command):
    """As distill and relabel do (README): train --dynamic and evaluate said "teacher 1/2 and
    teacher 2/2", the files left out (the calls they make take models, named by number)."""
    from infer_fast.cli import main

    t0, _, copy = paths
    save_distilled(random_set(data[0], 2, seed=7), tmp_path / "set")
    status = main([command[0], str(tmp_path / "set"), "--teachers", f"{t0},{copy}", *command[1:], "--epochs", "1",
                   "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 2 and re.search(SAME.format(a=re.escape(t0), b=re.escape(copy)), err), err


def test_run_refuses_a_path_listed_twice_when_made_and_a_copy_before_any_set(tmp_path, paths):
    t0, _, copy = paths
    spelled_again = str(tmp_path / "x" / ".." / "t0.pt")  # (the same file, spelt otherwise)
    shutil.copyfile(t0, tmp_path / "t0.pt")
    with pytest.raises(ValueError, match=r"teachers\[0\] and teachers\[1\] name the same checkpoint: give each "
                                         "teacher once"):
        _run_config(tmp_path / "run", [{"path": str(tmp_path / "t0.pt")}, {"path": spelled_again}])
    trained = {"model": "convnet-w8-d2", "epochs": 1}
    for twin in (dict(trained), {**trained, "seed": 0}, {**trained, "device": "cpu", "eval_batch_size": 7}):
        # (as they train: a default spelt out, or a result-neutral field, is the same teacher)
        with pytest.raises(ValueError, match=r"teachers\[0\] and teachers\[1\] give the same training settings"):
            _run_config(tmp_path / "run", [trained, twin])
    assert len(_run_config(tmp_path / "run", [trained, {**trained, "seed": 1}]).teachers) == 2
    cfg = _run_config(tmp_path / "run", [{"path": t0}, {"path": copy}], methods=["infer"])
    with pytest.raises(ValueError, match=SAME.format(a=t0, b=copy)):
        run_pipeline(cfg, progress=False)
    assert not (tmp_path / "run" / "sets").exists()


# ---- 3, 4. teachers as a generator, or one model ------------------------------------------------

def test_evaluate_seeds_reads_a_generator_of_teachers_once_for_every_seed(models, data):
    train, test = data
    ds = random_set(train, 2, seed=7)
    cfg = StudentConfig(**STUDENT, dynamic=True)
    result = evaluate_seeds(ds, test, cfg, seeds=(0, 1), teachers=(t for t in models))
    assert sorted(result["per_seed"]) == [0, 1]
    listed = evaluate_seeds(ds, test, cfg, seeds=(1,), teachers=list(models))
    assert listed["per_seed"][1] == result["per_seed"][1]  # (seed 1 labelled by both teachers, as a list does)


def test_evaluate_set_takes_one_model_or_a_generator_as_the_teachers(paths, models, data):
    t0, _, _ = paths
    labelled = relabel(random_set(data[0], 2, seed=7), [models[0]])
    protocol = Protocol(student=TINY, seeds=1)
    reuse = {}
    one = evaluate_set(labelled, models[0], protocol, full_data_checkpoint=t0, device="cpu", progress=False,
                       reuse=reuse)
    generated = evaluate_set(labelled, (t for t in models[:1]), protocol, full_data_checkpoint=t0, device="cpu",
                             progress=False, reuse=reuse)
    assert one["set"]["labelling_teachers"]["checked"] is True
    assert generated["scores"] == one["scores"]
    # one model of other weights: refused as a teacher that did not label the set, not a TypeError
    with pytest.raises(ValueError, match="soft labels are from other teachers"):
        evaluate_set_dd_ranking(labelled, models[1], DDRankingProtocol(**DD_RANKING),
                                full_data_checkpoint=t0, device="cpu", progress=False)


# ---- 5. teacher numbering and order -------------------------------------------------------------

def test_teachers_are_numbered_from_one_with_their_count_everywhere():
    assert teacher_label(1, "t2.pt", 2) == "teacher 2/2 (t2.pt)"
    assert describe_batch(1, [0, 1, 2, 3], 2) == "teacher 2/2 batch k=0..3"


def test_the_non_finite_error_numbers_the_teacher_from_one(paths, models, data):
    train = data[0]
    bad = load_teacher(paths[1])[0]
    with torch.no_grad():
        next(m for m in bad.modules() if isinstance(m, torch.nn.Linear)).weight.fill_(float("nan"))
    with pytest.raises(RuntimeError, match=r"for 1 of 2 jobs \(teacher 2/2 k=0 "):
        recover_ufcs(torch.zeros((1, 10, 1, 28, 28), dtype=torch.uint8), [models[0], bad], train.spec.mean,
                     train.spec.std, RecoveryConfig(iterations=1), progress=False)


def test_a_resume_with_the_teachers_in_another_order_says_the_order_may_differ(tmp_path, paths, models, data):
    t0, t1, _ = paths
    out = tmp_path / "set"
    options = {"iterations": 1}
    DistillRequest(method="infer", dataset=DATASET, ipc=3, out_dir=out, teacher_paths=[t0, t1], options=options,
                   progress=False).make_set()
    swapped = DistillRequest(method="infer", dataset=DATASET, ipc=3, out_dir=out, teacher_paths=[t1, t0],
                             options=options, progress=False, resume=True)
    with pytest.raises(OutputExistsError, match=r"\(the teachers' weights \(or their order\) differ\)"):
        swapped.make_set()
    train, test = data
    ds = random_set(train, 2, seed=7)
    cfg = StudentConfig(**STUDENT, dynamic=True)
    train_student(ds, test, cfg, teachers=models, progress=False, checkpoint=tmp_path / "s.pt")
    with pytest.raises(ValueError, match=r"\(the teachers' weights \(or their order\) differ\)"):
        train_student(ds, test, cfg, teachers=models[::-1], progress=False, checkpoint=tmp_path / "s.pt", resume=True)
