"""Checks of user-given values, each raising a ValueError that names the value: one
definition, no dependencies (the ops, models, configs and methods all use them; the class names of
sets, teachers and splits are compared by :func:`check_class_names` alone)."""
from __future__ import annotations

import unicodedata
from typing import Any, Iterable, Optional, Sequence

# the range of a 64-bit integer: what a tensor index, a size or a torch generator's seed holds
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def is_digits(text: str) -> bool:
    """Whether ``text`` is a non-negative integer written in ASCII digits: str.isdigit alone
    also takes "²" (which int() refuses) and "٣" or "３" (which int() reads as 3)."""
    return text.isascii() and text.isdigit()


def check_int(name: str, value: Any, minimum: Optional[int] = 1, none: Optional[str] = None) -> None:
    """ValueError naming ``name`` unless ``value`` is an int (a bool is not) >= ``minimum``
    (any int when ``minimum`` is None) that fits in int64; with ``none``, None is allowed too
    and means that."""
    if value is None and none is not None:
        return
    what = "an integer" if minimum is None else "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    or_none = f" or None ({none})" if none else ""
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        raise ValueError(f"{name} must be {what}{or_none}, got {value!r}")
    if not INT64_MIN <= value <= INT64_MAX:
        bounds = f", at most {INT64_MAX}" if minimum is not None else f" from {INT64_MIN} to {INT64_MAX}"
        raise ValueError(f"{name} must be {what}{bounds} (a 64-bit integer){or_none}, got {value!r}")


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> None:
    """ValueError naming ``name`` unless ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


# class differences a class-name mismatch spells out (the first in full, then briefly)
SHOWN_CLASS_DIFFERENCES = 3


def composed_name(name: Any) -> Any:
    """``name`` in Unicode's composed form (NFC), as class names compare (a non-str as it is)."""
    return unicodedata.normalize("NFC", name) if isinstance(name, str) else name


def check_class_names(names: Optional[Sequence[str]], other: Optional[Sequence[str]], where: str, other_where: str,
                      todo: str) -> None:
    """ValueError in one line naming both sides unless the class names ``names`` (as recorded by
    ``where``, e.g. "the distilled set") and ``other`` (by ``other_where``) are the same, in the
    same order. A label is only a class's index: data, a set or a teacher whose classes have the
    same count but other names, or another order (folders sorted another way), would teach or
    score every class as another one without any error. ``todo`` says what to do instead.
    None on either side (a file written before class names were recorded; a dataset that names
    none) is not compared. Names are compared in Unicode's composed form (NFC): a folder copied
    from macOS names "café" with a combining accent (NFD), the same name to a reader."""
    if names is None or other is None or list(names) == list(other):
        return
    names, other = [composed_name(n) for n in names], [composed_name(n) for n in other]
    if names == other:
        return
    if len(names) != len(other):
        raise ValueError(f"{where} has {len(names)} classes, {other_where} {len(other)}: {todo}")
    differ = [i for i, (a, b) in enumerate(zip(names, other)) if a != b]
    first = differ[0]
    said = f"class {first} is {names[first]!r} in {where}, {other[first]!r} in {other_where}"
    also = [f"class {i} {names[i]!r} / {other[i]!r}" for i in differ[1:SHOWN_CLASS_DIFFERENCES]]
    if also:
        said += "; also " + ", ".join(also) + (", ..." if len(differ) > SHOWN_CLASS_DIFFERENCES else "")
    how = "the same classes in another order" if sorted(names) == sorted(other) else \
        f"{len(differ)} of {len(names)} class names differ"
    raise ValueError(f"{said} ({how}): {todo}")


def split_label(split: Any) -> str:
    """How a loaded split (an ImageSet or FolderImageSet) is named in a message: "the test split
    of imagefolder at '/data/B/val'", the folder where it was read from image files."""
    files = getattr(split, "files", None) or split  # (an ImageSet decoded from files keeps them)
    folder = files.folder() if callable(getattr(files, "folder", None)) else None
    return f"the {split.split} split of {split.spec.name}" + (f" at {folder!r}" if folder else "")


def check_images_per_class(counts: Sequence[int], needed: int, where: str, because: str, remedy: str = "") -> None:
    """The one refusal of a split with too few images in a class (random's ipc, INFER's K natural
    sets, RDED's candidates, a run's up-front check): a ValueError unless every class has
    ``needed`` images (``counts``: per class, of the split ``where`` names, e.g. split_label),
    saying what needs them (``because``: "random at ipc 7") and how to need fewer (``remedy``)."""
    short = [(c, k) for c, k in enumerate(counts) if k < needed]
    if short:
        c, k = short[0]
        more = f" ({len(short)} classes have fewer)" if len(short) > 1 else ""
        raise ValueError(f"{because} needs {needed} images of every class, but class {c} of {where} has {k}{more}"
                         + (f": {remedy}" if remedy else ""))
