"""What the toolkit reads and what its errors advise: a float written 1e-3 in YAML, a teacher's
learning-rate advice where `run` has no --lr, the command that finishes an unfinished teacher,
the presets a command lists, the advice of a lock on a set relabelled in place, and the
--image-size an image folder's import can be given."""
import argparse
import os
import shlex

import pytest
import torch
from conftest import teacher_stopped_after_epoch_1
from PIL import Image

from infer_fast import teacher as teacher_mod
from infer_fast.cli import main, teacher_options
from infer_fast.config import config_file, load_yaml, merge, preset_names, read_yaml, yaml_value
from infer_fast.data import load_dataset
from infer_fast.output_lock import OutputInUseError, holds_output, output_lock
from infer_fast.run_config import load_pipeline_config
from infer_fast.storage import DistilledSetError, import_imagefolder
from infer_fast.teacher import TeacherConfig, load_teacher, train_teacher

TINY = dict(dataset="fashion-mnist-mini", model="convnet-w8-d2", batch_size=20, lr=0.05, seed=3, device="cpu")


@pytest.fixture
def small_data(monkeypatch):
    """Teachers trained on 10 images a class: an epoch takes a moment."""
    def small(name, split, **kwargs):
        return load_dataset(name, split, **kwargs).per_class(10)

    monkeypatch.setattr(teacher_mod, "load_dataset", small)


# 1. a float in exponent form (YAML 1.2's), in a config file and on the command line

@pytest.mark.parametrize("text, value", [("1e-3", 0.001), ("5E4", 50000.0), ("-2e+5", -200000.0), ("1.0e3", 1000.0),
                                         (".5e1", 5.0), ("1.5", 1.5)])
def test_a_float_with_an_exponent_reads_as_a_float(text, value):
    for read in (read_yaml, yaml_value):
        got = read(text)
        assert type(got) is float and got == value, (read, text)


@pytest.mark.parametrize("value", ["1e3", {"root": "1e5"}, "-2E+5", 1e-3, 1000.0, [0.5, 0.9], "abc"])
def test_yaml_text_reads_back_as_it_was_a_string_spelled_like_a_float_quoted(value):
    from infer_fast.config import yaml_text

    assert read_yaml(yaml_text(value)) == value


@pytest.mark.parametrize("text, value", [("10", 10), ("-3", -3), ("1_000", 1000), ("1e", "1e"), ("e5", "e5"),
                                         (".e3", ".e3"), ("1e-3x", "1e-3x")])
def test_ints_stay_ints_and_other_words_strings(text, value):
    got = read_yaml(text)
    assert type(got) is type(value) and got == value


def test_a_teacher_config_file_and_a_run_config_take_lr_1e_3(tmp_path):
    teacher_file = tmp_path / "tc.yaml"
    teacher_file.write_text("dataset: fashion-mnist-mini\nepochs: 1\nlr: 1e-3\n")
    declared = teacher_options()
    options = merge(argparse.Namespace(command="teacher"), str(teacher_file), declared, declared)
    assert TeacherConfig(**options).lr == 0.001
    run_file = tmp_path / "run.yaml"
    run_file.write_text(f"dataset: fashion-mnist-mini\nout: {tmp_path / 'run'}\nteachers: [{{model: convnet-w8-d2}}]\n"
                        "methods: [random]\nipc: [1]\nstudent: {lr: 1e-3, weight_decay: 1E-2}\n")
    assert load_pipeline_config(str(run_file)).student == {"lr": 0.001, "weight_decay": 0.01}
    assert load_yaml(str(run_file))["student"]["lr"] == 0.001


# 3. a diverging teacher names the learning rate as both the teacher command and a run config spell it

def test_a_diverging_teacher_names_lr_as_a_flag_and_as_a_run_config_key(tmp_path, small_data):
    with pytest.raises(teacher_mod.TeacherDivergedError) as info:
        train_teacher(TeacherConfig(epochs=1, **{**TINY, "lr": 1e10}), str(tmp_path / "t.pt"), progress=False)
    assert "try a lower learning rate (--lr; a run config's teachers: lr)" in str(info.value)


# 5. an unfinished teacher's error gives the command that finishes it

def _unfinished_teacher(path, monkeypatch, cfg):
    """A checkpoint of ``cfg``'s training stopped after its first epoch (killed in the second)."""
    teacher_stopped_after_epoch_1(monkeypatch, cfg, path)
    assert torch.load(path, weights_only=True)["train_state"] is not None


def _finishing_command(path) -> str:
    with pytest.raises(ValueError, match=r"is unfinished \(1/2 epochs\): finish its training with `") as info:
        load_teacher(str(path), dataset="fashion-mnist-mini")
    return str(info.value).split("`")[1]


def test_the_command_an_unfinished_teacher_gives_finishes_it(tmp_path, monkeypatch, small_data):
    monkeypatch.chdir(tmp_path)
    cfg = TeacherConfig(epochs=2, momentum=0.8, weight_decay=1e-4, channels_last=True, eval_batch_size=50, **TINY)
    _unfinished_teacher(tmp_path / "unf.pt", monkeypatch, cfg)
    words = shlex.split(_finishing_command("unf.pt"))
    assert words[:2] == ["infer-fast", "teacher"] and words[-2:] == ["--out", "unf.pt"]
    assert main(words[1:] + ["--quiet"]) == 0  # (a setting given otherwise: "belongs to another run")
    _, meta = load_teacher("unf.pt", dataset="fashion-mnist-mini")
    assert meta["epochs_done"] == 2 and meta["config"] == torch.load("unf.pt", weights_only=True)["config"]


def test_a_dataset_mapping_is_piped_in_as_a_config_and_the_command_finishes_the_teacher(tmp_path, monkeypatch,
                                                                                        small_data):
    """An image folder's: the data root (result-neutral, but where the data is) is in the command."""
    from infer_fast.data.folders import write_image_folder

    monkeypatch.chdir(tmp_path)
    images = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for split in ("train", "test"):
        write_image_folder(str(tmp_path / "my data" / split), images, torch.arange(2).repeat_interleave(10))
    dataset = {"name": "imagefolder", "image_size": 8}
    _unfinished_teacher(tmp_path / "m.pt", monkeypatch, TeacherConfig(
        epochs=2, **{**TINY, "dataset": dataset, "data_root": str(tmp_path / "my data")}))
    with pytest.raises(ValueError, match=r"is unfinished \(1/2 epochs\): finish its training with `") as info:
        load_teacher("m.pt")
    echo, command = str(info.value).split("`")[1].split(" | ")
    piped = shlex.split(echo)
    assert piped[0] == "echo" and read_yaml(piped[1]) == {"dataset": dataset}
    words = shlex.split(command)
    assert words[:4] == ["infer-fast", "teacher", "--config", "/dev/stdin"]
    assert words[words.index("--data-root") + 1] == str(tmp_path / "my data") and "--device" not in words
    read, write = os.pipe()  # (the command's stdin: what echo writes)
    os.write(write, (piped[1] + "\n").encode())
    os.close(write)
    stdin = os.dup(0)
    os.dup2(read, 0)
    try:
        assert main(words[1:] + ["--quiet"]) == 0
    finally:
        os.dup2(stdin, 0)
        os.close(stdin)
        os.close(read)
    assert torch.load("m.pt", weights_only=True)["train_state"] is None


# 6. a missing preset: the error lists the command's own presets

def test_a_command_lists_its_own_presets_and_says_whose_another_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    teacher_presets, run_presets = preset_names("teacher"), preset_names("run")
    assert teacher_presets and run_presets and sorted(teacher_presets + run_presets) == preset_names()
    with pytest.raises(FileNotFoundError) as info:
        config_file("teacher-fashion-mnist-minii", command="teacher")
    assert f"(presets: {', '.join(teacher_presets)})" in str(info.value)
    with pytest.raises(FileNotFoundError) as info:
        config_file("fashion-mnistt", command="run")
    assert f"(presets: {', '.join(run_presets)})" in str(info.value)
    with pytest.raises(FileNotFoundError, match="'fashion-mnist' is a preset of `infer-fast run`, not of "
                                                "`infer-fast teacher`"):
        config_file("fashion-mnist", command="teacher")
    with pytest.raises(FileNotFoundError, match=r"^config file 'nope' does not exist \(`infer-fast distill` has "
                                                r"no presets\)$"):
        config_file("nope", command="distill")


def test_the_teacher_and_distill_commands_list_their_own_presets(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["teacher", "--config", "fashion-mnist", "--out", "x.pt"]) == 2
    err = capsys.readouterr().err
    assert "is a preset of `infer-fast run`, not of `infer-fast teacher`" in err
    assert f"(presets: {', '.join(preset_names('teacher'))})" in err and " cifar100," not in err
    assert main(["run", "fashion-mnistt"]) == 2  # (run's config, through load_pipeline_config)
    err = capsys.readouterr().err
    assert f"(presets: {', '.join(preset_names('run'))})" in err and "teacher-cifar10" not in err
    assert main(["distill", "--config", "teacher-cifar10", "--dataset", "fashion-mnist-mini", "--ipc", "1",
                 "--out", "x"]) == 2
    assert "(`infer-fast distill` has no presets)" in capsys.readouterr().err


# 8. a lock's advice fits its caller: a set relabelled in place has no other output to choose

def test_a_lock_advises_what_its_caller_says_and_nothing_else_where_there_is_nothing(tmp_path):
    target = tmp_path / "set"

    @holds_output("directory", "distilled set", every_rank=False, instead=None)
    def rewrite_in_place(directory):
        return directory

    with output_lock(target, "distilled set"):  # (another writer: a second flock on the file is refused)
        with pytest.raises(OutputInUseError, match=r"is being written by process \d+: wait for it to finish$"):
            rewrite_in_place(target)
        with pytest.raises(OutputInUseError, match=r": wait for it to finish, or choose another --out$"):
            with output_lock(target, "distilled set", instead="choose another --out"):
                pass
        with pytest.raises(OutputInUseError, match=r": wait for it to finish, or choose another output$"):
            with output_lock(target, "distilled set"):
                pass
        # relabel rewrites the set in place: it offers no other output
        from infer_fast.relabel import relabel_directory

        with pytest.raises(OutputInUseError, match=r"is being written by process \d+: wait for it to finish$"):
            relabel_directory(target, [])


# 13. an image folder of another size names --image-size; a dataset of one size says it is not resized

def _folders(root, classes, size):
    for c in range(classes):
        (root / str(c)).mkdir(parents=True)
        Image.new("RGB", (size, size), (20 * c, 0, 0)).save(root / str(c) / "img_00.png")
    return root


def test_an_image_folder_of_another_size_names_image_size(tmp_path, capsys):
    root = _folders(tmp_path / "folders", 3, 28)
    with pytest.raises(DistilledSetError, match=r"28x28 pixels, the dataset's images are 32x32 \(import does not "
                                                r"resize\): import the set at its size with --image-size 28 "
                                                r"\(from Python: \"image_size\": 28 in import_imagefolder's dataset mapping\)$"):
        import_imagefolder(root, {"name": "imagefolder", "num_classes": 3})
    assert main(["import", str(root), "--dataset", "imagefolder", "--num-classes", "3", "--image-size", "28",
                 "--out", str(tmp_path / "set")]) == 0


def test_a_dataset_of_one_size_says_import_does_not_resize(tmp_path):
    root = _folders(tmp_path / "folders", 10, 28)
    with pytest.raises(DistilledSetError) as info:
        import_imagefolder(root, "cifar10")
    assert str(info.value).endswith("28x28 pixels, the dataset's images are 32x32 (import does not resize)")
