"""Review 3 of the run's label and config changes: a hard-label run takes an external set without
soft labels (and never rewrites it); ``student: {labels: hard}`` keeps INFER+Dyn and RDED labelled
per batch (the header says so), and a run of only those is refused naming the file; a file narrowed
with --methods keeps the student options of its other methods valid; an interrupted run_pipeline /
run_demo says how to continue it from Python; mixup_alpha 0 reads "no mixing" in the header."""
import hashlib
import re
import signal

import pytest
import torch
import yaml

import infer_fast.relabel
from infer_fast import cli, interrupts, pipeline
from infer_fast.data import load_dataset
from infer_fast.demo import run_demo
from infer_fast.methods.random import random_set
from infer_fast.pipeline import _check_inputs, _student_labels, run_pipeline
from infer_fast.results import CR_NOTES, markdown_report
from infer_fast.run_config import PipelineConfig, load_pipeline_config
from infer_fast.set_keys import SetKey
from infer_fast.storage import load_distilled, save_distilled

torch.set_num_threads(1)

TEACHER = {"model": "convnet-w8-d2", "epochs": 1, "batch_size": 256, "lr": 0.05, "seed": 0}
STUDENT = {"model": "convnet-w8-d2", "epochs": 1, "batch_size": 64}


def values(tmp_path, **kw):
    return {**dict(dataset="fashion-mnist-mini", teachers=[dict(TEACHER)], out=str(tmp_path / "run"), ipc=[2],
                   methods=["infer", "random"], recovery={"iterations": 1}, student=dict(STUDENT), seeds=1,
                   device="cpu"), **kw}


def config_file(tmp_path, **kw) -> str:
    """A run config's YAML file (as `infer-fast run` reads it): its path."""
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(values(tmp_path, **kw)))
    return str(path)


def header(md):
    return md.splitlines()[2]


def hand_results(**config_values):
    """A results dict as results.json holds it (written by hand: no training)."""
    cfg = {"dataset": "fashion-mnist-mini", "ipc": [2], "methods": ["infer", "infer_dyn", "random"], "seeds": 1,
           "student": dict(STUDENT), "dynamic_epochs": 1, "accounting": "fair", "recovery": {}, **config_values}
    sets = {f"{m}/ipc2": {"compression_ratio_percent": 0.5, "feature_duplication": 0.5} for m in cfg["methods"]}
    runs = {f"{m}/ipc2/seed0": {"final_accuracy": 0.5, "elapsed_s": 1.0} for m in cfg["methods"]}
    return {"config": cfg, "teachers": [{"model": "convnet-w8-d2", "test_accuracy": 0.5}], "sets": sets, "runs": runs}


# ---- 1: an external set without soft labels, in a run whose students never read them ----------------

@pytest.fixture
def unlabelled_external(tmp_path):
    """An external set without soft labels (a random one, as `infer-fast distill --method random` writes)."""
    directory = tmp_path / "ext"
    save_distilled(random_set(load_dataset("fashion-mnist-mini", "train"), 3, seed=7), directory)
    return directory


def digests(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_a_hard_label_run_trains_on_an_external_set_without_soft_labels_and_leaves_it_as_it_was(
        tmp_path, teacher_paths, unlabelled_external, monkeypatch):
    relabelled = []
    monkeypatch.setattr(infer_fast.relabel, "relabel", lambda ds, *a, **k: relabelled.append(ds.method))
    before = digests(unlabelled_external)
    cfg = PipelineConfig.from_dict(values(tmp_path, teachers=[{"path": p} for p in teacher_paths], methods=["random"],
                                          external={"mine": str(unlabelled_external)}, feature_duplication=False,
                                          student={**STUDENT, "labels": "hard"}))
    results = run_pipeline(cfg, progress=False)
    assert results["runs"]["external:mine/ipc3/seed0"]["final_accuracy"] > 0
    assert results["sets"]["external:mine/ipc3"]["compression_ratio_note"] == CR_NOTES["hard"]
    assert relabelled == [] and digests(unlabelled_external) == before
    assert not load_distilled(unlabelled_external).has_soft_labels


@pytest.mark.parametrize("student, scores, readers", [
    ({}, False, "its students learn"),
    ({"labels": "hard"}, True, "the scores' students of static labels learn"),
])
def test_an_external_set_without_the_soft_labels_the_run_reads_is_still_refused(
        tmp_path, teacher_paths, unlabelled_external, student, scores, readers):
    """Relabelling it would rewrite another's set in its directory: refused before any work."""
    cfg = PipelineConfig.from_dict(values(tmp_path, teachers=[{"path": p} for p in teacher_paths], methods=["random"],
                                          external={"mine": str(unlabelled_external)}, scores=scores,
                                          student={**STUDENT, **student}))
    with pytest.raises(ValueError, match=rf"^external set {re.escape(str(unlabelled_external))} has no soft labels, "
                                         rf"which {re.escape(readers)}: import it with --soft-labels"):
        _check_inputs(cfg)
    assert not (tmp_path / "run").exists()


# ---- 2: hard labels beside the methods labelled per batch ------------------------------------------

def test_hard_labels_keep_infer_dyn_and_rded_labelled_per_batch(tmp_path):
    cfg = load_pipeline_config(config_file(tmp_path, methods=["infer", "infer_dyn", "rded", "random"],
                                           student={**STUDENT, "labels": "hard"}))
    students = {m: cfg.student_config(m, 0, 1) for m in cfg.methods}
    assert {m: (s.labels, s.dynamic) for m, s in students.items()} == {
        "infer": ("hard", False), "infer_dyn": ("soft", True), "rded": ("soft", True), "random": ("hard", False)}
    assert [_student_labels(cfg, SetKey(m, 2)) for m in cfg.methods] == ["hard", "per-batch", "per-batch", "hard"]


def test_the_header_of_a_hard_label_run_names_the_rows_labelled_per_batch():
    md = markdown_report(hand_results(methods=["infer", "infer_dyn", "rded", "random"],
                                      student={**STUDENT, "labels": "hard"}), "", {})
    assert "Student: convnet-w8-d2, 1 epoch (INFER+Dyn: 1 epoch), hard labels (INFER+Dyn, RDED: the teachers' " \
           "per batch), final-epoch" in header(md)
    assert f"({CR_NOTES['hard']}; INFER+Dyn and RDED without soft labels: the teachers label every batch)" in md
    only_static = markdown_report(hand_results(methods=["infer", "random"], student={**STUDENT, "labels": "hard"}),
                                  "", {})
    assert "1 epoch, hard labels, final-epoch" in header(only_static)
    assert f"({CR_NOTES['hard']})." in only_static


def test_hard_labels_in_a_run_of_only_methods_labelled_per_batch_are_refused_naming_the_file(tmp_path):
    path = config_file(tmp_path, methods=["rded"], student={**STUDENT, "labels": "hard"})
    with pytest.raises(ValueError, match=rf"^{re.escape(path)}: student: labels: 'hard' would be ignored: the "
                                         r"teachers label every batch of the students of rded"):
        load_pipeline_config(path)
    # narrowed from a file whose other methods take them: valid
    path = config_file(tmp_path, methods=["rded", "random"], recovery={}, student={**STUDENT, "labels": "hard"})
    assert load_pipeline_config(path, methods=["rded"]).methods == ["rded"]


def test_a_student_refusal_in_a_config_file_names_the_file(tmp_path):
    path = config_file(tmp_path, student={**STUDENT, "epochs": 0})
    with pytest.raises(ValueError, match=rf"^{re.escape(path)}: student: epochs must be a positive integer"):
        load_pipeline_config(path)


# ---- 3: narrowing a file with --methods --------------------------------------------------------------

def test_narrowing_a_file_with_methods_keeps_its_other_methods_student_options_valid(tmp_path):
    path = config_file(tmp_path, methods=["rded", "random"], recovery={}, student={**STUDENT, "patches": 2})
    assert load_pipeline_config(path, methods=["random"]).methods == ["random"]
    # a config built in Python has only its methods
    with pytest.raises(ValueError, match=r"^config: student: patches \(--patches\) does not apply"):
        PipelineConfig.from_dict(values(tmp_path, methods=["random"], student={**STUDENT, "patches": 2}))
    # and a file none of whose methods uses the option is refused, narrowed or not
    path = config_file(tmp_path, methods=["infer", "random"], student={**STUDENT, "patches": 2})
    with pytest.raises(ValueError, match=rf"^{re.escape(path)} with --methods: student: patches \(--patches\) does not apply"):
        load_pipeline_config(path, methods=["random"])


# ---- 4: an interrupt of run_pipeline / run_demo from Python -------------------------------------------

def interrupted_recovery(*args, **kwargs):
    """A recovery stopped by Ctrl-C, its batch saved (its checkpointed_call's words: resume=True)."""
    with interrupts.checkpointed_call(lambda: "somewhere.recovery.pt"):
        raise interrupts.Interrupted(signal.SIGINT)


def test_an_interrupted_run_pipeline_says_to_call_it_again(tmp_path, teacher_paths, monkeypatch):
    monkeypatch.setattr(pipeline, "_run", interrupted_recovery)
    cfg = PipelineConfig.from_dict(values(tmp_path, teachers=[{"path": p} for p in teacher_paths]))
    with pytest.raises(interrupts.Interrupted) as stopped:
        run_pipeline(cfg, progress=False)
    assert str(stopped.value) == "SIGINT: call run_pipeline(cfg) again to continue where it stopped"


def plain_ctrl_c(*args, **kwargs):
    """Ctrl-C where no handler of ours is installed (a step without a checkpoint, the plots):
    Python's own KeyboardInterrupt."""
    raise KeyboardInterrupt


@pytest.mark.parametrize("call", ["run_pipeline", "run_demo"])
def test_a_plain_ctrl_c_of_a_run_says_to_call_it_again_too(tmp_path, teacher_paths, monkeypatch, call):
    """It left run_pipeline as a bare KeyboardInterrupt, with no message (README: it says how to go on)."""
    if call == "run_pipeline":
        monkeypatch.setattr(pipeline, "_run", plain_ctrl_c)
        cfg = PipelineConfig.from_dict(values(tmp_path, teachers=[{"path": p} for p in teacher_paths]))
        made, said = lambda: run_pipeline(cfg, progress=False), "SIGINT: call run_pipeline(cfg) again to continue"
    else:
        monkeypatch.setattr(pipeline, "run_pipeline", plain_ctrl_c)
        made, said = lambda: run_demo(str(tmp_path / "demo"), epochs=1, iterations=1, progress=False), "SIGINT: call run_demo("
    try:
        made()
    except interrupts.Interrupted as stopped:
        assert str(stopped).startswith(said), str(stopped)
    except KeyboardInterrupt:  # (caught here: let through, it would stop pytest's session)
        pytest.fail("a bare KeyboardInterrupt left the call, saying nothing")
    else:
        pytest.fail("the call was not interrupted")


def test_an_interrupted_run_demo_says_to_call_it_again(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "run_pipeline", interrupted_recovery)
    out = str(tmp_path / "demo")
    with pytest.raises(interrupts.Interrupted) as stopped:
        run_demo(out, epochs=1, iterations=1, progress=False)
    assert str(stopped.value) == (f"SIGINT: call run_demo({out!r}) again, with the same settings, to continue where "
                                  "it stopped")


def test_the_cli_line_of_an_interrupted_run_is_unchanged(tmp_path, teacher_paths, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "_run", interrupted_recovery)
    path = config_file(tmp_path, teachers=[{"path": p} for p in teacher_paths])
    assert cli.main(["run", path, "--quiet"]) == 128 + signal.SIGINT
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "infer-fast run: interrupted (SIGINT); run the same command to continue where it stopped"


# ---- 5: mixup_alpha 0 mixes nothing ------------------------------------------------------------------

def test_the_header_says_no_mixing_for_mixup_alpha_0():
    unmixed = header(markdown_report(hand_results(methods=["infer"], student={**STUDENT, "mixup_alpha": 0}), "", {}))
    assert "Student: convnet-w8-d2, 1 epoch, crop_flip, no mixing, final-epoch" in unmixed
    mixed = header(markdown_report(hand_results(methods=["infer"], student={**STUDENT, "mix": "cutmix",
                                                                            "mixup_alpha": 1.0}), "", {}))
    assert "1 epoch, crop_flip + cutmix, mixup_alpha 1, final-epoch" in mixed


# ---- review 4: external sets take the labels; a narrowed run's header; written_for checked ------------

def test_hard_labels_beside_only_per_batch_methods_are_taken_by_an_external_set(tmp_path, unlabelled_external):
    for methods in (["rded"], ["infer_dyn"]):
        cfg = PipelineConfig.from_dict(values(tmp_path, methods=methods, external={"mine": str(unlabelled_external)},
                                              student={**STUDENT, "labels": "hard"}))
        assert cfg.methods == methods and cfg.student["labels"] == "hard"  # (was refused: "would be ignored")
        assert _check_inputs(cfg)  # (its students learn hard labels: the set needs no soft labels)


def test_a_run_narrowed_to_per_batch_methods_does_not_claim_hard_labels():
    md = markdown_report(hand_results(methods=["rded"], student={**STUDENT, "labels": "hard"}), "", {})
    assert "hard labels" not in header(md) and CR_NOTES["hard"] not in md
    assert "RDED without soft labels: the teachers label every batch" in md


@pytest.mark.parametrize("written_for, said", [("infer_dyn", "written_for must be a list of method names, got "
                                                             "'infer_dyn'"),
                                               (("nosuch",), "written_for: unknown method 'nosuch'")])
def test_written_for_is_checked_naming_it(tmp_path, written_for, said):
    with pytest.raises(ValueError, match=rf"^config: {re.escape(said)}"):
        PipelineConfig(**values(tmp_path), written_for=written_for)
