"""`infer-fast run` with students of hard labels relabels no set and counts no soft labels in
the compression ratio; results.md's header names the student and distillation settings that
differ from the recipes; a CR of labels per batch (INFER+Dyn, RDED) is marked in the table and
drawn hollow in accuracy-vs-compression.png, not read as cheaper than the static-label rows."""
import json

import pytest
import torch

import infer_fast.relabel
from infer_fast.data import load_dataset
from infer_fast.methods.random import random_set
from infer_fast.pipeline import (PipelineConfig, SETS_DIR, _record_stands, _soft_labels_needed, _student_labels,
                                 run_pipeline)
from infer_fast.plots import PER_BATCH_LEGEND, _method_styles, accuracy_series, draw_plots
from infer_fast.results import (CR_NOTES, PER_BATCH_CR_MARK, PER_BATCH_CR_NOTE, format_table, markdown_report,
                                summarize)
from infer_fast.set_keys import SetKey
from infer_fast.storage import load_distilled, save_distilled

torch.set_num_threads(1)

STUDENT = {"model": "convnet-w8-d2", "epochs": 1, "batch_size": 64, "device": "cpu"}


def config(out, teacher_paths, student=None, **kw):
    values = dict(dataset="fashion-mnist-mini", teachers=[{"path": p} for p in teacher_paths], out=str(out), ipc=[2],
                  methods=["infer", "random"], recovery={"iterations": 1}, student={**STUDENT, **(student or {})},
                  seeds=1, device="cpu")
    values.update(kw)
    return PipelineConfig.from_dict(values)


@pytest.fixture
def relabels(monkeypatch):
    """The sets the run relabels (infer_fast.relabel.relabel's calls, by method)."""
    called = []
    real = infer_fast.relabel.relabel

    def counting(ds, *args, **kwargs):
        called.append(ds.method)
        return real(ds, *args, **kwargs)

    monkeypatch.setattr(infer_fast.relabel, "relabel", counting)
    return called


def header(md):
    return md.splitlines()[2]


# ---- 1: hard labels: no relabel, no soft labels counted -----------------------------------------

def test_a_run_of_hard_labels_relabels_no_set_and_counts_no_soft_labels(tmp_path, teacher_paths, relabels):
    """The students never read soft labels: no teacher pass relabels the sets, and each CR is
    images + indices over the full training set (INFER's was 0.496% with its unused soft
    labels, not 0.480%), its note and results.md say hard labels."""
    cfg = config(tmp_path / "run", teacher_paths, student={"labels": "hard", "mix": "none"})
    results = run_pipeline(cfg, progress=False)
    assert relabels == []
    for method in ("infer", "random"):
        ds = load_distilled(tmp_path / "run" / SETS_DIR / f"{method}-ipc2")
        assert not ds.has_soft_labels
        counts = ds.compression_ratio()  # (no soft labels stored: images + indices)
        per_image = ds.channels * ds.height * ds.width
        by_hand = 100 * (ds.num_stored_images() * per_image + counts["index_elements"]) / (
            counts["full_train_size"] * per_image)
        record = results["sets"][f"{method}/ipc2"]
        assert record["compression_ratio_percent"] == pytest.approx(by_hand)
        assert record["compression_ratio_note"] == CR_NOTES["hard"] and "hard labels" in record["compression_ratio_note"]
    md = (tmp_path / "run" / "results.md").read_text()
    assert "Student: convnet-w8-d2, 1 epoch, hard labels, crop_flip, no mixing, final-epoch" in header(md)
    assert f"CR: stored values / full training set values ({CR_NOTES['hard']})." in md


def test_a_run_continued_with_soft_labels_before_any_student_relabels_and_counts_them(tmp_path, teacher_paths,
                                                                                      relabels):
    """The student settings may change before any student trained: a session of soft labels
    after one of hard labels relabels the sets and counts their soft labels (its students would
    find none), keeping the measured feature duplication and distillation time."""
    out = tmp_path / "run"
    run_pipeline(config(out, teacher_paths, student={"labels": "hard"}), progress=False)
    assert relabels == []
    on_disk = json.loads((out / "results.json").read_text())
    on_disk["runs"] = {}  # (as a session stopped before its students)
    (out / "results.json").write_text(json.dumps(on_disk))
    before = on_disk["sets"]["infer/ipc2"]
    results = run_pipeline(config(out, teacher_paths), progress=False)
    assert sorted(relabels) == ["infer", "random"]
    after = results["sets"]["infer/ipc2"]
    ds = load_distilled(out / SETS_DIR / "infer-ipc2")
    assert ds.has_soft_labels and after["compression_ratio_note"] == CR_NOTES["static"]
    assert after["compression_ratio_percent"] == pytest.approx(ds.compression_ratio()["percent"])
    assert after["compression_ratio_percent"] > before["compression_ratio_percent"]
    assert (after["feature_duplication"], after["distill_seconds"]) == (before["feature_duplication"],
                                                                        before["distill_seconds"])


def test_what_reads_a_sets_soft_labels(tmp_path, teacher_paths):
    """Students of hard labels read none, but the scores of static labels do: a set of a run of
    hard labels is relabelled when the scores are turned on later (the record no longer stands);
    the teachers' labels per batch read none, whatever the students' labels."""
    hard = config(tmp_path, teacher_paths, student={"labels": "hard"})
    infer, dyn = SetKey("infer", 2), SetKey("infer_dyn", 2)
    assert (_student_labels(hard, infer), _student_labels(config(tmp_path, teacher_paths), infer)) == ("hard", "static")
    assert _student_labels(config(tmp_path, teacher_paths, methods=["infer_dyn"]), dyn) == "per-batch"
    assert not _soft_labels_needed(hard, infer)
    assert _soft_labels_needed(config(tmp_path, teacher_paths, student={"labels": "hard"}, scores=True), infer)
    assert not _soft_labels_needed(config(tmp_path, teacher_paths, methods=["infer_dyn"], scores=True), dyn)
    # a set without soft labels, measured under hard labels
    directory = tmp_path / "set"
    save_distilled(random_set(load_dataset("fashion-mnist-mini"), 2, seed=0), directory)
    record = {"compression_ratio_note": CR_NOTES["hard"]}
    key = SetKey("random", 2)
    assert _record_stands(hard, key, directory, record)
    assert not _record_stands(config(tmp_path, teacher_paths, student={"labels": "hard"}, scores=True), key,
                              directory, record)
    assert not _record_stands(config(tmp_path, teacher_paths), key, directory, record)  # (soft labels now)


# ---- 2: the header names the settings off the recipes ----------------------------------------

def hand_results(**config_values):
    """A results dict as results.json holds it (written by hand: no training)."""
    cfg = {"dataset": "fashion-mnist-mini", "ipc": [2], "methods": ["infer", "infer_dyn", "random"], "seeds": 1,
           "student": {"model": "convnet-w8-d2", "epochs": 1}, "dynamic_epochs": 1, "accounting": "fair",
           "recovery": {}, **config_values}
    sets = {f"{m}/ipc2": {"compression_ratio_percent": cr, "feature_duplication": 0.5}
            for m, cr in (("infer", 0.496), ("infer_dyn", 0.480), ("random", 0.608))}
    runs = {f"{m}/ipc2/seed0": {"final_accuracy": 0.5, "elapsed_s": 1.0} for m in cfg["methods"]}
    return {"config": cfg, "teachers": [{"model": "convnet-w8-d2", "test_accuracy": 0.5}], "sets": sets, "runs": runs}


def test_the_header_names_the_student_and_distillation_settings_that_differ_from_the_recipes():
    """Two runs of other labels, mixing, temperature or recovery settings wrote the same header;
    a run of the recipes' settings says no more than before."""
    plain = header(markdown_report(hand_results(), "", {}))
    assert "Student: convnet-w8-d2, 1 epoch (INFER+Dyn: 1 epoch), final-epoch" in plain
    assert plain.endswith("Budget accounting: fair.")
    student = {"model": "convnet-w8-d2", "epochs": 1, "mix": "none", "temperature": 4.0, "lr": 0.01}
    changed = header(markdown_report(hand_results(student=student, recovery={"iterations": 2, "r_bn": 0.5}), "", {}))
    assert ("Student: convnet-w8-d2, 1 epoch (INFER+Dyn: 1 epoch), crop_flip, no mixing, lr 0.01, temperature 4, "
            "final-epoch") in changed
    assert changed.endswith("Budget accounting: fair. Distillation beside the recipes: INFER: iterations 2, r_bn 0.5.")
    hard = hand_results(methods=["infer", "random"], student={"model": "convnet-w8-d2", "epochs": 1, "labels": "hard"})
    assert "Student: convnet-w8-d2, 1 epoch, hard labels, final-epoch" in header(markdown_report(hard, "", {}))


# ---- 3: a CR of labels per batch is not read as cheaper ---------------------------------------

def test_the_table_marks_the_cr_of_labels_per_batch():
    """INFER+Dyn's CR counts no labels but its students need the teachers: marked, with the
    mark's note below the table (after a blank line: else a Markdown table row); INFER's is not."""
    results = hand_results()
    table = format_table(results)
    rows = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| ")}
    assert f"| 0.480 {PER_BATCH_CR_MARK} |" in rows["| INFER+Dyn"]
    assert PER_BATCH_CR_MARK not in rows["| INFER"] + rows["| Random"]
    assert table.endswith(f"\n\n{PER_BATCH_CR_NOTE}") and "not comparable" in PER_BATCH_CR_NOTE
    assert format_table(results) in markdown_report(results, format_table(results), {})
    assert PER_BATCH_CR_MARK not in format_table(hand_results(methods=["infer", "random"]))


def test_the_compression_plot_draws_labels_per_batch_hollow():
    """In accuracy-vs-compression.png INFER+Dyn stood left of INFER as if cheaper: it is drawn
    hollow, its legend entry says its labels come from the teachers; the ipc plot is unchanged."""
    rows = summarize(hand_results())
    styles = _method_styles(rows)
    series = accuracy_series(rows, "compression_ratio_percent", styles)
    assert list(series) == ["INFER", f"INFER+Dyn{PER_BATCH_LEGEND}", "Random"]
    assert series[f"INFER+Dyn{PER_BATCH_LEGEND}"][1]["markerfacecolor"] == "none"
    assert all("markerfacecolor" not in series[label][1] for label in ("INFER", "Random"))
    assert series[f"INFER+Dyn{PER_BATCH_LEGEND}"][1]["color"] == styles["INFER+Dyn"]["color"]  # (its colour kept)
    assert list(accuracy_series(rows, "ipc", styles)) == ["INFER", "INFER+Dyn", "Random"]
    ax = draw_plots({**hand_results(), "table": rows})["compression"].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(series)
    hollow = [line for line in ax.get_lines() if line.get_markerfacecolor() == "none"]
    assert len(hollow) == 1 and list(hollow[0].get_xdata()) == [0.480]


def test_the_title_names_the_tables_methods_and_the_accounting_is_said_where_a_method_takes_it():
    """results.md was titled "INFER and baselines" and said INFER's budget accounting for every
    run, also one of random and SRe2L sets only."""
    both = markdown_report(hand_results(), "", {})
    assert both.splitlines()[0] == "# fashion-mnist-mini: INFER, INFER+Dyn, Random"
    assert "Budget accounting: fair." in both
    baselines = markdown_report(hand_results(methods=["random", "sre2l"]), "", {})
    assert baselines.splitlines()[0] == "# fashion-mnist-mini: Random, SRe2L"
    assert "INFER" not in baselines and "accounting" not in baselines
