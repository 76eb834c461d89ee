"""One writer per output: a distill, a relabel, an export or a run holds an exclusive lock on its
output (a set directory, an export, a run directory) for its whole duration, so a second one
started on the same output is refused at once, naming it and the process that holds it, instead
of both writing the same recovery checkpoint and set. Holding the lock, whatever an earlier
writer killed mid-save left beside the output (temporary siblings of an atomic write) is stale:
removed, except a replaced set that is all that is left of the output: put back.

The lock is ``flock`` on a hidden sibling file ``.<name>.lock`` (in a run directory: ``.lock``),
released by the kernel when the holder dies, so a kill never leaves the output locked, and
removed when the holder is done. Where waiting is the right answer (a teacher of a teachers/
folder shared between runs, a decode cache shared between evaluations), ``wait`` blocks until
the holder is done instead, saying once whom it waits for, and finds its work done."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import glob
import inspect
import itertools
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Set, TypeVar, Union, cast

from ._io import (REPLACED, TEMP, OutputPathError, check_writable, hidden_sibling_owner, hidden_sibling_pattern,
                  recovery_checkpoint_path, recovery_results_dir)
from .distributed import shard_pattern

PathLike = Union[str, os.PathLike]
# a function decorated by holds_output (its signature kept for type checkers)
Function = TypeVar("Function", bound=Callable[..., Any])
# what flock raises on a file system without it (Lustre mounted without -o flock, some FUSE and
# network file systems): no one can hold the lock there, so the output cannot be guarded
_NO_FLOCK = frozenset({errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL})


class OutputInUseError(ValueError):
    """Another process is writing the same output (the user's to resolve: wait, or choose another)."""


# what a refusal of an output in use advises besides waiting, unless its writer says otherwise
CHOOSE_ANOTHER = "choose another output"


class LockUnsupportedError(OutputPathError):
    """The file system of the output has no ``flock`` (nobody can hold a lock there)."""


INSIDE_LOCK = ".lock"  # the lock file in an output locked from inside (a run directory: lock_path)


def lock_path(output: PathLike, inside: bool = False) -> Path:
    """``.<name>.lock`` beside ``output``, or ``.lock`` in it with ``inside`` (a run directory,
    which may sit in a folder the user cannot write)."""
    output = Path(output).absolute()
    return output / INSIDE_LOCK if inside else output.parent / f".{output.name}.lock"


def stale_leftovers(output: PathLike, folders: Sequence[str] = (), inside: bool = False) -> List[str]:
    """What writers of ``output`` killed mid-save leave: the temporary and the replaced copies
    of a set saved atomically (``.<name>.tmp-*``, ``.<name>.old-*``), the temporary files of its
    recovery checkpoints, and, for a folder locked from ``inside`` (a checkpoints folder, a run
    directory), the temporary and replaced copies at its top, for a run directory (``folders``:
    the folders the run writes in it) anywhere in those folders too: never in other folders,
    nor inside any other output (what the user keeps there is not a writer's). Only hidden
    siblings named as infer-fast names them (_io.hidden_sibling: its tags) count."""
    output = Path(output).absolute()
    checkpoint = recovery_checkpoint_path(output)
    results = Path(recovery_results_dir(checkpoint))
    parent, name = glob.escape(str(output.parent)), glob.escape(output.name)
    patterns = [f"{parent}/{hidden_sibling_pattern(name, TEMP)}", f"{parent}/{hidden_sibling_pattern(name, REPLACED)}",
                f"{parent}/{hidden_sibling_pattern(glob.escape(checkpoint.name), TEMP)}",
                f"{parent}/{hidden_sibling_pattern(shard_pattern(checkpoint.name), TEMP)}"]  # (the ranks' shares)
    if not results.is_symlink():  # (never swept through a link)
        patterns.append(f"{glob.escape(str(results))}/{hidden_sibling_pattern('*', TEMP)}")
    found = {p for pattern in patterns for p in glob.glob(pattern)}
    if (inside or folders) and output.is_dir() and not output.is_symlink():  # (its top; a run directory's sets/...)
        found.update(_folder_entries(output, folders))
    return sorted(p for p in found if _is_leftover(p))


def _is_leftover(path: str) -> bool:
    return hidden_sibling_owner(path, TEMP) is not None or hidden_sibling_owner(path, REPLACED) is not None


def _folder_entries(output: Path, folders: Sequence[str]) -> List[str]:
    """The entries at the top of the folder ``output`` and anywhere in its ``folders``,
    found without following a symbolic link (a folder that is one, e.g. teachers shared between
    runs, is skipped whole: what is there is others' too) and without entering a hidden folder
    (a leftover itself); none whose real path is outside ``output``."""
    entries = [os.path.join(output, entry) for entry in os.listdir(output)]
    for folder in folders:
        top = output / folder
        if top.is_symlink() or not top.is_dir():
            continue
        for here, directories, files in os.walk(top, followlinks=False):
            entries += [os.path.join(here, entry) for entry in directories + files]
            directories[:] = [d for d in directories if not d.startswith(".")]
    inside = os.path.realpath(output) + os.sep
    return [entry for entry in entries if os.path.realpath(entry).startswith(inside)]


def _sweep(output: Path, folders: Sequence[str] = (), inside: bool = False) -> None:
    """Put back the sets an interrupted overwrite left missing (:func:`_put_back_replaced`), then
    remove the other leftovers (:func:`stale_leftovers`)."""
    leftovers = stale_leftovers(output, folders, inside)
    put_back = _put_back_replaced(output, leftovers)
    for leftover in leftovers:
        if leftover not in put_back:
            _remove_leftover(leftover)


def _put_back_replaced(output: Path, leftovers: List[str]) -> Set[str]:
    """A set overwritten by a writer killed between its two renames is missing, its previous
    version whole at ``.<name>.old-*`` (the new one at ``.<name>.tmp-*``): the previous one is
    renamed back (storage.disk.restore_replaced), saying so, before the leftovers (the new one
    among them) go, so a kill never loses the set; a rerun makes the new one again. ``output``
    and the sets in it (a run directory's) alike; returns where the sets put back were."""
    from .storage.disk import restore_replaced

    owners = {Path(output).absolute()} | {Path(o) for o in (hidden_sibling_owner(p, REPLACED) for p in leftovers) if o}
    put_back = set()
    for owner in sorted(owners):
        old = restore_replaced(owner)
        if old is not None:
            print(f"{owner}: put back the set that an interrupted overwrite had left at {old}", flush=True)
            put_back.add(os.fspath(old))
    return put_back


def _remove_leftover(path: str) -> None:
    """Remove a killed writer's ``path``; a replaced set (``.<name>.old-*``) first gives back to
    the set ``<name>`` beside it what the user kept beside the set's files (a kill came between
    the swap and that move: storage.disk.keep_foreign), or is kept when it cannot."""
    owner = hidden_sibling_owner(path, REPLACED)
    if owner is not None and os.path.isdir(owner) and os.path.isdir(path):
        from .storage.disk import keep_foreign

        try:
            keep_foreign(Path(path), Path(owner))
        except ValueError:  # (its message names where they stay: kept, not removed)
            return
    _remove(path)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@contextlib.contextmanager
def output_lock(output: PathLike, what: str = "output", inside: bool = False,
                folders: Sequence[str] = (), wait: bool = False,
                instead: Optional[str] = CHOOSE_ANOTHER) -> Iterator[None]:
    """Hold the lock of ``output`` (which need not exist yet; with ``inside`` a directory made
    if needed, the lock file in it) until the block ends; refuse with OutputInUseError if
    another process holds it (advising to wait for it, or ``instead``: what else the caller
    can do, e.g. "choose another --out"; None where there is nothing else, as for a set
    relabelled in place), or with ``wait`` wait for it to let go (a line on stderr, once,
    names the holder: a waiting process is not a hung one). Removes the stale leftovers once
    held (with ``folders``, a run directory's: those in the folders it writes too). On a file
    system without flock: LockUnsupportedError."""
    check_writable(output, what, kind="inside" if inside else "directory")  # (a file in the way is named)
    path = lock_path(output, inside)
    made: List[Path] = []  # the folders made for the lock file: removed when let go, where still empty
    try:
        with _locked(path, output, what, made, wait, instead) as fd:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"process {os.getpid()}".encode(), 0)
            _sweep(Path(output), folders, inside)
            yield
    finally:
        _remove_empty(made)


# tries at opening a lock file whose folder other writers make and remove meanwhile
_LOCK_OPEN_TRIES = 5


def _open_lock_file(path: Path, made: List[Path]) -> int:
    """os.open of the lock file ``path``, its folder made where missing (with the missing folders
    above it: added to ``made``, deepest first), a few tries: other writers locking outputs in
    the same new folder make it, and remove it as they let their locks go, at the same time."""
    for attempt in itertools.count(1):
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except (FileNotFoundError, NotADirectoryError):
            if attempt == _LOCK_OPEN_TRIES:
                raise
        with contextlib.suppress(FileNotFoundError):  # (a folder above removed meanwhile: tried again)
            _make_folders(path.parent, made)


def _make_folders(folder: Path, made: List[Path]) -> None:
    """Make ``folder`` and whichever of its ancestors are missing; those made here (not one
    another process made meanwhile) are added to ``made``, deepest first."""
    missing = list(itertools.takewhile(lambda p: not p.is_dir(), (folder, *folder.parents)))
    for parent in reversed(missing):
        with contextlib.suppress(FileExistsError):  # (made meanwhile: not ours; a file in the way: below)
            parent.mkdir()
            made.insert(0, parent)
    folder.mkdir(parents=True, exist_ok=True)  # (raises what is in the way, as before)


def _remove_empty(folders: List[Path]) -> None:
    """Remove those of ``folders`` (deepest first) that are empty: a refused or failed writer
    leaves no folders of a mistyped output behind; what holds anything stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:  # (made twice: another writer had removed it meanwhile)
            continue
        except OSError:  # (not empty: kept, and so are the folders above it)
            return


@contextlib.contextmanager
def _locked(path: Path, output: PathLike, what: str, made: List[Path], wait: bool,
            instead: Optional[str]) -> Iterator[int]:
    """The descriptor of the lock file ``path``, flock held (:func:`output_lock`); the folders
    made for it are added to ``made``."""
    said_waiting = False
    while True:
        fd = _open_lock_file(path, made)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                if not wait:
                    otherwise = f", or {instead}" if instead else ""
                    raise OutputInUseError(f"{what} {output} is being written by {holder}: wait for it to "
                                           f"finish{otherwise}") from None
                if not said_waiting:
                    print(f"waiting for {holder} to finish writing {what} {output}", file=sys.stderr, flush=True)
                    said_waiting = True
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in _NO_FLOCK:
                raise
            with contextlib.suppress(FileNotFoundError):  # (nobody can hold a lock there: ours to remove)
                os.unlink(path)
            raise LockUnsupportedError(exc.errno, f"cannot lock {what} {output}: the file system of {path} does not "
                                       f"support flock ({exc.strerror}); on Lustre mount it with -o flock, or put the "
                                       "output on another file system") from None
        except BaseException:  # (refused, or interrupted while waiting)
            os.close(fd)
            raise
        try:  # the file we locked may have been removed by the holder we waited behind: lock the current one
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield fd
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)  # (closing releases the flock)


@contextlib.contextmanager
def job_output_lock(output: PathLike, what: str = "output", inside: bool = False,
                    every_rank: bool = True, folders: Sequence[str] = (),
                    instead: Optional[str] = CHOOSE_ANOTHER) -> Iterator[None]:
    """:func:`output_lock`, held by rank 0 of a torchrun job for all its ranks (they share the
    output). ``every_rank``: every rank enters this (a recovery split across them, a run); then
    a refusal (another writer, an output that cannot be written) stops every rank with rank 0's
    error, instead of leaving the others waiting for it in their next collective. Else rank 0
    alone makes the output (the others never get here: no collective). ``instead``: what a
    refusal advises besides waiting (:func:`output_lock`)."""
    from .distributed import all_gather_object, rank_and_world

    rank, world = rank_and_world()
    if not every_rank:
        world = 1
    with contextlib.ExitStack() as held:
        refused = None
        if rank == 0:
            try:
                held.enter_context(output_lock(output, what, inside, folders, instead=instead))
            except Exception as exc:  # noqa: BLE001 - every rank raises it, below
                refused = exc
        if world > 1:
            refused = all_gather_object(refused)[0]
        if refused is not None:
            raise refused
        yield


def holds_output(parameter: str, what: str = "output directory", every_rank: bool = True,
                 instead: Optional[str] = CHOOSE_ANOTHER) -> Callable[[Function], Function]:
    """Decorator: the function runs holding the lock of its argument ``parameter``
    (:func:`job_output_lock`: rank 0 of a torchrun job holds it for every rank; ``every_rank``
    False for a function that rank 0 alone runs; ``instead``: what a refusal advises besides
    waiting, None for an argument rewritten in place)."""

    def decorate(function: Function) -> Function:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            with job_output_lock(signature.bind(*args, **kwargs).arguments[parameter], what, every_rank=every_rank,
                                 instead=instead):
                return function(*args, **kwargs)

        return cast(Function, wrapper)

    return decorate
