"""``torchvision:NAME`` and ``timm:NAME`` models, and torchvision checkpoints for the built-in
ImageNet variants.

* The libraries are imported lazily; when one is missing, a ValueError says how to install it
  and which built-in models exist instead.
* Pretrained weights come only from local caches (torch hub's ``checkpoints`` folder for
  torchvision, the Hugging Face / torch hub caches for timm); nothing is downloaded at run time.
  ``pretrained=True`` with no cached file is a ValueError naming the expected file
  (``missing_weights_error``, which also names all the files a run lacks at once).
* ``num_classes``: torchvision models without weights are built with it; with ImageNet weights
  the final Linear is replaced by a fresh one when the class count differs (a warning says so).
  ``in_channels``: the first 3-channel conv is replaced (pretrained kernels summed over RGB for
  1 channel). timm does both adaptations itself (``num_classes=``, ``in_chans=``).
"""
from __future__ import annotations

import glob
import importlib
import math
import os
import warnings
import zipfile
from typing import Any, List, Optional, Sequence, Tuple
from urllib.parse import urlparse

import torch
from torch import nn

from .._io import load_weights_only
from .base import rename_aliased_keys

__all__ = [
    "EXTERNAL_LIBRARIES",
    "is_external",
    "create_external",
    "torchvision_cache_dir",
    "torchvision_file_names",
    "find_torchvision_checkpoint",
    "checkpoint_file_problem",
    "torchvision_checkpoint_status",
    "torchvision_cache_dir_problem",
    "missing_torchvision_checkpoint",
    "missing_external_weights",
    "missing_weights_error",
    "fetch_command",
    "load_pretrained_weights",
    "final_linear",
    "replace_final_linear",
    "replace_first_conv",
]

EXTERNAL_LIBRARIES = ("torchvision", "timm")
# a pretrained weights file not found: (model, expected file, the Python call that fetches it or None)
MissingWeights = Tuple[str, str, Optional[str]]

# torchvision ImageNet checkpoint files (preferred first) for the built-in ImageNet variants,
# and a pattern for other versions of the same architecture in the cache. The first is always
# IMAGENET1K_V1, the weights the reference releases load (INFER's ufc_imgnet.py names
# MobileNet_V2_Weights.IMAGENET1K_V1; SRe2L's and CDA's pretrained=True is V1): torchvision's
# DEFAULT is V2 for resnet50 and mobilenet_v2, other teachers (taken when V1 is not cached).
TORCHVISION_WEIGHTS = "IMAGENET1K_V1"
# the key prefix of a state dict saved from nn.DataParallel (the INFER release's teachers)
DATA_PARALLEL_PREFIX = "module."
_TORCHVISION_FILES = {
    "resnet18": (("resnet18-f37072fd.pth",), "resnet18-*.pth"),
    "resnet50": (("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"), "resnet50-*.pth"),
    "mobilenet_v2": (("mobilenet_v2-b0353104.pth", "mobilenet_v2-7ebf99e0.pth"), "mobilenet_v2-*.pth"),
    "efficientnet_b0": (
        ("efficientnet_b0_rwightman-7f5810bc.pth", "efficientnet_b0_rwightman-3dd342df.pth"),
        "efficientnet_b0_rwightman-*.pth",
    ),
    "shufflenet_v2_x1_0": (("shufflenetv2_x1-5666bf0f80.pth",), "shufflenetv2_x1-*.pth"),
}


def _builtin_names() -> str:
    from .registry import list_models

    return ", ".join(list_models())


def is_external(name: str) -> bool:
    return isinstance(name, str) and name.split(":", 1)[0].strip().lower() in EXTERNAL_LIBRARIES and ":" in name


def _import(lib: str, full_name: str):
    try:
        return importlib.import_module(lib)
    except ImportError as exc:
        raise ValueError(
            f"{lib} is not installed: {full_name!r} needs it. pip install {lib}, "
            f"or use a built-in model: {_builtin_names()}"
        ) from exc


def torchvision_cache_dir() -> str:
    """torch hub's checkpoint folder ($TORCH_HOME/hub/checkpoints), where torchvision caches weights."""
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def fetch_command(missing: Sequence[MissingWeights]) -> Optional[str]:
    """The shell command that downloads the ``missing`` weights into the local caches (to run
    where there is internet), or None when none of them is a library's file."""
    calls = list(dict.fromkeys(call for *_, call in missing if call))
    if not calls:
        return None
    imports = ", ".join(dict.fromkeys(call.split(".", 1)[0] for call in calls))
    return f"python -c \"import {imports}; {'; '.join(calls)}\""


def missing_weights_error(missing: Sequence[MissingWeights]) -> ValueError:
    """One error naming every pretrained weights file not found (``missing``: (model, the
    expected file, the Python call that fetches it or None)): those of torch hub's folder,
    named once, then the others."""
    folder = torchvision_cache_dir()
    in_cache = [f"{os.path.basename(path)} ({model}{_unusable_note(path)})" for model, path, _ in missing
                if os.path.dirname(path) == folder]
    elsewhere = [f"{path} ({model})" for model, path, _ in missing if os.path.dirname(path) != folder]
    where = []
    if in_cache:
        where.append(f"in {folder} (torch hub's checkpoints folder, $TORCH_HOME/hub/checkpoints): {', '.join(in_cache)}")
    if elsewhere:
        where.append(", ".join(elsewhere))
    command = fetch_command(missing)
    fetch = f" Fetch them once where there is internet ({command}) and copy them there." if command else ""
    count = f"{len(missing)} files" if len(missing) > 1 else "1 file"
    return ValueError(
        f"pretrained weights not found ({count}): {'; '.join(where)}. infer-fast never downloads weights at run time."
        f"{fetch} `infer-fast models` lists the expected files."
    )


def _unusable_note(path: str) -> str:
    """"; the entry there is empty" (or another problem) for a cached entry that is there but
    is no usable checkpoint (so "not found" is not taken for a file nobody sees), else ""."""
    return f"; the entry there is {checkpoint_file_problem(path)}" if os.path.lexists(path) else ""


# ----------------------------------------------------------------------------------------
# Module surgery helpers
# ----------------------------------------------------------------------------------------
def final_linear(model: nn.Module) -> Tuple[str, nn.Linear]:
    """(qualified name, module) of the classifier Linear: ``head``/``fc``/``classifier``/``heads``
    when present (the last Linear inside a container), else the last Linear registered."""
    for attr in ("head", "fc", "classifier", "heads"):
        sub = getattr(model, attr, None)
        if isinstance(sub, nn.Linear):
            return attr, sub
        if isinstance(sub, nn.Module):
            inner = [(n, m) for n, m in sub.named_modules() if isinstance(m, nn.Linear)]
            if inner:
                return f"{attr}.{inner[-1][0]}", inner[-1][1]
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier to adapt")
    return linears[-1]


def _set_submodule(model: nn.Module, qualname: str, new: nn.Module) -> None:
    parent_name, _, attr = qualname.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def replace_final_linear(model: nn.Module, num_classes: int) -> Optional[str]:
    """Replace the classifier by a fresh Linear(num_classes) if its size differs; returns a note."""
    name, lin = final_linear(model)
    if lin.out_features == num_classes:
        return None
    new = nn.Linear(lin.in_features, num_classes, bias=lin.bias is not None)
    new.to(device=lin.weight.device, dtype=lin.weight.dtype)
    _set_submodule(model, name, new)
    return f"replaced the {lin.out_features}-class classifier {name!r} by a fresh {num_classes}-class Linear (it needs training)"


def _adapt_conv_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Pretrained RGB kernels for another channel count: summed for 1 channel, else tiled and rescaled."""
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = math.ceil(in_channels / weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def replace_first_conv(model: nn.Module, in_channels: int, keep_weights: bool) -> Optional[str]:
    """Replace the first 3-channel Conv2d by one taking ``in_channels``; returns a note."""
    for name, conv in model.named_modules():
        if isinstance(conv, nn.Conv2d):
            break
    else:
        raise ValueError(f"{type(model).__name__} has no Conv2d whose input channels could be adapted")
    if conv.in_channels == in_channels:
        return None
    if conv.groups != 1:
        raise ValueError(f"cannot adapt the first conv {name!r} (groups={conv.groups}) to {in_channels} channels")
    new = nn.Conv2d(
        in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, 1, conv.bias is not None, conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        if keep_weights:
            new.weight.copy_(_adapt_conv_weight(conv.weight, in_channels))
            how = "summing" if in_channels == 1 else "tiling"
            note = f"adapted the first conv {name!r} to {in_channels} input channel(s) by {how} its pretrained RGB kernels"
        else:
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
            note = f"replaced the first conv {name!r} by a fresh {in_channels}-channel one"
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    _set_submodule(model, name, new)
    return note


class HeadMismatch(ValueError):
    """Pretrained weights whose classifier has another number of classes than asked for,
    where it had to be kept (``create_model(..., pretrained_head=True)``)."""


def _check_head(full_name: str, weights_classes: int, num_classes: int, pretrained_head: bool) -> None:
    if pretrained_head and weights_classes != num_classes:
        raise HeadMismatch(f"{full_name}'s pretrained classifier has {weights_classes} classes, not {num_classes}")


def _warn(full_name: str, notes: List[Optional[str]]) -> None:
    notes = [n for n in notes if n]
    if notes:
        warnings.warn(f"{full_name}: " + "; ".join(notes), stacklevel=3)


# ----------------------------------------------------------------------------------------
# torchvision:NAME / timm:NAME
# ----------------------------------------------------------------------------------------
def _split(name: str) -> Tuple[str, str]:
    """("torchvision" | "timm", the model name) of ``LIB:NAME``; ValueError for anything else."""
    lib, _, arch = name.partition(":")
    lib, arch = lib.strip().lower(), arch.strip()
    if lib not in EXTERNAL_LIBRARIES:
        raise ValueError(f"unknown model library {lib!r} in {name!r}; use torchvision:NAME or timm:NAME")
    if not arch:
        raise ValueError(f"{name!r}: missing the model name after '{lib}:'")
    return lib, arch


def create_external(
    name: str, num_classes: int, in_channels: int = 3, image_size: Any = 224, pretrained: bool = False,
    pretrained_head: bool = False, **kwargs: Any
) -> nn.Module:
    lib, arch = _split(name)
    if lib == "torchvision":
        return _create_torchvision(arch, num_classes, in_channels, pretrained, pretrained_head, **kwargs)
    return _create_timm(arch, num_classes, in_channels, pretrained, pretrained_head, **kwargs)


def missing_external_weights(name: str, weights_name: Any = "DEFAULT") -> Optional[MissingWeights]:
    """The pretrained weights ``create_model(name, pretrained=True)`` needs for a
    ``torchvision:NAME`` / ``timm:NAME`` model and does not find locally, or None when they
    are there. ValueError for an unknown model or a library that is not installed."""
    lib, arch = _split(name)
    if lib == "torchvision":
        weights, path = _torchvision_weights(_torchvision_models(arch), arch, weights_name)
        call = f"torchvision.models.get_model('{arch}', weights='{weights.name}')"
        return None if os.path.isfile(path) else (f"{name} ({weights.name})", path, call)
    if _timm_cached_file(_timm_module(arch), arch) is not None:
        return None
    return name, "its weights in the Hugging Face hub cache or torch hub's checkpoints", f"timm.create_model('{arch}', pretrained=True)"


def _torchvision_models(arch: str):
    """torchvision.models, once ``arch`` is known to be one of its models."""
    _import("torchvision", f"torchvision:{arch}")
    tvm = importlib.import_module("torchvision.models")
    if hasattr(tvm, "list_models"):
        known = tvm.list_models()
        if arch not in known:
            import difflib

            close = difflib.get_close_matches(arch, known, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"torchvision has no model {arch!r}.{hint} See torchvision.models.list_models().")
    elif not callable(getattr(tvm, arch, None)):
        raise ValueError(f"torchvision has no model {arch!r}")
    return tvm


def _torchvision_weights(tvm, arch: str, weights_name: Any) -> Tuple[Any, str]:
    """(torchvision's weights entry ``weights_name`` for ``arch``, the file torchvision caches it as)."""
    enum = tvm.get_model_weights(arch)
    try:
        weights = enum[weights_name] if isinstance(weights_name, str) else weights_name
    except KeyError:
        raise ValueError(
            f"torchvision:{arch}: unknown weights {weights_name!r}; choose one of {', '.join(['DEFAULT'] + [w.name for w in enum])}"
        ) from None
    return weights, os.path.join(torchvision_cache_dir(), os.path.basename(urlparse(weights.url).path))


def _create_torchvision(arch: str, num_classes: int, in_channels: int, pretrained: bool, pretrained_head: bool,
                        **kwargs: Any) -> nn.Module:
    full = f"torchvision:{arch}"
    tvm = _torchvision_models(arch)

    def build(**kw):
        if hasattr(tvm, "get_model"):
            return tvm.get_model(arch, **kw)
        return getattr(tvm, arch)(**kw)

    if not pretrained:
        model = build(weights=None, num_classes=num_classes, **kwargs)
        _warn(full, [replace_first_conv(model, in_channels, keep_weights=False)])
        return model

    weights_name = kwargs.pop("weights", "DEFAULT")
    missing = missing_external_weights(full, weights_name)
    if missing:
        raise missing_weights_error([missing])
    weights, _ = _torchvision_weights(tvm, arch, weights_name)
    model = build(weights=weights, **kwargs)  # found in the hub cache: torchvision loads it, no download
    _check_head(full, final_linear(model)[1].out_features, num_classes, pretrained_head)
    _warn(full, [
        replace_final_linear(model, num_classes),
        replace_first_conv(model, in_channels, keep_weights=True),
    ])
    return model


def _timm_cached_file(timm, arch: str) -> Optional[str]:
    """Local file holding timm's pretrained weights for ``arch``, or None."""
    try:
        cfg = timm.models.get_pretrained_cfg(arch, allow_unregistered=True)
    except Exception:  # noqa: BLE001 - older timm / unknown tag
        cfg = None
    if cfg is None:
        return None
    get = (lambda k: cfg.get(k)) if isinstance(cfg, dict) else (lambda k: getattr(cfg, k, None))
    if get("file") and os.path.isfile(get("file")):
        return get("file")
    hf_id = get("hf_hub_id")
    if hf_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo, _, revision = hf_id.partition("@")
            for fname in filter(None, (get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin")):
                found = try_to_load_from_cache(repo, fname, revision=revision or None)
                if isinstance(found, str) and os.path.isfile(found):
                    return found
    url = get("url")
    if url:
        path = os.path.join(torchvision_cache_dir(), os.path.basename(urlparse(url).path))
        if os.path.isfile(path):
            return path
    return None


def _timm_module(arch: str):
    """timm, once ``arch`` is known to be one of its models."""
    timm = _import("timm", f"timm:{arch}")
    is_model = getattr(timm, "is_model", None) or timm.models.is_model
    if not is_model(arch.split(".", 1)[0]):
        raise ValueError(f"timm has no model {arch!r}; see timm.list_models()")
    return timm


def _create_timm(arch: str, num_classes: int, in_channels: int, pretrained: bool, pretrained_head: bool,
                 **kwargs: Any) -> nn.Module:
    timm = _timm_module(arch)
    if not pretrained:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs)
    path = _timm_cached_file(timm, arch)
    if path is None:
        raise missing_weights_error([missing_external_weights(f"timm:{arch}")])
    # timm loads the file itself and resets the classifier / adapts the stem for us; to keep the
    # weights' classifier, it is built with the weights' class count, then compared.
    classes = {} if pretrained_head else {"num_classes": num_classes}
    model = timm.create_model(arch, pretrained=True, in_chans=in_channels, pretrained_cfg_overlay=dict(file=path),
                              **classes, **kwargs)
    _check_head(f"timm:{arch}", model.num_classes, num_classes, pretrained_head)
    return model


# ----------------------------------------------------------------------------------------
# torchvision checkpoints for the built-in ImageNet variants
# ----------------------------------------------------------------------------------------
def torchvision_file_names(arch: str) -> Tuple[Tuple[str, ...], str]:
    """(torchvision's ImageNet checkpoint file names for ``arch``, preferred first; the pattern
    other versions of them match), for the architectures of the built-in ImageNet variants."""
    return _TORCHVISION_FILES[arch]


_LOOK = object()  # (the default of ``found``: look in the cache now)


def missing_torchvision_checkpoint(model: str, arch: str, found: Any = _LOOK) -> Optional[MissingWeights]:
    """What the built-in ``model`` (torchvision's ``arch`` layout) needs from the hub cache and
    does not find there, or None when a checkpoint is cached (``found``: what
    :func:`find_torchvision_checkpoint` gave, when the caller has looked already)."""
    if (find_torchvision_checkpoint(arch) if found is _LOOK else found) is not None:
        return None
    preferred, _ = _TORCHVISION_FILES[arch]
    return (model, os.path.join(torchvision_cache_dir(), preferred[0]),
            f"torchvision.models.get_model('{arch}', weights='{TORCHVISION_WEIGHTS}')")


def find_torchvision_checkpoint(arch: str) -> Optional[str]:
    """Path of a usable cached torchvision ImageNet checkpoint for ``arch`` (e.g. "resnet18"):
    the first of its file names, then of other versions, that passes
    :func:`checkpoint_file_problem`; None when there is none."""
    if arch not in _TORCHVISION_FILES:
        return None
    return next((path for path in _torchvision_candidates(arch) if checkpoint_file_problem(path) is None), None)


def _torchvision_candidates(arch: str) -> List[str]:
    """The entries of the hub cache named as ``arch``'s checkpoints (files or not), preferred
    names first, then the other versions in name order."""
    preferred, pattern = _TORCHVISION_FILES[arch]
    folder = torchvision_cache_dir()
    named = [os.path.join(folder, fname) for fname in preferred] + sorted(glob.glob(os.path.join(folder, pattern)))
    return [path for path in dict.fromkeys(named) if os.path.lexists(path)]


# what torch.save's legacy (pre-zip) format starts with: a protocol-2 pickle of its magic number
_LEGACY_TORCH_HEAD = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def checkpoint_file_problem(path: str) -> Optional[str]:
    """Why ``path`` is no usable checkpoint file, in a few words ("not a file", "empty", "not
    a complete torch checkpoint"), or None: a regular, non-empty file that is a complete zip
    archive (torch.save's format since torch 1.6, torchvision's files among them;
    ``zipfile.is_zipfile`` reads the archive's end record, so a cut-off copy fails) or starts
    like torch.save's legacy format (kept for old files: a cut-off legacy file passes this
    cheap test and fails, naming the file, when it is read)."""
    if not os.path.isfile(path):
        return "not a file"
    try:
        if os.path.getsize(path) == 0:
            return "empty"
        if zipfile.is_zipfile(path):
            return None
        with open(path, "rb") as f:
            legacy = f.read(len(_LEGACY_TORCH_HEAD)) == _LEGACY_TORCH_HEAD
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    return None if legacy else "not a complete torch checkpoint"


def torchvision_checkpoint_status(arch: str, found: Any = _LOOK) -> str:
    """What ``infer-fast models`` says of ``arch``'s cached checkpoint: "present", "present
    as NAME" (another version), "NAME: empty" (or another :func:`checkpoint_file_problem`)
    when only unusable entries are there, or "missing" (``found``: as
    :func:`missing_torchvision_checkpoint`)."""
    found = find_torchvision_checkpoint(arch) if found is _LOOK else found
    if found is not None:
        name = os.path.basename(found)
        return "present" if name == _TORCHVISION_FILES[arch][0][0] else f"present as {name}"
    unusable = _torchvision_candidates(arch)
    if unusable:
        return f"{os.path.basename(unusable[0])}: {checkpoint_file_problem(unusable[0])}"
    return "missing"


def torchvision_cache_dir_problem() -> Optional[str]:
    """Why torch hub's checkpoints folder can hold no checkpoint ("does not exist", "is a
    file, not a folder"), or None when it is a folder."""
    folder = torchvision_cache_dir()
    if os.path.isdir(folder):
        return None
    return "is a file, not a folder" if os.path.lexists(folder) else "does not exist"


def load_pretrained_weights(model: nn.Module, spec, source: Any, num_classes: int, in_channels: int,
                            pretrained_head: bool = False) -> nn.Module:
    """Load pretrained weights into a built-in model.

    ``source``: True (the cached torchvision checkpoint of an ImageNet-layout model) or a path
    to a state-dict file, also one saved as ``{"state_dict": ...}`` and from ``nn.DataParallel``
    (keys prefixed ``module.``), as the INFER release saves its teachers.
    The head is kept fresh when ``num_classes`` differs from the checkpoint's (``pretrained_head``:
    HeadMismatch instead), and the stem kernels are adapted when ``in_channels`` differs (both
    with a warning).
    """
    arch = spec.torchvision_name
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise missing_weights_error([(spec.name, path, None)])
    else:
        path = find_torchvision_checkpoint(arch)
        missing = missing_torchvision_checkpoint(spec.name, arch, found=path)
        if missing:
            raise missing_weights_error([missing])
    state = load_weights_only(path, f"{spec.name} weights file")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    state = dict(state)
    if state and all(isinstance(k, str) and k.startswith(DATA_PARALLEL_PREFIX) for k in state):
        state = {k[len(DATA_PARALLEL_PREFIX):]: v for k, v in state.items()}
    rename_aliased_keys(model, state, "")

    notes: List[str] = []
    allowed_missing = set()
    head_w = state.get("head.weight")
    if head_w is not None and head_w.shape[0] != model.head.out_features:
        _check_head(spec.name, head_w.shape[0], num_classes, pretrained_head)
        state.pop("head.weight")
        state.pop("head.bias", None)
        allowed_missing = {"head.weight", "head.bias"}
        notes.append(f"kept a fresh {num_classes}-class head (the checkpoint's has {head_w.shape[0]} classes; it needs training)")
    conv_name = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    key = f"{conv_name}.weight"
    if key in state and state[key].shape[1] != in_channels:
        state[key] = _adapt_conv_weight(state[key], in_channels)
        notes.append(f"adapted the stem conv {conv_name!r} to {in_channels} input channel(s) from the RGB kernels")

    own = model.state_dict()
    wrong_shape = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    if wrong_shape:  # (load_state_dict would raise on them)
        missing_keys, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    else:  # (the model's own load hooks run here: the keys of a layer a release built and never ran dropped)
        missing_keys, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing_keys if k not in allowed_missing and not k.endswith("num_batches_tracked")]
    if wrong_shape or missing or unexpected:  # (the model is not returned: half loaded is not loaded)
        def show(keys):
            return f"{keys[:5]}{'...' if len(keys) > 5 else ''}"

        raise ValueError(
            f"{path} does not match {spec.name}: missing {show(missing)}, unexpected {show(unexpected)}, "
            f"wrong shape {show(wrong_shape)}"
        )
    _warn(spec.name, notes)
    return model
