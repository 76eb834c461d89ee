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
from typing import Any, Dict, Iterable, List, Mapping, Optional

import yaml

from ._io import TOO_DEEP, parse_failure
from .checks import is_digits


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that gives a key twice (YAML keeps the last
    silently: ``seeds: 0`` then ``seeds: 1`` would run one seed without a word)."""

    def construct_mapping(self, node, deep=False):
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


def preset_names() -> List[str]:
    """The names of the shipped presets (their files' names without ``.yaml``), sorted."""
    folder = preset_folder()
    if folder is None:
        return []
    return sorted(name[:-len(".yaml")] for name in os.listdir(folder)
                  if name.endswith(".yaml") and os.path.isfile(os.path.join(folder, name)))


def config_file(value: str, what: str = "config file") -> str:
    """The YAML file that a config argument ``value`` names: ``value`` itself when it is an
    existing file, or a pipe or device read as one (``run <(envsubst < template.yaml)``,
    /dev/stdin: a config is read once) (a path always wins), else the shipped preset of that
    name, given as ``fashion-mnist``, ``fashion-mnist.yaml`` or ``configs/fashion-mnist.yaml``
    (as the README spells it), from any directory. Neither: FileNotFoundError
    (IsADirectoryError for a directory) naming ``what`` and listing the presets."""
    value = os.fspath(value)
    if os.path.exists(value) and not os.path.isdir(value):
        return value
    head, name = os.path.split(value)
    if name.endswith(".yaml"):
        name = name[:-len(".yaml")]
    names = preset_names()
    if head in ("", "configs") and name in names:
        return os.path.join(preset_folder(), name + ".yaml")
    presets = f"presets: {', '.join(names)}" if names else "no presets are installed"
    if os.path.isdir(value):
        raise IsADirectoryError(f"{what} {value!r} is a directory, expected a file or a preset's name ({presets})")
    raise FileNotFoundError(f"{what} {value!r} does not exist, and no preset has that name ({presets})")


def load_yaml(path: str) -> Dict[str, Any]:
    """The mapping in the YAML file ``path`` (a file, or a preset's name: :func:`config_file`),
    its keys with ``_`` for ``-``."""
    path = config_file(path)
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.load(f, Loader=_UniqueKeyLoader)
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
          options: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Values from ``config_path`` overridden by the options set on the command line.

    Options the user did not give are ``None`` in ``args`` (parsers use default=None and
    the command applies its own defaults afterwards). ``options`` (name -> its
    :class:`infer_fast.options.Option`, the declaration its flag comes from) checks the
    file's values as the flags' are (a name without one is its owner's to check), and
    expands ``~`` in those of its path options (:func:`home_expanded`), as a shell does in
    the flags'."""
    from .options import check_values, given_value

    allowed = set(allowed)
    merged: Dict[str, Any] = {}
    if config_path:
        from_file = load_yaml(config_path)
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
    """A command-line value typed as YAML types it ("2" -> 2, "[0.5, 1]" -> a list)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text
