"""Faults a mutation audit showed the suite would let through: each test fails on the mutant it
names (the code changed so) and passes on the code as it is. Recovery against the right teacher,
the student's schedule and evaluation epochs, DD-Ranking's best-of-tests and its ARS runs, the
ARS weight, and relabelling's rows."""
import collections
import math

import pytest
import torch

import infer_fast.student
from infer_fast.data import load_dataset
from infer_fast.dd_ranking import DDRankingProtocol, evaluate_set_dd_ranking, periodic_best
from infer_fast.distill import RecoveryConfig, recover_ufcs
from infer_fast.methods.random import random_set
from infer_fast.relabel import relabel
from infer_fast.scores import augmentation_robust_score, exp_normalized
from infer_fast.student import StudentConfig, train_student


def test_each_teachers_ufcs_are_recovered_against_that_teacher(natural, teachers, train_set):
    """UFC row m*K + k is u_k^m, optimized through teacher m (mutant: every row through
    teachers[0], labelled as teacher m's). max_shift 0: no random draws, so teacher 1's row
    equals a recovery with teacher 1 alone."""
    spec = train_set.spec
    cfg = RecoveryConfig(iterations=2, seed=3, max_shift=0)
    both = recover_ufcs(natural[:1], teachers, spec.mean, spec.std, cfg, progress=False)
    alone = recover_ufcs(natural[:1], teachers[1:2], spec.mean, spec.std, cfg, progress=False)
    assert not torch.equal(both["ufc"][0], alone["ufc"][0])  # (the teachers differ)
    torch.testing.assert_close(both["ufc"][1], alone["ufc"][0])


def test_relabel_batches_land_in_their_rows(teachers, train_set):
    """Soft labels do not depend on the relabelling batch size (mutant: a batch written at
    another row offset). Equal to an fp16 step or so: the CPU's convolutions round by batch size."""
    small = relabel(random_set(train_set, 2, seed=0), teachers[:1], batch_size=3)
    whole = relabel(random_set(train_set, 2, seed=0), teachers[:1], batch_size=256)
    torch.testing.assert_close(small.soft_labels.float(), whole.soft_labels.float(), rtol=0, atol=1e-2)


def test_the_students_cosine_schedule_spans_every_step_of_every_epoch(teachers, train_set):
    """CosineAnnealingLR over epochs x steps per epoch (mutant: T_max = epochs, the rate at 0
    after `epochs` steps, then rising): 20 images in batches of 5, 2 epochs = 8 steps."""
    labelled = relabel(random_set(train_set, 2, seed=0), teachers[:1])
    test = load_dataset("fashion-mnist-mini", "test")
    cfg = StudentConfig(model="convnet-w8-d2", epochs=2, batch_size=5, lr=1e-3, eval_batch_size=500)
    rates = [epoch["lr"] for epoch in train_student(labelled, test, cfg, progress=False)["history"]]
    # (each epoch's first step: the mutant's second epoch would start at 1e-3 again)
    assert math.isclose(rates[0], 1e-3, rel_tol=1e-6) and math.isclose(rates[1], 0.5e-3, rel_tol=1e-6), rates


def test_periodic_evaluations_land_on_multiples_of_eval_every(teachers, train_set):
    """eval_every 2 of 4 epochs tests after epochs 2 and 4 (mutant: 1, 3 and the last, which
    DD-Ranking's best-of-tests every test_interval epochs would then skip)."""
    labelled = relabel(random_set(train_set, 1, seed=0), teachers[:1])
    test = load_dataset("fashion-mnist-mini", "test")
    cfg = StudentConfig(model="convnet-w8-d2", epochs=4, batch_size=10, eval_every=2, eval_batch_size=500)
    history = train_student(labelled, test, cfg, progress=False)["history"]
    assert [epoch["epoch"] for epoch in history if "test_accuracy" in epoch] == [2, 4]


def test_dd_rankings_periodic_best_is_the_best_test_not_the_last():
    history = [{"epoch": 2, "test_accuracy": 0.7}, {"epoch": 4, "test_accuracy": 0.5}]
    assert periodic_best(history, 2) == 0.7


def test_dd_rankings_ars_runs_without_augmentation_train_without_mixing(teacher_paths, teachers, monkeypatch):
    """One DD-Ranking round trains, per source, exactly these students (mutant: the set's plain
    ARS run mixed, so ARS compared a mixed run with a plain one)."""
    unlabelled = random_set(load_dataset("fashion-mnist-mini", "train"), 2, seed=100)
    trained = collections.Counter()

    def recorded(source, test, config, **kwargs):
        trained[(source is unlabelled, config.labels, config.mix)] += 1
        return {"final_accuracy": 0.5, "history": [{"epoch": config.epochs, "test_accuracy": 0.5}]}

    monkeypatch.setattr(infer_fast.student, "train_student", recorded)
    protocol = DDRankingProtocol(student={"model": "convnet-w8-d2", "epochs": 2}, rounds=1, lr_grid=(0.001,),
                                 test_interval=2)
    evaluate_set_dd_ranking(unlabelled, teachers[:1], protocol, full_data_checkpoint=teacher_paths[0], device="cpu",
                            progress=False)
    # the set: hard (HLR), soft mixed (IOR), soft mixed and plain (ARS); the random subset: the same but hard
    assert trained == {(True, "hard", "none"): 1, (True, "soft", "mixup"): 2, (True, "soft", "none"): 1,
                       (False, "soft", "mixup"): 2, (False, "soft", "none"): 1}, trained


def test_the_ars_weight_goes_to_the_augmented_difference():
    """At a weight other than 0.5 (mutant: the two terms' weights swapped, equal at 0.5)."""
    score = augmentation_robust_score(0.9, 0.5, 0.6, 0.5, weight=0.8)  # augmented: 0.4 apart, plain: 0.1
    assert score == pytest.approx(exp_normalized(0.8 * 0.4 + 0.2 * 0.1))
