"""Name -> builder registry of the built-in models, and of a user's own (:func:`register`).

Builders are stored as ``"module:function"`` targets and imported on first use; at import
time this module needs only the norm names of :mod:`.convnet` (to parse
``convnet-w<W>-d<D>-<norm>``). The base class of the models (``ClassifierNet``,
``init_weights``) lives in :mod:`.base`, which the model files import; it is re-exported
here.
"""
from __future__ import annotations

import difflib
import importlib
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from torch import nn

from .base import ClassifierNet, init_weights
from ..data.registry import definition_name
from ..plugins import PLUGINS_HINT
from .convnet import canonical_norm
from .external import is_external

__all__ = [
    "ClassifierNet",
    "ModelSpec",
    "init_weights",
    "register",
    "unregister",
    "resolve",
    "list_models",
    "all_specs",
    "user_specs",
    "unknown_model_error",
]


# ----------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------
SMALL_SIZES: Tuple[int, ...] = (28, 32, 64)
IMAGENET_SIZES: Tuple[int, ...] = (224,)


@dataclass(frozen=True)
class ModelSpec:
    """One registered model.

    target: the builder, called as ``fn(num_classes=..., in_channels=..., image_size=...,
    **kwargs)``: the function itself, or ``"module:function"``, where ``module`` is any module
    by its full dotted name, importable from ``sys.path`` (``"mypkg.mymodels:build"``; a
    top-level ``"resnet:build"`` is the user's ``resnet.py``). :func:`register` imports it at
    once. (The built-ins name the modules of ``infer_fast.models`` by their short names:
    ``"resnet:resnet18"``.)
    torchvision_name: the torchvision architecture with the same layout and parameter names
    (ImageNet variants), whose cached ImageNet checkpoint ``pretrained=True`` loads.
    """

    name: str
    target: Union[str, Callable[..., nn.Module]]
    description: str
    input_sizes: Tuple[int, ...] = SMALL_SIZES
    aliases: Tuple[str, ...] = ()
    torchvision_name: Optional[str] = None
    # set by _register for the built-ins alone: their targets name infer_fast.models' modules by short names
    _builtin: bool = field(default=False, repr=False, compare=False)

    @property
    def definition(self) -> str:
        """Where its builder is defined, "module:qualname" (a target given as "module:function":
        the module's full name and the function), without importing it."""
        if callable(self.target):
            return definition_name(self.target)
        module, _, func = self.target.partition(":")
        return f"{__package__}.{module}:{func}" if self._builtin else self.target

    @property
    def builder(self) -> Callable[..., nn.Module]:
        if callable(self.target):
            return self.target
        module, _, func = self.definition.partition(":")
        return getattr(importlib.import_module(module), func)

    def build(self, num_classes: int, in_channels: int = 3, image_size: Any = 32, **kwargs: Any) -> nn.Module:
        return self.builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)


_REGISTRY: Dict[str, ModelSpec] = {}
_ALIASES: Dict[str, str] = {}


def normalize_name(name: str) -> str:
    """Lower-case, ``_`` -> ``-``, surrounding blanks removed."""
    return name.strip().lower().replace("_", "-")


def register(spec: ModelSpec) -> ModelSpec:
    """Add a model to the names :func:`create_model` builds (and ``infer-fast models`` lists).
    A ValueError naming it where its name or an alias is taken (a registered model's name or
    alias, a ConvNet name ``convnet-w<W>-d<D>[-<norm>]``, ``torchvision:``/``timm:``), or its
    builder (``spec.target``) cannot be imported or is not callable: refused here, not when
    some run first builds it. The same definition again, a model of the same name whose builder
    has the same module and qualname (a notebook cell run again, a module reloaded), replaces
    it, aliases and all; a built-in model is never replaced."""
    if not isinstance(spec, ModelSpec) or not isinstance(spec.name, str) or not spec.name.strip():
        raise ValueError(f"register takes a ModelSpec with a non-empty name, got {spec!r}")
    key = normalize_name(spec.name)
    old = _REGISTRY.get(key)
    if old is spec:  # (the same spec again: nothing to change)
        return spec
    if not callable(spec.target) and (not isinstance(spec.target, str) or spec.target.count(":") != 1):
        raise ValueError(f"model {spec.name!r}: target must be 'module:function' or the function itself, "
                         f"got {spec.target!r}")
    if old is not None:
        _check_same_definition(old, spec)
    for alias in (spec.name, *spec.aliases):
        _check_name_free(spec.name, alias, replaced=key if old is not None else None)
    try:
        builder = spec.builder
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"model {spec.name!r}: its builder {spec.target!r} cannot be imported ({exc}); give the "
                         "module's full dotted name, importable from sys.path, or the function itself") from None
    if not callable(builder):
        raise ValueError(f"model {spec.name!r}: its builder {spec.target!r} is not a function")
    if old is not None:  # (its aliases go with it: the new definition may have dropped some)
        unregister(key)
    return _add(spec)


def _check_same_definition(old: ModelSpec, new: ModelSpec) -> None:
    """A ValueError unless ``new`` is the definition of the registered ``old`` (of the same
    name) again: not a built-in, its builder of the same module and qualname."""
    if old._builtin:
        raise ValueError(f"model {new.name!r}: the name is already registered for model {old.name!r}, a built-in one "
                         f"({old.definition}), which a model of yours may not replace: give yours another name")
    if old.definition != new.definition:
        raise ValueError(f"model {new.name!r} is already registered with the builder {old.definition}; this one's "
                         f"builder is {new.definition}: unregister({old.name!r}) (infer_fast.models.registry) first "
                         "to replace it, or give yours another name")


def _check_name_free(model: str, name: str, replaced: Optional[str] = None) -> None:
    """A ValueError where ``name`` (of the model ``model`` being registered) already names a
    model (but the model ``replaced``, which ``model`` replaces): a registered name or alias, a
    ConvNet of the built-in family, an external library's model (create_model would build that
    one, or the new one would replace it)."""
    key = normalize_name(name)
    if key in _ALIASES and _ALIASES[key] != replaced:
        raise ValueError(f"model {model!r}: the name {name!r} is already registered for model {_ALIASES[key]!r}")
    if _CONVNET_RE.match(key):
        raise ValueError(f"model {model!r}: the name {name!r} is one of the built-in ConvNet family "
                         "(convnet-w<W>-d<D>[-<norm>]): give your model another name")
    if is_external(key):
        raise ValueError(f"model {model!r}: the name {name!r} names an external library's model (torchvision:NAME, "
                         "timm:NAME): give your model another name")


def unregister(name: str) -> None:
    """Remove the model ``name`` (and its aliases) from the registry (a test's own model)."""
    key = _ALIASES.get(normalize_name(name))
    if key is None:
        return
    del _REGISTRY[key]
    for alias in [a for a, k in _ALIASES.items() if k == key]:
        del _ALIASES[alias]


def user_specs() -> List[ModelSpec]:
    """The models added with :func:`register` (a user's, a plug-in's), not the built-ins."""
    return [spec for spec in _REGISTRY.values() if not spec._builtin]


def _register(spec: ModelSpec) -> ModelSpec:
    """A built-in model: its builder imported on first use, from ``infer_fast.models``' module
    of the target's short name."""
    return _add(replace(spec, _builtin=True))


def _add(spec: ModelSpec) -> ModelSpec:
    key = normalize_name(spec.name)
    names = (key, *map(normalize_name, spec.aliases))
    for alias in names:  # (all checked before any is added: a refused spec leaves nothing behind)
        if alias in _ALIASES and _ALIASES[alias] != key:
            raise ValueError(f"model name {alias!r} is already registered for {_ALIASES[alias]!r}")
    _ALIASES.update(dict.fromkeys(names, key))
    _REGISTRY[key] = spec
    return spec


def list_models() -> List[str]:
    """Canonical names of the registered models (the built-ins, then a user's own), in registration order."""
    return list(_REGISTRY)


def all_specs() -> List[ModelSpec]:
    return list(_REGISTRY.values())


# ConvNet names: convnet[-w<width>][-d<depth>][-<norm>], e.g. convnet-w64-d3, convnet-d4-instancenorm.
_CONVNET_RE = re.compile(r"^convnet(?:-w(?P<width>\d+))?(?:-d(?P<depth>\d+))?(?:-(?P<norm>[a-z]+))?$")


def unknown_model_error(name: str) -> ValueError:
    known = list_models()
    # the aliases closest first, each model named once (several aliases of one model may be close)
    close = difflib.get_close_matches(normalize_name(name), list(_ALIASES), n=len(_ALIASES), cutoff=0.6)
    models = list(dict.fromkeys(_ALIASES[c] for c in close))[:3]
    hint = f" Did you mean {', '.join(map(repr, models))}?" if models else ""
    return ValueError(
        f"unknown model {name!r}.{hint} Known models: {', '.join(known)}; "
        "also convnet-w<W>-d<D>[-<norm>] (norm: batchnorm, instancenorm, groupnorm, none), "
        f"torchvision:NAME and timm:NAME (when those libraries are installed); {PLUGINS_HINT}."
    )


def resolve(name: str) -> Tuple[ModelSpec, Dict[str, Any]]:
    """(spec, keyword arguments implied by the name) for a built-in model name or alias."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    key = normalize_name(name)
    if key in _ALIASES:
        return _REGISTRY[_ALIASES[key]], {}
    m = _CONVNET_RE.match(key)
    if m and any(m.groupdict().values()):
        implied: Dict[str, Any] = {}
        if m["width"]:
            implied["width"] = int(m["width"])
        if m["depth"]:
            implied["depth"] = int(m["depth"])
        if m["norm"]:
            try:
                implied["norm"] = canonical_norm(m["norm"])
            except ValueError:
                raise unknown_model_error(name) from None
        return _REGISTRY["convnet"], implied
    from ..plugins import load_plugins

    load_plugins()  # (a plug-in's model, perhaps: a teacher checkpoint names its model; only on a miss)
    if key in _ALIASES:
        return _REGISTRY[_ALIASES[key]], {}
    raise unknown_model_error(name)


# ----------------------------------------------------------------------------------------
# The built-in models
# ----------------------------------------------------------------------------------------
_register(ModelSpec(
    "convnet", "convnet:convnet",
    "ConvNet-128 depth 3 of the DD literature (BN; head size depends on the image size); "
    "convnet-w<W>-d<D>[-<norm>] for other widths/depths/norms",
    aliases=("convnet-128", "convnet128", "convnetd3", "convnet-d3", "convnet-w128-d3"),
))
_register(ModelSpec(
    "resnet18", "resnet:resnet18",
    "ResNet-18, small-image variant (3x3 stride-1 stem, no max-pool)",
    aliases=("resnet-18", "resnet18-cifar"),
))
_register(ModelSpec(
    "resnet50", "resnet:resnet50",
    "ResNet-50 (bottleneck), small-image variant (3x3 stride-1 stem, no max-pool)",
    aliases=("resnet-50", "resnet50-cifar"),
))
_register(ModelSpec(
    "mobilenetv2", "mobilenetv2:mobilenetv2",
    "MobileNetV2 1.0x, CIFAR variant (stride-1 stem and first 24-channel stage; 8x downsampling)",
    aliases=("mobilenet-v2", "mobilenetv2-cifar"),
))
_register(ModelSpec(
    "shufflenetv2", "shufflenetv2:shufflenetv2",
    "ShuffleNetV2 1.0x, small-image variant (3x3 stride-1 stem, no max-pool)",
    aliases=("shufflenet-v2", "shufflenet", "shufflenetv2-1.0x", "shufflenetv2-cifar"),
))
_register(ModelSpec(
    "efficientnet-b0", "efficientnet:efficientnet_b0",
    "EfficientNet-B0 (MBConv + squeeze-excite, SiLU), small-image variant (stride-1 stem)",
    aliases=("efficientnetb0", "efficientnet", "efficientnet-b0-cifar"),
))
_register(ModelSpec(
    "shufflenet-g2", "shufflenet:shufflenet_g2",
    "ShuffleNet (v1) g=2, 200/400/800 channels: the layout of the INFER release's CIFAR models "
    "(1x1 stride-1 stem, no max-pool)",
    aliases=("shufflenetg2", "shufflenet-v1-g2", "shufflenetv1-g2"),
))
_register(ModelSpec(
    "mobilenetv2-infer", "mobilenetv2_infer:mobilenetv2_infer",
    "MobileNetV2 1.0x, the layout of the INFER release's CIFAR models (ReLU, conv+BN shortcut "
    "where a stride-1 block changes channels; 8x downsampling)",
    aliases=("mobilenet-v2-infer",),
))
_register(ModelSpec(
    "efficientnet-b0-infer", "efficientnet_infer:efficientnet_b0_infer",
    "EfficientNet-B0, the layout of the INFER release's CIFAR models (stride-1 stem, 320 "
    "channels to the head, no 1280 conv)",
    aliases=("efficientnetb0-infer",),
))
_register(ModelSpec(
    "resnet18-imagenet", "resnet:resnet18_imagenet",
    "ResNet-18, ImageNet layout (7x7 stride-2 stem + max-pool; torchvision parameter names)",
    input_sizes=IMAGENET_SIZES, torchvision_name="resnet18",
))
_register(ModelSpec(
    "resnet50-imagenet", "resnet:resnet50_imagenet",
    "ResNet-50, ImageNet layout (7x7 stride-2 stem + max-pool; torchvision parameter names)",
    input_sizes=IMAGENET_SIZES, torchvision_name="resnet50",
))
_register(ModelSpec(
    "mobilenetv2-imagenet", "mobilenetv2:mobilenetv2_imagenet",
    "MobileNetV2 1.0x, ImageNet strides (torchvision parameter names)",
    input_sizes=IMAGENET_SIZES, aliases=("mobilenet-v2-imagenet",), torchvision_name="mobilenet_v2",
))
_register(ModelSpec(
    "efficientnet-b0-imagenet", "efficientnet:efficientnet_b0_imagenet",
    "EfficientNet-B0, ImageNet strides (torchvision parameter names)",
    input_sizes=IMAGENET_SIZES, aliases=("efficientnetb0-imagenet",), torchvision_name="efficientnet_b0",
))
_register(ModelSpec(
    "shufflenetv2-imagenet", "shufflenetv2:shufflenetv2_imagenet",
    "ShuffleNetV2 1.0x, ImageNet layout (stride-2 stem + max-pool; torchvision parameter names)",
    input_sizes=IMAGENET_SIZES, aliases=("shufflenet-v2-imagenet",), torchvision_name="shufflenet_v2_x1_0",
))
