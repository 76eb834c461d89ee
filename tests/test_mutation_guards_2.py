"""Faults a second mutation audit showed the suite would let through (each test fails on the
mutant it was written for): RDED's key patch per image (the lowest-loss crop) and its seed,
feature duplication without self-pairs, the lean composition of large INFER sets, a resumed
batch's chunks shrunk where they no longer fit, the student's crop padding, RandomResizedCrop's
boxes as torchvision draws them, CutMix's box per axis, and the compression counts."""

import pytest
import torch

from infer_fast.data.transforms import random_resized_crop, resized_crop_boxes


# ---------------------------------------------------------------- transforms: RandomResizedCrop boxes
def test_resized_crop_boxes_stay_inside_square_images():
    """torchvision's get_params rejects a try whose box is wider OR taller than the image: on a
    square image with ratio up to 4/3 a full-area try is wider than the image."""
    for size in (20, 32):
        top, left, h, w = resized_crop_boxes(2000, size, size, (0.08, 1.0), (3 / 4, 4 / 3),
                                             torch.Generator().manual_seed(0))
        assert bool(((w <= size) & (h <= size) & (left + w <= size) & (top + h <= size)).all())
    # a tall image too
    top, left, h, w = resized_crop_boxes(2000, 30, 20, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(1))
    assert bool(((left + w <= 20) & (top + h <= 30)).all())


def test_resized_crop_ratio_is_width_over_height():
    """ratio is w / h (torchvision): ratio (2, 2) gives boxes twice as wide as tall."""
    top, left, h, w = resized_crop_boxes(300, 60, 60, (0.1, 0.3), (2.0, 2.0), torch.Generator().manual_seed(0))
    r = w.double() / h.double()
    assert bool(((r > 1.7) & (r < 2.3)).all()), r[:10]


def test_resized_crop_offsets_reach_the_last_row_and_column():
    """top uniform over 0..H-h (inclusive, as torchvision's randint(0, H - h + 1))."""
    top, left, h, w = resized_crop_boxes(1000, 8, 8, (0.25, 0.25), (1.0, 1.0), torch.Generator().manual_seed(0))
    assert bool((h == 4).all() and (w == 4).all())
    assert set(top.tolist()) == set(range(5)) and set(left.tolist()) == set(range(5))


def test_resized_crop_fallback_is_the_centre_crop():
    """No try fits a 10x40 image at full area with ratio <= 4/3: the fallback is the centre crop
    at the clamped ratio (torchvision: h = H, w = round(H * 4/3), centred)."""
    top, left, h, w = resized_crop_boxes(50, 10, 40, (1.0, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    assert h.tolist() == [10] * 50 and w.tolist() == [13] * 50
    assert top.tolist() == [0] * 50 and left.tolist() == [(40 - 13) // 2] * 50
    top, left, h, w = resized_crop_boxes(50, 40, 10, (1.0, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    assert w.tolist() == [10] * 50 and h.tolist() == [13] * 50 and top.tolist() == [(40 - 13) // 2] * 50


# ---------------------------------------------------------------- student augmentation "crop_flip"
def test_student_crop_flip_is_randomcrop_padding_width_over_8_then_flip():
    """crop_flip: RandomCrop(size, padding=size // 8) (CIFAR's 32 px: 4) + flip, on pixels."""
    from infer_fast.data.transforms import denormalize, normalize, random_crop_with_padding, random_flip
    from infer_fast.student import augment

    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = augment(x, mean, std, torch.Generator().manual_seed(3), "crop_flip")
    gen = torch.Generator().manual_seed(3)
    pixels = random_crop_with_padding(denormalize(x, mean, std), 32, 4, gen)
    torch.testing.assert_close(out, normalize(random_flip(pixels, gen), mean, std))


def test_random_resized_crop_antialiases_when_shrinking_by_default():
    """Documented (and torchvision's tensor default): bilinear, antialiased when shrinking."""
    import torch.nn.functional as F

    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = random_resized_crop(x, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0), gen=torch.Generator())
    ref = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(out, ref)


# ---------------------------------------------------------------- RDED: each image's key patch
class MeanTeacher(torch.nn.Module):
    """Two classes; class 0's logit grows with the image's mean (normalized): the brighter a
    patch, the lower its cross-entropy of class 0."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(10.0))

    def forward(self, x):
        m = x.mean((1, 2, 3))
        return torch.stack([self.scale * m, torch.zeros_like(m)], 1)


def test_rded_keeps_each_images_lowest_loss_crop_not_its_first_or_worst():
    """Candidates whose crops differ: per image the key patch is its LOWEST-loss crop (of
    crops_per_image), then the images' key patches ranked (RDED's selector)."""
    from infer_fast.data.transforms import denormalize, normalize
    from infer_fast.methods import rded

    n, crops, size, ipc = 6, 5, 16, 2
    ramp = torch.linspace(0, 255, size).view(1, 1, 1, size).expand(n, 1, size, size)
    noise = torch.randint(0, 60, (n, 1, size, size), generator=torch.Generator().manual_seed(2)).float()
    candidates = (ramp * 0.7 + noise).clamp(0, 255).to(torch.uint8).contiguous()
    mean, std = (0.5,), (0.5,)
    recipe = {"factor": 1, "crops_per_image": crops, "batch_size": 7}
    out = rded.class_images(candidates, 0, [MeanTeacher()], mean, std, ipc, recipe, torch.Generator().manual_seed(0))
    # the reference: the same draws, every crop scored, per image the best, then the best images
    gen = torch.Generator().manual_seed(0)
    top, left, side, _ = resized_crop_boxes(n * crops, size, size, rded.CROP_SCALE, rded.CROP_RATIO, gen)
    x = normalize(candidates, mean, std)
    patches = rded.square_crops(x, torch.arange(n).repeat_interleave(crops), top, left, side, size)
    loss = (-MeanTeacher()(patches).log_softmax(1)[:, 0]).detach().view(n, crops)
    best_crop = loss.argmin(1)
    assert not bool((best_crop == 0).all()) and not bool((loss.argmax(1) == best_crop).any())  # (the test bites)
    order = loss.min(1).values.argsort()[:ipc]
    want = denormalize(patches[order * crops + best_crop[order]], mean, std, to_uint8=True)
    assert torch.equal(out, want)


# ---------------------------------------------------------------- CutMix box on non-square images
def test_cutmix_box_sides_follow_their_own_axis():
    """The box's height is sqrt(1 - lam) of the image's height, its width of the width: on a
    10 x 40 image at lam 0.75 at most 4 (2 * (5 // 2)) rows and 20 columns."""
    from infer_fast.student import cutmix_box

    heights, widths = set(), set()
    for seed in range(200):
        top, bottom, left, right = cutmix_box(10, 40, 0.75, torch.Generator().manual_seed(seed))
        heights.add(bottom - top)
        widths.add(right - left)
    assert max(heights) == 4 and max(widths) == 20


# ---------------------------------------------------------------- feature duplication: self-pairs excluded
class FlatFeatures(torch.nn.Module):
    """Penultimate features = the flattened image (forward_features + a Linear head)."""

    def __init__(self, d):
        super().__init__()
        self.head = torch.nn.Linear(d, 2)

    def forward_features(self, x):
        return x.flatten(1)

    def forward(self, x):
        return self.head(self.forward_features(x))


def test_feature_duplication_of_orthogonal_features_is_zero():
    """Mean pairwise cosine between DIFFERENT images of a class: mutually orthogonal features give
    0 (counting each image with itself would give 1/m), two identical + one orthogonal 1/3."""
    from infer_fast.student import feature_duplication

    eye = torch.eye(4).view(4, 1, 2, 2)
    assert feature_duplication(eye, torch.zeros(4, dtype=torch.long), FlatFeatures(4)) == pytest.approx(0.0, abs=1e-12)
    three = torch.stack([eye[0], eye[0], eye[1]])
    assert feature_duplication(three, torch.zeros(3, dtype=torch.long), FlatFeatures(4)) == pytest.approx(1 / 3, abs=1e-12)


# ---------------------------------------------------------------- results table: only the run's seeds
def test_table_summarizes_only_the_runs_seeds_not_a_stale_extra_one():
    """A results.json left by an earlier session of 3 seeds, now run with 2: the row is the mean
    and std over seeds 0 and 1 only (seed 2 is the old session's)."""
    from infer_fast.results import summarize

    config = {"dataset": "fashion-mnist-mini", "ipc": [2], "methods": ["random"], "seeds": 2,
              "student": {"epochs": 2}, "dynamic_epochs": None, "accounting": "fair"}
    results = {"config": config, "teachers": [], "sets": {"random/ipc2": {}}, "scores": {},
               "runs": {f"random/ipc2/seed{s}": {"final_accuracy": a, "elapsed_s": 1.0}
                        for s, a in enumerate([0.5, 0.7, 0.1])}}
    row = summarize(results)[0]
    assert row["seeds"] == 2 and row["per_seed"] == [0.5, 0.7]
    assert row["accuracy_mean"] == pytest.approx(0.6) and row["accuracy_std"] == pytest.approx(0.1)


# ---------------------------------------------------------------- memory plan: held natural images in bytes
def test_plan_counts_the_held_natural_images_in_bytes(monkeypatch):
    """holds_natural: each image of a group also holds its float32 natural image (ch*H*W*4
    bytes): the groups planned, with their activations and those images, fit the budget."""
    from infer_fast import memory
    from infer_fast.distill import plan
    from infer_fast.models import create_model

    torch.manual_seed(0)
    teacher = create_model("convnet-w8-d1", num_classes=10, in_channels=3, image_size=32).eval().requires_grad_(False)
    natural = torch.rand(2, 10, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # float32
    per_image = plan.activation_bytes_per_image(teacher, natural, 4)
    held = 3 * 32 * 32 * 4
    monkeypatch.setattr(plan, "CPU_MAX_ACTIVATION_BYTES", 1 << 40)
    available = int(20 * (per_image + held) * 10 / plan.MEMORY_FRACTION)  # room for 20 groups of both
    monkeypatch.setattr(memory, "available_memory", lambda device: available)
    G, chunk = plan.auto_batch_plan(teacher, natural, K=1000, max_images=10 ** 9, holds_natural=True)
    assert chunk is None
    assert G * 10 * (per_image + held) <= plan.MEMORY_FRACTION * available
    assert G >= 19


# ---------------------------------------------------------------- large-set composition: which natural set a UFC takes
def test_lean_composition_of_chunks_spanning_several_natural_sets():
    """Sets too large to keep their normalized natural sets compose each chunk from only the sets
    it uses (indices remapped): with chunks of several groups over different natural sets,
    every UFC still goes with ITS natural set ufc_index[g]."""
    from test_storage import make_infer

    from infer_fast.storage import DistilledDataset

    ds = make_infer(k=3, c=3, g=6)
    ds.ufc_index = torch.tensor([2, 0, 1, 1, 2, 0])
    expected = DistilledDataset(ds, backend="torch").all_images()[0]
    for chunk in (6, 9, 100):
        lean = DistilledDataset(ds, backend="torch", cache_bytes=0, chunk_images=chunk)
        lean._keep_natural = False
        torch.testing.assert_close(lean.all_images()[0], expected, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(torch.cat([x for _, x in lean.iter_chunks()]), expected, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- RDED: the seed draws the candidates too
class MeanTeacher10(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(-1, 1, 10))

    def forward(self, x):
        return x.mean((1, 2, 3))[:, None] * self.w[None]


def test_rded_seed_draws_the_candidate_images(monkeypatch):
    """The release draws its candidates (--mipc) at random; here torch generators seeded with the
    request's seed (module doc): seed s picks train.per_class(candidates, seed=s)."""
    from infer_fast.data import load_dataset
    from infer_fast.methods import rded

    train = load_dataset("fashion-mnist-mini", "train")
    seen = []
    real = type(train).per_class

    def spy(self, per_class, seed=0):
        seen.append((per_class, seed))
        return real(self, per_class, seed=seed)

    monkeypatch.setattr(type(train), "per_class", spy)
    rded.rded_set(train, [MeanTeacher10()], 1, {"candidates_per_class": 2, "crops_per_image": 1}, seed=5)
    assert seen == [(2, 5)]


# ---------------------------------------------------------------- resumed batch: recorded chunks only where they fit
def test_batch_chunk_size_shrinks_recorded_chunks_that_no_longer_fit(monkeypatch):
    """An interrupted batch resumed on a machine with less memory: its recorded chunks (larger
    than what fits now) give way to the chunks that fit (with the plan's warning)."""
    from infer_fast import memory
    from infer_fast.distill import plan
    from infer_fast.models import create_model

    torch.manual_seed(0)
    teacher = create_model("convnet-w8-d1", num_classes=10, in_channels=1, image_size=28).eval().requires_grad_(False)
    probe = torch.rand(1, 10, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    per_image = plan.activation_bytes_per_image(teacher, probe, 4)
    monkeypatch.setattr(plan, "CPU_MAX_ACTIVATION_BYTES", 1 << 40)
    monkeypatch.setattr(memory, "available_memory", lambda device: int(1.5 * per_image * 10 / plan.MEMORY_FRACTION))
    with pytest.warns(RuntimeWarning, match="continues in chunks of"):
        fits = plan.batch_chunk_size(teacher, probe, 3, recorded=29, resumed=True)
    assert fits <= 15  # (the budget, MEMORY_FRACTION of what is available, holds 15 images' activations)


# ---------------------------------------------------------------- compression counts: training images of an INFER set
def test_counts_from_shapes_training_images_is_k_c_plus_g_c():
    from test_storage import make_infer

    from infer_fast.storage.compression import counts_from_shapes

    ds = make_infer(k=2, c=3, g=4)
    counts = counts_from_shapes("infer", ds.tensor_shapes())
    assert counts["training_images"] == ds.num_training_images() == 2 * 3 + 4 * 3
    assert counts["stored_images"] == ds.num_stored_images() == 2 * 3 + 4
