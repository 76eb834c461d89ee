"""Advice that, followed where it is said, works: the pretrained weights' key in each config,
YAML's null for an option's None, the --resume flag, a patches count that fits the set's images,
import's flags and an export of another dataset, and a demo given another run's directory."""
import json
import time

import pytest
import torch

from infer_fast.cli import main


def _cli(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


# 1. a built-in model without cached weights: the key of each place a weights file is given


def test_pretrained_advice_names_the_model_as_typed_and_each_place_to_give_a_file(tmp_path, capsys, monkeypatch):
    from infer_fast.models import create_model
    from infer_fast.pipeline import prepare_teachers
    from infer_fast.run_config import load_pipeline_config

    monkeypatch.chdir(tmp_path)
    status, _, err = _cli(capsys, "teacher", "--out", "tx.pt", "--pretrained", "convnet-w32-d3")
    assert status == 2 and err.count("\n") == 1
    assert "built-in model 'convnet-w32-d3' has no pretrained weights" in err  # (as typed, not 'convnet')
    assert ("(--weights FILE; `weights: FILE` in a teacher config; `pretrained: FILE` in a run's teachers entry: "
            in err)
    # following each: a teacher config's weights key, and a run's teachers entry's pretrained key
    torch.save(create_model("convnet-w32-d3", num_classes=10, in_channels=1, image_size=28).state_dict(), "w.pt")
    (tmp_path / "t.yaml").write_text("pretrained: convnet-w32-d3\nweights: w.pt\ndataset: fashion-mnist-mini\n")
    status, out, err = _cli(capsys, "teacher", "--config", "t.yaml", "--out", "tc.pt")
    assert status == 0, err
    assert "pretrained weights from w.pt" in out
    (tmp_path / "r.yaml").write_text("dataset: fashion-mnist-mini\nout: run\n"
                                     "teachers: [{model: convnet-w32-d3, pretrained: w.pt}]\n")
    [written] = prepare_teachers(load_pipeline_config("r.yaml"), False)
    assert (tmp_path / written).is_file()


# 2. YAML's off/no is false, and only null is None


def test_a_yaml_false_for_an_option_of_none_says_to_write_null(tmp_path):
    from infer_fast.distill import RecoveryConfig
    from infer_fast.run_config import load_pipeline_config

    with pytest.raises(ValueError, match=r"^checkpoint_minutes must be a finite number or None \(off\), got False "
                                         r"\(YAML reads unquoted on/off/yes/no as true/false: write null for None\)$"):
        RecoveryConfig(checkpoint_minutes=False)
    with pytest.raises(ValueError, match=r"checkpoint_every must be a positive integer or None \(off\), got False "
                                         r"\(YAML reads unquoted"):
        RecoveryConfig(checkpoint_every=False)
    with pytest.raises(ValueError, match=r"got 'off' \(write null for None\)$"):
        RecoveryConfig(checkpoint_minutes="off")
    with pytest.raises(ValueError, match=r"^checkpoint_minutes must be a finite number or None \(off\), got 'x'$"):
        RecoveryConfig(checkpoint_minutes="x")  # (no hint for a word that is no attempt at None)
    head = "dataset: fashion-mnist-mini\nout: run\nteachers: [{model: resnet18-imagenet, pretrained: true}]\n"
    (tmp_path / "off.yaml").write_text(head + "recovery: {checkpoint_minutes: off}\n")
    with pytest.raises(ValueError, match="got False .*write null for None"):
        load_pipeline_config(str(tmp_path / "off.yaml"))
    (tmp_path / "null.yaml").write_text(head + "recovery: {checkpoint_minutes: null}\n")  # (the hint, followed)
    assert load_pipeline_config(str(tmp_path / "null.yaml")).recovery["checkpoint_minutes"] is None


# 3. an existing checkpoint: the CLI's flag first


RESUME_HINT = r"exists: run the same command with --resume \(resume=True from Python\) to continue it, or "


def test_an_existing_recovery_checkpoint_says_to_rerun_with_resume(tmp_path):
    from infer_fast.distill import RecoveryConfig
    from infer_fast.distill.checkpoints import CheckpointStore

    base = tmp_path / "o2.recovery.pt"
    base.write_bytes(b"")
    with pytest.raises(ValueError, match=f"^recovery checkpoint '{base}' {RESUME_HINT}delete it$"):
        CheckpointStore.open(base, {}, RecoveryConfig(), resume=False, split_jobs=False)


def test_an_existing_rded_checkpoint_says_to_rerun_with_resume(tmp_path):
    from infer_fast.methods.rded_checkpoint import RDEDCheckpoint

    path = tmp_path / "o.recovery.pt"
    path.write_bytes(b"")  # (refused before it is read)
    checkpoint = RDEDCheckpoint(path, dict, None, False, time.monotonic)
    with pytest.raises(ValueError, match=f"^RDED checkpoint '{path}' {RESUME_HINT}delete it and .* to start over$"):
        checkpoint.restore(torch.zeros(10, 1, 28, 28), torch.Generator(), 10)


# 4. shuffled patches: the count checked against the set's images before any training


@pytest.fixture(scope="module")
def random_set_dir(tmp_path_factory):
    from infer_fast.data import load_dataset
    from infer_fast.methods.random import random_set
    from infer_fast.storage.disk import save_distilled

    path = tmp_path_factory.mktemp("set") / "rs"
    save_distilled(random_set(load_dataset("fashion-mnist-mini", "train"), 1, seed=0), path)
    return path


PATCHES_REFUSED = r"patches=100 \(--patches\) cuts 28x28 images into patches under one pixel: use patches <= 28"


def test_too_many_patches_for_the_sets_images_names_the_option(random_set_dir, tmp_path, capsys):
    from infer_fast.data import load_dataset
    from infer_fast.storage import load_distilled
    from infer_fast.student import StudentConfig, evaluate_seeds

    status, _, err = _cli(capsys, "train", random_set_dir, "--epochs", "1", "--labels", "hard",
                          "--augmentation", "shuffle_patches_crop_flip", "--patches", "100")
    assert status == 2
    assert err == f"infer-fast train: error: {PATCHES_REFUSED.replace(chr(92), '')}\n"
    cfg = StudentConfig(epochs=1, labels="hard", augmentation="shuffle_patches_crop_flip", patches=100)
    # (from Python no flag is named: before any seed, or its checkpoints folder)
    with pytest.raises(ValueError, match=f"^{PATCHES_REFUSED.replace(' ' + chr(92) + '(--patches' + chr(92) + ')', '')}$"):
        evaluate_seeds(load_distilled(random_set_dir), load_dataset("fashion-mnist-mini", "test"), cfg,
                       seeds=[0], checkpoints=tmp_path / "ck")
    assert not (tmp_path / "ck").exists()


def test_a_run_refuses_too_many_patches_before_any_work(tmp_path):
    from infer_fast.run_config import PipelineConfig

    config = {"dataset": "fashion-mnist-mini", "methods": ["random"], "ipc": [1], "out": str(tmp_path / "run"),
              "teachers": [{"model": "convnet-w8-d2", "epochs": 1}],
              "student": {"augmentation": "shuffle_patches_crop_flip", "patches": 100, "epochs": 1}}
    with pytest.raises(ValueError, match=r"patches=100 \(student: patches\) cuts 28x28 images .* use patches <= 28"):
        PipelineConfig.from_dict(config)
    PipelineConfig.from_dict({**config, "student": {**config["student"], "patches": 28}})
    assert not (tmp_path / "run").exists()


# 5. import: the flag import takes, and an export of another dataset


def test_an_image_folder_of_another_size_names_import_flag_and_pythons_mapping(tmp_path, capsys):
    from PIL import Image

    for c in range(3):
        (tmp_path / "raw" / str(c)).mkdir(parents=True)
        Image.new("RGB", (28, 28), (20 * c, 0, 0)).save(tmp_path / "raw" / str(c) / "a.png")
    status, _, err = _cli(capsys, "import", "--dataset", "imagefolder", tmp_path / "raw", "--out", tmp_path / "i")
    assert status == 2
    assert err.endswith("import the set at its size with --image-size 28 (from Python: \"image_size\": 28 in "
                        "import_imagefolder's dataset mapping)\n")
    assert "in a dataset mapping)" not in err  # (import's --dataset takes a name only)
    assert _cli(capsys, "import", "--dataset", "imagefolder", tmp_path / "raw", "--image-size", "28",
                "--out", tmp_path / "i")[0] == 0
    from infer_fast.storage import import_imagefolder

    assert import_imagefolder(tmp_path / "raw", {"name": "imagefolder", "image_size": 28}).image_size == (28, 28)


def test_an_export_of_another_dataset_says_which_dataset_it_is_of(random_set_dir, tmp_path, capsys):
    assert _cli(capsys, "export", random_set_dir, tmp_path / "ex")[0] == 0
    status, _, err = _cli(capsys, "import", "--dataset", "tiny-imagenet", tmp_path / "ex", "--out", tmp_path / "i")
    assert status == 2
    assert err == (f"infer-fast import: error: {tmp_path / 'ex' / 'export.json'}: the export is of fashion-mnist-mini "
                   "(10 classes), not of this dataset (200 classes): import it as the dataset it was exported from\n")
    assert _cli(capsys, "import", "--dataset", "fashion-mnist-mini", tmp_path / "ex", "--out", tmp_path / "i")[0] == 0


# 6. another run's directory: the differences capped; the demo's own words


def test_another_run_message_lists_the_first_differences_then_a_count():
    from infer_fast.run_identity import another_run_message

    names = [f"option{i}" for i in range(8)]
    message = another_run_message("results file", "r.json", names, "choose another out",
                                  recorded={name: i for i, name in enumerate(names)})
    assert message == ("results file 'r.json' belongs to another run (option0, option1, option2, option3, option4 "
                       "and 3 more differ; recorded option0=0, option1=1, option2=2, option3=3, option4=4): "
                       "choose another out")


def test_the_demo_refuses_another_runs_directory_in_its_own_words(tmp_path, capsys):
    from infer_fast.demo import _check_not_another_run, demo_config
    from infer_fast.results import recorded_config

    out = tmp_path / "other"
    out.mkdir()
    other = {"dataset": "fashion-mnist-mini", "teachers": [{"model": "convnet-w32-d3", "pretrained": "w.pt"}],
             "ipc": [1], "methods": ["random"]}
    (out / "results.json").write_text(json.dumps({"config": other}))
    status, _, err = _cli(capsys, "demo", "--out", out)
    assert status == 2
    assert err == f"infer-fast demo: error: out (--out): {out} holds another run, not the demo's: choose another --out\n"
    # a demo's run of other flags is the demo's: left to the run's own check (which names the flag's setting)
    (out / "results.json").write_text(json.dumps({"config": recorded_config(demo_config(str(out), epochs=3))}))
    _check_not_another_run(demo_config(str(out)))
