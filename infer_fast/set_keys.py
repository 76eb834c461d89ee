"""The keys of an ``infer-fast run``'s sets and student runs, and every name made from them,
in one place: ``SetKey(method, ipc)`` ("infer/ipc10": results.json's ``sets`` and ``scores``;
the set directory ``sets/infer-ipc10``) and ``RunKey(method, ipc, seed)``
("infer/ipc10/seed0": results.json's ``runs``; the student checkpoint
``students/infer-ipc10-seed0.pt``). The strings are the ones results files have always held
(a run continues from an older file) and parse back to the same key.

``method`` is a registered method's name, or ``external:<label>`` for a set given to the run
(``external`` in its config), which keeps its own directory."""
from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from typing import Optional

from .checks import check_int
from .methods import Method, get_method

EXTERNAL_PREFIX = "external:"  # the method of a set given to the run (e.g. imported): "external:<label>"

_SET_KEY = re.compile(r"([^/]+)/ipc([1-9][0-9]*)")
_RUN_KEY = re.compile(r"([^/]+)/ipc([1-9][0-9]*)/seed(0|[1-9][0-9]*)")
_SET_DIRECTORY = "{method}-ipc{ipc}"  # a set's directory under the run's sets/


def external_method(label: str) -> str:
    """The method key of the set given to the run as ``external: {label: ...}``."""
    return EXTERNAL_PREFIX + label


def registered_method(method: str) -> Optional[Method]:
    """The registered Method of a run's method key; None for a set given to the run."""
    return None if method.startswith(EXTERNAL_PREFIX) else get_method(method)


def method_label(method: str) -> str:
    """How a method is shown: ours by name, a set given to the run by its label."""
    own = registered_method(method)
    return method[len(EXTERNAL_PREFIX):] if own is None else own.label


@dataclass(frozen=True)
class SetKey:
    """One set of a run: ``ipc`` images per class made by ``method``."""

    method: str
    ipc: int

    def __post_init__(self) -> None:
        # (what makes the string form parse back to the same key)
        if not isinstance(self.method, str) or not self.method or "/" in self.method:
            raise ValueError(f"a set key's method must be a non-empty name without '/', got {self.method!r}")
        check_int("a set key's ipc", self.ipc)

    @classmethod
    def external(cls, label: str, ipc: int) -> "SetKey":
        """The key of the set given to the run as ``external: {label: ...}``."""
        return cls(external_method(label), ipc)

    @classmethod
    def parse(cls, text: str) -> "SetKey":
        """The key whose string form is ``text`` ("infer/ipc10")."""
        match = _SET_KEY.fullmatch(text)
        if match is None:
            raise ValueError(f"not a set key (METHOD/ipcN): {text!r}")
        return cls(match[1], int(match[2]))

    def __str__(self) -> str:
        return f"{self.method}/ipc{self.ipc}"

    @property
    def own(self) -> Optional[Method]:
        """The registered method that makes the set; None for a set given to the run."""
        return registered_method(self.method)

    @property
    def label(self) -> str:
        return method_label(self.method)

    @property
    def labelled_per_batch(self) -> bool:
        """Its students are labelled by the teachers on every batch (the set has no static labels)."""
        own = self.own
        return own is not None and own.student_labels == "per-batch"

    @property
    def made_as(self) -> "SetKey":
        """The set its students train on: its own, or (INFER+Dyn) another method's at the same ipc."""
        own = self.own
        return self if own is None else SetKey(own.set_method, self.ipc)

    @property
    def directory_name(self) -> str:
        """Its directory under the run's ``sets/``, shared with the method it trains on."""
        if self.own is None:
            raise ValueError(f"{self}: a set given to the run keeps its own directory")
        return _SET_DIRECTORY.format(method=self.made_as.method, ipc=self.ipc)

    @staticmethod
    def directory_pattern(method: str) -> str:
        """The glob pattern of what ``method`` makes under the run's ``sets/``: its sets'
        directories (:attr:`directory_name`) of every ipc, and what is begun beside them (a
        recovery checkpoint)."""
        return _SET_DIRECTORY.format(method=glob.escape(method), ipc="*")

    def run(self, seed: int) -> "RunKey":
        """The key of its student run with ``seed``."""
        return RunKey(self.method, self.ipc, seed)


@dataclass(frozen=True)
class RunKey:
    """One student run: trained with ``seed`` on the set ``(method, ipc)``."""

    method: str
    ipc: int
    seed: int

    def __post_init__(self) -> None:
        SetKey(self.method, self.ipc)  # (the same checks)
        check_int("a run key's seed", self.seed, minimum=0)

    @classmethod
    def parse(cls, text: str) -> "RunKey":
        """The key whose string form is ``text`` ("infer/ipc10/seed0")."""
        match = _RUN_KEY.fullmatch(text)
        if match is None:
            raise ValueError(f"not a run key (METHOD/ipcN/seedS): {text!r}")
        return cls(match[1], int(match[2]), int(match[3]))

    def __str__(self) -> str:
        return f"{self.set_key}/seed{self.seed}"

    @property
    def set_key(self) -> SetKey:
        return SetKey(self.method, self.ipc)

    @property
    def checkpoint_name(self) -> str:
        """Its per-epoch checkpoint's file name under the run's ``students/`` (no ':' in it)."""
        return f"{self.method.replace(':', '-')}-ipc{self.ipc}-seed{self.seed}.pt"
