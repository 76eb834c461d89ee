"""DD-Ranking's scores of a distilled set, from the test accuracies of students trained under
one protocol (Li et al., "DD-Ranking: Rethinking the Evaluation of Dataset Distillation",
arXiv 2505.13300; definitions read from NUS-HPC-AI-Lab/DD-Ranking: README.md "Benchmark",
doc/metrics/lrs-soft-label.md, doc/metrics/ars.md, ddranking/metrics/soft_label.py and
ddranking/metrics/aug_robust.py).

Accuracies are fractions in [0, 1] (so every difference lies in [-1, 1]):

- HLR, hard-label recovery = acc(full data, hard labels) - acc(set, hard labels):
  how much of the real data's accuracy the images alone leave unrecovered (lower is better).
- IOR, improvement over random = acc(set, its own labels) - acc(random real subset of the
  same budget, the same labels and protocol): what the set adds over picking real images.
- LRS, label-robust score: alpha = w IOR - (1 - w) HLR, LRS = (e^alpha - e^-1) / (e - e^-1),
  which maps alpha in [-1, 1] onto [0, 1]; w = 0.5 by default (DD-Ranking's leaderboard).
- ARS, augmentation-robust score: beta = w (acc(set, aug) - acc(random, aug))
  + (1 - w) (acc(set, no aug) - acc(random, no aug)), ARS = (e^beta - e^-1) / (e - e^-1).

DD-Ranking's code passes accuracies in percent to these formulas, which puts alpha far
outside [-1, 1]; we follow the published definition's range (fractions) and report the
scores in [0, 1] (x 100 in tables). :func:`dd_ranking_printed_scores` gives the numbers
DD-Ranking's code prints for the same accuracies (HLR and IOR in points, LRS and ARS from
percent differences: about -0.1565 for every alpha below -10 points, astronomically large
above +10), for putting beside its leaderboard; the two can rank sets differently."""
from __future__ import annotations

import math
from typing import Dict

DEFAULT_WEIGHT = 0.5  # w of LRS and ARS: both terms count equally (DD-Ranking's default)
FULL_DATA_EPOCHS = 30  # epochs of the full-data hard-label run when an evaluation trains it (both protocols)


def _accuracy(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be an accuracy in [0, 1] (a fraction, not percent), got {value!r}")
    return float(value)


def check_weight(weight: float, name: str = "weight") -> float:
    """``weight`` as a float; ValueError naming it ``name`` unless it is in [0, 1]."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {weight!r}")
    return float(weight)


def check_weight_option(name: str, value: float) -> None:
    """The weight option's ``check=`` (options.Option): its range, said by the flag or key named
    ``name`` (argparse: "argument --weight: must be in [0, 1], got 2.0")."""
    check_weight(value, name)


def exp_normalized(x: float) -> float:
    """(e^x - e^-1) / (e - e^-1): [-1, 1] onto [0, 1], increasing (0 -> 0.269)."""
    return (math.exp(x) - math.exp(-1.0)) / (math.e - math.exp(-1.0))


def hard_label_recovery(full_hard: float, set_hard: float) -> float:
    """HLR = acc(full data, hard labels) - acc(set, hard labels)."""
    return _accuracy("full_hard", full_hard) - _accuracy("set_hard", set_hard)


def improvement_over_random(set_acc: float, random_acc: float) -> float:
    """IOR = acc(set) - acc(random subset), both under the same labels and protocol."""
    return _accuracy("set_acc", set_acc) - _accuracy("random_acc", random_acc)


def label_robust_score(hlr: float, ior: float, weight: float = DEFAULT_WEIGHT) -> float:
    """LRS = exp_normalized(w IOR - (1 - w) HLR)."""
    w = check_weight(weight)
    for name, value in (("hlr", hlr), ("ior", ior)):
        if not -1.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a difference of accuracies in [-1, 1], got {value!r}")
    return exp_normalized(w * ior - (1.0 - w) * hlr)


def augmentation_robust_score(set_aug: float, random_aug: float, set_plain: float, random_plain: float,
                              weight: float = DEFAULT_WEIGHT) -> float:
    """ARS = exp_normalized(w (set - random with augmentation) + (1 - w) (set - random without))."""
    w = check_weight(weight)
    with_aug = improvement_over_random(set_aug, random_aug)
    without_aug = improvement_over_random(set_plain, random_plain)
    return exp_normalized(w * with_aug + (1.0 - w) * without_aug)


def dd_ranking_scores(accuracies: Dict[str, float], weight: float = DEFAULT_WEIGHT) -> Dict[str, float]:
    """All four scores from one protocol's accuracies (fractions): ``full_hard``,
    ``set_hard`` (DD-Ranking trains it without augmentation by default), ``set_soft``, ``random_soft`` (set and random with the soft labels and the
    protocol's augmentation) and ``set_soft_plain``, ``random_soft_plain`` (the same without
    augmentation). Returns {"hlr", "ior", "lrs", "ars", "weight"}."""
    needed = ("full_hard", "set_hard", "set_soft", "random_soft", "set_soft_plain", "random_soft_plain")
    missing = [k for k in needed if k not in accuracies]
    if missing:
        raise ValueError(f"accuracies lack {', '.join(missing)}")
    hlr = hard_label_recovery(accuracies["full_hard"], accuracies["set_hard"])
    ior = improvement_over_random(accuracies["set_soft"], accuracies["random_soft"])
    return {
        "hlr": hlr,
        "ior": ior,
        "lrs": label_robust_score(hlr, ior, weight),
        "ars": augmentation_robust_score(accuracies["set_soft"], accuracies["random_soft"],
                                         accuracies["set_soft_plain"], accuracies["random_soft_plain"], weight),
        "weight": check_weight(weight),
    }


PRINTED_FLOOR = -math.exp(-1.0) / (math.e - math.exp(-1.0))  # exp_normalized(x) as x -> -inf: -0.1565


def printed_label_robust_score(hlr: float, ior: float, weight: float = DEFAULT_WEIGHT) -> float:
    """LRS as DD-Ranking's code prints it: exp_normalized(w IOR - (1 - w) HLR) with HLR and
    IOR in points (given here as fractions, as everywhere in this module)."""
    w = check_weight(weight)
    return exp_normalized(100.0 * (w * ior - (1.0 - w) * hlr))


def printed_augmentation_robust_score(set_aug: float, random_aug: float, set_plain: float, random_plain: float,
                                      weight: float = DEFAULT_WEIGHT) -> float:
    """ARS as DD-Ranking's code prints it: the differences of accuracies in points."""
    w = check_weight(weight)
    beta = w * improvement_over_random(set_aug, random_aug) + (1.0 - w) * improvement_over_random(set_plain, random_plain)
    return exp_normalized(100.0 * beta)


def dd_ranking_printed_scores(accuracies: Dict[str, float], weight: float = DEFAULT_WEIGHT) -> Dict[str, float]:
    """The numbers DD-Ranking's code prints for the accuracies of :func:`dd_ranking_scores`
    (fractions in): HLR and IOR in points, LRS and ARS from differences in points. Returns
    {"hlr", "ior", "lrs", "ars", "weight"}."""
    unit = dd_ranking_scores(accuracies, weight)  # (checks the accuracies and the weight)
    return {
        "hlr": 100.0 * unit["hlr"],
        "ior": 100.0 * unit["ior"],
        "lrs": printed_label_robust_score(unit["hlr"], unit["ior"], weight),
        "ars": printed_augmentation_robust_score(accuracies["set_soft"], accuracies["random_soft"],
                                                 accuracies["set_soft_plain"], accuracies["random_soft_plain"], weight),
        "weight": unit["weight"],
    }
