"""The one "is this the same run?" answer (infer_fast/run_identity.py) that teacher, student and
results files (and recovery checkpoints) are checked with."""
import pytest

from infer_fast.run_identity import another_run_message, check_same_run, differing, flattened


def test_differing_names_the_changed_settings_in_order():
    recorded = {"lr": 0.1, "epochs": 3, "model": "convnet", "gone": 1}
    current = {"model": "convnet", "epochs": 4, "lr": 0.2, "new": 2}
    # current's order, then the names only the record has; a name on one side only differs
    assert differing(recorded, current) == ["epochs", "lr", "new", "gone"]
    assert differing(recorded, dict(recorded)) == []


def test_a_name_missing_from_an_older_record_counts_as_its_default():
    current = {"epochs": 3, "schedule": "cosine"}
    assert differing({"epochs": 3}, current, defaults={"schedule": "cosine"}) == []
    assert differing({"epochs": 3}, current, defaults={"schedule": "half-cosine"}) == ["schedule"]
    assert differing({"epochs": 3}, current) == ["schedule"]  # no default given: unknown, so another run


def test_ignored_names_are_not_compared():
    recorded, current = {"device": "cuda", "lr": 0.1, "old_neutral": 1}, {"device": "cpu", "lr": 0.1}
    assert differing(recorded, current, ignore=("device", "old_neutral")) == []
    assert differing(recorded, current, ignore=("device",)) == ["old_neutral"]


def test_the_message_names_what_differs_and_quotes_short_recorded_values():
    message = another_run_message("student checkpoint", "s.pt", ["lr", "set_sha256", "history"], "delete it",
                                  recorded={"lr": 0.1, "set_sha256": "ab" * 32, "history": list(range(50))},
                                  labels={"set_sha256": "the set's images"})
    # a labelled name (a digest) is said by its label, a long value is not quoted
    assert message == ("student checkpoint 's.pt' belongs to another run (lr, the set's images, history differ; "
                       "recorded lr=0.1): delete it")
    with pytest.raises(ValueError, match=r"^results file 'r.json' belongs to another run \(seed differs; recorded "
                                         r"seed=1\): choose another out$"):
        check_same_run("results file", "r.json", {"seed": 1}, {"seed": 2}, "choose another out")
    check_same_run("results file", "r.json", {"seed": 1}, {"seed": 1}, "choose another out")  # the same run: no error


def test_flattened_compares_config_fields_by_their_own_names():
    identity = {"method": "infer", "config": {"lr": 0.1, "method": "x"}}
    assert flattened(identity) == {"method": "infer", "lr": 0.1, "config.method": "x"}
    assert differing(flattened(identity), flattened({"method": "infer", "config": {"lr": 0.2, "method": "x"}})) == ["lr"]
