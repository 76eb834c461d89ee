"""The Python API as a library caller meets it: configs that hold what they were given (paths as
str, lists as tuples) and refuse wrong values when made, calls that leave the caller's teachers
and random generators as they were, models of a user's own module, and type hints that say
what the functions take."""
import dataclasses
import os
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train_tiny_teachers
from torch import nn

from infer_fast.data import load_dataset
from infer_fast.distill import RecoveryConfig
from infer_fast.methods import DistillRequest
from infer_fast.methods.infer import recover_ufcs, select_natural_sets
from infer_fast.models import create_model, list_models, model_table
from infer_fast.models import registry
from infer_fast.models.registry import ModelSpec, register
from infer_fast.relabel import relabel
from infer_fast.storage import DistilledSet, DistilledSetError, export_imagefolder
from infer_fast.student import StudentConfig, evaluate_seeds, train_student
from infer_fast.teacher import TeacherConfig, load_teacher, train_teacher

torch.set_num_threads(1)
DATASET = "fashion-mnist-mini"
STUDENT = dict(model="convnet-w8-d2", epochs=1, batch_size=50, device="cpu", labels="hard", mix="none")


@pytest.fixture(scope="module")
def data():
    return load_dataset(DATASET, "train"), load_dataset(DATASET, "test")


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    """A teacher trained with its data_root given as a pathlib.Path (and its output too)."""
    out = tmp_path_factory.mktemp("teacher") / "t.pt"
    train_teacher(TeacherConfig(dataset=DATASET, model="convnet-w8-d2", epochs=1, batch_size=256, lr=0.05,
                                device="cpu", data_root=out.parent), out, progress=False)
    return out


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """A teacher trained with its paths as str (conftest's tiny teacher)."""
    return train_tiny_teachers(tmp_path_factory.mktemp("tiny"), seeds=(0,))[0]


def small_set(train, per_class=5):
    picked, s = train.per_class(per_class, seed=0), train.spec
    return DistilledSet(method="random", dataset=s.name, num_classes=s.num_classes, channels=s.channels,
                        image_size=s.image_size, mean=s.mean, std=s.std, images=picked.images, labels=picked.labels)


def small_teacher():
    """An untrained teacher in training mode with parameter gradients on: what a call must leave so."""
    return create_model("convnet-w8-d2", num_classes=10, in_channels=1, image_size=28).train()


# ---- paths held as str; the teacher trained with a Path loads ------------------------------

def test_a_teacher_trained_with_a_path_data_root_loads_and_records_it_as_str(teacher_path):
    model, meta = load_teacher(teacher_path, dataset=DATASET)  # (weights_only: a PosixPath was refused)
    assert meta["config"]["data_root"] == str(teacher_path.parent)
    assert not model.training


def test_configs_hold_paths_as_str():
    assert TeacherConfig(dataset=DATASET, data_root=Path("/data")).data_root == "/data"
    request = DistillRequest(method="random", dataset=DATASET, ipc=1, out_dir=Path("/tmp/out"), data_root=Path("/d"))
    assert (request.out_dir, request.data_root) == ("/tmp/out", "/d")


# ---- the student comes back in eval mode ---------------------------------------------------

def test_train_student_returns_the_student_in_eval_mode(data):
    result = train_student(small_set(data[0]), data[1], StudentConfig(**STUDENT), progress=False)
    assert not result["model"].training


# ---- seeds ----------------------------------------------------------------------------------

@pytest.mark.parametrize("seeds, said", [
    ("01", "seeds must be a list of integers"), (3, "seeds must be a list of integers"),
    ((0.5,), "seeds[0] must be an integer"), ([True], "seeds[0] must be an integer"),
    (np.array([0, 1]), "seeds[0] must be an integer"), ((0, 0), "seeds must be distinct"),
    ([], "seeds must not be empty"), (iter([]), "seeds must not be empty"),
])
def test_evaluate_seeds_refuses_bad_seeds_before_training(data, monkeypatch, seeds, said):
    monkeypatch.setattr("infer_fast.student.train_student", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ValueError) as err:
        evaluate_seeds(small_set(data[0]), data[1], StudentConfig(**STUDENT), seeds=seeds)
    assert said in str(err.value)


def test_evaluate_seeds_takes_a_generator_once(data):
    result = evaluate_seeds(small_set(data[0]), data[1], StudentConfig(**STUDENT), seeds=(s for s in (3, 1)))
    assert list(result["per_seed"]) == [3, 1] and len(result["results"]) == 2


# ---- the caller's teachers are left as they were ------------------------------------------

def test_dynamic_student_and_relabel_leave_the_teachers_as_they_were(data):
    teacher = small_teacher()
    next(teacher.parameters()).requires_grad_(False)  # (one frozen, the others not: each kept as it was)
    flags = [p.requires_grad for p in teacher.parameters()]
    distilled = small_set(data[0])
    train_student(distilled, data[1], StudentConfig(**{**STUDENT, "labels": "soft", "dynamic": True}),
                  teachers=[teacher], progress=False)
    assert teacher.training and [p.requires_grad for p in teacher.parameters()] == flags
    relabel(distilled, teacher)  # (one model: a list of one)
    assert teacher.training and distilled.soft_labels is not None


def test_a_model_elsewhere_is_copied_not_moved():
    from infer_fast.models import on_device

    teacher = small_teacher()
    moved = on_device(teacher, "meta")
    assert moved is not teacher and moved.head.weight.is_meta and not teacher.head.weight.is_meta
    assert on_device(teacher, "cpu") is teacher


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_relabel_on_the_cpu_leaves_a_gpu_teacher_on_the_gpu(data):
    teacher = small_teacher().eval().cuda()
    relabel(small_set(data[0]), [teacher], device="cpu")
    assert teacher.head.weight.is_cuda


# ---- configs do not change after they are made ---------------------------------------------

def test_recovery_config_holds_tuples_not_the_callers_lists():
    betas = [0.5, 0.9]
    config = RecoveryConfig(betas=betas, crop_scale=[0.08, 1.0])
    betas[1] = 1.7
    assert config.betas == (0.5, 0.9) and config.crop_scale == (0.08, 1.0)
    assert config == RecoveryConfig() and hash(config) == hash(RecoveryConfig())


def test_teacher_config_holds_a_copy_of_the_dataset_mapping():
    dataset = {"name": DATASET}
    config = TeacherConfig(dataset=dataset)
    dataset["name"] = "cifar10"
    assert config.dataset == {"name": DATASET}


# ---- models of a user's own module ---------------------------------------------------------

TOY_MODELS = '''
from torch import nn

def build(num_classes, in_channels=3, image_size=32, **kwargs):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
'''


@pytest.fixture
def toy_models(tmp_path, monkeypatch):
    """Modules ``toy_api_models`` and ``toy_api_pkg.nets`` on sys.path; the names registered
    here are unregistered after."""
    (tmp_path / "toy_api_models.py").write_text(TOY_MODELS)
    (tmp_path / "toy_api_pkg").mkdir()
    (tmp_path / "toy_api_pkg" / "__init__.py").write_text("")
    (tmp_path / "toy_api_pkg" / "nets.py").write_text(TOY_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    names = ["toy-top", "toy-dotted", "toy-callable", "toy-missing"]
    yield
    for name in names:
        registry.unregister(name)
    for module in ("toy_api_models", "toy_api_pkg.nets", "toy_api_pkg"):
        sys.modules.pop(module, None)


def test_a_model_of_ones_own_module_is_registered_and_built(toy_models):
    from toy_api_models import build

    register(ModelSpec("toy-top", "toy_api_models:build", "a top-level module"))
    register(ModelSpec("toy-dotted", "toy_api_pkg.nets:build", "a module of a package"))
    register(ModelSpec("toy-callable", build, "the function itself"))
    for name in ("toy-top", "toy-dotted", "toy-callable"):
        assert create_model(name, num_classes=3, in_channels=1, image_size=28)(torch.zeros(2, 1, 28, 28)).shape == (2, 3)
    assert {"toy-top", "toy-dotted", "toy-callable", "resnet18"} <= {row["name"] for row in model_table()}


def test_a_model_whose_builder_cannot_be_imported_is_refused_when_registered(toy_models):
    before = list_models()
    for target in ("no_such_module_here:build", "toy_api_models:no_such_function", "no-colon"):
        with pytest.raises(ValueError, match="toy-missing"):
            register(ModelSpec("toy-missing", target, "broken"))
    assert list_models() == before and len(model_table()) == len(before)


# ---- type hints -------------------------------------------------------------------------------

def _takes_path(hint) -> bool:
    return any(a is os.PathLike or typing.get_origin(a) is os.PathLike or _takes_path(a) for a in typing.get_args(hint))


def test_hints_take_paths_and_decorated_functions_keep_their_signatures():
    from infer_fast.data import load_dataset as load
    from infer_fast.output_lock import holds_output
    from infer_fast.student import evaluate_seeds as seeds_of

    for function, parameter in ((train_teacher, "out"), (load_teacher, "path"), (train_student, "checkpoint"),
                                (seeds_of, "checkpoints"), (load, "data_root")):
        assert _takes_path(typing.get_type_hints(function)[parameter]), (function.__name__, parameter)
    returned = typing.get_type_hints(holds_output)["return"]  # Callable[[F], F]: what it is given, it returns
    (given,), back = typing.get_args(returned)
    assert isinstance(back, typing.TypeVar) and given is back


# ---- loading a teacher leaves the random generators alone ----------------------------------

def test_loading_a_teacher_does_not_draw_from_the_global_generator(tiny_teacher):
    state = torch.get_rng_state()
    load_teacher(tiny_teacher)
    assert torch.equal(state, torch.get_rng_state())


# ---- wrong values refused when given, naming them --------------------------------------------

@pytest.mark.parametrize("make, said", [
    (lambda: create_model("convnet-w8-d2", 10, 1, image_size=28.0), "image_size must be a positive integer"),
    (lambda: create_model("convnet-w8-d2", 10, 1, image_size="28"), "image_size must be a positive integer"),
    (lambda: DistillRequest(method="random", dataset=DATASET, ipc=1, out_dir=None), "out_dir must be"),
    (lambda: DistillRequest(method="random", dataset=DATASET, ipc=1, out_dir="o", device="bogus"), "device must be"),
    (lambda: DistillRequest(method="random", dataset=DATASET, ipc=1, out_dir="o", resume="no"), "resume must be"),
    (lambda: RecoveryConfig(first_bn_mult=-1.0), "first_bn_mult must be >= 0"),
    (lambda: TeacherConfig(dataset=DATASET, model="no-such-net"), "unknown model 'no-such-net'"),
    (lambda: StudentConfig(model="no-such-net"), "unknown model 'no-such-net'"),
])
def test_wrong_values_are_refused_when_given(make, said):
    with pytest.raises(ValueError) as err:
        make()
    assert said in str(err.value)


def test_distilled_set_refuses_a_string_image_size_and_a_lone_mean(data):
    fields = {f.name: getattr(small_set(data[0]), f.name) for f in dataclasses.fields(DistilledSet)}
    with pytest.raises(DistilledSetError, match="image_size must be a positive integer"):
        DistilledSet(**{**fields, "image_size": "88"})
    with pytest.raises(DistilledSetError, match="mean must be a list of numbers"):
        DistilledSet(**{**fields, "mean": 0.28})
    assert DistilledSet(**{**fields, "image_size": [28, 28]}).image_size == (28, 28)


def test_recovery_takes_one_model_as_a_list_of_one_and_refuses_a_lone_mean(data):
    train = data[0]
    natural = select_natural_sets(train, 1, 0)
    teacher = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(), nn.Linear(4, 10)).eval()
    mean, std = train.spec.mean, train.spec.std
    out = recover_ufcs(natural, teacher, mean, std, RecoveryConfig(iterations=1), progress=False)
    assert out["ufc_teacher"].tolist() == [0]
    with pytest.raises(ValueError, match="mean must be a list of numbers"):
        recover_ufcs(natural, [teacher], 0.28, std, RecoveryConfig(iterations=1), progress=False)
    with pytest.raises(ValueError, match="teachers must be a model"):
        recover_ufcs(natural, "t.pt", mean, std, RecoveryConfig(iterations=1), progress=False)


@pytest.mark.parametrize("chunk_images", [0, -5, 2.5])
def test_export_refuses_a_chunk_size_that_is_no_positive_integer(tmp_path, chunk_images):
    with pytest.raises(ValueError, match="chunk_images must be a positive integer"):
        export_imagefolder(tmp_path / "no-such-set", tmp_path / "out", chunk_images=chunk_images)
    assert sorted(os.listdir(tmp_path)) == []
