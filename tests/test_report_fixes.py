"""What a run's results.md and `evaluate`'s report say matches what was measured: the scores
table's order, label modes and units, the CR note, per-seed order, the printed scale's numbers
and the full-data accuracy's source (results files written by hand: no training)."""
from types import SimpleNamespace

from infer_fast.dd_ranking import DDRankingProtocol, _full_data, format_dd_ranking_report
from infer_fast.results import format_scores, markdown_report, summarize

SCORES = ("hlr", "ior", "lrs", "ars")
DD_RUNS = ("set_hard", "set_soft", "random_soft", "set_aug", "random_aug", "set_plain", "random_plain")


def summary(mean, std=0.0):
    return {"mean": mean, "std": std}


def our_report(soft_labels="static", hlr=0.1):
    acc = {name: summary(0.5) for name in ("soft", "soft_plain", "hard", "hard_plain")}
    return {"protocol": {"name": "infer-fast", "soft_labels": soft_labels, "seeds": 1, "student_config": {"epochs": 2}},
            "accuracy": {"set": acc, "random": acc}, "scores": {name: summary(hlr) for name in SCORES}}


def dd_report(soft_labels):
    return {"set": {"method": "random", "dataset": "fashion-mnist-mini", "budget": {"ipc": 2}},
            "protocol": {"name": "dd-ranking", "soft_labels": soft_labels, "rounds": 2, "round_seeds": [0, 1],
                         "accuracy_of_a_run": "best of the tests", "student_config": {"epochs": 2}},
            "accuracy": {name: summary(0.5) for name in DD_RUNS}, "full_data_hard": {"accuracy": 0.9, "source": "x"},
            "scores": {name: summary(0.1) for name in SCORES},
            "scores_printed": {name: summary(-0.65, 2.05) for name in SCORES}}


def run_results(methods, ipc, scores, seeds=1):
    """A results dict as results.json holds it: ``methods`` at each ``ipc``, measured."""
    sets = {f"{m}/ipc{i}": {"compression_ratio_percent": 1.0, "feature_duplication": 0.5} for i in ipc for m in methods}
    config = {"dataset": "fashion-mnist-mini", "ipc": ipc, "methods": methods, "seeds": seeds,
              "student": {"epochs": 2}, "dynamic_epochs": None, "accounting": "fair"}
    return {"config": config, "teachers": [{"model": "convnet-w8-d2", "test_accuracy": 0.5}], "sets": sets,
            "runs": {}, "scores": scores}


def score_rows(table):
    return [line.split(" | ")[:2] for line in table.splitlines()[2:]]


def scores_note(md):
    return md.split("DD-Ranking scores (")[1].split("):\n")[0]


def test_score_rows_follow_the_tables_order():
    """Scores are saved as each set is scored (a later session adds its sets after the
    others'): the rows follow the results table, not the file."""
    scores = {"random/ipc4": our_report(), "random/ipc2": our_report(), "infer/ipc2": our_report()}
    table = format_scores(run_results(["infer", "random"], [2, 4], scores))
    assert score_rows(table) == [["| INFER", "2"], ["| Random", "2"], ["| Random", "4"]]


def test_dd_ranking_rows_say_their_label_mode():
    """Under `soft_labels: static` RDED's set (no stored labels) is scored per batch beside
    Random's stored labels: its row says so, and the note names both modes."""
    results = run_results(["random", "rded"], [2], {"rded/ipc2": dd_report("per-batch"), "random/ipc2": dd_report("static")})
    assert score_rows(format_scores(results)) == [["| Random", "2"], ["| RDED (labels per batch)", "2"]]
    note = scores_note(markdown_report(results, "", {}))
    assert ("soft labels: the sets' stored soft labels, but teacher labels per batch in the rows marked "
            '"(labels per batch)", as their methods\' students take them' in note)
    # DD-Ranking's default: every row per batch, nothing to mark
    results = run_results(["random", "rded"], [2], {"random/ipc2": dd_report("per-batch"),
                                                    "rded/ipc2": dd_report("per-batch")})
    assert "(labels per batch)" not in format_scores(results)
    assert "soft labels: teacher labels per batch;" in scores_note(markdown_report(results, "", {}))


def test_results_md_names_the_sets_without_soft_labels_and_the_scores_units():
    """The CR note names every method of the table whose set stores no soft labels (from the
    registry, not a list); LRS and ARS are scores x 100, not percentages; INFER+Dyn's score
    students train the protocol's epochs (the note says so)."""
    methods = ["infer", "infer_dyn", "random", "rded"]
    scores = {f"{m}/ipc2": our_report("per-batch" if m in ("infer_dyn", "rded") else "static") for m in methods}
    md = markdown_report(run_results(methods, [2], scores), "", {})
    assert "(images + soft labels + indices; INFER+Dyn and RDED without soft labels: the teachers label every batch)" in md
    note = scores_note(md)
    assert "accuracies, HLR and IOR in %, LRS and ARS (scores on [0, 1]) × 100" in note
    assert "INFER+Dyn's students train the protocol's 2 epochs" in note
    assert "| HLR | IOR | LRS ×100 | ARS ×100 |" in md
    assert "without soft labels" not in markdown_report(run_results(["infer", "random"], [2], {}), "", {})


def test_per_seed_is_in_seed_order_past_ten_seeds():
    results = run_results(["random"], [2], {}, seeds=12)
    results["runs"] = {f"random/ipc2/seed{s}": {"final_accuracy": s / 100, "elapsed_s": 1.0} for s in range(12)}
    assert summarize(results)[0]["per_seed"] == [s / 100 for s in range(12)]


def test_printed_scale_numbers_keep_their_decimals():
    """A printed-scale std of 2.05 was shown as "2" (.2g): mean and std now alike, with
    three decimals, in e-notation only where exp() of percentages explodes."""
    assert "IOR -0.650 +- 2.050" in format_dd_ranking_report(dd_report("per-batch"))
    from infer_fast.dd_ranking import format_printed
    from infer_fast._text import count_text

    assert format_printed(0.00432) == "0.004" and format_printed(3.2e7) == "3.200e+07"
    assert count_text(1, "epoch") == "1 epoch" and count_text(3, "epoch") == "3 epochs"


def test_dd_rankings_cached_full_data_accuracy_comes_before_a_checkpoint(tmp_path):
    """The protocol's order (README, dd_ranking's docstring): DD-Ranking's cached value, else a
    checkpoint, else trained; a checkpoint given beside a cached value is not read."""
    imagenet = SimpleNamespace(dataset="imagenet", num_classes=1000, height=224)
    checkpoint = str(tmp_path / "same-architecture-teacher.pt")  # (not there: never read)
    accuracy, source = _full_data(DDRankingProtocol(), imagenet, "resnet18-imagenet", None, "cpu", checkpoint, False)
    assert accuracy(0) == 0.565 and source["source"].startswith("DD-Ranking's cached value")
    assert checkpoint in source["source"] and source["trained_here"] is False
