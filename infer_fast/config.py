"""YAML configuration with command-line overrides.

A config file is a flat mapping of option names (as the command's ``--long-options``
spell them, with ``_`` or ``-``) to values; command-line options given explicitly win.
Where a command takes a config file, the name of a preset shipped with infer-fast
(``configs/*.yaml``: ``fashion-mnist``, ``teacher-cifar10``, ...) does too: :func:`config_file`.
"""
from __future__ import annotations

import argparse
import math
import os
import re
from typing import IO, Any, Dict, Iterable, List, Mapping, Optional, Union

import yaml

from ._io import TOO_DEEP, parse_failure
from .checks import is_digits


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, the one every YAML read of infer-fast goes through (:func:`read_yaml`):
    it reads ``1e-3`` as a float, and refuses a mapping that gives a key twice."""

    def construct_mapping(self, node, deep=False):
        """A mapping, refused where it gives a key twice (YAML keeps the last silently: ``seeds: 0``
        then ``seeds: 1`` would run one seed without a word)."""
        if isinstance(node, yaml.MappingNode):
            first_line: Dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in first_line:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key {key!r} given twice (first on line {first_line[key] + 1})",
                            key_node.start_mark)
                    first_line[key] = key_node.start_mark.line
                except TypeError:  # an unhashable key: the base class says so
                    continue
        return super().construct_mapping(node, deep)


# PyYAML resolves floats as YAML 1.1 does, which wants a dot and a signed exponent ("1.0e-3"):
# "1e-3", "5E4", "1.0e3" stayed strings, and an lr of 1e-3 was refused. YAML 1.2's form of a float
# with an exponent is added (an int has none: it stays an int; "1e", "e5" match neither: strings).
# (a string spelled so, "1e3", is then quoted to stay one: YAML 1.2 reads it as a float too; the
# dumper resolves it alike, so yaml_text quotes such strings and read_yaml reads them back as they were)
_FLOAT_WITH_EXPONENT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")


class _Dumper(yaml.SafeDumper):
    """YAML's safe dumper, quoting what :class:`_Loader` would read as another type."""


for _yaml_class in (_Loader, _Dumper):
    _yaml_class.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_WITH_EXPONENT, list("-+0123456789."))


def read_yaml(stream: Union[str, IO]) -> Any:
    """The YAML document in ``stream`` (a string or a file), read by infer-fast's loader
    (:class:`_Loader`); yaml.YAMLError where it is none."""
    return yaml.load(stream, Loader=_Loader)


def yaml_text(value: Any) -> str:
    """``value`` as one line of YAML (flow style: ``{name: imagefolder, image_size: 28}``), which
    :func:`read_yaml` reads back as it was."""
    text = yaml.dump(value, Dumper=_Dumper, default_flow_style=True, sort_keys=False, width=float("inf"))
    return text.removesuffix("\n...\n").strip()  # (the end of document PyYAML marks after a plain scalar)


def _yaml_error(path: str, exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line message in one line: the file, line and column, and the problem."""
    mark = getattr(exc, "problem_mark", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"config file {path!r}{where}: {problem}"


def preset_folder() -> Optional[str]:
    """The folder of the YAML presets shipped with infer-fast: ``infer_fast/configs/`` where
    the package is installed (setup.py puts the repository's ``configs/`` there), the
    checkout's ``configs/`` where it runs from its source tree (PYTHONPATH, an editable
    install); None when neither is there."""
    package = os.path.dirname(os.path.abspath(__file__))
    installed = os.path.join(package, "configs")
    if os.path.isdir(installed):
        return installed
    checkout = os.path.dirname(package)
    if os.path.isfile(os.path.join(checkout, "setup.py")) and os.path.isdir(os.path.join(checkout, "configs")):
        return os.path.join(checkout, "configs")
    return None


# a preset named so is a teacher's config (``infer-fast teacher --config``); the others are runs' (``infer-fast run``)
TEACHER_PRESET_PREFIX = "teacher-"


def preset_command(name: str) -> str:
    """The command whose config the preset ``name`` is: ``teacher`` or ``run``."""
    return "teacher" if name.startswith(TEACHER_PRESET_PREFIX) else "run"


def preset_names(command: Optional[str] = None) -> List[str]:
    """The names of the shipped presets (their files' names without ``.yaml``), sorted; given
    ``command`` (``run``, ``teacher``, ``distill``...), only the presets of its config
    (:func:`preset_command`: none for a command other than run and teacher)."""
    folder = preset_folder()
    if folder is None:
        return []
    names = sorted(name[:-len(".yaml")] for name in os.listdir(folder)
                   if name.endswith(".yaml") and os.path.isfile(os.path.join(folder, name)))
    return [name for name in names if command is None or preset_command(name) == command]


def config_file(value: str, what: str = "config file", command: Optional[str] = None) -> str:
    """The YAML file that a config argument ``value`` names: ``value`` itself when it is an
    existing file, or a pipe or device read as one (``run <(envsubst < template.yaml)``,
    /dev/stdin: a config is read once) (a path always wins), else the shipped preset of that
    name, given as ``fashion-mnist``, ``fashion-mnist.yaml`` or ``configs/fashion-mnist.yaml``
    (as the README spells it), from any directory: one of ``command``'s presets where the
    command is given (:func:`preset_names`; a preset of another command would only be refused
    for its options). Neither: FileNotFoundError (IsADirectoryError for a directory) naming
    ``what`` and listing those presets."""
    value = os.fspath(value)
    if os.path.exists(value) and not os.path.isdir(value):
        return value
    head, name = os.path.split(value)
    if name.endswith(".yaml"):
        name = name[:-len(".yaml")]
    names = preset_names(command)
    is_preset = head in ("", "configs") and name in preset_names()
    if is_preset and name in names:
        return os.path.join(preset_folder(), name + ".yaml")
    takes_presets = command is None or bool(names) or not preset_names()  # (distill's config is a file)
    if not takes_presets:
        presets = f"`infer-fast {command}` has no presets"
    else:
        presets = f"presets: {', '.join(names)}" if names else "no presets are installed"
    if is_preset:  # (another command's: whose it is)
        why = f", and {name!r} is a preset of `infer-fast {preset_command(name)}`, not of `infer-fast {command}`"
    else:
        why = ", and no preset has that name" if takes_presets else ""
    if os.path.isdir(value):
        expected = "a file or a preset's name" if takes_presets else "a file"
        raise IsADirectoryError(f"{what} {value!r} is a directory, expected {expected}{why if is_preset else ''} "
                                f"({presets})")
    raise FileNotFoundError(f"{what} {value!r} does not exist{why} ({presets})")


def load_yaml(path: str, command: Optional[str] = None) -> Dict[str, Any]:
    """The mapping in the YAML file ``path`` (a file, or a preset's name, one of ``command``'s
    where given: :func:`config_file`), its keys with ``_`` for ``-``."""
    path = config_file(path, command=command)
    with open(path, encoding="utf-8") as f:
        try:
            data = read_yaml(f)
        except yaml.YAMLError as exc:
            raise ValueError(_yaml_error(path, exc)) from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"config file {path!r} is not a UTF-8 text file (byte {exc.start} cannot be decoded)") from None
        except TOO_DEEP as exc:
            raise ValueError(f"config file {path!r}: {parse_failure(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path!r} must hold a mapping of option: value, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def home_expanded(path: str) -> str:
    """A path as a config file gives it, read as a shell reads one on a command line: a leading
    ``~`` (``~user``) is that home folder, as for ``data_root`` (environment variables are not
    expanded: a generated config, ``envsubst < template.yaml``, does that)."""
    return os.path.expanduser(path)


def _paths_expanded(options: Mapping[str, Any], values: Dict[str, Any]) -> Dict[str, Any]:
    """``values`` (checked against ``options``, name -> Option) with each value of a path
    option (kind PATH, or PATHS: one string or a list) :func:`home_expanded`."""
    from .options import PATH, PATHS

    def is_path(name: str) -> bool:
        kind = getattr(options.get(name), "kind", None)
        return bool({PATH, PATHS} & set(kind if isinstance(kind, tuple) else (kind,)))

    def expanded(value: Any) -> Any:
        if isinstance(value, list):
            return [expanded(v) for v in value]
        return home_expanded(value) if isinstance(value, str) else value

    return {name: expanded(value) if is_path(name) else value for name, value in values.items()}


def merge(args: argparse.Namespace, config_path: Optional[str], allowed: Iterable[str],
          options: Optional[Mapping[str, Any]] = None, command: Optional[str] = None) -> Dict[str, Any]:
    """Values from ``config_path`` overridden by the options set on the command line.

    Options the user did not give are ``None`` in ``args`` (parsers use default=None and
    the command applies its own defaults afterwards). ``options`` (name -> its
    :class:`infer_fast.options.Option`, the declaration its flag comes from) checks the
    file's values as the flags' are (a name without one is its owner's to check), and
    expands ``~`` in those of its path options (:func:`home_expanded`), as a shell does in
    the flags'. A preset's name for ``config_path`` is one of ``command``'s (default: the
    subcommand that parsed ``args``, the CLI's ``dest="command"``; none: any preset)."""
    from .options import check_values, given_value

    allowed = set(allowed)
    merged: Dict[str, Any] = {}
    if config_path:
        from_file = load_yaml(config_path, command or getattr(args, "command", None))
        unknown = sorted(set(from_file) - allowed)
        if unknown:
            raise ValueError(f"config file {config_path!r}: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        check_values(f"config file {config_path!r}", options or {}, from_file)
        merged.update(_paths_expanded(options or {}, from_file))
    for key in allowed:
        value = getattr(args, key, None)
        if value is not None:
            merged[key] = given_value(value)  # ("off": None, given)
    return merged


# values of comma-separated and typed command-line options (a bad one: a ValueError naming the option)

def comma_list(value: Optional[str]) -> List[str]:
    """The non-empty items of a comma-separated value ("a.pt,b.pt")."""
    return [p for p in (value or "").split(",") if p]


def path_list(value) -> List[str]:
    """Paths given as one comma-separated string (a flag) or a list (a YAML file)."""
    return comma_list(value) if isinstance(value, str) else [str(p) for p in (value or [])]


def positive_ints(option: str, value: str) -> List[int]:
    """The comma-separated positive integers of ``option``'s ``value`` ("10,50")."""
    items = [v.strip() for v in value.split(",")]
    if not all(is_digits(v) and int(v) > 0 for v in items):
        raise ValueError(f"{option} takes comma-separated positive integers (e.g. 10,50), got {value!r}")
    return [int(v) for v in items]


def positive_floats(option: str, value: str) -> List[float]:
    """The comma-separated positive numbers of ``option``'s ``value`` ("0.001,0.01")."""
    try:
        items = [float(v) for v in value.split(",")]
    except ValueError:
        items = []
    if not items or not all(math.isfinite(v) and v > 0 for v in items):
        raise ValueError(f"{option} takes comma-separated positive numbers (e.g. 0.001,0.01), got {value!r}")
    return items


def yaml_value(text: str):
    """A command-line value typed as YAML types it ("2" -> 2, "1e-3" -> 0.001, "[0.5, 1]" -> a list)."""
    try:
        return read_yaml(text)
    except yaml.YAMLError:
        return text
