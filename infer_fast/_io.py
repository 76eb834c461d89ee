"""Small file helpers shared by the long-running jobs."""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import io
import json
import os
import pickle
import re
import socket
import tempfile
import uuid
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Union

import torch
from torch import Tensor


PathLike = Union[str, "os.PathLike[str]"]

# the hidden siblings a writer of ``<name>`` makes beside it: ``.<name>.tmp-<tag>`` while it
# writes, ``.<name>.old-<tag>`` for a replaced set until the new one is in place (a writer
# killed meanwhile leaves them: output_lock removes them)
TEMP, REPLACED = "tmp", "old"
# a sibling's tag: a fresh random one (hexadecimal digits) or the writer's process id; a hidden
# file with any other tag is no writer's of infer-fast (the user's: never swept away)
_RANDOM_TAG_DIGITS = 12
_SIBLING_TAG = re.compile(rf"[0-9a-f]{{{_RANDOM_TAG_DIGITS}}}|[0-9]+")


def hidden_sibling(path: PathLike, kind: str, tag: Optional[str] = None) -> str:
    """``.<name>.<kind>-<tag>`` beside ``path`` (``tag``: a fresh random one by default, or
    the writer's process id)."""
    path = os.path.abspath(os.fspath(path))
    tag = tag if tag is not None else uuid.uuid4().hex[:_RANDOM_TAG_DIGITS]
    if not _SIBLING_TAG.fullmatch(tag):
        raise ValueError(f"a hidden sibling's tag is {_RANDOM_TAG_DIGITS} hexadecimal digits or a process id, got {tag!r}")
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{kind}-{tag}")


def hidden_sibling_pattern(name: str, kind: str) -> str:
    """The glob pattern (of a name in the same folder) of ``name``'s hidden siblings of ``kind``
    (``name``: a glob pattern itself, so escape a literal name)."""
    return f".{name}.{kind}-*"


def hidden_sibling_owner(path: PathLike, kind: str) -> Optional[str]:
    """The path whose hidden sibling of ``kind`` ``path`` is (``<name>`` beside
    ``.<name>.<kind>-<tag>``, the tag one :func:`hidden_sibling` makes), or None where ``path``
    is no such sibling."""
    head, entry = os.path.split(os.fspath(path))
    name, found, tag = entry[1:].rpartition(f".{kind}-")
    if not entry.startswith(".") or not found or not name or not _SIBLING_TAG.fullmatch(tag):
        return None
    return os.path.join(head, name)


def host_writer_tag() -> str:
    """``<host>-<pid>``: what names a temporary file in a folder other hosts may share (a cache
    under a networked home), so that only its own host ever takes its writer for dead
    (:func:`remove_dead_writers_files`)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def remove_dead_writers_files(folder: PathLike, marker: str) -> None:
    """Remove the files ``.<anything><marker><host>-<pid>`` in ``folder`` (:func:`host_writer_tag`)
    of this host whose process is gone: what a killed writer left (a decode's partial cache, a
    partial download). Another host's are never touched: its processes cannot be seen from here."""
    host = socket.gethostname()
    for leftover in glob.glob(os.path.join(glob.escape(os.fspath(folder)), f".*{glob.escape(marker + host)}-*")):
        pid = leftover.rpartition(f"{marker}{host}-")[2]
        if pid.isdigit() and not process_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):  # (another process removed it first)
                os.unlink(leftover)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is running (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


# The names of a recovery's files, derived from its set's: the checkpoint beside the set
# (distill/run.py), each rank's share beside that (distributed.shard_path), the folder of the
# finished batches' results and a results file in it (distill/checkpoints.py). Defined here, the
# module below every one of their writers and of output_lock, which sweeps their temporary files.
RECOVERY_CHECKPOINT_SUFFIX = ".recovery.pt"
RECOVERY_RESULTS_SUFFIX = ".results"


def recovery_checkpoint_path(out_dir: PathLike) -> Path:
    """Where the recovery of the set ``out_dir`` checkpoints: ``<out_dir>.recovery.pt`` beside
    it (and, under torchrun, each rank's share beside that: distributed.shard_path), the results
    of its finished batches in ``<out_dir>.recovery.pt.results/`` (:func:`recovery_results_dir`);
    all removed once the set is saved (distill.checkpoints.remove_recovery_checkpoints)."""
    out_dir = Path(out_dir)
    return out_dir.parent / (out_dir.name + RECOVERY_CHECKPOINT_SUFFIX)


def recovery_results_dir(checkpoint: PathLike) -> str:
    """The folder beside a recovery's checkpoint that holds the results of its finished batches,
    one file per batch written once (not the whole set of results rewritten after every
    batch: 7.5 GB each time for SRe2L on ImageNet-1k at ipc 50); every rank's, of any world
    size, and the checkpoints list which file holds which job."""
    return os.fspath(checkpoint) + RECOVERY_RESULTS_SUFFIX


def recovery_results_name(writer: PathLike, teacher: int, first_job: int, jobs: int) -> str:
    """The name (in :func:`recovery_results_dir`) of the file of a finished batch's results: the
    ``jobs`` jobs of ``teacher`` from index ``first_job``, written by the checkpoint ``writer``
    (the run's, or a rank's share): ``<writer's name>.m<m>-k<k>-n<n>.pt``."""
    return f"{os.path.basename(os.fspath(writer))}.m{teacher}-k{first_job}-n{jobs}.pt"


# The numbers in names derived from an output's name at their widest: a pid (Linux's pid_max is
# at most 2**22) and a rank, world size, teacher, job index or group size (under a million).
_WIDEST_PID, _WIDEST_NUMBER = str(2 ** 22), 10 ** 6 - 1


def longest_derived_name(name: str) -> str:
    """The longest file name a writer of the output ``name`` makes: the temporary file
    (write_atomically) of a results file (:func:`recovery_results_name`) of one rank's share
    (distributed.shard_path) of its recovery's checkpoint (:func:`recovery_checkpoint_path`),
    every number at its widest. The others (``.<name>.lock``, ``.<name>.tmp-<12 hex>``,
    ``.<name>.old-<12 hex>``, a checkpoint's temporary file) are shorter:
    tests/test_write_safety.py checks each of them against this one."""
    from .distributed import shard_path  # (here: _io, below every module, imports none of them at load)

    n = _WIDEST_NUMBER
    share = shard_path(recovery_checkpoint_path(name).name, n, n)
    return os.path.basename(hidden_sibling(recovery_results_name(share, n, n, n), TEMP, _WIDEST_PID))


class OutputPathError(OSError):
    """An output that cannot be written (read-only, not a directory, no space...), found
    before any work was done. Its message names the option and the path."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error: the path(s) and what went wrong."""
    if isinstance(exc, OutputPathError) or not exc.strerror:
        return str(exc)
    paths = " -> ".join(os.fsdecode(p) for p in (exc.filename, exc.filename2) if p is not None)
    return f"{paths}: {exc.strerror}" if paths else exc.strerror


def format_bytes(n: float) -> str:
    """``n`` bytes for people: "512 B", "7.8 KiB", "1.2 GiB"."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


# why a path whose bytes are not UTF-8 (a folder named in a legacy encoding, e.g. Latin-1 on a
# shared file system) cannot hold infer-fast's files: a set saved there could not be read back
NOT_UTF8_PATH = ("its path is not valid UTF-8 (a name in another encoding, e.g. Latin-1): safetensors, which reads "
                 "the tensor files, takes UTF-8 paths only; rename the folder, or choose another path")


def is_utf8_path(path: PathLike) -> bool:
    """Whether the bytes of ``path`` are valid UTF-8 text (what safetensors' readers need)."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def printable_path(path: PathLike) -> str:
    """``path`` for a message: bytes that are not UTF-8 shown as U+FFFD (printable anywhere)."""
    return os.fsencode(path).decode("utf-8", errors="replace")


# looks at an output's nearest existing folder, which another writer may remove meanwhile (an
# empty folder it made for its lock: output_lock)
_VANISHED_FOLDER_TRIES = 5


def check_writable(path: PathLike, what: str, kind: str = "file", need_bytes: int = 0) -> None:
    """Before any work: raise OutputPathError naming ``what`` and the path unless ``path``
    can be written. ``kind``: "file" (written beside itself and renamed into place: must not
    be a directory), "directory" (a directory written beside itself and renamed into place)
    or "inside" (files written into the directory). Where the writing happens (the nearest
    existing directory) must be a directory, not a file, where a file can be created (a
    probe file is made and removed: this catches read-only media and missing permissions)
    and, with ``need_bytes``, must have that much space free; the output's path must be
    valid UTF-8 (NOT_UTF8_PATH); the names made from the output's ("file", "directory": its
    temporary copies, lock, recovery checkpoints) must fit the file system's limit on a
    name. Nothing is left behind."""
    if kind not in ("file", "directory", "inside"):
        raise ValueError(f"kind must be 'file', 'directory' or 'inside', got {kind!r}")
    shown = os.fspath(path)
    target = os.path.abspath(shown)
    if kind == "file" and os.path.isdir(target):
        raise OutputPathError(errno.EISDIR, f"{what} {shown!r} is a directory, expected a file")
    if kind == "inside" and os.path.lexists(target) and not os.path.isdir(target):
        raise OutputPathError(errno.ENOTDIR, f"{what} {shown!r} is a file, expected a directory")
    if not is_utf8_path(target):  # (saved there, a set could not be read back: refused before the work)
        raise OutputPathError(errno.EILSEQ, f"{what} {printable_path(target)!r}: {NOT_UTF8_PATH}")
    # (another writer may remove the empty folder it made between a look and the probe: looked at again)
    for _ in range(_VANISHED_FOLDER_TRIES):
        existing = target if kind == "inside" else os.path.dirname(target)
        while not os.path.lexists(existing):  # the directories that writing the output would create
            existing = os.path.dirname(existing)
        try:
            if not os.path.isdir(existing):
                if not os.path.lexists(existing):
                    continue
                raise OutputPathError(errno.ENOTDIR, f"{what} {shown!r}: {existing} is a file, not a directory")
            if kind != "inside":  # (a run directory's own name is not extended: what it holds has names of its own)
                _check_name_length(target, what, shown, existing)
            fd, probe = tempfile.mkstemp(prefix=".infer-fast-write-check-", dir=existing)
            os.close(fd)
            os.unlink(probe)
            break
        except FileNotFoundError:
            continue
        except OutputPathError:
            raise
        except OSError as exc:
            raise OutputPathError(exc.errno, f"cannot write {what} {shown!r}: {existing}: {exc.strerror}") from None
    else:
        raise OutputPathError(errno.ENOENT, f"cannot write {what} {shown!r}: {existing}: {os.strerror(errno.ENOENT)}")
    if need_bytes:
        stat = os.statvfs(existing)
        free = stat.f_bavail * stat.f_frsize
        if free < need_bytes:
            raise OutputPathError(
                errno.ENOSPC, f"cannot write {what} {shown!r}: it needs about {format_bytes(need_bytes)}, "
                f"{existing} has {format_bytes(free)} free"
            )


def _check_name_length(target: str, what: str, shown: str, existing: str) -> None:
    """The names derived from the output's (longest_derived_name) fit the file system's limit
    on a name (in bytes of the encoded name): else the write of a recovery's results, or of
    the output itself, would fail with "File name too long" after the work."""
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255  # (the usual limit, where the file system does not say)
    name = os.path.basename(target)
    size, derived = len(os.fsencode(name)), len(os.fsencode(longest_derived_name(name)))
    if limit > 0 and derived > limit:
        raise OutputPathError(
            errno.ENAMETOOLONG, f"{what} {shown!r}: its name is too long ({size} bytes): the names made from it "
            f"(temporary copies, recovery checkpoints) take up to {derived - size} bytes more, and {existing} allows "
            f"{limit} bytes per name; choose a name of at most {limit - (derived - size)} bytes"
        )


# what reading a JSON or YAML text raises besides its own syntax errors: nesting deeper than
# Python's recursion allows the parser (a crafted file), then not the program's fault
TOO_DEEP = RecursionError


def parse_failure(exc: BaseException) -> str:
    """Why a JSON or YAML text could not be parsed, in a few words (its parser's message)."""
    return "nested too deeply to parse" if isinstance(exc, TOO_DEEP) else str(exc)


def check_input_file(path: PathLike, what: str) -> str:
    """``path`` as a string if it names an existing file; otherwise FileNotFoundError, or
    IsADirectoryError for a directory, each naming ``what``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path!r} is a directory, expected a file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    return path


_OS_ERROR_IN_MESSAGE = re.compile(r"\(os error (\d+)\)")


def safetensors_save(tensors: Dict[str, Tensor], path: PathLike, metadata: Optional[Dict[str, str]] = None) -> None:
    """safetensors' save_file, with its I/O failures raised as the OSError they are (the
    library reports them as SafetensorError text)."""
    from safetensors.torch import save_file

    try:
        save_file(tensors, os.fspath(path), metadata=metadata)
    except OSError:
        raise
    except Exception as exc:
        found = _OS_ERROR_IN_MESSAGE.search(str(exc))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), os.fspath(path)) from None
    os.chmod(path, default_file_mode())  # the library writes through a private (0600) temporary file


def default_file_mode() -> int:
    """The mode open() gives a new file under the process's umask (0644 under the usual 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def naming_errors(path: PathLike, temporary: Optional[PathLike] = None) -> Iterator[None]:
    """Inside, an OSError that names no file (a write, flush or fsync that failed: a full
    disk, an I/O error) names ``path``, and one naming ``temporary`` (where ``path`` is
    written before it is renamed into place) or a file in it names the same place under
    ``path``: the output the user asked for, not a temporary name gone by the time they read
    the message."""
    try:
        yield
    except OutputPathError:
        raise
    except OSError as exc:
        shown = _output_name(exc, os.fspath(path), temporary and os.fspath(temporary))
        if shown is None:
            raise
        raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), shown) from None


def _output_name(exc: OSError, path: str, temporary: Optional[str]) -> Optional[str]:
    """The name ``naming_errors`` gives ``exc``, or None to leave it as it is."""
    if exc.errno is None or exc.filename2 is not None:
        return None
    if exc.filename is None:
        return path
    name = os.fspath(exc.filename)
    if temporary and (name == temporary or name.startswith(temporary + os.sep)):
        return path + name[len(temporary):]
    return None


def write_atomically(path: PathLike, write: Callable[[str], None], fsync: bool = True) -> None:
    """``write`` a file next to the target, then rename it into place: a reader or a crash
    never sees a half-written file under ``path`` (the previous version stays until the
    rename), and a failed write (disk full...) removes its temporary file and names ``path``
    (naming_errors). ``fsync``: the data reaches the disk before the rename (checkpoints; not
    needed for a picture)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = hidden_sibling(path, TEMP, str(os.getpid()))
    with naming_errors(path, temporary=tmp):
        try:
            write(tmp)
            if fsync:
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


class _ErrorKeepingFile(io.RawIOBase):
    """A binary file torch.save writes through, keeping the OSError of a failed write (a full
    disk): torch.save's own writer turns it into an opaque RuntimeError."""

    def __init__(self, f):
        super().__init__()
        self.f, self.error = f, None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = exc
            raise


def save_atomic(obj: Any, path: str) -> None:
    """torch.save ``obj`` to ``path`` atomically, streamed to the file (no serialized copy in
    memory: a recovery checkpoint inside an ImageNet batch holds GBs of state); a full disk or
    read-only medium is an OSError naming the file, not torch's opaque RuntimeError."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            keeping = _ErrorKeepingFile(f)
            try:
                torch.save(obj, keeping)
            except RuntimeError:
                if keeping.error is not None:
                    raise keeping.error from None
                raise

    write_atomically(path, write)


def save_json_atomic(obj: Any, path: str) -> None:
    """``obj`` as indented JSON at ``path``, atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1)

    write_atomically(path, write)


def file_sha256(path: PathLike) -> str:
    """SHA-256 of a file's bytes, read in blocks (files of any size)."""
    with open(path, "rb") as f:
        return stream_sha256(f)


def stream_sha256(f) -> str:
    """SHA-256 of what is left to read of the open binary file ``f``, read in blocks."""
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 22), b""):
        h.update(block)
    return h.hexdigest()


def open_file_path(fd: int) -> str:
    """A path that opens the very file open as ``fd`` (even one renamed or removed since): for
    readers that take only a path (safetensors' load_file)."""
    return f"/proc/self/fd/{fd}" if os.path.isdir("/proc/self/fd") else f"/dev/fd/{fd}"


def content_digest(tensors: Iterable[Tensor]) -> str:
    """SHA-256 of the tensors' dtypes, shapes and values, in order: what a checkpoint records
    of the teachers (their state) or data its result depends on, so a resume with other ones
    is refused."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # (the buffer itself: no copy of a split's size)
    return h.hexdigest()


def model_digest(model: torch.nn.Module) -> str:
    """content_digest of a model's state (parameters and buffers, by name)."""
    state = model.state_dict()
    return content_digest(state[name] for name in sorted(state))


def read_checkpoint(path: str, format_name: str, what: str, version: int = 1) -> Dict[str, Any]:
    """A torch.save'd dict of ``format_name`` (weights_only), or a ValueError saying why not."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04" and head[:1] != b"\x80":  # neither torch.save's zip format nor a legacy pickle
        raise ValueError(f"{what} {path!r} is not a PyTorch checkpoint (a torch.save file); is it the right file?")
    obj = load_weights_only(path, what)
    if not isinstance(obj, dict) or obj.get("format") != format_name:
        raise ValueError(f"{path!r} is not an infer-fast {what}")
    if recorded_format_version(obj, repr(path), missing=0) > version:
        raise ValueError(f"{path!r} was written by a newer infer-fast (format {obj['format_version']}); upgrade infer-fast")
    return obj


def recorded_format_version(record: Dict[str, Any], where: str, missing: Optional[int] = None,
                            error: type = ValueError) -> int:
    """The format_version that the file ``where`` records in ``record``: an integer (``missing``
    where it records none, a file older than the entry; None: it must record one), else
    ``error`` in one line naming the file (a hand-edited or foreign file)."""
    version = record.get("format_version", missing)
    if not isinstance(version, int) or isinstance(version, bool):
        raise error(f"{where}: format_version must be an integer, got {version!r}")
    return version


def load_weights_only(path: PathLike, what: str) -> Any:
    """torch.load(weights_only=True) of ``path`` onto the CPU. A file it refuses (a pickle of
    other Python objects than tensors and plain containers: never unpickled here) or cannot
    read is a ValueError in one line naming ``what`` and the path (torch's own message runs
    over many lines)."""
    try:
        with warnings.catch_warnings():  # a pickle of another protocol: refused below, or read (nothing to warn about)
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{what} {os.fspath(path)!r}: not a weights-only checkpoint ({_unpickler_reason(exc)}); "
                         "infer-fast reads tensors and plain containers only") from None
    except Exception as exc:
        if _cut_short(path, exc):
            raise ValueError(f"{what} {os.fspath(path)!r} is truncated or corrupt (not a complete torch checkpoint: "
                             "its data ends early); copy or write it again") from None
        detail = (str(exc).strip().splitlines() or [""])[0]
        raise ValueError(f"{what} {os.fspath(path)!r} cannot be read ({type(exc).__name__}"
                         f"{': ' + detail if detail else ''})") from None


def _cut_short(path: PathLike, exc: Exception) -> bool:
    """Whether torch.load's failure ``exc`` on ``path`` comes of a file cut short: a zip
    checkpoint (torch.save's format) without its end record (torch then fails with an
    unrelated OSError, EINVAL), or a legacy pickle checkpoint whose data ran out."""
    if isinstance(exc, EOFError) or "unexpected EOF" in str(exc):
        return True
    try:
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"
        return zipped and not zipfile.is_zipfile(path)
    except OSError:
        return False


def _unpickler_reason(exc: Exception) -> str:
    """The line of torch's weights-only refusal that says what it met (e.g. "Unsupported
    global: GLOBAL argparse.Namespace was not an allowed global by default"), else its first
    line."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return first.split(". Please use", 1)[0].rstrip(".")
