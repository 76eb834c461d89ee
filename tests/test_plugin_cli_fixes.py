"""A user's models, methods and datasets (plug-ins) kept apart from the built-ins, their errors
named as theirs; the CLI's evaluate --out, warnings, run --quiet and early Ctrl-C."""
import dataclasses
import json
import os
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import train_tiny_teachers
from infer_fast import cli
from infer_fast.cli import main
from infer_fast.data import load_dataset
from infer_fast.data import registry as data_registry
from infer_fast.data.registry import DatasetSpec, get_dataset, register_dataset
from infer_fast.evaluate import REPORT_FORMAT
from infer_fast.methods import DistillRequest, Method, get_method, register, unregister
from infer_fast.models import create_model
from infer_fast.models import registry as model_registry
from infer_fast.models.registry import ModelSpec, resolve
from infer_fast.models.resnet import ResNet

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def _linear(num_classes, in_channels=3, image_size=32, **kw):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, num_classes))


def _boom_builder(num_classes, in_channels=3, image_size=32, **kw):
    raise RuntimeError("boom in my model builder")


@pytest.fixture
def own_models():
    """model_registry.register for the test, every model it adds removed after it."""
    names = []

    def add(spec):
        model_registry.register(spec)
        names.append(spec.name)  # (once registered: a refused one may be named as a built-in)
        return spec

    yield add
    for name in names:
        model_registry.unregister(name)


@pytest.fixture
def own_methods():
    names = []

    def add(method):
        register(method)
        names.append(method.name)
        return method

    yield add
    for name in names:
        unregister(name)


# ---- 1: a model's name is its own -----------------------------------------------------------------

@pytest.mark.parametrize("name,aliases,taken", [
    ("resnet18", (), "already registered for model 'resnet18'"),
    ("mynet", ("resnet-18",), "already registered for model 'resnet18'"),
    ("convnet", (), "already registered for model 'convnet'"),
    ("convnet-w16-d3", (), "ConvNet family"),
    ("convnet-d4-instancenorm", (), "ConvNet family"),
    ("torchvision:resnet18", (), "external library"),
    ("TIMM:resnet18", (), "external library"),
], ids=["builtin", "builtin-alias", "convnet", "convnet-family", "convnet-norm", "torchvision", "timm"])
def test_a_model_named_as_a_builtin_or_convnet_or_external_is_refused(name, aliases, taken, own_models):
    with pytest.raises(ValueError, match=taken):
        own_models(ModelSpec(name, _linear, "shadow", aliases=aliases))
    assert "mynet" not in model_registry.list_models()
    assert isinstance(create_model("resnet18", num_classes=10, in_channels=1, image_size=28), ResNet)
    assert resolve("convnet-w16-d3")[0].name == "convnet" and resolve("resnet-18")[0].name == "resnet18"


def test_a_models_own_name_is_taken_once(own_models):
    spec = own_models(ModelSpec("mylinear", _linear, "mine", aliases=("my-linear",)))
    assert own_models(spec) is spec  # (the same spec again: nothing changes)
    with pytest.raises(ValueError, match="'my_linear' is already registered for model 'mylinear'"):
        own_models(ModelSpec("other", _linear, "another", aliases=("my_linear",)))
    assert model_registry.user_specs()[-1] is spec


# ---- 2: a user's target names the module by its full name --------------------------------------------

USERS_RESNET = '''
from torch import nn


class UsersResNet(nn.Sequential):
    pass


def resnet18(num_classes, in_channels=3, image_size=32, **kw):
    return UsersResNet(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, num_classes))
'''


def test_a_user_target_of_a_top_level_module_is_the_users_module(tmp_path, monkeypatch, own_models):
    (tmp_path / "resnet.py").write_text(USERS_RESNET)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "resnet", raising=False)
    try:
        own_models(ModelSpec("myresnet", "resnet:resnet18", "the user's resnet.py"))
        model = create_model("myresnet", num_classes=10, in_channels=1, image_size=28)
        assert type(model).__name__ == "UsersResNet" and type(model).__module__ == "resnet"
        with pytest.raises(ValueError, match="'resnet:resnet50' cannot be imported"):  # (not infer-fast's resnet50)
            own_models(ModelSpec("myresnet50", "resnet:resnet50", "not in the user's resnet.py"))
    finally:
        sys.modules.pop("resnet", None)
    assert isinstance(create_model("resnet18", num_classes=10, in_channels=1, image_size=28), ResNet)


# ---- 3: a plug-in's own error named as its model's, dataset's or method's ----------------------------

def test_an_error_in_a_plugin_models_builder_names_the_model(tmp_path, own_models, capsys):
    own_models(ModelSpec("boomnet", _boom_builder, "raises"))
    assert main(["teacher", "--dataset", "fashion-mnist-mini", "--model", "boomnet", "--epochs", "1",
                 "--out", str(tmp_path / "t.pt"), "--quiet"]) == 1
    assert capsys.readouterr().err == (
        f"infer-fast teacher: error in model 'boomnet' (module {__name__}): RuntimeError: boom in my model builder "
        "(run again with --debug for the traceback)\n")


def _boom_loader(request):
    raise RuntimeError("boom in my loader")


def _first_images_of(request):
    """A plug-in method reading the request's dataset (a plug-in's loader, here)."""
    load_dataset(request.dataset, "train")
    return request.out_dir


@pytest.fixture
def boom_dataset(monkeypatch):
    monkeypatch.setattr(data_registry, "_DATASETS", dict(data_registry._DATASETS))  # (removed after the test)
    mini = get_dataset("fashion-mnist-mini")
    register_dataset(dataclasses.replace(mini, name="boomdata", aliases=(), loader=_boom_loader,
                                         spec=dataclasses.replace(mini.spec, name="boomdata")))


def test_an_error_in_a_plugin_datasets_loader_names_the_dataset_not_the_method(tmp_path, boom_dataset, own_methods,
                                                                              capsys):
    own_methods(Method(name="readsdata", label="Reads data", summary="loads its dataset", distill=_first_images_of,
                       uses_teachers=False))
    for method in ("random", "readsdata"):  # (infer-fast's method calling it; a plug-in's)
        assert main(["distill", "--method", method, "--dataset", "boomdata", "--ipc", "1",
                     "--out", str(tmp_path / method), "--quiet"]) == 1
        assert capsys.readouterr().err == (
            f"infer-fast distill: error in dataset 'boomdata' (module {__name__}): RuntimeError: boom in my loader "
            "(run again with --debug for the traceback)\n")


def test_a_distill_returning_no_set_path_is_refused_naming_the_method(tmp_path, own_methods, capsys):
    own_methods(Method(name="noreturn", label="No return", summary="returns None", distill=lambda request: None,
                       uses_teachers=False))
    request = DistillRequest(method="noreturn", dataset="fashion-mnist-mini", ipc=1, out_dir=tmp_path / "s")
    with pytest.raises(ValueError, match="method 'noreturn': its distill returned None; it must return the path"):
        request.make_set()
    assert main(["distill", "--method", "noreturn", "--dataset", "fashion-mnist-mini", "--ipc", "1",
                 "--out", str(tmp_path / "s"), "--quiet"]) == 2
    assert "error: method 'noreturn': its distill returned None" in capsys.readouterr().err


# ---- 4: a label names one method -----------------------------------------------------------------

def test_a_label_another_method_has_is_refused(own_methods):
    with pytest.raises(ValueError, match="method 'mine': its label 'random' is the label of method 'random'"):
        own_methods(Method(name="mine", label="random", summary="x", distill=_first_images_of, uses_teachers=False))
    with pytest.raises(ValueError, match="unknown method 'mine'"):
        get_method("mine")
    own_methods(Method(name="mine", label="Mine", summary="x", distill=_first_images_of, uses_teachers=False))
    with pytest.raises(ValueError, match="method 'mine2': its label 'MINE' is the label of method 'mine'"):
        own_methods(Method(name="mine2", label="MINE", summary="x", distill=_first_images_of, uses_teachers=False))


# ---- 5: a dataset's normalization is finite ---------------------------------------------------------

@pytest.mark.parametrize("mean,std", [((float("nan"),), (0.3,)), ((float("inf"),), (0.3,)), ((0.3,), (float("inf"),))],
                         ids=["nan-mean", "inf-mean", "inf-std"])
def test_a_dataset_spec_with_a_mean_or_std_not_finite_is_refused(mean, std):
    with pytest.raises(ValueError, match="dataset 'mydata': mean .* and std .* must be finite numbers"):
        DatasetSpec("mydata", 10, 1, 28, mean, std, None, "a plug-in's dataset")


# ---- 6: evaluate --out replaces no input, and nothing but a report ------------------------------------

def _evaluate(out, teacher="t.pt", *more):
    return main(["evaluate", "s", "--teachers", teacher, *more, "--epochs", "1", "--seeds", "1", "--quiet",
                 "--out", out])


def test_evaluate_out_refuses_an_input_file_or_a_file_other_than_a_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    checkpoint = b"PK\x03\x04 a teacher checkpoint"
    for name in ("t.pt", "full.pt"):
        Path(name).write_bytes(checkpoint)
    Path("results.json").write_text(json.dumps({"format": "infer-fast-run-results", "runs": []}))
    Path("notes.txt").write_text("my notes\n")

    assert _evaluate("./t.pt") == 2
    assert "--out './t.pt' is the file given as --teachers" in capsys.readouterr().err
    assert _evaluate("full.pt", "t.pt", "--full-data-checkpoint", "full.pt") == 2
    assert "--out 'full.pt' is the file given as --full-data-checkpoint" in capsys.readouterr().err
    for other in ("results.json", "notes.txt"):
        assert _evaluate(other) == 2
        assert f"--out '{other}' exists and is not an infer-fast evaluation report" in capsys.readouterr().err
    assert Path("t.pt").read_bytes() == Path("full.pt").read_bytes() == checkpoint
    assert json.loads(Path("results.json").read_text())["format"] == "infer-fast-run-results"

    Path("report.json").write_text(json.dumps({"format": REPORT_FORMAT}))  # (an earlier report: replaced)
    assert _evaluate("report.json") == 2
    assert capsys.readouterr().err == "infer-fast evaluate: error: s: no such distilled set\n"  # (after --out's checks)


# ---- 7: a warning is one line naming the command --------------------------------------------------

WARNING_PLUGIN = '''
import warnings
from infer_fast.methods import Method, register


def warn_then_stop(request):
    for _ in range(3):
        warnings.warn("the teachers disagree", RuntimeWarning)
    raise ValueError("stopped after the warnings")


register(Method(name="warner", label="Warner", summary="warns", distill=warn_then_stop, uses_teachers=False))
'''


def test_a_warning_is_one_line_naming_the_command_shown_once(tmp_path):
    (tmp_path / "warnplug.py").write_text(WARNING_PLUGIN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)]), "INFER_FAST_PLUGINS": "warnplug"}
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.run([sys.executable, "-m", "infer_fast.cli", "distill", "--method", "warner", "--dataset",
                           "fashion-mnist-mini", "--ipc", "1", "--out", "s", "--quiet"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr == ("infer-fast distill: warning: the teachers disagree\n"
                           "infer-fast distill: error: stopped after the warnings\n")


def test_the_warning_format_is_restored_after_a_command(capsys):
    saved = warnings.formatwarning
    assert main(["datasets"]) == 0
    assert warnings.formatwarning is saved
    capsys.readouterr()


# ---- 8: run --quiet says where the results are ----------------------------------------------------

def test_run_quiet_prints_the_table_and_where_the_results_are(tmp_path, capsys):
    teacher, = train_tiny_teachers(tmp_path, seeds=(0,))
    out = tmp_path / "run"
    config = tmp_path / "r.yaml"
    config.write_text(json.dumps({"dataset": "fashion-mnist-mini", "out": str(out), "teachers": [{"path": teacher}],
                                  "ipc": [1], "methods": ["random"],
                                  "student": {"model": "convnet-w8-d2", "epochs": 1, "device": "cpu"}, "seeds": 1}))
    assert main(["run", str(config), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| Random | 1 |" in printed
    assert printed.endswith(f"results in {out / 'results.json'} and {out / 'results.md'}\n")


# ---- 9: Ctrl-C before the handlers exist ------------------------------------------------------------

def _interrupt():
    raise KeyboardInterrupt


def test_ctrl_c_before_mains_handlers_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_working_directory_problem", _interrupt)  # (main's first step)
    try:
        status = main(["info"])
    except KeyboardInterrupt:  # (not let through: pytest would stop the session)
        pytest.fail("Ctrl-C escaped main as a KeyboardInterrupt")
    assert status == 130
    assert capsys.readouterr().err == "infer-fast: interrupted (SIGINT)\n"


class _InterruptedImport:
    """A meta path finder: Ctrl-C while ``name`` is being imported."""

    def __init__(self, name):
        self.name = name

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.name:
            raise KeyboardInterrupt
        return None


def test_ctrl_c_while_python_m_infer_fast_imports_the_cli_is_one_line(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "infer_fast.cli")  # (put back after the test)
    monkeypatch.setattr(sys, "meta_path", [_InterruptedImport("infer_fast.cli"), *sys.meta_path])
    with pytest.raises(SystemExit) as exited:
        try:
            runpy.run_module("infer_fast", run_name="__main__")
        except KeyboardInterrupt:
            pytest.fail("Ctrl-C escaped python -m infer_fast as a KeyboardInterrupt")
    assert exited.value.code == 130
    assert capsys.readouterr().err == "infer-fast: interrupted (SIGINT)\n"
