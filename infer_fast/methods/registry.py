"""The registry of distillation methods: what the CLI's ``--method`` choices, ``infer-fast
run``'s ``methods:`` list, the result tables' labels and the stored sets' ``method`` field
are made of. A method is one module under ``infer_fast/methods/`` (or a user's own) that
builds a :class:`Method` and calls :func:`register`; the built-in modules are imported the
first time the registry is read.

A method's ``distill`` takes one :class:`DistillRequest` and writes a distilled-set
directory. Its own options (the ones beyond the request's fields) are :class:`Option`
declarations: the CLI's typed flags and their help come from them, and a value from a flag
or a YAML file is checked against them (:func:`infer_fast.options.check_value`) before
``parse_options`` checks what spans several options, all before any data is read. A request
is checked when it is made (its options parsed into ``request.parsed``), so a method's
``distill`` reads them as they are."""
from __future__ import annotations

import importlib
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple, Union

from ..checks import check_int
from ..choices import SOFT_LABEL_MODES
from ..data.registry import DATASET_FAMILIES, caller_module, dataset_options, definition_name, recipe_family
from ..teacher import resolve_device, teacher_path_list
from ..options import CheckedWhenMade, Option, check_fields, check_value, hold_as_made
from ..plugins import PLUGINS_HINT, load_plugins

BUILTIN_MODULES = ("infer", "sre2l", "random", "cda", "rded")  # infer_fast/methods/<name>.py


@dataclass(frozen=True)
class DistillRequest(CheckedWhenMade):
    """What a method is asked for: the set of ``method`` (a registered name) with ``ipc``
    images per class of ``dataset`` in ``out_dir``, with the teachers at ``teacher_paths``
    (empty for methods that use none; one path is a list of one, and the request holds them
    as a list of str) and the method's own ``options`` as given; ``out_dir`` and ``data_root``
    are held as str, whether given as str or os.PathLike. Checked when made: each field's type
    (``resume`` and ``progress`` bools, ``device`` one the machine has), and the options over
    the method's recipe for the dataset's family (:meth:`Method.with_dataset_defaults`),
    checked and parsed by :meth:`Method.check_options`, are ``parsed``, what the method's
    ``distill`` reads. :meth:`make_set` runs it."""

    method: str
    dataset: Any  # a name, or {name, num_classes, image_size, in_memory} (data.registry.dataset_options)
    ipc: int
    out_dir: Union[str, os.PathLike]
    teacher_paths: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]] = ()
    options: Optional[Mapping[str, Any]] = field(default_factory=dict)  # (None: none given)
    seed: int = 0
    data_root: Optional[Union[str, os.PathLike]] = None
    resume: bool = False
    progress: bool = True
    device: str = "auto"
    parsed: Dict[str, Any] = field(init=False, repr=False, compare=False, default_factory=dict)

    def validate(self) -> None:
        check_fields(self)  # each field's type, from its annotation (options.check_value)
        hold_as_made(self)
        resolve_device(self.device)  # (a method that uses no device refuses a wrong one too)
        method = get_method(self.method)
        if method.distill is None:
            raise ValueError(f"method {method.name} makes no set of its own (its students train on "
                             f"{method.trains_on}'s set)")
        dataset_options(self.dataset)
        check_int("ipc", self.ipc)
        check_int("seed", self.seed, minimum=None)
        # (a frozen dataclass: ``teacher_paths`` and ``parsed`` are set this once, while the request is made)
        object.__setattr__(self, "teacher_paths", teacher_path_list(self.teacher_paths))
        if method.uses_teachers and not self.teacher_paths:
            raise ValueError(f"teachers: method {method.name} needs at least one teacher checkpoint")
        if self.options is not None and not isinstance(self.options, Mapping):
            raise ValueError(f"options must be a mapping of {method.name}'s option names to values, got "
                             f"{type(self.options).__name__}")
        object.__setattr__(self, "parsed", method.options_for_dataset(self.options or {}, self.dataset, self.seed))

    def make_set(self):
        """The method's set made as asked: what its ``distill`` returns (the set's directory;
        a ValueError naming the method where it returns anything else). With ``resume``, a
        resumable method's output that holds the set of this very request is returned as it is
        (distill.run.finished_set)."""
        method = get_method(self.method)
        if method.resumable:  # (a --resume of a request whose set is saved, a requeued job: nothing to do)
            from ..distill.run import finished_set

            done = finished_set(self)
            if done is not None:
                return done
        path = method.distill(self)
        if not isinstance(path, (str, os.PathLike)) or not os.path.isdir(path):
            raise ValueError(f"method {self.method!r}: its distill returned {path!r}; it must return the path of "
                             f"the set's directory it wrote ({self.out_dir})")
        return path


class ClassImages(NamedTuple):
    """What a method's set at one ipc takes from the training split
    (:attr:`Method.images_per_class`): ``count`` real images of every class, the value of its
    option ``option`` ("ipc", or one of its own: RDED's candidates_per_class), the one to lower
    where a class has fewer; ``note``: how the count follows from the ipc, for the refusal
    (INFER's "K = 7 natural sets")."""

    count: int
    option: str = "ipc"
    note: str = ""


@dataclass(frozen=True)
class Method:
    """``name``: the CLI and config name (also the stored set's ``method``); ``label``: in
    tables and plots; ``summary``: one line for help texts; ``uses_teachers``: needs
    ``--teachers``; ``options``: the :class:`Option` declarations of the options it takes
    beyond the request's fields (kind, range, choices, default, help: a flag each);
    ``parse_options(options, seed) -> options``: what the options mean, and the checks across
    them (ValueError naming the option; :meth:`check_options` first refuses the names it does
    not take and the values its declarations refuse);
    ``distill(request) -> Path``; ``student_labels``: "static" (the set is relabelled by the
    teachers, students learn those labels) or "per-batch" (the teachers label every batch the
    student sees); ``trains_on``: another method's set (INFER+Dyn trains on INFER's; such a
    method has no ``distill``); ``layout``: how its set is stored ("images": uint8 images and
    labels; "compensated": INFER's natural sets and compensators); ``resumable``: keeps a
    checkpoint beside the set (``<out>.recovery.pt``) that a later start continues;
    ``all_ranks``: under torchrun every rank takes a share of the work (the recovery's jobs),
    else rank 0 makes the set alone; ``reduced_student_epochs``: in ``infer-fast
    run`` its students train round(epochs / (M + 1)) epochs for M teachers unless the run gives
    ``dynamic_epochs`` (INFER+Dyn: the paper's reduction); ``family_defaults``: its recipe per
    dataset family (``{"imagenet": {"augmentation": "imagenet"}}``: option values a set of a
    dataset of that family gets where the user gives none; :meth:`with_dataset_defaults`);
    ``student_settings(recipe) -> StudentConfig fields``: what its sets' students take over
    the dataset family's student recipe (the user's settings still win), from the recipe the
    set records (its ``hyperparameters``; RDED: its augmentation at the set's factor), and
    ``student_settings_help``: what a help text says of each field it sets (its value, or
    where the set gives it: the students' flags say these defaults too).

    In an ``infer-fast run`` config: ``config_section`` is the PipelineConfig field holding
    its options (INFER's ``recovery``, SRe2L's ``sre2l``; None: ``method_options: {name:
    ...}``); ``shared_recovery_options``: the settings of the ``recovery`` section it takes
    too where it declares them (the run's seed, batching and checkpoint cadence; SRe2L also its
    augmentation),
    under its own; ``run_options``: run-level settings given to it as options (INFER's
    ``selection`` and ``accounting``); ``check_budget(options, ipc, spec, num_teachers)``: a
    ValueError where an ipc leaves it no set of the dataset ``spec`` (INFER's K = 0, RDED's
    candidates too few for ipc x factor^2 patches), checked with its parsed options before
    any work; ``images_per_class(options, ipc, spec, num_teachers) -> ClassImages``: the
    real training images of every class its set at ``ipc`` takes (random: ipc; INFER: K;
    RDED: its candidates), which ``infer-fast run`` checks against the training split's
    classes before any work (None: none, a set made from noise); ``result_neutral``: its
    options that do not change its sets (batching, checkpoint cadence): a run continues under
    other values of them."""

    name: str
    label: str
    summary: str
    distill: Optional[Callable[[DistillRequest], Any]] = None
    parse_options: Callable[..., Dict[str, Any]] = lambda options, seed=0: dict(options)
    options: Tuple[Option, ...] = ()
    uses_teachers: bool = True
    student_labels: str = "static"
    trains_on: Optional[str] = None
    layout: str = "images"
    resumable: bool = False
    all_ranks: bool = False
    reduced_student_epochs: bool = False
    config_section: Optional[str] = None
    shared_recovery_options: Tuple[str, ...] = ("group_size", "seed", "checkpoint_every", "checkpoint_minutes")
    run_options: Tuple[str, ...] = ()
    check_budget: Optional[Callable[[Mapping[str, Any], int, Any, int], None]] = None
    images_per_class: Optional[Callable[[Mapping[str, Any], int, Any, int], ClassImages]] = None
    family_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    student_settings: Optional[Callable[[Mapping[str, Any]], Dict[str, Any]]] = None
    student_settings_help: Mapping[str, str] = field(default_factory=dict)
    result_neutral: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum() or self.name != self.name.lower():
            raise ValueError(f"method name must be lower-case letters, digits and '_', got {self.name!r}")
        if self.student_labels not in SOFT_LABEL_MODES:  # (a set relabelled once, or by the teachers on every batch)
            raise ValueError(f"student_labels must be one of {', '.join(SOFT_LABEL_MODES)}, got {self.student_labels!r}")
        if (self.distill is None) == (self.trains_on is None):
            raise ValueError(f"method {self.name!r}: give distill, or trains_on (another method's set), not both")
        if self.layout not in ("images", "compensated"):
            raise ValueError(f"method {self.name!r}: layout must be 'images' or 'compensated', got {self.layout!r}")
        bad = [o for o in self.options if not isinstance(o, Option)]
        if bad:
            raise ValueError(f"method {self.name!r}: options must be Option declarations (infer_fast.options), "
                             f"got {bad[0]!r}")
        for opt in (o for o in self.options if o.default is not None):  # (else taken silently)
            try:
                check_value(opt, opt.default)
            except ValueError as exc:
                raise ValueError(f"method {self.name!r}: option {opt.name}: its default {opt.default!r} breaks its own "
                                 f"declaration ({exc})") from None
        for family, values in self.family_defaults.items():
            undeclared = sorted(set(values) - set(self.option_names))
            if family not in DATASET_FAMILIES or undeclared:
                raise ValueError(f"method {self.name!r}: family_defaults maps dataset families "
                                 f"({', '.join(DATASET_FAMILIES)}) to its own options, got {family!r}: {dict(values)}")
        # (an option declared result_neutral is one, whether or not result_neutral lists it)
        declared_neutral = tuple(o.name for o in self.options if o.result_neutral and o.name not in self.result_neutral)
        object.__setattr__(self, "result_neutral", tuple(self.result_neutral) + declared_neutral)

    @property
    def option_names(self) -> Tuple[str, ...]:
        return tuple(o.name for o in self.options)

    def with_dataset_defaults(self, options: Mapping[str, Any], dataset) -> Dict[str, Any]:
        """``options`` over the method's recipe for ``dataset``'s family (``family_defaults``;
        an option given as None counts as not given there)."""
        if not self.family_defaults:
            return dict(options)
        defaults = self.family_defaults.get(recipe_family(dataset), {})
        return {**defaults, **{k: v for k, v in options.items() if v is not None or k not in defaults}}

    def family_option_defaults(self) -> Dict[str, Dict[str, Any]]:
        """Per dataset family (DATASET_FAMILIES), the value each of its options takes where the
        user gives none: its recipe for the family (``family_defaults``) as ``parse_options``
        makes it, so with what its own recipes fill in (CDA's, the recovery engine's:
        :func:`parsed_option_values`), over the declared defaults. What help texts quote. (A
        method that parses no options without some given: its declared defaults and
        family_defaults alone.)"""
        found: Dict[str, Dict[str, Any]] = {}
        for family in DATASET_FAMILIES:
            given = dict(self.family_defaults.get(family, {}))
            values = {**{o.name: o.default for o in self.options}, **given}
            try:  # (its own recipe, no user's options: parsed as they are, not checked as a user's)
                parsed = parsed_option_values(self.parse_options(given, 0))
            except Exception:  # noqa: BLE001 - (a plug-in's option that must be given, or its own bug: the parser of
                parsed = {}    # every command is built with this; the declared defaults are said, its run tells)
            found[family] = {**values, **{k: v for k, v in parsed.items() if k in values}}
        return found

    def options_for_dataset(self, options: Mapping[str, Any], dataset, seed: int = 0) -> Dict[str, Any]:
        """``options`` as given, over the method's recipe for ``dataset``'s family, checked and
        parsed: what its ``distill`` reads (:attr:`DistillRequest.parsed`)."""
        return self.check_options(self.with_dataset_defaults(options, dataset), seed)

    def check_options(self, options: Mapping[str, Any], seed: int = 0) -> Dict[str, Any]:
        """``options`` checked (every name one it takes, every value against its declaration,
        then ``parse_options``) and parsed."""
        declared = {o.name: o for o in self.options}
        unknown = sorted(set(options) - set(declared))
        if unknown:
            takes = f"it takes {', '.join(declared)}" if declared else "it takes none"
            raise ValueError(f"option(s) {', '.join(unknown)} do not apply to method {self.name} ({takes})")
        for name, value in options.items():
            check_value(declared[name], value)
        return self.parse_options(options, seed)

    @property
    def matches_bn_statistics(self) -> bool:
        """Its sets are recovered by the recovery engine (it takes the engine's options,
        RECOVERY_OPTIONS: INFER, SRe2L, CDA), whose loss matches the teachers' BatchNorm
        statistics: every teacher needs BatchNorm layers with running statistics."""
        from .recovery_options import RECOVERY_OPTIONS

        return all(o.name in self.option_names for o in RECOVERY_OPTIONS)

    def needs_bn_statistics(self, parsed: Mapping[str, Any]) -> bool:
        """Its sets, under these parsed options, match the teachers' BatchNorm statistics: a
        recovery with r_bn 0 (CE only) takes a teacher without BatchNorm (jobs.check_common)."""
        return self.matches_bn_statistics and parsed["config"].r_bn > 0

    @property
    def set_method(self) -> str:
        """The method whose set its students train on (its own, unless ``trains_on``)."""
        return self.trains_on or self.name


def parsed_option_values(parsed: Mapping[str, Any]) -> Dict[str, Any]:
    """The option values a method's parsed options (what its ``parse_options`` returns) hold:
    each by its name, a config among them (one with ``to_dict``: INFER's RecoveryConfig) as
    its fields."""
    values: Dict[str, Any] = {}
    for name, value in parsed.items():
        values.update(value.to_dict() if hasattr(value, "to_dict") else {name: value})
    return values


def run_level_options() -> Dict[str, Option]:
    """The run-level settings of an `infer-fast run` config (PipelineConfig's accounting and
    selection), as the methods that take them as options declare them (Method.run_options)."""
    return {o.name: o for m in all_methods() for o in m.options if o.name in m.run_options}


_METHODS: Dict[str, Method] = {}
_loaded = False  # (the built-in modules: all imported)
_loading_threads: Set[int] = set()  # the threads importing them now (_load_builtins)
_REGISTERED_BY: Dict[str, str] = {}  # method name -> the module that registered it (caller_module)


def register(method: Method) -> Method:
    """Add ``method``. A name registered twice is an error (a test may ``unregister``), unless
    it is the same definition again (a notebook cell run again, a module reloaded): registered
    by the same module, its ``distill`` of the same module and qualname, which replaces it."""
    registered_by = caller_module()
    _load_builtins()
    old = _METHODS.get(method.name)
    if old is method:  # (the same method again: nothing to change)
        return method
    if old is not None:
        _check_same_definition(old, method, registered_by)
    if method.name == "external":
        raise ValueError("'external' names imported sets, not a method")
    _check_same_declarations(method)
    _check_distill_flags(method)
    _check_config_section(method)
    _check_label_free(method)
    _METHODS[method.name] = method
    _REGISTERED_BY[method.name] = registered_by
    return method


def _definition(method: Method, registered_by: str) -> Tuple[str, str]:
    """What tells one definition of a method from another: the module registering it, and its
    ``distill``'s module:qualname (the set it trains on, for a method making none)."""
    made_by = (f"distill {definition_name(method.distill)}" if method.distill is not None
               else f"trains on {method.trains_on!r}'s set")
    return registered_by, made_by


def _check_same_definition(old: Method, new: Method, registered_by: str) -> None:
    """A ValueError unless ``new``, registered by the module ``registered_by``, is the
    definition of the registered ``old`` (of the same name) again."""
    was = _definition(old, _REGISTERED_BY.get(old.name, "?"))
    now = _definition(new, registered_by)
    if was != now:
        raise ValueError(f"a method named {new.name!r} is already registered, by module {was[0]!r} ({was[1]}); this "
                         f"one is registered by module {now[0]!r} ({now[1]}): unregister({new.name!r}) "
                         "(infer_fast.methods) first to replace it, or give it another name")


def _check_label_free(method: Method) -> None:
    """A label names one method: the result tables and plots group their rows by it."""
    for other in _METHODS.values():
        if other.name != method.name and other.label.lower() == method.label.lower():
            raise ValueError(f"method {method.name!r}: its label {method.label!r} is the label of method "
                             f"{other.name!r} (tables and plots tell methods apart by their labels): give it another")


def _check_config_section(method: Method) -> None:
    """A method's ``config_section`` is a section an `infer-fast run` config has (a file with any
    other key is refused as a whole, so the method's options could never be given there)."""
    from ..run_config import method_sections  # (here: the run config reads this registry)

    sections = method_sections()
    if method.config_section is not None and method.config_section not in sections:
        raise ValueError(f"method {method.name!r}: config_section {method.config_section!r} is no section of an "
                         f"`infer-fast run` config: give one of {', '.join(sections)} (shared with the methods "
                         "reading it), or None for its own entry under method_options")


def _check_same_declarations(method: Method) -> None:
    """An option name that several methods take is one CLI flag: refused where ``method``
    declares it of another kind or with other choices than a registered method does."""
    for other in _METHODS.values():
        theirs = {o.name: o for o in other.options if other.name != method.name}  # (not the one it replaces)
        for opt in method.options:
            same = theirs.get(opt.name)
            if same is not None and (same.kind, same.choices) != (opt.kind, opt.choices):
                raise ValueError(f"method {method.name!r}: option {opt.name} is declared with another kind or other "
                                 f"choices by method {other.name!r} (one --{opt.name.replace('_', '-')} flag serves both)")


def _check_distill_flags(method: Method) -> None:
    """Each option of a method is a flag of ``infer-fast distill``: refused where it is named
    as one of the command's own options or takes one of its flags, or an option of another
    name (of any method, this one too) has its flag (argparse would refuse to build the
    command, for every method)."""
    from .distill_options import distill_command_flags, distill_request_options  # (they read this registry)

    command_options = distill_request_options()
    taken = {flag: (None, f"its own {what}") for flag, what in distill_command_flags().items()}
    for other in all_methods():  # (the built-in order: the first method declaring a flag is named)
        for theirs in other.options if other.name != method.name else ():  # (nor the one it replaces)
            taken.setdefault(theirs.flag_name, (theirs.name, f"option {theirs.name} of method {other.name!r}"))
    for opt in method.options:
        if opt.name in command_options:
            raise ValueError(f"method {method.name!r}: option {opt.name} is an option of infer-fast distill itself "
                             f"({command_options[opt.name].flag_name}): give the method's option another name")
        name, holder = taken.get(opt.flag_name, (opt.name, None))
        if opt.flag_name is not None and name != opt.name:  # (one option of several methods shares its flag)
            raise ValueError(f"method {method.name!r}: option {opt.name} takes the flag {opt.flag_name}, which "
                             f"infer-fast distill has for {holder}: give the method's option another name")
        taken.setdefault(opt.flag_name, (opt.name, f"option {opt.name} of method {method.name!r}"))


def unregister(name: str) -> None:
    _METHODS.pop(name, None)
    _REGISTERED_BY.pop(name, None)


def _load_builtins() -> None:
    """Import the built-in method modules, once. Loaded only once they all are: a thread that
    reads the registry meanwhile imports them too, which waits for the ones another thread is
    importing (Python's import locks, whose deadlock check a lock of ours would escape), so it
    never builds a parser of half the methods; the thread importing them, re-entering (a
    built-in module's register), returns at once."""
    global _loaded
    me = threading.get_ident()
    if _loaded or me in _loading_threads:
        return
    _loading_threads.add(me)
    try:
        for module in BUILTIN_MODULES:
            importlib.import_module(f"{__package__}.{module}")
    finally:
        _loading_threads.discard(me)
    _loaded = True


def _module_rank(method: Method) -> int:
    """The place of the built-in module that defines ``method`` in BUILTIN_MODULES (after them
    all: a method registered elsewhere)."""
    for rank, module in enumerate(BUILTIN_MODULES):
        if any(value is method for value in vars(sys.modules.get(f"{__package__}.{module}", sys)).values()):
            return rank
    return len(BUILTIN_MODULES)


def all_methods() -> List[Method]:
    """Every registered method: the built-ins in BUILTIN_MODULES' order (whichever module was
    imported first: importing one loads the others while it is still being imported), each
    module's in the order it registers them, then the others in the order they came."""
    _load_builtins()
    return sorted(_METHODS.values(), key=_module_rank)


def get_method(name: str) -> Method:
    """The registered method ``name``, or a ValueError listing the known ones."""
    method = find_method(name)
    if method is None:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(m.name for m in all_methods())} "
                         f"({PLUGINS_HINT})")
    return method


def find_method(name: str) -> Optional[Method]:
    """The registered method ``name``, or None (a set's method where none is registered here:
    an imported set's)."""
    _load_builtins()
    if name not in _METHODS:  # (a plug-in's, perhaps: a set's manifest names its method)
        load_plugins()
    return _METHODS.get(name)


def set_student_settings(distilled) -> Dict[str, Any]:
    """The StudentConfig fields the method that made ``distilled`` gives its students
    (:attr:`Method.student_settings` of the recipe the set records); {} for a set of a method
    without such settings, or of none registered here (an imported set)."""
    method = find_method(distilled.method)
    if method is None or method.student_settings is None:
        return {}
    return method.student_settings(distilled.hyperparameters)


def distill_method_names() -> Tuple[str, ...]:
    """The methods that make a set (``infer-fast distill --method``)."""
    return tuple(m.name for m in all_methods() if m.distill is not None)


def run_method_names() -> Tuple[str, ...]:
    """The rows an ``infer-fast run`` table can have."""
    return tuple(m.name for m in all_methods())


def set_layout(name: str) -> Optional[str]:
    """The storage layout of a set made by method ``name`` (None: no such method)."""
    method = find_method(name)
    return None if method is None or method.distill is None else method.layout
