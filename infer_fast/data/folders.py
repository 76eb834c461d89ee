"""Class-per-folder image trees: :func:`scan_class_folders` (generic ``root/<class>/<image>``),
:func:`scan_tiny_imagenet` (``train/<wnid>/images/*.JPEG``; ``val/images`` with
``val/val_annotations.txt``, or val in class-folder form), :func:`scan_imagenet`
(``train/<wnid>/*``, ``val/<wnid>/*``); :func:`decode_image` turns one file into a uint8
tensor (shorter side resized, then center crop: the whole shorter side, or the ``crop`` share
of it that an evaluation recipe keeps); :func:`write_image_folder` writes a tree.
Scanning is strict: a bad tree raises a ValueError / FileNotFoundError that names it.
"""
from __future__ import annotations

import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .._text import count_text, first_names
from ..checks import composed_name
from ..progress import SHORT_PHASE_S, progress_bar

__all__ = [
    "IMAGE_EXTENSIONS", "scan_class_folders", "scan_tiny_imagenet", "scan_imagenet", "decode_image",
    "DECODERS", "DEFAULT_DECODER", "write_image_folder", "WIDE_GRAY_MODES", "as_8bit",
]


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff", ".gif")


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(
            "image-folder datasets need Pillow to decode images: `pip install pillow`"
        ) from None
    return Image


# The listings of the folders scanned in this process: folder -> (its stat when listed, its
# sub-folders, its image files "\0"-joined: a tenth of the memory of a list of names). A run
# loads a split once per set it makes, and ImageNet's train split is 1.28M files: minutes per
# scan on a cold disk. A listing is reused while the folder's (device, inode, mtime) are those
# it was listed at (a file added, removed or renamed in it changes its mtime); not a folder
# changed within RECENT_NS of its listing, whose mtime may not tick again for a change right
# after (file systems keep mtimes at 1 ns to 2 s). (Not seen: a symbolic link's target
# appearing or vanishing, which changes no folder.)
_LISTINGS: Dict[str, Tuple[Tuple[int, int, int], Tuple[str, ...], str]] = {}
RECENT_NS = 2_000_000_000


def _listing(directory: str) -> Tuple[List[str], List[str]]:
    """(sub-folder names, image file names) directly in ``directory``, each sorted; hidden
    entries and other files skipped. One scan per folder per process while it is unchanged.
    A symbolic link whose target is missing is refused (FileNotFoundError naming it): an image
    or class folder it stood for would be left out without a word."""
    key = os.path.abspath(directory)
    st = os.stat(key)  # (before the scan: a change during it makes the next call scan again)
    stamp = (st.st_dev, st.st_ino, st.st_mtime_ns)
    known = _LISTINGS.get(key)
    if known is not None and known[0] == stamp:
        return list(known[1]), known[2].split("\0") if known[2] else []
    folders, files = [], []
    with os.scandir(directory) as it:
        for e in it:
            if e.name.startswith("."):
                continue
            if e.is_dir():
                folders.append(e.name)
            elif e.is_file():
                if e.name.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(e.name)
            elif e.is_symlink() and (e.name.lower().endswith(IMAGE_EXTENSIONS) or "." not in e.name):
                # (neither folder nor file: its target is gone, an image or a class folder it stood for would be
                # left out; a link named as another kind of file is skipped as that file would be; no stat for the
                # others)
                raise FileNotFoundError(
                    f"{e.path}: a symbolic link that leads nowhere (broken, or a loop), to {os.readlink(e.path)}: "
                    "restore its target (or remove the link)"
                )
    folders.sort()
    files.sort()
    if st.st_mtime_ns < time.time_ns() - RECENT_NS:
        _LISTINGS[key] = (stamp, tuple(folders), "\0".join(files))
    else:
        _LISTINGS.pop(key, None)
    return folders, files


def _image_files(directory: str) -> List[str]:
    """Image files directly in ``directory`` (sorted; other files and hidden files skipped)."""
    return [os.path.join(directory, n) for n in _listing(directory)[1]]


def subdirectories(directory: str) -> List[str]:
    """Sub-folders of ``directory`` (sorted; hidden ones skipped): a split's class folders."""
    return _listing(directory)[0]


def scan_class_folders(
    root: str, class_names: Optional[Sequence[str]] = None, inner: Optional[str] = None, progress: bool = False,
    skip: Sequence[str] = (), classes_from: str = "given",
) -> Tuple[List[Tuple[str, int]], Tuple[str, ...]]:
    """Samples ``(path, label)`` of a ``root/<class>/<image>`` tree and the class names.

    Classes are the sorted sub-folder names (label = index), as torchvision's ImageFolder,
    unless ``class_names`` fixes them (a val split uses the training classes): a folder
    that is not one of them, and a class without a folder, are errors (``classes_from`` says
    where the names come from, e.g. "listed in .../wnids.txt": the split would be trained or
    evaluated on the other classes without a word).
    ``inner``: images sit in ``<class>/<inner>/`` when that folder exists (Tiny-ImageNet's
    ``images``). Non-image files are skipped; a class folder without images, and images
    beside the class folders (or beside ``inner``), are errors.
    ``progress``: a bar over the class folders once the scan has run SHORT_PHASE_S (minutes
    for ImageNet's 1.28M files on a cold disk; a small tree stays quiet). ``skip``: sub-folders
    that are no class (Tiny-ImageNet's emptied ``val/images``).
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder not found: {root}")
    folders = [f for f in subdirectories(root) if f not in skip]
    if not folders:
        loose = _image_files(root)
        hint = f" (it holds {len(loose)} loose images: put them in one folder per class)" if loose else ""
        raise ValueError(f"no class folders under {root}{hint}")
    loose = _image_files(root)
    if loose:  # (a class archive extracted into the root, say: its class would be missing or short without a word)
        raise ValueError(
            f"{root} holds {count_text(len(loose), 'loose image')} beside its {len(folders)} class folders "
            f"({os.path.basename(loose[0])}, ...): move them into their class folders (or remove them)"
        )
    if class_names is None:
        class_names = tuple(folders)
    else:
        class_names = tuple(class_names)
        index = {composed_name(c) for c in class_names}  # (a val copied from macOS: its names decomposed)
        stray = [f for f in folders if composed_name(f) not in index]
        if stray:
            raise ValueError(f"{root}: class folder(s) {stray[:5]} are not among the {len(class_names)} known classes")
        present = {composed_name(f) for f in folders}
        missing = [c for c in class_names if composed_name(c) not in present]
        if missing:
            raise ValueError(
                f"{root} has no folder for {len(missing)} of the {len(class_names)} classes {classes_from}: "
                f"{first_names(missing, 5)} (every class needs its folder of "
                "images: restore it)"
            )
    label_of = {composed_name(name): i for i, name in enumerate(class_names)}
    samples: List[Tuple[str, int]] = []
    for name in progress_bar(folders, desc=f"scanning {root}", unit="folder", delay=SHORT_PHASE_S,
                             disable=not progress):
        directory = os.path.join(root, name)
        if inner:
            subfolders, beside = _listing(directory)
            if inner in subfolders:
                if beside:  # (the class's images in two places: which are its split?)
                    raise ValueError(
                        f"{directory} holds {count_text(len(beside), 'image')} beside its {inner}/ folder "
                        f"({beside[0]}, ...): move them into {inner}/ (or remove them)"
                    )
                directory = os.path.join(directory, inner)
        files = _image_files(directory)
        if not files:
            raise ValueError(f"empty class folder: {directory} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        samples.extend((p, label_of[composed_name(name)]) for p in files)
    return samples, class_names


def _tiny_root(root: str) -> str:
    for candidate in (os.path.join(root, "tiny-imagenet-200"), root):
        if os.path.isfile(os.path.join(candidate, "wnids.txt")) or os.path.isdir(os.path.join(candidate, "train")):
            return candidate
    raise FileNotFoundError(
        f"tiny-imagenet: no tiny-imagenet-200/ (with wnids.txt and train/) under {root!r}; get it from "
        "http://cs231n.stanford.edu/tiny-imagenet-200.zip and extract it into the data root"
    )


def scan_tiny_imagenet(root: str, split: str = "train",
                       progress: bool = False) -> Tuple[List[Tuple[str, int]], Tuple[str, ...]]:
    """Tiny-ImageNet-200 samples and class names (sorted wnids, as torchvision's ImageFolder).

    ``split``: "train" (``train/<wnid>/images/*.JPEG``) or "val"/"test" (``val/images`` +
    ``val/val_annotations.txt``, or ``val/<wnid>/[images/]*``): the official test split
    has no labels, so val is the test split."""
    base = _tiny_root(os.fspath(root))
    wnids_path = os.path.join(base, "wnids.txt")
    train_dir = os.path.join(base, "train")
    if os.path.isfile(wnids_path):
        with open(wnids_path, encoding="utf-8") as f:
            classes = tuple(sorted({line.strip() for line in f if line.strip()}))
        if not classes:
            raise ValueError(f"{wnids_path} lists no classes")
        classes_from = f"listed in {wnids_path}"
    elif os.path.isdir(train_dir):
        classes = tuple(subdirectories(train_dir))
        classes_from = f"of {train_dir}"
    else:
        raise FileNotFoundError(f"tiny-imagenet: neither {wnids_path} nor {train_dir} exists")
    if split == "train":
        samples, _ = scan_class_folders(train_dir, classes, inner="images", progress=progress, classes_from=classes_from)
        return samples, classes
    if split not in ("val", "test"):
        raise ValueError(f"tiny-imagenet: split must be 'train' or 'test' (= val), got {split!r}")
    val_dir = os.path.join(base, "val")
    if not os.path.isdir(val_dir):
        raise FileNotFoundError(f"tiny-imagenet: val folder not found: {val_dir}")
    return _tiny_val(val_dir, classes, progress, classes_from), classes


def _tiny_val(val_dir: str, classes: Tuple[str, ...], progress: bool, classes_from: str) -> List[Tuple[str, int]]:
    """The val samples in whichever form ``val_dir`` holds them: the official ``images/`` with
    ``val_annotations.txt``, or class folders ``<wnid>/[images/]`` (the usual preprocessing,
    which often leaves the annotations file, and maybe an emptied ``images/``, behind: the
    folders decide, not the file). Images in both forms are refused: which is the split?
    ``classes_from``: where ``classes`` come from, for the messages."""
    images_dir = os.path.join(val_dir, "images")
    flat = "images" not in classes and os.path.isdir(images_dir)  # (not a class that is named "images")
    loose = _image_files(images_dir) if flat else []
    folders = [d for d in subdirectories(val_dir) if not (flat and d == "images")]
    if loose and folders:
        raise ValueError(
            f"tiny-imagenet: {val_dir} holds the val split twice: {count_text(len(loose), 'image')} in {images_dir} (labelled by "
            f"val_annotations.txt) and {len(folders)} class folders ({folders[0]}, ...); keep one form"
        )
    if loose or not folders and os.path.isfile(os.path.join(val_dir, "val_annotations.txt")):
        return _annotated_val(val_dir, classes, classes_from)  # (no images at all: the annotations name the first one missing)
    samples, _ = scan_class_folders(val_dir, classes, inner="images", progress=progress,
                                    skip=("images",) if flat else (), classes_from=classes_from)
    return samples


def _annotated_val(val_dir: str, classes: Tuple[str, ...], classes_from: str) -> List[Tuple[str, int]]:
    """The official val form: ``images/<file>`` labelled by ``val_annotations.txt``. The file
    and the folder must agree: an image listed twice, an image of the folder not listed, and a
    class with no image listed are refused (each would change the split without a word)."""
    annotations = os.path.join(val_dir, "val_annotations.txt")
    images_dir = os.path.join(val_dir, "images")
    if not os.path.isfile(annotations):
        raise FileNotFoundError(f"tiny-imagenet: {images_dir} needs its labels file {annotations}")
    in_folder = set(_listing(images_dir)[1]) if os.path.isdir(images_dir) else set()
    label_of = {c: i for i, c in enumerate(classes)}
    line_of: Dict[str, int] = {}  # listed file -> its line
    samples = []
    with open(annotations, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2:
                raise ValueError(f"{annotations}:{lineno}: expected '<file> <wnid> ...', got {line.strip()!r}")
            name, wnid = fields[0], fields[1]
            if wnid not in label_of:
                raise ValueError(f"{annotations}:{lineno}: class {wnid!r} is not in wnids.txt")
            if name in line_of:
                raise ValueError(f"{annotations}:{lineno}: {name} is listed twice (first on line {line_of[name]}): "
                                 "remove one of the lines")
            line_of[name] = lineno
            path = os.path.join(images_dir, name)
            if name not in in_folder and not os.path.isfile(path):  # (the listing spares a stat per image)
                raise FileNotFoundError(f"{annotations}:{lineno}: image file not found: {path}")
            samples.append((path, label_of[wnid]))
    if not samples:
        raise ValueError(f"{annotations} lists no images")
    unlisted = sorted(in_folder.difference(line_of))
    if unlisted:
        raise ValueError(
            f"{images_dir} holds {count_text(len(unlisted), 'image')} not listed in {annotations} "
            f"({unlisted[0]}, ...): add their lines (or remove them)"
        )
    labelled = {label for _, label in samples}
    missing = [c for c in classes if label_of[c] not in labelled]
    if missing:
        raise ValueError(
            f"{annotations} lists no image of {len(missing)} of the {len(classes)} classes {classes_from}: "
            f"{first_names(missing, 5)} (every class needs its val images)"
        )
    samples.sort()
    return samples


def scan_imagenet(root: str, split: str = "train",
                  progress: bool = False) -> Tuple[List[Tuple[str, int]], Tuple[str, ...]]:
    """ImageNet samples and classes: ``train/<wnid>/*.JPEG``; ``val/<wnid>/*.JPEG`` for
    "val"/"test" (val in class-folder form, labels from the training classes); ``progress``
    as :func:`scan_class_folders`'."""
    root = os.fspath(root)
    base = root
    if not any(os.path.isdir(os.path.join(root, s)) for s in ("train", "val")) and os.path.isdir(os.path.join(root, "imagenet")):
        base = os.path.join(root, "imagenet")
    train_dir, val_dir = os.path.join(base, "train"), os.path.join(base, "val")
    if split not in ("train", "val", "test"):
        raise ValueError(f"imagenet: split must be 'train' or 'test' (= val), got {split!r}")
    if split == "train":
        if not os.path.isdir(train_dir):
            raise FileNotFoundError(f"imagenet: training folder not found: {train_dir} (expected train/<wnid>/*.JPEG)")
        return scan_class_folders(train_dir, progress=progress)
    if not os.path.isdir(val_dir):
        raise FileNotFoundError(f"imagenet: validation folder not found: {val_dir} (expected val/<wnid>/*.JPEG)")
    _check_val_sorted(val_dir)
    classes = tuple(subdirectories(train_dir)) if os.path.isdir(train_dir) else None
    return scan_class_folders(val_dir, classes, progress=progress, classes_from=f"of {train_dir}")


def _check_val_sorted(val_dir: str) -> None:
    """ImageNet's val split must be in class-folder form. Loose images beside class folders are
    what an interrupted valprep.sh leaves (it moves the 50,000 files one by one): the scan of
    the class folders alone would evaluate on part of the split without a word."""
    loose, folders = _image_files(val_dir), subdirectories(val_dir)
    if loose and not folders:
        raise ValueError(
            f"imagenet: {val_dir} holds flat images; the val split must be in class-folder form "
            "(val/<wnid>/*.JPEG, e.g. with the usual valprep.sh)"
        )
    if loose:
        raise ValueError(
            f"imagenet: {val_dir} holds {count_text(len(loose), 'loose image')} beside its {len(folders)} class folders: "
            "valprep.sh may have been interrupted; finish moving them into val/<wnid>/ (or remove them)"
        )


# "pillow": full-size decode, then resize. "pillow-draft": libjpeg decodes a JPEG at 1/2, 1/4
# or 1/8 scale (DCT scaling) when that leaves the shorter side >= DRAFT_REDUCING_GAP * size,
# then the same resize; other images decode exactly as with "pillow". A gap of 2 (as Pillow's
# thumbnail) keeps the final resize a real >= 2x shrink: with a gap of 1 the resize can be
# near 1:1 and the pixels differ visibly more from the full decode. bench/bench_decode.py
# measures both decoders (speed and pixel difference).
DECODERS = ("pillow", "pillow-draft")
DRAFT_REDUCING_GAP = 2
DEFAULT_DECODER = "pillow-draft"


# Pillow's modes of grayscale images wider than 8 bits (a 16-bit PNG opens as I;16 or I, a
# float TIFF as F): convert("L"/"RGB") would clip their levels at 255, not scale them
WIDE_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _wide_gray_to_uint8(im) -> np.ndarray:
    """Levels of a WIDE_GRAY_MODES image -> uint8: 16-bit levels 0..65535 as round(v / 257)
    (65535 / 255 = 257 exactly). Float levels have no fixed scale (0..1? 0..255?): refused.
    A ValueError says what is wrong with the image; the caller names the file."""
    if im.mode == "F":
        raise ValueError("a 32-bit float (F) image, whose levels have no fixed 8-bit scale: "
                         "save it as an 8- or 16-bit image")
    array = np.asarray(im).astype(np.int64)
    if array.size and (array.min() < 0 or array.max() > 65535):
        raise ValueError(f"gray levels beyond 16 bits ({array.min()}..{array.max()})")
    return ((array * 2 + 257) // 514).astype(np.uint8)


def as_8bit(im, channels: int):
    """The Pillow image ``im`` as 8-bit "L" (``channels`` 1) or "RGB" (3): a gray image wider
    than 8 bits scaled (:func:`_wide_gray_to_uint8`) first, then expanded as an 8-bit gray one.
    Every reader of image files (datasets, import) goes through here: one rule for all."""
    if im.mode in WIDE_GRAY_MODES:
        im = _pillow().fromarray(_wide_gray_to_uint8(im), "L")
    return im.convert("RGB" if channels == 3 else "L")


def decode_image(path: str, size: int, channels: int = 3, decoder: str = DEFAULT_DECODER,
                 crop: float = 1.0) -> torch.Tensor:
    """One image file as uint8 (channels, size, size): the shorter side is resized to
    ``round(size / crop)`` (bilinear, antialiased by Pillow when shrinking), then the central
    ``size`` x ``size`` is cropped. ``crop`` 1 (the default) keeps the whole shorter side, and
    an image already ``size`` x ``size`` is not resampled (exact pixels); an evaluation recipe
    keeps less (ImageNet's Resize(256) + CenterCrop(224): 0.875). ``decoder``: one of
    :data:`DECODERS` (see there); the same file always gives the same pixels. A file that is no
    image, or too large for Pillow to open, raises a ValueError that names it."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    check_crop(crop)  # (here: inside the try below it would read as the file's fault)
    Image = _pillow()
    mode = "RGB" if channels == 3 else "L"
    try:
        with Image.open(path) as im:
            (nw, nh), (left, top) = resize_and_crop_geometry(*im.size, size, crop)
            box = _draft(im, mode, min(nw, nh)) if decoder == "pillow-draft" else None
            im = as_8bit(im, channels)
            if (nw, nh) != im.size:
                im = im.resize((nw, nh), Image.BILINEAR, box=box)
            if (nw, nh) != (size, size):
                im = im.crop((left, top, left + size, top + size))
            arr = np.array(im, dtype=np.uint8)  # a writable copy
    except Image.DecompressionBombError as exc:  # (an Exception, not an OSError: Pillow's guard)
        raise ValueError(f"cannot decode image {path}: it exceeds Pillow's pixel limit, a guard against "
                         f"decompression bombs (PIL.Image.MAX_IMAGE_PIXELS; Pillow says: {exc})") from None
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow: UnidentifiedImageError is an OSError
        raise ValueError(f"cannot decode image {path}: {exc}") from None
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def resize_and_crop_geometry(w: int, h: int, size: int, crop: float = 1.0) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """Where a ``w`` x ``h`` image goes in :func:`decode_image`: the resized size (shorter side
    ``round(size / crop)``, the longer one scaled alike) and the top-left corner of the central
    ``size`` x ``size`` crop in it (torchvision's CenterCrop rounding). ``crop``: the share of
    the shorter side kept, in (0, 1]."""
    check_crop(crop)
    short = max(size, round(size / crop))
    scale = short / min(w, h)
    nw, nh = max(short, round(w * scale)), max(short, round(h * scale))
    return (nw, nh), (int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0)))


def check_crop(crop: float) -> float:
    """``crop`` as a float, checked to be a share of the shorter side: in (0, 1]."""
    if isinstance(crop, bool) or not isinstance(crop, (int, float)) or not 0 < crop <= 1:
        raise ValueError(f"crop must be a fraction in (0, 1] of the shorter side, got {crop!r}")
    return float(crop)


def _draft(im, mode: str, size: int):
    """Ask libjpeg for a reduced decode whose shorter side stays >= DRAFT_REDUCING_GAP * size
    (``size``: the shorter side of the resize that follows),
    only when a reduction happens (so smaller images decode exactly as without a draft).
    Returns the resize box (the original image in drafted pixels), or None (no reduction;
    not a JPEG)."""
    target = DRAFT_REDUCING_GAP * size
    if min(im.size) < 2 * target:
        return None
    drafted = im.draft(mode, (target, target))
    return drafted[1] if drafted else None


def _safe_folder_name(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "-_. " else "_" for ch in str(name)).strip()
    if cleaned in ("", ".", ".."):
        raise ValueError(f"class name {name!r} cannot be a folder name")
    return cleaned


def write_image_folder(
    root: str,
    images,
    labels,
    class_names: Optional[Sequence[str]] = None,
    ext: str = "png",
    inner: Optional[str] = None,
    quality: int = 95,
) -> List[str]:
    """Write uint8 images (N, ch, H, W) as ``root/<class>/[<inner>/]<i>.<ext>``; returns the paths.

    Class folders are named by ``class_names`` (characters other than letters, digits,
    ``-_. `` become ``_``) or, by default, by the zero-padded class index, so reading back
    (classes = sorted folder names) gives the same labels. PNG/BMP are lossless; JPEG
    (``quality``) is not."""
    Image = _pillow()
    images = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    labels = torch.as_tensor(labels).reshape(-1)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"write_image_folder: images must be uint8 (N, 1 or 3, H, W), got {images.dtype} {tuple(images.shape)}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"write_image_folder: {images.shape[0]} images but {labels.shape[0]} labels")
    num_classes = int(labels.max()) + 1 if labels.numel() else 0
    if class_names is not None:
        folders = [_safe_folder_name(n) for n in class_names]
        if num_classes > len(folders):
            raise ValueError(f"write_image_folder: label {num_classes - 1} has no name among {len(folders)} class names")
        if len(set(folders)) != len(folders):
            raise ValueError("write_image_folder: class names collide as folder names")
    else:
        width = max(1, len(str(max(num_classes - 1, 0))))
        folders = [f"{i:0{width}d}" for i in range(num_classes)]
    ext = ext.lower().lstrip(".")
    arrays = images.detach().cpu().numpy()
    paths = []
    digits = max(5, len(str(len(arrays))))
    for i, (arr, label) in enumerate(zip(arrays, labels.tolist())):
        directory = os.path.join(os.fspath(root), folders[label], inner) if inner else os.path.join(os.fspath(root), folders[label])
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"{i:0{digits}d}.{ext}")
        im = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
        if ext in ("jpg", "jpeg"):
            im.save(path, quality=quality)
        else:
            im.save(path)
        paths.append(path)
    return paths
