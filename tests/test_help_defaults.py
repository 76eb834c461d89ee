"""Facts stated once: the defaults `distill --help` quotes for a flag several methods share are
each method's own (CDA's recipes too); the image-size threshold of the help texts is
data.registry's SMALL_IMAGE_MAX; `train` checks the options given before the set is read
without a recipe of its own; INFER's run-level settings (accounting, selection) and the distill
command's request defaults come from their declarations. Fast: nothing trains."""
import argparse
import dataclasses
import types

import pytest

from infer_fast import cli
from infer_fast.data import registry as data_registry
from infer_fast.data.registry import SMALL_IMAGE_MAX, recipe_family
from infer_fast.distill.config import RecoveryConfig
from infer_fast.methods import DistillRequest, all_methods, get_method
from infer_fast.methods import distill_options as distill_options_module
from infer_fast.methods.infer import ACCOUNTING, SELECTION, infer_budget
from infer_fast.methods.registry import parsed_option_values
from infer_fast.options import check_value, format_default, options_of
from infer_fast.run_config import PipelineConfig
from infer_fast.storage import load_distilled
from infer_fast.student import StudentConfig

SMALL, LARGE = "fashion-mnist-mini", "imagenet"  # a dataset of the cifar family, one of the imagenet family


def _parser(command):
    parser = cli.build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]


def _flag_helps(command):
    return {a.dest: " ".join(a.help.split()) for a in _parser(command)._actions if a.option_strings}


# ---- 1: each method's defaults of a shared flag, its recipes' included ---------------------------

def test_the_defaults_a_method_reports_are_the_ones_it_runs_with():
    for method in (m for m in all_methods() if m.distill is not None):
        by_family = method.family_option_defaults()
        for dataset in (SMALL, LARGE):
            ran = parsed_option_values(method.options_for_dataset({}, dataset))
            reported = by_family[recipe_family(dataset)]
            assert {k: reported[k] for k in ran if k in reported} == {k: v for k, v in ran.items() if k in reported}, \
                (method.name, dataset)


def test_distill_help_gives_cdas_own_defaults_of_the_recovery_flags():
    helps = _flag_helps("distill")
    cda = get_method("cda")
    small, large = (cda.options_for_dataset({}, d)["config"] for d in (SMALL, LARGE))
    assert (small.iterations, small.lr, small.r_bn, small.augmentation) != (
        RecoveryConfig.iterations, RecoveryConfig.lr, RecoveryConfig.r_bn, RecoveryConfig.augmentation)
    for name in ("iterations", "lr", "r_bn", "augmentation", "crop_scale_curriculum"):
        said = f"{format_default(getattr(small, name))} for --method cda"
        if getattr(large, name) != getattr(small, name):
            said += f" ({format_default(getattr(large, name))} for the imagenet family)"
        assert said in helps[name], (name, helps[name])
    # SRe2L's, where they are not INFER's (the first method taking the flags)
    sre2l = get_method("sre2l").options_for_dataset({}, SMALL)["config"]
    assert f"{format_default(sre2l.r_bn)} for --method sre2l" in helps["r_bn"]
    # (a flag every method takes alike says its default once)
    assert helps["eps"].endswith(f"(default {format_default(RecoveryConfig.eps)})")


# ---- 2: the image-size threshold, and train's checks before the set is read ------------------------

def test_help_texts_say_the_image_size_threshold_of_the_registry(monkeypatch):
    said = f"over {SMALL_IMAGE_MAX} px"
    assert said in options_of(RecoveryConfig)["augmentation"].help
    monkeypatch.setattr(data_registry, "SMALL_IMAGE_MAX", SMALL_IMAGE_MAX + 32)  # (the CLI's texts are made each time)
    moved = f"over {SMALL_IMAGE_MAX + 32} px"
    assert moved in " ".join(_parser("distill").description.split())
    assert moved in _flag_helps("train")["recipe"]


def test_train_makes_its_student_config_once_with_the_sets_recipe(monkeypatch):
    """No config of another recipe is made before the set is read (the options given are checked
    as a config of none): a large-image set gets the imagenet recipe, and only that."""
    recipes = []
    make = StudentConfig.from_recipe.__func__
    monkeypatch.setattr(StudentConfig, "from_recipe",
                        classmethod(lambda cls, name, **kw: recipes.append(name) or make(cls, name, **kw)))
    large_set = types.SimpleNamespace(method="random", hyperparameters={},
                                      image_size=(SMALL_IMAGE_MAX + 32,) * 2,
                                      real_dataset={"name": "imagefolder", "num_classes": 3,
                                                    "image_size": SMALL_IMAGE_MAX + 32})
    monkeypatch.setattr("infer_fast.storage.load_distilled", lambda path: large_set)
    monkeypatch.setattr("infer_fast.teacher.load_teachers_for_set",
                        lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))  # (stop: the config is made)
    assert cli.main(["train", "set", "--augmentation", "resized_crop_flip", "--mix", "cutmix", "--device", "cpu"]) == 130
    assert recipes == ["imagenet"]


def test_train_checks_each_option_given_before_the_set_is_read(monkeypatch, capsys):
    read = []
    monkeypatch.setattr("infer_fast.storage.load_distilled", lambda path: read.append(path))
    assert cli.main(["train", "no-such-set", "--lr", "-1"]) == 2
    assert "argument --lr: must be positive, got -1.0" in capsys.readouterr().err and read == []


# ---- 3: INFER's run-level settings and the distill request's defaults, from their declarations -------

def test_run_config_takes_accounting_and_selection_from_infers_declarations(monkeypatch):
    config = PipelineConfig(dataset=SMALL, teachers=[{"path": "t.pt"}], out="o")
    assert (config.accounting, config.selection) == (ACCOUNTING.default, SELECTION.default)
    for opt, value in ((ACCOUNTING, "paper"), (SELECTION, True)):  # (YAML reads an unquoted yes as true)
        with pytest.raises(ValueError) as declared:
            check_value(opt, value)
        with pytest.raises(ValueError) as refused:
            PipelineConfig(dataset=SMALL, teachers=[{"path": "t.pt"}], out="o", **{opt.name: value})
        assert str(refused.value) == f"config: {declared.value}"
    # a declaration's default is the run config's (not a second copy of it)
    moved = {o.name: dataclasses.replace(o, default=o.choices[-1]) for o in (ACCOUNTING, SELECTION)}
    monkeypatch.setattr("infer_fast.run_config.run_level_options", lambda: moved)
    config = PipelineConfig(dataset=SMALL, teachers=[{"path": "t.pt"}], out="o")
    assert (config.accounting, config.selection) == (ACCOUNTING.choices[-1], SELECTION.choices[-1])


def test_infer_checks_its_arguments_against_the_declarations():
    with pytest.raises(ValueError) as declared:
        check_value(ACCOUNTING, "paper")
    with pytest.raises(ValueError) as refused:
        infer_budget(10, 10, 4, accounting="paper")
    assert str(refused.value) == str(declared.value)


def test_distill_takes_the_declared_method_and_the_requests_defaults(monkeypatch, tmp_path):
    declared = distill_options_module.distill_request_options

    def random_by_default():
        options = declared()
        return {**options, "method": dataclasses.replace(options["method"], default="random")}

    monkeypatch.setattr(distill_options_module, "distill_request_options", random_by_default)
    out = tmp_path / "set"
    assert cli.main(["distill", "--dataset", SMALL, "--ipc", "1", "--out", str(out), "--quiet"]) == 0
    made = load_distilled(out)
    assert (made.method, made.seed) == ("random", DistillRequest.seed)
