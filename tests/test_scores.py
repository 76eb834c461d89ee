"""DD-Ranking's scores against hand-worked values (infer_fast/scores.py)."""
import math

import pytest

from infer_fast.scores import (augmentation_robust_score, dd_ranking_scores, exp_normalized, hard_label_recovery,
                               improvement_over_random, label_robust_score)

E = math.e


def test_the_normalization_maps_minus_one_zero_one():
    assert exp_normalized(-1.0) == pytest.approx(0.0, abs=1e-15)
    assert exp_normalized(1.0) == pytest.approx(1.0)
    # (1 - 1/e) / (e - 1/e) = ((e - 1)/e) / ((e^2 - 1)/e) = 1 / (e + 1)
    assert exp_normalized(0.0) == pytest.approx(1.0 / (E + 1.0))


def test_a_worked_example():
    # full data 90 %, set with hard labels 60 %: HLR = 0.30; set 75 % vs random 70 % with soft
    # labels: IOR = 0.05; alpha = 0.5 * 0.05 - 0.5 * 0.30 = -0.125
    # LRS = (e^-0.125 - e^-1) / (e - e^-1) = (0.882497 - 0.367879) / 2.350402 = 0.218949
    hlr = hard_label_recovery(0.90, 0.60)
    ior = improvement_over_random(0.75, 0.70)
    assert hlr == pytest.approx(0.30) and ior == pytest.approx(0.05)
    assert label_robust_score(hlr, ior) == pytest.approx(0.218949, abs=1e-6)
    # without augmentation: set 50 %, random 40 %; beta = 0.5 * 0.05 + 0.5 * 0.10 = 0.075
    # ARS = (e^0.075 - e^-1) / (e - e^-1) = (1.077884 - 0.367879) / 2.350402 = 0.302078
    assert augmentation_robust_score(0.75, 0.70, 0.50, 0.40) == pytest.approx(0.302078, abs=1e-6)
    scores = dd_ranking_scores({"full_hard": 0.90, "set_hard": 0.60, "set_soft": 0.75, "random_soft": 0.70,
                                "set_soft_plain": 0.50, "random_soft_plain": 0.40})
    assert scores["lrs"] == pytest.approx(0.218949, abs=1e-6) and scores["ars"] == pytest.approx(0.302078, abs=1e-6)
    assert scores["weight"] == 0.5


def test_the_weight_selects_one_term():
    # w = 1: LRS sees only IOR; w = 0: only -HLR
    assert label_robust_score(0.3, 0.05, weight=1.0) == pytest.approx((math.exp(0.05) - 1 / E) / (E - 1 / E))
    assert label_robust_score(0.3, 0.05, weight=0.0) == pytest.approx((math.exp(-0.3) - 1 / E) / (E - 1 / E))
    # a set that recovers everything (HLR 0) and beats random by everything (IOR 1) scores 1 at w = 1
    assert label_robust_score(0.0, 1.0, weight=1.0) == pytest.approx(1.0)


@pytest.mark.parametrize("call, match", [
    (lambda: hard_label_recovery(90.0, 60.0), "fraction, not percent"),
    (lambda: improvement_over_random(0.5, -0.1), "random_acc must be an accuracy"),
    (lambda: label_robust_score(0.3, 0.05, weight=1.5), "weight must be in"),
    (lambda: label_robust_score(1.3, 0.05), "hlr must be a difference"),
    (lambda: dd_ranking_scores({"full_hard": 0.9}), "lack set_hard"),
])
def test_bad_inputs_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
