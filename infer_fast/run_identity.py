"""The "is this the same run?" question, answered once: a file a run left (a teacher, student or
recovery checkpoint, a results file) records the run's identity, a mapping of the settings and
digests that determine its results; a run continues the file only when its own identity
matches, and otherwise one message names what differs. No dependencies.

    check_same_run("student checkpoint", path, recorded, current, "delete it, or resume with the same settings",
                   ignore=("device",))"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Mapping, Optional

_ABSENT = object()
SHOWN_VALUE_CHARS = 40  # a recorded value is quoted in the message when its repr is this short (not a digest, a table)
SHOWN_DIFFERENCES = 5  # the differing names a message lists, then "and N more" (a run of other settings differs in dozens)


def differing(recorded: Mapping[str, Any], current: Mapping[str, Any], ignore: Iterable[str] = (),
              defaults: Optional[Mapping[str, Any]] = None) -> List[str]:
    """The names whose values differ between the identity ``recorded`` (read from a file) and
    ``current`` (this run's), in ``current``'s order then the recorded-only ones; names in
    ``ignore`` (result-neutral settings) are not compared. A name absent from one side counts
    as its value in ``defaults`` (a setting an older file predates) and, without one, as
    different from any value."""
    defaults = defaults or {}
    skip = set(ignore)

    def value(side: Mapping[str, Any], name: str) -> Any:
        return side[name] if name in side else defaults.get(name, _ABSENT)

    names = list(current) + [name for name in recorded if name not in current]
    return [name for name in names if name not in skip and value(recorded, name) != value(current, name)]


def another_run_message(what: str, path: Any, names: List[str], todo: str,
                        recorded: Optional[Mapping[str, Any]] = None, labels: Optional[Mapping[str, str]] = None) -> str:
    """"<what> '<path>' belongs to another run (<names> differ(s); recorded name=value, ...): <todo>",
    the first SHOWN_DIFFERENCES names listed, then how many more.
    ``labels``: what a name is called in the message (a digest: "the distilled set's images or
    labels"); the recorded values of the other names are quoted where short."""
    labels, recorded = labels or {}, recorded or {}
    listed, more = names[:SHOWN_DIFFERENCES], len(names) - SHOWN_DIFFERENCES
    shown = [f"{name}={recorded[name]!r}" for name in listed
             if name not in labels and name in recorded and len(repr(recorded[name])) <= SHOWN_VALUE_CHARS]
    one_option = len(names) == 1 and names[0] not in labels  # (the labels are plural: "the training images")
    said = (", ".join(labels.get(name, name) for name in listed) + (f" and {more} more" if more > 0 else "")
            + (" differs" if one_option else " differ"))
    if shown:
        said += "; recorded " + ", ".join(shown)
    return f"{what} {os.fspath(path)!r} belongs to another run ({said}): {todo}"


def check_same_run(what: str, path: Any, recorded: Mapping[str, Any], current: Mapping[str, Any], todo: str, *,
                   ignore: Iterable[str] = (), defaults: Optional[Mapping[str, Any]] = None,
                   labels: Optional[Mapping[str, str]] = None) -> None:
    """ValueError (:func:`another_run_message`) unless the identities ``recorded`` and ``current``
    match (:func:`differing`, with ``ignore`` and ``defaults``)."""
    names = differing(recorded, current, ignore, defaults)
    if names:
        raise ValueError(another_run_message(what, path, names, todo, recorded, labels))


def flattened(identity: Mapping[str, Any], nested: str = "config") -> Dict[str, Any]:
    """``identity`` with the entries of its mapping ``nested`` (a config's fields) beside its
    other entries, so each field is compared, and named, on its own (as "config.name" where
    an entry outside has its name)."""
    outer = {k: v for k, v in identity.items() if k != nested}
    inner = identity.get(nested) or {}
    return {**outer, **{(f"{nested}.{k}" if k in outer else k): v for k, v in inner.items()}}


def dotted(settings: Mapping[str, Any], sections: Iterable[str]) -> Dict[str, Any]:
    """``settings`` with each mapping named in ``sections`` replaced by its entries, each named
    "section.name" (a mapping inside one, further: "section.name.field"), so that each is
    compared, and named, on its own ("recovery.r_bn differs", not "recovery differs"). An
    empty section leaves no entry."""
    sections = set(sections)
    out: Dict[str, Any] = {}

    def spread(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for name, inner in value.items():
                spread(f"{prefix}.{name}", inner)
        else:
            out[prefix] = value

    for name, value in settings.items():
        if name in sections and isinstance(value, Mapping):
            spread(name, value)
        else:
            out[name] = value
    return out
