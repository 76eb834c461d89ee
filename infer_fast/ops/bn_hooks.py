"""Attach the BN-statistics loss to every BatchNorm layer of a frozen teacher.

    tracker = BNStatTracker(teacher, groups=G)
    logits = teacher(images)                 # hooks compute per-layer, per-group losses
    r_bn = tracker.weighted_sum(first_bn_mult=10.0)   # (G,)

The tracker keeps only the loss tensors of the *last* forward (cleared when the next one
starts), never the activations themselves; the fused op saves its input for backward
exactly as the BN layer already does.
"""
from __future__ import annotations

import sys
from typing import Callable, List, Optional, Set, Tuple

import torch
from torch import Tensor, nn

from ..checks import check_int
from .backends import check_backend_name
from .bn_stat_loss import bn_eval_with_stat_loss, bn_stat_loss

# The BatchNorm layers whose statistics are matched (inputs (N, C), (N, C, L) or (N, C, H, W)): the
# trackers, the chunked mode and the teacher checks all use this one list.
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)


def refuse_training_mode(name: str, module: nn.Module, who: str = "teacher") -> None:
    """ValueError when the BatchNorm layer ``name`` of ``who`` is in training mode: it would
    use batch statistics and its running ones (what the loss matches) would drift."""
    if module.training:
        raise ValueError(
            f"{who}: BatchNorm layer {name!r} is in training mode; matching its statistics needs a frozen "
            "model in eval mode (call .eval())"
        )


def check_eval_mode(model: nn.Module, who: str = "teacher") -> None:
    """refuse_training_mode for every BatchNorm layer of ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, BN_TYPES):
            refuse_training_mode(name, module, who)


def bn_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(name, layer) of every BatchNorm layer of ``model`` whose statistics can be matched;
    ValueError for one that cannot (BatchNorm3d) rather than leaving it out silently."""
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm3d):
            raise ValueError(f"BatchNorm layer {name!r} is a BatchNorm3d: only BatchNorm1d/2d statistics can be matched")
    return [(name, m) for name, m in model.named_modules() if isinstance(m, BN_TYPES)]


def matchable(layers: List[Tuple[str, nn.Module]], who: str = "model") -> List[Tuple[str, nn.Module]]:
    """``layers``, the :func:`bn_layers` of the model ``who`` whose BatchNorm statistics a loss
    matches (the tracker's, every recovery's teacher, checked up front): a ValueError naming
    ``who`` when there are none, or one has no running statistics (track_running_stats=False),
    as there is nothing to match."""
    if not layers:
        raise ValueError(f"{who} has no BatchNorm1d/2d layer: the loss matches the running statistics of a "
                         "teacher's BatchNorm layers (GroupNorm or LayerNorm keep none); use a teacher with BatchNorm")
    without = untracked(layers)
    if without:
        raise ValueError(f"{who}: BatchNorm layer {without[0]!r} has no running statistics "
                         "(track_running_stats=False), which the loss matches; use a teacher whose BatchNorm layers "
                         "track them")
    return layers


def untracked(layers: List[Tuple[str, nn.Module]]) -> List[str]:
    """The names of the BatchNorm ``layers`` without running statistics (track_running_stats=False:
    they normalize every batch by its own statistics, even in eval mode)."""
    return [name for name, module in layers if module.running_mean is None or module.running_var is None]


def _compiled_class() -> Optional[type]:
    """The class of torch.compile'd modules, or None while Dynamo is not loaded (no model is
    compiled then; looked up so that importing this module does not load it)."""
    return getattr(sys.modules.get("torch._dynamo.eval_frame"), "OptimizedModule", None)


def _holds_compiled(model: nn.Module) -> bool:
    """``model`` is, or holds, a torch.compile'd module."""
    kind = _compiled_class()
    return kind is not None and any(isinstance(m, kind) for m in model.modules())


def uncompiled(model: nn.Module) -> nn.Module:
    """The module a torch.compile'd ``model`` wraps (``_orig_mod``), else ``model``: the one to
    hook. A compiled graph traced before hooks were added does not run them (Dynamo does not
    guard on hooks), so the losses of a tracker attached later would never be computed."""
    kind = _compiled_class()
    while kind is not None and isinstance(model, kind):
        model = model._orig_mod
    return model


def check_no_compiled_submodule(model: nn.Module, who: str) -> None:
    """ValueError naming ``who`` where a submodule below the top of ``model`` is torch.compile'd:
    a graph Dynamo traced before hooks were added does not run them, so its BatchNorm layers
    would be left out of a loss silently (and the first layer's weight put on another one).
    The top itself is unwrapped by :func:`uncompiled`; a submodule cannot be without changing
    the caller's model."""
    kind = _compiled_class()
    nested = [name for name, m in model.named_modules() if name and kind is not None and isinstance(m, kind)]
    if nested:
        raise ValueError(f"{who}: submodule {nested[0]!r} is torch.compile'd: hooks added after Dynamo traced it do "
                         "not run, so its BatchNorm layers would be left out of the loss; give the model with it "
                         f"uncompiled (its ._orig_mod)")


def as_ops_input(x: Tensor) -> Tensor:
    """A BatchNorm1d's (N, C, L) input as the ops take it, the view (N, C, L, 1): per channel
    the same N*L values, so the same statistics and loss; (N, C) and (N, C, H, W) as they are."""
    return x.unsqueeze(-1) if isinstance(x, Tensor) and x.dim() == 3 else x


class _DroppedHook:
    """What a tracker's hook is in a copy or pickle of the model: nothing (the copy is a
    plain model, its losses are no tracker's)."""

    def __call__(self, *args) -> None:
        return None


class _TrackerHook:
    """A hook calling ``method`` of a tracker (with ``name``, the layer's, first). A deep copy
    or pickle of the model holds a :class:`_DroppedHook` instead: a copy of the tracker would
    add the copy's losses to this one, and its loss tensors (not leaves) cannot be deep-copied."""

    def __init__(self, method: Callable, name: str = ""):
        self.method, self.name = method, name

    def __call__(self, module: nn.Module, *args) -> None:
        self.method(self.name, module, *args)

    def __reduce_ex__(self, protocol):
        return (_DroppedHook, ())


class _FusedBatchNorm:
    """Base of the class a fused tracker gives each BN layer while attached (a subclass of
    the layer's own class, made by :func:`_fused_class`): its forward is the fused op. A deep
    copy or pickle of the layer is of the plain class, with no tracker."""

    _bn_stat_tracker: "BNStatTracker"
    _bn_stat_name: str
    _plain_class: type

    def forward(self, x: Tensor) -> Tensor:
        return self._bn_stat_tracker._fused_forward(self._bn_stat_name, self, x)

    def __reduce_ex__(self, protocol):
        # as the plain class reduces (pickle refuses copyreg.__newobj__ of another class)
        _, _, *state = object.__reduce_ex__(self, max(protocol, 2))
        plain = self._plain_class
        return (plain.__new__, (plain,), *state)


# torch's own BatchNorm forwards: a layer running one of them is exactly the eval-mode BN that
# the fused op computes. A subclass with its own forward (timm's BatchNormAct2d: BN, drop, then
# activation) does more, which replacing its forward would silently skip.
_TORCH_BN_FORWARDS = (nn.modules.batchnorm._BatchNorm.forward, nn.SyncBatchNorm.forward)


def _runs_torch_bn_forward(module: nn.Module) -> bool:
    """``module``'s forward is one of torch's BatchNorm forwards (none set on the instance)."""
    return "forward" not in vars(module) and type(module).forward in _TORCH_BN_FORWARDS


def _fused_class(module: nn.Module, tracker: "BNStatTracker", name: str) -> type:
    plain = type(module)  # (same name: the model prints as before)
    return type(plain.__name__, (_FusedBatchNorm, plain), {
        "__module__": plain.__module__, "_bn_stat_tracker": tracker, "_bn_stat_name": name, "_plain_class": plain})


class BNStatTracker:
    """Forward pre-hooks on every BatchNorm1d/2d of ``model``, computing
    :func:`~infer_fast.ops.bn_stat_loss` of each layer's input against its running stats.

    ``fused=True`` replaces each BN layer's forward, for as long as the tracker is attached,
    with :func:`~infer_fast.ops.bn_eval_with_stat_loss`: the kernel that reads x for the
    statistics also writes the eval-mode BN output, and the backward reads x and dy and writes
    the input gradient once (unfused: the BN's own passes plus autograd adding two gradients).
    A layer with a forward of its own (a subclass such as timm's BatchNormAct2d, BN then an
    activation) keeps it and is tracked by a pre-hook, as unfused: the same results either way.

    Layers are reported in execution order; layers that did not run in the last forward
    are absent. A forward is a call of the model, or of anything else that runs its layers
    (``model.forward_features(x)``, a submodule): a call of the model starts a new one, and
    outside such a call a layer that already ran in the current forward starts a new one
    (layers run in pieces, e.g. features then head, add up to one forward). The model must be
    in eval mode when it runs (a frozen teacher): in train mode its running statistics would
    drift and its BN would use batch statistics.

    One fused tracker per model at a time (a second one is refused: each would replace the
    other's forward); unfused trackers can share a model with each other and a fused one.
    A deep copy or pickle of a tracked model is a plain model: the tracker stays with the
    original (``remove()`` detaches it there).
    """

    def __init__(self, model: nn.Module, groups: int = 1, backend: str = "auto", fused: bool = False):
        check_int("groups", groups)  # (the ops' own checks, before any forward)
        check_backend_name(backend)
        self.groups = groups
        self.backend = backend
        self.fused = fused
        self.clear()
        self._in_model_call = False
        self.layers = matchable(bn_layers(model), f"model {type(model).__name__}")
        self._compiled = _holds_compiled(model)
        if not fused:  # (a fused layer's replaced class is seen by Dynamo's guards: it traces again)
            check_no_compiled_submodule(model, f"model {type(model).__name__}")
        for name, module in self.layers:
            if fused and isinstance(module, _FusedBatchNorm):
                raise ValueError(f"fused=True: BatchNorm layer {name!r} already has its forward replaced (another "
                                 "fused BNStatTracker is attached?): remove() that tracker first, or use fused=False")
        self._handles = [model.register_forward_pre_hook(_TrackerHook(self._model_call_starts)),
                         model.register_forward_hook(_TrackerHook(self._model_call_ends), always_call=True)]
        self._fused: List[Tuple[nn.Module, type]] = []
        for name, module in self.layers:
            if fused and _runs_torch_bn_forward(module):  # its class is replaced (restored by remove())
                module.__class__ = _fused_class(module, self, name)
                self._fused.append((module, module.__class__))
            else:
                self._handles.append(module.register_forward_pre_hook(_TrackerHook(self._layer_runs, name)))

    def _model_call_starts(self, name: str, module: nn.Module, args) -> None:
        self.clear()
        self._in_model_call = True

    def _model_call_ends(self, name: str, module: nn.Module, args, output) -> None:
        self._in_model_call = False

    def _record(self, name: str, loss: Tensor) -> None:
        if name in self._seen and not self._in_model_call:
            self.clear()  # a new forward outside a call of the model (forward_features, a submodule)
        self._losses.append(loss)
        self._names.append(name)
        self._seen.add(name)

    def _layer_runs(self, name: str, module: nn.Module, args) -> None:
        refuse_training_mode(name, module)
        x = as_ops_input(args[0])
        self._record(name, bn_stat_loss(x, module.running_mean, module.running_var, self.groups, self.backend))

    def _fused_forward(self, name: str, module: nn.Module, x: Tensor) -> Tensor:
        refuse_training_mode(name, module)
        y, loss = bn_eval_with_stat_loss(as_ops_input(x), module.running_mean, module.running_var, module.weight,
                                         module.bias, module.eps, self.groups, self.backend)
        self._record(name, loss)
        return y.squeeze(-1) if x.dim() == 3 else y

    @property
    def names(self) -> List[str]:
        """Names of the layers that ran in the last forward, in execution order."""
        return list(self._names)

    def losses(self) -> Tensor:
        """(L, G): per executed layer, per group, from the last forward."""
        if not self._losses:
            hint = ("; a torch.compile'd model traced before the tracker was attached does not run its hooks: attach "
                    "it to the uncompiled model (compiled._orig_mod) and call that") if self._compiled else ""
            raise RuntimeError(f"no BatchNorm layer has run since the tracker was attached: run a forward pass first{hint}")
        return torch.stack(self._losses)

    def weighted_sum(self, first_bn_mult: float = 1.0) -> Tensor:
        """(G,): first_bn_mult * R_1 + sum_{l >= 2} R_l, the INFER/SRe2L regularizer."""
        per_layer = self.losses()
        weights = torch.ones(per_layer.shape[0], dtype=per_layer.dtype, device=per_layer.device)
        weights[0] = first_bn_mult
        return (per_layer * weights[:, None]).sum(dim=0)

    def clear(self) -> None:
        """Drop the last forward's losses (and the autograd graph they hold): the next layer
        that runs starts a new forward."""
        self._losses: List[Tensor] = []
        self._names: List[str] = []
        self._seen: Set[str] = set()

    def remove(self) -> None:
        """Detach all hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for module, fused_class in self._fused:
            if type(module) is fused_class:  # (else not ours any more: left as it is)
                module.__class__ = fused_class._plain_class
        self._fused = []
        self.clear()

    def __enter__(self) -> "BNStatTracker":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def attach_bn_stat_loss(model: nn.Module, groups: int = 1, backend: str = "auto") -> BNStatTracker:
    """Shorthand for :class:`BNStatTracker` (``model`` must be a frozen, eval-mode teacher)."""
    return BNStatTracker(model, groups=groups, backend=backend)
