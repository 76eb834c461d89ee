"""Teacher training ("squeeze") and teacher checkpoints.

    summary = train_teacher(TeacherConfig(dataset="fashion-mnist", model="convnet"), "t.pt")
    model, meta = load_teacher("t.pt", dataset="fashion-mnist")

Recipe (INFER_METHOD.md §3): SGD lr 0.1, momentum 0.9, weight decay 5e-4, cosine schedule
over the epochs, random crop with padding + horizontal flip. The checkpoint is written
atomically after every epoch and holds everything needed to resume; an interrupted run
started again with the same output path continues from the last finished epoch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shlex
import time
from dataclasses import dataclass, field
from collections.abc import Iterable, Mapping
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__, interrupts
from .data import dataset_label, dataset_options, get_spec, load_dataset
from .data.registry import IMAGEFOLDER, get_dataset
from .data.transforms import normalize, random_crop_with_padding, random_flip
from .models import (HeadMismatch, check_model_name, create_model, describe_output, device_of, eval_mode,
                     float32_model)
from ._text import count_text, first_line, first_names
from .progress import SHORT_PHASE_S, progress_bar, say
from .training_rng import global_rng_state, kept_cpu_rng, seeded_cpu_rng, training_rng
from ._io import PathLike, check_input_file, check_writable, read_checkpoint, save_atomic
from .checks import check_class_names, split_label
from .imagenet_wnids import IMAGENET_WNIDS
from .choices import DEVICE_CHOICES, PRECISIONS
from .mixed_precision import (CHANNELS_LAST_HELP, TRAINING_PRECISION_HELP, autocast, batch_in_layout,
                              model_in_layout)
from .config import yaml_text
from .options import (CheckedWhenMade, check_fields, flag_words, given_config, hold_as_made, option, options_of,
                      result_neutral_fields)
from .run_identity import check_same_run
from .step_losses import StepLosses
from .grad_mode import training_grad_mode
from .transfer import to_device

CHECKPOINT_FORMAT = "infer-fast-teacher"
CHECKPOINT_VERSION = 1
# the progress bar's running loss is read on the host every this many steps (a read waits for the GPU)
PROGRESS_LOSS_EVERY = 20
# what load_teacher reads from a checkpoint (and "class_names", the classes of its outputs in order: a
# checkpoint written before they were recorded has none, and is not checked against the data's)
TEACHER_KEYS = ("dataset", "num_classes", "channels", "image_size", "model", "state_dict", "epochs_done", "config")
# what to do when a teacher's recorded classes are not the data's (checks.check_class_names)
OTHER_CLASSES_TODO = ("its outputs would be read as other classes: use a teacher trained on this data's classes "
                      "(the same class folders)")
# an evaluation batch holds at most this many pixels per channel: 256 images at 224^2 (~1.5 GiB of
# ResNet-18 activations; ImageNet's batch of 1000 took 6 GiB more), whole batches of small images
EVAL_MAX_PIXELS = 256 * 224 * 224
CHECKPOINT_ALLOWANCE = 64 << 10  # the metadata and history beside the tensors, when checking free space


class TeacherDivergedError(ValueError):
    """Teacher training hit a non-finite loss (a learning rate too high, mostly): a ValueError,
    as a value the user chose caused it, so the CLI says it in one line."""


@dataclass(frozen=True)
class TeacherConfig(CheckedWhenMade):
    # a name, or {name, num_classes, image_size, in_memory} (data.registry.dataset_options)
    dataset: Union[str, Dict[str, Any]] = field(metadata=option("dataset name (see `infer-fast datasets`)"))
    model: str = field(default="convnet", metadata=option("model name (see `infer-fast models`)"))
    epochs: int = field(default=30, metadata=option("training epochs", minimum=1))
    batch_size: int = field(default=128, metadata=option("batch size", minimum=1))
    lr: float = field(default=0.1, metadata=option("SGD learning rate", above=0))
    momentum: float = field(default=0.9, metadata=option("SGD momentum", minimum=0, below=1))
    weight_decay: float = field(default=5e-4, metadata=option("weight decay", minimum=0))
    seed: int = field(default=0, metadata=option("random seed"))
    # (result-neutral: where the data lies; a checkpoint compares the training split's content digest instead)
    data_root: Optional[os.PathLike] = field(default=None, metadata=option(  # (a str or a path; held as a str)
        "directory holding the dataset files", none="none; the embedded datasets need none", result_neutral=True))
    device: str = field(default="auto", metadata=option(DEVICE_CHOICES, result_neutral=True))
    eval_batch_size: int = field(default=1000, metadata=option("test images per evaluation batch", minimum=1,
                                                               result_neutral=True))
    precision: str = field(default="fp32", metadata=option(TRAINING_PRECISION_HELP, choices=PRECISIONS))
    channels_last: bool = field(default=False, metadata=option(CHANNELS_LAST_HELP))

    def validate(self) -> None:
        check_fields(self)  # each field's type, range and choices, as declared above
        hold_as_made(self)
        dataset_options(self.dataset)
        check_model_name(self.model)
        resolve_device(self.device)


def device_named(device: str, name: str = "device") -> torch.device:
    """The torch.device a device option other than "auto" names; ValueError naming the option
    ``name`` (the CLI: "--device") for anything else than DEVICE_CHOICES. Whether such a GPU is
    there is :func:`resolve_device`'s to say."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be {DEVICE_CHOICES}, got {device!r}")
    return dev


def resolve_device(device: str) -> torch.device:
    """The torch.device for a user's ``device`` option ("auto": the GPU when there is one);
    ValueError naming the option for anything else than DEVICE_CHOICES, or a GPU that is
    not there."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = device_named(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but no CUDA GPU is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return dev


@torch.no_grad()
def evaluate(model: nn.Module, test_set, batch_size: int, device, mean=None, std=None, progress: bool = False,
             precision: str = "fp32", channels_last: bool = False) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on a split (ImageSet or FolderImageSet),
    streamed in batches of ``batch_size`` images (at most EVAL_MAX_PIXELS pixels), normalized
    with ``mean``/``std`` (default: the split's), the forward pass at ``precision`` with the
    batches in channels_last or not (as the model trained: mixed_precision). ``progress``: a
    bar over the batches once the evaluation has run SHORT_PHASE_S (ImageNet's val split takes
    minutes on a CPU, a small test split an instant). A model that is not float32 is
    evaluated as a float32 copy (models.float32_model), the caller's left as it was."""
    model = float32_model(model)
    was_training = model.training
    model.eval()
    device = torch.device(device)
    spec = test_set.spec
    mean = spec.mean if mean is None else mean
    std = spec.std if std is None else std
    rows = max(1, min(batch_size, EVAL_MAX_PIXELS // (spec.image_size * spec.image_size)))
    correct = torch.zeros((), dtype=torch.int64, device=device)  # counted on the device: one host read at the end
    try:
        for images, labels in test_set.batches(rows, pin_memory=device.type == "cuda", progress=progress,
                                               desc=f"evaluating on {spec.name} {test_set.split}", delay=SHORT_PHASE_S):
            x = batch_in_layout(normalize(images.to(device, non_blocking=True), mean, std), channels_last)
            with autocast(device, precision):
                logits = model(x)
            correct += (logits.argmax(1) == labels.to(device, non_blocking=True)).sum()
    finally:
        model.train(was_training)
    return correct.item() / len(test_set)


def training_steps(images: int, batch_size: int) -> int:
    """The steps of a training epoch over ``images`` in batches of ``batch_size`` (teachers'
    and students'): the last batch takes the rest, and a rest of one image joins the batch
    before it, which then holds batch_size + 1: BatchNorm in training mode cannot normalize
    one value per channel (torch refuses a batch of one image), and merging, rather than
    dropping it, keeps every image in every epoch. (A student under torchrun splits each batch
    row by row across the ranks: a last batch of fewer than 2 x world images still gives a rank
    one image, left as it is.)"""
    steps = math.ceil(images / batch_size)
    return steps - 1 if steps > 1 and images % batch_size == 1 else steps


def restore_schedule(schedule, state: Dict[str, Any], epochs_done: int, steps_per_epoch: int, checkpoint: str) -> None:
    """Load a checkpoint's learning-rate ``schedule`` state (teachers', students'), refused where
    it stepped otherwise than this run steps: a checkpoint written before a last batch of one
    image joined the batch before it (training_steps) has one step more per epoch, and would
    continue on a schedule of another length."""
    schedule.load_state_dict(state)
    if schedule.last_epoch != epochs_done * steps_per_epoch:
        raise ValueError(f"{checkpoint}: its learning-rate schedule took {schedule.last_epoch} steps in "
                         f"{count_text(epochs_done, 'epoch')}, where this version takes {steps_per_epoch} per epoch "
                         "(a last batch of one image joins the batch before it): start that training again "
                         "(delete the checkpoint)")


def _last_single_merged(batches: Iterable[Tuple[torch.Tensor, torch.Tensor]]
                        ) -> Iterable[Tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) ``batches`` of one epoch, a last batch of one image joined to the batch
    before it (:func:`training_steps`): only the last batch can be smaller than the others, so
    one batch is held back until the next shows whether it is that one."""
    held = None
    for images, labels in batches:
        if held is not None and images.shape[0] == 1 and held[0].shape[0] > 1:
            held = (torch.cat([held[0], images]), torch.cat([held[1], labels]))
            continue
        if held is not None:
            yield held
        held = (images, labels)
    if held is not None:
        yield held


# How a run's record of the teachers' digests (a list, in order) is named when a resume differs in it:
# the same teachers in another order differ too (each teacher's UFCs, a recovery's jobs, follow the order)
TEACHERS_WEIGHTS_LABEL = "the teachers' weights (or their order)"


def teacher_label(m: int, path: Optional[str] = None, count: Optional[int] = None) -> str:
    """How a message names the teacher at index ``m`` (from 0) of a call's ``count`` teachers:
    numbered from 1 for users, as the progress bars are, with the count and its checkpoint
    ``path`` where known ("teacher 2/3 (t2.pt)")."""
    return f"teacher {m + 1}" + (f"/{count}" if count else "") + (f" ({path})" if path else "")


def check_distinct_teachers(digests: Sequence[str], paths: Optional[Sequence[str]] = None) -> None:
    """Before any work: a ValueError naming the first two teachers that hold the same weights
    (``digests``: _io.model_digest of each, as the caller computes them for its records;
    ``paths``: their checkpoints where known). One teacher given twice would weigh twice in the
    mean of the logits, and count twice in M (INFER's UFC sets per natural set, INFER+Dyn's
    epochs), as a second teacher it is not."""
    first_with: Dict[str, int] = {}
    for j, digest in enumerate(digests):
        i = first_with.setdefault(digest, j)
        if i != j:
            i_name, j_name = (teacher_label(m, paths[m] if paths else None, len(digests)) for m in (i, j))
            raise ValueError(f"{i_name} and {j_name} hold the same weights: give each teacher once")


def check_teacher_outputs(teachers: Sequence[nn.Module], num_classes: int, image_shape: Sequence[int],
                          names: Optional[Sequence[str]] = None) -> None:
    """Before any work: a ValueError naming the teacher (``names[m]``, default
    :func:`teacher_label`) unless one image of the data's shape ``image_shape`` (ch, H, W) gives
    logits, a tensor (1, num_classes). A teacher of more classes (ImageNet's 1000 on a 10-class
    subset) would be read as other classes, one of fewer classes or other channels would fail
    mid-run. One forward of a zero image, without gradients, on the teacher's device, in eval
    mode (its modes restored after: models.eval_mode), through a float32 copy of a teacher
    that is not float32 (models.float32_model, as the calls run it), and for a torch.compile'd
    teacher through the module it wraps (a one-image call of the compiled one would compile a
    graph more, and make the batches' graph one of dynamic shapes): the teacher is left as it
    was. Recovery, relabelling and INFER+Dyn students all check their teachers so."""
    from .ops.bn_hooks import uncompiled

    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3:
        raise ValueError(f"image_shape must be (channels, H, W), got {shape}")
    size = "x".join(str(s) for s in shape)
    for m, teacher in enumerate(teachers):
        who = names[m] if names is not None else teacher_label(m, count=len(teachers))
        model = float32_model(uncompiled(teacher))
        try:
            with torch.no_grad(), eval_mode(model):
                out = model(torch.zeros((1, *shape), dtype=torch.float32, device=device_of(model)))
        except Exception as exc:  # (any failure of its forward on the data's images: said in one line)
            raise ValueError(f"{who} fails on one {size} image (the data's shape): {type(exc).__name__}: "
                             f"{first_line(exc, 300)}") from None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
            raise ValueError(f"{who} returns {describe_output(out)} for one {size} image; a teacher of this data "
                             f"must give logits (1, {num_classes}): one row per image, one column per class")


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    padding = max(1, x.shape[-1] // 8)  # 4 px at 32^2, as RandomCrop(32, padding=4)
    # (the crop is a new batch: flipped in place, the same values without a mirrored copy of every image)
    return random_flip(random_crop_with_padding(x, x.shape[-1], padding, gen), gen, inplace=True)


def _metadata(cfg: TeacherConfig, spec, train=None, progress: bool = False) -> Dict[str, Any]:
    """What a teacher checkpoint records besides its weights; ``train``, the training split,
    adds its content digest (a resume on other data is refused; ``progress``: its bar)."""
    meta = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "toolkit_version": __version__,
        "dataset": spec.name,
        "num_classes": spec.num_classes,
        "channels": spec.channels,
        "image_size": spec.image_size,
        "class_names": _class_names(spec),
        "normalization": {"mean": list(spec.mean), "std": list(spec.std)},
        "model": cfg.model,
        "config": dataclasses.asdict(cfg),
    }
    if train is not None:
        meta["data_sha256"] = train.digest(progress=progress)
    return meta


def _class_names(spec) -> Optional[List[str]]:
    """The class names of a split's spec as a checkpoint records them (None: the dataset names none)."""
    return list(spec.class_names) if spec.class_names is not None else None


@training_grad_mode()  # (trains whatever the caller's grad mode: a notebook's no_grad or inference_mode too)
def train_teacher(cfg: TeacherConfig, out: PathLike, progress: bool = True) -> Dict[str, Any]:
    """Train (or resume training) a teacher; returns the final checkpoint's metadata.

    Before any work, ``out`` must be writable with room for two checkpoints (the atomic
    replacement keeps the previous one until the new one is complete). ``progress``: bars and
    a line per epoch; what an existing ``out`` held (trained already, or resumed from) is said
    even without them, as a recovery's or RDED's resume is. It trains with gradients on whatever
    the caller's grad mode (no_grad, inference_mode), which is restored after it (grad_mode)."""
    device = resolve_device(given_config("cfg", cfg, TeacherConfig).device)  # (valid: checked when made)
    out = os.fspath(out)
    check_writable(out, "teacher checkpoint")
    train = load_dataset(cfg.dataset, "train", data_root=cfg.data_root, progress=progress)
    test = load_dataset(cfg.dataset, "test", data_root=cfg.data_root, progress=progress)
    spec = train.spec
    with seeded_cpu_rng(cfg.seed):  # (the weights from the seed; the process's stream left as it was)
        model = model_in_layout(create_model(cfg.model, num_classes=spec.num_classes, in_channels=spec.channels,
                                             image_size=spec.image_size).to(device), cfg.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps_per_epoch = training_steps(len(train), cfg.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps_per_epoch)
    meta = _metadata(cfg, spec, train, progress)
    history, start_epoch, elapsed, rng = [], 0, 0.0, None
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    momentum_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    check_writable(out, "teacher checkpoint", need_bytes=2 * (state_bytes + momentum_bytes) + CHECKPOINT_ALLOWANCE)

    if os.path.exists(out):
        ckpt = _read_checkpoint(out)
        if is_pretrained(ckpt):  # (said as such, not as a training of other settings)
            raise ValueError(f"{out!r} already holds pretrained weights ({ckpt.get('model')}), not a training to "
                             "continue: choose another --out or delete the file")
        _check_same_run(ckpt, meta, out)
        if ckpt.get("train_state") is None:
            print(f"{out}: already trained ({count_text(ckpt['epochs_done'], 'epoch')}, test accuracy "
                  f"{ckpt['test_accuracy']:.4f}); nothing to do")
            return {k: v for k, v in ckpt.items() if k not in ("state_dict", "train_state")}
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["train_state"]["optimizer"])
        restore_schedule(schedule, ckpt["train_state"]["schedule"], ckpt["epochs_done"], steps_per_epoch, out)
        history, start_epoch, elapsed = ckpt["history"], ckpt["epochs_done"], ckpt["elapsed_s"]
        rng = ckpt["train_state"].get("rng")  # (dropout's draws, continued; none in a checkpoint of before)
        print(f"{out}: resuming after epoch {start_epoch}/{cfg.epochs}")
    # (from Python too, a stop (Ctrl-C, SIGTERM) says where the epochs done are; cli.main's handlers kept)
    with interrupts.checkpointed_call(interrupts.file_where(out), again="call train_teacher again with the same out"), \
            training_rng("teacher-dropout", cfg.seed, device, rng):  # (dropout draws from the global generators)
        return _train_epochs(cfg, out, model, train, test, optimizer, schedule, meta, history, start_epoch, elapsed,
                             device, progress)


def _train_epochs(cfg: TeacherConfig, out: str, model: nn.Module, train, test, optimizer, schedule,
                  meta: Dict[str, Any], history: List[Dict[str, Any]], start_epoch: int, elapsed: float,
                  device: torch.device, progress: bool) -> Dict[str, Any]:
    """The epochs from ``start_epoch``, each evaluated and checkpointed (with the optimizer,
    schedule and global generators' state until the last); returns the final metadata."""
    accuracy = history[-1]["test_accuracy"] if history else float("nan")
    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        train_loss = _train_epoch(model, train, cfg, optimizer, schedule, epoch, device, progress)
        accuracy = evaluate(model, test, cfg.eval_batch_size, device, progress=progress, precision=cfg.precision,
                            channels_last=cfg.channels_last)
        elapsed += time.perf_counter() - started
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "test_accuracy": accuracy, "elapsed_s": elapsed})
        if progress:
            say(f"epoch {epoch + 1}/{cfg.epochs}: train loss {train_loss:.4f}, test accuracy {accuracy:.4f} ({elapsed:.0f} s)")
        done = epoch + 1 == cfg.epochs
        save_atomic(
            {
                **meta,
                "epochs_done": epoch + 1,
                "test_accuracy": accuracy,
                "history": history,
                "elapsed_s": elapsed,
                "state_dict": model.state_dict(),
                "train_state": None if done else {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                                                  "rng": global_rng_state(device)},
            },
            out,
        )
    summary = {**meta, "epochs_done": cfg.epochs, "test_accuracy": accuracy, "history": history, "elapsed_s": elapsed}
    return summary


def _train_epoch(model: nn.Module, train, cfg: TeacherConfig, optimizer, schedule, epoch: int, device: torch.device,
                 progress: bool) -> float:
    """One epoch of ``model`` on ``train`` (its order and augmentation drawn from a generator
    seeded by the seed and the epoch: the same on resume); returns the mean training loss."""
    spec, steps = train.spec, training_steps(len(train), cfg.batch_size)
    # (modulo 2**64: what manual_seed does with a negative seed, and a 64-bit seed times 100_003 fits no more)
    gen = torch.Generator().manual_seed((cfg.seed * 100_003 + epoch) % 2**64)
    order = torch.randperm(len(train), generator=gen)
    model.train()
    step_losses = StepLosses(steps, device)
    # the epoch's batches in that order: slices in memory, decoded by DataLoader workers from folders
    # (not pinned: they are augmented on the host first, and the augmented batch goes through pinned memory)
    bar = progress_bar(_last_single_merged(train.batches(cfg.batch_size, order)), total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=not progress, leave=False)
    for step, (images, labels) in enumerate(bar):
        # augment in [0, 1] pixel space (crop padding is black, as torchvision's), then normalize
        x = to_device(normalize(_augment(images.float().div_(255), gen), spec.mean, spec.std), device)
        y = to_device(labels, device)
        with autocast(device, cfg.precision):  # (bf16: the loss on fp32 logits; fp32: the same tensors)
            logits = model(batch_in_layout(x, cfg.channels_last))
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lr = schedule.get_last_lr()[0]  # (the rate this step takes: after schedule.step, the next step's)
        optimizer.step()
        schedule.step()
        step_losses.add(loss, len(y))
        if progress and (step % PROGRESS_LOSS_EVERY == 0 or step + 1 == steps):  # (a host read)
            bar.set_postfix(loss=f"{step_losses.mean():.4f}", lr=f"{lr:.4f}")
    mean = step_losses.mean()  # (no new read when the bar read it after the last step)
    if not math.isfinite(mean):  # (checked once an epoch: a check per step would wait for the GPU at each)
        bad = int((~torch.isfinite(step_losses.values[:len(step_losses.sizes)])).nonzero()[0])
        raise TeacherDivergedError(
            f"teacher training diverged: the training loss became non-finite (nan or inf) at epoch {epoch + 1}, "
            f"step {bad + 1} of {steps}, with lr {cfg.lr:g}: try a lower learning rate "
            "(--lr; a run config's teachers: lr) (this epoch was not saved)")
    return mean


def _read_checkpoint(path: str) -> Dict[str, Any]:
    check_input_file(path, "teacher checkpoint")
    return read_checkpoint(path, CHECKPOINT_FORMAT, "teacher checkpoint", CHECKPOINT_VERSION)


# what does not change a teacher (declared on its fields): where it trains, its evaluation
# batches, and where its data lies
TEACHER_RESULT_NEUTRAL = result_neutral_fields(TeacherConfig)


def _identity(meta: Dict[str, Any]) -> Dict[str, Any]:
    """The run a teacher checkpoint's metadata records: its config's fields (the dataset by its
    name), the data's shape, and the training split's content digest and class names (the
    digest of arrays does not see the names, and a label means the class of that name)."""
    identity = {**meta.get("config", {}), **{k: meta.get(k) for k in ("dataset", "num_classes", "channels", "image_size")}}
    identity.update({k: meta[k] for k in ("data_sha256", "class_names") if k in meta})
    return identity


def _check_same_run(ckpt: Dict[str, Any], meta: Dict[str, Any], path: str) -> None:
    """Resuming must continue the same training, not silently mix two (a checkpoint older than
    a setting, or than the data digest or class names, counts as made with the default, or with
    this data)."""
    defaults = {**{name: opt.default for name, opt in options_of(TeacherConfig).items()},
                **{k: meta[k] for k in ("data_sha256", "class_names")}}
    check_same_run("teacher checkpoint", path, _identity(ckpt), _identity(meta),
                   "resume with the same settings and training data (another --data-root or changed files change it), "
                   "or choose another --out or delete the file to start over", ignore=TEACHER_RESULT_NEUTRAL,
                   defaults=defaults, labels={"data_sha256": "the training images",
                                              "class_names": "the class names (or their order)"})


def load_teacher(
    path: PathLike, dataset: Union[str, Mapping[str, Any], None] = None, num_classes: Optional[int] = None,
    device: str = "cpu", *,
    channels: Optional[int] = None, image_size: Optional[int] = None, class_names: Optional[Sequence[str]] = None,
    names_from: str = "the data",
) -> Tuple[nn.Module, Dict[str, Any]]:
    """A trained teacher, frozen (no parameter gradients) and in eval mode, and its metadata.

    Before anything runs on it, a ValueError naming ``path`` refuses a checkpoint whose
    training has not finished, whose model cannot be built or whose weights do not fit it or
    are not finite, and, given ``dataset`` (a name or mapping), a teacher of another dataset,
    class count (``num_classes``, default the dataset's), input channels (``channels``) or,
    where the model is built for one input size, image size (``image_size``): the last two
    default to the dataset's own. Given ``class_names`` (those of the data it is used with, as
    ``names_from`` calls it: a split's, a set's), a teacher recording other class names, or
    the same in another order, is refused (checks.check_class_names; one recording none, older
    than the record, is not)."""
    dev = resolve_device(device)
    path = os.fspath(path)
    ckpt = _read_checkpoint(path)
    missing = [key for key in TEACHER_KEYS if key not in ckpt]
    if missing:
        raise ValueError(f"teacher checkpoint {path!r} is incomplete (no {', '.join(missing)})")
    if dataset is not None and dataset_options(dataset)[0] != ckpt["dataset"]:
        raise ValueError(f"teacher {path!r} was trained on {ckpt['dataset']!r}, not {dataset_label(dataset)!r}")
    if num_classes is not None and num_classes != ckpt["num_classes"]:
        raise ValueError(f"teacher {path!r} predicts {ckpt['num_classes']} classes, not {num_classes}")
    if dataset is not None:
        channels, image_size = _data_inputs(path, ckpt, dataset, num_classes, channels, image_size)
    check_class_names(ckpt.get("class_names"), class_names, f"teacher {path!r}", names_from, OTHER_CLASSES_TODO)
    if ckpt.get("train_state") is not None:
        raise ValueError(f"teacher {path!r} is unfinished ({ckpt['epochs_done']}/{ckpt['config']['epochs']} epochs): "
                         f"finish its training with `{continue_command(path, ckpt['config'])}`")
    # its layout first, built without memory: a checkpoint naming a model far larger than its
    # weights (a tiny file naming convnet-w30000-d3) is refused before GBs are allocated
    layout = _build_teacher_model(path, ckpt, on_meta=True)
    if layout is not None:
        _check_input_size(path, ckpt, layout, dataset, image_size)
        _check_weights_fit(path, ckpt, layout)
    model = _build_teacher_model(path, ckpt)
    if layout is None:
        _check_input_size(path, ckpt, model, dataset, image_size)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as exc:  # missing/unexpected keys, other shapes
        raise _weights_do_not_fit(path, ckpt, " ".join(str(exc).split())[:300]) from None
    _check_weights(path, model)
    model = model.to(dev).eval().requires_grad_(False)
    return model, _as_read({k: v for k, v in ckpt.items() if k not in ("state_dict", "train_state")})


def continue_command(path: str, config: Mapping[str, Any]) -> str:
    """The `infer-fast teacher` command that continues the training of the checkpoint ``path``,
    whose config records ``config`` (its TeacherConfig's fields): each recorded setting that is
    not the default, as its flag (options.flag_words); one no flag takes (a dataset mapping) in a
    config piped in (--config /dev/stdin). The device is left to this machine (a teacher trained
    on cuda:3 continues wherever the command runs); the data root is given (the data is found
    there), the other result-neutral settings as recorded."""
    words: List[str] = []
    piped: Dict[str, Any] = {}
    for name, opt in options_of(TeacherConfig).items():
        # (a setting older than the checkpoint: its default, as resumed)
        if name not in config or config[name] == opt.default or name == "device":
            continue
        given = flag_words(opt, config[name])
        if given is None:
            piped[name] = config[name]
        else:
            words += given
    command = shlex.join(["infer-fast", "teacher", *(["--config", "/dev/stdin"] if piped else []), *words,
                          "--out", path])
    return f"echo {shlex.quote(yaml_text(piped))} | {command}" if piped else command


def _build_teacher_model(path: str, ckpt: Dict[str, Any], on_meta: bool = False) -> Optional[nn.Module]:
    """The model a teacher checkpoint records, initialised (its weights are then loaded), or
    ``on_meta``: only its layout (parameters without memory or values), None for a model that
    cannot be built so (its layout is then checked once built for real). A model this
    infer-fast does not know, or cannot build that way, is a ValueError naming ``path``."""
    try:
        with kept_cpu_rng():  # (its initial weights are replaced: the caller's random stream is not drawn from)
            with torch.device("meta") if on_meta else contextlib.nullcontext():
                return create_model(ckpt["model"], num_classes=ckpt["num_classes"], in_channels=ckpt["channels"],
                                    image_size=ckpt["image_size"])
    except ValueError as exc:
        raise ValueError(f"teacher {path!r} records model {ckpt['model']!r}, which cannot be built: {exc}") from None
    except Exception:  # noqa: BLE001 - (on the meta device only: an initialisation that reads values)
        if not on_meta:
            raise
        return None


def _check_input_size(path: str, ckpt: Dict[str, Any], model: nn.Module, dataset: Any, image_size: Optional[int]) -> None:
    """A model built for one input size (ConvNet) takes the dataset's images (given ``dataset``)."""
    built_for = _input_size(model)
    if dataset is not None and built_for is not None and built_for != (image_size, image_size):
        raise ValueError(f"teacher {path!r} ({ckpt['model']}) takes {built_for[0]}x{built_for[1]} images, not the "
                         f"{image_size}x{image_size} ones of {dataset_label(dataset)}: use a teacher trained at that size")


def _weights_do_not_fit(path: str, ckpt: Dict[str, Any], detail: str) -> ValueError:
    return ValueError(f"teacher {path!r}: its weights do not fit its recorded model {ckpt['model']!r} ({detail})")


def _check_weights_fit(path: str, ckpt: Dict[str, Any], layout: nn.Module) -> None:
    """The checkpoint's state_dict has the tensors of the model's ``layout``: the same names
    and shapes (load_state_dict's own check, made before the model is built for real)."""
    weights = ckpt["state_dict"]
    if not isinstance(weights, Mapping):
        raise _weights_do_not_fit(path, ckpt, f"its state_dict is a {type(weights).__name__}, not a mapping of tensors")
    expected = layout.state_dict()
    missing = [name for name in expected if name not in weights]
    unexpected = [str(name) for name in weights if name not in expected]
    other_shape = [f"{name} is {tuple(weights[name].shape) if isinstance(weights[name], torch.Tensor) else 'no tensor'} "
                   f"in the file, {tuple(tensor.shape)} in the model" for name, tensor in expected.items()
                   if name in weights and not (isinstance(weights[name], torch.Tensor)
                                               and weights[name].shape == tensor.shape)]
    problems = [f"{what}{first_names(names, 3)}"
                for what, names in (("missing ", missing), ("unexpected ", unexpected), ("", other_shape)) if names]
    if problems:
        raise _weights_do_not_fit(path, ckpt, "; ".join(problems))


def _check_weights(path: str, model: nn.Module) -> None:
    """ValueError naming ``path`` and the tensors or layers when ``model``'s weights are not
    finite or a BatchNorm's running variance is negative: recovery or relabelling through it
    would only give nan (a normalization by the square root of a negative variance)."""
    not_finite = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if not_finite:
        raise ValueError(f"teacher {path!r} holds non-finite weights (nan or inf) in {len(not_finite)} tensor(s): "
                         f"{first_names(not_finite, 3)}")
    negative = [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                and m.running_var is not None and bool((m.running_var < 0).any())]
    if negative:
        raise ValueError(f"teacher {path!r} holds a negative BatchNorm running variance (running_var) in "
                         f"{len(negative)} layer(s): {first_names(negative, 3)} "
                         "(a variance is never negative: the checkpoint is corrupt or was edited)")


def teacher_path_list(teacher_paths) -> List[str]:
    """``teacher_paths`` as the list of paths that every entry taking teachers reads: one
    path (a str or os.PathLike) is a list of one, not a sequence of its characters; None is
    none. A ValueError naming teacher_paths for anything else."""
    if isinstance(teacher_paths, (str, os.PathLike)):
        return [os.fspath(teacher_paths)]
    if teacher_paths is None:
        return []
    is_sequence = isinstance(teacher_paths, Iterable) and not isinstance(teacher_paths, (bytes, Mapping))
    paths = list(teacher_paths) if is_sequence else None
    if paths is None or not all(isinstance(p, (str, os.PathLike)) for p in paths):
        raise ValueError(f"teacher_paths must be a path (str or os.PathLike) or a list of paths, got {teacher_paths!r}")
    return [os.fspath(p) for p in paths]


def teacher_list(teachers: Any) -> List[nn.Module]:
    """``teachers`` as the list of models every entry taking teachers reads, as
    :func:`teacher_path_list` reads paths: one model (an nn.Module, an nn.Sequential too) is a
    list of one, not a sequence of its layers; None is none. A ValueError naming teachers for
    anything else."""
    if isinstance(teachers, nn.Module) and not isinstance(teachers, nn.ModuleList):  # (a ModuleList has no forward)
        return [teachers]
    if teachers is None:
        return []
    models = list(teachers) if isinstance(teachers, Iterable) and not isinstance(teachers, (str, bytes, Mapping)) \
        else None
    if models is None:
        raise ValueError(f"teachers must be a model (torch.nn.Module) or a list of models, got "
                         f"{type(teachers).__name__}")
    for i, model in enumerate(models):
        if not isinstance(model, nn.Module):
            # (a load_teacher result passed as it comes, in a list or alone: the model is its first item)
            hint = ("; load_teacher returns (model, metadata): pass its [0]"
                    if _like_load_teacher_result(model) or _like_load_teacher_result(teachers) else "")
            raise ValueError(f"teachers must be a model (torch.nn.Module) or a list of models, but teachers[{i}] is "
                             f"a {type(model).__name__}{hint}")
    return models


def _like_load_teacher_result(value: Any) -> bool:
    """Whether ``value`` is a tuple led by a model, as :func:`load_teacher` returns (model, metadata)."""
    return isinstance(value, tuple) and len(value) > 0 and isinstance(value[0], nn.Module)


def load_teachers_for_set(paths, distilled, device: str = "cpu") -> List[nn.Module]:
    """The teachers at ``paths`` (one path or a list: :func:`teacher_path_list`; load_teacher)
    for the DistilledSet ``distilled``: each refused, naming it, unless it was trained on the
    set's dataset, classes (their names, in order, where both record them) and takes its images;
    two holding the same weights are refused naming both files (check_distinct_teachers: the
    calls that take the models can name them by number only)."""
    from ._io import model_digest

    paths = teacher_path_list(paths)
    models = [load_teacher(p, dataset=distilled.dataset, num_classes=distilled.num_classes, device=device,
                           channels=distilled.channels, image_size=distilled.height, class_names=distilled.class_names,
                           names_from="the distilled set")[0] for p in paths]
    check_distinct_teachers([model_digest(m) for m in models], paths)
    return models


def load_teachers_for_split(paths, dataset, split, device: str = "cpu") -> List[Tuple[nn.Module, Dict[str, Any]]]:
    """(model, metadata) of each teacher at ``paths`` (:func:`teacher_path_list`; load_teacher)
    for the loaded ``split`` of ``dataset`` (a name or mapping): each refused, naming it and
    the split, unless it predicts the split's classes (their count, and their names in order
    where both record them) and takes its images."""
    spec = split.spec
    return [load_teacher(p, dataset=dataset, num_classes=spec.num_classes, device=device, channels=spec.channels,
                         image_size=spec.image_size, class_names=spec.class_names, names_from=split_label(split))
            for p in teacher_path_list(paths)]


def _data_inputs(path: str, ckpt: Dict[str, Any], dataset: Any, num_classes: Optional[int],
                 channels: Optional[int], image_size: Optional[int]) -> Tuple[int, int]:
    """The (channels, image size) of ``dataset``'s images (``channels`` and ``image_size``
    when given); a ValueError naming the teacher at ``path`` unless it predicts the dataset's
    classes and takes images of its channels."""
    name, options = dataset_options(dataset)
    if num_classes is None:  # the dataset's count (an image folder's: its folders', unknown here)
        num_classes = options.get("num_classes", ckpt["num_classes"] if name == IMAGEFOLDER else None)
    spec = get_spec(dataset, num_classes=num_classes)
    if ckpt["num_classes"] != spec.num_classes:
        raise ValueError(f"teacher {path!r} predicts {ckpt['num_classes']} classes, {dataset_label(dataset)} has "
                         f"{spec.num_classes}")
    channels = spec.channels if channels is None else channels
    if ckpt["channels"] != channels:
        raise ValueError(f"teacher {path!r} takes {ckpt['channels']}-channel images, not the {channels}-channel ones "
                         f"of {dataset_label(dataset)}: use a teacher trained on this data")
    return channels, spec.image_size if image_size is None else image_size


def _input_size(model: nn.Module) -> Optional[Tuple[int, int]]:
    """The (height, width) ``model`` is built for, where it records one (ConvNet's head
    depends on it; torchvision's ViTs check it); None for models of any input size."""
    size = getattr(model, "image_size", None)
    if isinstance(size, int):
        return (size, size)
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, int) for v in size):
        return (size[0], size[1])
    return None


def pretrained_teacher(model: str, dataset: str, out: PathLike, pretrained: Any = True, evaluate_on_test: bool = False,
                       data_root: Optional[PathLike] = None, device: str = "cpu") -> Dict[str, Any]:
    """Write a teacher checkpoint for ``dataset`` from pretrained weights instead of training:
    the ImageNet teachers of the paper (``resnet18-imagenet``, ``mobilenetv2-imagenet``,
    ``efficientnet-b0-imagenet`` or ``torchvision:NAME``) with weights from the local cache
    (``pretrained=True``) or a weights file (a path). Never downloads. ``evaluate_on_test``
    records the test accuracy (a full pass over the test split). Returns the metadata.

    ``out`` is checked writable first. An existing ``out`` holding this model's pretrained
    teacher for ``dataset`` is kept (a line says so); one holding another teacher is refused."""
    spec = get_spec(dataset)
    out = os.fspath(out)
    check_writable(out, "teacher checkpoint")
    if os.path.exists(out):
        return _existing_pretrained_teacher(out, model, spec.name)
    try:  # (a classifier of other classes would be a fresh, untrained one: no teacher)
        with kept_cpu_rng():  # (its initial weights are replaced: the caller's random stream is not drawn from)
            net = create_model(model, num_classes=spec.num_classes, in_channels=spec.channels,
                               image_size=spec.image_size, pretrained=pretrained, pretrained_head=True)
    except HeadMismatch as exc:
        raise ValueError(f"{exc}: as a teacher for {dataset_label(spec.name)} ({spec.num_classes} classes) it would "
                         f"classify with an untrained head; pretrained weights are teachers for the data they were "
                         f"trained on (train one for this data: infer-fast teacher --model {model})") from None
    state_bytes = sum(t.numel() * t.element_size() for t in net.state_dict().values())
    check_writable(out, "teacher checkpoint", need_bytes=state_bytes + CHECKPOINT_ALLOWANCE)
    cfg = TeacherConfig(dataset=spec.name, model=model, data_root=data_root, device=device)  # (checked when made)
    meta = {**_metadata(cfg, spec), "class_names": _pretrained_class_names(spec)}
    # no training settings: none was run (a recipe's epochs and lr here would read as how it was trained)
    meta["config"] = pretrained_config(spec.name, model, pretrained)
    accuracy = None
    if evaluate_on_test:
        test = load_dataset(dataset, "test", data_root=data_root)
        dev = resolve_device(device)
        accuracy = evaluate(net.to(dev), test, cfg.eval_batch_size, dev)
        net = net.cpu()
    save_atomic({**meta, "epochs_done": 0, "test_accuracy": accuracy, "history": [], "elapsed_s": 0.0,
                 "state_dict": net.state_dict(), "train_state": None}, out)
    return {**meta, "epochs_done": 0, "test_accuracy": accuracy, "history": [], "elapsed_s": 0.0}


def pretrained_config(dataset: str, model: str, pretrained: Any) -> Dict[str, Any]:
    """The ``config`` a pretrained teacher's checkpoint records: what it is (``dataset``,
    ``model``) and where its weights came from (``pretrained``: a file, or True: the torch hub
    cache), no training settings (checkpoints of before recorded a TeacherConfig's
    placeholders, epochs 1 and the recipe's lr...; :func:`is_pretrained` tells either)."""
    source = os.fspath(pretrained) if isinstance(pretrained, (str, os.PathLike)) else bool(pretrained)
    return {"dataset": dataset, "model": model, "pretrained": source}


def is_pretrained(meta: Mapping[str, Any]) -> bool:
    """Whether teacher checkpoint metadata ``meta`` is of pretrained weights (written by
    :func:`pretrained_teacher`, now or before), not of a training."""
    config = meta.get("config")
    return isinstance(config, Mapping) and bool(config.get("pretrained"))


def _as_read(meta: Dict[str, Any]) -> Dict[str, Any]:
    """Teacher checkpoint metadata as readers get it: a pretrained teacher's checkpoint of before
    recorded a TeacherConfig's placeholders (epochs 1, lr 0.1...) beside epochs_done 0, which
    read as a training it never had; its config is read as one written now records it."""
    if is_pretrained(meta):
        meta = {**meta, "config": pretrained_config(meta.get("dataset"), meta.get("model"),
                                                    meta["config"]["pretrained"])}
    return meta


def _pretrained_class_names(spec) -> Optional[List[str]]:
    """The classes of pretrained weights for ``spec``, in their output order: ImageNet-1k's
    classify its 1000 wnids sorted (IMAGENET_WNIDS, what the imagenet loader names its classes);
    weights of another class count (a subset, or another data's weights) those the dataset
    names, if it names any (an ImageNet subset's are not known here: not checked)."""
    if get_dataset(spec.name).family == "imagenet" and spec.num_classes == len(IMAGENET_WNIDS):
        return list(IMAGENET_WNIDS)
    return _class_names(spec)


def _existing_pretrained_teacher(out: str, model: str, dataset: str) -> Dict[str, Any]:
    """The metadata of the pretrained teacher already at ``out`` (after a line saying what it
    holds); ValueError when it holds another model, dataset or a trained teacher."""
    meta = _as_read({k: v for k, v in _read_checkpoint(out).items() if k not in ("state_dict", "train_state")})
    source = (meta.get("config") or {}).get("pretrained")
    held = f"a {meta.get('model')!r} teacher for {meta.get('dataset')!r}"
    if meta.get("model") != model or meta.get("dataset") != dataset or not source:
        how = "from pretrained weights" if source else f"trained for {count_text(meta.get('epochs_done'), 'epoch')}"
        raise ValueError(f"{out!r} already holds {held} ({how}), not {model!r}'s pretrained weights for {dataset!r}: "
                         "choose another output or delete the file")
    weights = "the torch hub cache" if source is True else source
    accuracy = meta.get("test_accuracy")
    measured = f"test accuracy {accuracy:.4f}" if accuracy is not None else "accuracy not measured"
    print(f"{out}: already holds {held} from pretrained weights ({weights}; {measured}); nothing to do")
    return meta
