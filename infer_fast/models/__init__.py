"""Model zoo: built-in BatchNorm teachers for 28/32/64-pixel data, ImageNet-layout variants,
and ``torchvision:NAME`` / ``timm:NAME`` when those libraries are installed.

    >>> import torch
    >>> model = create_model("resnet18", num_classes=10, in_channels=3, image_size=32)
    >>> x = torch.randn(8, 3, 32, 32)
    >>> penultimate_features(model, x).shape      # the head's input
    torch.Size([8, 512])

Every built-in model has ``forward_features(x) -> (N, D)`` and an ``nn.Linear`` ``head``,
with ``forward(x) == head(forward_features(x))``. ``list_models()`` gives the built-in names
(``infer-fast models`` prints ``model_table()`` and ``pretrained_weights_table()``).
``check_pretrained_weights`` names, in one error, every pretrained weights file a list of
models needs and the local caches lack (checked before a run's work).
"""
from __future__ import annotations

import contextlib
import copy
import os
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .external import (HeadMismatch, MissingWeights, create_external, fetch_command, final_linear,
                       find_torchvision_checkpoint, is_external, load_pretrained_weights, missing_external_weights, missing_torchvision_checkpoint,
                       missing_weights_error, torchvision_cache_dir, torchvision_cache_dir_problem,
                       torchvision_checkpoint_status, torchvision_file_names)
from .external import _split as split_external_name  # (LIB:NAME's syntax alone: the library is not imported)
from .base import ClassifierNet, device_of, init_weights
from ..checks import check_int
from .registry import ModelSpec, all_specs, list_models, resolve

__all__ = [
    "create_model",
    "check_model_name",
    "device_of",
    "image_size_pair",
    "on_device",
    "eval_mode",
    "is_float32",
    "float32_model",
    "check_model_outputs",
    "list_models",
    "model_table",
    "pretrained_weights_table",
    "check_pretrained_weights",
    "penultimate_features",
    "count_parameters",
    "get_spec",
    "ClassifierNet",
    "HeadMismatch",
    "ModelSpec",
    "init_weights",
    "torchvision_cache_dir_problem",
]


def _check_positive_int(value: Any, what: str) -> int:
    check_int(what, value)
    return value


def image_size_pair(image_size: Any, name: str = "image_size") -> Tuple[int, int]:
    """``image_size`` as (height, width): a positive int (square images) or a pair of them; a
    ValueError naming ``name`` for anything else (a float, a string of digits)."""
    sizes = tuple(image_size) if isinstance(image_size, (tuple, list)) and len(image_size) == 2 else (image_size,)
    for size in sizes:
        try:
            check_int(name, size)
        except ValueError:
            raise ValueError(f"{name} must be a positive integer or a pair (height, width) of them, "
                             f"got {image_size!r}") from None
    return (sizes[0], sizes[-1])


def check_model_name(name: Any) -> None:
    """ValueError unless ``name`` names a model :func:`create_model` builds (a built-in name or
    alias, or ``torchvision:NAME`` / ``timm:NAME``, whose library is only imported when the
    model is built); nothing is built. What a config checks when it is made."""
    if is_external(name):
        split_external_name(name)
    else:
        resolve(name)


def on_device(model: nn.Module, device: Any) -> nn.Module:
    """``model`` itself when it is on ``device`` already, else a copy moved there: a library
    call leaves a caller's model where it was (``nn.Module.to`` moves the module in place).
    The copy costs the model's memory on ``device`` for as long as the call runs."""
    device = torch.device(device)
    here = device_of(model)
    if here.type == device.type and (device.index is None or here.index == device.index):
        return model
    return copy.deepcopy(model).to(device)


@contextlib.contextmanager
def kept_modes(model: nn.Module) -> Iterator[nn.Module]:
    """The block may switch ``model``'s modes; after it every submodule is back in its own mode:
    ``model.train(was_training)`` would give all of them the outer module's flag, so a wrapper
    in training mode around a teacher in eval mode would leave the teacher training (its
    BatchNorm layers then normalizing with batch statistics and overwriting their running ones)."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode while the block runs, then every submodule back in its own mode
    (:func:`kept_modes`)."""
    with kept_modes(model):
        yield model.eval()


def is_float32(model: nn.Module) -> bool:
    """Whether every floating parameter and buffer of ``model`` is float32 (what the data, the
    checkpoints and the kernels hold)."""
    return all(t.dtype == torch.float32 for t in (*model.parameters(), *model.buffers()) if t.is_floating_point())


def float32_model(model: nn.Module) -> nn.Module:
    """``model`` itself when it is float32 (:func:`is_float32`), else a float32 copy: a library
    call runs a caller's float16/bfloat16/float64 model on the float32 images, as it does one
    on another device (:func:`on_device`), and leaves the caller's as it was."""
    return model if is_float32(model) else copy.deepcopy(model).float()


def describe_output(out: Any) -> str:
    """What a model returned, as the checks of its outputs name it."""
    return f"a tensor of shape {tuple(out.shape)}" if isinstance(out, Tensor) else f"a {type(out).__name__}"


def _meta_forward(model: nn.Module, x: Tensor) -> Any:
    """``model(x)`` on the meta device: its parameters and buffers replaced for the call by meta
    tensors of their shapes (no memory, no compute; its own tensors, running statistics
    included, left as they were)."""
    from torch.func import functional_call

    stand_ins = {name: torch.empty_like(t, device="meta") for name, t in
                 (*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False))}
    return functional_call(model, stand_ins, (x.to("meta"),), tie_weights=False, strict=False)


def check_model_outputs(model: nn.Module, name: str, num_classes: int, in_channels: int, image_size: Any) -> None:
    """ValueError naming model ``name`` unless a batch of two images (in_channels, H, W) gives
    logits, a tensor (2, num_classes), in training mode and in eval mode: a builder that
    ignores num_classes, or a model returning (logits, aux_logits) while training (as
    GoogLeNet/Inception), is refused when it is built, not by a later step. Run on the meta
    device (:func:`_meta_forward`); a model that cannot run there (a forward reading values)
    runs as a copy on its device, unless it is on the meta device itself: that error is
    raised as it is, for :func:`build_to_check` to build it for real. The model's modes, its
    tensors and the CPU generator are left as they were."""
    from .._text import first_line
    from ..training_rng import kept_cpu_rng

    height, width = image_size_pair(image_size)
    images = torch.zeros((2, in_channels, height, width), dtype=torch.float32)  # (whatever the default dtype)
    with torch.no_grad(), kept_cpu_rng(), kept_modes(model):
        try:
            outputs = [_meta_forward(model.train(training), images) for training in (True, False)]
        except Exception:  # (what meta tensors cannot do: .item(), a tensor that is no parameter or buffer)
            if device_of(model).type == "meta":
                raise
            probe = copy.deepcopy(model)
            try:
                outputs = [probe.train(training)(images.to(device_of(probe))) for training in (True, False)]
            except Exception as exc:
                raise ValueError(f"model {name!r} fails on a batch of 2 {in_channels}x{height}x{width} images: "
                                 f"{type(exc).__name__}: {first_line(exc, 300)}") from None
    for mode, out in zip(("training", "eval"), outputs):
        if not isinstance(out, Tensor) or tuple(out.shape) != (2, num_classes):
            raise ValueError(f"model {name!r} returns {describe_output(out)} in {mode} mode on a batch of 2 "
                             f"{in_channels}x{height}x{width} images; infer-fast needs logits (N, {num_classes}): "
                             f"one row per image, one column per class")


@contextlib.contextmanager
def float32_default() -> Iterator[None]:
    """torch's default dtype float32 while the block runs (the caller's restored after): every
    model is built in float32, as the checkpoints, the data (uint8 images normalized to float32)
    and the kernels hold it, whatever torch.set_default_dtype a caller chose."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def get_spec(name: str) -> ModelSpec:
    """The registry entry of a built-in model name or alias (ValueError listing names if unknown)."""
    return resolve(name)[0]


def create_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: Any = 32,
    pretrained: Any = False,
    pretrained_head: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a model by name.

    name: a built-in name or alias (see ``list_models()``), ``convnet-w<W>-d<D>[-<norm>]``,
        ``torchvision:NAME`` or ``timm:NAME``.
    image_size: the input size the model is meant for (ConvNet's head depends on it; the other
        built-ins pool adaptively and accept any size).
    pretrained: built-in ImageNet variants load torchvision's ImageNet checkpoint from the local
        torch hub cache (True); every built-in model loads a weights file given as a path (a
        state dict of its layout, e.g. a teacher of the INFER release); external models use their
        library's cached weights. Never downloads.
        The weights' classifier is kept when it has ``num_classes`` classes, else replaced by
        a fresh one (with a warning: it needs training).
    pretrained_head: with ``pretrained``, the weights' classifier must be kept:
        :class:`HeadMismatch` (a ValueError) when it has another number of classes.
    kwargs: architecture options (ConvNet: width, depth, norm, pooling; MobileNetV2/EfficientNet:
        dropout; EfficientNet: drop_connect_rate; ...).
    """
    _check_positive_int(num_classes, "num_classes")
    _check_positive_int(in_channels, "in_channels")
    image_size_pair(image_size)
    with float32_default():
        if is_external(name):
            return create_external(name, num_classes, in_channels, image_size, pretrained, pretrained_head, **kwargs)
        spec, implied = resolve(name)
        for key, value in implied.items():
            if key in kwargs and kwargs[key] != value:
                raise ValueError(f"model {name!r} implies {key}={value!r} but {key}={kwargs[key]!r} was also given")
        model = spec.build(num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                           **{**implied, **kwargs})
    if pretrained is not False and pretrained is not None:
        _check_has_pretrained_weights(spec, pretrained, name)
        load_pretrained_weights(model, spec, pretrained, num_classes, in_channels, pretrained_head)
    # (a registered builder's, a plug-in's above all; torchvision/timm models are taken as those libraries build them)
    check_model_outputs(model, name, num_classes, in_channels, image_size)
    return model


def _check_has_pretrained_weights(spec: ModelSpec, pretrained: Any, name: str) -> None:
    """ValueError unless ``pretrained`` is a weights file path, or True for a built-in ``spec``
    with weights in torch hub's cache (its ImageNet variants); ``name``: the model as given."""
    if pretrained is not True and not isinstance(pretrained, (str, os.PathLike)):
        raise ValueError(f"pretrained must be True/False or a path to a weights file, got {pretrained!r}")
    if pretrained is True and spec.torchvision_name is None:
        raise ValueError(
            # (the key differs by where the model is named: a teacher config's pretrained is the model)
            f"built-in model {name!r} has no pretrained weights in torch hub's cache: give a weights file "
            "(--weights FILE; `weights: FILE` in a teacher config; `pretrained: FILE` in a run's teachers entry: "
            "a state dict of this layout, such as a teacher of the INFER release) or train one with `infer-fast teacher`. The ImageNet variants "
            f"({', '.join(s.name for s in all_specs() if s.torchvision_name)}) load torchvision's cached ImageNet "
            "weights; torchvision:NAME and timm:NAME use their libraries' caches."
        )


def _missing_pretrained_weights(name: str, pretrained: Any) -> Optional[MissingWeights]:
    """What ``create_model(name, pretrained=pretrained)`` would look for and not find (see
    MissingWeights), or None; ValueError for a model without pretrained weights."""
    if pretrained is False or pretrained is None:
        return None
    if is_external(name):
        return missing_external_weights(name)
    spec = get_spec(name)
    _check_has_pretrained_weights(spec, pretrained, name)
    if pretrained is True:
        return missing_torchvision_checkpoint(spec.name, spec.torchvision_name)
    path = os.fspath(pretrained)
    return None if os.path.isfile(path) else (spec.name, path, None)


def check_pretrained_weights(requests: Iterable[Tuple[str, Any]]) -> None:
    """Before any work: one ValueError naming every weights file the (model name, pretrained)
    ``requests`` need (pretrained: True for the local cache, or a file path) and do not find,
    with torch hub's checkpoints folder; ValueError for a model without pretrained weights."""
    missing = [m for m in (_missing_pretrained_weights(name, pretrained) for name, pretrained in requests) if m]
    if missing:
        raise missing_weights_error(missing)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_to_check(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` to read a model's shapes: on the meta device (no memory, no init cost), or,
    for a builder that reads values there (a data-dependent init: ``.item()`` of a weight's
    norm; meta tensors hold none), for real on the CPU, the global generator kept. A ValueError
    (an unknown name, images that do not fit) is the caller's to report, as it is."""
    try:
        with torch.device("meta"):
            return build()
    except ValueError:
        raise
    except Exception:  # (what meta tensors cannot do: RuntimeError, NotImplementedError...)
        from ..training_rng import kept_cpu_rng

        with kept_cpu_rng():
            return build()


def model_table() -> List[Dict[str, Any]]:
    """One row per built-in model: name, aliases, description, inputs (e.g. "28/32/64"),
    input_sizes, params (for 10 classes, 3 channels; at 32x32 for small-image models, whose
    ConvNet head depends on the size)."""
    rows = []
    for spec in all_specs():
        size = 32 if 32 in spec.input_sizes else spec.input_sizes[0]
        model = build_to_check(lambda: spec.build(num_classes=10, in_channels=3, image_size=size))
        rows.append({
            "name": spec.name,
            "aliases": list(spec.aliases),
            "description": spec.description,
            "inputs": "/".join(str(s) for s in spec.input_sizes),
            "input_sizes": spec.input_sizes,
            "params": count_parameters(model),
        })
    return rows


def pretrained_weights_table() -> Tuple[str, List[Dict[str, Any]], Optional[str]]:
    """(torch hub's checkpoints folder as resolved now, honouring TORCH_HOME; one row per
    built-in model with torchvision ImageNet weights: name, torchvision (the architecture),
    files (the file names looked for, preferred first; other versions of them are accepted
    too), found (the path of the usable cached file, or None), status (what `infer-fast models`
    says: present, or why not)), and the command that fetches the missing files (None when
    none is)."""
    rows, missing = [], []
    for spec in all_specs():
        if spec.torchvision_name is None:
            continue
        arch = spec.torchvision_name
        files, _ = torchvision_file_names(arch)
        found = find_torchvision_checkpoint(arch)  # (once: each candidate file's head is read)
        rows.append({"name": spec.name, "torchvision": arch, "files": list(files), "found": found,
                     "status": torchvision_checkpoint_status(arch, found)})
        missing.append(missing_torchvision_checkpoint(spec.name, arch, found))
    return torchvision_cache_dir(), rows, fetch_command([m for m in missing if m])


def penultimate_features(model: nn.Module, x: Tensor) -> Tensor:
    """The features the final classifier sees, (N, D).

    Built-in models: ``model.forward_features(x)``. timm models: ``forward_head(...,
    pre_logits=True)``. Others (torchvision): the input of the final Linear, captured by a hook.
    """
    if isinstance(model, ClassifierNet):
        return model.forward_features(x)
    if callable(getattr(model, "forward_head", None)) and callable(getattr(model, "forward_features", None)):
        return model.forward_head(model.forward_features(x), pre_logits=True)
    if callable(getattr(model, "forward_features", None)) and isinstance(getattr(model, "head", None), nn.Linear):
        feats = model.forward_features(x)
        if feats.dim() == 2:
            return feats
    _, linear = final_linear(model)
    captured: List[Tensor] = []
    handle = linear.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        model(x)
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"the classifier of {type(model).__name__} did not run in forward")
    return captured[-1].flatten(1)
