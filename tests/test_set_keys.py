"""The keys of a run's sets and student runs (infer_fast/set_keys.py): the strings results files
hold, the names made from them, parsing back; and the results tables read through them."""
import dataclasses

import pytest

from infer_fast.methods import Method, register, unregister
from infer_fast.pipeline import PipelineConfig
from infer_fast.results import format_scores, format_table, set_entries, summarize
from infer_fast.set_keys import RunKey, SetKey


@pytest.mark.parametrize("key, text", [
    (SetKey("infer", 10), "infer/ipc10"),
    (SetKey("infer_dyn", 1), "infer_dyn/ipc1"),
    (SetKey.external("Other set", 50), "external:Other set/ipc50"),
])
def test_set_key_strings_round_trip(key, text):
    assert str(key) == text and SetKey.parse(text) == key
    for seed in (0, 1, 12):
        run = key.run(seed)
        assert str(run) == f"{text}/seed{seed}" and RunKey.parse(str(run)) == run and run.set_key == key
    assert hash(key) == hash(SetKey.parse(text))  # (a dict key)


def test_names_made_from_keys():
    assert SetKey("random", 10).directory_name == "random-ipc10"
    assert SetKey("infer_dyn", 2).directory_name == "infer-ipc2"  # INFER+Dyn trains on INFER's set
    assert SetKey("infer_dyn", 2).made_as == SetKey("infer", 2) and SetKey("sre2l", 2).made_as == SetKey("sre2l", 2)
    assert RunKey("sre2l", 3, 1).checkpoint_name == "sre2l-ipc3-seed1.pt"
    assert SetKey.external("a:b", 2).run(0).checkpoint_name == "external-a-b-ipc2-seed0.pt"  # (no ':' in file names)
    with pytest.raises(ValueError, match="keeps its own directory"):
        SetKey.external("Other", 2).directory_name
    assert SetKey("infer_dyn", 2).label == "INFER+Dyn" and SetKey.external("Other", 2).label == "Other"
    assert SetKey("infer_dyn", 2).labelled_per_batch and not SetKey("infer", 2).labelled_per_batch
    assert SetKey.external("Other", 2).own is None and not SetKey.external("Other", 2).labelled_per_batch


@pytest.mark.parametrize("text", ["infer", "infer/ipc", "infer/ipc0", "infer/ipc010", "a/b/ipc2", "/ipc2", "infer/ipc2/"])
def test_set_key_parse_refuses(text):
    with pytest.raises(ValueError, match="not a set key"):
        SetKey.parse(text)


@pytest.mark.parametrize("text", ["infer/ipc2", "infer/ipc2/seed", "infer/ipc2/seed01", "infer/ipc2/seed-1", "infer/ipc2/seed1/x"])
def test_run_key_parse_refuses(text):
    with pytest.raises(ValueError, match="not a run key"):
        RunKey.parse(text)


def test_keys_refuse_what_would_not_parse_back():
    for method, ipc in (("a/b", 1), ("", 1), ("infer", 0), ("infer", True), ("infer", "10")):
        with pytest.raises(ValueError, match="set key's"):
            SetKey(method, ipc)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        RunKey("infer", 1, -1)


def _results():
    """A results dict as results.json files hold it (the strings written by hand)."""
    run = {"final_accuracy": 0.5, "elapsed_s": 2.0}
    return {
        "config": {"ipc": [2, 10], "methods": ["infer", "random"], "external": {"Other": "x"}},
        "sets": {"infer/ipc2": {"compression_ratio_percent": 1.0}, "random/ipc2": {}, "external:Other/ipc5": {}},
        "runs": {"infer/ipc2/seed0": run, "infer/ipc2/seed1": {"final_accuracy": 0.7, "elapsed_s": 3.0},
                 "random/ipc2/seed0": {"final_accuracy": 0.4, "elapsed_s": 1.0},
                 "infer/ipc10/seed0": {"final_accuracy": 0.9, "elapsed_s": 5.0},
                 "external:Other/ipc5/seed0": {"final_accuracy": 0.3, "elapsed_s": 4.0}},
    }


def test_tables_read_results_files_by_their_keys():
    results = _results()
    assert set_entries(results["config"], results["sets"]) == [
        SetKey("infer", 2), SetKey("random", 2), SetKey("infer", 10), SetKey("random", 10), SetKey.external("Other", 5)]
    rows = {(r["method"], r["ipc"]): r for r in summarize(results)}
    infer2 = rows[("infer", 2)]
    assert infer2["per_seed"] == [0.5, 0.7] and infer2["student_seconds"] == 5.0 and infer2["compression_ratio_percent"] == 1.0
    assert rows[("infer", 10)]["per_seed"] == [0.9] and rows[("random", 10)]["seeds"] == 0
    assert rows[("external:Other", 5)]["label"] == "Other" and rows[("external:Other", 5)]["per_seed"] == [0.3]
    assert "| Other | 5 | 30.00 ± 0.00 |" in format_table(results)
    acc = {name: {"mean": 0.5, "std": 0.0} for name in ("soft", "soft_plain", "hard_plain")}
    report = {"protocol": {}, "accuracy": {"set": acc, "random": acc},
              "scores": {name: {"mean": 0.1, "std": 0.0} for name in ("hlr", "ior", "lrs", "ars")}}
    assert "| INFER+Dyn | 2 | 50.00 ± 0.00 |" in format_scores({"scores": {"infer_dyn/ipc2": report}})


def test_epoch_reduction_is_a_fact_of_the_method():
    """run's students of a method with reduced_student_epochs train round(epochs / (M + 1))
    epochs (INFER+Dyn's, the paper's), by the registry, not by the method's name."""
    cfg = PipelineConfig(dataset="fashion-mnist-mini", teachers=[{"path": f"t{i}.pt"} for i in range(3)], out="x",
                         student={"epochs": 8})
    assert cfg.student_config("infer_dyn", 0, 3).epochs == 2 and cfg.student_config("infer", 0, 3).epochs == 8
    register(Method(name="toy_dyn", label="Toy+Dyn", summary="infer's set, per-batch labels, fewer epochs",
                    trains_on="infer", student_labels="per-batch", reduced_student_epochs=True))
    try:
        assert cfg.student_config("toy_dyn", 0, 3).epochs == 2 and cfg.student_config("toy_dyn", 0, 3).dynamic
        cfg = dataclasses.replace(cfg, dynamic_epochs=5)
        assert cfg.student_config("toy_dyn", 0, 3).epochs == 5 and cfg.student_config("rded", 0, 3).epochs == 8
    finally:
        unregister("toy_dyn")


def test_a_set_made_as_another_methods_gets_that_methods_options(tmp_path, monkeypatch):
    """INFER+Dyn listed alone (or before INFER) makes INFER's set with the run's ``recovery``
    options (it was distilled with infer_dyn's options, none: INFER's defaults)."""
    from infer_fast.methods import infer
    from infer_fast.pipeline import _make_set

    built = {}

    def fake(*args, config, accounting, **kwargs):
        built["config"], built["accounting"] = config, accounting
        made = tmp_path / "made"  # (a distill returns its set's directory)
        made.mkdir()
        return str(made)

    monkeypatch.setattr(infer, "distill_infer", fake)
    cfg = PipelineConfig(dataset="fashion-mnist-mini", teachers=[{"path": "t.pt"}], out=str(tmp_path),
                         methods=["infer_dyn"], recovery={"iterations": 7}, accounting="ipc")
    _make_set(cfg, SetKey("infer_dyn", 2), tmp_path / "sets" / "infer-ipc2", ["t.pt"], progress=False)
    assert built["config"].iterations == 7 and built["accounting"] == "ipc"


def test_a_results_file_continues_only_under_the_settings_that_made_it(tmp_path):
    """The "same run?" question of a results file: any setting that determines the sets or
    students (method_options too: a CDA or RDED set of other options was kept) refuses it; one
    the file predates counts as its default; methods, ipc and seeds extend it."""
    import json

    from infer_fast.results import load_results

    path = tmp_path / "results.json"
    cfg = PipelineConfig(dataset="fashion-mnist-mini", teachers=[{"path": "t.pt"}], out=str(tmp_path),
                         method_options={"rded": {"factor": 2}})
    old = load_results(path, cfg)
    old["runs"]["rded/ipc10/seed0"] = {"final_accuracy": 0.5, "elapsed_s": 1.0}  # (what the table reads of a run)
    path.write_text(json.dumps(old))
    assert load_results(path, dataclasses.replace(cfg, methods=["rded"], ipc=[1, 10], seeds=1))["runs"] == old["runs"]
    for change in ({"method_options": {"rded": {"factor": 1}}}, {"student": {"epochs": 3}}, {"accounting": "ipc"},
                   {"recovery": {"iterations": 7}}, {"sre2l": {"r_bn": 0.5}}):  # (the methods' own sections too)
        with pytest.raises(ValueError, match=f"results file .* belongs to another run \\({next(iter(change))}[.a-z_]* differs"):
            load_results(path, dataclasses.replace(cfg, **change))
    # settings that change no result continue it: batching, checkpoint cadence, a student's device
    neutral = {"recovery": {"group_size": 3, "checkpoint_minutes": 2.0}, "sre2l": {"checkpoint_every": 5},
               "method_options": {"rded": {"factor": 2, "checkpoint_minutes": 1.0}}, "student": {"device": "cpu"}}
    assert load_results(path, dataclasses.replace(cfg, **neutral))["runs"] == old["runs"]
    with pytest.raises(ValueError, match=r"recovery\.iterations differs"):  # (with a setting that does)
        load_results(path, dataclasses.replace(cfg, recovery={"group_size": 3, "iterations": 7}))
    del old["config"]["method_options"]  # (a file written before the setting counted)
    path.write_text(json.dumps(old))
    assert load_results(path, dataclasses.replace(cfg, method_options={}))["runs"] == old["runs"]
    with pytest.raises(ValueError, match=r"method_options\.rded\.factor differs"):
        load_results(path, cfg)
