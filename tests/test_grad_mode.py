"""The functions that train run with gradients on whatever the caller's grad mode (a notebook's
``torch.set_grad_enabled(False)``, ``torch.no_grad()``, ``torch.inference_mode()``), give the
caller's mode back, and accept what was made under inference mode (teachers, sets): each gives
the same result as a call made with gradients on. And the message for a load_teacher result
passed as a teacher."""
import contextlib

import pytest
import torch
from conftest import train_tiny_teachers

from infer_fast import cli
from infer_fast.data import load_dataset
from infer_fast.distill import RecoveryConfig, auto_batch_plan, distill_infer
from infer_fast.distill.plan import _probe_input, activation_bytes_per_image
from infer_fast.grad_mode import training_grad_mode
from infer_fast.methods.infer import recover_ufcs
from infer_fast.storage import DistilledSet, load_distilled
from infer_fast.student import StudentConfig, train_student
from infer_fast.teacher import TeacherConfig, load_teacher, teacher_list, train_teacher

torch.set_num_threads(1)
DATASET = "fashion-mnist-mini"
TEACHER = dict(dataset=DATASET, model="convnet-w8-d2", epochs=1, batch_size=256, lr=0.05, device="cpu")
STUDENT = StudentConfig(model="convnet-w8-d2", epochs=1, batch_size=50, device="cpu", labels="hard", mix="none")
RECOVERY = RecoveryConfig(iterations=2)
# the caller's modes a training meets: (name, context, inference mode inside it)
CALLER_MODES = {
    "no_grad": (torch.no_grad, False),
    "grad_off": (lambda: torch.set_grad_enabled(False), False),
    "inference_mode": (torch.inference_mode, True),
}


@contextlib.contextmanager
def caller_mode(name: str):
    """The block run in the caller's mode ``name``; at its end, that mode must still be on (the
    call inside gave it back), and after it the test's own mode is back."""
    context, inference = CALLER_MODES[name]
    with context():
        yield
        assert not torch.is_grad_enabled()
        assert torch.is_inference_mode_enabled() == inference
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    return train_tiny_teachers(tmp_path_factory.mktemp("teacher"), seeds=(0,))[0]


@pytest.fixture(scope="module")
def natural():
    """One natural set of the mini data (uint8 (1, C, ch, H, W)), and its mean and std."""
    train = load_dataset(DATASET, "train")
    picked = train.per_class(1, seed=0)
    order = picked.labels.argsort()
    return picked.images[order].unsqueeze(0), train.spec.mean, train.spec.std


@pytest.fixture(scope="module")
def reference_ufcs(teacher_path, natural):
    """The UFCs of the natural set recovered with gradients on (the result every mode must give)."""
    images, mean, std = natural
    return recover_ufcs(images, [load_teacher(teacher_path)[0]], mean, std, RECOVERY, progress=False)["ufc"]


def small_set() -> DistilledSet:
    train = load_dataset(DATASET, "train")
    picked, s = train.per_class(5, seed=0), train.spec
    return DistilledSet(method="random", dataset=s.name, num_classes=s.num_classes, channels=s.channels,
                        image_size=s.image_size, mean=s.mean, std=s.std, images=picked.images, labels=picked.labels)


def distill(teacher_path, out_dir):
    return load_distilled(distill_infer(DATASET, [teacher_path], ipc=2, out_dir=out_dir, config=RECOVERY,
                                        progress=False))


@pytest.fixture(scope="module")
def reference_set(teacher_path, tmp_path_factory):
    """The INFER set distilled with gradients on."""
    return distill(teacher_path, tmp_path_factory.mktemp("reference") / "set")


@pytest.mark.parametrize("mode", CALLER_MODES)
def test_distill_infer_in_any_caller_grad_mode_equals_distilling_with_gradients_on(mode, teacher_path,
                                                                                    reference_set, tmp_path):
    with caller_mode(mode):
        distilled = distill(teacher_path, tmp_path / "set")
    assert torch.equal(distilled.ufc, reference_set.ufc)


@pytest.mark.parametrize("mode", CALLER_MODES)
def test_recovery_in_any_caller_grad_mode_equals_recovery_with_gradients_on(mode, teacher_path, natural,
                                                                             reference_ufcs):
    images, mean, std = natural
    with caller_mode(mode):  # (the teacher loaded here too: under inference_mode, of inference tensors)
        teacher = load_teacher(teacher_path)[0]
        ufcs = recover_ufcs(images, [teacher], mean, std, RECOVERY, progress=False)["ufc"]
    assert torch.equal(ufcs, reference_ufcs)


def test_a_teacher_loaded_under_inference_mode_recovers_outside_it(teacher_path, natural, reference_ufcs):
    images, mean, std = natural
    with torch.inference_mode():
        teacher = load_teacher(teacher_path)[0]
    ufcs = recover_ufcs(images, [teacher], mean, std, RECOVERY, progress=False)["ufc"]
    assert torch.equal(ufcs, reference_ufcs)
    assert all(p.is_inference() for p in teacher.parameters())  # (recovery ran a copy; the caller's is as it was)


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "chunked"])
def test_recovery_under_inference_mode_in_chunks_and_bf16_channels_last(chunked, teacher_path, natural):
    images, mean, std = natural
    config = (RecoveryConfig(iterations=2, group_size=1, chunk_size=3, fused_bn=False) if chunked
              else RecoveryConfig(iterations=2, precision="bf16", channels_last=True))
    with caller_mode("inference_mode"):
        teacher = load_teacher(teacher_path)[0]
        result = recover_ufcs(images, [teacher], mean, std, config, progress=False)
    assert torch.isfinite(result["ufc"]).all()


def test_the_cli_distills_inside_no_grad(teacher_path, tmp_path):
    with caller_mode("no_grad"):
        rc = cli.main(["distill", "--dataset", DATASET, "--teachers", str(teacher_path), "--ipc", "2",
                       "--iterations", "2", "--out", str(tmp_path / "s"), "--quiet"])
    assert rc == 0


@pytest.mark.parametrize("mode", CALLER_MODES)
def test_train_teacher_in_any_caller_grad_mode_equals_training_with_gradients_on(mode, teacher_path, tmp_path):
    with caller_mode(mode):
        summary = train_teacher(TeacherConfig(**TEACHER, seed=0), tmp_path / "t.pt", progress=False)
    trained, _ = load_teacher(tmp_path / "t.pt")
    reference, meta = load_teacher(teacher_path)  # (the same config, trained with gradients on)
    assert summary["test_accuracy"] == meta["test_accuracy"]
    for name, tensor in reference.state_dict().items():
        assert torch.equal(trained.state_dict()[name], tensor), name


@pytest.mark.parametrize("mode", CALLER_MODES)
def test_train_student_in_any_caller_grad_mode_equals_training_with_gradients_on(mode):
    reference = train_student(small_set(), load_dataset(DATASET, "test"), STUDENT, progress=False)
    with caller_mode(mode):  # (the set and test data made here too: under inference_mode, inference tensors)
        result = train_student(small_set(), load_dataset(DATASET, "test"), STUDENT, progress=False)
    assert result["history"][0]["loss"] == reference["history"][0]["loss"]
    assert result["final_accuracy"] == reference["final_accuracy"]


def test_dynamic_student_with_teachers_loaded_under_inference_mode(teacher_path):
    config = StudentConfig(model="convnet-w8-d2", epochs=1, batch_size=50, device="cpu", dynamic=True)
    with caller_mode("inference_mode"):
        teacher = load_teacher(teacher_path)[0]
        result = train_student(small_set(), load_dataset(DATASET, "test"), config, teachers=teacher, progress=False)
    assert result["history"][0]["loss"] > 0


@pytest.mark.parametrize("mode", ["no_grad", "grad_off"])
def test_the_memory_probe_measures_the_same_in_any_caller_grad_mode(mode, teacher_path):
    teacher = load_teacher(teacher_path)[0]
    probe = torch.zeros(1, 10, 1, 28, 28)
    measured, planned = activation_bytes_per_image(teacher, probe, 4), auto_batch_plan(teacher, probe, 4)
    with caller_mode(mode):  # (with gradients off autograd saved nothing: the probe measured no activations)
        assert activation_bytes_per_image(teacher, probe, 4) == measured
        assert auto_batch_plan(teacher, probe, 4) == planned


def test_the_cuda_probe_takes_its_input_from_a_probe_made_under_inference_mode(teacher_path):
    teacher = load_teacher(teacher_path)[0]
    with torch.inference_mode():
        probe = torch.zeros(1, 10, 1, 28, 28)
    with training_grad_mode():  # (as _cuda_peak_per_image runs it: a view of the probe, not a copy)
        x, labels = _probe_input(teacher, probe, 4)
    assert x.requires_grad and not x.is_inference() and labels.tolist() == [0, 1, 2, 3]


def test_the_memory_plan_refuses_a_teacher_made_under_inference_mode(teacher_path):
    with torch.inference_mode():
        teacher = load_teacher(teacher_path)[0]
    with pytest.raises(ValueError, match=r"^teacher was made under torch.inference_mode\(\)"):
        auto_batch_plan(teacher, torch.zeros(1, 10, 1, 28, 28), 4)


# ---- a load_teacher result passed as a teacher -------------------------------------------------

def test_a_load_teacher_result_in_a_list_is_named_with_what_to_pass(teacher_path):
    loaded = load_teacher(teacher_path)
    with pytest.raises(ValueError, match=r"teachers\[0\] is a tuple; load_teacher returns \(model, metadata\): "
                                         r"pass its \[0\]$"):
        teacher_list([loaded])


def test_a_bare_load_teacher_result_is_named_with_what_to_pass(teacher_path):
    with pytest.raises(ValueError, match=r"teachers\[1\] is a dict; load_teacher returns \(model, metadata\)"):
        teacher_list(load_teacher(teacher_path))


def test_another_non_model_is_named_without_the_load_teacher_hint(teacher_path):
    with pytest.raises(ValueError, match=r"teachers\[1\] is a str$"):
        teacher_list([load_teacher(teacher_path)[0], "t.pt"])
