"""The on-disk format: the manifest, atomic saves, loads that verify everything.

Writes are atomic: everything goes into a temporary directory next to the target (tensor
files first, manifest last, all fsynced), which is then renamed into place, so a crash
never leaves a half-written set under the target name. Loads verify the manifest schema and
format version, the SHA-256 of every tensor file and every tensor's name, shape and dtype,
and raise :class:`DistilledSetError` (a ValueError) naming the file and the problem. The
layout of the files is described in :mod:`infer_fast.storage`.
"""
from __future__ import annotations

import datetime
import errno
import glob
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .._io import (NOT_UTF8_PATH, REPLACED, TEMP, TOO_DEEP, PathLike, check_writable, file_sha256, format_bytes,
                   hidden_sibling, hidden_sibling_pattern, is_utf8_path, naming_errors, open_file_path, parse_failure,
                   printable_path, recorded_format_version, safetensors_save, stream_sha256)
from ..data.pixels import valid_range
from ..plugins import PLUGINS_HINT
from ..progress import say
from .distilled_set import (
    DistilledSet, DistilledSetError, OutputExistsError, check_dataset_classes, check_method_records, check_records,
    dtype_name, known_set_methods, set_layout,
)

FORMAT_NAME = "infer-fast-distilled"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_ALLOWANCE = 64 << 10  # room for manifest.json and the tensor files' headers when checking free space
IMAGE_ORDER = (
    "INFER: natural images first, i = k*C + c; then composed images, i = K*C + g*C + c, "
    "composed = clamp(natural[ufc_index[g], c] + ufc[g], (0-mean)/std, (1-mean)/std); hard label c. "
    "Baselines: i indexes images, hard label labels[i]."
)

# file -> (required tensors, optional tensors), per layout
_INFER_FILES = {
    "natural.safetensors": (("natural",), ()),
    "ufc.safetensors": (("ufc", "ufc_index", "ufc_teacher"), ()),
    "labels.safetensors": ((), ("natural_labels", "ufc_labels")),
}
_BASELINE_FILES = {
    "images.safetensors": (("images", "labels"), ()),
    "labels.safetensors": (("soft_labels",), ()),
}
_OPTIONAL_FILES = ("labels.safetensors",)
_DTYPES = {
    "uint8": torch.uint8, "int64": torch.int64, "float16": torch.float16,
    "float32": torch.float32,
}


# --------------------------------------------------------------------------------------
# save
# --------------------------------------------------------------------------------------

def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _owned(t: Tensor, seen: set) -> Tensor:
    """A contiguous tensor that owns its storage (safetensors refuses shared/partial views)."""
    t = t.contiguous()
    storage = t.untyped_storage()
    if t.storage_offset() or storage.nbytes() != t.numel() * t.element_size() or storage.data_ptr() in seen:
        t = t.clone()
    if t.numel():
        seen.add(t.untyped_storage().data_ptr())
    return t


def _write_tensor_file(path: Path, tensors: Dict[str, Tensor]) -> Dict[str, Any]:
    """Write one safetensors file, fsync it, and return its manifest entry."""
    seen: set = set()
    safetensors_save({n: _owned(t, seen) for n, t in tensors.items()}, path, metadata={"format": FORMAT_NAME})
    _fsync_path(path)
    return {
        "sha256": file_sha256(path),
        "bytes": path.stat().st_size,
        "tensors": {n: {"shape": list(t.shape), "dtype": dtype_name(t.dtype)} for n, t in tensors.items()},
    }


def _toolkit_version() -> str:
    from .. import __version__

    return __version__


def build_manifest(ds: DistilledSet, files: Dict[str, Any]) -> Dict[str, Any]:
    """The manifest of ``ds`` given the entries of its written tensor files. Stamped ``created``
    now, or, for a set that records its creation (one loaded: written back by relabel), that
    time kept and ``modified`` now (optional: a manifest without it reads as before)."""
    lo, hi = valid_range(ds.mean, ds.std)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "toolkit_version": _toolkit_version(),  # (this writer's)
        **({"created": now} if ds.created is None else {"created": ds.created, "modified": now}),
        "method": ds.method,
        "dataset": ds.dataset,
        "num_classes": ds.num_classes,
        "class_names": list(ds.class_names) if ds.class_names is not None else None,
        "channels": ds.channels,
        "image_size": list(ds.image_size),
        "normalization": {
            "mean": list(ds.mean),
            "std": list(ds.std),
            "uint8": "x = (p / 255 - mean) / std",
            "valid_range": {"lo": [float(v) for v in lo], "hi": [float(v) for v in hi]},
        },
        "hyperparameters": ds.hyperparameters,
        "teachers": ds.teachers,
        "budget": ds.budget,
        "seed": ds.seed,
        "full_train_size": ds.full_train_size,
        "counts": _counts(ds),
        "image_order": IMAGE_ORDER,
        "files": files,
        **({"request": ds.request} if ds.request is not None else {}),
    }


def _counts(ds: DistilledSet) -> Dict[str, Any]:
    """The manifest's ``counts`` of ``ds`` (written, and checked on load)."""
    return {
        "stored_images": ds.num_stored_images(),
        "training_images": ds.num_training_images(),
        **({"K": ds.K, "G": ds.G} if ds.is_infer else {}),
        "soft_labels": ds.has_soft_labels,
    }


def _check_counts(manifest: Dict[str, Any], ds: DistilledSet, path: Path) -> None:
    """The manifest's ``counts`` (where recorded) are those of the tensors it lists."""
    recorded = manifest.get("counts")
    if recorded is None:
        return
    if not isinstance(recorded, dict):
        raise DistilledSetError(f"{path}: 'counts' must be an object, got {recorded!r}")
    for key, value in _counts(ds).items():
        if key in recorded and (recorded[key] != value or type(recorded[key]) is not type(value)):
            raise DistilledSetError(f"{path}: counts.{key} records {recorded[key]!r}, the tensor files hold {value!r}")


def _is_distilled_dir(path: Path) -> bool:
    try:
        return json.loads((path / MANIFEST).read_text(encoding="utf-8")).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


def _cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def complete_manifest(directory: PathLike) -> Optional[Dict[str, Any]]:
    """The manifest of ``directory`` if it holds a whole set (its manifest reads, and every file
    it lists is there at its recorded size), else None. Not hashed: cheap enough for the output
    lock's sweep and the checks before a run, on a set of any size."""
    directory = Path(directory)
    try:
        manifest = read_manifest(directory)
        sizes = {fname: (directory / fname).stat().st_size for fname in manifest["files"]}
    except (OSError, ValueError):
        return None
    whole = all(entry.get("bytes", sizes[fname]) == sizes[fname] for fname, entry in manifest["files"].items())
    return manifest if whole else None


def refuse_symlink(directory: Path) -> None:
    """A set (or an export) is written beside its name and renamed into place, which would
    replace a symbolic link, not write where it leads (and a link to nothing reads as missing
    to one check and as taken to another, after the work): an output directory that is a link
    is refused, before any work, the same whether it leads somewhere or not."""
    if directory.is_symlink():
        leads = "" if directory.exists() else ", which does not exist"
        raise OutputExistsError(f"{directory} is a symbolic link (to {os.readlink(directory)}{leads}): outputs are "
                                "not written through links; remove it or choose another output directory")


def restore_replaced(directory: PathLike) -> Optional[Path]:
    """Where ``directory`` is missing and an overwrite killed between its two renames left the
    previous set whole at ``.<name>.old-*``, rename it back (the new set, which a rerun makes
    again, is left to the leftover sweep); returns where it was, or None. Run holding the
    output's lock (output_lock), before its leftovers are removed."""
    directory = Path(directory).absolute()
    old = None if os.path.lexists(directory) else _replaced_set(directory)
    if old is not None:
        os.rename(old, directory)
        _fsync_path(directory.parent)
    return old


def _replaced_set(directory: Path) -> Optional[Path]:
    """The whole set an interrupted overwrite of ``directory`` left at ``.<name>.old-*``, if any."""
    parent = directory.absolute().parent
    if not parent.is_dir():
        return None
    pattern = hidden_sibling_pattern(glob.escape(directory.name), REPLACED)
    for old in sorted(parent.glob(pattern)):  # (one, unless kills came one after another)
        if old.is_dir() and not old.is_symlink() and complete_manifest(old) is not None:
            return old
    return None


def keep_foreign(old: Path, directory: Path) -> None:
    """Move what the user put in a set's directory (notes, an export: any entry that is not
    one of a set's own files) from the replaced set ``old`` into the new one: an overwrite
    replaces the set, not the directory. On failure ``old`` is kept (nothing is lost). (A writer
    killed before this leaves them in ``old``, a ``.<name>.old-*`` leftover: the next writer's
    lock moves them back the same way before it removes the leftover, output_lock.)"""
    own = {MANIFEST, *_INFER_FILES, *_BASELINE_FILES}
    moved = False
    for entry in sorted(old.iterdir()):
        if entry.name in own:
            continue
        try:
            if os.path.lexists(directory / entry.name):  # (never over something of the same name)
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST))
            os.rename(entry, directory / entry.name)
        except OSError as exc:
            raise DistilledSetError(f"{directory}: the set was replaced, but {entry.name} could not be moved back "
                                    f"into it ({exc.strerror}): it is kept in {old}") from None
        moved = True
    if moved:
        _fsync_path(directory)


def _saving_line(ds: DistilledSet, directory: Path) -> str:
    """save_distilled's line: a set replacing itself with new soft labels (relabel, or a run
    relabelling the set it has just saved) says "relabelled", not "saving" a second time. New
    labels: ``ds`` records a relabel (relabel.relabel_record) the set on disk does not."""
    what = f"{ds.method} set ({ds.num_stored_images()} stored images, {format_bytes(ds.nbytes())}) -> {directory}"
    labelled_by = ds.hyperparameters.get("relabel")
    if labelled_by is not None and _is_distilled_dir(directory):
        on_disk = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        hyper = on_disk.get("hyperparameters")
        if not isinstance(hyper, dict) or hyper.get("relabel") != labelled_by:
            return f"relabelled {what}"
    return f"saving {what}"


def save_distilled(ds: DistilledSet, directory: PathLike, overwrite: bool = False, progress: bool = False) -> Path:
    """Write ``ds`` to ``directory`` atomically; returns the directory.

    Everything is written into a temporary directory next to the target (tensor files
    first, manifest.json last, each fsynced), then renamed into place. An existing
    directory is refused unless ``overwrite=True``; then it must be an infer-fast distilled
    set (or empty), and it is replaced by renaming it aside, renaming the new set in, moving
    back what the old directory held beside the set's own files (notes, an export) and
    deleting the old set. A set loaded and written back (relabel) keeps its ``created``
    (build_manifest). Before writing, the parent must be writable with room for the set
    (OutputPathError otherwise); a failed write leaves nothing behind. With ``progress`` a
    line says where the set goes and its size before the write (long for a large set: every
    file is written, fsynced and hashed).
    """
    ds.validate()
    directory = Path(directory)
    check_writable(directory, "output directory", kind="directory", need_bytes=ds.nbytes() + MANIFEST_ALLOWANCE)
    refuse_symlink(directory)
    if directory.exists():
        if not overwrite:
            raise OutputExistsError(f"{directory} already exists (pass overwrite=True to replace it)")
        if not directory.is_dir():
            raise DistilledSetError(f"refusing to replace {directory}: it is not a directory")
        if any(directory.iterdir()) and not _is_distilled_dir(directory):
            raise DistilledSetError(f"refusing to replace {directory}: it is not an infer-fast distilled set")
    if progress:
        say(_saving_line(ds, directory))
    parent = directory.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(hidden_sibling(directory, TEMP))
    tmp.mkdir()
    with naming_errors(directory, temporary=tmp):  # a full disk names the set's file, not the temporary one
        try:
            files = {}
            for fname, tensors in ds.tensor_files().items():
                files[fname] = _write_tensor_file(tmp / fname, tensors)
            manifest = build_manifest(ds, files)
            with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=2, allow_nan=False)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            _fsync_path(tmp)
            if overwrite and directory.exists():
                _swap(tmp, directory)
            else:
                _rename_new(tmp, directory)
        except BaseException:
            _cleanup(tmp)
            raise
    return directory


def _rename_new(tmp: Path, directory: Path) -> None:
    """Rename the new set at ``tmp`` to ``directory``, which was not there when checked. One
    that appeared since (another writer's set) is never replaced: refused, as the check
    refuses it (check_new_output's words)."""
    try:
        os.rename(tmp, directory)
    except OSError:
        if os.path.lexists(directory):  # (EEXIST, ENOTEMPTY; ENOTDIR for a file)
            raise OutputExistsError.new_output_taken(directory) from None
        raise
    _fsync_path(directory.absolute().parent)


def _swap(tmp: Path, directory: Path) -> None:
    """Replace the set ``directory`` with the new one at ``tmp``: the old set renamed aside, the
    new one in, the user's files moved over (keep_foreign), the old set deleted. A failure or
    Ctrl-C between the two renames puts the old set back before the new one is cleaned up:
    never neither (a SIGKILL there leaves both: the next writer's lock puts the old one back,
    restore_replaced)."""
    old = Path(hidden_sibling(directory, REPLACED))
    try:
        os.rename(directory, old)
        os.rename(tmp, directory)
    except BaseException:  # (an interrupt may land just after either rename: what is where says how far it got)
        if os.path.lexists(old) and not os.path.lexists(directory):
            os.rename(old, directory)
        raise
    _fsync_path(directory.absolute().parent)  # the new set is in place before the old one goes
    keep_foreign(old, directory)
    _cleanup(old)


# --------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------

def _missing_hint(directory: Path) -> str:
    old = _replaced_set(directory)
    if old is None:
        return ""
    return (f" (an interrupted overwrite left the previous set at {old}: the next relabel of {directory} puts it "
            "back, or rename it back yourself)")


def check_safetensors_path(path: PathLike) -> None:
    """A DistilledSetError in one line where safetensors cannot read ``path``: its bytes are
    not UTF-8 (NOT_UTF8_PATH), instead of the library's failure on each of its files."""
    if not is_utf8_path(path):
        raise DistilledSetError(f"{printable_path(path)}: {NOT_UTF8_PATH}")


def _check_set_directory(directory: Path) -> None:
    """A DistilledSetError where ``directory`` is missing or not a directory."""
    if not directory.exists():
        raise DistilledSetError(f"{directory}: no such distilled set{_missing_hint(directory)}")
    if not directory.is_dir():
        raise DistilledSetError(f"{directory}: not a directory (a distilled set is a directory with {MANIFEST})")


def _open_in(directory: Path, name: str, dir_fd: Optional[int]):
    """The file ``name`` of ``directory`` opened for reading: through ``dir_fd``, the directory
    opened once, where given (every file of one version of a set, whatever is renamed meanwhile)."""
    if dir_fd is None:
        return open(directory / name, "rb", buffering=0)
    return open(name, "rb", buffering=0, opener=lambda entry, flags: os.open(entry, flags, dir_fd=dir_fd))


def read_manifest(directory: PathLike, dir_fd: Optional[int] = None) -> Dict[str, Any]:
    """Parse and schema-check ``directory/manifest.json`` (no tensor file is read); with
    ``dir_fd`` (``directory`` opened: load_distilled), read through it."""
    directory = Path(directory)
    err = DistilledSetError
    if dir_fd is None:  # (else it was checked when opened)
        _check_set_directory(directory)
    path = directory / MANIFEST
    try:
        with _open_in(directory, MANIFEST, dir_fd) as f:
            text = f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise err(f"{path}: missing manifest (not a distilled set, or an incomplete write)") from None
    try:
        manifest = json.loads(text.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, TOO_DEEP) as exc:
        raise err(f"{path}: not valid JSON ({parse_failure(exc)})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise err(f"{path}: not an infer-fast distilled-set manifest (format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    version = recorded_format_version(manifest, str(path), error=err)
    if version != FORMAT_VERSION:
        newer = " (written by a newer infer-fast: upgrade)" if version > FORMAT_VERSION else ""
        raise err(f"{path}: unknown format version {version}; this infer-fast reads format version {FORMAT_VERSION}{newer}")

    def need(key, types, what):
        if key not in manifest:
            raise err(f"{path}: missing key {key!r}")
        value = manifest[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,))):
            raise err(f"{path}: {key!r} must be {what}, got {value!r}")
        return value

    method = need("method", str, "a string")
    if set_layout(method) is None:
        raise err(f"{path}: unknown method {method!r}; this infer-fast knows {', '.join(known_set_methods())} "
                  f"({PLUGINS_HINT})")
    need("dataset", str, "a string")
    need("num_classes", int, "an integer")
    need("channels", int, "an integer")
    size = need("image_size", list, "[H, W]")
    if len(size) != 2 or not all(isinstance(v, int) for v in size):
        raise err(f"{path}: 'image_size' must be [H, W], got {size!r}")
    norm = need("normalization", dict, "an object")
    for key in ("mean", "std"):
        if not isinstance(norm.get(key), list) or not all(isinstance(v, (int, float)) for v in norm[key]):
            raise err(f"{path}: normalization.{key} must be a list of numbers")
    hyperparameters = need("hyperparameters", dict, "an object")
    need("teachers", list, "a list")
    need("budget", dict, "an object")
    try:  # (the checks of a set in memory, here before any tensor file is read)
        check_records(manifest["budget"], manifest.get("toolkit_version"), manifest.get("created"))
        check_method_records(method, hyperparameters)
        check_dataset_classes(manifest["dataset"], manifest["num_classes"])
    except DistilledSetError as exc:
        raise err(f"{path}: {exc}") from None
    for key in ("seed", "full_train_size"):
        if manifest.get(key) is not None and (not isinstance(manifest[key], int) or isinstance(manifest[key], bool)):
            raise err(f"{path}: {key!r} must be an integer or null, got {manifest[key]!r}")
    files = need("files", dict, "an object")
    layout = _INFER_FILES if set_layout(method) == "compensated" else _BASELINE_FILES
    for fname in layout:
        if fname not in files and fname not in _OPTIONAL_FILES:
            raise err(f"{path}: lists no {fname} (required for method {method!r})")
    for fname, entry in files.items():
        if fname not in layout:
            raise err(f"{path}: unexpected file {fname!r} for method {method!r} (expected {', '.join(layout)})")
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not isinstance(entry.get("tensors"), dict):
            raise err(f"{path}: entry for {fname} needs 'sha256' and 'tensors'")
        required, optional = layout[fname]
        names = set(entry["tensors"])
        missing = set(required) - names
        extra = names - set(required) - set(optional)
        if missing or extra or not names:
            raise err(f"{path}: {fname} must hold tensors {list(required) or list(optional)}, lists {sorted(names)}")
        for name, info in entry["tensors"].items():
            if (not isinstance(info, dict) or not isinstance(info.get("shape"), list)
                    or not all(isinstance(v, int) and v >= 0 for v in info["shape"]) or info.get("dtype") not in _DTYPES):
                raise err(f"{path}: {fname}: tensor {name!r} needs 'shape' (list of ints) and 'dtype' (one of {list(_DTYPES)})")
    return manifest


def check_compatible(manifest, where, expected_dataset, expected_num_classes, expected_image_size=None):
    """Refuse (DistilledSetError naming ``where``) a set whose manifest (or {"dataset",
    "num_classes"}) is of another dataset / class count / resolution than the expected ones
    (None: not checked)."""
    if expected_dataset is not None and manifest["dataset"].lower() != str(expected_dataset).lower():
        raise DistilledSetError(f"{where}: incompatible set: distilled from dataset {manifest['dataset']!r}, expected {expected_dataset!r}")
    if expected_num_classes is not None and manifest["num_classes"] != int(expected_num_classes):
        raise DistilledSetError(f"{where}: incompatible set: {manifest['num_classes']} classes, expected {expected_num_classes}")
    if expected_image_size is not None:
        want = [expected_image_size] * 2 if isinstance(expected_image_size, int) else list(expected_image_size)
        if manifest["image_size"] != want:
            raise DistilledSetError(f"{where}: incompatible set: images {manifest['image_size']}, expected {want}")


def verify_files(directory: PathLike, manifest: Optional[Dict[str, Any]] = None) -> Dict[str, str]:
    """Check every tensor file's presence, size and SHA-256 against the manifest.

    Returns {file: sha256}; raises DistilledSetError naming the first bad file."""
    directory = Path(directory)
    manifest = read_manifest(directory) if manifest is None else manifest
    out = {}
    for fname, entry in manifest["files"].items():
        path = directory / fname
        if not path.is_file():
            raise _missing_file(path)
        _check_size(path, path.stat().st_size, entry)
        out[fname] = _checked_digest(path, file_sha256(path), entry)
    return out


def _missing_file(path: Path) -> DistilledSetError:
    return DistilledSetError(f"{path}: missing tensor file (listed in {MANIFEST})")


def _check_size(path: Path, size: int, entry: Dict[str, Any]) -> None:
    if "bytes" in entry and size != entry["bytes"]:
        raise DistilledSetError(f"{path}: size {size} bytes, {MANIFEST} records {entry['bytes']} (truncated or replaced)")


def _checked_digest(path: Path, digest: str, entry: Dict[str, Any]) -> str:
    """``digest``, the SHA-256 of the tensor file ``path``, if it is the one its manifest ``entry`` records."""
    if digest != entry["sha256"]:
        raise DistilledSetError(f"{path}: SHA-256 checksum mismatch (file is corrupt or was modified): "
                                f"{digest[:16]}... != {entry['sha256'][:16]}... recorded in {MANIFEST}")
    return digest


# a load reads a set again where a writer swapped a new version in while it was read (relabel
# rewrites a set in place): this many tries, a pause between them, then it says so
_READ_TRIES = 4
_READ_PAUSE_S = 0.2


class _SetChanged(Exception):
    """The set's directory was swapped for another (a writer's new version) while it was read."""


def load_distilled(
    directory: PathLike,
    expected_dataset: Optional[str] = None,
    expected_num_classes: Optional[int] = None,
    expected_image_size: Union[None, int, Sequence[int]] = None,
    verify_checksums: bool = True,
) -> DistilledSet:
    """Load and verify a distilled set (manifest schema + format version, SHA-256 of every
    tensor file, tensor names/shapes/dtypes against the manifest, then field consistency).

    ``expected_*`` refuse a set of another dataset / class count / resolution. Every
    problem raises :class:`DistilledSetError` (a ValueError) naming the file. A set rewritten
    meanwhile (relabel swaps in a new version) is read whole, one version or the other, never
    files of both: read again where it changed under the read, a few times, then refused.
    """
    return load_with_manifest(directory, expected_dataset, expected_num_classes, expected_image_size,
                              verify_checksums)[0]


def load_with_manifest(directory: PathLike, expected_dataset: Optional[str] = None,
                       expected_num_classes: Optional[int] = None,
                       expected_image_size: Union[None, int, Sequence[int]] = None,
                       verify_checksums: bool = True) -> Tuple[DistilledSet, Dict[str, Any]]:
    """:func:`load_distilled`, and the manifest of the very version it read (a manifest read
    again by path could be a newer version's: a report of one set must not mix the two)."""
    directory = Path(directory)
    expected = (expected_dataset, expected_num_classes, expected_image_size)
    for attempt in range(1, _READ_TRIES + 1):
        try:
            manifest, tensors = _read_one_version(directory, expected, verify_checksums)
            break
        except _SetChanged:
            if attempt == _READ_TRIES:
                _check_set_directory(directory)  # (gone for good: an overwrite killed between its renames)
                raise DistilledSetError(f"set {directory} changed while being read (another process is writing it): "
                                        "retry when it is done") from None
            time.sleep(_READ_PAUSE_S * attempt)
    norm = manifest["normalization"]
    try:
        ds = DistilledSet(
            method=manifest["method"], dataset=manifest["dataset"], num_classes=manifest["num_classes"],
            channels=manifest["channels"], image_size=tuple(manifest["image_size"]),
            mean=norm["mean"], std=norm["std"], class_names=manifest.get("class_names"),
            hyperparameters=manifest["hyperparameters"], teachers=manifest["teachers"], budget=manifest["budget"],
            seed=manifest.get("seed"), full_train_size=manifest.get("full_train_size"),
            toolkit_version=manifest.get("toolkit_version"), created=manifest.get("created"),
            request=manifest.get("request"), **tensors,
        )
        ds.validate()
    except DistilledSetError as exc:
        raise DistilledSetError(f"{directory}: inconsistent distilled set: {exc}") from None
    _check_counts(manifest, ds, directory / MANIFEST)
    return ds, manifest


def _read_one_version(directory: Path, expected: tuple, verify_checksums: bool):
    """The manifest and tensors ({name: tensor}) of the set at ``directory``, every file read
    through the directory opened once, so all of one version of the set; _SetChanged where the
    path leads to another directory by the end (a writer swapped a new version in: read it
    again), even if a file of the old one was gone (_swap deletes it) or a check failed."""
    dir_fd = _open_set(directory)
    try:
        try:
            manifest = read_manifest(directory, dir_fd)
            check_compatible(manifest, directory / MANIFEST, *expected)
            check_safetensors_path(directory)  # (before the checksums: nothing read in vain)
            tensors: Dict[str, Tensor] = {}
            for fname, entry in manifest["files"].items():
                tensors.update(_read_tensor_file(directory, dir_fd, fname, entry, verify_checksums))
        except DistilledSetError:
            if _swapped(directory, dir_fd):
                raise _SetChanged from None
            raise  # (the same directory throughout: what it holds is at fault)
        if _swapped(directory, dir_fd):
            raise _SetChanged
        return manifest, tensors
    finally:
        os.close(dir_fd)


def _open_set(directory: Path) -> int:
    """``directory`` opened (its file descriptor), or the DistilledSetError of a path that is no
    set directory; _SetChanged where it is missing, a replaced set beside it: an overwrite between
    its two renames (or one killed there, which the last try says)."""
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        if not os.path.lexists(directory) and _replaced_set(directory) is not None:
            raise _SetChanged from None
        _check_set_directory(directory)
        raise _SetChanged from None  # (there now: it appeared meanwhile)


def _swapped(directory: Path, dir_fd: int) -> bool:
    """Whether ``directory`` now leads to another directory than the one opened as ``dir_fd`` (or to none)."""
    try:
        now = os.stat(directory)
    except FileNotFoundError:
        return True
    opened = os.fstat(dir_fd)
    return (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino)


def _read_tensor_file(directory: Path, dir_fd: int, fname: str, entry: Dict[str, Any],
                      verify_checksums: bool) -> Dict[str, Tensor]:
    """The tensors of the file ``fname`` of the opened set, checked against its manifest
    ``entry``. Hashed and loaded through one open file (reopened by name after hashing, it could
    be another version's); loaded by safetensors from that file itself, so a large set is held
    once in memory (its bytes read into memory to be hashed and parsed were a second copy)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = directory / fname
    try:
        with _open_in(directory, fname, dir_fd) as f:
            _check_size(path, os.fstat(f.fileno()).st_size, entry)
            if verify_checksums:
                _checked_digest(path, stream_sha256(f), entry)
            try:
                loaded = load_file(open_file_path(f.fileno()))
            except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
                raise DistilledSetError(f"{path}: cannot read safetensors file ({exc})") from None
    except (FileNotFoundError, IsADirectoryError):
        raise _missing_file(path) from None
    if set(loaded) != set(entry["tensors"]):
        raise DistilledSetError(f"{path}: holds tensors {sorted(loaded)}, {MANIFEST} lists {sorted(entry['tensors'])}")
    for name, info in entry["tensors"].items():
        t = loaded[name]
        if list(t.shape) != info["shape"]:
            raise DistilledSetError(f"{path}: tensor {name!r} has shape {list(t.shape)}, {MANIFEST} records {info['shape']}")
        if dtype_name(t.dtype) != info["dtype"]:
            raise DistilledSetError(f"{path}: tensor {name!r} has dtype {dtype_name(t.dtype)}, {MANIFEST} records {info['dtype']}")
    return loaded
