"""Options declared once. A config dataclass field carries its help, choices and range in
``dataclasses.field(metadata=option(...))``; its type is the annotation and its default the
field's own. From that one declaration come the command-line flags (:func:`add_flags`), the
check of one value, from a YAML file or a flag (:func:`check_value`), and the per-field part
of a config's ``validate()`` (:func:`check_fields`). Named recipes are tables of field
values (``{"imagenet": {"r_bn": 0.01, ...}}``) that flags' help texts quote as they are.

A command's options that are no config field (``--out``, ``--ipc``...) are :class:`Option`
values built directly, checked by the same functions.

A config is checked once, where it is made (:class:`CheckedWhenMade`): the CLI, a YAML file and
a library caller alike get a config that is valid by construction, and the layers inside take
it as it is."""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import typing
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from .checks import check_choice, check_int

PATHS = "paths"  # an option's kind: one comma-separated string (a flag) or a list of strings (YAML)
PATH = "path"  # an option's kind: a str or os.PathLike (the annotation os.PathLike)
_NOT_GIVEN = dataclasses.MISSING
_YAML_BOOL_HINT = " (YAML reads unquoted on/off/yes/no as true/false: quote the word)"
# for an option whose None means off (or a default): YAML's unquoted off/no is false, a quoted
# 'off' a string, and only null is None
_YAML_NULL_HINT = " (YAML reads unquoted on/off/yes/no as true/false: write null for None)"
_NULL_WORDS = ("off", "no", "none", "null", "false")
# torch.finfo(torch.float32).max: a float option ends up in float32 tensors or optimizer state,
# where a larger value overflows (to inf, or torch refuses it)
FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class Option:
    """One option: ``kind`` is int, float, bool, str, PATHS, a tuple of kinds (any of them),
    PATH, ``tuple`` (a fixed-length value its config checks) or ``object`` (checked by its owner).
    Ranges: ``minimum`` (>=), ``above`` (>) and ``below`` (<); ``none``: None allowed, meaning
    that; ``note``: said after a range error; ``flag``: "" for --the-name, None for none;
    ``result_neutral``: another value does not change a result (where it runs, its batching,
    checkpoint cadence), so a run's files continue under it (:func:`result_neutral_fields`);
    ``check``: the value's own check, ``check(name, value)`` raising a ValueError that names it
    (a fixed-length tuple's shape and range), run after the kind's."""

    name: str
    kind: Any
    help: str
    default: Any = None
    choices: Optional[Tuple[str, ...]] = None
    minimum: Optional[float] = None
    above: Optional[float] = None
    below: Optional[float] = None
    none: Optional[str] = None
    note: str = ""
    flag: Optional[str] = ""
    metavar: Optional[str] = None
    result_neutral: bool = False
    check: Optional[Callable[[str, Any], None]] = None

    @property
    def flag_name(self) -> Optional[str]:
        """The flag: --the-name, or --no-the-name for a switch that is on by default."""
        if self.flag is None or self.flag:
            return self.flag
        dashed = self.name.replace("_", "-")
        return f"--no-{dashed}" if self.kind is bool and self.default is True else f"--{dashed}"


class CheckedWhenMade:
    """Base of the option dataclasses (declared ``frozen=True``): making one runs its
    ``validate()``, so a config that exists is valid, and stays valid (its fields cannot be
    set; ``dataclasses.replace`` makes, and checks, a new one). That is the one check: at the
    edge where the config is made, never again in the layers that take it."""

    def __post_init__(self) -> None:
        self.validate()


def hold_as_made(config: Any) -> None:
    """The values a config (a frozen dataclass, while it is made) holds from then on: a path
    option as a str (a pathlib.Path in a checkpoint's config makes it unloadable: torch's
    weights_only loading refuses the class), a tuple option given as a list as a tuple, and a
    mapping as a copy, so a caller changing their list or dict later does not change it."""
    for opt in options_of(type(config)).values():
        value = getattr(config, opt.name)
        kinds = opt.kind if isinstance(opt.kind, tuple) else (opt.kind,)
        if PATH in kinds and isinstance(value, os.PathLike):
            object.__setattr__(config, opt.name, os.fspath(value))
        elif tuple in kinds and isinstance(value, list):
            object.__setattr__(config, opt.name, tuple(value))
        elif dict in kinds and isinstance(value, Mapping):
            object.__setattr__(config, opt.name, dict(value))


def option(help: str, **spec: Any) -> Dict[str, Any]:
    """A dataclass field's metadata: ``dataclasses.field(default=..., metadata=option(...))``
    (the keywords are :class:`Option`'s, less name, kind and default)."""
    return {"option": dict(help=help, **spec)}


def _kind(hint: Any) -> Tuple[Any, bool]:
    """(kind, None allowed) of a field's type annotation."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        kinds = [_kind(a)[0] for a in args if a is not type(None)]
        return (kinds[0] if len(kinds) == 1 else tuple(kinds)), type(None) in args
    if origin is tuple:
        return tuple, False
    if origin is dict:
        return dict, False
    if hint is os.PathLike:
        return PATH, False
    return (hint if hint in (int, float, bool, str) else object), False


def options_of(cls: type) -> Dict[str, Option]:
    """The options of config dataclass ``cls``, by field name, in declaration order."""
    cached = cls.__dict__.get("_options")
    if cached is not None:
        return cached
    hints = typing.get_type_hints(cls)
    found: Dict[str, Option] = {}
    for f in dataclasses.fields(cls):
        kind, nullable = _kind(hints[f.name])
        spec = dict(f.metadata.get("option") or {"help": f.name.replace("_", " "), "flag": None})
        if nullable and spec.get("none") is None:
            spec["none"] = "none"
        default = f.default if f.default is not _NOT_GIVEN else None
        found[f.name] = Option(name=f.name, kind=kind, default=default, **spec)
    setattr(cls, "_options", found)  # (not a field: the class attribute is set after the dataclass is made)
    return found


def result_neutral_fields(cls: type) -> Tuple[str, ...]:
    """The fields of config dataclass ``cls`` declared ``result_neutral=True``, in declaration
    order: those a checkpoint or results file does not compare (a run continues under another
    value of them)."""
    return tuple(name for name, opt in options_of(cls).items() if opt.result_neutral)


def result_settings(config: Any) -> Dict[str, Any]:
    """The fields of the config dataclass ``config`` less its result-neutral ones
    (:func:`result_neutral_fields`): what a result made under it depends on."""
    neutral = result_neutral_fields(type(config))
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in neutral}


def _kind_text(kind: Any) -> str:
    names = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string", dict: "a mapping",
             PATHS: "a string or a list of strings", PATH: "a path"}
    if isinstance(kind, tuple):  # (str, dict): any of them
        return " or ".join(names[k] for k in kind)
    return names[kind]


def _is(kind: Any, value: Any) -> bool:
    if isinstance(kind, tuple):
        return any(_is(k, value) for k in kind)
    if kind is bool or kind is str or kind is dict:
        return isinstance(value, kind)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        # (an int is finite: math.isfinite would raise OverflowError on one too large for a float)
        return isinstance(value, (int, float)) and not isinstance(value, bool) and (
            isinstance(value, int) or math.isfinite(value))
    if kind == PATH:
        return isinstance(value, (str, os.PathLike))
    if kind == PATHS:
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    return True  # tuple, object: their config checks them


def _range_text(opt: Option) -> str:
    if opt.minimum is not None and opt.below is not None:
        return f"in [{opt.minimum:g}, {opt.below:g})"
    if opt.above == 0:
        return "positive"
    return f"> {opt.above:g}" if opt.above is not None else f">= {opt.minimum:g}"


def _null_hint(opt: Option, value: Any) -> str:
    """How to write None in YAML, for a value refused by ``opt`` (allowing None) that reads as
    an attempt at it (a YAML false/true, or a word such as 'off'); else ''."""
    if not opt.none or opt.kind is bool:
        return ""
    if isinstance(value, bool):
        return _YAML_NULL_HINT
    if isinstance(value, str) and value.strip().lower() in _NULL_WORDS:
        return " (write null for None)"
    return ""


def check_value(opt: Option, value: Any) -> None:
    """ValueError naming the option unless ``value`` is of its kind, one of its choices and in
    its range (None where it allows None)."""
    or_none = f" or None ({opt.none})" if opt.none else ""
    if value is None and opt.none:
        return
    if opt.kind is int:  # (ints take a minimum, and a bound below)
        try:
            check_int(opt.name, value, minimum=None if opt.minimum is None else int(opt.minimum), none=opt.none)
        except ValueError as e:
            raise ValueError(f"{e}{_null_hint(opt, value)}") from None
        if value is not None and opt.below is not None and value >= opt.below:
            note = f" ({opt.note})" if opt.note else ""
            raise ValueError(f"{opt.name} must be below {opt.below}{note}{or_none}, got {value!r}")
        return
    if not _is(opt.kind, value):
        hint = _YAML_BOOL_HINT if isinstance(value, bool) and opt.choices else _null_hint(opt, value)
        raise ValueError(f"{opt.name} must be {_kind_text(opt.kind)}{or_none}, got {value!r}{hint}")
    if opt.choices is not None:
        check_choice(opt.name, value, opt.choices)
    if opt.check is not None:
        opt.check(opt.name, value)
    if opt.kind is float and abs(value) > FLOAT32_MAX:  # (compared as they are: an int too large for a float too)
        raise ValueError(f"{opt.name} must be a finite number within float32's range (|x| <= {FLOAT32_MAX:.6g})"
                         f"{or_none}, got {value!r}")
    if opt.kind is float and not ((opt.minimum is None or value >= opt.minimum) and (opt.above is None or value > opt.above)
                                  and (opt.below is None or value < opt.below)):
        note = f" ({opt.note})" if opt.note else ""
        raise ValueError(f"{opt.name} must be {_range_text(opt)}{note}{or_none}, got {value!r}")


def check_fields(config: Any) -> None:
    """Every field of ``config`` checked against its declaration (:func:`check_value`): the
    per-field part of a config's ``validate()``; the checks across fields stay its own."""
    for opt in options_of(type(config)).values():
        check_value(opt, getattr(config, opt.name))


def check_values(where: str, options: Mapping[str, Option], values: Mapping[str, Any]) -> None:
    """The values of a YAML file (``where`` names it) checked like the flags they stand for:
    a name with no Option in ``options`` is its owner's to check."""
    for name, value in values.items():
        if name in options:
            try:
                check_value(options[name], value)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None


def format_default(value: Any) -> str:
    """A default as a user would write it: 1.0, roll, [0.5, 0.9]."""
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(format_default(v) for v in value) + "]"
    return str(value)


def value_text(opt: Option, value: Any) -> str:
    """A value of ``opt`` as a help text says it: as a user would write it, None by what the
    option calls it ("off", "automatic")."""
    return format_default(value) if value is not None else opt.none or "none"


def default_text(opt: Option, recipes: Optional[Mapping[str, Mapping[str, Any]]] = None,
                 others: Optional[Mapping[str, Any]] = None) -> str:
    """What a flag's help says of its default: the declared default, each named recipe's
    value where the recipe changes it, and ``others``' ({"for --method X": value}: the
    defaults of other declarations of the option, several methods' with one flag)."""
    if opt.kind is bool:
        return "on by default; this flag turns it off" if opt.default else "default off"
    if opt.default is None:
        text = f"default: {opt.none}" if opt.none else ""
    else:
        text = f"default {format_default(opt.default)}"
        for name, values in (recipes or {}).items():
            if opt.name in values and values[opt.name] != opt.default:
                text += f"; {format_default(values[opt.name])} in the {name} recipe"
    for label, value in (others or {}).items():
        text += f"{'; ' if text else ''}{value_text(opt, value)} {label}"
    return text + ("; off: never" if opt.none == "off" and opt.default is not None else "")


def add_flags(parser, options: Iterable[Option], recipes: Optional[Mapping[str, Mapping[str, Any]]] = None,
              default: Optional[str] = None, others: Optional[Mapping[str, Mapping[str, Any]]] = None) -> None:
    """One flag per option that has one (default None: a command tells the options it was given
    from the others); the help ends with the default (``default``: what to say instead,
    e.g. "the protocol's recipe"), the recipes' values (``recipes``) and the other defaults
    ``others`` gives an option (by its name: :func:`default_text`)."""
    for opt in options:
        flag = opt.flag_name
        if flag is None:
            continue
        if default is not None and opt.kind is not bool:
            said = f"default: {default}" + "".join(f"; {value_text(opt, value)} {label}"
                                                  for label, value in (others or {}).get(opt.name, {}).items())
        else:
            said = default_text(opt, recipes, (others or {}).get(opt.name))
        text = f"{opt.help} ({said})" if said else opt.help
        kwargs: Dict[str, Any] = dict(dest=opt.name, default=None, help=text.replace("%", "%%"))
        if opt.kind is bool:
            kwargs["action"] = "store_false" if opt.default is True else "store_true"
        else:
            kwargs.update(type=_flag_type(opt), choices=opt.choices, metavar=opt.metavar)
        parser.add_argument(flag, **kwargs)


class _Off:
    """The value of a flag given as "off" (an option whose None is called so: a cadence)."""

    def __repr__(self) -> str:
        return "off"


OFF = _Off()


def given_value(value: Any) -> Any:
    """A flag's value as the option takes it: None for "off" (OFF; a flag not given is None
    itself, so "off" needs its own value until the given flags are told apart)."""
    return None if value is OFF else value


def _flag_type(opt: Option):
    """The argparse type of ``opt``'s flag; "off" is OFF where the option calls its None so."""
    kind = opt.kind
    if isinstance(kind, tuple) and str in kind:  # (a dataset: a name on the command line, a mapping in YAML)
        parse = str
    elif kind in (int, float, str, PATH, PATHS):
        parse = kind if kind in (int, float, str) else str
    elif kind is tuple:  # "0.5,0.9" as the other list flags take it, or YAML's "[0.5, 0.9]"
        from .config import yaml_value

        def parse(text: str) -> Any:
            return yaml_value(text if text.lstrip().startswith("[") else f"[{text}]")

        parse.__name__ = "list"
    else:
        from .config import yaml_value  # a tuple, a mapping, anything: typed as YAML types it

        parse = yaml_value
    # the value checked as a YAML file's is, the error naming the flag as typed (argparse: "argument
    # --group-size: must be a positive integer, got 0"), before any command runs; choices are argparse's
    spoken = dataclasses.replace(opt, name=opt.flag_name, none=None, choices=None)

    def checked(text: str) -> Any:
        if opt.none == "off" and text == "off":
            return OFF
        value = parse(text)
        try:
            check_value(spoken, value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{spoken.name} ")) from None
        return value

    checked.__name__ = parse.__name__  # (argparse names the type in its error: "invalid float value")
    return checked


def flag_words(opt: Option, value: Any) -> Optional[List[str]]:
    """The command-line words that give ``opt`` the value ``value``, as its flag
    (:func:`add_flags`, :func:`_flag_type`) reads them back: ``["--lr", "0.05"]``, a switch
    alone where ``value`` is not its default (none where it is), ``["--x", "off"]`` for a None
    called "off"; None where the flag cannot give it (no flag, a mapping for a flag that takes a
    name, another None): a config file can."""
    from .config import yaml_text

    flag = opt.flag_name
    if flag is None:
        return None
    if opt.kind is bool and isinstance(value, bool):
        return [flag] if value != opt.default else []
    if value is None:
        return [flag, "off"] if opt.none == "off" else None
    if isinstance(opt.kind, tuple) and str in opt.kind:  # (a dataset: its flag takes a name only)
        return [flag, value] if isinstance(value, str) else None
    if opt.kind in (int, float):
        return [flag, str(value)]
    if opt.kind in (str, PATH, PATHS) and isinstance(value, (str, os.PathLike)):
        return [flag, os.fspath(value)]
    if opt.kind in (PATHS, tuple) and isinstance(value, (list, tuple)):  # (comma-separated, as the flag takes it)
        return [flag, ",".join(v if isinstance(v, str) else yaml_text(v) for v in value)]
    return [flag, yaml_text(value)]  # (typed as YAML types it)


def given_config(name: str, value: Any, cls: type, default: Optional[Callable[[], Any]] = None):
    """What a function that takes a config reads: ``value`` when it is a ``cls`` (valid: checked
    when made), ``default()`` (a ``cls``, made only then) when it is None and there is one; a
    ValueError naming the argument for anything else, e.g. a dict of options (``cls(**options)``
    makes a config)."""
    if value is None and default is not None:
        return default()
    if not isinstance(value, cls):
        raise ValueError(f"{name} must be a {cls.__name__} (from options: {cls.__name__}(**options)), got "
                         f"{type(value).__name__}")
    return value


def make_config(cls: type, values: Mapping[str, Any]):
    """``cls(**values)`` (a config, checked when made), a key that is none of its fields refused
    first by name, with the ones it has (not Python's TypeError)."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    return cls(**values)


def with_recipe(cls: type, recipes: Mapping[str, Mapping[str, Any]], names: Iterable[str], overrides: Mapping[str, Any]):
    """``cls`` with the values of the named ``recipes`` (in order, later ones on top) and then
    ``overrides``; ValueError naming a recipe that is not one."""
    values: Dict[str, Any] = {}
    for name in names:
        if name not in recipes:
            raise ValueError(f"recipe must be one of {', '.join(recipes)}, got {name!r}")
        values.update(recipes[name])
    values.update(overrides)
    return make_config(cls, values)


# A config's rules for options it does not use under another setting: (field, unused when
# (config -> bool), that setting in words).
UnusedRule = Tuple[str, Callable[[Any], bool], str]


def check_given_used(config: Any, given: Iterable[str], rules: Iterable[UnusedRule]) -> None:
    """ValueError naming each option in ``given`` (the fields a user set explicitly) that
    ``config`` does not use under its other settings (``rules``): a user would think it took
    effect."""
    given, declared = set(given), options_of(type(config))
    unused = [f"{name} ({declared[name].flag_name}) does not apply with {setting}"
              for name, unused_when, setting in rules if name in given and unused_when(config)]
    if unused:
        raise ValueError("; ".join(unused))
