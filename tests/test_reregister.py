"""Registering a name again: the same definition again (a notebook cell run again, a module
reloaded) replaces the entry; another definition, or a built-in's name, is refused naming both."""
import importlib
import types

import pytest
from torch import nn

import infer_fast.data.registry as data_registry
import infer_fast.methods.random as random_module
import infer_fast.methods.registry as method_registry
from infer_fast.data import load_dataset
from infer_fast.methods import DistillRequest, Method, all_methods, get_method, register, unregister
from infer_fast.models import create_model
from infer_fast.models import registry as model_registry
from infer_fast.options import Option
from infer_fast.storage import load_distilled

MODEL_CELL = '''
from torch import nn
from infer_fast.models.registry import ModelSpec, register

def build(num_classes, in_channels=3, image_size=32, **kw):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, WIDTH), nn.Linear(WIDTH, num_classes))

SPEC = register(ModelSpec("cellnet", build, "a notebook's model", aliases=(ALIAS,)))
'''

METHOD_CELL = '''
from infer_fast.methods import Method, register
from infer_fast.options import Option

def distill(request):
    raise RuntimeError("not run here")

METHOD = register(Method(name="cellmethod", label=LABEL, summary="a notebook's method", distill=distill,
                         options=(OPTION,), uses_teachers=False))
'''

DATASET_CELL = '''
import dataclasses
from infer_fast.data import register_dataset
from infer_fast.data.catalog import FASHION_MNIST_MINI as mini

ENTRY = register_dataset(dataclasses.replace(mini, name="celldata", spec=dataclasses.replace(mini.spec, name="celldata"),
                                             aliases=ALIASES, train_size=TRAIN_SIZE))
'''


def run_cell(source: str, module: str, **values) -> types.SimpleNamespace:
    """``source`` run in a fresh namespace of the module ``module`` (``values`` its globals
    first), as a notebook runs a cell in __main__ or a reload runs a module again."""
    namespace = {"__name__": module, **values}
    exec(compile(source, f"<{module}>", "exec"), namespace)
    return types.SimpleNamespace(**namespace)


@pytest.fixture
def clean_names():
    yield
    model_registry.unregister("cellnet")
    unregister("cellmethod")


# ---- models ----------------------------------------------------------------------------------------

def test_a_model_cell_run_again_replaces_its_model_and_aliases(clean_names):
    first = run_cell(MODEL_CELL, "__main__", WIDTH=3, ALIAS="cell-net-a")
    again = run_cell(MODEL_CELL, "__main__", WIDTH=5, ALIAS="cell-net-b")  # (a new builder of the same name)
    assert first.build is not again.build
    assert model_registry.resolve("cellnet")[0] is again.SPEC and model_registry.user_specs().count(again.SPEC) == 1
    model = create_model("cellnet", num_classes=10, in_channels=1, image_size=28)
    assert model[1].out_features == 5  # (the new builder built it)
    assert model_registry.resolve("cell-net-b")[0] is again.SPEC
    with pytest.raises(ValueError, match="unknown model 'cell-net-a'"):  # (the alias the new definition dropped)
        model_registry.resolve("cell-net-a")


def test_a_model_of_another_definition_is_refused_naming_both(clean_names):
    first = run_cell(MODEL_CELL, "cell_a", WIDTH=3, ALIAS="cell-net-a")
    with pytest.raises(ValueError) as refused:
        run_cell(MODEL_CELL, "cell_b", WIDTH=5, ALIAS="cell-net-b")
    message = str(refused.value)
    assert "already registered with the builder cell_a:build; this one's builder is cell_b:build" in message
    assert "unregister('cellnet')" in message and "for model 'cellnet'" not in message  # (not said of itself)
    assert model_registry.resolve("cellnet")[0] is first.SPEC
    with pytest.raises(ValueError, match="unknown model 'cell-net-b'"):  # (nothing of the refused one left behind)
        model_registry.resolve("cell-net-b")


def test_a_builtin_model_is_never_replaced():
    def resnet18(num_classes, in_channels=3, image_size=32, **kw):
        return nn.Linear(1, num_classes)

    resnet18.__module__ = "infer_fast.models.resnet"  # (even a builder of the built-in's very name)
    builtin = model_registry.resolve("resnet18")[0]
    for target in (resnet18, "infer_fast.models.resnet:resnet18"):
        with pytest.raises(ValueError, match="already registered for model 'resnet18', a built-in one "
                                             r"\(infer_fast.models.resnet:resnet18\)"):
            model_registry.register(model_registry.ModelSpec("resnet18", target, "mine"))
    assert model_registry.resolve("resnet18")[0] is builtin and model_registry.resolve("resnet-18")[0] is builtin


# ---- methods ---------------------------------------------------------------------------------------

def _option(kind, default):
    return Option("cell_width", kind, "a notebook method's option", default=default)


def test_a_method_cell_run_again_replaces_its_method(clean_names):
    run_cell(METHOD_CELL, "__main__", LABEL="Cell", OPTION=_option(int, 1))
    # (run again, edited: its label and its option's kind, which the replaced one no longer claims)
    again = run_cell(METHOD_CELL, "__main__", LABEL="Cell v2", OPTION=_option(str, "a"))
    assert get_method("cellmethod") is again.METHOD and get_method("cellmethod").distill is again.distill
    assert [m.name for m in all_methods()].count("cellmethod") == 1


def test_a_method_of_another_module_is_refused_naming_both(clean_names):
    first = run_cell(METHOD_CELL, "cell_a", LABEL="Cell", OPTION=_option(int, 1))
    with pytest.raises(ValueError) as refused:
        run_cell(METHOD_CELL, "cell_b", LABEL="Cell", OPTION=_option(int, 1))
    message = str(refused.value)
    assert ("a method named 'cellmethod' is already registered, by module 'cell_a' (distill cell_a:distill); this one "
            "is registered by module 'cell_b' (distill cell_b:distill): unregister('cellmethod')") in message
    assert get_method("cellmethod") is first.METHOD


def test_a_builtin_method_is_refused_to_another_module():
    with pytest.raises(ValueError, match="'random' is already registered, by module 'infer_fast.methods.random'"):
        register(Method(name="random", label="Random", summary="mine", distill=random_module.distill,
                        uses_teachers=False))
    assert get_method("random") is random_module.RANDOM


@pytest.fixture
def restored_random_module():
    """infer_fast.methods.random and its registry entry as they are, restored after the test
    (a reload makes new objects in the module: other tests' imports keep the old ones)."""
    saved = dict(vars(random_module))
    entry, registered_by = method_registry._METHODS["random"], method_registry._REGISTERED_BY["random"]
    yield
    vars(random_module).clear()
    vars(random_module).update(saved)
    method_registry._METHODS["random"], method_registry._REGISTERED_BY["random"] = entry, registered_by


def test_reloading_a_builtin_method_module_replaces_its_method(restored_random_module, tmp_path):
    order = [m.name for m in all_methods()]
    old = get_method("random")
    importlib.reload(random_module)
    assert get_method("random") is random_module.RANDOM and random_module.RANDOM is not old
    assert [m.name for m in all_methods()] == order  # (still in the built-in order: the module holds the new one)
    out = DistillRequest(method="random", dataset="fashion-mnist-mini", ipc=1, out_dir=str(tmp_path / "set"),
                         progress=False).make_set()
    assert load_distilled(out).images.shape[0] == 10


# ---- datasets --------------------------------------------------------------------------------------

@pytest.fixture
def restored_datasets(monkeypatch):
    monkeypatch.setattr(data_registry, "_DATASETS", dict(data_registry._DATASETS))
    monkeypatch.setattr(data_registry, "_REGISTERED_BY", dict(data_registry._REGISTERED_BY))


def test_a_dataset_cell_run_again_replaces_its_dataset(restored_datasets):
    run_cell(DATASET_CELL, "__main__", ALIASES=("cell-data-a",), TRAIN_SIZE=10)
    again = run_cell(DATASET_CELL, "__main__", ALIASES=("cell-data-b",), TRAIN_SIZE=20)
    assert data_registry.get_dataset("celldata") is again.ENTRY and data_registry.known_train_size("celldata") == 20
    assert data_registry.canonical_name("cell-data-b") == "celldata"
    assert len(load_dataset("celldata", "test")) == 1000


def test_a_dataset_of_another_module_is_refused_naming_both(restored_datasets):
    first = run_cell(DATASET_CELL, "cell_a", ALIASES=(), TRAIN_SIZE=10)
    with pytest.raises(ValueError) as refused:
        run_cell(DATASET_CELL, "cell_b", ALIASES=(), TRAIN_SIZE=10)
    assert ("celldata already registered by module 'cell_a' (loader infer_fast.data.catalog:load_fashion_mnist_mini), "
            "this one by module 'cell_b'") in str(refused.value)
    assert data_registry.get_dataset("celldata") is first.ENTRY
    with pytest.raises(ValueError, match="cifar10 already registered by module 'infer_fast.data.catalog'"):
        run_cell(DATASET_CELL.replace('"celldata"', '"cifar10"'), "__main__", ALIASES=(), TRAIN_SIZE=10)
