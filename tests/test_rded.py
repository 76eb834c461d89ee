"""RDED (infer_fast/methods/rded.py): its recipe per dataset family, the patch selection (the
lowest-loss key patch of each image, the lowest-loss ones per class, in RDED's layout), the
stitching, a folder split decoding only the candidates, and a small run through the
method registry."""
import collections
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import kill_after_rded_classes, train_tiny_teachers
from torch import nn

from infer_fast.data import DECODE_LOG_ENV, load_dataset
from infer_fast.data.synthetic import write_fake_imagenet
from infer_fast.data.transforms import cell_sizes, resized_crop_boxes, shuffle_patches
from infer_fast.methods import DistillRequest, distill_method_names, get_method
from infer_fast.methods import rded
from infer_fast.storage import load_distilled


def test_recipe_per_dataset_family():
    # the authors' scripts: --factor 1 (CIFAR, Tiny-ImageNet) / 2 (ImageNet), --mipc 300, --num-crop 5
    assert rded.RECIPES == {
        "cifar": {"factor": 1, "candidates_per_class": 300, "crops_per_image": 5},
        "tiny-imagenet": {"factor": 1, "candidates_per_class": 300, "crops_per_image": 5},
        "imagenet": {"factor": 2, "candidates_per_class": 300, "crops_per_image": 5},
    }
    assert rded.CROP_SCALE == (0.08, 1.0) and rded.CROP_RATIO == (1.0, 1.0)
    for name, size, family in (("cifar10", 32, "cifar"), ("cifar100", 32, "cifar"), ("fashion-mnist", 28, "cifar"),
                               ("tiny-imagenet", 64, "tiny-imagenet"), ("imagenet", 224, "imagenet"),
                               ("imagenet", 64, "imagenet"), ("imagefolder", 32, "cifar"),
                               ("imagefolder", 128, "imagenet")):  # ImageNet subsets at 128 px: factor 2
        assert rded.recipe_family(name, size) == family, (name, size)
    recipe = rded.resolve_recipe({}, "imagenet", 224, ipc=10)
    assert (recipe["family"], recipe["factor"], recipe["candidates_per_class"], recipe["crops_per_image"]) == \
        ("imagenet", 2, 300, 5)
    assert rded.resolve_recipe({"factor": 3, "crops_per_image": 1}, "cifar10", 32, ipc=10)["factor"] == 3


def test_bad_options_are_refused_naming_the_option():
    method = get_method("rded")
    for options, name in (({"factor": 0}, "factor"), ({"factor": "2"}, "factor"),
                          ({"candidates_per_class": True}, "candidates_per_class"),
                          ({"crops_per_image": -1}, "crops_per_image"), ({"batch_size": 1.5}, "batch_size"),
                          ({"mipc": 300}, "mipc")):
        with pytest.raises(ValueError, match=name):
            method.check_options(options)
    with pytest.raises(ValueError, match=r"candidates_per_class=30 is too few.*: raise candidates_per_class "
                                         r"\(--candidates-per-class\) where the classes have the images, or lower "
                                         r"factor \(--factor\) or ipc$"):
        rded.resolve_recipe({"candidates_per_class": 30}, "imagenet", 224, ipc=10)  # 10 * 2^2 = 40 patches
    with pytest.raises(ValueError, match=r"need 600 candidates per class \(one patch each\): .*, or lower ipc$"):
        rded.resolve_recipe({"candidates_per_class": 300, "factor": 1}, "imagenet", 224, ipc=600)  # (no smaller factor)
    # more patches than a class has images: the count cannot be lowered to fit, the patches can
    with pytest.raises(ValueError, match=r"class 0 of the train split of fashion-mnist-mini has 500 .*: ipc x "
                                         r"factor\^2 = 600 patches need more than that: lower ipc$"):
        rded.rded_set(load_dataset("fashion-mnist-mini", "train"), [CentreTeacher(10)], ipc=600,
                      options={"candidates_per_class": 600})
    with pytest.raises(ValueError, match="factor=40"):
        rded.resolve_recipe({"factor": 40}, "cifar10", 32, ipc=1)


def test_stitch_layout_factor_2():
    # patch of rank r is the constant r: rank r -> image r % ipc, cell r // ipc (row-major)
    ipc, factor = 3, 2
    ranked = torch.arange(ipc * factor ** 2, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 2, 4, 4)
    out = rded.stitch(ranked, ipc, factor, 8)
    assert out.shape == (ipc, 2, 8, 8)
    for image in range(ipc):
        quadrants = [out[image, :, :4, :4], out[image, :, :4, 4:], out[image, :, 4:, :4], out[image, :, 4:, 4:]]
        for cell, quadrant in enumerate(quadrants):
            assert (quadrant == cell * ipc + image).all()
    # an odd size: the first row and column of cells one pixel more, the patch resized to fit
    odd = rded.stitch(ranked, ipc, factor, 9)
    assert cell_sizes(9, 2) == (5, 4)
    assert (odd[0, :, :5, :5] == 0).all() and (odd[0, :, :5, 5:] == 3).all() and (odd[0, :, 5:, 5:] == 9).all()


def _strip_order(positions, cells):
    """The order in which ``positions`` (source row or column of each output row or column)
    lays out the strips of sizes ``cells`` (each strip whole, its pixels in order)."""
    starts = [sum(cells[:i]) for i in range(len(cells))]
    order, at = [], 0
    while at < len(positions):
        strip = starts.index(int(positions[at]))  # (ValueError: not a strip's start)
        assert positions[at:at + cells[strip]].tolist() == list(range(starts[strip], starts[strip] + cells[strip]))
        order.append(strip)
        at += cells[strip]
    assert sorted(order) == list(range(len(cells)))
    return tuple(order)


@pytest.mark.parametrize("size, factor", [(8, 2), (9, 2), (12, 3), (7, 1)])
def test_shuffle_patches_permutes_the_patch_rows_and_columns(size, factor):
    """The release's ShufflePatches: the column strips in a random order, then the row strips:
    each output row (column) is a whole source row (column), the strips (cell_sizes; unequal
    when size % factor != 0) keep their pixels in order, one row and one column permutation per
    sample, every permutation drawn."""
    n = 400
    coords = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")).float()
    x = coords.expand(n, 2, size, size).contiguous()  # channel 0: the row of a pixel, channel 1: its column
    out = shuffle_patches(x, factor, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    if factor == 1:
        assert out is x
        return
    assert torch.equal(out, shuffle_patches(x, factor, torch.Generator().manual_seed(0)))
    cells = cell_sizes(size, factor)
    seen = set()
    for k in range(n):
        rows, cols = out[k, 0, :, 0], out[k, 1, 0, :]
        assert torch.equal(out[k, 0], rows[:, None].expand(size, size))  # whole rows moved
        assert torch.equal(out[k, 1], cols[None, :].expand(size, size))  # whole columns moved
        seen.add((_strip_order(rows, cells), _strip_order(cols, cells)))
    assert len(seen) == math.factorial(factor) ** 2


def test_shuffle_patches_refuses_a_bad_factor_by_name():
    x = torch.zeros(2, 1, 4, 4)
    for bad in (0, 2.0, True, 5):
        with pytest.raises(ValueError, match="factor"):
            shuffle_patches(x, bad)


def test_rded_students_augment_as_the_release():
    """RDED's students (the release's validation/main.py): the set's patches shuffled, then
    RandomResizedCrop(scale (1 / factor, 1), ratio (3/4, 4/3)), then a flip, on pixels."""
    from infer_fast.data.transforms import denormalize, normalize, random_flip, random_resized_crop
    from infer_fast.methods.registry import set_student_settings
    from infer_fast.student import augment

    assert get_method("rded").student_settings({"factor": 2}) == {"augmentation": "shuffle_patches_crop_flip",
                                                                   "patches": 2}
    mean, std = (0.5,), (0.25,)
    x = torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    out = augment(x, mean, std, torch.Generator().manual_seed(3), "shuffle_patches_crop_flip", patches=2)
    gen = torch.Generator().manual_seed(3)
    pixels = random_resized_crop(shuffle_patches(denormalize(x, mean, std), 2, gen), 16, (0.5, 1.0),
                                 (3 / 4, 4 / 3), gen)
    torch.testing.assert_close(out, normalize(random_flip(pixels, gen), mean, std))

    class Made:  # (a set as load_distilled gives it: its method and recorded recipe)
        method, hyperparameters = "rded", {"factor": 3}
    assert set_student_settings(Made) == {"augmentation": "shuffle_patches_crop_flip", "patches": 3}
    Made.method = "random"
    assert set_student_settings(Made) == {}
    Made.method = "imported"  # (a method not registered here)
    assert set_student_settings(Made) == {}


def test_square_crops_match_cropping_one_by_one():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 16, 16, generator=gen)
    top, left, side, _ = resized_crop_boxes(12, 16, 16, rded.CROP_SCALE, rded.CROP_RATIO, gen)
    source = torch.arange(3).repeat_interleave(4)
    out = rded.square_crops(x, source, top, left, side, 8)
    for k in range(12):
        t, l, s = int(top[k]), int(left[k]), int(side[k])
        crop = x[source[k]:source[k] + 1, :, t:t + s, l:l + s]
        want = crop if s == 8 else F.interpolate(crop, size=(8, 8), mode="bilinear", align_corners=False,
                                                   antialias=True)
        torch.testing.assert_close(out[k], want[0])


class CentreTeacher(nn.Module):
    """Two classes; the logit of class 0 grows with the centre pixel (normalized), so a
    patch's cross-entropy of class 0 falls as its value rises."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.num_classes = num_classes

    def forward(self, x):
        centre = x[:, 0, x.shape[-2] // 2, x.shape[-1] // 2]
        return torch.stack([self.scale * centre] + [torch.zeros_like(centre)] * (self.num_classes - 1), 1)


def test_selection_keeps_the_lowest_loss_patches_in_rank_layout():
    # 20 candidates of constant value (every crop of one is the same patch), shuffled; the
    # teacher prefers brighter patches: the 8 brightest, one patch each, fill 2 images
    values = torch.randperm(20, generator=torch.Generator().manual_seed(1)) * 10 + 20
    candidates = values.view(-1, 1, 1, 1).expand(-1, 1, 8, 8).to(torch.uint8).contiguous()
    recipe = {"factor": 2, "crops_per_image": 5, "batch_size": 7}
    out = rded.class_images(candidates, 0, [CentreTeacher()], (0.5,), (0.5,), 2, recipe,
                            torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == (2, 1, 8, 8)
    ranked = sorted(values.tolist(), reverse=True)[:8]  # 210, 200, ..., 140
    for image in range(2):
        quadrants = [out[image, 0, :4, :4], out[image, 0, :4, 4:], out[image, 0, 4:, :4], out[image, 0, 4:, 4:]]
        assert [int(q.unique().item()) for q in quadrants] == [ranked[cell * 2 + image] for cell in range(4)]


def test_true_class_loss_is_the_cross_entropy_of_the_padded_patch():
    patches = torch.randn(5, 1, 4, 4)
    teacher = CentreTeacher(3)
    loss = rded.true_class_loss(patches, 1, [teacher], 8, batch_size=2)
    padded = F.pad(patches, (2, 2, 2, 2))
    torch.testing.assert_close(loss, F.cross_entropy(teacher(padded), torch.ones(5, dtype=torch.long),
                                                     reduction="none").detach())


def test_bf16_scoring_runs_the_teachers_under_autocast_and_ranks_fp32_losses():
    """precision="bf16": the teachers' forward passes under bf16 autocast, the losses fp32 and close
    to fp32 scoring's; "fp32" (given or not) leaves the recipe of the sets made before the option."""
    gen = torch.Generator().manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(8, 10))
    seen = []
    teacher[0].register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    patches = torch.randn(6, 3, 8, 8, generator=gen)
    fp32 = rded.true_class_loss(patches, 3, [teacher], 16, batch_size=4)
    bf16 = rded.true_class_loss(patches, 3, [teacher], 16, batch_size=4, precision="bf16")
    assert seen == [torch.float32] * 2 + [torch.bfloat16] * 2 and bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.05)
    assert rded.resolve_recipe({"precision": "bf16"}, "cifar10", 32, ipc=1)["precision"] == "bf16"
    assert rded.resolve_recipe({"precision": "fp32"}, "cifar10", 32, ipc=1) == rded.resolve_recipe({}, "cifar10", 32,
                                                                                                    ipc=1)
    assert "precision" not in rded.resolve_recipe({}, "cifar10", 32, ipc=1)
    with pytest.raises(ValueError, match="precision"):
        get_method("rded").check_options({"precision": "fp16"})


def test_channels_last_scoring_scores_copies_in_that_layout():
    """channels_last: the padded patches reach the teachers in channels_last, the losses match
    the default layout's to rounding; rded_set scores with copies in that layout (the caller's
    teacher is left in its own) and makes the same images here; False (given or not) leaves the
    recipe of the sets made before the option."""
    gen = torch.Generator().manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(8, 10))
    layouts = []
    teacher.register_forward_pre_hook(
        lambda module, inputs: layouts.append(inputs[0].is_contiguous(memory_format=torch.channels_last)))
    patches = torch.randn(6, 3, 8, 8, generator=gen)
    default = rded.true_class_loss(patches, 3, [teacher], 16, batch_size=4)
    channels_last = rded.true_class_loss(patches, 3, [teacher], 16, batch_size=4, channels_last=True)
    assert layouts == [False, False, True, True]
    torch.testing.assert_close(channels_last, default, rtol=1e-5, atol=1e-5)
    assert rded.resolve_recipe({"channels_last": True}, "cifar10", 32, ipc=1)["channels_last"] is True
    assert rded.resolve_recipe({"channels_last": False}, "cifar10", 32, ipc=1) == rded.resolve_recipe(
        {}, "cifar10", 32, ipc=1)
    with pytest.raises(ValueError, match="channels_last"):
        get_method("rded").check_options({"channels_last": "yes"})

    train = load_dataset("fashion-mnist-mini", "train")
    grey = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10)).eval()
    options = dict(candidates_per_class=8, crops_per_image=2)
    plain = rded.rded_set(train, [grey], ipc=1, options=options)
    strides = grey[0].weight.stride()
    scorers = []
    grey.register_forward_pre_hook(lambda module, inputs: scorers.append(module))  # (deep-copied with the teacher)
    made = rded.rded_set(train, [grey], ipc=1, options={**options, "channels_last": True})
    assert len(scorers) == 10 and all(m is not grey and m[0].weight.stride() != strides for m in scorers)
    assert grey[0].weight.stride() == strides  # the caller's teacher as it was
    assert torch.equal(made.images, plain.images) and made.hyperparameters["channels_last"] is True


def test_folder_split_decodes_only_the_candidates(tmp_path, monkeypatch):
    write_fake_imagenet(tmp_path / "data", classes=3, train_per_class=6, val_per_class=1)
    train = load_dataset({"name": "imagenet", "num_classes": 3, "image_size": 32}, "train",
                         data_root=str(tmp_path / "data"))
    log = tmp_path / "decodes.log"
    monkeypatch.setenv(DECODE_LOG_ENV, str(log))
    ds = rded.rded_set(train, [CentreTeacher(3)], ipc=1, options={"candidates_per_class": 4}, seed=0)
    decoded = collections.Counter(log.read_text().splitlines())
    # ImageNet's recipe: factor 2, so 4 patches from 4 candidates of each class, each decoded once
    assert ds.hyperparameters["factor"] == 2 and len(decoded) == 12 and set(decoded.values()) == {1}
    assert sorted(decoded) == sorted(train.per_class(4, seed=0).paths)
    assert ds.labels.tolist() == [0, 1, 2]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return train_tiny_teachers(tmp_path_factory.mktemp("teachers"), seeds=(0,))


def _distill(out_dir, teacher, seed=0, resume=False, progress=False, **options):
    request = DistillRequest(method="rded", dataset="fashion-mnist-mini", ipc=2, out_dir=out_dir, teacher_paths=teacher,
                             options={"candidates_per_class": 12, "crops_per_image": 2, **options}, seed=seed,
                             resume=resume, progress=progress, device="cpu")
    return load_distilled(request.make_set())


def test_rded_through_the_registry(tmp_path, teacher, monkeypatch):
    from infer_fast.data.sets import _Split

    method = get_method("rded")
    assert "rded" in distill_method_names() and method.label == "RDED"
    assert method.uses_teachers and method.student_labels == "per-batch" and method.layout == "images"
    counted, real_counts = [], _Split.class_counts
    monkeypatch.setattr(_Split, "class_counts", lambda split: counted.append(1) or real_counts(split))
    ds = _distill(tmp_path / "a", teacher, factor=2)
    assert len(counted) == 1  # the candidates per class checked once, before the teachers load
    assert ds.method == "rded" and ds.images.shape == (20, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [c for c in range(10) for _ in range(2)] and ds.soft_labels is None
    assert ds.budget == {"ipc": 2, "K": 0, "M": 1, "accounting": "ipc"} and ds.seed == 0
    assert ds.hyperparameters["factor"] == 2 and ds.hyperparameters["candidates_per_class"] == 12
    assert [t["path"] for t in ds.teachers] == teacher
    again = _distill(tmp_path / "b", teacher, factor=2)
    other = _distill(tmp_path / "c", teacher, seed=1, factor=2)
    assert torch.equal(ds.images, again.images) and not torch.equal(ds.images, other.images)


def test_cli_train_gives_an_rded_set_its_students_augmentation(tmp_path, teacher, monkeypatch, capsys):
    """`infer-fast train` of an RDED set: the release's student augmentation at the set's factor
    over the family recipe, unless --augmentation says otherwise."""
    import infer_fast.student
    from infer_fast.cli import main

    _distill(tmp_path / "set", teacher, factor=2)
    configs, evaluate_seeds = [], infer_fast.student.evaluate_seeds

    def recording(ds, test, config, **kw):
        configs.append(config)
        return evaluate_seeds(ds, test, config, **kw)

    monkeypatch.setattr(infer_fast.student, "evaluate_seeds", recording)
    common = ["train", str(tmp_path / "set"), "--dynamic", "--teachers", teacher[0], "--model", "convnet-w8-d2",
              "--epochs", "1", "--device", "cpu", "--quiet"]
    assert main(common) == 0
    assert main([*common, "--augmentation", "resized_crop_flip"]) == 0
    assert [(c.augmentation, c.patches, c.mix) for c in configs] == [
        ("shuffle_patches_crop_flip", 2, "mixup"), ("resized_crop_flip", 2, "mixup")]
    assert "final top-1" in capsys.readouterr().out


def test_rded_refuses_before_loading_teachers(tmp_path):
    missing = [str(tmp_path / "no-such-teacher.pt")]
    with pytest.raises(ValueError, match="rded with candidates_per_class=600 needs 600 images of every class, but class 0 "):
        DistillRequest(method="rded", dataset="fashion-mnist-mini", ipc=1, out_dir=tmp_path / "o",
                       teacher_paths=missing, options={"candidates_per_class": 600}, device="cpu").make_set()
    # (to no less than what the factor needs: the advice of the "too few" refusal is not undone by this one's)
    with pytest.raises(ValueError, match=r"candidates_per_class=600 .* has 500 \(10 classes have fewer\): lower it "
                                         r"\(--candidates-per-class\) to 500 or fewer, at least ipc x factor\^2 = 1$"):
        rded.rded_set(load_dataset("fashion-mnist-mini", "train"), [CentreTeacher(10)], ipc=1,
                      options={"candidates_per_class": 600})  # the library path: the same check
    with pytest.raises(ValueError, match="teachers: method rded needs at least one teacher checkpoint"):
        DistillRequest(method="rded", dataset="fashion-mnist-mini", ipc=1, out_dir=tmp_path / "o", device="cpu")
    with pytest.raises(ValueError, match="factor"):  # (refused when the request is made)
        DistillRequest(method="rded", dataset="fashion-mnist-mini", ipc=1, out_dir=tmp_path / "o",
                       teacher_paths=missing, options={"factor": 0}, device="cpu")
    assert not (tmp_path / "o").exists()


def test_rded_killed_between_classes_resumes_bit_identically(tmp_path, teacher, monkeypatch, capsys):
    """A checkpoint after every class (checkpoint_minutes tiny): killed once the checkpoint of
    4 classes is on disk, the run refuses to start over it without resume, continues with
    resume from class 4 (saying so) and ends with exactly the images of an uninterrupted run;
    the checkpoint is gone once the set is saved. A resume with other options is refused."""
    every_class = {"checkpoint_minutes": 1e-9}
    reference = _distill(tmp_path / "reference", teacher, **every_class)
    assert not (tmp_path / "reference.recovery.pt").exists()
    restore = kill_after_rded_classes(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        _distill(tmp_path / "killed", teacher, **every_class)
    restore()
    checkpoint = tmp_path / "killed.recovery.pt"
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["classes_done"] == 4 and saved["results"] == [1, 2, 3, 4] and not (tmp_path / "killed").exists()
    with pytest.raises(ValueError, match=r"RDED checkpoint .* exists: run the same command with --resume \(resume=True from Python\)"):
        _distill(tmp_path / "killed", teacher, **every_class)
    with pytest.raises(ValueError, match=r"belongs to another run \(recipe.crops_per_image differs; recorded "
                                         r"recipe.crops_per_image=2\)"):
        _distill(tmp_path / "killed", teacher, resume=True, crops_per_image=3, **every_class)
    capsys.readouterr()
    resumed = _distill(tmp_path / "killed", teacher, resume=True)  # (checkpoint_minutes: no effect)
    assert f"{checkpoint}: resuming RDED after 4/10 classes" in capsys.readouterr().out  # (said without progress too)
    assert torch.equal(resumed.images, reference.images) and torch.equal(resumed.labels, reference.labels)
    assert resumed.hyperparameters == reference.hyperparameters and "checkpoint_minutes" not in resumed.hyperparameters
    assert not checkpoint.exists() and not (tmp_path / "killed.recovery.pt.results").exists()
    _distill(tmp_path / "fresh", teacher, resume=True)
    assert f"no RDED checkpoint at {tmp_path / 'fresh.recovery.pt'}: starting from the beginning" in capsys.readouterr().out


@pytest.mark.parametrize("during_class", [3, 9])  # (a class in the middle; the last one)
def test_rded_stopped_by_a_signal_finishes_its_class_and_checkpoints_there(tmp_path, teacher, monkeypatch,
                                                                            during_class):
    """A stop signal (SIGTERM, interrupts.py) arriving while a class is scored: the class is
    finished, the checkpoint written after it whatever the cadence (the last class's too), the
    run stops with Interrupted, and a resume ends with exactly the uninterrupted run's images."""
    import signal

    from infer_fast import interrupts

    reference = _distill(tmp_path / "reference", teacher)
    real = rded.class_images

    def signalled(batch, c, *args):
        if c == during_class:  # (as the handler does inside a safe-point region)
            interrupts.STOP.signum = signal.SIGTERM
        return real(batch, c, *args)

    monkeypatch.setattr(rded, "class_images", signalled)
    with pytest.raises(interrupts.Interrupted) as stopped:
        _distill(tmp_path / "stopped", teacher)  # (default cadence: 10 minutes, never reached here)
    monkeypatch.setattr(rded, "class_images", real)
    assert stopped.value.signum == signal.SIGTERM and interrupts.STOP.signum is None
    saved = torch.load(tmp_path / "stopped.recovery.pt", weights_only=True)
    assert saved["classes_done"] == during_class + 1
    resumed = _distill(tmp_path / "stopped", teacher, resume=True)
    assert torch.equal(resumed.images, reference.images) and not (tmp_path / "stopped.recovery.pt").exists()


def test_evaluate_gives_an_rded_set_its_students_per_batch_labels():
    """`infer-fast evaluate` of an RDED set under our protocol: per-batch teacher labels (what its
    students take, as `run` trains them; it refused the unlabelled set), unless --soft-labels
    says otherwise; another method's set keeps the protocol's default, DD-Ranking its own."""
    from infer_fast.cli import _evaluation_protocol, build_parser

    def soft_labels(method, *flags):
        args = build_parser().parse_args(["evaluate", "set", "--teachers", "t.pt", *flags])
        return _evaluation_protocol(args, "fashion-mnist-mini", method).soft_labels

    assert soft_labels("rded") == "per-batch"
    assert soft_labels("rded", "--soft-labels", "static") == "static"
    assert soft_labels("sre2l") == soft_labels("an-imported-set") == "static"
    assert soft_labels("rded", "--protocol", "dd-ranking") == soft_labels("sre2l", "--protocol", "dd-ranking")
