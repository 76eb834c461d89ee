"""Student training on a distilled set (INFER_METHOD.md §5); its soft labels: infer_fast.relabel (§4).

    result = train_student(distilled, test_set, StudentConfig(epochs=400))
    result = train_student(distilled, test_set, StudentConfig.imagenet(model="resnet18"))
    summary = evaluate_seeds(distilled, test_set, StudentConfig(), seeds=(0, 1, 2))
    dup = feature_duplication(images, labels, teacher)

Protocol choices (documented once, here):

* Soft labels are the mean of the teachers' **logits** (infer_fast.relabel).
* Recipes: ``StudentConfig.cifar()`` (the field defaults: crop_flip, mixup with alpha 0.8,
  T = 30) and ``StudentConfig.imagenet()`` (SRe2L protocol: resized_crop_flip, cutmix with
  alpha 1.0, T = 20, 300 epochs). Every other choice below is shared by both.
* Augmentation (``augmentation``), per sample, in [0, 1] pixel space (normalized ->
  denormalize -> augment -> normalize), as torchvision does on pixels:
  ``"crop_flip"``: RandomCrop(size, padding=size//8, black padding) + horizontal flip, as
  teacher training does; ``"resized_crop_flip"``: RandomResizedCrop(size of the image,
  scale (0.08, 1), ratio (3/4, 4/3)) + horizontal flip; ``"shuffle_patches_crop_flip"``
  (RDED's students, for images of ``patches`` x ``patches`` stitched patches): the patch
  columns and rows shuffled (transforms.shuffle_patches), RandomResizedCrop(scale
  (1 / patches, 1), ratio (3/4, 4/3)), flip, as the RDED release's validation/main.py.
* Mixing (``mix``): one lambda ~ Beta(alpha, alpha) per batch (alpha = ``mixup_alpha`` for
  both kinds; 0 disables mixing) and one permutation pi. ``"mixup"``:
  x' = lam x + (1 - lam) x[pi]. ``"cutmix"``: one box per batch of area fraction 1 - lam
  at a uniform random centre, clipped to the image, pasted from x[pi] into x; lam is then
  recomputed from the clipped box (1 - box area / image area). Either way the targets
  z' = lam z + (1 - lam) z[pi] are mixed in **logit space** (z are the stored soft labels,
  which are logits).
* Labels (``labels``): ``"soft"`` (the default, below) or ``"hard"``: the set's hard labels
  as one-hot targets, mixed like the logits, and cross-entropy -sum(z' log softmax(s)) (no
  temperature; soft labels are not needed). ``augmentation="none"`` / ``mix="none"`` train
  on the images as stored (DD-Ranking's protocols with and without augmentation).
* Loss: KL(softmax(z'/T) || softmax(s/T)) = ``kl_div(log_softmax(s/T), log_softmax(z'/T),
  log_target=True, reduction="batchmean")``, plain: **not** multiplied by T^2 (as the
  reference SRe2L/INFER code and INFER_METHOD.md).
* INFER+Dyn (``dynamic=True``): z' is recomputed every step as the mean of the teachers'
  logits on the augmented, mixed batch x' (the stored labels are not used). The epoch
  reduction of the paper (400 -> 80 for M = 4) is the caller's choice of ``epochs``.
* Optimizer: AdamW(lr, weight_decay), cosine schedule stepped per step over
  epochs * steps_per_epoch (``schedule="cosine"``), or DD-Ranking's ("half-cosine"): the
  rate times 0.5 (1 + cos(pi e / 2E)) in epoch e of E, so the last epochs run at about half
  the rate. Shuffling, augmentation, lambda and the CutMix box are drawn
  from one ``torch.Generator`` seeded with ``seed``; model initialization uses ``seed`` too.
* Evaluation: top-1 on the real test split, student in eval mode. ``final_accuracy`` is the
  accuracy after the last epoch; ``best_accuracy`` (the optimistic best over the periodic
  evaluations, as the reference release reports) is only given when ``eval_every > 0``
  and is labelled as such.
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from collections.abc import Iterable
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from . import interrupts
from ._text import checkpoints_held, count_text
from .progress import SHORT_PHASE_S, progress_bar, say
from .relabel import ensemble_logits

from .data.registry import recipe_family
from .data.transforms import (RESIZED_CROP_RATIO, RESIZED_CROP_SCALE, denormalize, normalize, random_crop_with_padding,
                              random_flip, random_resized_crop, shuffle_patches)
from .models import (check_model_name, create_model, device_of, eval_mode, float32_model, on_device,
                     penultimate_features)
from .storage import DistilledDataset, DistilledSet
from .teacher import (DEVICE_CHOICES, TEACHERS_WEIGHTS_LABEL, check_distinct_teachers, check_teacher_outputs, evaluate,
                      resolve_device, restore_schedule, teacher_list, training_steps)
from . import distributed
from .choices import (AUGMENTATION_PLACES, PRECISIONS, STUDENT_AUGMENTATIONS, STUDENT_LABELS, STUDENT_MIXES,
                      STUDENT_SCHEDULES)
from .checks import check_choice, check_class_names, check_int, split_label
from .options import (CheckedWhenMade, check_fields, check_given_used, given_config, hold_as_made, option, options_of,
                      result_neutral_fields, with_recipe)
from ._io import PathLike, content_digest, model_digest, read_checkpoint, save_atomic
from .output_lock import job_output_lock
from .run_identity import check_same_run, flattened
from .mixed_precision import (CHANNELS_LAST_HELP, TRAINING_PRECISION_HELP, autocast, batch_in_layout,
                              copies_in_layout, model_in_layout)
from .step_losses import StepLosses
from .grad_mode import training_grad_mode
from .training_rng import global_rng_state, seeded_cpu_rng, training_rng
from .transfer import to_device

__all__ = [
    "StudentConfig", "STUDENT_AUGMENTATIONS", "STUDENT_MIXES", "augment",
    "mixup", "cutmix", "cutmix_box", "sample_lambda", "distillation_loss", "soft_target_cross_entropy", "STUDENT_LABELS",
    "train_student", "evaluate_seeds", "seed_list", "check_test_set", "StudentRun",
    "feature_duplication", "StudentDivergedError",
]

BEST_LABEL = "best over periodic test evaluations (optimistic; the reference release reports this)"


class StudentDivergedError(ValueError):
    """Student training hit a non-finite loss (a learning rate too high, mostly): a ValueError,
    as a value the user chose caused it, so the CLI says it in one line (as a teacher's,
    teacher.TeacherDivergedError)."""


# --------------------------------------------------------------------------------------
# training pieces
# --------------------------------------------------------------------------------------

# named recipes: the fields each sets over the defaults (the CIFAR recipe); the CLI's --recipe
# and StudentConfig.from_recipe select them by name
RECIPES: Dict[str, Dict[str, Any]] = {
    "cifar": {},  # RandomCrop + flip, mixup alpha 0.8, T = 30, 400 epochs: the field defaults
    # the ImageNet recipe (SRe2L protocol), from the method doc: AdamW 1e-3, wd 0.01, cosine
    # (train_student's optimizer and schedule), 300 epochs, RandomResizedCrop + flip + CutMix,
    # T = 20; our choice: CutMix's usual alpha, and the batch size. ``model`` stays the
    # caller's choice (the protocol's student is a ResNet-18)
    "imagenet": dict(lr=1e-3, weight_decay=0.01, epochs=300, augmentation="resized_crop_flip", mix="cutmix",
                     temperature=20.0, mixup_alpha=1.0, batch_size=100),
}
# the recipe of a dataset's students where none is named, by its family (DATASET_FAMILIES)
FAMILY_RECIPES = {"cifar": "cifar", "tiny-imagenet": "cifar", "imagenet": "imagenet"}


def recipe_of(dataset) -> str:
    """The student recipe of ``dataset`` (a name, or a mapping with its image size): its
    recipe family's (FAMILY_RECIPES; data.registry's recipe_family)."""
    return FAMILY_RECIPES[recipe_family(dataset)]


# the options a student does not use under another setting: (field, unused when, that setting)
UNUSED_STUDENT_OPTIONS = (
    ("temperature", lambda c: c.labels == "hard", "hard labels (labels='hard': cross-entropy, no temperature)"),
    ("mixup_alpha", lambda c: c.mix == "none", "mix='none' (no mixing)"),
    ("patches", lambda c: c.augmentation != "shuffle_patches_crop_flip",
     "an augmentation other than shuffle_patches_crop_flip (the one that shuffles patches)"),
)


@dataclass(frozen=True)
class StudentConfig(CheckedWhenMade):
    model: str = field(default="convnet", metadata=option("student model (see `infer-fast models`)"))
    epochs: int = field(default=400, metadata=option("training epochs", minimum=1))
    batch_size: int = field(default=64, metadata=option("batch size", minimum=1))
    lr: float = field(default=1e-3, metadata=option("AdamW learning rate", above=0))
    weight_decay: float = field(default=0.01, metadata=option("AdamW weight decay", minimum=0))
    temperature: float = field(default=30.0, metadata=option(
        "KL temperature of the soft-label runs", above=0))
    mixup_alpha: float = field(default=0.8, metadata=option(  # CutMix's usual alpha: 1.0
        "Beta(alpha, alpha) of the mixing weight, for both mixes", minimum=0, note="0 disables mixing"))
    augmentation: str = field(default="crop_flip", metadata=option(
        "student augmentation: RandomCrop + flip, RandomResizedCrop + flip, RDED's shuffled patches + "
        "RandomResizedCrop + flip, or none", choices=STUDENT_AUGMENTATIONS))
    patches: int = field(default=1, metadata=option(
        "patches per side of the set's images (RDED's factor), for shuffle_patches_crop_flip: their order is "
        "shuffled and a crop keeps at least 1/N of the image", minimum=1, metavar="N"))
    mix: str = field(default="mixup", metadata=option(
        "batch mixing (labels interpolated in logit space)", choices=STUDENT_MIXES))
    labels: str = field(default="soft", metadata=option(
        "soft (the set's soft labels, KL) or hard (its hard labels, cross-entropy)", choices=STUDENT_LABELS))
    seed: int = field(default=0, metadata=option("the student's seed", flag=None))  # (the CLI's --seeds: 0..n-1)
    dynamic: bool = field(default=False, metadata=option(
        "teacher-ensemble labels for every augmented, mixed batch (INFER+Dyn; DD-Ranking's M mode): any set, "
        "stored soft labels not needed"))
    eval_every: int = field(default=0, metadata=option(
        "also evaluate every N epochs (reports the best too; 0: only after the last epoch)", minimum=0, metavar="N"))
    schedule: str = field(default="cosine", metadata=option(
        "learning-rate schedule: cosine to 0 over the steps, or DD-Ranking's half-cosine per epoch",
        choices=STUDENT_SCHEDULES))
    # (result-neutral: where it trains, and its evaluation batches: a checkpoint continues under others)
    device: str = field(default="auto", metadata=option(DEVICE_CHOICES, result_neutral=True))
    eval_batch_size: int = field(default=1000, metadata=option("test images per evaluation batch", minimum=1,
                                                               result_neutral=True))
    precision: str = field(default="fp32", metadata=option(TRAINING_PRECISION_HELP, choices=PRECISIONS))
    channels_last: bool = field(default=False, metadata=option(CHANNELS_LAST_HELP))
    # (result-neutral: the same draws on either side, the batches equal up to the float rounding
    # of the device's resize, as on another device)
    augment_on: str = field(default="host", metadata=option(
        "where each batch is augmented and mixed: on the host's CPU, or on the training device (a GPU gets the batch "
        "as stored and crops, resizes, flips and mixes it itself: the same random draws, no per-image work on the "
        "host; on the CPU both are the same)", choices=AUGMENTATION_PLACES, result_neutral=True))

    def validate(self) -> None:
        check_fields(self)  # each field's type, range and choices, as declared above
        hold_as_made(self)
        check_model_name(self.model)
        if self.dynamic and self.labels == "hard":
            raise ValueError("dynamic=True (INFER+Dyn, --dynamic) relabels every batch with the teachers: it needs "
                             "labels='soft', not 'hard' (--labels hard)")
        resolve_device(self.device)

    def check_given(self, given: Sequence[str]) -> None:
        """ValueError naming the options in ``given`` (set explicitly) this config does not use."""
        check_given_used(self, given, UNUSED_STUDENT_OPTIONS)

    def ignores(self, name: str) -> bool:
        """Whether option ``name`` has no effect under this config's other settings
        (UNUSED_STUDENT_OPTIONS: what :meth:`check_given` refuses when given)."""
        return any(option == name and unused_when(self) for option, unused_when, _ in UNUSED_STUDENT_OPTIONS)

    @classmethod
    def from_recipe(cls, name: str, **overrides: Any) -> "StudentConfig":
        """The named recipe (RECIPES) with ``overrides`` (checked when made)."""
        return with_recipe(cls, RECIPES, (name,), overrides)

    @classmethod
    def cifar(cls, **overrides: Any) -> "StudentConfig":
        """The CIFAR recipe: the field defaults (RandomCrop + flip, mixup alpha 0.8, T = 30,
        400 epochs), with ``overrides``."""
        return cls.from_recipe("cifar", **overrides)

    @classmethod
    def imagenet(cls, **overrides: Any) -> "StudentConfig":
        """The ImageNet recipe (SRe2L protocol), with ``overrides``."""
        return cls.from_recipe("imagenet", **overrides)


def augment(x: Tensor, mean, std, gen: torch.Generator, augmentation: str = "crop_flip", patches: int = 1) -> Tensor:
    """Per-sample augmentation of normalized images, done in [0, 1] pixel space, returned
    normalized at the same size. ``"crop_flip"``: RandomCrop(size, padding=max(1, width//8),
    black padding) + flip; ``"resized_crop_flip"``: RandomResizedCrop(size, scale (0.08, 1),
    ratio (3/4, 4/3)) + flip; ``"shuffle_patches_crop_flip"``: the ``patches`` x ``patches``
    patches shuffled, RandomResizedCrop(size, scale (1 / patches, 1), ratio (3/4, 4/3)) + flip."""
    check_choice("augmentation", augmentation, STUDENT_AUGMENTATIONS)
    if augmentation == "none":
        return x
    size = tuple(x.shape[-2:])
    pixels = denormalize(x, mean, std)
    if augmentation == "crop_flip":
        pixels = random_crop_with_padding(pixels, size, max(1, size[1] // 8), gen)
    elif augmentation == "resized_crop_flip":
        pixels = random_resized_crop(pixels, size, RESIZED_CROP_SCALE, RESIZED_CROP_RATIO, gen)
    else:  # (RDED: a crop of at least one patch's share of the image, the patches in a random order)
        pixels = random_resized_crop(shuffle_patches(pixels, patches, gen), size, (1.0 / patches, 1.0),
                                     RESIZED_CROP_RATIO, gen)
    return normalize(random_flip(pixels, gen, inplace=True), mean, std)  # (pixels: made here)


def sample_lambda(alpha: float, gen: torch.Generator) -> float:
    """One lambda ~ Beta(alpha, alpha), drawn deterministically from ``gen`` (alpha 0: 1.0)."""
    if alpha <= 0:
        return 1.0
    seed = int(torch.randint(0, 2**62, (1,), generator=gen).item())
    return random.Random(seed).betavariate(alpha, alpha)


def _mix_logits(z: Optional[Tensor], lam: float, perm: Tensor) -> Optional[Tensor]:
    return None if z is None else lam * z + (1.0 - lam) * z[perm]


def mixup(x: Tensor, z: Optional[Tensor], lam: float, perm: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
    """x' = lam x + (1 - lam) x[perm]; z' = lam z + (1 - lam) z[perm] (logit space; z may be None).
    ``perm`` on the host, for x and z wherever they are."""
    return lam * x + (1.0 - lam) * x[to_device(perm, x.device)], _mix_logits(z, lam, perm)


def cutmix_box(height: int, width: int, lam: float, gen: torch.Generator) -> Tuple[int, int, int, int]:
    """(top, bottom, left, right) of the standard CutMix box: sides sqrt(1 - lam) of the
    image's, centre uniform over the pixels (row, then column, from ``gen``), clipped to the
    image (so its area can be smaller than 1 - lam of the image)."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy = int(torch.randint(0, height, (1,), generator=gen).item())
    cx = int(torch.randint(0, width, (1,), generator=gen).item())
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, bottom, left, right


def cutmix(x: Tensor, z: Optional[Tensor], lam: float, perm: Tensor,
           gen: torch.Generator, inplace: bool = False) -> Tuple[Tensor, Optional[Tensor], float]:
    """Paste one :func:`cutmix_box` of x[perm] into x (the same box for the whole batch) and
    mix the targets with the lambda of the box actually pasted, 1 - box area / image area:
    z' = lam z + (1 - lam) z[perm] (logit space; z may be None). Returns (x', z', lam).
    ``inplace``: paste into ``x`` itself (a batch the caller owns: no copy of the batch)."""
    height, width = x.shape[-2:]
    top, bottom, left, right = cutmix_box(height, width, lam, gen)
    x_mixed = x if inplace else x.clone()
    # (the boxes of x[perm] are gathered into a new tensor before any is pasted)
    x_mixed[:, :, top:bottom, left:right] = x[to_device(perm, x.device), :, top:bottom, left:right]
    lam = 1.0 - (bottom - top) * (right - left) / (height * width)
    return x_mixed, _mix_logits(z, lam, perm), lam


def half_cosine_factor(epoch: int, epochs: int) -> float:
    """DD-Ranking's "cosine" schedule: the rate's factor in epoch ``epoch`` (0-based) of
    ``epochs``, 0.5 (1 + cos(pi epoch / 2 epochs)): 1 at the start, 0.5 after the last."""
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs / 2))


def _schedule(cfg: StudentConfig, optimizer, steps_per_epoch: int):
    """The learning-rate schedule, stepped once per optimizer step."""
    if cfg.schedule == "half-cosine":  # constant within an epoch, as DD-Ranking's per-epoch LambdaLR
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: half_cosine_factor(step // steps_per_epoch, cfg.epochs))
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps_per_epoch)


def distillation_loss(student_logits: Tensor, target_logits: Tensor, temperature: float) -> Tensor:
    """KL(softmax(z/T) || softmax(s/T)), batchmean, not scaled by T^2."""
    t = float(temperature)
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(target_logits.float() / t, dim=1),
                    log_target=True, reduction="batchmean")


def soft_target_cross_entropy(student_logits: Tensor, target_probs: Tensor) -> Tensor:
    """-sum(p log softmax(s)), batch mean: cross-entropy with (mixed) one-hot targets; the
    hard-label protocol's loss (equal to lam CE(y) + (1 - lam) CE(y[perm]) under mixing)."""
    return -(target_probs * F.log_softmax(student_logits, dim=1)).sum(1).mean()


# what to do when a set's recorded classes are not those of the test split (checks.check_class_names)
SCORED_ON_OTHER_CLASSES = ("its students would be scored against other classes: evaluate on the data the set was "
                           "made from (data_root, --data-root)")


def check_test_set(distilled: DistilledSet, test_set) -> None:
    """Before any training: ``test_set`` (a split) scores students of ``distilled`` only when its
    classes are the set's, by count and, where both record them, by name in the same order (a
    folder tree whose class folders sort another way would score every class as another one),
    and its images are the set's shape; a ValueError naming both otherwise."""
    spec = test_set.spec
    if spec.num_classes != distilled.num_classes:
        raise ValueError(f"test set has {spec.num_classes} classes, the distilled set {distilled.num_classes}")
    check_class_names(distilled.class_names, spec.class_names, "the distilled set", split_label(test_set),
                      SCORED_ON_OTHER_CLASSES)
    shape = tuple(test_set.image_shape)
    expected = (distilled.channels, *distilled.image_size)
    if shape != expected:
        raise ValueError(f"test images are {shape}, the distilled set's {expected}")


# --------------------------------------------------------------------------------------
# student training
# --------------------------------------------------------------------------------------

STUDENT_CHECKPOINT_FORMAT = "infer-fast-student"
# 2: each history record's lr is its epoch's own rate (a checkpoint without a version held the next epoch's;
# not 1, which read_checkpoint's default let older versions of infer-fast read, and continue with shifted rates)
STUDENT_CHECKPOINT_VERSION = 2


def set_digest(distilled) -> str:
    """content_digest of every tensor of a distilled set (what a student resume is tied to)."""
    return content_digest(t for f in dataclasses.fields(distilled) if isinstance(t := getattr(distilled, f.name), Tensor))


# what does not change a student (declared on its fields): a run may resume on another device,
# with other evaluation batches (a field a checkpoint predates counts as its default)
STUDENT_RESULT_NEUTRAL = result_neutral_fields(StudentConfig)
_IDENTITY_LABELS = {"set_sha256": "the distilled set's images or labels", "teachers_sha256": TEACHERS_WEIGHTS_LABEL}


def _load_student_checkpoint(path: str, identity: Dict[str, Any]) -> Dict[str, Any]:
    state = read_checkpoint(path, STUDENT_CHECKPOINT_FORMAT, "student checkpoint", STUDENT_CHECKPOINT_VERSION)
    check_same_run("student checkpoint", path, flattened(state.get("run", {})), flattened(identity),
                   "delete it, or resume with the same set, teachers and settings", ignore=STUDENT_RESULT_NEUTRAL,
                   labels=_IDENTITY_LABELS, defaults={n: o.default for n, o in options_of(StudentConfig).items()})
    return state


def mixes(config) -> bool:
    """Whether a student's batches are mixed: a mix other than none, at an alpha above 0 (alpha 0
    mixes nothing: lambda 1, each image and its labels as they are, sample_lambda)."""
    return config.mix != "none" and config.mixup_alpha > 0


def augmentation_text(config) -> str:
    """A student's augmentation and mixing as a progress line says them: "crop_flip + mixup",
    "crop_flip, no mixing", "no augmentation or mixing" (:func:`mixes`)."""
    if config.augmentation == "none" and not mixes(config):
        return "no augmentation or mixing"
    if not mixes(config):
        return f"{config.augmentation}, no mixing"
    return f"{'no augmentation' if config.augmentation == 'none' else config.augmentation} + {config.mix}"


def labels_text(config) -> str:
    """A student's labels as a progress line says them."""
    if config.labels == "hard":
        return "hard labels"
    return "soft labels from the teachers per batch" if config.dynamic else "static soft labels"


class StudentRun:
    """One student trained on a distilled set (train_student's pieces): its training data and
    targets, model, optimizer, schedule and generator, and what a checkpoint saves of it.
    Public for measuring the parts of a step apart (bench/bench_student.py): ``mixed_batch(idx)``
    (the host's part: a batch augmented and mixed), ``step(x, z, batch_size)`` (the device's:
    forward, loss, backward, update) and ``train_epoch(epoch, progress)`` (the loop).
    ``teacher_digests``: _io.model_digest of each of INFER+Dyn's ``teachers``, where the caller
    has them (else computed here)."""

    def __init__(self, distilled: DistilledSet, test_set, cfg: StudentConfig, teachers, ddp: bool,
                 teacher_digests: Optional[Sequence[str]] = None):
        self.test_set, self.cfg, self.device = test_set, cfg, resolve_device(cfg.device)
        self.distilled, self.mean, self.std = distilled, distilled.mean, distilled.std
        dataset = DistilledDataset(distilled, hard_only=cfg.dynamic or cfg.labels == "hard")
        self.hard = distilled.hard_labels() if cfg.labels == "hard" and not cfg.dynamic else None
        # cross-entropy with the (mixed) one-hot targets, or KL to the (mixed) soft-label logits
        self.label_loss = soft_target_cross_entropy if cfg.labels == "hard" else (
            lambda logits, z: distillation_loss(logits, z, cfg.temperature))
        if dataset.fits_in_memory:
            images, self.soft, _ = dataset.all_images()
            self.images_at = images.__getitem__
        else:  # an ImageNet-size set: each batch is composed on the fly (same values)
            self.images_at, self.soft = dataset.images_at, dataset.soft_labels
        self.n = len(dataset)
        # INFER+Dyn's teachers label the batches in the student's layout, on its device: a teacher
        # elsewhere is copied there, the caller's left where it is (ensemble_logits puts each in
        # eval mode for a batch and back, under no_grad)
        # (and in float32: a float16/bfloat16/float64 teacher labels as a float32 copy)
        # what a checkpoint records of them: the caller's teachers' digests (given where computed already: train_student)
        self.teacher_digests = [] if not cfg.dynamic else \
            list(teacher_digests) if teacher_digests is not None else [model_digest(t) for t in teachers]
        self.teacher_models = copies_in_layout(
            [float32_model(on_device(t, self.device)) for t in teachers] if cfg.dynamic else [], cfg.channels_last)
        with seeded_cpu_rng(cfg.seed):
            self.model = model_in_layout(create_model(
                cfg.model, num_classes=distilled.num_classes, in_channels=distilled.channels,
                image_size=distilled.image_size[0]).to(self.device), cfg.channels_last)
        self.rank, self.world = distributed.rank_and_world() if ddp else (0, 1)
        # torchrun: each rank trains on its share of every batch, gradients averaged
        self.net = self.model if self.world == 1 else torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device] if self.device.type == "cuda" else None)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.steps_per_epoch = training_steps(self.n, cfg.batch_size)
        self.schedule = _schedule(cfg, self.optimizer, self.steps_per_epoch)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.rng_state = None  # (the global generators' from a checkpoint: training_rng)
        self.history, self.best, self.accuracy = [], None, float("nan")  # best: over periodic evaluations
        self.first_epoch, self.elapsed_before, self.identity = 0, 0.0, None  # identity: what a checkpoint is tied to

    def open_checkpoint(self, checkpoint: str, resume: bool) -> None:
        """Tie the run to ``checkpoint`` (digests of the set, and of the teachers under
        INFER+Dyn) and, when the file exists, continue from it (``resume``) or refuse."""
        cfg = self.cfg
        self.identity = {"config": dataclasses.asdict(cfg), "method": self.distilled.method,
                         "num_training_images": self.n, "set_sha256": set_digest(self.distilled)}
        if cfg.dynamic:  # INFER+Dyn: the teachers label every batch (digests of the caller's: train_student)
            self.identity["teachers_sha256"] = list(self.teacher_digests)
        if not os.path.exists(checkpoint):
            return
        if not resume:
            raise ValueError(f"student checkpoint {checkpoint!r} exists: pass resume=True to continue that run, or delete it")
        state = _load_student_checkpoint(checkpoint, self.identity)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        restore_schedule(self.schedule, state["schedule"], state["epochs_done"], self.steps_per_epoch, checkpoint)
        self.gen.set_state(state["generator"])
        # dropout draws continue where they stopped (a checkpoint of before "rng" kept the CPU's alone)
        self.rng_state = state.get("rng") or {"cpu": state["torch_rng"]}
        self.history, self.best, self.accuracy = state["history"], state["best"], state["accuracy"]
        if "format_version" not in state:  # each record held the next epoch's rate (the first epoch's is lr)
            rates = [cfg.lr] + [record["lr"] for record in self.history[:-1]]
            self.history = [{**record, "lr": lr} for record, lr in zip(self.history, rates)]
        self.first_epoch, self.elapsed_before = state["epochs_done"], state["elapsed_s"]
        # said even without progress bars, as a teacher's resume (a finished student, read back, is not continued)
        if self.rank == 0 and self.first_epoch < cfg.epochs:
            print(f"{checkpoint}: resuming student seed {cfg.seed} after epoch {self.first_epoch}/{cfg.epochs}",
                  flush=True)

    def train(self, progress: bool, checkpoint: Optional[str]) -> float:
        """The remaining epochs, the checkpoint written after each; returns the elapsed seconds
        (those of a resumed run's earlier part included). Dropout draws from the student's own
        generators (training_rng), the same in every process and continued by a resume."""
        with training_rng("student-dropout", self.cfg.seed, self.device, self.rng_state):
            return self._train(progress, checkpoint)

    def _train(self, progress: bool, checkpoint: Optional[str]) -> float:
        cfg = self.cfg
        started = time.perf_counter()
        bar = progress_bar(range(self.first_epoch, cfg.epochs), desc="student", disable=not progress, leave=False,
                           initial=self.first_epoch, total=cfg.epochs)
        for epoch in bar:
            record = self.train_epoch(epoch, progress)
            if epoch + 1 == cfg.epochs or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
                self.accuracy = evaluate(self.model, self.test_set, cfg.eval_batch_size, self.device, self.mean,
                                         self.std, progress=progress,
                                         precision=cfg.precision, channels_last=cfg.channels_last)
                record["test_accuracy"] = self.accuracy
                if cfg.eval_every:
                    self.best = self.accuracy if self.best is None else max(self.best, self.accuracy)
            self.history.append(record)
            postfix = {"loss": f"{record['loss']:.4f}"}
            if "test_accuracy" in record:
                postfix["acc"] = f"{record['test_accuracy']:.4f}"
            bar.set_postfix(postfix)
            if checkpoint is not None and self.rank == 0:
                save_atomic({
                    "format": STUDENT_CHECKPOINT_FORMAT, "format_version": STUDENT_CHECKPOINT_VERSION,
                    "run": self.identity, "epochs_done": epoch + 1,
                    "elapsed_s": self.elapsed_before + time.perf_counter() - started, "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                    "generator": self.gen.get_state(), "rng": global_rng_state(self.device), "history": self.history,
                    "best": self.best, "accuracy": self.accuracy,
                }, checkpoint)
        return self.elapsed_before + time.perf_counter() - started

    def train_epoch(self, epoch: int, progress: bool) -> Dict[str, Any]:
        """One epoch over a fresh shuffle; returns its history record (epoch, mean loss, lr: the
        rate its first step used)."""
        cfg = self.cfg
        self.model.train()
        # read before the steps: after them the schedule holds the next epoch's rate (a last epoch's: one never used)
        lr = self.schedule.get_last_lr()[0]
        order = torch.randperm(self.n, generator=self.gen)
        step_losses = StepLosses(self.steps_per_epoch, self.device)  # (read once, after the epoch)
        # an epoch's steps shown once it has run SHORT_PHASE_S (ImageNet-size sets; a small set's is over sooner)
        for step in progress_bar(range(self.steps_per_epoch), desc=f"epoch {epoch + 1}", leave=False, unit="step",
                                 disable=not progress, delay=SHORT_PHASE_S):
            last = step + 1 == self.steps_per_epoch  # (it takes the rest: a single image left joins it)
            idx = order[step * cfg.batch_size:self.n if last else (step + 1) * cfg.batch_size]
            step_losses.add(self.step(*self.mixed_batch(idx), len(idx)), len(idx))
        if self.world > 1:  # the whole batches' losses, each rank's share summed (once an epoch)
            torch.distributed.all_reduce(step_losses.values)
        loss = step_losses.mean()
        # (checked once an epoch, before its checkpoint is written: a check per step would wait for the GPU at each)
        if not math.isfinite(loss):
            bad = int((~torch.isfinite(step_losses.values[:len(step_losses.sizes)])).nonzero()[0])
            raise StudentDivergedError(
                f"student training diverged: the training loss became non-finite (nan or inf) for seed {cfg.seed} at "
                f"epoch {epoch + 1}, step {bad + 1} of {self.steps_per_epoch}, with lr {cfg.lr:g}: try a lower learning rate "
                "(--lr; a run config's student: lr) (this epoch was not saved)")
        return {"epoch": epoch + 1, "loss": loss, "lr": lr}

    def step(self, x: Tensor, z: Optional[Tensor], batch_size: int) -> Tensor:
        """One optimizer step on the mixed batch ``x`` (on the host or the device, of ``batch_size`` images)
        with targets ``z`` (None: the teachers label it); returns the loss, on the device."""
        # every rank draws the whole batch (same generator), then takes its rows; the loss is
        # scaled so DDP's gradient average is the full batch's batchmean gradient
        # (bf16: the forward passes under autocast, the loss on fp32 logits; fp32: the same tensors)
        cfg, share = self.cfg, slice(self.rank, None, self.world)
        x = batch_in_layout(to_device(x[share], self.device), cfg.channels_last)
        with autocast(self.device, cfg.precision):
            z = ensemble_logits(self.teacher_models, x) if cfg.dynamic else to_device(z[share], self.device)
            logits = self.net(x)
        loss = self.label_loss(logits.float(), z) * (x.shape[0] * self.world / batch_size)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        if self.world == 1:
            return loss
        # this rank's share of the batch's loss (the ranks' shares sum to it: train_epoch); a rank
        # without rows (a last batch smaller than the world) has none, not its empty mean's NaN
        return loss.detach() / self.world if x.shape[0] else torch.zeros((), device=loss.device)

    def mixed_batch(self, idx: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """The augmented, mixed images of the training images ``idx`` (on the host, or on the
        device with ``augment_on`` "device") and their mixed targets, on the host (None under
        INFER+Dyn: the teachers label the mixed batch); draws from the run's generator."""
        cfg = self.cfg
        images = self.images_at(idx)
        if cfg.augment_on == "device":  # (the batch as stored; the device augments and mixes it, same draws)
            images = to_device(images, self.device)
        x = augment(images, self.mean, self.std, self.gen, cfg.augmentation, cfg.patches)
        if cfg.dynamic:
            z = None
        elif self.hard is not None:  # one-hot probabilities: mixing them is mixup's label mixing
            z = F.one_hot(self.hard[idx], self.distilled.num_classes).float()
        else:
            z = self.soft[idx].float()  # (stored fp16: the batch's rows made float32, exactly)
        if cfg.mix != "none":
            lam = sample_lambda(cfg.mixup_alpha, self.gen)
            perm = torch.randperm(len(idx), generator=self.gen)
            if cfg.mix == "mixup":
                x, z = mixup(x, z, lam, perm)
            else:
                x, z, _ = cutmix(x, z, lam, perm, self.gen, inplace=True)  # (x: made by augment)
        return x, z

    def result(self, elapsed: float, progress: bool) -> Dict[str, Any]:
        """train_student's return value (and, with ``progress``, its one-line summary)."""
        cfg, best = self.cfg, self.best
        if progress:
            line = (f"student {cfg.model} ({labels_text(cfg)}, {augmentation_text(cfg)}), "
                    f"{count_text(self.n, 'training image')}, {count_text(cfg.epochs, 'epoch')}: "
                    f"final test accuracy {self.accuracy:.4f}")
            if best is not None:
                line += f", best {best:.4f} ({BEST_LABEL})"
            say(line + f" ({elapsed:.1f} s)")
        return {"final_accuracy": self.accuracy, "best_accuracy": best, "best_label": BEST_LABEL if best is not None else None,
                "history": self.history, "elapsed_s": elapsed, "num_training_images": self.n,
                "steps": cfg.epochs * self.steps_per_epoch, "config": dataclasses.asdict(cfg), "model": self.model}


def check_patches_fit(cfg: StudentConfig, image_size: Any, option: Optional[str] = None) -> None:
    """ValueError when shuffle_patches_crop_flip would cut images of ``image_size`` (an int or
    (H, W)) into patches under one pixel, naming ``option`` too where given (the patches option
    as the user gave it: "--patches", "student: patches"): the set's size is known before any
    training, the cut only at the first batch."""
    if cfg.augmentation != "shuffle_patches_crop_flip":
        return
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if cfg.patches > min(height, width):
        given = f" ({option})" if option else ""
        raise ValueError(f"patches={cfg.patches}{given} cuts {height}x{width} images into patches under one pixel: "
                         f"use patches <= {min(height, width)}")


@training_grad_mode()  # (trains whatever the caller's grad mode: a notebook's no_grad or inference_mode too)
def train_student(distilled: DistilledSet, test_set, config: Optional[StudentConfig] = None,
                  teachers: Union[nn.Module, Sequence[nn.Module], None] = None, progress: bool = True,
                  checkpoint: Optional[PathLike] = None, resume: bool = False, ddp: bool = True) -> Dict[str, Any]:
    """Train a student from scratch on ``distilled`` and evaluate it on ``test_set`` (ImageSet).

    Under torchrun (an initialized process group) each rank trains on its rows of every batch
    with DistributedDataParallel; rank 0 writes the checkpoint (on a shared file system for
    resume). With BatchNorm in the student its batch statistics are per rank. ``ddp=False``
    trains the whole student in this process even under torchrun (and writes its checkpoint
    here): for callers that give each rank whole runs of its own.

    ``checkpoint``: a file written atomically after every epoch (model, optimizer, schedule,
    random generators, history); ``resume=True`` continues from it and gives the same result
    as an uninterrupted run (an existing checkpoint without ``resume`` is refused, and so is
    one of another run). The file stays after the last epoch; the caller removes it.

    Returns {"final_accuracy", "best_accuracy" (None unless eval_every > 0), "best_label",
    "history" (per epoch: epoch, loss, lr (the rate of the epoch's first step), and test_accuracy
    where evaluated), "elapsed_s", "num_training_images", "steps", "config", "model" (the trained
    student, eval mode)}.

    ``teachers`` (one model is a list of one) are left as they were: their mode, gradients,
    device and dtype (INFER+Dyn labels with a copy of a teacher on another device than the
    student's, or not float32); INFER+Dyn checks first that each gives logits of the set's
    classes for its images (teacher.check_teacher_outputs) and that no two hold the same
    weights (teacher.check_distinct_teachers).
    It trains with gradients on whatever the caller's grad mode (no_grad, inference_mode), which
    is restored after it (grad_mode.training_grad_mode)."""
    cfg = given_config("config", config, StudentConfig, StudentConfig)  # (valid: checked when made)
    check_patches_fit(cfg, distilled.image_size)
    teachers = teacher_list(teachers)
    if cfg.dynamic and not teachers:
        raise ValueError("dynamic=True (INFER+Dyn) needs the teachers to relabel every batch")
    digests = None  # (INFER+Dyn's: checked distinct, and a checkpoint's record of its teachers)
    if cfg.dynamic:  # (its labels: the teachers' logits of the set's classes, for its images)
        check_teacher_outputs(teachers, distilled.num_classes, (distilled.channels, *distilled.image_size))
        digests = [model_digest(t) for t in teachers]
        check_distinct_teachers(digests)
    check_test_set(distilled, test_set)
    checkpoint = None if checkpoint is None else os.fspath(checkpoint)
    run = StudentRun(distilled, test_set, cfg, teachers, ddp, digests)
    if checkpoint is not None:
        run.open_checkpoint(checkpoint, resume)
    # (from Python too, a stop (Ctrl-C, SIGTERM) says where the epochs done are; cli.main's handlers kept)
    with interrupts.checkpointed_call(interrupts.file_where(checkpoint)):
        elapsed = run.train(progress, checkpoint)
    run.model.eval()  # (the evaluations put it back in training mode)
    return run.result(elapsed, progress)


# a seed's student checkpoint in an evaluate_seeds ``checkpoints`` folder
SEED_CHECKPOINT = "seed{seed}.pt"


def seed_checkpoint(folder, seed) -> str:
    """The checkpoint of seed ``seed``'s student in ``folder`` ("*": the pattern of them all)."""
    return os.path.join(os.fspath(folder), SEED_CHECKPOINT.format(seed=seed if seed == "*" else int(seed)))


def seed_list(seeds: Any) -> List[int]:
    """``seeds`` (any iterable of ints: a list, a range, a generator, read once) as a list; a
    ValueError naming seeds, before any training, for a str, a non-iterable, a value that is no
    int (a bool, a float, a numpy integer: checks.check_int), the same seed twice or none."""
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):
        raise ValueError(f"seeds must be a list of integers, got {seeds!r}")
    listed = list(seeds)
    for i, seed in enumerate(listed):
        check_int(f"seeds[{i}]", seed, minimum=None)
    if not listed:
        raise ValueError("seeds must not be empty")
    if len(set(listed)) != len(listed):
        raise ValueError(f"seeds must be distinct (one student each), got {listed}")
    return listed


def evaluate_seeds(
    distilled: DistilledSet,
    test_set,
    config: Optional[StudentConfig] = None,
    seeds: Iterable[int] = (0, 1, 2),
    teachers: Union[nn.Module, Sequence[nn.Module], None] = None,
    progress: bool = False,
    checkpoints: Optional[PathLike] = None,
    resume: bool = False,
) -> Dict[str, Any]:
    """Final accuracy over students trained with each seed: {"mean", "std" (population,
    ddof=0), "per_seed" {seed: accuracy}, "results" (the full train_student dicts)}.
    ``seeds``: distinct ints (:func:`seed_list`).

    ``checkpoints``: a folder (made if needed, held by an output lock for the call) where each
    seed's student is checkpointed after every epoch (:func:`seed_checkpoint`: weights,
    optimizer, schedule, generators, history); with ``resume`` the seeds continue from theirs
    to the bits of an uninterrupted call (a finished seed is read back, not trained again).
    Checkpoints found without ``resume`` are refused before any training."""
    seeds = seed_list(seeds)
    cfg = given_config("config", config, StudentConfig, StudentConfig)
    check_patches_fit(cfg, distilled.image_size)  # (before any seed trains or a checkpoints folder is made)
    teachers = teacher_list(teachers)  # (read once: a generator would be used up by the first seed)
    if checkpoints is None:
        results = [train_student(distilled, test_set, dataclasses.replace(cfg, seed=s), teachers, progress)
                   for s in seeds]
    else:
        with job_output_lock(checkpoints, "student checkpoints folder", inside=True):
            found = [os.path.basename(seed_checkpoint(checkpoints, s)) for s in seeds
                     if os.path.exists(seed_checkpoint(checkpoints, s))]
            if found and not resume:
                raise ValueError(checkpoints_held(f"student checkpoints folder {checkpoints}", found))
            results = [train_student(distilled, test_set, dataclasses.replace(cfg, seed=s), teachers, progress,
                                     checkpoint=seed_checkpoint(checkpoints, s), resume=resume) for s in seeds]
    accs = torch.tensor([r["final_accuracy"] for r in results], dtype=torch.float64)
    return {
        "mean": accs.mean().item(),
        "std": accs.std(unbiased=False).item(),
        "per_seed": {s: r["final_accuracy"] for s, r in zip(seeds, results)},
        "results": results,
    }


# the "format" of the file `infer-fast train --out` writes (train_report)
TRAIN_REPORT_FORMAT = "infer-fast-train"


def train_report(distilled: DistilledSet, path: str, config: StudentConfig, result: Dict[str, Any],
                 teacher_paths: Sequence[str] = ()) -> Dict[str, Any]:
    """What `infer-fast train --out` writes (JSON): the set (``path``, its method, dataset,
    size and content digest, so rows of a table can be told apart and matched to their set),
    the students' settings, the final accuracy over the seeds and each seed's run (its epochs'
    loss, rate and evaluations) from ``result`` (:func:`evaluate_seeds`'), without the models."""
    runs = [{"seed": seed, **{k: run[k] for k in ("final_accuracy", "best_accuracy", "elapsed_s", "steps", "history")}}
            for seed, run in zip(result["per_seed"], result["results"])]
    return {
        "format": TRAIN_REPORT_FORMAT,
        "set": {"path": path, "method": distilled.method, "dataset": distilled.dataset,
                "training_images": distilled.num_training_images(), "sha256": set_digest(distilled)},
        # (each seed's is per_seed's; the device as the students trained: resolved)
        "student_config": {k: v for k, v in dataclasses.asdict(config).items() if k != "seed"}
        | {"device": str(resolve_device(config.device))},
        "teachers": list(teacher_paths),  # (INFER+Dyn's: they relabel every batch)
        "final_accuracy": {"mean": result["mean"], "std": result["std"], "seeds": len(runs)},
        # (--eval-every: the optimistic number, labelled as such)
        "best_accuracy": best_accuracy_over_seeds(result),
        "per_seed": runs,
    }


def best_accuracy_over_seeds(result: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """{"mean", "std", "label": BEST_LABEL} of the seeds' best evaluated accuracies in ``result``
    (:func:`evaluate_seeds`'; --eval-every: the optimistic number, labelled), None where the students
    had no periodic evaluations (eval_every 0)."""
    best = [run["best_accuracy"] for run in result["results"] if run.get("best_accuracy") is not None]
    return {"mean": statistics.fmean(best), "std": statistics.pstdev(best), "label": BEST_LABEL} if best else None


# --------------------------------------------------------------------------------------
# analysis
# --------------------------------------------------------------------------------------

@torch.no_grad()
def feature_duplication(images, labels: Tensor, teacher: nn.Module, batch_size: int = 256,
                        progress: bool = False) -> float:
    """Mean pairwise cosine similarity of the teacher's penultimate features between images of
    the same class (self-pairs excluded), averaged over classes that have >= 2 images.
    ``images``: normalized float (N, ch, H, W), or an iterable of (start, chunk) pairs in
    order such as ``DistilledDataset.iter_chunks()`` (only features are kept). In [-1, 1];
    higher = more duplication. ``progress``: a bar over the images (one per label)."""
    if isinstance(images, Tensor) and not images.is_floating_point():  # (uint8 pixels would be read as normalized)
        raise ValueError(f"images must be normalized float images, got {images.dtype}: normalize a set's stored "
                         "uint8 pixels first (infer_fast.storage.normalize_uint8(images, mean, std)), or pass "
                         "DistilledDataset(ds).iter_chunks()")
    chunks = [(0, images)] if isinstance(images, Tensor) else images
    device = device_of(teacher)
    feats = []
    with eval_mode(teacher), progress_bar(total=labels.shape[0], desc="feature duplication", unit="img",
                                          disable=not progress, leave=False) as bar:
        for _, chunk in chunks:
            for i in range(0, chunk.shape[0], batch_size):
                feats.append(penultimate_features(teacher, chunk[i:i + batch_size].to(device)).float().cpu())
                bar.update(feats[-1].shape[0])
    feats = torch.cat(feats)
    if feats.shape[0] != labels.shape[0]:
        raise ValueError(f"{feats.shape[0]} images but {labels.shape[0]} labels")
    feats = F.normalize(feats.flatten(1).double(), dim=1)
    labels = labels.cpu()
    per_class = []
    for c in torch.unique(labels):
        f = feats[labels == c]
        m = f.shape[0]
        if m < 2:
            continue
        sim = f @ f.T
        per_class.append(((sim.sum() - sim.diagonal().sum()) / (m * (m - 1))).item())
    if not per_class:
        raise ValueError("feature_duplication needs a class with at least 2 images")
    return float(max(-1.0, min(1.0, sum(per_class) / len(per_class))))
