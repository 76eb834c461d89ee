"""Teachers and models as users hand them over: teachers of other classes or channels refused
before any work (recovery, relabel, INFER+Dyn students), plug-in models whose output is not
(N, num_classes) refused when built, teachers in float16/bfloat16/float64 run as float32
copies, a BatchNorm-free teacher with the BN loss off, uint8 images for feature
duplication, and a last training batch of one image."""
import copy
import math

import pytest
import torch
from torch import nn

from infer_fast.data import load_dataset
from infer_fast.distill import RecoveryConfig, recover_ufcs
from infer_fast.distill.jobs import check_common
from infer_fast.models import build_to_check, create_model
from infer_fast.models.registry import ModelSpec, register, unregister
from infer_fast.ops import chunked_loss_backward
from infer_fast.relabel import ensemble_logits, relabel
from infer_fast.methods.random import random_set as random_baseline
from infer_fast.student import StudentConfig, feature_duplication, train_student
from infer_fast.teacher import evaluate

torch.set_num_threads(1)
MEAN, STD = [0.286], [0.353]
STUDENT = dict(model="convnet-w8-d2", epochs=1, batch_size=50, device="cpu")


def small_teacher(outputs=10, channels=1, norm="bn"):
    torch.manual_seed(0)
    layer = {"bn": nn.BatchNorm2d(8), "gn": nn.GroupNorm(2, 8),
             "bn-batch-stats": nn.BatchNorm2d(8, track_running_stats=False)}[norm]
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), layer, nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, outputs)).eval()


def natural(classes=4):
    return torch.randint(0, 256, (1, classes, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def data():
    return load_dataset("fashion-mnist-mini", "train"), load_dataset("fashion-mnist-mini", "test")


def random_set(train):
    return random_baseline(train, 2, seed=0)  # (20 images of fashion-mnist-mini)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(model, before):
    return all(torch.equal(v, before[k]) and v.dtype == before[k].dtype for k, v in model.state_dict().items())


# ---- 1. teachers checked against the data ------------------------------------------------------

@pytest.mark.parametrize("teacher, says", [
    (small_teacher(outputs=1000), "teacher 1/1 returns a tensor of shape (1, 1000) for one 1x28x28 image"),
    (small_teacher(outputs=2), "teacher 1/1 returns a tensor of shape (1, 2) for one 1x28x28 image"),
    (small_teacher(channels=3), "teacher 1/1 fails on one 1x28x28 image (the data's shape): RuntimeError"),
])
def test_recovery_refuses_a_teacher_of_other_classes_or_channels(teacher, says):
    before = state(teacher)
    with pytest.raises(ValueError) as caught:
        recover_ufcs(natural(classes=4), teacher, MEAN, STD, RecoveryConfig(iterations=1), progress=False)
    assert says in str(caught.value) and "\n" not in str(caught.value)
    assert same_state(teacher, before) and not teacher.training


def test_relabel_and_dynamic_students_refuse_teachers_that_do_not_fit_before_any_work(data):
    train, test = data
    ds = random_set(train)
    with pytest.raises(ValueError, match=r"teacher 2/2 returns a tensor of shape \(1, 1\) for one 1x28x28 image"):
        relabel(ds, [small_teacher(), small_teacher(outputs=1)])
    assert ds.soft_labels is None  # (nothing labelled)
    with pytest.raises(ValueError, match=r"teacher 1/1 returns a tensor of shape \(1, 20\)"):
        train_student(ds, test, StudentConfig(**STUDENT, dynamic=True), teachers=small_teacher(outputs=20),
                      progress=False)
    with pytest.raises(ValueError, match="teacher 1/1 fails on one 1x28x28 image"):
        train_student(ds, test, StudentConfig(**STUDENT, dynamic=True), teachers=small_teacher(channels=3),
                      progress=False)


def test_ensemble_logits_refuses_teachers_of_different_classes():
    x = torch.zeros(3, 1, 28, 28)
    with pytest.raises(ValueError, match=r"teacher 2/2 gives logits of shape \(3, 1\), the teachers before it "
                                         r"\(3, 10\)"):
        ensemble_logits([small_teacher(), small_teacher(outputs=1)], x)


# ---- 2. plug-in models whose output is not (N, num_classes) -------------------------------------

class AuxHead(nn.Module):
    """(logits, aux_logits) in training mode, as GoogLeNet/Inception."""

    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head, self.aux = nn.Linear(4, num_classes), nn.Linear(4, num_classes)

    def forward(self, x):
        h = self.body(x)
        return (self.head(h), self.aux(h)) if self.training else self.head(h)


def aux_head(num_classes=10, in_channels=1, image_size=28, **kw):
    return AuxHead(num_classes, in_channels)


def hundred_classes(num_classes=10, in_channels=1, image_size=28, **kw):  # (ignores num_classes)
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 100))


@pytest.fixture
def plugin_heads():
    register(ModelSpec("test-auxhead", aux_head, "aux logits in training mode"))
    register(ModelSpec("test-hundred", hundred_classes, "ignores num_classes"))
    yield
    unregister("test-auxhead")
    unregister("test-hundred")


def test_models_whose_output_is_not_logits_of_the_classes_are_refused_when_built(plugin_heads):
    rng = torch.random.get_rng_state()
    for name, says in (("test-auxhead", "model 'test-auxhead' returns a tuple in training mode"),
                       ("test-hundred", "model 'test-hundred' returns a tensor of shape (2, 100) in training mode")):
        for build in (lambda: create_model(name, num_classes=10, in_channels=1, image_size=28),
                      lambda: build_to_check(lambda: create_model(name, num_classes=10, in_channels=1, image_size=28))):
            with pytest.raises(ValueError) as caught:  # (build_to_check: what a run checks before any work)
                build()
            assert says in str(caught.value) and "infer-fast needs logits (N, 10)" in str(caught.value)
    torch.manual_seed(3)
    model = create_model("convnet-w8-d2", num_classes=10, in_channels=1, image_size=28)
    drawn_after = torch.rand(1)
    torch.manual_seed(3)
    create_model("convnet-w8-d2", num_classes=10, in_channels=1, image_size=28)
    assert torch.equal(torch.rand(1), drawn_after)  # (the check draws nothing: the same stream as before)
    assert model.training and all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())
    torch.random.set_rng_state(rng)


def test_the_output_check_leaves_running_statistics_and_modes_as_they_were():
    from infer_fast.models import check_model_outputs

    model = small_teacher()
    model[1].train()  # (one submodule in another mode than its parent)
    before = state(model)
    check_model_outputs(model, "small", 10, 1, 28)
    assert same_state(model, before) and model[1].training and not model.training


# ---- 3. teachers in other dtypes -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_teachers_in_other_dtypes_run_as_float32_copies_and_are_left_as_they_were(dtype, data):
    train, test = data
    teacher = small_teacher()
    given = copy.deepcopy(teacher).to(dtype)
    as_float32 = copy.deepcopy(given).float()  # (what the calls run: the given weights, in float32)
    before = state(given)
    config = RecoveryConfig(iterations=1)
    result = recover_ufcs(natural(classes=10), given, MEAN, STD, config, progress=False)["ufc"]
    expected = recover_ufcs(natural(classes=10), as_float32, MEAN, STD, config, progress=False)["ufc"]
    assert torch.equal(result, expected)
    ds, reference = random_set(train), random_set(train)
    relabel(ds, given)
    relabel(reference, as_float32)
    assert torch.equal(ds.soft_labels, reference.soft_labels)
    small_test = test.subset(range(50))
    assert evaluate(given, small_test, 50, "cpu") == evaluate(as_float32, small_test, 50, "cpu")
    result = train_student(ds, small_test, StudentConfig(**STUDENT, dynamic=True), teachers=given, progress=False)
    assert math.isfinite(result["history"][0]["loss"])  # (labelled by a float32 copy)
    assert same_state(given, before) and not given.training


# ---- 4. a BatchNorm-free teacher with the BN loss off --------------------------------------------

def test_a_batchnorm_free_teacher_is_accepted_when_r_bn_is_zero():
    teacher = small_teacher(norm="gn")
    with pytest.raises(ValueError, match="teacher 1/1 has no BatchNorm1d/2d layer"):
        check_common(teacher, MEAN, STD, 1)
    assert check_common(teacher, MEAN, STD, 1, config=RecoveryConfig(r_bn=0.0)) == [teacher]
    x = torch.randn(8, 1, 28, 28, requires_grad=True)
    labels = torch.arange(4).repeat(2)
    ce, rbn, logits = chunked_loss_backward(teacher, x, labels, groups=2, r_bn=0.0, first_bn_mult=10.0, chunk_size=3)
    assert torch.equal(rbn, torch.zeros(2)) and logits.shape == (8, 10)
    whole = x.detach().clone().requires_grad_()
    expected = torch.nn.functional.cross_entropy(teacher(whole), labels, reduction="none").view(2, 4).mean(1)
    expected.sum().backward()
    assert torch.allclose(ce, expected.detach(), atol=1e-6) and torch.allclose(x.grad, whole.grad, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_recover_ufcs_with_a_batchnorm_free_teacher_and_r_bn_zero_runs_cross_entropy_alone(chunk_size):
    """End to end through the method's call and the automatic plan (which probed a BN loss)."""
    config = RecoveryConfig(iterations=2, r_bn=0.0, chunk_size=chunk_size)
    out = recover_ufcs(natural(classes=10), small_teacher(norm="gn"), MEAN, STD, config=config, progress=False)
    assert out["ufc"].shape == (1, 1, 28, 28) and torch.isfinite(out["ufc"]).all()
    with pytest.raises(ValueError, match="teacher 1/1 has no BatchNorm1d/2d layer"):
        recover_ufcs(natural(classes=10), small_teacher(norm="gn"), MEAN, STD, config=RecoveryConfig(iterations=2),
                     progress=False)


def test_a_teacher_whose_batchnorm_keeps_no_running_statistics_runs_unchunked_when_r_bn_is_zero():
    """Its BatchNorm normalizes every batch by its own statistics, even in eval mode: with the BN
    loss off it recovers as it is (the plan's probe matched statistics it has not), chunked it
    is refused (a chunk's rows would see the chunk's statistics, not the batch's), and with the
    loss on it is refused for having nothing to match."""
    config = RecoveryConfig(iterations=2, r_bn=0.0)
    out = recover_ufcs(natural(classes=10), small_teacher(norm="bn-batch-stats"), MEAN, STD, config=config,
                       progress=False)
    assert out["ufc"].shape == (1, 1, 28, 28) and torch.isfinite(out["ufc"]).all()
    with pytest.raises(ValueError, match=r"BatchNorm layer '1' has no running statistics \(track_running_stats=False\): "
                                         r"it normalizes each batch by its own.*chunk_size None"):
        recover_ufcs(natural(classes=10), small_teacher(norm="bn-batch-stats"), MEAN, STD,
                     config=RecoveryConfig(iterations=2, r_bn=0.0, chunk_size=2), progress=False)
    with pytest.raises(ValueError, match=r"BatchNorm layer '1' has no running statistics.*which the loss matches"):
        recover_ufcs(natural(classes=10), small_teacher(norm="bn-batch-stats"), MEAN, STD,
                     config=RecoveryConfig(iterations=2), progress=False)


# ---- 5. feature duplication of stored uint8 pixels ------------------------------------------------

def test_feature_duplication_refuses_uint8_images_and_names_the_normalization(data):
    ds = random_set(data[0])
    with pytest.raises(ValueError, match=r"images must be normalized float images, got torch.uint8: .*normalize_uint8"):
        feature_duplication(ds.images, ds.labels, small_teacher())


# ---- 6. a last training batch of one image -------------------------------------------------------

def test_a_last_batch_of_one_image_joins_the_batch_before_it():
    from infer_fast.teacher import _last_single_merged, training_steps

    assert [training_steps(n, 19) for n in (19, 20, 21, 38, 39, 1)] == [1, 1, 2, 2, 2, 1]
    batches = [(torch.zeros(b, 1), torch.arange(b)) for b in (3, 3, 1)]
    assert [len(labels) for _, labels in _last_single_merged(batches)] == [3, 4]
    assert [len(labels) for _, labels in _last_single_merged(batches[:2])] == [3, 3]


def mlp_bn(num_classes=10, in_channels=1, image_size=28, **kw):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, 16), nn.BatchNorm1d(16),
                         nn.ReLU(), nn.Linear(16, num_classes))


def test_a_student_with_batchnorm1d_trains_when_one_image_would_be_left_over(data):
    train, test = data
    register(ModelSpec("test-mlpbn", mlp_bn, "BatchNorm1d head"))
    try:
        ds = random_set(train)  # 20 images: batches of 19 leave one
        config = StudentConfig(model="test-mlpbn", epochs=1, batch_size=19, device="cpu", labels="hard")
        result = train_student(ds, test.subset(range(50)), config, progress=False)
    finally:
        unregister("test-mlpbn")
    assert result["steps"] == 1 and result["num_training_images"] == 20


def test_the_output_check_runs_the_module_a_compiled_teacher_wraps():
    """A one-image call of a torch.compile'd teacher compiled a graph more, and turned the
    batches' graph into one of dynamic shapes: the check runs the wrapped module."""
    from infer_fast.teacher import check_teacher_outputs

    graphs = []

    def recording(graph, example_inputs):
        graphs.append([tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)])
        return graph.forward

    compiled = torch.compile(small_teacher(), backend=recording)
    check_teacher_outputs([compiled], 10, (1, 28, 28))
    assert graphs == []
    with pytest.raises(ValueError, match=r"teacher 1/1 returns a tensor of shape \(1, 10\) for one 1x28x28 image"):
        check_teacher_outputs([compiled], 4, (1, 28, 28))


def test_a_checkpoint_whose_schedule_took_other_steps_per_epoch_is_refused_on_resume():
    """A checkpoint written before a last batch of one image joined the one before it stepped
    its schedule once more per epoch: continued, the run would follow a schedule of another
    length silently."""
    from infer_fast.teacher import restore_schedule

    def schedule(steps_per_epoch, epochs=4):
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)

    old = schedule(steps_per_epoch=2)  # (10 images in batches of 9: 9 + 1)
    for _ in range(2 * 2):
        old.optimizer.step()
        old.step()
    with pytest.raises(ValueError, match=r"^s\.pt: its learning-rate schedule took 4 steps in 2 epochs, where this "
                                         r"version takes 1 per epoch .*start that training again"):
        restore_schedule(schedule(steps_per_epoch=1), old.state_dict(), 2, 1, "s.pt")
    same = schedule(steps_per_epoch=2)
    restore_schedule(same, old.state_dict(), 2, 2, "s.pt")
    assert same.last_epoch == 4 and same.get_last_lr() == old.get_last_lr()
