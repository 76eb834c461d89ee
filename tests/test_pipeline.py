"""`infer-fast run`: the whole chain from one config, its results table, resume, and the demo."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from infer_fast.pipeline import PipelineConfig, format_table, load_pipeline_config, run_pipeline

torch.set_num_threads(1)

TINY_TEACHERS = [
    {"model": "convnet-w8-d2", "epochs": 1, "batch_size": 256, "lr": 0.05, "seed": 0},
    {"model": "convnet-w8-d2", "epochs": 1, "batch_size": 256, "lr": 0.05, "seed": 1},
]


def tiny_config(out, **kw):
    values = dict(
        dataset="fashion-mnist-mini", teachers=[dict(t) for t in TINY_TEACHERS], out=str(out), ipc=[2],
        methods=["infer", "infer_dyn", "random", "sre2l"], recovery={"iterations": 2}, sre2l={"iterations": 2},
        student={"model": "convnet-w8-d2", "epochs": 2, "batch_size": 64, "device": "cpu"}, seeds=2, device="cpu",
    )
    values.update(kw)
    return PipelineConfig.from_dict(values)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = tiny_config(out)
    return cfg, run_pipeline(cfg, progress=False)


def test_run_produces_the_table(finished_run):
    cfg, results = finished_run
    out = cfg.out
    assert sorted(results["runs"]) == sorted(
        f"{m}/ipc2/seed{s}" for m in ("infer", "infer_dyn", "random", "sre2l") for s in (0, 1))
    rows = {r["method"]: r for r in results["table"]}
    for method, row in rows.items():
        assert row["seeds"] == 2 and 0.0 <= row["accuracy_mean"] <= 1.0 and row["accuracy_std"] >= 0
        assert -1.0 <= row["feature_duplication"] <= 1.0
        assert row["compression_ratio_percent"] > 0
    # K = floor(2*10/12) = 1: 10 natural + 2 UFCs stored, 10 + 2*10 training images
    assert rows["infer"]["stored_images"] == 12 and rows["infer"]["training_images"] == 30
    assert rows["random"]["stored_images"] == rows["sre2l"]["stored_images"] == 20
    # INFER+Dyn stores the same images without soft labels
    assert rows["infer_dyn"]["compression_ratio_percent"] < rows["infer"]["compression_ratio_percent"]
    assert rows["infer_dyn"]["feature_duplication"] == pytest.approx(rows["infer"]["feature_duplication"])
    sets = results["sets"]  # one set serves INFER and INFER+Dyn: its distillation time is INFER's
    assert sets["infer_dyn/ipc2"]["distill_seconds"] == sets["infer/ipc2"]["distill_seconds"] > 0
    assert sets["random/ipc2"]["distill_seconds"] != sets["infer/ipc2"]["distill_seconds"]
    # dynamic epochs: round(2 / (M + 1)) = 1 (at least one)
    assert results["runs"]["infer_dyn/ipc2/seed0"]["epochs"] == 1 and results["runs"]["infer/ipc2/seed0"]["epochs"] == 2
    assert len(results["teachers"]) == 2 and all(os.path.isfile(t["path"]) for t in results["teachers"])
    on_disk = json.load(open(os.path.join(out, "results.json")))
    assert on_disk["runs"] == results["runs"]
    assert not os.path.exists(os.path.join(out, "students"))  # (every checkpoint in it removed: an empty folder was left)
    md = open(os.path.join(out, "results.md")).read()
    assert "| INFER+Dyn | 2 |" in md and "| SRe2L | 2 |" in md and format_table(results) in md
    # one ipc: the accuracy-vs-compression picture, linked from results.md
    assert "![compression](accuracy-vs-compression.png)" in md
    assert open(os.path.join(out, "accuracy-vs-compression.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert all(run["history"][-1] == {"epoch": run["epochs"], "test_accuracy": run["final_accuracy"]}
               for run in results["runs"].values())


def test_rerun_continues_without_redoing_work(finished_run, monkeypatch, tmp_path):
    finished, results = finished_run
    # a copy of the finished run: this test rewrites its results (the module's other tests read the original)
    shutil.copytree(finished.out, tmp_path / "run")
    cfg = dataclasses.replace(finished, out=str(tmp_path / "run"))
    calls = []
    import infer_fast.student as student

    original = student.train_student

    def counting(ds, test, scfg, **kwargs):
        calls.append((ds.method, scfg.seed, scfg.dynamic))
        return original(ds, test, scfg, **kwargs)

    monkeypatch.setattr(student, "train_student", counting)
    again = run_pipeline(cfg, progress=False)
    assert calls == [] and again["runs"] == results["runs"]
    # a run lost from the results file (e.g. killed mid-way) is redone, and only that one
    path = os.path.join(cfg.out, "results.json")
    data = json.load(open(path))
    del data["runs"]["sre2l/ipc2/seed1"]
    json.dump(data, open(path, "w"))
    third = run_pipeline(cfg, progress=False)
    assert calls == [("sre2l", 1, False)] and sorted(third["runs"]) == sorted(results["runs"])


def test_changed_settings_are_refused(finished_run):
    cfg, _ = finished_run
    other = tiny_config(cfg.out, recovery={"iterations": 3})
    with pytest.raises(ValueError, match="recovery"):
        run_pipeline(other, progress=False)


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(learning_rate=1), "unknown option"),
        (dict(methods=["infer", "dc"]), "methods"),
        (dict(ipc=[1]), "ipc=1 is too small"),
        (dict(ipc=[0]), "ipc"),
        (dict(student={"lr": 1e-3, "epochz": 3}), "student: unknown option"),
        (dict(recovery={"iterations": 0}), "recovery: iterations"),
        (dict(teachers=[{"path": "t.pt", "epochs": 3}]), "path and training settings"),
        (dict(teachers=[]), "teachers"),
        (dict(teachers=[{"model": "resnet18-imagenet", "pretrained": True, "epochs": 3}]), "model and pretrained only"),
        (dict(seeds=0), "seeds"),
        (dict(accounting="paper"), "accounting"),
    ],
)
def test_config_errors_name_the_option(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(tmp_path / "x", **change)
    assert not (tmp_path / "x").exists()  # refused before anything runs


def test_missing_teacher_file(tmp_path):
    cfg = tiny_config(tmp_path / "x", teachers=[{"path": str(tmp_path / "nope.pt")}], methods=["random"])
    with pytest.raises(FileNotFoundError, match="teachers\\[0\\]"):
        run_pipeline(cfg, progress=False)


def test_presets_load():
    root = os.path.join(os.path.dirname(__file__), "..", "configs")
    presets = [f for f in os.listdir(root) if f.endswith(".yaml") and not f.startswith("teacher-")]
    assert {"fashion-mnist.yaml", "cifar10.yaml", "cifar100.yaml", "tiny-imagenet.yaml", "imagenet.yaml"} <= set(presets)
    for name in presets:
        cfg = load_pipeline_config(os.path.join(root, name))
        assert cfg.teachers and cfg.ipc


def test_cli_run_from_yaml(tmp_path, capsys, monkeypatch):
    (tmp_path / "exp.yaml").write_text(
        "dataset: fashion-mnist-mini\nout: run\nteachers:\n"
        "  - {model: convnet-w8-d2, epochs: 1, batch_size: 256, lr: 0.05}\n"
        "ipc: 2\nmethods: [infer, random]\nrecovery: {iterations: 2}\n"
        "student: {model: convnet-w8-d2, epochs: 1}\nseeds: 1\ndevice: cpu\n"
    )
    cmd = [sys.executable, "-m", "infer_fast.cli", "run", "exp.yaml", "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "| INFER | 2 |" in result.stdout and "| Random | 2 |" in result.stdout
    assert (tmp_path / "run" / "results.md").exists()
    from infer_fast.cli import main

    monkeypatch.chdir(tmp_path)  # (a refusal: the CLI's main in this process, no second interpreter start)
    assert main(["run", "exp.yaml", "--quiet", "--ipc", "1"]) == 2
    err = capsys.readouterr().err
    assert "ipc=1 is too small" in err and "Traceback" not in err


def test_demo_in_miniature(tmp_path, monkeypatch, capsys):
    from infer_fast import demo

    monkeypatch.setattr(demo, "TEACHERS", [dict(t) for t in TINY_TEACHERS])
    monkeypatch.setattr(demo, "STUDENT", {"model": "convnet-w8-d2", "epochs": 1})
    results = demo.run_demo(out_dir=str(tmp_path / "demo"), iterations=2, epochs=1, progress=False)
    out = capsys.readouterr().out
    assert "kernels vs float64 reference" in out and "cpu " in out
    assert "| INFER | 10 |" in out and "| Random | 10 |" in out and "| SRe2L | 10 |" in out
    assert (tmp_path / "demo" / "infer-preview.png").stat().st_size > 0
    assert results["sets"]["infer/ipc10"]["budget"]["K"] == 8  # floor(10*10 / (10+2))
    with pytest.raises(ValueError, match="--seeds"):
        demo.run_demo(out_dir=str(tmp_path / "d2"), seeds=0)


def test_one_recovery_builder_for_cli_and_run_configs(monkeypatch):
    """`infer-fast distill --augmentation imagenet` and `augmentation: imagenet` in a run
    config get the same recipe (they once differed: r_bn 0.01 and roll up to 32 from the CLI,
    r_bn 1 and roll up to 4 from a config), for INFER and for SRe2L."""
    from infer_fast import cli
    from infer_fast.methods import infer, sre2l
    from infer_fast.distill import RecoveryConfig, recovery_config
    from infer_fast.pipeline import PipelineConfig

    built = {}

    def capture(method):
        def fake(*args, config, **kwargs):
            built[method] = config
            raise KeyboardInterrupt  # stop before anything runs
        return fake

    monkeypatch.setattr(infer, "distill_infer", capture("infer"))
    monkeypatch.setattr(sre2l, "distill_sre2l", capture("sre2l"))
    monkeypatch.setattr("infer_fast.distributed.init_from_env", lambda: (0, 1))
    for method in ("infer", "sre2l"):
        argv = ["distill", "--dataset", "fashion-mnist-mini", "--teachers", "t.pt", "--ipc", "3", "--out", "x",
                "--method", method, "--augmentation", "imagenet", "--seed", "3"]
        assert cli.main(argv) == 130
    run = PipelineConfig.from_dict({"dataset": "fashion-mnist-mini", "teachers": [{"path": "t.pt"}], "out": "o",
                                    "recovery": {"augmentation": "imagenet", "seed": 3}})
    assert built["infer"] == run.options_for("infer")["config"] == RecoveryConfig.imagenet(seed=3)
    assert built["sre2l"] == run.options_for("sre2l")["config"] == recovery_config({"augmentation": "imagenet", "seed": 3},
                                                                                   ["sre2l"])
    assert (built["sre2l"].r_bn, built["sre2l"].max_shift, built["sre2l"].iterations) == (0.01, 32, 4000)  # §6
    argv = ["distill", "--dataset", "fashion-mnist-mini", "--teachers", "t.pt", "--ipc", "3", "--out", "x",
            "--no-cuda-graphs"]
    assert cli.main(argv) == 130 and built["infer"].cuda_graphs is False and RecoveryConfig().cuda_graphs is True
    # given options win over the recipe, and the CIFAR defaults stay the default
    assert recovery_config({"augmentation": "imagenet", "r_bn": 0.5}).r_bn == 0.5
    assert recovery_config({}) == RecoveryConfig()
    with pytest.raises(ValueError, match="unknown option"):
        recovery_config({"rbn": 1.0})


@pytest.mark.parametrize("options,match", [
    ({"r_bn": "high"}, "r_bn must be a finite number.*, got 'high'"),
    ({"lr": None}, "lr must be a finite number"),
    ({"betas": "0.5,0.9"}, "betas must be two values"),
    ({"crop_scale": ["a", 1]}, "crop_scale must be two values"),
    ({"augmentation": 3}, "augmentation must be a string"),
])
def test_recovery_options_of_the_wrong_type_name_the_option(options, match):
    """A YAML value of the wrong type is a one-line ValueError naming the option, not a TypeError."""
    from infer_fast.distill import recovery_config
    from infer_fast.pipeline import PipelineConfig

    with pytest.raises(ValueError, match=match):
        recovery_config(options)
    with pytest.raises(ValueError, match="recovery: " + match):
        PipelineConfig.from_dict({"dataset": "fashion-mnist-mini", "teachers": [{"path": "t.pt"}], "out": "o",
                                  "recovery": options})


def test_scores_of_every_set_inside_the_run(finished_run, tmp_path, monkeypatch):
    """scores: true adds DD-Ranking's scores of every set to results.json and results.md (INFER+Dyn's,
    which has no static labels, with labels per batch, as DD-Ranking scores a method in its own
    label mode), with the full-data accuracy recorded by the teacher of the student's
    architecture; a rerun does not evaluate again."""
    import shutil

    cfg, _ = finished_run
    shutil.copytree(cfg.out, tmp_path / "run")
    scored = tiny_config(tmp_path / "run", seeds=1, scores=True)
    results = run_pipeline(scored, progress=False)
    assert sorted(results["scores"]) == ["infer/ipc2", "infer_dyn/ipc2", "random/ipc2", "sre2l/ipc2"]
    assert not (tmp_path / "run" / "students").exists()  # (the full-data accuracy is the teacher's: nothing kept)
    report = results["scores"]["infer/ipc2"]
    assert report["full_data_hard"]["accuracy"] == results["teachers"][0]["test_accuracy"]
    assert 0.0 <= report["scores"]["lrs"]["mean"] <= 1.0 and len(report["per_seed"]) == 1
    assert report["protocol"]["soft_labels"] == "static"
    assert results["scores"]["infer_dyn/ipc2"]["protocol"]["soft_labels"] == "per-batch"
    md = (tmp_path / "run" / "results.md").read_text().split("DD-Ranking scores")[1]
    assert "| INFER | 2 |" in md and "| INFER+Dyn (labels per batch) | 2 |" in md
    import infer_fast.evaluate as evaluate

    monkeypatch.setattr(evaluate, "evaluate_set", lambda *a, **k: pytest.fail("evaluated again"))
    assert run_pipeline(scored, progress=False)["scores"].keys() == results["scores"].keys()
    with pytest.raises(ValueError, match="scores must be true, false, a protocol"):
        tiny_config(tmp_path / "x", scores="yes")
    with pytest.raises(ValueError, match="scores: unknown option.*lr_grids"):
        tiny_config(tmp_path / "x", scores={"protocol": "dd-ranking", "lr_grids": [0.1]})
    with pytest.raises(ValueError, match=r"scores: epochs \(2\) must be at least test_interval \(20\)"):
        tiny_config(tmp_path / "x", scores="dd-ranking")  # (checked before any work)

    # the same sets under DD-Ranking's protocol: scored again (INFER+Dyn's too: labels per batch)
    dd = tiny_config(tmp_path / "run", seeds=1, scores={"protocol": "dd-ranking", "test_interval": 1,
                                                          "lr_grid": [0.001, 0.01]})
    monkeypatch.undo()
    results = run_pipeline(dd, progress=False)
    assert sorted(results["scores"]) == ["infer/ipc2", "infer_dyn/ipc2", "random/ipc2", "sre2l/ipc2"]
    report = results["scores"]["infer/ipc2"]
    assert report["protocol"]["name"] == "dd-ranking" and report["protocol"]["lr_grid"] == [0.001, 0.01]
    assert report["full_data_hard"]["accuracy"] == results["teachers"][0]["test_accuracy"]
    md = (tmp_path / "run" / "results.md").read_text()
    assert "DD-Ranking's protocol" in md and "LRS printed" in md and "| INFER+Dyn | 2 |" in md


def test_imported_sets_join_the_run(finished_run, tmp_path):
    """external: {label: set} trains (and scores) an imported set beside ours under the same
    protocol, at its own ipc; its row, runs and score appear in the results and results.md."""
    import shutil

    from infer_fast.storage import export_imagefolder, import_imagefolder, load_distilled, save_distilled

    cfg, _ = finished_run
    shutil.copytree(cfg.out, tmp_path / "run")
    theirs = load_distilled(tmp_path / "run" / "sets" / "random-ipc2")  # stands in for another method's set
    export_imagefolder(theirs, tmp_path / "folders")
    save_distilled(import_imagefolder(tmp_path / "folders", "fashion-mnist-mini",
                                      soft_labels=tmp_path / "folders" / "soft_labels.safetensors", name="other"),
                   tmp_path / "imported")
    config = tiny_config(tmp_path / "run", methods=["infer", "random"], seeds=1, scores=True,
                         external={"Other": str(tmp_path / "imported")})
    results = run_pipeline(config, progress=False)
    rows = {r["label"]: r for r in results["table"]}
    assert rows["Other"]["ipc"] == 2 and rows["Other"]["seeds"] == 1
    # the same images and labels as the random set, the same student seed: the same accuracy
    assert rows["Other"]["accuracy_mean"] == results["runs"]["random/ipc2/seed0"]["final_accuracy"]
    assert "external:Other/ipc2" in results["scores"]
    md = (tmp_path / "run" / "results.md").read_text()
    assert "| Other | 2 |" in md
    for bad, match in (({"INFER": str(tmp_path / "imported")}, "names of this run's own methods"),
                       ({"a/b": str(tmp_path / "imported")}, "labels"),
                       ({"X": str(tmp_path / "nowhere")}, "no such distilled set")):
        with pytest.raises(ValueError, match=match):
            tiny_config(tmp_path / "x", external=bad)


def test_feature_duplication_at_ipc1_is_skipped_with_a_note_before_work(finished_run, tmp_path, capsys):
    """At ipc 1 a set of images has one training image per class, where feature duplication is
    undefined: the run says so before any work (its first line) and records null with a note;
    INFER's set (K natural + K*M composed images per class) is measured; quiet: no note."""
    from infer_fast.distill import distill_random
    from infer_fast.relabel import relabel_directory

    cfg, results = finished_run
    distill_random("fashion-mnist-mini", 1, tmp_path / "theirs", seed=5)
    relabel_directory(tmp_path / "theirs", [results["teachers"][0]["path"]], progress=False)
    teachers = [{"path": t["path"]} for t in results["teachers"]]
    config = tiny_config(tmp_path / "run", teachers=teachers, ipc=[1], accounting="ipc", methods=["infer", "random"],
                         seeds=1, student={"model": "convnet-w8-d2", "epochs": 1, "batch_size": 64, "device": "cpu"},
                         external={"Other": str(tmp_path / "theirs")})
    ran = run_pipeline(config, progress=True)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("feature duplication: skipped for Random ipc 1, Other ipc 1 "
                        "(undefined with one training image per class)")
    assert sum(line.startswith("feature duplication") for line in lines) == 1
    for key in ("random/ipc1", "external:Other/ipc1"):
        assert ran["sets"][key]["feature_duplication"] is None
        assert ran["sets"][key]["feature_duplication_note"] == "undefined: one training image per class"
    assert -1.0 <= ran["sets"]["infer/ipc1"]["feature_duplication"] <= 1.0
    run_pipeline(config, progress=False)  # (all done: nothing to say)
    assert "feature duplication" not in capsys.readouterr().out


def test_scores_follow_the_protocol_settings(finished_run, tmp_path, monkeypatch):
    """A set's scores are kept only when made under the protocol settings of this session:
    more seeds, another weight or random subset score it again (the report then records the
    config's settings); a result-neutral change (the students' device) keeps them."""
    import shutil

    cfg, _ = finished_run
    shutil.copytree(cfg.out, tmp_path / "run")

    def config(seeds, scores=True, **student):
        return tiny_config(tmp_path / "run", methods=["random"], seeds=seeds, scores=scores,
                           student={**cfg.student, **student})

    report = run_pipeline(config(1), progress=False)["scores"]["random/ipc2"]
    assert report["protocol"]["seeds"] == 1 and len(report["per_seed"]) == 1
    report = run_pipeline(config(2), progress=False)["scores"]["random/ipc2"]
    assert report["protocol"]["seeds"] == 2 and len(report["per_seed"]) == 2
    weighted = {"protocol": "infer-fast", "weight": 1.0, "random_subset_seed": 7}
    report = run_pipeline(config(2, weighted), progress=False)["scores"]["random/ipc2"]
    assert report["protocol"]["weight"] == 1.0 and [s["random_subset_seed"] for s in report["per_seed"]] == [7, 7]
    import infer_fast.evaluate as evaluate

    monkeypatch.setattr(evaluate, "evaluate_set", lambda *a, **k: pytest.fail("scored again"))
    assert run_pipeline(config(2, weighted, device="auto"), progress=False)["scores"]["random/ipc2"] == report


def test_a_teacher_without_an_accuracy_is_not_the_full_data_run(finished_run, tmp_path):
    """A teacher of the students' architecture made from pretrained weights records no test
    accuracy: the run's scores train the full-data run instead of failing after the students."""
    from infer_fast.teacher import load_teacher, pretrained_teacher

    cfg, results = finished_run
    torch.save(load_teacher(results["teachers"][0]["path"])[0].state_dict(), tmp_path / "weights.pth")
    pretrained_teacher("convnet-w8-d2", "fashion-mnist-mini", str(tmp_path / "pretrained.pt"),
                       pretrained=str(tmp_path / "weights.pth"))
    config = tiny_config(tmp_path / "run", teachers=[{"path": str(tmp_path / "pretrained.pt")}], methods=["random"],
                         seeds=1, student={**cfg.student, "epochs": 1}, scores={"protocol": "infer-fast", "full_data_epochs": 1})
    report = run_pipeline(config, progress=False)["scores"]["random/ipc2"]
    assert report["full_data_hard"]["source"] == "trained here: convnet-w8-d2, 1 epoch of the teacher recipe"
