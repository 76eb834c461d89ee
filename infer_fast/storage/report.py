"""Looking at a distilled set: a verified summary (:func:`inspect_report`), a PNG preview
grid (:func:`write_preview`) and an export of every training image as PNG in class folders
(:func:`export_imagefolder`).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from .._io import (TEMP, PathLike, check_writable, file_sha256, format_bytes, hidden_sibling, naming_errors,
                   safetensors_save)
from ..checks import check_choice, check_int, composed_name
from ..choices import EXPORT_NAMINGS
from ..data.pixels import denormalize, normalize_uint8, quantize_images, valid_range
from ..ops import ufc_compose
from .compression import compression_ratio_from_manifest
from .dataset import DistilledDataset
from ..output_lock import holds_output
from .disk import FORMAT_NAME, FORMAT_VERSION, IMAGE_ORDER, load_distilled, load_with_manifest, refuse_symlink
from .distilled_set import EXTERNAL_METHOD, DistilledSet, DistilledSetError, OutputExistsError, dtype_name

# the soft labels export writes beside the class folders (import takes them back by default)
EXPORTED_SOFT_LABELS = "soft_labels.safetensors"
EXPORTED_SOFT_LABELS_KEY = "soft_labels"  # (its one tensor)
# what an imported set records as its source method when neither its import nor the export it was
# read from named one (import reads it back as not known)
UNKNOWN_METHOD = "unknown"
# the listing export writes beside them: the source, the class folders, the files in training
# order (import maps an export's folders and soft labels by it)
EXPORT_LISTING = "export.json"
# export.json's record of that file's SHA-256: import maps the rows of that file alone by the
# export's training order (another soft-labels file is in import order)
EXPORTED_SOFT_LABELS_SHA256 = "soft_labels_sha256"


def inspect_report(directory: PathLike, verify_checksums: bool = True) -> str:
    """Human summary of a distilled set, after full verification (load_distilled).
    ``verify_checksums=False`` skips re-hashing the tensor files (for a set this process
    has just written and hashed: the manifest's checksums are those)."""
    directory = Path(directory)
    # shapes, consistency (and checksums); the manifest of the version read (a relabel may swap in another)
    ds, manifest = load_with_manifest(directory, verify_checksums=verify_checksums)
    c = ds.num_classes
    lines = [f"distilled set {directory}"]

    def row(key, value):
        lines.append(f"  {key:<18} {value}")

    # (a set rewritten in place, relabelled: created then, written now by this version)
    dates = f", created {manifest['created']}, rewritten {manifest['modified']}" if manifest.get("modified") else \
        (f", {manifest['created']}" if manifest.get("created") else "")
    row("format", f"{FORMAT_NAME} v{manifest['format_version']} (written by infer-fast {manifest.get('toolkit_version')}"
        f"{dates})")
    row("method", ds.method)
    row("dataset", f"{ds.dataset}: {c} classes, images {ds.channels}x{ds.height}x{ds.width}")
    row("normalization", f"mean {tuple(round(v, 4) for v in ds.mean)} std {tuple(round(v, 4) for v in ds.std)}")
    b = ds.budget
    if b:
        row("budget", ", ".join(f"{k} {v}" for k, v in b.items()))
    if ds.is_infer:
        stored = f"{ds.K * c} natural ({ds.K} sets x {c} classes, uint8) + {ds.G} compensators " \
                 f"({dtype_name(ds.ufc.dtype)}) = {ds.num_stored_images()} images"
        if b.get("ipc") is not None:
            stored += f" (budget ipc*C = {int(b['ipc']) * c})"
        row("stored", stored)
        if ds.G:
            per_set = torch.bincount(ds.ufc_index, minlength=ds.K)
            per_teacher = torch.bincount(ds.ufc_teacher)
            row("compensators", f"{int(per_set.min())}-{int(per_set.max())} per natural set, per teacher {per_teacher.tolist()}")
        n = ds.num_training_images()
        row("training images", f"{n} ({ds.K * c} natural + {ds.G * c} composed), {n // c} per class")
    else:
        counts = torch.bincount(ds.labels)  # (up to the largest label: a count per class is no allocation per class)
        fewest = int(counts.min()) if counts.numel() == c else 0  # (classes past the largest label: none)
        most = int(counts.max()) if counts.numel() else 0
        row("stored", f"{ds.images.shape[0]} images ({dtype_name(ds.images.dtype)}"
            f"{' pixels' if ds.images.dtype == torch.uint8 else ' normalized'}), {fewest}-{most} per class")
        row("training images", str(ds.num_training_images()))
    soft = ds.soft_labels_flat()
    row("soft labels", f"{soft.shape[0]} x {c} fp16 (static)" if soft is not None else _without_soft_labels(ds.method))
    cr = compression_ratio_from_manifest(manifest)
    if cr is None:
        row("compression ratio", f"unknown (no full_train_size recorded for dataset {ds.dataset!r})")
    else:
        row("compression ratio", f"{cr['percent']:.4f}% = {cr['stored_elements']:,} / {cr['full_elements']:,} elements "
            f"(images {cr['image_elements']:,}, soft labels {cr['label_elements']:,}, indices {cr['index_elements']:,}; "
            f"full set {cr['full_train_size']:,} images, {cr['full_train_size_source']})")
        row("accounting", cr["accounting"])
    if ds.teachers:
        for i, t in enumerate(ds.teachers):
            row("teacher" if i == 0 else "", f"[{i}] " + ", ".join(f"{k}={v}" for k, v in t.items()))
    else:
        row("teachers", "none recorded")
    row("seed", str(ds.seed))
    if ds.hyperparameters:
        shown = _summarised(ds.hyperparameters, top=True)
        row("hyperparameters", json.dumps(shown, sort_keys=True)
            + (" (long entries summarised: in full in manifest.json)" if shown != ds.hyperparameters else ""))
    for fname, entry in manifest["files"].items():
        tensors = ", ".join(f"{n} {i['dtype']}{i['shape']}" for n, i in entry["tensors"].items())
        ok = " OK" if verify_checksums else ""
        row("file", f"{fname} {format_bytes(entry.get('bytes', 0))} sha256 {entry['sha256'][:12]}...{ok} ({tensors})")
    row("checksums", f"all {len(manifest['files'])} tensor files OK" if verify_checksums
        else f"{len(manifest['files'])} tensor files, hashed as they were written")
    return "\n".join(lines)


# inspect's hyperparameters line shows at most this many entries of a nested list or dict (an
# imported set records a SHA-256 per source file: 50,000 of them, 4 MB on one line)
SHOWN_ENTRIES = 5


def _summarised(value, top: bool = False):
    """``value`` with each nested list or dict longer than SHOWN_ENTRIES cut to its first
    entries and one saying how many there are in all (the record's own keys, ``top``, kept)."""
    if isinstance(value, dict):
        keys = sorted(value, key=str)
        items = {k: _summarised(value[k]) for k in (keys if top or len(keys) <= SHOWN_ENTRIES else keys[:SHOWN_ENTRIES])}
        if len(items) < len(keys):
            items["..."] = f"{len(keys)} entries in all"
        return items
    if isinstance(value, list) and len(value) > SHOWN_ENTRIES:
        return [_summarised(v) for v in value[:SHOWN_ENTRIES]] + [f"... {len(value)} entries in all"]
    if isinstance(value, list):
        return [_summarised(v) for v in value]
    return value


def _without_soft_labels(method: str) -> str:
    """Why a set of ``method`` stores no soft labels: its method's students take the teachers'
    labels on every batch (RDED's), or it was not relabelled yet."""
    from ..methods.registry import find_method  # (here, not at the top: its built-in methods import storage)

    own = find_method(method)  # (None: an imported set's method)
    if own is not None and own.student_labels == "per-batch":
        return f"none: {own.label}'s students are labelled by the teachers on every batch"
    return "none (not relabelled yet)"


def write_preview(
    source: Union[DistilledSet, PathLike],
    png_path: PathLike,
    max_sets: int = 4,
    max_classes: int = 10,
    backend: str = "auto",
    padding: int = 2,
) -> Path:
    """PNG preview grid, denormalized to [0, 1], ``max_classes`` columns.

    INFER: rows of natural sets (first ``max_sets``), then a row of their compensators
    (pixel-space delta u*std, scaled symmetrically around mid-gray per image), then one row
    of composed images per shown compensator (at most ``max_sets`` rows). Baselines: for
    each of the first ``max_classes`` classes a column of up to ``max_sets`` images.
    """
    from ..viz import make_grid, stack_grids, write_png

    check_writable(png_path, "preview")
    ds = source if isinstance(source, DistilledSet) else load_distilled(source)
    ds.validate()
    if ds.channels not in (1, 3):
        raise DistilledSetError(f"a PNG preview needs 1 or 3 channels, this set has {ds.channels}")
    cols = max(1, min(ds.num_classes, max_classes))
    max_sets = max(1, int(max_sets))
    blank = torch.ones(ds.channels, ds.height, ds.width)
    grids = []
    if ds.is_infer:
        ks = list(range(min(ds.K, max_sets)))
        natural = torch.stack([normalize_uint8(ds.natural[k, :cols], ds.mean, ds.std) for k in ks])
        grids.append(make_grid(denormalize(natural.reshape(-1, ds.channels, ds.height, ds.width), ds.mean, ds.std),
                               nrow=cols, padding=padding))
        shown = [g for g in range(ds.G) if int(ds.ufc_index[g]) in ks][: max_sets * cols]
        if shown:
            std = torch.tensor(ds.std, dtype=torch.float32).view(1, -1, 1, 1)
            delta = ds.ufc[shown].to(torch.float32) * std
            grids.append(make_grid(delta, nrow=cols, padding=padding, scale="symmetric"))
            rows = shown[:max_sets]
            # (the shown classes of each row's natural set alone: composing whole sets cost 600 MB a
            # row at ImageNet's 1000 classes of 224 px, for 10 columns)
            natural_rows = torch.stack([normalize_uint8(ds.natural[int(ds.ufc_index[g]), :cols], ds.mean, ds.std)
                                        for g in rows])
            lo, hi = valid_range(ds.mean, ds.std)
            composed = ufc_compose(natural_rows, ds.ufc[rows].to(torch.float32), torch.arange(len(rows)), lo=lo, hi=hi,
                                   backend=backend)
            grids.append(make_grid(denormalize(composed.flatten(0, 1), ds.mean, ds.std), nrow=cols, padding=padding))
    else:
        picks = [torch.nonzero(ds.labels == c).flatten()[:max_sets].tolist() for c in range(cols)]
        depth = max(1, max(len(p) for p in picks))
        tiles = []
        for r in range(depth):
            for c in range(cols):
                if r < len(picks[c]):
                    x = ds.images[picks[c][r]]
                    x = normalize_uint8(x, ds.mean, ds.std) if x.dtype == torch.uint8 else x.to(torch.float32)
                    tiles.append(denormalize(x, ds.mean, ds.std))
                else:
                    tiles.append(blank)
        grids.append(make_grid(torch.stack(tiles), nrow=cols, padding=padding))
    return write_png(stack_grids(grids, spacing=3 * padding + 2), png_path)


def _safe_name(name: str) -> str:
    """A class name as a folder name (export's naming="name"; import reads it back), composed
    (NFC) first: a combining accent is not alphanumeric, the letter it makes is."""
    out = "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in composed_name(name)).strip(".")
    return out or "_"


def _class_folders(ds: DistilledSet, naming: str) -> List[str]:
    """export_imagefolder's class folder names, by class index: zero-padded indices, or the
    class names as folder names (``naming="name"``, refused where two would collide)."""
    c = ds.num_classes
    if naming == "index":
        return [f"{i:0{len(str(c - 1))}d}" for i in range(c)]
    if ds.class_names is None:
        raise DistilledSetError("naming='name' needs class_names, this set records none")
    folders = [_safe_name(n) for n in ds.class_names]
    # as a case-insensitive file system (macOS' and Windows' default) tells names apart: "Cat"
    # and "cat" would be one folder there, the second export's images mixed into the first's
    as_one_folder = {folder.casefold() for folder in folders}
    if len(as_one_folder) != c:
        raise DistilledSetError("class names are not unique as folder names (compared ignoring case, as macOS and "
                                "Windows do); use naming='index'")
    return folders


# What a PNG holds besides its pixels, at most: a filter byte per row (Pillow's deflate never
# grows the data by more than that and its framing) and the signature, chunks and zlib framing
PNG_FRAMING_BYTES = 128


def _blocks(size: int, block: int) -> int:
    """The bytes a file of ``size`` bytes takes on a file system of ``block``-byte blocks."""
    return -(-size // block) * block


def _block_size(path: PathLike) -> int:
    """The fragment size (statvfs f_frsize: the unit files take space in) of the file system
    that ``path``, or the nearest existing directory above it, is on."""
    existing = os.path.abspath(path)
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    return os.statvfs(existing).f_frsize or 4096


def export_bytes(ds: DistilledSet, n: int, folders: List[str], block: int) -> int:
    """About the most disk an export of the set's ``n`` training images into ``folders`` takes
    on a file system of ``block``-byte blocks: each PNG at most its pixels and PNG framing,
    rounded up to whole blocks (one partly used block per file: as much as a small image
    itself), a block per class folder, the soft labels and export.json (a line per file)."""
    png = ds.channels * ds.height * ds.width + ds.height + PNG_FRAMING_BYTES
    name = max(map(len, folders)) + len(str(max(n - 1, 0))) + len("/.png") + 8  # ("  \"<folder>/<i>.png\",\n" in export.json)
    listing = n * name + sum(2 * len(f) + 16 for f in folders) + 4096  # (files, class folders and names, the rest)
    soft = ds.soft_label_nbytes() if ds.has_soft_labels else 0
    return (n * _blocks(png, block) + (len(folders) + 1) * block + _blocks(listing, block)
            + (_blocks(soft + 4096, block) if soft else 0))  # (safetensors' header: under a block)


def exported_method(ds: DistilledSet) -> str:
    """The method export.json names for ``ds``: the set's own, or for an imported set (method
    ``external``) the method its import recorded as having made it (``source_method``), which
    import then records again; ``external`` where that is not known."""
    if ds.method != EXTERNAL_METHOD:
        return ds.method
    source = (ds.hyperparameters or {}).get("source_method")
    return source if isinstance(source, str) and source.strip() and source != UNKNOWN_METHOD else EXTERNAL_METHOD


def _export_listing(ds: DistilledSet, source: Optional[str], folders: Sequence[str], files: Sequence[str],
                    soft_sha256: Optional[str]) -> Dict[str, Any]:
    """What export.json records of an export of ``ds`` (read from ``source``, None: a set in
    memory): the set, its class folders and the files in training order, and the soft labels'
    file and SHA-256 (None: the set has none)."""
    return {
        "source_format": FORMAT_NAME, "source_format_version": FORMAT_VERSION, "source": source,
        "method": exported_method(ds), "dataset": ds.dataset, "num_classes": ds.num_classes,
        "image_size": list(ds.image_size),  # (import reads a set made at another resolution back at it)
        "class_folders": list(folders), "class_names": ds.class_names,
        "normalization": {"mean": list(ds.mean), "std": list(ds.std)},
        "image_order": IMAGE_ORDER, "files": list(files),
        "soft_labels": (f"{EXPORTED_SOFT_LABELS} (N, C) fp16 logits, row i = files[i]"
                        if soft_sha256 is not None else None),
        EXPORTED_SOFT_LABELS_SHA256: soft_sha256,
    }


@holds_output("out_dir", "export directory", every_rank=False)  # (one writer; a killed one's temporary folder goes)
def export_imagefolder(
    directory: Union[DistilledSet, PathLike],
    out_dir: PathLike,
    naming: str = "index",
    backend: str = "auto",
    chunk_images: int = 1024,
) -> int:
    """Write every training image as PNG: ``out_dir/<class>/<i>.png``; returns the count.

    ``naming="index"``: class folders are zero-padded class indices (so torchvision's
    ImageFolder, which sorts folder names, maps folder -> the same class index);
    ``naming="name"``: the set's class names (sorted order may then differ from the class
    index: see export.json). ``<i>`` is the zero-padded training index. Images are composed
    in float, denormalized, clamped to [0, 1] and quantized to uint8 only here. Also writes
    ``export.json`` (source, class folders, order) and, when the set has soft labels,
    ``soft_labels.safetensors`` ((N, C) fp16, row i = training image i; its SHA-256 in
    export.json, so import reads that file alone in this order). Refuses a
    non-empty ``out_dir`` or a symbolic link. Holds ``out_dir``'s lock (output_lock): a second
    export to it is refused, and what an export killed meanwhile left (``.<out>.tmp-*``) is
    removed.
    """
    from ..viz import write_png

    check_choice("naming", naming, EXPORT_NAMINGS)
    check_int("chunk_images", chunk_images)
    ds = directory if isinstance(directory, DistilledSet) else load_distilled(directory)
    ds.validate()
    if ds.channels not in (1, 3):
        raise DistilledSetError(f"PNG export needs 1 or 3 channels, this set has {ds.channels}")
    out = Path(out_dir)
    refuse_symlink(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputExistsError(f"{out} exists and is not an empty directory; refusing to overwrite")
    folders = _class_folders(ds, naming)
    data = DistilledDataset(ds, hard_only=True, backend=backend, cache_bytes=0)
    n = len(data)
    check_writable(out, "export directory", kind="directory", need_bytes=export_bytes(ds, n, folders, _block_size(out)))
    # written into a temporary directory beside ``out`` and renamed into place at the end:
    # an export that fails (disk full...) leaves nothing behind
    parent = out.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(hidden_sibling(out, TEMP))
    tmp.mkdir()
    with naming_errors(out, temporary=tmp):  # a full disk names the export's file, not the temporary one
        try:
            for f in folders:
                (tmp / f).mkdir()
            hard = ds.hard_labels()
            width = len(str(max(n - 1, 0)))
            files = []
            for start, images in data.iter_chunks(chunk_images):
                pixels = quantize_images(images, ds.mean, ds.std)
                for j in range(pixels.shape[0]):
                    i = start + j
                    rel = f"{folders[int(hard[i])]}/{i:0{width}d}.png"
                    write_png(pixels[j], tmp / rel)
                    files.append(rel)
            soft = ds.soft_labels_flat()
            if soft is not None:
                safetensors_save({EXPORTED_SOFT_LABELS_KEY: soft.contiguous()}, tmp / EXPORTED_SOFT_LABELS)
            soft_sha256 = file_sha256(tmp / EXPORTED_SOFT_LABELS) if soft is not None else None
            meta = _export_listing(ds, None if isinstance(directory, DistilledSet) else str(directory), folders, files,
                                   soft_sha256)
            (tmp / EXPORT_LISTING).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
            if out.exists():  # an empty directory: replaced
                out.rmdir()
            os.rename(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return n
