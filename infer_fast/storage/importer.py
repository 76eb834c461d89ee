"""Other methods' distilled sets in our format: :func:`import_imagefolder`.

SRe2L, RDED, G-VBSM and DD-Ranking publish their sets as class folders of images
(``ROOT/<class>/<image>.png|jpg``), sometimes with soft labels in a tensor file. Imported,
such a set is a DistilledSet of method ``external`` (uint8 images, hard labels from the
folders, optional static soft labels), with a manifest recording where it came from and
every source file's SHA-256, so ``evaluate``, ``train``, ``inspect`` and ``run`` treat it
like one of ours. Images are taken as they are: a file of another size or channel count is
an error, not resized (a set made at another resolution is imported at it: the dataset
given as a mapping with its ``image_size``, or recorded by our export's ``export.json``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .._io import TOO_DEEP, PathLike, file_sha256, parse_failure
from .._text import count_text, first_names
from ..checks import check_class_names, is_digits
from .disk import FORMAT_NAME, check_safetensors_path
from .distilled_set import EXTERNAL_METHOD, DistilledSet, DistilledSetError, check_dataset_classes, fp16_soft_labels
from .report import (EXPORT_LISTING, EXPORTED_SOFT_LABELS, EXPORTED_SOFT_LABELS_KEY, EXPORTED_SOFT_LABELS_SHA256,
                     UNKNOWN_METHOD, _safe_name)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _read_export_listing(root: Path) -> Optional[dict]:
    """``export.json`` as our own ``export`` wrote it (it records the class folders and the
    training order of the files), or None where there is none or another tool's."""
    listing = root / EXPORT_LISTING
    if not listing.is_file():
        return None
    try:
        meta = json.loads(listing.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, TOO_DEEP) as exc:
        raise DistilledSetError(f"{listing}: not readable JSON ({parse_failure(exc)})") from None
    return meta if isinstance(meta, dict) and meta.get("source_format") == FORMAT_NAME else None


def _exported_method(listing: Optional[dict], root: Path) -> str:
    """The method that made the set our export's ``listing`` lists, checked (any name: another
    tool's methods are not registered here); UNKNOWN_METHOD without a listing, or for the export of
    an imported set that did not know its source (``external``; an export names the source method
    where the import recorded one: report.exported_method). Read only where no ``name`` is given."""
    method = listing.get("method") if listing is not None else None
    if method is None or method == EXTERNAL_METHOD:
        return UNKNOWN_METHOD
    if not isinstance(method, str) or not method.strip():
        # (a hand-edited listing: the name given wins, and this field is not read then)
        raise DistilledSetError(f"{root / EXPORT_LISTING}: method must be a method's name, got {method!r}; give the "
                                "method that made the set (import --name METHOD; name= from Python) to import it anyway")
    return method


def _recorded_size_and_count(listing: dict, root: Path) -> Dict[str, int]:
    """The image size and class count our export's listing records, checked."""
    size, count = listing["image_size"], listing.get("num_classes")
    if not (isinstance(size, list) and len(size) == 2 and size[0] == size[1] and isinstance(size[0], int)
            and not isinstance(size[0], bool) and size[0] > 0):
        raise DistilledSetError(f"{root / EXPORT_LISTING}: image_size must be [S, S] (square, in pixels), got {size!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise DistilledSetError(f"{root / EXPORT_LISTING}: num_classes must be a positive integer, got {count!r}")
    return {"image_size": size[0], "num_classes": count}


def _recorded_image_folder(listing: dict, root: Path) -> Dict[str, Any]:
    """What our export's listing records of an image folder's set beyond size and count (which
    the dataset does not fix: they come from its folders): channels, normalization, class names."""
    normalization = listing.get("normalization")
    mean, std = (normalization.get("mean"), normalization.get("std")) if isinstance(normalization, dict) else (None, None)
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) and len(mean) in (1, 3)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in mean + std)):
        raise DistilledSetError(f"{root / EXPORT_LISTING}: normalization must be {{mean: [...], std: [...]}}, one value "
                                f"per channel (1 or 3), got {normalization!r}")
    names = listing.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise DistilledSetError(f"{root / EXPORT_LISTING}: class_names must be a list of names, got {names!r}")
    return {"channels": len(mean), "mean": mean, "std": std, "class_names": names}


def _exported_dataset(dataset: Union[str, Mapping[str, Any]], listing: Optional[dict],
                      root: Path) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``dataset`` as import reads it, a mapping, and the spec's changes (get_spec's keywords): a
    folder dataset (ImageNet, Tiny-ImageNet, imagefolder) that our export's listing names takes
    the image size and class count it records (a set made at 16 px, or of a class subset, imports
    as it was made), an image folder's also its channels, normalization and class names; what
    ``dataset`` gives as a mapping (``image_size``, ``num_classes``) wins."""
    from ..data.registry import canonical_name, dataset_options, get_dataset

    name, given = dataset_options(dataset)
    entry = get_dataset(name)
    recorded: Dict[str, Any] = {}
    changes: Dict[str, Any] = {}
    if listing is not None and "image_size" in listing and entry.layout == "folders":
        try:
            same = canonical_name(str(listing.get("dataset"))) == entry.name
        except ValueError:  # (a dataset this infer-fast does not know)
            same = False
        if same:
            recorded = _recorded_size_and_count(listing, root)
            try:
                check_dataset_classes(entry.name, recorded["num_classes"])
            except DistilledSetError as exc:
                raise DistilledSetError(f"{root / EXPORT_LISTING}: {exc}") from None
            if entry.spec is None:
                changes = _recorded_image_folder(listing, root)
    return {"name": entry.name, **recorded, **given}, changes


def _import_spec(dataset: Union[str, Mapping[str, Any]], listing: Optional[dict], root: Path,
                 folders: Sequence[Path]) -> Tuple[Any, bool]:
    """The spec of ``dataset`` as import reads it (:func:`_exported_dataset`), and whether its
    classes are the class ``folders`` themselves. ImageNet-1k names its classes by wnid
    (IMAGENET_WNIDS, as its loader does). Without a listing, a folder dataset that names no
    classes (an image folder; an ImageNet class subset; Tiny-ImageNet) takes them as its loader
    does: the class folders' names, sorted, label = position (an image folder always, whose
    folders may be named by number; the others unless every folder is named by class index).
    An image folder's class count is its folders' unless given."""
    from dataclasses import replace

    from ..data import get_spec
    from ..data.registry import dataset_label, get_dataset
    from ..imagenet_wnids import IMAGENET_WNIDS

    request, changes = _exported_dataset(dataset, listing, root)
    entry = get_dataset(request["name"])
    if entry.spec is None and "num_classes" not in request:
        request["num_classes"] = len(folders)  # (an image folder's classes are its class folders)
    try:
        spec = get_spec(request, **changes)
    except ValueError as exc:
        if not changes:
            raise
        raise DistilledSetError(f"{root / EXPORT_LISTING}: {exc}") from None  # (its channels or normalization)
    if spec.class_names is None and entry.family == "imagenet" and spec.num_classes == len(IMAGENET_WNIDS):
        spec = replace(spec, class_names=IMAGENET_WNIDS)  # (its loader's names: the sorted train/<wnid> folders)
    by_folder_name = listing is None and spec.class_names is None and entry.layout == "folders" and (
        entry.spec is None or not all(_is_class_index(f.name) for f in folders))
    if by_folder_name:
        if len(folders) != spec.num_classes:
            hint = "its classes are its class folders: leave num_classes out" if entry.spec is None else _CLASS_SUBSET_HINT
            raise DistilledSetError(f"{root}: {count_text(len(folders), 'class folder')} for the {spec.num_classes} "
                                    f"classes of {dataset_label(request)}; {hint}")
        spec = replace(spec, class_names=tuple(f.name for f in folders))
    return spec, by_folder_name


# how an import names a class subset of a folder dataset (ImageNet-100: 100 of ImageNet's classes)
_CLASS_SUBSET_HINT = "a class subset of a folder dataset is imported with its class count (import --num-classes N)"


def _exported_class_of_folder(listing: dict, root: Path, num_classes: int,
                              class_names: Optional[Sequence[str]]) -> Dict[str, int]:
    """folder name -> class from our export's listing (``class_folders[i]`` holds class i), checked
    against the dataset: its class count and, where both record them, its class names."""
    folders = listing.get("class_folders")
    exported = listing.get("num_classes")
    if isinstance(exported, int) and not isinstance(exported, bool) and exported != num_classes:
        # (an export of another dataset: its listing says which, as a class-name mismatch does)
        raise DistilledSetError(f"{root / EXPORT_LISTING}: the export is of {listing.get('dataset', 'another dataset')} "
                                f"({exported} classes), not of this dataset ({num_classes} classes): import it as the "
                                "dataset it was exported from")
    if not (isinstance(folders, list) and len(folders) == num_classes and len(set(folders)) == num_classes
            and all(isinstance(f, str) and f for f in folders)):
        raise DistilledSetError(f"{root / EXPORT_LISTING}: class_folders must be {num_classes} distinct folder names "
                                f"(one per class of this dataset)")
    recorded = listing.get("class_names")
    if recorded is not None and not isinstance(recorded, list):
        raise DistilledSetError(f"{root / EXPORT_LISTING}: class_names must be a list of names, got {recorded!r}")
    try:
        check_class_names(recorded, class_names, "the exported set", "this dataset",
                          "import it as the dataset it was exported from")
    except ValueError as exc:  # (an import's errors are DistilledSetErrors naming the file)
        raise DistilledSetError(f"{root / EXPORT_LISTING}: {exc}") from None
    return {f: i for i, f in enumerate(folders)}


# the class folders SRe2L's release writes (and CDA's, and the methods built on its code):
# syn_data/new<class index, 3 digits>/class<c>_id<i>.jpg
SRE2L_FOLDER_PREFIX = "new"


def _folder_index(folder_name: str) -> Optional[int]:
    """The class index a folder name spells (``7``, ``007``, SRe2L's ``new007``), or None."""
    digits = folder_name[len(SRE2L_FOLDER_PREFIX):] if folder_name.startswith(SRE2L_FOLDER_PREFIX) else folder_name
    return int(digits) if is_digits(digits) else None


def _is_class_index(folder_name: str) -> bool:
    return _folder_index(folder_name) is not None


def _classes_named(folder_name: str, num_classes: int, class_names: Optional[Sequence[str]]) -> List[int]:
    """The classes a folder name can denote: its index (``7``, ``007``, SRe2L's ``new007``), its
    name as the dataset spells it (e.g. a wnid) or as our export writes it (``T-shirt/top`` ->
    ``T-shirt_top``)."""
    index = _folder_index(folder_name)
    found = {index} if index is not None and index < num_classes else set()
    found.update(i for i, name in enumerate(class_names or ()) if folder_name in (name, _safe_name(name)))
    return sorted(found)


def _class_of_folder(folder: Path, num_classes: int, class_names: Optional[Sequence[str]]) -> int:
    classes = _classes_named(folder.name, num_classes, class_names)
    if not classes:
        raise DistilledSetError(
            f"{folder}: not a class of this dataset (folders must be class indices 0..{num_classes - 1} or SRe2L's "
            f"{SRE2L_FOLDER_PREFIX}000..."
            + (", the dataset's class names or export's folder names for them)" if class_names else ")"))
    if len(classes) > 1:
        shown = " and ".join(f"{i} ({class_names[i]!r})" for i in classes)
        raise DistilledSetError(f"{folder}: ambiguous, the folder name of classes {shown}; name it by class index")
    return classes[0]


def _class_folder_paths(root: Path) -> List[Path]:
    """The class folders at ``root``, sorted by name (hidden ones skipped, as the loaders do)."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DistilledSetError(f"{root}: no class folders (expected ROOT/<class>/<image files>)")
    return folders


def _class_folders(root: Path, folders: List[Path], spec, listing: Optional[dict],
                   by_folder_name: bool) -> List[Tuple[int, Path]]:
    """(class index, folder) of every class folder: our export's own map where its listing is
    there, the folders' sorted position where they are the classes (``by_folder_name``: see
    :func:`_import_spec`), else what each folder's name denotes (:func:`_classes_named`)."""
    from ..data.registry import get_dataset

    num_classes, class_names = spec.num_classes, spec.class_names
    if listing is not None:
        class_of = _exported_class_of_folder(listing, root, num_classes, class_names)
        for folder in folders:
            if folder.name not in class_of:
                raise DistilledSetError(f"{folder}: not one of the class folders {EXPORT_LISTING} lists")
        mapped = [(class_of[folder.name], folder) for folder in folders]
    elif by_folder_name:
        mapped = list(enumerate(folders))
    else:
        mapped = [(_class_of_folder(folder, num_classes, class_names), folder) for folder in folders]
    seen: Dict[int, Path] = {}
    for label, folder in mapped:
        if label in seen:
            raise DistilledSetError(f"{seen[label]} and {folder} are both class {label}")
        seen[label] = folder
    missing = sorted(set(range(num_classes)) - set(seen))
    if missing:
        shown = first_names(missing, 10)
        subset = listing is None and get_dataset(spec.name).layout == "folders"
        raise DistilledSetError(f"{root}: no folder for class(es) {shown} of {num_classes}"
                                + (f" ({_CLASS_SUBSET_HINT})" if subset else ""))
    return sorted(mapped)


def _is_gray(rgb_image) -> bool:
    """Whether every pixel of an RGB Pillow image is gray (R = G = B)."""
    array = np.asarray(rgb_image)
    return bool((array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all())


def _other_size(path: Path, found: Tuple[int, int], size: Tuple[int, int], sized_by_user: bool) -> DistilledSetError:
    """The refusal of an image of ``found`` (width, height) pixels for a dataset of ``size``: a
    folder dataset (``sized_by_user``: ImageNet, Tiny-ImageNet, an image folder) is read at the
    size given, which a square image can be; the others have one size."""
    width, height = found
    message = f"{path}: {width}x{height} pixels, the dataset's images are {size[1]}x{size[0]} (import does not resize)"
    if sized_by_user and width == height:
        # (the command line's flag; from Python, import_imagefolder's dataset mapping takes it)
        return DistilledSetError(f"{message}: import the set at its size with --image-size {width} (from Python: "
                                 f"\"image_size\": {width} in import_imagefolder's dataset mapping)")
    return DistilledSetError(message)


def _read_image(path: Path, channels: int, size: Tuple[int, int], sized_by_user: bool = False) -> Tensor:
    """The image file ``path`` as a (channels, H, W) uint8 tensor, refused unless it has the
    dataset's ``channels`` and ``size`` (``sized_by_user``: :func:`_other_size`)."""
    from PIL import Image, UnidentifiedImageError

    from ..data.folders import WIDE_GRAY_MODES, as_8bit

    try:
        with Image.open(path) as im:
            if im.size != (size[1], size[0]):
                raise _other_size(path, im.size, size, sized_by_user)
            kind = f"a {im.mode} image"
            if im.mode == "P":  # (a palette: its colours decide, as they would in the same image saved as RGB)
                im, kind = im.convert("RGB"), "a palette (P) image in colour"
                if channels == 1 and _is_gray(im):
                    im = im.convert("L")  # (exact: R = G = B = v gives L = v)
            if channels == 1 and im.mode not in ("L", "1") + WIDE_GRAY_MODES:
                raise DistilledSetError(f"{path}: {kind}, the dataset's images have 1 channel")
            array = np.array(as_8bit(im, channels), dtype=np.uint8)  # (the decode every reader shares)
    except DistilledSetError:
        raise
    except Image.DecompressionBombError as exc:  # (an Exception, not an OSError: Pillow's guard)
        raise DistilledSetError(f"{path}: cannot read the image: it exceeds Pillow's pixel limit, a guard against "
                                f"decompression bombs (PIL.Image.MAX_IMAGE_PIXELS; Pillow says: {exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DistilledSetError(f"{path}: cannot read the image ({exc})") from None
    except ValueError as exc:  # (as_8bit: levels it cannot scale)
        raise DistilledSetError(f"{path}: {exc}") from None
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


# how far from 1 a row of probabilities may sum (fp16 rounding of a thousand classes' values)
PROBABILITY_SUM_TOLERANCE = 1e-2


def _probabilities(soft: Tensor) -> bool:
    """Whether the (N, C) soft labels ``soft`` are probabilities rather than logits: every value
    in [0, 1] and every row summing to 1."""
    values = soft.float()
    return bool(values.numel() and values.min() >= 0 and values.max() <= 1
                and ((values.sum(1) - 1).abs() <= PROBABILITY_SUM_TOLERANCE).all())


def _read_soft_labels(path: Path, count: int, num_classes: int) -> Tensor:
    """One (N, C) float tensor from a .safetensors file (its only tensor) or a torch.save file
    (weights_only: a tensor, or a dict holding exactly one)."""
    from .._io import check_input_file, load_weights_only

    check_input_file(path, "soft labels file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        check_safetensors_path(path)
        try:
            found = load_file(str(path))
        except Exception as exc:  # any unreadable file: one message naming it
            raise DistilledSetError(f"{path}: cannot read soft labels ({type(exc).__name__}: {exc})") from None
    else:
        found = load_weights_only(path, "soft labels file")
    if isinstance(found, dict):
        tensors = [v for v in found.values() if isinstance(v, Tensor)]
        if len(tensors) != 1:
            raise DistilledSetError(f"{path}: expected one tensor of soft labels, found {len(tensors)}")
        found = tensors[0]
    if not isinstance(found, Tensor) or not found.dtype.is_floating_point or tuple(found.shape) != (count, num_classes):
        got = (f"{str(found.dtype).replace('torch.', '')} {tuple(found.shape)}" if isinstance(found, Tensor)
               else type(found).__name__)
        raise DistilledSetError(f"{path}: soft labels must be a float tensor ({count}, {num_classes}) "
                                f"(one row per image, in import order), got {got}")
    if not torch.isfinite(found).all():
        raise DistilledSetError(f"{path}: soft labels hold non-finite values")
    if _probabilities(found):  # (as logits they would teach a near-uniform softmax, without a word)
        raise DistilledSetError(f"{path}: soft labels look like probabilities (every value in [0, 1], every row "
                                f"summing to 1); logits are expected: save log() of them (e.g. p.clamp_min(1e-8).log())")
    return fp16_soft_labels(f"{path}: soft labels", found)  # (as every set stores them; the file named)


# the order of an imported set's images, and of the soft-labels rows given with them; a
# .safetensors file may record its rows' order under ROW_ORDER_KEY (its metadata)
IMPORT_ORDER = "by class, then by file name"
ROW_ORDER_KEY = "row_order"


def _export_numbers(files: List[str]) -> Optional[List[int]]:
    """Each file's number where the files are numbered as our ``export`` numbers them
    (``<class>/<i>.png``, ``i`` the training index zero-padded to one width, each once: 0..N-1,
    or some of them where images were removed since), else None."""
    stems = [Path(f).stem for f in files]
    if not stems or not all(Path(f).suffix == ".png" for f in files) or len({len(s) for s in stems}) != 1 or not all(
            is_digits(stem) for stem in stems):
        return None
    numbers = [int(stem) for stem in stems]
    return numbers if len(set(numbers)) == len(numbers) else None


def _recorded_row_order(path: Path) -> Optional[str]:
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    check_safetensors_path(path)
    with safe_open(str(path), "pt") as f:
        return (f.metadata() or {}).get(ROW_ORDER_KEY)


# how a file records that its rows are in import order (what every "row order unknown" refusal offers)
RECORD_IMPORT_ORDER = f"save them as a .safetensors file with metadata {ROW_ORDER_KEY} = {IMPORT_ORDER!r}"


def _check_import_order(root: Path, files: List[str], path: Path) -> None:
    """Refuses soft labels whose rows may be an export's training order (row i = image i,
    export.json gone) where that is not import order: a silent mismatch otherwise."""
    numbers = _export_numbers(files)
    if numbers is None or numbers == sorted(numbers):
        return
    raise DistilledSetError(
        f"{path}: row order unknown: the images of {root} are numbered as `infer-fast export` "
        f"numbers them (its rows: row i = image i), not in import order (class, then file name); if these are an "
        f"export's soft labels (its {EXPORTED_SOFT_LABELS}, or the same values), put that export's {EXPORT_LISTING} "
        f"back beside the class folders (it maps their rows); if their rows are in import order, {RECORD_IMPORT_ORDER}")


def _check_listing_order(listing: dict, files: List[str], path: Path) -> None:
    """Refuses soft labels other than the export's own (by file or values) beside an export.json
    that lists the images in another order than import order: their rows may be either."""
    exported = _listed_files(listing)
    if exported is None or not set(files) <= set(exported):
        return  # (not these images: import order it is)
    found = set(files)
    if [f for f in exported if f in found] == files:
        return  # (listed in import order, some perhaps removed since: import order it is)
    raise DistilledSetError(
        f"{path}: row order unknown: {EXPORT_LISTING} lists these images in the export's training order, not in "
        f"import order (class, then file name), and these are not the export's soft labels (its "
        f"{EXPORTED_SOFT_LABELS}, by SHA-256 or values), which it maps; if their rows are in import order, "
        f"{RECORD_IMPORT_ORDER}")


def _check_numbered_as_text(files: List[str], path: Path) -> None:
    """Refuses soft labels given for files numbered without zero padding (0.png ... 11.png) where
    import order, their names sorted as text (10.png before 2.png), is not their numbers' order:
    rows written in a loop's order would pair with other images."""
    paths = [Path(f) for f in files]
    if not all(is_digits(p.stem) for p in paths):
        return
    for first, then in zip(paths, paths[1:]):
        if first.parent == then.parent and int(first.stem) > int(then.stem):
            raise DistilledSetError(
                f"{path}: row order unknown: the images are numbered without zero padding and import order (class, "
                f"then file name) sorts their names as text ({first} before {then}); rename the files with zero "
                f"padding (as {then.stem.zfill(len(first.stem))}{then.suffix}) if the rows follow the numbers; if "
                f"their rows are in import order, {RECORD_IMPORT_ORDER}")


def _listed_files(listing: dict) -> Optional[List[str]]:
    """The files export.json lists, in training order, where it lists them (names), else None."""
    exported = listing.get("files")
    return exported if isinstance(exported, list) and all(isinstance(f, str) for f in exported) else None


def _lists_these(listing: dict, files: List[str]) -> Optional[List[str]]:
    """The files export.json lists, in training order, where they are exactly ``files``, else None."""
    exported = _listed_files(listing)
    return exported if exported is not None and sorted(exported) == sorted(files) else None


def _training_rows(exported: List[str], files: List[str]) -> Tensor:
    """For each file in import order, its row in the export's training order (``exported``)."""
    row_of = {name: i for i, name in enumerate(exported)}
    return torch.tensor([row_of[name] for name in files], dtype=torch.int64)


def _soft_label_rows(root: Path, listing: Optional[dict], files: List[str], path: Path, soft: Tensor,
                     taken: bool) -> Tensor:
    """For each imported file (in import order), its row of the soft labels ``soft`` read from
    ``path``: the export's own soft labels (``taken`` by default, :func:`_is_exported_soft_labels`,
    or their values in another file: :func:`_exported_values_rows`) are in the training order our
    export recorded (``export.json``: row i = files[i]); any other file is in import order (class,
    then file name: the documented convention, which a file may also record under ROW_ORDER_KEY),
    refused where its rows may be in another (:func:`_check_import_order`,
    :func:`_check_listing_order`, :func:`_check_numbered_as_text`)."""
    import_order = torch.arange(len(files))
    if _recorded_row_order(path) == IMPORT_ORDER:
        return import_order
    if listing is not None:
        if taken or _is_exported_soft_labels(root, listing, path):
            return _training_rows(_exported_files(path, listing, files), files)
        rows = _exported_values_rows(root, listing, soft, files)
        if rows is not None:
            return rows
        _check_listing_order(listing, files, path)
    else:  # (export.json gone: the rows may be an export's)
        _check_import_order(root, files, path)
    _check_numbered_as_text(files, path)
    return import_order


def _exported_values_rows(root: Path, listing: dict, soft: Tensor, files: List[str]) -> Optional[Tensor]:
    """Where ``soft`` (as read: fp16) holds the values of the soft labels our export wrote with
    ``root``, saved again in another file (a .pt, fp32), its rows for the files in import order:
    those of the export's training order, or import order itself (the values reordered); else None.
    The values are known by the SHA-256 export.json records of them as export writes them, or (an
    export that recorded none: an earlier infer-fast) by the folder's own EXPORTED_SOFT_LABELS."""
    exported = _lists_these(listing, files)
    if not listing.get("soft_labels") or exported is None:
        return None
    recorded = listing.get(EXPORTED_SOFT_LABELS_SHA256)
    own = root / EXPORTED_SOFT_LABELS
    if isinstance(recorded, str):
        def exported_values(values: Tensor) -> bool:
            return _exported_sha256(values) == recorded
    elif own.is_file():
        try:
            own_values = _read_soft_labels(own, *soft.shape)
        except DistilledSetError:  # (not these images' soft labels: nothing to compare with)
            return None

        def exported_values(values: Tensor) -> bool:
            return torch.equal(values, own_values)
    else:
        return None
    training_rows = _training_rows(exported, files)
    if exported_values(soft):
        return training_rows
    in_training_order = torch.empty_like(soft)
    in_training_order[training_rows] = soft  # (row i of import order is training row training_rows[i])
    return torch.arange(len(files)) if exported_values(in_training_order) else None


def _exported_sha256(soft: Tensor) -> str:
    """The SHA-256 of the file our export writes for the soft labels ``soft`` (fp16):
    EXPORTED_SOFT_LABELS, its one tensor named EXPORTED_SOFT_LABELS_KEY."""
    import hashlib

    from safetensors.torch import save

    return hashlib.sha256(save({EXPORTED_SOFT_LABELS_KEY: soft.contiguous()})).hexdigest()


def _is_exported_soft_labels(root: Path, listing: dict, path: Path) -> bool:
    """Whether ``path`` holds the soft labels our export wrote with the folder ``root``: the
    file whose SHA-256 export.json records, or (an export that recorded none: an earlier
    infer-fast) the folder's own EXPORTED_SOFT_LABELS, or a copy of it."""
    recorded = listing.get(EXPORTED_SOFT_LABELS_SHA256)
    if isinstance(recorded, str):
        return file_sha256(path) == recorded
    own = root / EXPORTED_SOFT_LABELS
    if not listing.get("soft_labels") or not own.is_file():
        return False
    return os.path.samefile(own, path) or file_sha256(own) == file_sha256(path)


def _exported_files(path: Path, listing: dict, files: List[str]) -> List[str]:
    """The files export.json lists, in training order (the rows of the export's soft labels
    ``path``): exactly the files found, else a DistilledSetError says how to go on."""
    exported = _lists_these(listing, files)
    if exported is None:
        listed = len(listing["files"]) if isinstance(listing.get("files"), list) else 0
        without = (f"move {EXPORTED_SOFT_LABELS} away to import the images without soft labels"
                   if path.name == EXPORTED_SOFT_LABELS else "import the images without these soft labels")
        raise DistilledSetError(
            f"{path}: the soft labels export wrote for the {count_text(listed, 'image')} {EXPORT_LISTING} lists, "
            f"but the folders hold {count_text(len(files), 'image')}, not those: restore the export's images, "
            f"or {without}")
    return exported


def _exported_empty(listing: Optional[dict], folder: Path) -> bool:
    """Whether our export wrote ``folder`` empty: its listing names no file in it (a class the
    set has no images of; the folder stands for the class)."""
    files = listing.get("files") if listing is not None else None
    return isinstance(files, list) and not any(str(f).startswith(f"{folder.name}/") for f in files)


EXPORTED_SOFT_LABELS_TAKEN = f"by default: written by infer-fast export beside these images ({EXPORT_LISTING})"


def _exported_soft_labels(root: Path, listing: Optional[dict], files: List[str]) -> Optional[Path]:
    """The soft labels our own ``export`` wrote with the folder (its listing records them and
    the file is there), taken when none are given: importing an export gives back the set's
    labels. They must still belong to these images (export.json lists exactly the files
    found: its rows are theirs), else a DistilledSetError says how to go on."""
    path = root / EXPORTED_SOFT_LABELS
    if listing is None or not listing.get("soft_labels") or not path.is_file():
        return None
    _exported_files(path, listing, files)
    return path


def import_imagefolder(source: PathLike, dataset: Union[str, Mapping[str, Any]], soft_labels: Optional[PathLike] = None,
                       name: Optional[str] = None) -> DistilledSet:
    """The class folders at ``source`` as a DistilledSet of method ``external`` for ``dataset``.

    Class folders are named by class index, by the dataset's class name (ImageNet's: its wnids)
    or by the folder name our ``export`` writes for it (``T-shirt_top``); an image folder's
    classes (and a class subset's of ImageNet given with its ``num_classes``, named by wnid) are
    the folders, sorted by name, as its loader takes them. A folder written by our ``export`` is
    mapped by its ``export.json``, and read at the image size and class count it records (an
    image folder's also its channels, normalization and class names: :func:`_import_spec`).
    Image order: by class, then by file name, which is also the row order of ``soft_labels``,
    except for the soft labels our own ``export`` wrote with the folder (the file whose SHA-256
    its ``export.json`` records, or the same values in another file), whose rows ``export.json``
    maps; a file whose rows may be in another order (beside an ``export.json`` listing another
    order, files numbered as an export numbers them or without zero padding) is refused unless it
    records import order (ROW_ORDER_KEY); probabilities are refused (logits expected). Given no
    ``soft_labels``, such a folder's own ``soft_labels.safetensors`` is taken (recorded as taken
    by default). The budget's ipc is the largest images-per-class count (the storage a method was
    given); ``hyperparameters`` record the source, its method (``name``, e.g. "RDED", else the one
    our export's listing names), the per-class counts and every file's SHA-256. Errors name the
    folder or file."""
    from ..data.registry import get_dataset

    root = Path(source)
    if name is not None and (not isinstance(name, str) or not name.strip()):  # (recorded as the source method)
        raise DistilledSetError(f"name must be the name of the method that made the set (e.g. RDED), got {name!r}")
    if not root.is_dir():
        raise DistilledSetError(f"{root}: not a directory of class folders")
    listing = _read_export_listing(root)
    folders = _class_folder_paths(root)
    spec, by_folder_name = _import_spec(dataset, listing, root, folders)
    size = (spec.image_size, spec.image_size)
    sized_by_user = get_dataset(spec.name).layout == "folders"  # (read at the size given: dataset_options)
    images, labels, checksums, counts = [], [], {}, []
    for label, folder in _class_folders(root, folders, spec, listing, by_folder_name):
        named = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        for p in named:
            if p.is_symlink() and not p.exists():  # (is_file is False for these: they were skipped silently)
                raise DistilledSetError(f"{p}: a symbolic link that leads nowhere (broken, or a loop)")
        files = sorted(p for p in named if p.is_file())
        if not files and not _exported_empty(listing, folder):
            raise DistilledSetError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
        for path in files:
            images.append(_read_image(path, spec.channels, size, sized_by_user))
            labels.append(label)
            checksums[str(path.relative_to(root))] = file_sha256(path)
        counts.append(len(files))
    if not images:
        raise DistilledSetError(f"{root}: no images in any class folder")
    soft, found_beside = None, False
    if soft_labels is None:
        soft_labels = _exported_soft_labels(root, listing, list(checksums))
        found_beside = soft_labels is not None
    if soft_labels is not None:
        soft = _read_soft_labels(Path(soft_labels), len(images), spec.num_classes)
        soft = soft[_soft_label_rows(root, listing, list(checksums), Path(soft_labels), soft, taken=found_beside)]
    hyper = {
        "source": os.path.abspath(root), "source_method": name or _exported_method(listing, root), "per_class": counts,
        "image_order": IMPORT_ORDER, "source_sha256": checksums,
    }
    if soft_labels is not None:
        hyper["soft_labels_source"] = {"path": os.path.abspath(soft_labels), "sha256": file_sha256(soft_labels)}
        if found_beside:
            hyper["soft_labels_source"]["taken"] = EXPORTED_SOFT_LABELS_TAKEN
    ds = DistilledSet(
        method=EXTERNAL_METHOD, dataset=spec.name, num_classes=spec.num_classes, channels=spec.channels,
        image_size=spec.image_size, mean=spec.mean, std=spec.std, images=torch.stack(images),
        labels=torch.tensor(labels, dtype=torch.int64), soft_labels=soft, hyperparameters=hyper, teachers=[],
        budget={"ipc": max(counts), "K": 0, "M": 0, "accounting": "ipc"},
        class_names=list(spec.class_names) if spec.class_names is not None else None,
    )
    return ds.validate()
