"""DD-Ranking's protocol (infer_fast.dd_ranking), its printed score scale, the half-cosine
schedule, per-batch teacher labels and a fixed random subset in both protocols."""
import json
import math
from types import SimpleNamespace

import pytest

from infer_fast.cli import main
from infer_fast.data import load_dataset, load_test_split
from infer_fast.dd_ranking import (FAMILY_RECIPES, LR_GRID, ROUND_SEEDS, DDRankingProtocol, _full_data,
                                   evaluate_set_dd_ranking, format_dd_ranking_report, periodic_best)
from infer_fast.methods.random import random_set
from infer_fast.evaluate import Protocol, check_full_data_checkpoint, evaluate_set, format_report
from infer_fast.scores import (PRINTED_FLOOR, dd_ranking_printed_scores, dd_ranking_scores,
                               printed_augmentation_robust_score, printed_label_robust_score)
from infer_fast.storage import save_distilled
from infer_fast.relabel import relabel
from infer_fast.student import StudentConfig, half_cosine_factor, train_student
from infer_fast.teacher import load_teacher

TINY = {"model": "convnet-w8-d2", "epochs": 2}


def exp_normalized(x):  # written out again here: the definition the scores must follow
    return (math.exp(x) - math.exp(-1)) / (math.e - math.exp(-1))


@pytest.fixture(scope="module")
def unlabelled_set():
    return random_set(load_dataset("fashion-mnist-mini", "train"), 2, seed=100)


def test_printed_scale_is_the_formula_on_percent():
    acc = {"full_hard": 0.9, "set_hard": 0.6, "set_soft": 0.7, "random_soft": 0.65, "set_soft_plain": 0.5,
           "random_soft_plain": 0.52}
    unit, printed = dd_ranking_scores(acc), dd_ranking_printed_scores(acc)
    assert printed["hlr"] == pytest.approx(30.0) and printed["ior"] == pytest.approx(5.0)
    assert unit["lrs"] == pytest.approx(exp_normalized(0.5 * 0.05 - 0.5 * 0.3))
    assert printed["lrs"] == pytest.approx(exp_normalized(0.5 * 5 - 0.5 * 30))  # alpha -12.5: on the floor
    assert printed["lrs"] == pytest.approx(PRINTED_FLOOR, abs=1e-5) and PRINTED_FLOOR == pytest.approx(-0.1565, abs=1e-4)
    assert printed["ars"] == pytest.approx(exp_normalized(0.5 * 5 + 0.5 * -2))
    # above +10 points the printed scale leaves [0, 1] far behind; the documented one stays inside
    assert printed_label_robust_score(0.0, 0.3) == pytest.approx(exp_normalized(15)) and printed_label_robust_score(0.0, 0.3) > 1e5
    assert printed_augmentation_robust_score(0.6, 0.5, 0.6, 0.5) == pytest.approx(exp_normalized(10))
    # both scales rank these two sets in opposite orders (a mean over rounds of an exp)
    a = [printed_label_robust_score(0.1, 0.3), printed_label_robust_score(0.1, -0.3)]
    b = [printed_label_robust_score(0.1, 0.05)] * 2
    assert sum(a) > sum(b)
    from infer_fast.scores import label_robust_score
    assert label_robust_score(0.1, 0.3) + label_robust_score(0.1, -0.3) < 2 * label_robust_score(0.1, 0.05)


def test_half_cosine_schedule_ends_at_half_the_rate(unlabelled_set, teacher):
    relabelled = relabel(random_set(load_dataset("fashion-mnist-mini", "train"), 2, seed=1), [teacher[1]])
    test = load_test_split("fashion-mnist-mini")
    config = StudentConfig(**TINY, batch_size=8, lr=0.01, schedule="half-cosine", device="cpu")
    history = train_student(relabelled, test, config, progress=False)["history"]
    for record in history:  # the rate the epoch runs at: constant within it
        assert record["lr"] == pytest.approx(0.01 * half_cosine_factor(record["epoch"] - 1, 2))
    assert history[-1]["lr"] == pytest.approx(0.01 * half_cosine_factor(1, 2)) and half_cosine_factor(2, 2) == 0.5
    assert half_cosine_factor(0, 7) == 1.0
    with pytest.raises(ValueError, match="schedule must be one of"):
        StudentConfig(schedule="step")


def test_periodic_best_takes_only_the_tests_at_the_interval():
    history = [{"epoch": 1, "test_accuracy": 0.9}, {"epoch": 2, "test_accuracy": 0.4}, {"epoch": 3},
               {"epoch": 4, "test_accuracy": 0.5}, {"epoch": 5, "test_accuracy": 0.99}]
    assert periodic_best(history, 2) == 0.5  # epochs 2 and 4: the final epoch 5 is not a test epoch
    assert periodic_best(history, 1) == 0.99
    with pytest.raises(ValueError, match="no test evaluation"):
        periodic_best(history, 6)


def test_recipes_follow_dd_ranking_configs():
    protocol = DDRankingProtocol()
    cifar = protocol.student_config("cifar10", "soft", True, 0.01, 0)
    assert (cifar.model, cifar.augmentation, cifar.mix, cifar.mixup_alpha, cifar.temperature, cifar.epochs,
            cifar.batch_size, cifar.weight_decay, cifar.schedule, cifar.eval_every, cifar.lr, cifar.dynamic) == \
        ("resnet18", "crop_flip", "mixup", 0.8, 30.0, 400, 256, 0.01, "half-cosine", 20, 0.01, True)
    imagenet = protocol.student_config("imagenet", "hard", False, 0.1, 3)
    assert (imagenet.model, imagenet.mix, imagenet.augmentation, imagenet.temperature, imagenet.epochs,
            imagenet.labels, imagenet.dynamic) == ("resnet18-imagenet", "none", "resized_crop_flip", 3.0, 300, "hard",
                                                   False)
    assert FAMILY_RECIPES["tiny-imagenet"]["temperature"] == 20.0 and LR_GRID == (0.001, 0.005, 0.01, 0.05, 0.1)
    assert ROUND_SEEDS == (0, 1, 42, 1234, 3407) and protocol.rounds == 5 and protocol.test_interval == 20


@pytest.mark.parametrize("fields, match", [
    (dict(student={"lr": 0.1}), "lr is set by the DD-Ranking protocol"),
    (dict(student={"epochs": 10}), r"epochs \(10\) must be at least test_interval \(20\)"),
    (dict(student={"epochz": 3}), r"unknown option\(s\) epochz; allowed: augment_on, augmentation"),
    (dict(lr_grid=()), "lr_grid must be a non-empty list"),
    (dict(lr_grid=(0.1, -1)), "lr_grid must be a non-empty list"),
    (dict(set_lr=float("nan")), "set_lr must be a finite number"),
    (dict(set_lr=-0.1), "set_lr must be positive"),
    (dict(rounds=0), "rounds must be a positive integer"),
    (dict(soft_labels="dynamic"), "soft_labels must be one of"),
    (dict(recipe="mnist"), "recipe must be one of"),
    (dict(random_subset_seed=-1), "random_subset_seed"),
])
def test_bad_dd_ranking_protocols_are_refused_when_made(fields, match):
    with pytest.raises(ValueError, match=match):  # (so before any training: no such protocol can exist)
        DDRankingProtocol(**fields)


def test_dd_ranking_report(unlabelled_set, teacher):
    """Per round: each run the best over the grid of its best periodic test; the scores on
    both scales from those accuracies; ARS from runs of its own; a set without stored soft
    labels is fine under per-batch labels; a fixed random subset in every round."""
    path, model = teacher
    protocol = DDRankingProtocol(student=TINY, rounds=2, lr_grid=(0.001, 0.01), test_interval=1, random_subset_seed=7)
    report = evaluate_set_dd_ranking(unlabelled_set, [model], protocol, full_data_checkpoint=path, device="cpu",
                                     progress=False)
    assert report["protocol"]["name"] == "dd-ranking" and report["protocol"]["round_seeds"] == [0, 1]
    full = load_teacher(path)[1]["test_accuracy"]
    assert report["full_data_hard"]["per_round"] == [full, full]
    for r in report["per_round"]:
        assert r["random_subset_seed"] == 7
        for name, run in r["runs"].items():
            assert list(run["grid"]) == ["0.001", "0.01"]
            assert run["accuracy"] == max(run["grid"].values())
            assert run["lr"] == float(next(lr for lr, acc in run["grid"].items() if acc == run["accuracy"]))
        acc = {k: v["accuracy"] for k, v in r["runs"].items()}
        hlr, ior = full - acc["set_hard"], acc["set_soft"] - acc["random_soft"]
        beta = 0.5 * (acc["set_aug"] - acc["random_aug"]) + 0.5 * (acc["set_plain"] - acc["random_plain"])
        assert r["scores"]["lrs"] == pytest.approx(exp_normalized(0.5 * ior - 0.5 * hlr))
        assert r["scores"]["ars"] == pytest.approx(exp_normalized(beta))
        assert r["printed"]["lrs"] == pytest.approx(exp_normalized(100 * (0.5 * ior - 0.5 * hlr)))
        assert r["printed"]["ars"] == pytest.approx(exp_normalized(100 * beta))
    lrs = [r["scores"]["lrs"] for r in report["per_round"]]
    assert report["scores"]["lrs"]["mean"] == pytest.approx(sum(lrs) / 2)
    json.dumps(report, allow_nan=False)
    table = format_dd_ranking_report(report)
    assert format_report(report) == table and "protocol dd-ranking" in table and "as DD-Ranking's code prints" in table

    # the set's own rate for its soft-label runs: no grid there
    own = evaluate_set_dd_ranking(unlabelled_set, [model], DDRankingProtocol(student=TINY, rounds=1, lr_grid=(0.001,),
                                                                             test_interval=2, set_lr=0.005),
                                  full_data_checkpoint=path, device="cpu", progress=False)
    runs = own["per_round"][0]["runs"]
    assert list(runs["set_soft"]["grid"]) == ["0.005"] and list(runs["set_hard"]["grid"]) == ["0.001"]
    with pytest.raises(ValueError, match="relabel it first"):  # static labels need stored ones
        evaluate_set_dd_ranking(unlabelled_set, [model], DDRankingProtocol(student=TINY, test_interval=1,
                                                                           soft_labels="static"), device="cpu")


def test_full_data_accuracy_comes_from_the_students_architecture(teacher):
    path, _ = teacher
    with pytest.raises(ValueError, match="is a convnet-w8-d2, the students are convnet-w16-d2"):
        check_full_data_checkpoint(path, "convnet-w16-d2", "fashion-mnist-mini")
    assert check_full_data_checkpoint(path, "convnet-w8-d2", "fashion-mnist-mini")["model"] == "convnet-w8-d2"
    imagenet = SimpleNamespace(dataset="imagenet", num_classes=1000, height=224)
    accuracy, source = _full_data(DDRankingProtocol(), imagenet, "resnet18-imagenet", None, "cpu", None, False)
    assert accuracy(3) == 0.565 and "cached" in source["source"] and source["trained_here"] is False
    tiny = SimpleNamespace(dataset="tiny-imagenet", num_classes=200, height=64)
    assert _full_data(DDRankingProtocol(), tiny, "resnet-18", None, "cpu", None, False)[0](0) == 0.464
    subset = SimpleNamespace(dataset="imagenet", num_classes=100, height=224, real_dataset={})
    calls = []
    import infer_fast.evaluate as evaluate

    original = evaluate.train_full_data
    try:  # no cached value for a class subset: trained, once per round
        evaluate.train_full_data = lambda model, *a, seed=0, **k: calls.append(seed) or 0.5
        trained, source = _full_data(DDRankingProtocol(), subset, "resnet18-imagenet", None, "cpu", None, False)
        assert [trained(0), trained(1), trained(0)] == [0.5] * 3 and calls == [0, 1]
        assert "every round" in source["source"] and source["epochs"] == 30 and source["trained_here"] is True
    finally:
        evaluate.train_full_data = original


def test_our_protocol_with_per_batch_labels_and_a_fixed_subset(unlabelled_set, teacher):
    path, model = teacher
    protocol = Protocol(student={**TINY, "batch_size": 50}, seeds=2, soft_labels="per-batch", random_subset_seed=3)
    assert protocol.student_config("soft", True, 0).dynamic and not protocol.student_config("hard", True, 0).dynamic
    report = evaluate_set(unlabelled_set, [model], protocol, full_data_checkpoint=path, device="cpu", progress=False)
    assert [s["random_subset_seed"] for s in report["per_seed"]] == [3, 3]
    assert report["protocol"]["name"] == "infer-fast" and report["protocol"]["soft_labels"] == "per-batch"
    assert "labelled by the teachers on every batch" in report["protocol"]["random_subset"]
    assert "per-batch soft labels" in format_report(report)
    with pytest.raises(ValueError, match="full_data_checkpoint .* is a convnet-w8-d2"):
        evaluate_set(unlabelled_set, [model], Protocol(student={"model": "convnet-w16-d2", "epochs": 1},
                                                       soft_labels="per-batch"), full_data_checkpoint=path, device="cpu")


def test_cli_dd_ranking_protocol(teacher, unlabelled_set, tmp_path, capsys):
    save_distilled(unlabelled_set, tmp_path / "set")
    base = ["evaluate", str(tmp_path / "set"), "--teachers", teacher[0], "--full-data-checkpoint", teacher[0],
            "--model", "convnet-w8-d2", "--device", "cpu", "--quiet"]
    argv = base + ["--protocol", "dd-ranking", "--seeds", "1", "--epochs", "2", "--test-interval", "2",
                   "--lr-grid", "0.001,0.01", "--out", str(tmp_path / "report.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["protocol"]["name"] == "dd-ranking" and report["protocol"]["rounds"] == 1
    assert "protocol dd-ranking" in out and "LRS" in out
    for extra, message in ((["--lr-grid", "0.1"], "--lr-grid applies to --protocol dd-ranking only"),
                           (["--protocol", "dd-ranking", "--lr-grid", "0.1,x"], "--lr-grid takes comma-separated"),
                           (["--protocol", "dd-ranking", "--recipe", "cifar"], "--recipe applies to --protocol"),
                           (["--protocol", "dd-ranking", "--lr", "0.1"], "--lr does not apply to --protocol dd-ranking"),
                           # (the flags are the protocols' own declarations: their checks, a 0 not ignored)
                           (["--protocol", "dd-ranking", "--test-interval", "0"], "argument --test-interval: must be a positive integer, got 0"),
                           # (--full-data-epochs trains a full-data run; base reads one from its checkpoint)
                           (["--full-data-epochs", "3"], "--full-data-epochs sets the full-data run trained here"),
                           (["--weight", "2"], "weight")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    no_checkpoint = base[:4] + base[6:]  # (the full-data run trained here: its epochs checked, a 0 not ignored)
    assert main(no_checkpoint + ["--full-data-epochs", "0"]) == 2
    assert "argument --full-data-epochs: must be a positive integer, got 0" in capsys.readouterr().err
    assert not (tmp_path / "other.json").exists()


def test_an_rded_sets_students_augment_as_its_method_in_both_protocols(teacher, unlabelled_set, monkeypatch):
    """A set whose method gives its students settings (RDED: its shuffled-patch augmentation
    at the set's factor) is evaluated with them under either protocol, for its own runs and
    the random subset's (DD-Ranking's RDED scripts pass that transform for both), unless the
    protocol's student fields say otherwise; runs without augmentation stay without it."""
    import dataclasses

    import infer_fast.student

    path, model = teacher
    rded = dataclasses.replace(unlabelled_set, method="rded", hyperparameters={"factor": 2})
    configs = []

    def recording(source, test, config, **kw):  # (no training: the configs are the point)
        configs.append((source is rded, config))
        return {"final_accuracy": 0.5, "history": [{"epoch": config.epochs, "test_accuracy": 0.5}]}

    monkeypatch.setattr(infer_fast.student, "train_student", recording)
    report = evaluate_set(rded, [model], Protocol(student=TINY, seeds=1, soft_labels="per-batch"),
                          full_data_checkpoint=path, device="cpu", progress=False)
    augmented = {(c.augmentation, c.patches) for _, c in configs if c.mix != "none"}
    assert augmented == {("shuffle_patches_crop_flip", 2)} and {True, False} == {mine for mine, _ in configs}
    assert {c.augmentation for _, c in configs if c.mix == "none"} == {"none"}
    assert report["protocol"]["student_config"]["augmentation"] == "shuffle_patches_crop_flip"
    configs.clear()
    dd = DDRankingProtocol(student={**TINY, "epochs": 2}, rounds=1, lr_grid=(0.001,), test_interval=2)
    report = evaluate_set_dd_ranking(rded, [model], dd, full_data_checkpoint=path, device="cpu", progress=False)
    assert {(c.augmentation, c.patches) for _, c in configs} == {("shuffle_patches_crop_flip", 2)}
    assert report["protocol"]["student_config"]["patches"] == 2
    assert report["protocol"]["student_config"]["device"] == "cpu"  # (where they trained, not the protocol's "auto")
    from infer_fast._io import model_digest  # (the teachers that labelled every batch, by their weights)

    assert report["set"]["labelling_teachers"]["teachers_sha256"] == [model_digest(model)]
    configs.clear()
    evaluate_set(rded, [model], Protocol(student={**TINY, "augmentation": "crop_flip"}, seeds=1,
                                         soft_labels="per-batch"), full_data_checkpoint=path, device="cpu", progress=False)
    assert {c.augmentation for _, c in configs if c.mix != "none"} == {"crop_flip"}  # (the protocol's fields win)
