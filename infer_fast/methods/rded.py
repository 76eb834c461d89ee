"""RDED (Sun, Shi, Yu and Lin, CVPR 2024, "On the Diversity and Realism of Distilled Dataset:
An Efficient Dataset Distillation Paradigm"): no optimisation. Real patches are cropped from
real images, scored by the teachers, the most representative kept per class, and
``factor`` x ``factor`` of them stitched into each distilled image; the students learn the
teachers' labels of the regions they see.

The recipe, as the authors' release (github.com/LINs-lab/RDED, commit 31f9117) runs it, and
where each value comes from:

- Candidates: ``candidates_per_class`` real training images per class, drawn at random
  (``--mipc``; every script in ``scripts/`` passes ``--mipc 300``; argument.py's default 600
  is not used by any of them).
- Crops: ``crops_per_image`` crops of each candidate (``--num-crop``: 5 in every ``*_cr5.sh``
  script, the ones the paper reports; ``imagenet-1k_10ipc_..._cr1.sh`` is the 1-crop
  ablation), each torchvision's ``RandomResizedCrop(size // factor, ratio=(1, 1))`` with its
  default scale (0.08, 1) and antialiasing (synthesize/utils.py ``MultiRandomCrop``): a square
  patch of ``size // factor`` pixels.
- Score: the observer's cross-entropy of the true class, -log softmax(f(x))[y], on the patch
  zero-padded (in normalized space: the mean colour), centred, to the full input size
  (utils.py ``selector``, ``pad``, ``cross_entropy``); lower is more realistic.
- Selection: per image the crop with the lowest loss (its key patch); per class the
  ``ipc * factor**2`` key patches with the lowest loss (``selector``; so each image gives at
  most one patch).
- Stitching: the patch of rank r (ascending loss) goes to image ``r mod ipc``, cell
  ``r // ipc`` (row-major) of a ``factor`` x ``factor`` grid; cells are ``size // factor``
  pixels, the first ``size % factor`` rows and columns one pixel more (``mix_images``, which
  resizes a patch to its cell with nearest-neighbour interpolation).
- Per dataset family (``--factor`` in the scripts; ``--input-size`` in argument.py):
  CIFAR-10/100 (32 px) factor 1, Tiny-ImageNet (64 px) factor 1, ImageNet-1k and its subsets
  (ImageNette, ImageWoof, ImageNet-100 at 224 or 128 px) factor 2; mipc 300 and 5 crops in
  all (:data:`RECIPES`). DD-Ranking's RDED sets (NUS-HPC-AI-Lab/DD-Ranking, RDED/) use the
  same synthesis code and ``ShufflePatches(1)`` (factor 1) for CIFAR and Tiny-ImageNet.
  Fashion-MNIST (28 px) takes the CIFAR recipe.
- Soft labels: region-level, made while the student trains. validation/main.py labels every
  batch with the teacher (``teacher_model(mix_images)``, softmax at temperature 20 with
  cutmix) after ShufflePatches(factor), RandomResizedCrop(size, scale=(1 / factor, 1)) and a
  flip: no labels are stored (DD-Ranking evaluates it the same way, ``soft_label_mode: M``).
  That is this toolkit's per-batch labelling (``StudentConfig(dynamic=True)``, ``train
  --dynamic``), so the set stores only images and hard labels (``student_labels`` below),
  and its students augment as the release's (:func:`student_settings`: ``infer-fast run`` and
  ``train`` give them the ``shuffle_patches_crop_flip`` augmentation at the set's factor
  unless told otherwise; the rest of the student recipe is the dataset family's protocol, the
  same for every method, which for ImageNet is the release's but for a cosine schedule to 0
  instead of half a cosine, batch 100 at ipc 50 (the release: 200) and weight decay on biases
  and BatchNorm too; on small images the release trains with CutMix, temperature 20, 300
  epochs and batches of 50 to 200, the protocol with mixup, 30, 400 and 64).

Where this implementation differs, and why: candidates are cropped from the split's decoded
``size`` x ``size`` images (the release crops the original file), so one decode serves every
step; several teachers score with their mean logits (the release has one observer), the
dataset's own mean/std normalize (the release uses ImageNet's for every dataset), and the
stitched images are rounded and clamped to uint8 (the release truncates). Draws come from
torch generators seeded with the request's seed, so a seed gives the same set.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from .. import interrupts
from ..progress import progress_bar

from ..checks import check_images_per_class, check_int, split_label
from ..choices import PRECISIONS
from ..data.registry import SMALL_IMAGE_MAX
from ..mixed_precision import autocast, batch_in_layout, copies_in_layout
from ..options import Option
from .rded_checkpoint import RDEDCheckpoint
from .registry import ClassImages, DistillRequest, Method, register

# Per dataset family: patches per side of an image, candidate images per class, crops per candidate
RECIPES: Dict[str, Dict[str, int]] = {
    "cifar": dict(factor=1, candidates_per_class=300, crops_per_image=5),
    "tiny-imagenet": dict(factor=1, candidates_per_class=300, crops_per_image=5),
    "imagenet": dict(factor=2, candidates_per_class=300, crops_per_image=5),
}
CROP_SCALE = (0.08, 1.0)  # torchvision RandomResizedCrop's default (MultiRandomCrop passes none)
CROP_RATIO = (1.0, 1.0)  # square patches
DEFAULT_BATCH_SIZE = 512  # padded patches per teacher forward


def _by_family(name: str) -> str:
    """What a flag's help says of a recipe value: "the dataset family's: 1 for cifar, ..."."""
    values: Dict[int, list] = {}
    for family, recipe in RECIPES.items():  # (recipe_family: larger images take imagenet's)
        values.setdefault(recipe[name], []).append(
            f"imagenet or images over {SMALL_IMAGE_MAX} px" if family == "imagenet" else family)
    if len(values) == 1:
        return f"{next(iter(values))}, every dataset family's recipe"
    return "the dataset family's recipe: " + ", ".join(f"{v} for {' and '.join(f)}" for v, f in values.items())


OPTIONS = (
    Option("factor", int, "patches per side of an image (factor x factor stitched into each)", minimum=1,
           none=_by_family("factor"), metavar="N"),
    Option("candidates_per_class", int, "real training images per class drawn as candidates (the release's "
           "--mipc)", minimum=1, none=_by_family("candidates_per_class"), metavar="N"),
    Option("crops_per_image", int, "random crops of each candidate scored by the teachers (the release's "
           "--num-crop)", minimum=1, none=_by_family("crops_per_image"), metavar="N"),
    Option("batch_size", int, "padded patches per teacher forward (a memory setting)", minimum=1,
           default=DEFAULT_BATCH_SIZE, metavar="N"),
    # (the recovery methods' option of the same name: their teacher converted to bf16; here autocast)
    Option("precision", str, "the teachers' scoring forward passes in fp32 or under bf16 autocast (the losses "
           "ranked in fp32)", choices=PRECISIONS, default="fp32"),
    # (the recovery methods' option of the same name: their teacher's copy and inputs in that layout; here the
    # scoring's)
    Option("channels_last", bool, "the teachers' scoring forward passes in channels_last (copies of the teachers; "
           "faster convolutions on GPUs and CPUs, above all in bf16)", default=False),
    # (the recovery methods' option of the same name: minutes between checkpoints, here after a class)
    Option("checkpoint_minutes", float, "checkpoint after the class that ends M minutes since the last checkpoint "
           "(the classes done; --resume continues after them)", above=0, none="off", default=10.0, metavar="M"),
)
# options that do not change the set: a resume or a continued run may give other values of them
RESULT_NEUTRAL = ("batch_size", "checkpoint_minutes")
RUN_ONLY = ("checkpoint_minutes",)  # how the run goes, not how its set is made: not in the set's recipe


def recipe_family(dataset_name: str, image_size: int) -> str:
    """The RECIPES key of a dataset at ``image_size``: its recipe family (data.registry's
    recipe_family: ImageNet's for images larger than SMALL_IMAGE_MAX, the release's ImageNet subsets)."""
    from ..data.registry import recipe_family as family

    return family({"name": dataset_name, "image_size": image_size})


def parse_options(options: Mapping[str, Any], seed: int = 0) -> Dict[str, Any]:
    """Every option, its default where not given (checkpoint_minutes given as None: off); the
    recipe values (factor, candidates_per_class, crops_per_image) are None where neither
    given nor filled by the dataset family's recipe (RDED.family_defaults, which a request
    and a run apply), and :func:`_recipe` takes the family's then. So a value spelled out as
    the default parses as the run of none. (Their values are checked against OPTIONS by
    RDED.check_options.)"""
    return {opt.name: options.get(opt.name, opt.default) for opt in OPTIONS}


def resolve_recipe(options: Mapping[str, Any], dataset_name: str, image_size: int, ipc: int) -> Dict[str, Any]:
    """The family recipe with ``options`` (as a user gives them) on top, checked against
    ``image_size`` and ``ipc``."""
    return _recipe(RDED.check_options(options), dataset_name, image_size, ipc)


def _recipe(parsed: Mapping[str, Any], dataset_name: str, image_size: int, ipc: int) -> Dict[str, Any]:
    """:func:`resolve_recipe` of options already checked and parsed (:func:`parse_options`)."""
    family = recipe_family(dataset_name, image_size)
    recipe = {"family": family, **RECIPES[family], "batch_size": DEFAULT_BATCH_SIZE}
    recipe.update({k: v for k, v in parsed.items() if v is not None and k not in RUN_ONLY})
    # (the recipe of sets made before these options, which scored in fp32 in the default layout)
    if recipe.get("precision") == "fp32":
        del recipe["precision"]
    if recipe.get("channels_last") is False:
        del recipe["channels_last"]
    factor = recipe["factor"]
    if factor > image_size:
        raise ValueError(f"factor={factor} cuts {image_size}-pixel images into patches under one pixel: "
                         f"use factor <= {image_size}")
    needed = ipc * factor ** 2
    if recipe["candidates_per_class"] < needed:
        raise ValueError(f"candidates_per_class={recipe['candidates_per_class']} is too few: ipc={ipc} images of "
                         f"factor^2={factor ** 2} patches need {needed} candidates per class (one patch each): "
                         "raise candidates_per_class (--candidates-per-class) where the classes have the images, "
                         f"or {_fewer_patches(factor)}")
    return recipe


def _fewer_patches(factor: int) -> str:
    """How to need fewer patches per class: a smaller factor (where there is one) or ipc."""
    return f"lower {'factor (--factor) or ' if factor > 1 else ''}ipc"


def square_crops(x: Tensor, source: Tensor, top: Tensor, left: Tensor, side: Tensor, size: int) -> Tensor:
    """Crop k: rows top[k]:top[k]+side[k] and the same columns from left[k] of image
    x[source[k]], resized to ``size`` x ``size`` (bilinear, antialiased when shrinking, as
    torchvision's resize of tensors). x: float (n, ch, H, W); returns (len(source), ch, size, size).
    The crops of one side length are cut and resized together."""
    from ..data.transforms import crop_windows

    out = x.new_empty((source.numel(), x.shape[1], size, size))
    for s in side.unique().tolist():
        k = (side == s).nonzero().squeeze(1)
        crops = crop_windows(x, source[k], top[k], left[k], s)
        if s != size:
            crops = F.interpolate(crops, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out.index_copy_(0, k, crops)  # (whole crops: faster than out[k] = crops, the same values)
    return out


def _pad_centred(patches: Tensor, size: int) -> Tensor:
    """Patches zero-padded to ``size`` x ``size``, centred (the extra pixel below and right)."""
    h, w = patches.shape[-2:]
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(patches, (left, size - w - left, top, size - h - top))


@torch.no_grad()
def true_class_loss(patches: Tensor, label: int, teachers: Sequence[nn.Module], size: int,
                    batch_size: int = DEFAULT_BATCH_SIZE, precision: str = "fp32",
                    channels_last: bool = False) -> Tensor:
    """Per patch (normalized, on the teachers' device): the cross-entropy of ``label`` under
    the teachers' mean logits on the patch padded to ``size`` (CPU float32), their forward
    passes at ``precision`` (mixed_precision.autocast; the logits and the loss in fp32); with
    ``channels_last`` the padded patches go in that layout (the teachers' given so by the caller).
    A ValueError naming the class where the teachers' logits are not finite."""
    from ..relabel import ensemble_logits

    out = []
    for start in range(0, patches.shape[0], batch_size):
        # (the patches in the layout before padding: the padded batch is made in it, one copy fewer)
        x = _pad_centred(batch_in_layout(patches[start:start + batch_size], channels_last), size)
        with autocast(x.device, precision):
            logits = ensemble_logits(teachers, x)  # (fp32: each teacher's logits cast)
        out.append(-logits.log_softmax(1)[:, label].cpu())
    loss = torch.cat(out)
    if not torch.isfinite(loss).all():  # (nan scores rank arbitrarily: the set would be garbage)
        hint = f"; they scored under {precision} autocast: try precision fp32 (--precision fp32)" if precision != "fp32" else ""
        raise ValueError(f"RDED: class {label}: the teachers' logits are not finite (nan or inf) on its patches, so the "
                         f"patches cannot be ranked: check the teachers (their weights or training){hint}")
    return loss


def stitch(ranked: Tensor, ipc: int, factor: int, size: int) -> Tensor:
    """``ipc`` images of ``factor`` x ``factor`` patches from ``ipc * factor**2`` patches
    (ch, p, p) in rank order: rank r fills cell r // ipc (row-major) of image r mod ipc,
    resized to the cell (nearest) where the cell is not p x p. Returns (ipc, ch, size, size)."""
    from ..data.transforms import cell_sizes

    if ranked.shape[0] != ipc * factor ** 2:
        raise ValueError(f"stitch needs ipc * factor^2 = {ipc * factor ** 2} patches, got {ranked.shape[0]}")
    out = ranked.new_empty((ipc, ranked.shape[1], size, size))
    cells = cell_sizes(size, factor)
    offsets = [sum(cells[:i]) for i in range(factor)]
    for cell in range(factor ** 2):
        i, j = divmod(cell, factor)
        part = ranked[cell * ipc:(cell + 1) * ipc]
        if tuple(part.shape[-2:]) != (cells[i], cells[j]):
            part = F.interpolate(part, size=(cells[i], cells[j]), mode="nearest")
        out[:, :, offsets[i]:offsets[i] + cells[i], offsets[j]:offsets[j] + cells[j]] = part
    return out


def class_images(candidates: Tensor, label: int, teachers: Sequence[nn.Module], mean, std, ipc: int,
                 recipe: Mapping[str, Any], gen: torch.Generator) -> Tensor:
    """RDED's images of one class from its uint8 candidate images (n, ch, S, S): crop, score,
    keep, stitch. Returns uint8 (ipc, ch, S, S)."""
    from ..data.transforms import denormalize, normalize, resized_crop_boxes
    from ..models import device_of

    device = device_of(teachers[0])
    n, size = candidates.shape[0], candidates.shape[-1]
    factor, crops = recipe["factor"], recipe["crops_per_image"]
    x = normalize(candidates.to(device, non_blocking=True), mean, std)
    # crop j of image i is box i * crops + j
    top, left, side, _ = (t.to(device) for t in resized_crop_boxes(n * crops, size, size, CROP_SCALE, CROP_RATIO, gen))
    source = torch.arange(n, device=device).repeat_interleave(crops)
    patches = square_crops(x, source, top, left, side, size // factor)
    loss = true_class_loss(patches, label, teachers, size, recipe["batch_size"], recipe.get("precision", "fp32"),
                           recipe.get("channels_last", False)).view(n, crops)
    key_loss, key_crop = loss.min(1)  # each image's key patch (the first of equal losses)
    keep = torch.argsort(key_loss, stable=True)[:ipc * factor ** 2]
    chosen = patches[(keep * crops + key_crop[keep]).to(device)]
    return denormalize(stitch(chosen, ipc, factor, size), mean, std, to_uint8=True).cpu()


def _checked_recipe(train, parsed: Mapping[str, Any], ipc: int) -> Dict[str, Any]:
    """The recipe of checked and parsed options for the split ``train``, refused (before any
    work) where a class has fewer training images than the recipe's candidates_per_class."""
    spec = train.spec
    recipe = _recipe(parsed, spec.name, spec.image_size, ipc)
    candidates, counts = recipe["candidates_per_class"], train.class_counts().tolist()
    needed = ipc * recipe["factor"] ** 2  # (the least candidates the patches take: _recipe)
    fewest = min(counts, default=0)
    remedy = (f"lower it (--candidates-per-class) to {fewest} or fewer, at least ipc x factor^2 = {needed}"
              if fewest >= needed else
              f"ipc x factor^2 = {needed} patches need more than that: {_fewer_patches(recipe['factor'])}")
    check_images_per_class(counts, candidates, split_label(train), f"rded with candidates_per_class={candidates}",
                           remedy)
    return recipe


def _hyperparameters(recipe: Mapping[str, Any], size: int) -> Dict[str, Any]:
    """What a set records of how RDED made it: the recipe and its rules in words."""
    patch = size // recipe["factor"]
    return {
        **recipe, "patches_per_image": recipe["factor"] ** 2, "patch_size": patch,
        "crop": f"RandomResizedCrop({patch}, scale={CROP_SCALE}, ratio={CROP_RATIO}, antialias) of the decoded image",
        "score": "cross-entropy of the true class under the teachers' mean logits, the patch zero-padded "
                 "(normalized space), centred, to the image size",
        "selection": "per image its lowest-loss crop; per class the ipc * factor^2 lowest-loss of those",
        "layout": "the patch of rank r (ascending loss) fills cell r // ipc (row-major) of image r mod ipc",
        "soft_labels": "region-level, per batch: the teachers label every augmented batch the student sees",
        "image_storage": "uint8 pixels, round(clamp(x * std + mean, 0, 1) * 255)",
    }


def rded_set(train, teachers: Sequence[nn.Module], ipc: int, options: Optional[Mapping[str, Any]] = None,
             seed: int = 0, teacher_records: Sequence[Dict[str, Any]] = (), progress: bool = False):
    """The RDED DistilledSet (unlabelled: its students are labelled per batch) of ``train``
    (an ImageSet, or a FolderImageSet of which only the candidates are decoded, one class at a
    time) with the ``teachers`` (eval mode, on the device that scores), ``options`` over the
    dataset family's recipe. Images class-major, ipc per class, uint8."""
    check_int("ipc", ipc)
    if not teachers:
        raise ValueError("teachers: RDED needs at least one teacher to score the patches")
    recipe = _checked_recipe(train, RDED.check_options(options or {}), ipc)
    return _recipe_set(train, teachers, ipc, recipe, seed, teacher_records, progress)


def _recipe_set(train, teachers: Sequence[nn.Module], ipc: int, recipe: Mapping[str, Any], seed: int,
                teacher_records: Sequence[Dict[str, Any]], progress: bool, checkpoint: Optional[Dict[str, Any]] = None):
    """:func:`rded_set` with its arguments checked and its recipe resolved (:func:`_checked_recipe`).
    ``checkpoint``: {path, minutes, resume} of the run's checkpoint (:class:`RDEDCheckpoint`;
    None: none), which it continues from, writes after classes and leaves for the caller."""
    from ..distill.run import real_data_fields
    from ..models import device_of
    from ..storage import DistilledSet

    spec, candidates = train.spec, recipe["candidates_per_class"]
    picked = train.per_class(candidates, seed=seed)  # class-major: one batch per class
    gen = torch.Generator().manual_seed(int(seed))
    images = torch.empty((ipc * spec.num_classes,) + tuple(train.image_shape), dtype=torch.uint8)
    store = None if checkpoint is None else _checkpoint(checkpoint, picked, teachers, recipe, ipc, seed)
    first = 0 if store is None else store.restore(images, gen, spec.num_classes)  # (the classes a resumed run has done)
    if store is not None:
        store.announce(first, spec.num_classes)
    rows = torch.arange(first * candidates, len(picked))
    batches = picked.batches(candidates, rows, pin_memory=device_of(teachers[0]).type == "cuda")
    scorers = copies_in_layout(teachers, recipe.get("channels_last", False))  # (the teachers that score)
    # a stop signal (SIGTERM...) lets the class under way finish and checkpoints after it (called
    # from Python too: checkpointed_call installs the handlers where cli.main did not)
    with contextlib.ExitStack() as stops:
        if store is not None:
            stops.enter_context(interrupts.checkpointed_call(store.where))
            stops.enter_context(interrupts.stop_at_safe_points())
        for c, (batch, _) in enumerate(progress_bar(batches, total=spec.num_classes, initial=first, unit="class",
                                                    desc="RDED: scoring patches", disable=not progress), start=first):
            images[c * ipc:(c + 1) * ipc] = class_images(batch, c, scorers, spec.mean, spec.std, ipc, recipe, gen)
            if store is not None:
                stop = interrupts.STOP.signum is not None
                store.after_class(c + 1, spec.num_classes, images, gen, now=stop)
                if stop:
                    raise interrupts.requested_stop()
    return DistilledSet(
        method="rded", **real_data_fields(train), images=images, labels=torch.arange(spec.num_classes).repeat_interleave(ipc),
        hyperparameters=_hyperparameters(recipe, spec.image_size),
        teachers=list(teacher_records), budget={"ipc": int(ipc), "K": 0, "M": len(teachers), "accounting": "ipc"},
        seed=int(seed),
    )


def _checkpoint(where: Mapping[str, Any], picked, teachers: Sequence[nn.Module], recipe: Mapping[str, Any],
                ipc: int, seed: int) -> RDEDCheckpoint:
    """The run's checkpoint, identified by its candidates, recipe (but its result-neutral
    batch_size), ipc, seed and teachers' weights."""
    from .._io import model_digest
    from ..distill.engine import checkpoint_clock

    neutral = [f"recipe.{k}" for k in RESULT_NEUTRAL]  # (older checkpoints recorded recipe.batch_size: ignored)

    def identity() -> Dict[str, Any]:
        return {"method": "rded", "candidates_sha256": picked.digest(), "ipc": int(ipc), "seed": int(seed),
                "teachers_sha256": [model_digest(t) for t in teachers],
                **{f"recipe.{k}": v for k, v in recipe.items() if f"recipe.{k}" not in neutral}}

    return RDEDCheckpoint(where["path"], identity, where["minutes"], where["resume"], checkpoint_clock, ignore=neutral)


def distill(request: DistillRequest):
    """RDED's set of ``request.dataset`` written to ``request.out_dir`` (the request is checked:
    its options, ipc and teachers); its students take per-batch teacher labels."""
    from ..output_lock import output_lock

    with output_lock(request.out_dir, "output directory"):
        return _distill_locked(request)


def _distill_locked(request: DistillRequest):
    from ..data import load_dataset
    from ..distill.checkpoints import remove_recovery_checkpoints
    from ..distill.run import check_new_output, load_set_teachers, recovery_checkpoint_path, request_identity
    from ..storage import save_distilled
    from ..teacher import resolve_device

    resolve_device(request.device)
    out_dir = check_new_output(request.out_dir)
    train = load_dataset(request.dataset, "train", data_root=request.data_root, progress=request.progress)
    recipe = _checked_recipe(train, request.parsed, request.ipc)  # before the teachers load
    teachers, records = load_set_teachers(request.teacher_paths, request.dataset, train, request.device)
    path = recovery_checkpoint_path(out_dir)
    checkpoint = dict(path=path, minutes=request.parsed["checkpoint_minutes"], resume=request.resume)
    ds = _recipe_set(train, teachers, request.ipc, recipe, request.seed, records, request.progress, checkpoint)
    ds.request = request_identity(request, train, teachers)  # (what a --resume of it compares: distill.run.finished_set)
    saved = save_distilled(ds, out_dir, progress=request.progress)
    remove_recovery_checkpoints(path)  # (the set is complete: nothing to resume; the results folder too)
    return saved


def student_settings(recipe: Mapping[str, Any]) -> Dict[str, Any]:
    """What RDED's students see (the release's validation/main.py): the set's factor x factor
    patches shuffled, a RandomResizedCrop of at least 1/factor of the image, a flip; the
    teachers label those regions (per batch)."""
    return {"augmentation": "shuffle_patches_crop_flip", "patches": int(recipe["factor"])}


STUDENT_SETTINGS_HELP = {"augmentation": "shuffle_patches_crop_flip", "patches": "the set's factor"}


def check_budget(options: Mapping[str, Any], ipc: int, spec, num_teachers: int) -> None:
    """The recipe's candidates and factor at ``ipc`` for the dataset ``spec``'s image size
    (parsed ``options``): too few candidates for ipc x factor^2 patches is an error."""
    _recipe(options, spec.name, spec.image_size, ipc)


def images_per_class(options: Mapping[str, Any], ipc: int, spec, num_teachers: int) -> ClassImages:
    """Its candidates: the recipe's candidates_per_class real images of every class (parsed
    ``options`` for the dataset ``spec``), all drawn and scored whatever the ipc."""
    candidates = _recipe(options, spec.name, spec.image_size, ipc)["candidates_per_class"]
    return ClassImages(candidates, "candidates_per_class")


RDED = register(Method(
    name="rded", label="RDED", summary="teacher-scored real patches stitched factor x factor per image (no optimisation)",
    distill=distill, parse_options=parse_options, options=OPTIONS, student_labels="per-batch", resumable=True,
    student_settings=student_settings, student_settings_help=STUDENT_SETTINGS_HELP, check_budget=check_budget, images_per_class=images_per_class,
    result_neutral=RESULT_NEUTRAL, family_defaults=RECIPES,
))
