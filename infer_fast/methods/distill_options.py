"""The options of ``infer-fast distill``, from the method registry: the request's own (every
method takes the common ones; the teachers' where a method uses teachers) and each method's
(Method.options), with the methods that take each."""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Tuple

from ..choices import DEVICE_CHOICES
from ..options import PATH, PATHS, Option
from .registry import DistillRequest, all_methods, distill_method_names

# what every method takes; the rest are each method's own (Method.options)
COMMON_DISTILL_OPTIONS = ("dataset", "ipc", "out", "seed", "data_root", "method")
TEACHER_USE_OPTIONS = ("teachers", "device")  # for the methods that use teachers
# the distill command's flags that set no option, as cli._add_distill adds them (argparse's
# keywords), and those of every command (build_parser's --debug, argparse's --help): no
# method's option may take one
DISTILL_SWITCHES = {
    "--config": dict(help="YAML file of options"),
    "--resume": dict(action="store_true", help="continue an interrupted run from its checkpoint"),
    "--quiet": dict(action="store_true", help="no progress bars"),
}
EVERY_COMMAND_SWITCHES = ("--debug", "--help")


def distill_request_options() -> Dict[str, Option]:
    """The distill command's options that are no method's own: the request's."""
    request = (
        Option("dataset", (str, dict), "dataset name (see `infer-fast datasets`); in a --config file also a mapping "
               "{name, num_classes, image_size, in_memory}"),
        Option("teachers", PATHS, "comma-separated teacher checkpoints (the methods that use teachers)"),
        Option("ipc", int, "images per class of storage budget"),
        Option("method", str, "; ".join(f"{m.name}: {m.summary}" for m in all_methods() if m.distill is not None),
               default="infer", choices=distill_method_names()),
        Option("data_root", PATH, "directory holding the dataset files"),
        Option("device", str, DEVICE_CHOICES, default=DistillRequest.device),  # (the request's own default)
        Option("out", PATH, "output directory (must not exist)"),
    )
    return {o.name: o for o in request}


def distill_method_options() -> Dict[str, Tuple[Option, Tuple[str, ...]]]:
    """Every option a method of the distill command declares (Method.options; one flag per
    name: the methods sharing one declare it alike), with the methods that take it; where they
    say different things of it (RDED checkpoints after a class, the recovery inside a batch),
    its help gives each method's words."""
    found: Dict[str, Tuple[Option, Tuple[str, ...]]] = {}
    helps: Dict[str, Dict[str, List[str]]] = {}  # option -> help -> the methods saying it
    for method in all_methods():
        for opt in method.options if method.distill is not None else ():
            declared, takers = found.get(opt.name, (opt, ()))
            found[opt.name] = (declared, takers + (method.name,))
            helps.setdefault(opt.name, {}).setdefault(opt.help, []).append(method.name)
    for name, said in helps.items():
        if len(said) > 1:
            opt, takers = found[name]
            joined = "; ".join(f"{', '.join(methods)}: {text}" for text, methods in said.items())
            found[name] = (dataclasses.replace(opt, help=joined), takers)
    return found


def distill_options() -> Dict[str, Option]:
    """The distill command's declared options: the request's and every method's own."""
    return {**{name: opt for name, (opt, _) in distill_method_options().items()}, **distill_request_options()}


def distill_command_flags() -> Dict[str, str]:
    """The flags of the distill command that are no method's own, each with what it is (the
    request's option, or a switch): a method's option taking one would break the command."""
    flags = {flag: "switch" for flag in (*DISTILL_SWITCHES, *EVERY_COMMAND_SWITCHES)}
    flags.update({opt.flag_name: f"option {name}" for name, opt in distill_request_options().items()})
    return flags
