"""What a run's results.md, results.json and output say describes this session's config: no
score tables of other settings (or of scores turned off), the epochs its students train, no
"finished" of an earlier session while a continuation runs, notices under --quiet, and no note
about a decode cache nobody asked for."""
import itertools
import json
import re
from types import SimpleNamespace

import pytest
import torch

from infer_fast import distributed
from infer_fast.data.folders import write_image_folder
from infer_fast.data import load_test_split
from infer_fast.meter import StepMeter
from infer_fast.pipeline import PipelineConfig, _open_session, _Session, _test_split, _write_report, run_pipeline
from infer_fast.results import format_scores, load_results, markdown_report

torch.set_num_threads(1)

SCORES = ("hlr", "ior", "lrs", "ars")
DD_RUNS = ("set_hard", "set_soft", "random_soft", "set_aug", "random_aug", "set_plain", "random_plain")
STUDENT = {"model": "convnet-w8-d2", "epochs": 1, "batch_size": 64, "device": "cpu"}


def config(out, **kw):
    values = dict(dataset="fashion-mnist-mini", teachers=[{"model": "convnet-w8-d2", "epochs": 1}], out=str(out),
                  ipc=[2], methods=["infer", "random"], recovery={"iterations": 1}, student=dict(STUDENT), seeds=1,
                  device="cpu")
    values.update(kw)
    return PipelineConfig.from_dict(values)


def summary(mean):
    return {"mean": mean, "std": 0.0}


def our_report(protocol):
    acc = {name: summary(0.5) for name in ("soft", "soft_plain", "hard", "hard_plain")}
    return {"protocol": protocol, "accuracy": {"set": acc, "random": acc}, "scores": {n: summary(0.1) for n in SCORES}}


def dd_report():
    return {"protocol": {"name": "dd-ranking", "soft_labels": "per-batch", "student_config": {"epochs": 2}},
            "accuracy": {name: summary(0.5) for name in DD_RUNS}, "scores": {n: summary(0.1) for n in SCORES},
            "scores_printed": {n: summary(-0.65) for n in SCORES}}


def measured(cfg, tmp_path):
    """The results file of ``cfg`` with its sets measured and students run (written by hand)."""
    results = json.loads(json.dumps(load_results(tmp_path / "results.json", cfg, external={})))
    results["teachers"] = [{"model": "convnet-w8-d2", "test_accuracy": 0.5}]
    for method in cfg.methods:
        results["sets"][f"{method}/ipc2"] = {"compression_ratio_percent": 1.0, "feature_duplication": 0.5}
        results["runs"][f"{method}/ipc2/seed0"] = {"final_accuracy": 0.5, "elapsed_s": 1.0, "epochs": 1,
                                                   "history": [{"epoch": 1, "test_accuracy": 0.5}]}
    return results


def session(cfg, tmp_path, results, progress=True, started=0.0):
    results.setdefault("timing", {})["steps"] = {}
    return _Session(cfg, distributed.Ranks(), progress, tmp_path, results, StepMeter(results["timing"]["steps"]), started)


def score_rows(md):
    """The methods of results.md's score rows (after the results table)."""
    return re.findall(r"^\| (INFER|Random) \| 2 \| 50\.00", md.partition("DD-Ranking scores (")[2], flags=re.M)


# ---- 1: the score tables are this session's ---------------------------------------------------

def test_scores_turned_off_show_no_score_table(tmp_path):
    """A rerun with ``scores: false`` kept the reports of an earlier session (2 seeds) and showed
    them as "the run's student and seeds"; they stay in the file, not in results.md."""
    on = config(tmp_path, scores=True, seeds=2)
    results = measured(on, tmp_path)
    report = our_report(on.score_protocol().settings(on.dataset))
    results["scores"] = {"infer/ipc2": report, "random/ipc2": report}
    assert "DD-Ranking scores" in markdown_report(results, "", {})
    results["config"] = load_results(tmp_path / "results.json", config(tmp_path, scores=False), external={})["config"]
    assert "DD-Ranking scores" not in markdown_report(results, "", {})
    assert format_scores(results) == ""


def test_results_md_shows_only_the_scores_of_the_runs_protocol(tmp_path):
    """Of the reports in the file, results.md shows those made under this session's protocol
    (here: Random's, of 2 seeds, is another protocol's than the run's 1 seed); results.json
    keeps both."""
    cfg = config(tmp_path, scores=True, seeds=1)
    results = measured(cfg, tmp_path)
    protocol = cfg.score_protocol().settings(cfg.dataset)
    results["scores"] = {"infer/ipc2": our_report(protocol), "random/ipc2": our_report({**protocol, "seeds": 2})}
    _write_report(session(cfg, tmp_path, results))
    md = (tmp_path / "results.md").read_text()
    assert score_rows(md) == ["INFER"]
    assert set(json.loads((tmp_path / "results.json").read_text())["scores"]) == {"infer/ipc2", "random/ipc2"}


def test_reports_of_two_protocols_are_two_tables(tmp_path):
    """A table's columns are its protocol's: an infer-fast and a DD-Ranking report are never rows
    of one table (the DD-Ranking row was read as an infer-fast one)."""
    cfg = config(tmp_path)
    results = measured(cfg, tmp_path)
    results["config"].pop("scores")  # (as a hand-made dict records it: every report shown)
    results["scores"] = {"infer/ipc2": our_report({"name": "infer-fast", "soft_labels": "static"}),
                         "random/ipc2": dd_report()}
    md = markdown_report(results, "", {})
    assert md.count("DD-Ranking scores (") == 2
    assert "| method | ipc | soft | soft, no aug." in md and "| method | ipc | hard | soft | random soft" in md
    assert "DD-Ranking's protocol (best of periodic tests" in md and "`infer-fast evaluate`'s protocol" in md


# ---- 2: the students' epochs ------------------------------------------------------------------

def header(md):
    return md.splitlines()[2]


def test_the_header_states_the_epochs_the_students_train(tmp_path):
    """An ImageNet-family run's students train its recipe's 300 epochs (the header said 400); the
    INFER+Dyn note only where INFER+Dyn is a method; "1 epoch", not "1 epochs"."""
    imagenet = {"dataset": "imagenet", "student": {"model": "resnet18-imagenet"}, "dynamic_epochs": None,
                "accounting": "fair", "seeds": 1, "ipc": [10], "methods": ["infer"], "external": {}}
    results = {"config": imagenet, "teachers": [{"model": "resnet18-imagenet"}], "sets": {}, "runs": {}, "table": []}
    assert "Student: resnet18-imagenet, 300 epochs, final-epoch" in header(markdown_report(results, "", {}))
    cfg = config(tmp_path, methods=["infer", "random"])
    assert "Student: convnet-w8-d2, 1 epoch, final-epoch" in header(markdown_report(measured(cfg, tmp_path), "", {}))
    dyn = measured(config(tmp_path, methods=["infer", "infer_dyn"], dynamic_epochs=1), tmp_path)
    assert "Student: convnet-w8-d2, 1 epoch (INFER+Dyn: 1 epoch), final-epoch" in header(markdown_report(dyn, "", {}))


# ---- 3: a continuation is not finished until it finishes ------------------------------------

def test_a_continuation_clears_the_earlier_sessions_finish(tmp_path):
    """Once a continuation's config is accepted, results.json no longer says "finished" with the
    earlier session's table and seconds (a stopped or failed continuation left them, under the
    new config's ipc)."""
    cfg = config(tmp_path, ipc=[2])
    results = measured(cfg, tmp_path)
    results.update(finished="2026-01-01T00:00:00+00:00", table=[{"method": "infer", "ipc": 2}],
                   timing={"session_s": 12.0, "steps": {}})
    (tmp_path / "results.json").write_text(json.dumps(results))
    opened = _open_session(config(tmp_path, ipc=[2, 3]), False, distributed.Ranks(), {})
    on_disk = json.loads((tmp_path / "results.json").read_text())
    for state in (opened.results, on_disk):
        assert state["config"]["ipc"] == [2, 3]
        assert state["finished"] is None and "table" not in state and state["timing"]["session_s"] is None
    assert on_disk["runs"] == results["runs"]  # (the measurements stay)


def test_the_printed_session_seconds_are_the_recorded_ones(tmp_path, capsys, monkeypatch):
    cfg = config(tmp_path)
    results = measured(cfg, tmp_path)
    """The line printed at the end and results.json's timing.session_s are one reading (two
    readings differed: seconds apart after writing the plots of a large run)."""
    clock = itertools.count(100.0, 7.0)  # (the pipeline's clock: every reading later than the last)
    monkeypatch.setattr("infer_fast.pipeline.time", SimpleNamespace(perf_counter=lambda: next(clock)))
    _write_report(session(cfg, tmp_path, results))
    recorded = json.loads((tmp_path / "results.json").read_text())["timing"]["session_s"]
    assert f"({recorded:.0f} s this session)" in capsys.readouterr().out


# ---- 4: notices under --quiet -----------------------------------------------------------------

def test_a_quiet_run_prints_its_notices(tmp_path, capsys, teacher_paths):
    """``progress=False`` (``run --quiet``) drops the progress messages, not the notices."""
    cfg = config(tmp_path / "run", teachers=[{"path": teacher_paths[0]}], ipc=[1], methods=["random"])
    run_pipeline(cfg, progress=False)
    out = capsys.readouterr().out
    assert "feature duplication: skipped for Random ipc 1 (undefined with one training image per class)" in out
    assert "student 1/1" not in out  # (progress)
    run_pipeline(cfg, progress=False)  # (all measured: nothing to say)
    assert capsys.readouterr().out == ""


# ---- 5: the scores train a student two sets share once -----------------------------------------

def test_the_scores_train_the_students_two_sets_share_once(tmp_path, monkeypatch, teacher_paths):
    """INFER's and Random's sets at ipc 2 are scored against the same random subsets (same ipc,
    seed, teachers and students): those 4 students train once, not once per set."""
    import infer_fast.student as student

    trained = []
    original = student.train_student

    def counting(*args, **kwargs):
        trained.append(args[2])
        return original(*args, **kwargs)

    monkeypatch.setattr(student, "train_student", counting)
    cfg = config(tmp_path / "run", teachers=[{"path": path} for path in teacher_paths], scores=True)
    results = run_pipeline(cfg, progress=False)
    # 2 table students, 8 per set (soft/hard, with and without augmentation; the set's and a random subset's) less 4
    assert len(trained) == 2 + 2 * 8 - 4
    scores = results["scores"]
    assert scores["infer/ipc2"]["accuracy"]["random"] == scores["random/ipc2"]["accuracy"]["random"]


# ---- 6: no note about a decode cache the run was not asked for ------------------------------

def test_a_run_does_not_note_its_default_decode_cache_is_unused(tmp_path, capsys):
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for split in ("train", "test"):
        write_image_folder(str(tmp_path / "data" / split), images, torch.arange(2).repeat_interleave(2))
    dataset = {"name": "imagefolder", "num_classes": 2, "image_size": 8}
    cfg = config(tmp_path / "run", dataset=dataset, data_root=str(tmp_path / "data"), methods=["random"])
    test = _test_split(cfg, tmp_path / "run", distributed.Ranks(), progress=True)
    assert len(test) == 4 and "decode cache" not in capsys.readouterr().out
    # asked for (--decode-cache DIR): said
    load_test_split(dataset, str(tmp_path / "data"), str(tmp_path / "cache"), progress=True)
    assert "decode cache: imagefolder's test split fits in memory" in capsys.readouterr().out


def test_a_run_stopped_in_its_plots_is_not_recorded_finished(tmp_path, monkeypatch):
    """results.json says "finished" (with the table) only once results.md is written: a run
    stopped while drawing its plots was recorded as finished beside a stale or missing report."""
    cfg = config(tmp_path)
    results = measured(cfg, tmp_path)
    (tmp_path / "results.json").write_text(json.dumps(results))

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("infer_fast.plots.write_plots", stopped)
    with pytest.raises(KeyboardInterrupt):
        _write_report(session(cfg, tmp_path, results))
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk.get("finished") is None and "table" not in on_disk
    assert not (tmp_path / "results.md").exists()
    monkeypatch.undo()
    _write_report(session(cfg, tmp_path, results))
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["finished"] and on_disk["table"] and (tmp_path / "results.md").exists()
