"""`infer-fast run`'s checks before any work, and what makes a run directory "the same run":
config errors found at once (not after hours), the data by what it is (not how its path is
spelled), tables and plots that describe the config, and folders that are not run directories."""
import json
import os
import re
import shutil

import pytest
import torch
import yaml

from infer_fast.cli import main
from infer_fast.pipeline import PipelineConfig, load_pipeline_config, run_pipeline
from infer_fast.results import load_results, markdown_report, summarize

torch.set_num_threads(1)

TEACHER = {"model": "convnet-w8-d2", "epochs": 1, "batch_size": 256, "lr": 0.05, "seed": 0}
STUDENT = {"model": "convnet-w8-d2", "epochs": 1, "batch_size": 64, "device": "cpu"}


def config(out, **kw):
    values = dict(dataset="fashion-mnist-mini", teachers=[dict(TEACHER)], out=str(out), ipc=[2],
                  methods=["infer", "random"], recovery={"iterations": 1}, student=dict(STUDENT), seeds=1, device="cpu")
    values.update(kw)
    return PipelineConfig.from_dict(values)


# ---- 1, 3: errors a config alone shows are refused when it is made ----------------------------

@pytest.mark.parametrize("change,message", [
    (dict(student={"model": "resnet9000"}), r"student: unknown model 'resnet9000'. Did you mean 'resnet50', 'resnet18'"),
    (dict(student={"model": "convnet-w8-d7"}), r"student: model 'convnet-w8-d7': ConvNet depth 7 is too deep for 28x28"),
    (dict(teachers=[{"model": "convnet-w8-d7", "epochs": 1}]), r"teachers\[0\]: model 'convnet-w8-d7': .*too deep"),
    (dict(teachers=[{"model": "convnet", "epochz": 1}]), r"teachers\[0\]: unknown option\(s\) epochz"),
    (dict(methods=["random", "rded"], method_options={"rded": {"candidates_per_class": 6, "factor": 2}}),
     r"method_options: rded: candidates_per_class=6 is too few: ipc=2 .* need 8 candidates per class"),
    (dict(ipc=[3, 3]), r"ipc lists 3 more than once"),
    (dict(methods=["infer", "infer", "random"]), r"methods lists infer more than once"),
])
def test_config_errors_are_refused_before_any_work(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path / "run", **change)
    assert not (tmp_path / "run").exists()


def test_a_setting_whose_results_were_never_made_may_change(tmp_path):
    """A results file whose RDED set was never begun (refused by its own check, say) takes RDED's
    fixed options, and one with no student run yet another student; once made, they are refused."""
    cfg = config(tmp_path, methods=["random", "rded"], method_options={"rded": {"candidates_per_class": 8}})
    path = tmp_path / "results.json"
    old = load_results(path, cfg)
    old["sets"]["random/ipc2"] = {}
    path.write_text(json.dumps(old))
    fixed = config(tmp_path, methods=["random", "rded"], method_options={"rded": {"candidates_per_class": 9}},
                   student={**STUDENT, "epochs": 2})
    assert load_results(path, fixed)["sets"] == {"random/ipc2": {}}
    (tmp_path / "sets" / "rded-ipc2").mkdir(parents=True)  # (begun: its options determine it now)
    with pytest.raises(ValueError, match=r"belongs to another run \(method_options\.rded\.candidates_per_class differs"):
        load_results(path, fixed)
    old["runs"]["random/ipc2/seed0"] = {"final_accuracy": 0.5, "elapsed_s": 1.0}
    path.write_text(json.dumps(old))
    # (the advice deletes the directory, not the file: what the run wrote beside it is that run's too)
    with pytest.raises(ValueError, match=r"belongs to another run \(student\.epochs differs.*choose another out "
                                         rf"directory or delete {re.escape(str(tmp_path))}$"):
        load_results(path, config(tmp_path, methods=["random", "rded"],
                                  method_options={"rded": {"candidates_per_class": 8}}, student={**STUDENT, "epochs": 2}))


# ---- 2: the data by what it is --------------------------------------------------------------

def _image_folder(root, per_class):
    from infer_fast.data.folders import write_image_folder

    images = torch.randint(0, 256, (2 * per_class, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for split in ("train", "test"):
        write_image_folder(str(root / split), images, torch.arange(2).repeat_interleave(per_class))


def test_the_data_root_is_the_folder_and_its_files_not_the_spelling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _image_folder(tmp_path / "data", per_class=2)
    dataset = {"name": "imagefolder", "num_classes": 2, "image_size": 8}
    out = tmp_path / "run"
    out.mkdir()
    path = out / "results.json"
    path.write_text(json.dumps(load_results(path, config(out, dataset=dataset, data_root="data"))))
    os.symlink(tmp_path / "data", tmp_path / "link")
    shutil.copytree(tmp_path / "data", tmp_path / "copy")  # (the same files elsewhere)
    for spelling in (str(tmp_path / "data"), str(tmp_path / "data") + "/", "./data", "link", str(tmp_path / "copy")):
        assert load_results(path, config(out, dataset=dataset, data_root=spelling))["runs"] == {}
    _image_folder(tmp_path / "other", per_class=3)  # (other files)
    with pytest.raises(ValueError, match=r"belongs to another run \(data_root differ"):
        load_results(path, config(out, dataset=dataset, data_root="other"))


# ---- 4, 5: the table, its header, counts and plots describe the config -------------------------

def _session(tmp_path, cfg, results):
    from infer_fast.meter import StepMeter
    from infer_fast.pipeline import _Session
    from infer_fast import distributed

    results.setdefault("timing", {})["steps"] = {}
    return _Session(cfg, distributed.Ranks(), True, tmp_path, results, StepMeter(results["timing"]["steps"]), 0.0)


def test_header_counts_and_plots_follow_the_config(tmp_path, capsys):
    from infer_fast.pipeline import _write_report

    cfg = config(tmp_path, ipc=[2, 3], seeds=3)
    results = json.loads(json.dumps(load_results(tmp_path / "results.json", cfg)))
    results["teachers"] = [{"model": "convnet-w8-d2", "test_accuracy": 0.5}]
    for key in ("infer/ipc2", "random/ipc2", "infer/ipc3", "random/ipc3"):
        results["sets"][key] = {"compression_ratio_percent": 1.0, "feature_duplication": 0.5}
        for seed in range(3):
            results["runs"][f"{key}/seed{seed}"] = {"final_accuracy": 0.5 + seed / 10, "elapsed_s": 1.0,
                                                    "history": [{"epoch": 1, "test_accuracy": 0.5}]}
    _write_report(_session(tmp_path, cfg, results))
    assert (tmp_path / "accuracy-vs-ipc.png").exists() and (tmp_path / "feature-duplication-vs-ipc.png").exists()
    # the same directory, one ipc, two methods, two seeds: 2 rows of 2 seeds
    narrower = config(tmp_path, ipc=[2], seeds=2)
    results["config"] = load_results(tmp_path / "results.json", narrower)["config"]
    capsys.readouterr()
    _write_report(_session(tmp_path, narrower, results))
    md = (tmp_path / "results.md").read_text()
    assert "over 2 seed(s)" in md and all(row["seeds"] == 2 for row in summarize(results))
    assert ": 4 student runs;" in capsys.readouterr().out
    assert not (tmp_path / "accuracy-vs-ipc.png").exists() and not (tmp_path / "feature-duplication-vs-ipc.png").exists()
    assert (tmp_path / "accuracy-vs-compression.png").exists() and "accuracy-vs-ipc" not in md
    assert markdown_report(results, "", {}).count("over 2 seed(s)") == 1


# ---- 6: only a run's own directory is written into --------------------------------------------

def test_a_folder_that_is_not_a_run_directory_is_refused(tmp_path, capsys):
    from infer_fast.demo import run_demo

    folder = tmp_path / "a-set"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match=r"out \(--out\): .*a-set exists and is not a run directory \(it holds manifest"):
        run_pipeline(config(folder), progress=False)
    with pytest.raises(ValueError, match="is not a run directory"):
        run_demo(str(folder), seeds=1, iterations=1, epochs=1, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json"]  # nothing written in it
    # an interrupted first session (its teachers only) and an empty folder are run directories
    (tmp_path / "started" / "teachers").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    from infer_fast.pipeline import check_run_directory

    check_run_directory(tmp_path / "started")
    check_run_directory(tmp_path / "empty")


# ---- 7: nothing the user gives is ignored ---------------------------------------------------

def _yaml(tmp_path, **kw):
    values = dict(dataset="fashion-mnist-mini", teachers=[dict(TEACHER)], out=str(tmp_path / "run"), ipc=[2],
                  student=dict(STUDENT), seeds=1, device="cpu")
    values.update(kw)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


@pytest.mark.parametrize("values,message", [
    (dict(methods=["random"], method_options={"rded": {"factor": 2}}),
     r"method_options: rded is not among the run's methods \(random\)"),
    (dict(methods=["random"], selection="confidence"), r"selection: 'confidence' would be ignored: it is infer's"),
    (dict(methods=["random"], accounting="ipc"), r"accounting: 'ipc' would be ignored"),
    (dict(methods=["random"], sre2l={"iterations": 3}), r"sre2l: iterations would be ignored"),
    (dict(methods=["random", "sre2l"], recovery={"iterations": 3}), r"recovery: iterations would be ignored: infer"),
])
def test_a_setting_no_method_of_the_run_takes_is_refused(tmp_path, values, message):
    with pytest.raises(ValueError, match=message):
        load_pipeline_config(_yaml(tmp_path, **values))


def test_settings_of_methods_left_out_by_the_command_line_stay_valid(tmp_path):
    path = _yaml(tmp_path, methods=["infer", "rded"], selection="confidence", recovery={"iterations": 1, "seed": 1},
                 method_options={"rded": {"candidates_per_class": 8}})
    assert load_pipeline_config(path, methods=["random"]).methods == ["random"]
    # (the run's seed in recovery is every method's)
    assert load_pipeline_config(_yaml(tmp_path, methods=["random"], recovery={"seed": 1})).seed == 1


def test_an_empty_methods_option_is_refused(tmp_path, capsys):
    assert main(["run", _yaml(tmp_path, methods=["random"]), "--methods", ""]) == 2
    assert "--methods" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_the_models_of_an_image_folder_run_are_checked_without_its_class_count(tmp_path):
    """An image folder's classes come from its folders when it is read: its models are checked
    at its size all the same (a too-deep ConvNet refused, a fitting one taken), not refused for
    the count the config cannot know."""
    base = dict(dataset={"name": "imagefolder", "image_size": 28}, out=str(tmp_path / "run"), ipc=[2],
                methods=["random"], data_root=str(tmp_path))
    PipelineConfig.from_dict({**base, "teachers": [{"model": "convnet-w8-d2", "epochs": 1}]})
    with pytest.raises(ValueError, match=r"teachers\[0\]: model 'convnet-w8-d7': ConvNet depth 7 is too deep for 28x28"):
        PipelineConfig.from_dict({**base, "teachers": [{"model": "convnet-w8-d7", "epochs": 1}]})


# ---- 8: a label of external names one set for the life of a run directory ---------------------

def _external_set(path, seed, ipc=2):
    from infer_fast.data import load_dataset
    from infer_fast.methods.random import random_set
    from infer_fast.storage import save_distilled

    ds = random_set(load_dataset("fashion-mnist-mini", "train"), ipc, seed=seed)
    ds.set_soft_labels(torch.randn(10 * ipc, 10, generator=torch.Generator().manual_seed(seed)))
    save_distilled(ds, path)
    return ds


def test_an_external_label_names_one_set_for_the_life_of_a_run_directory(tmp_path, capsys):
    """A relabelled or replaced external set, or its label pointed at another folder, was
    continued: the table kept the old set's row (after a swap to a set of another ipc,
    results.json held both and the new one's row was missing)."""
    import re

    from infer_fast.storage import save_distilled

    theirs = _external_set(tmp_path / "theirs", seed=1)
    _external_set(tmp_path / "other", seed=2, ipc=3)
    shutil.copytree(tmp_path / "theirs", tmp_path / "copy")
    run, where = tmp_path / "run", {name: str(tmp_path / name) for name in ("theirs", "other", "copy")}
    path = run / "results.json"
    run.mkdir()
    def cfg(**external):  # (the config _yaml writes)
        return config(run, methods=["random"], recovery={}, external=external)

    results = load_results(path, cfg(X=where["theirs"], Y=where["other"]))
    assert results["external_sets"]["X"]["directory"] == os.path.realpath(where["theirs"])
    results["sets"]["external:X/ipc2"] = {"directory": where["theirs"]}  # (X measured; nothing made of Y)
    path.write_text(json.dumps(results))
    # the same set however spelled, a label nothing was made of pointed elsewhere: continued
    load_results(path, cfg(X=where["theirs"] + "/", Y=where["copy"]))

    def refused(external, message):
        assert main(["run", _yaml(tmp_path, methods=["random"], external=external)]) == 2
        err = capsys.readouterr().err.strip()
        assert re.search(message, err) and "\n" not in err, err
        assert "a label names one set for the life of a run directory: give the set a new label, or choose " \
               "another out directory" in err

    refused({"X": where["other"]}, r"external: X names .*/other, .*results.json records X as .*/theirs;")
    refused({"X": where["copy"]}, r"external: X names .*/copy, .*results.json records X as .*/theirs;")
    theirs.set_soft_labels(torch.zeros(20, 10))  # relabelled in place
    save_distilled(theirs, tmp_path / "theirs", overwrite=True)
    refused({"X": where["theirs"]}, r"external: X: the images or labels of .*/theirs changed since .*results.json "
                                    r"recorded them \(relabelled or replaced\)")
    assert sorted(p.name for p in run.iterdir()) == ["results.json"]  # refused before any work


def test_a_run_error_from_a_command_line_value_names_the_flags_given(tmp_path, capsys):
    """The values given in the file's place are named with it (a refusal of --seeds 0 blamed the
    file alone, which holds seeds: 1)."""
    path = _yaml(tmp_path, methods=["random"])
    assert main(["run", path, "--seeds", "0", "--quiet"]) == 2
    assert capsys.readouterr().err.strip().endswith(f"{path} with --seeds: seeds must be a positive integer, got 0")
    assert not (tmp_path / "run").exists()
