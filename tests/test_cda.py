"""CDA (infer_fast/methods/cda.py): its recipe, the crop-scale curriculum (schedule, draws,
validation), a small run through the registry, batching independence and resume."""
import math

import pytest
import torch
from conftest import kill_after_save, rounding_bound, train_tiny_teachers

from infer_fast.data import load_dataset
from infer_fast.distill import RecoveryConfig, engine
from infer_fast.distill.config import crop_scale_at
from infer_fast.methods import DistillRequest, get_method
from infer_fast.storage import load_distilled

torch.set_num_threads(1)

DATASET = "fashion-mnist-mini"
TINY = {"recipe": "tiny-imagenet", "iterations": 3}  # the small-image recipe, few iterations


@pytest.fixture(scope="module")
def teacher_paths(tmp_path_factory):
    return train_tiny_teachers(tmp_path_factory.mktemp("teachers"), seeds=(0,))


def _config(options=None, seed=0):
    return get_method("cda").check_options(options or {}, seed)["config"]


# ---- recipe ---------------------------------------------------------------------------------

def test_recipes_are_the_papers():
    """The values the module docstring sources from the authors' CDA code and README."""
    curriculum = dict(augmentation="imagenet", crop_scale=(0.08, 1.0), crop_scale_curriculum=("cosine", 1.0, 1.0),
                      betas=(0.5, 0.9), eps=1e-8, first_bn_mult=10.0)
    assert _config(seed=5) == RecoveryConfig(**curriculum, iterations=4000, lr=0.25, r_bn=0.01, max_shift=32, seed=5)
    assert _config({"recipe": "tiny-imagenet"}) == RecoveryConfig(**curriculum, iterations=4000, lr=0.4, r_bn=0.05,
                                                                 max_shift=4)
    assert _config({"recipe": "imagenet-21k"}) == RecoveryConfig(**curriculum, iterations=2000, lr=0.05, r_bn=0.25,
                                                                max_shift=32)
    # user options override the recipe (YAML lists as tuples); the seed option beats the request's
    config = _config({"recipe": "tiny-imagenet", "iterations": 7, "crop_scale_curriculum": ["linear", 0.5, 0.5],
                      "seed": 2}, seed=9)
    assert (config.iterations, config.lr, config.seed) == (7, 0.4, 2)
    assert config.crop_scale_curriculum == ("linear", 0.5, 0.5)
    assert get_method("cda").label == "CDA" and get_method("cda").resumable


@pytest.mark.parametrize("options, message", [
    ({"recipe": "cifar"}, "recipe must be one of imagenet-1k, tiny-imagenet, imagenet-21k"),
    ({"augmentation": "roll"}, "crop_scale_curriculum .* needs augmentation='imagenet'"),
    ({"crop_scale_curriculum": ("exp", 1.0, 1.0)}, r"crop_scale_curriculum \(--crop-scale-curriculum\) must be"),
    ({"selection": "random"}, "selection do not apply to method cda"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        _config(options)


# ---- the schedule ---------------------------------------------------------------------------

def _lows(schedule, start=1.0, milestone=1.0, iterations=100, crop_scale=(0.08, 1.0)):
    config = RecoveryConfig(augmentation="imagenet", iterations=iterations, crop_scale=crop_scale,
                            crop_scale_curriculum=(schedule, start, milestone))
    config.validate()
    ranges = [crop_scale_at(config, t) for t in range(iterations)]
    assert all(high == crop_scale[1] for _, high in ranges)
    return [low for low, _ in ranges]


@pytest.mark.parametrize("schedule", ["step", "linear", "cosine"])
@pytest.mark.parametrize("milestone", [1.0, 0.5])
def test_schedule_start_end_monotone_milestone(schedule, milestone):
    lows = _lows(schedule, milestone=milestone)
    end = int(milestone * 100)
    assert lows[0] == 1.0  # whole images first
    assert all(a >= b for a, b in zip(lows, lows[1:]))  # never harder, then easier
    assert all(low > 0.08 for low in lows[:end]) and lows[end:] == [0.08] * (100 - end)  # held from the milestone


def test_schedule_shapes():
    cosine, linear, step = _lows("cosine"), _lows("linear"), _lows("step")
    assert step[:100] == [1.0] * 100  # with milestone 1 a step holds the start throughout
    assert cosine[50] == pytest.approx(0.08 + 0.92 * 0.5) and linear[25] == pytest.approx(0.08 + 0.92 * 0.75)
    assert cosine[25] == pytest.approx(0.08 + 0.92 * (1 + math.cos(math.pi / 4)) / 2)
    assert cosine[10] > linear[10] and cosine[90] < linear[90]  # slow start and end, the half cosine
    assert _lows("cosine", start=0.5, crop_scale=(0.2, 0.9))[0] == 0.5
    plain = RecoveryConfig(augmentation="imagenet", crop_scale=(0.25, 0.5))
    assert all(crop_scale_at(plain, t) == (0.25, 0.5) for t in (0, 999))  # no curriculum: crop_scale throughout


@pytest.mark.parametrize("bad", [
    dict(crop_scale_curriculum=("cosine", 1.0, 0.0)), dict(crop_scale_curriculum=("cosine", 1.0, 1.5)),
    dict(crop_scale_curriculum=("cosine", 0.05, 1.0)),  # start below crop_scale's low
    dict(crop_scale_curriculum=("cosine", 0.8, 1.0), crop_scale=(0.1, 0.6)),  # above its high
    dict(crop_scale_curriculum=("cosine", 1.0)), dict(crop_scale_curriculum=("cosine", True, 1.0)),
    dict(crop_scale_curriculum="cosine"), dict(crop_scale_curriculum=("cosine", 1.0, 1.0), augmentation="roll"),
])
def test_curriculum_validation_names_the_field(bad):
    with pytest.raises(ValueError, match="crop_scale_curriculum"):
        RecoveryConfig(**{"augmentation": "imagenet", **bad}).validate()


def test_curriculum_is_recorded():
    config = RecoveryConfig(augmentation="imagenet", iterations=10, crop_scale_curriculum=("cosine", 1.0, 0.5))
    assert config.to_dict()["crop_scale_curriculum"] == ["cosine", 1.0, 0.5]
    rule = config.describe_augmentation()
    assert "lower bound from 1.0 at iteration 0 to 0.08 at iteration 5 (cosine curriculum)" in rule
    assert RecoveryConfig().to_dict()["crop_scale_curriculum"] is None


def test_curriculum_draws():
    """The boxes follow the schedule (the first iteration's is the whole image), from the same
    numbers of each job's generator as without the curriculum (flips and shifts unchanged),
    and drawn per step (no iterations given) they are the same as drawn up front."""
    cfg = lambda **kw: RecoveryConfig(augmentation="imagenet", iterations=40, max_shift=3, **kw)  # noqa: E731
    draws = lambda config, n=40: engine.Augmentation(  # noqa: E731
        config, [torch.Generator().manual_seed(s) for s in range(4)], 28, 28, "cpu", n)
    curriculum = cfg(crop_scale_curriculum=("cosine", 1.0, 1.0))
    with_cda, without = draws(curriculum).draws, draws(cfg()).draws  # (iterations, jobs, 7)
    assert with_cda[0, :, :4].tolist() == [[0, 0, 28, 28]] * 4
    assert torch.equal(with_cda[:, :, 4:], without[:, :, 4:])
    area = (with_cda[:, :, 2] * with_cda[:, :, 3]).float() / (28 * 28)
    assert area[:10].min() > area[30:].min() and not torch.equal(with_cda[:, :, :4], without[:, :, :4])
    per_step = draws(curriculum, None)
    assert torch.equal(torch.stack([per_step.advance() for _ in range(40)]), with_cda)


# ---- runs -----------------------------------------------------------------------------------

def _run(method, out, teacher_paths, options, resume=False):
    DistillRequest(method=method, dataset=DATASET, ipc=2, out_dir=out, teacher_paths=teacher_paths, options=options,
                   seed=4, resume=resume, progress=False, device="cpu").make_set()
    return load_distilled(out)


def test_cda_run_is_sre2l_with_the_curriculum(teacher_paths, tmp_path):
    """A set of method "cda" with its curriculum recorded; without the curriculum the same run
    is SRe2L's with the same settings bit for bit, so the curriculum is what changes the images."""
    cda = _run("cda", tmp_path / "cda", teacher_paths, TINY)
    assert cda.method == "cda" and cda.images.shape == (20, 1, 28, 28) and cda.images.dtype == torch.uint8
    assert cda.hyperparameters["crop_scale_curriculum"] == ["cosine", 1.0, 1.0]
    assert cda.hyperparameters["lr"] == 0.4 and "cosine curriculum" in cda.hyperparameters["augmentation_rule"]
    plain = _run("cda", tmp_path / "plain", teacher_paths, {**TINY, "crop_scale_curriculum": None})
    sre2l = _run("sre2l", tmp_path / "sre2l", teacher_paths,
                 {"augmentation": "imagenet", "iterations": 3, "lr": 0.4, "r_bn": 0.05, "max_shift": 4})
    assert sre2l.method == "sre2l" and torch.equal(plain.images, sre2l.images)
    assert not torch.equal(cda.images, sre2l.images)


def test_cda_results_do_not_depend_on_batching(teacher_paths):
    from infer_fast.distill import recover_sre2l
    from infer_fast.teacher import load_teacher

    spec = load_dataset(DATASET, "train").spec
    teachers = [load_teacher(p)[0] for p in teacher_paths]
    recover = lambda g: recover_sre2l(3, 10, (1, 28, 28), teachers, spec.mean, spec.std,  # noqa: E731
                                      _config({**TINY, "group_size": g}), progress=False)["pixels"]
    together, alone = recover(3).float(), recover(1).float()
    # uint8 pixels: float rounding of other batch shapes may move a value by one level
    assert (together - alone).abs().max() <= 1 + 255 * rounding_bound(3, lr=0.4)


def test_cda_killed_inside_a_batch_resumes_bit_identically(teacher_paths, tmp_path, monkeypatch, capsys):
    """Killed as soon as the checkpoint of iteration 2 of 4 is on disk (mid-curriculum), a
    resumed run ends with the pixels of an uninterrupted one, and says what it resumes as CDA's."""
    from infer_fast.distill import checkpoints

    options = {"recipe": "tiny-imagenet", "iterations": 4, "group_size": 2, "checkpoint_every": 1,
               "checkpoint_minutes": None}
    full = _run("cda", tmp_path / "full", teacher_paths, options)
    restore = kill_after_save(monkeypatch, checkpoints,
                              lambda saved: any(state["iteration"] == 2 for state in saved["partials"]))
    with pytest.raises(KeyboardInterrupt):
        _run("cda", tmp_path / "killed", teacher_paths, options)
    restore()
    assert (tmp_path / "killed.recovery.pt").exists() and not (tmp_path / "killed").exists()
    capsys.readouterr()
    resumed = _run("cda", tmp_path / "killed", teacher_paths, options, resume=True)
    assert resumed.method == "cda" and torch.equal(resumed.images, full.images)
    assert "resuming, 0/2 CDA jobs already recovered; teacher 1/1 batch k=0..1 continues" in capsys.readouterr().out
    assert not (tmp_path / "killed.recovery.pt").exists()
