"""Options declared once (infer_fast/options.py): the config dataclasses' field declarations
give the flags, their help (with the real defaults and the recipes' values), the check of a
YAML value and validate(). Fast: nothing here trains or reads a dataset."""
import argparse
import dataclasses
import math

import types

import pytest

from infer_fast import cli
from infer_fast.distill.config import RECIPES as RECOVERY_RECIPE_VALUES
from infer_fast.distill.config import RecoveryConfig, recovery_config
from infer_fast.options import Option, check_value, options_of
from infer_fast.student import RECIPES as STUDENT_RECIPE_VALUES
from infer_fast.student import StudentConfig
from infer_fast.teacher import TeacherConfig


def _command_actions(command):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices[command]._actions if a.option_strings}


def _said_default(opt):
    """How a help text must name the dataclass default (written out here, not by options.py)."""
    if isinstance(opt.default, bool):
        return "on by default" if opt.default else "default off"
    if opt.default is None:
        return f"default: {opt.none}"
    if isinstance(opt.default, tuple):
        return "default [" + ", ".join(str(v) for v in opt.default) + "]"
    return f"default {opt.default}"


@pytest.mark.parametrize("command, config", [("teacher", TeacherConfig), ("distill", RecoveryConfig),
                                             ("train", StudentConfig)])
def test_every_config_option_has_a_flag_whose_help_names_its_default(command, config):
    actions = _command_actions(command)
    declared = options_of(config)
    assert set(declared) == {f for f in config.__dataclass_fields__}
    for name, opt in declared.items():
        if opt.flag is None:  # set by the command itself (the student's seed: train --seeds)
            assert name not in actions
            continue
        action = actions[name]  # a flag for every option
        assert action.default is None  # (the command tells the options given from the others)
        dashed = name.replace("_", "-")
        assert action.option_strings == [f"--no-{dashed}" if opt.default is True else f"--{dashed}"]
        if opt.choices is not None:
            assert tuple(action.choices) == opt.choices
        if name != "dataset":  # (the one field without a default)
            assert _said_default(opt) in action.help, (name, action.help)
    # today's flag names kept
    assert {"--r-bn", "--no-cuda-graphs", "--checkpoint-minutes", "--max-shift", "--group-size", "--chunk-size",
            "--fused-bn", "--channels-last", "--weight-decay", "--batch-size", "--eval-every"} <= {
        s for c in ("distill", "train", "teacher") for a in _command_actions(c).values() for s in a.option_strings}


def test_flag_help_quotes_the_recipes_values():
    distill, train, evaluate = (_command_actions(c) for c in ("distill", "train", "evaluate"))
    assert RECOVERY_RECIPE_VALUES["sre2l"]["r_bn"] == RECOVERY_RECIPE_VALUES["imagenet"]["r_bn"] == 0.01
    assert "default 1.0; 0.01 in the imagenet recipe; 0.01 in the sre2l recipe" in distill["r_bn"].help
    assert "default 4; 32 in the imagenet recipe" in distill["max_shift"].help
    assert "default 400; 300 in the imagenet recipe" in train["epochs"].help
    assert "in the imagenet recipe" not in train["lr"].help  # (the same value in both)
    for name in cli.EVALUATE_STUDENT_OPTIONS:  # evaluate's defaults come from the protocol
        assert "(default: the protocol's recipe" in evaluate[name].help  # (and an RDED set's, where it sets one)


def test_recipes_are_data_selected_by_name():
    from infer_fast.evaluate import Protocol

    # the names the CLI and evaluate check: the recipes' own (defined once, in student.RECIPES)
    assert options_of(Protocol)["recipe"].choices == tuple(STUDENT_RECIPE_VALUES) == ("cifar", "imagenet")
    assert StudentConfig.imagenet() == StudentConfig.from_recipe("imagenet")
    assert (StudentConfig.imagenet().epochs, StudentConfig.cifar().epochs) == (300, 400)
    assert StudentConfig.imagenet(epochs=5).epochs == 5  # the given options override the recipe
    with pytest.raises(ValueError, match="recipe must be one of cifar, imagenet, got 'mnist'"):
        StudentConfig.from_recipe("mnist")
    assert RecoveryConfig.recipe("imagenet", "sre2l") == RecoveryConfig.imagenet(r_bn=0.01)
    assert recovery_config({}, ["sre2l"]) == RecoveryConfig.sre2l() == RecoveryConfig(r_bn=0.01)
    # SRe2L on ImageNet-size images: 4000 iterations (INFER_METHOD.md §6), the imagenet recipe's augmentation
    assert recovery_config({"augmentation": "imagenet", "r_bn": 0.5}, ["sre2l"]) == RecoveryConfig.imagenet(
        r_bn=0.5, iterations=4000)
    # a method's own recipes are named, never a method
    with pytest.raises(ValueError, match="recipe must be one of cifar, imagenet, sre2l, sre2l-imagenet, got 'infer'"):
        recovery_config({}, ["infer"])


@pytest.mark.parametrize("cls, fields, message", [
    (TeacherConfig, dict(dataset="fashion-mnist-mini", momentum=1.0), "momentum must be in [0, 1), got 1.0"),
    (TeacherConfig, dict(dataset="fashion-mnist-mini", model=3), "model must be a string, got 3"),
    (TeacherConfig, dict(dataset=12), "dataset must be a string or a mapping, got 12"),
    (TeacherConfig, dict(dataset="fashion-mnist-mini", data_root=5), "data_root must be a path"),
    (StudentConfig, dict(mixup_alpha=-1.0), "mixup_alpha must be >= 0 (0 disables mixing), got -1.0"),
    (StudentConfig, dict(eval_every=-1), "eval_every must be an integer >= 0, got -1"),
    (StudentConfig, dict(dynamic="yes"), "dynamic must be true or false, got 'yes'"),
    (StudentConfig, dict(lr=0.0), "lr must be positive, got 0.0"),
    (RecoveryConfig, dict(checkpoint_minutes=-1.0), "checkpoint_minutes must be positive or None (off), got -1.0"),
    (RecoveryConfig, dict(group_size=0), "group_size must be a positive integer or None (automatic), got 0"),
    (RecoveryConfig, dict(first_bn_mult=math.inf), "first_bn_mult must be a finite number, got inf"),
    (RecoveryConfig, dict(compile=False), "compile must be a string, got False (YAML reads unquoted on/off"),
    # finite, but beyond what float32 tensors and int64 (tensor sizes, generator seeds) hold
    (TeacherConfig, dict(dataset="fashion-mnist-mini", lr=1e39),
     "lr must be a finite number within float32's range (|x| <= 3.40282e+38), got 1e+39"),
    (TeacherConfig, dict(dataset="fashion-mnist-mini", weight_decay=10**40),
     "weight_decay must be a finite number within float32's range (|x| <= 3.40282e+38), got 1" + "0" * 40),
    (StudentConfig, dict(temperature=-1e39), "temperature must be a finite number within float32's range"),
    (RecoveryConfig, dict(iterations=10**23),
     "iterations must be a positive integer, at most 9223372036854775807 (a 64-bit integer), got 1" + "0" * 23),
    (RecoveryConfig, dict(max_shift=2**63), "max_shift must be an integer >= 0, at most 9223372036854775807"),
    (RecoveryConfig, dict(seed=-2**63 - 1),
     "seed must be an integer from -9223372036854775808 to 9223372036854775807 (a 64-bit integer), got"),
])
def test_a_config_is_checked_when_made_each_field_from_its_declaration(cls, fields, message):
    with pytest.raises(ValueError) as caught:
        cls(**fields)  # (no invalid config can exist: making one is the check)
    assert message in str(caught.value)
    name = message.split()[0]  # the same words from the one checker a YAML value goes through
    with pytest.raises(ValueError) as again:
        check_value(options_of(cls)[name], fields[name])
    assert str(again.value) == str(caught.value)


def test_the_float32_and_int64_limits_are_torchs():
    import torch

    from infer_fast.checks import INT64_MAX, INT64_MIN, check_int
    from infer_fast.options import FLOAT32_MAX

    assert FLOAT32_MAX == torch.finfo(torch.float32).max
    assert (INT64_MIN, INT64_MAX) == (torch.iinfo(torch.int64).min, torch.iinfo(torch.int64).max)
    lr = Option("lr", float, "learning rate", above=0)
    check_value(lr, FLOAT32_MAX)
    check_value(lr, 3)
    check_int("seed", INT64_MIN, minimum=None)
    check_int("seed", INT64_MAX, minimum=None)
    torch.Generator().manual_seed(INT64_MIN)  # (every seed the check lets through, torch takes)
    torch.Generator().manual_seed(INT64_MAX)


def test_command_options_are_checked_by_the_same_checker():
    teachers = Option("teachers", "paths", "teacher checkpoints")
    check_value(teachers, "a.pt,b.pt")
    check_value(teachers, ["a.pt", "b.pt"])
    with pytest.raises(ValueError, match=r"teachers must be a string or a list of strings, got \[1\]"):
        check_value(teachers, [1])


@pytest.mark.parametrize("command, text, message", [
    ("teacher", "dataset: fashion-mnist-mini\nepochs: 0\nout: t.pt\n", "epochs must be a positive integer, got 0"),
    ("teacher", "dataset: fashion-mnist-mini\nepochs: 2.5\nout: t.pt\n", "epochs must be a positive integer, got 2.5"),
    ("teacher", "dataset: fashion-mnist-mini\nmomentum: 1.5\nout: t.pt\n", "momentum must be in [0, 1), got 1.5"),
    ("teacher", "dataset: fashion-mnist-mini\nlr: fast\nout: t.pt\n", "lr must be a finite number, got 'fast'"),
    ("distill", "dataset: fashion-mnist-mini\nipc: 2\nout: x\nteachers: t.pt\nmax_shift: -1\n",
     "max_shift must be an integer >= 0, got -1"),
    ("distill", "dataset: fashion-mnist-mini\nipc: 2\nout: x\nteachers: t.pt\nprecision: fp16\n",
     "precision must be one of fp32, bf16, got 'fp16'"),
    ("distill", "dataset: fashion-mnist-mini\nipc: 2\nout: x\nteachers: [1, 2]\n",
     "teachers must be a string or a list of strings, got [1, 2]"),
    ("distill", "dataset: fashion-mnist-mini\nipc: 2\nout: x\nteachers: t.pt\ncheckpoint_minutes: 0\n",
     "checkpoint_minutes must be positive or None (off), got 0"),
])
def test_yaml_value_of_wrong_type_or_range_refused_naming_the_option(tmp_path, monkeypatch, capsys, command, text,
                                                                       message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(text)
    assert cli.main([command, "--config", "c.yaml"]) == 2
    err = capsys.readouterr().err
    assert f"config file 'c.yaml': {message}" in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_generated_flags_reach_the_configs(monkeypatch):
    """The flags that were not hand-written before (train --weight-decay, --eval-every,
    --schedule; distill --lr, --betas) reach the configs; nothing runs."""
    from infer_fast.methods import infer

    built = {}
    make = StudentConfig.from_recipe.__func__
    monkeypatch.setattr(StudentConfig, "from_recipe",
                        classmethod(lambda cls, name, **kw: built.setdefault("student", make(cls, name, **kw))))
    monkeypatch.setattr("infer_fast.storage.load_distilled", lambda path: types.SimpleNamespace(
        method="random", hyperparameters={}, real_dataset="fashion-mnist-mini", image_size=(28, 28)))
    monkeypatch.setattr("infer_fast.teacher.load_teachers_for_set",
                        lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))  # (stop: the config is made)
    argv = ["train", "set", "--recipe", "imagenet", "--weight-decay", "0.05", "--eval-every", "2", "--schedule",
            "half-cosine", "--device", "cpu"]
    assert cli.main(argv) == 130
    student = built["student"]
    assert (student.weight_decay, student.eval_every, student.schedule, student.device, student.epochs) == (
        0.05, 2, "half-cosine", "cpu", 300)

    def capture(*args, config, **kwargs):
        built["recovery"] = config
        raise KeyboardInterrupt  # stop before anything runs

    monkeypatch.setattr(infer, "distill_infer", capture)
    monkeypatch.setattr("infer_fast.distributed.init_from_env", lambda: (0, 1))
    argv = ["distill", "--dataset", "fashion-mnist-mini", "--teachers", "t.pt", "--ipc", "3", "--out", "x",
            "--lr", "0.1", "--betas", "[0.4, 0.8]", "--no-cuda-graphs"]
    assert cli.main(argv) == 130
    assert built["recovery"] == RecoveryConfig(lr=0.1, betas=(0.4, 0.8), cuda_graphs=False)
    # the tuple flags comma-separated, as the other list flags (--ipc 10,50; --teachers a,b) are
    argv = ["distill", "--dataset", "fashion-mnist-mini", "--teachers", "t.pt", "--ipc", "3", "--out", "x",
            "--betas", "0.4,0.8", "--augmentation", "imagenet", "--crop-scale", "0.2, 0.9",
            "--crop-scale-curriculum", "cosine,0.9,0.5"]
    assert cli.main(argv) == 130
    recovery = built["recovery"]
    assert (recovery.betas, recovery.crop_scale, recovery.crop_scale_curriculum) == (
        (0.4, 0.8), (0.2, 0.9), ("cosine", 0.9, 0.5))


def test_the_students_flags_say_the_defaults_a_sets_method_and_the_protocols_give(capsys, monkeypatch):
    """train: RDED's sets give their students their augmentation and patches (Method.student_settings);
    evaluate: an RDED set's students take per-batch labels, and the settings DD-Ranking sets itself
    are infer-fast's only; --temperature names no flag evaluate lacks."""
    monkeypatch.setenv("COLUMNS", "1000")  # (argparse's lines unwrapped)

    def help_of(command):
        assert cli.main([command, "--help"]) == 0
        return " ".join(capsys.readouterr().out.split())

    train = help_of("train")
    assert "(default crop_flip; resized_crop_flip in the imagenet recipe; shuffle_patches_crop_flip for a set of " \
           "RDED)" in train
    assert "(default 1; the set's factor for a set of RDED)" in train
    evaluate = help_of("evaluate")
    assert "(default: static under infer-fast, per-batch for a set of RDED, per-batch (DD-Ranking's M mode) under " \
           "dd-ranking)" in evaluate
    assert "--lr LR infer-fast: AdamW learning rate" in evaluate and "--labels" not in evaluate
    assert "(default: the protocol's recipe; shuffle_patches_crop_flip for a set of RDED)" in evaluate


def test_a_config_cannot_be_changed_into_an_invalid_one():
    """Checked when made, and frozen: a field cannot be set, and dataclasses.replace makes a new
    config that is checked like any other (so the layers that take one never check it again)."""
    config = StudentConfig(epochs=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 0
    with pytest.raises(ValueError, match="epochs must be a positive integer, got 0"):
        dataclasses.replace(config, epochs=0)
    assert dataclasses.replace(config, epochs=4).epochs == 4 and config.epochs == 3
    with pytest.raises(ValueError, match="r_bn must be"):
        dataclasses.replace(RecoveryConfig.imagenet(), r_bn=-1.0)



def test_functions_that_take_a_config_refuse_anything_else_by_name(tmp_path):
    """A dict of options where a config belongs is refused naming the argument and the class
    that makes one, before any work (not an AttributeError from deep inside)."""
    import torch

    from infer_fast.dd_ranking import evaluate_set_dd_ranking
    from infer_fast.distill import distill_infer, distill_sre2l, recover_sre2l, recover_ufcs
    from infer_fast.evaluate import evaluate_set
    from infer_fast.pipeline import run_pipeline
    from infer_fast.student import evaluate_seeds, train_student
    from infer_fast.teacher import train_teacher

    natural = torch.zeros(1, 2, 1, 4, 4, dtype=torch.uint8)
    calls = [
        (lambda: train_teacher({"dataset": "fashion-mnist-mini"}, str(tmp_path / "t.pt")), "cfg must be a TeacherConfig"),
        (lambda: train_student(None, None, {"epochs": 1}), "config must be a StudentConfig"),
        (lambda: evaluate_seeds(None, None, {"epochs": 1}), "config must be a StudentConfig"),
        (lambda: recover_ufcs(natural, [], [0.5], [0.5], {"iterations": 1}), "config must be a RecoveryConfig"),
        (lambda: recover_sre2l(1, 2, (1, 4, 4), [], [0.5], [0.5], {"iterations": 1}), "config must be a RecoveryConfig"),
        (lambda: distill_infer("fashion-mnist-mini", ["t.pt"], 2, str(tmp_path / "o"), config={}),
         "config must be a RecoveryConfig"),
        (lambda: distill_sre2l("fashion-mnist-mini", ["t.pt"], 2, str(tmp_path / "o"), config={}),
         "config must be a RecoveryConfig"),
        (lambda: evaluate_set(None, [], {"seeds": 1}), "protocol must be a Protocol"),
        (lambda: evaluate_set_dd_ranking(None, [], {"rounds": 1}), "protocol must be a DDRankingProtocol"),
        (lambda: run_pipeline({"dataset": "fashion-mnist-mini"}), "cfg must be a PipelineConfig"),
    ]
    for call, message in calls:
        with pytest.raises(ValueError, match=message + r" \(from options: \w+\(\*\*options\)\), got dict"):
            call()
    assert not any(tmp_path.iterdir())
