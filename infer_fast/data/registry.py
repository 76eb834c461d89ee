"""The dataset registry: one :class:`Dataset` entry per dataset holds its facts (spec: class
count, resolution, normalization, names; its loader, layout, splits, train-split size,
recipe family, aliases). The built-in entries are registered in :mod:`.catalog`.

    spec = get_spec("cifar10")
    lo, hi = spec.pixel_bounds()          # valid normalized range per channel
    get_dataset("imagenet-1k").train_size # 1281167

Normalization constants follow INFER_METHOD.md §3 (CIFAR, ImageNet, Tiny-ImageNet) and the
usual Fashion-MNIST values (0.2860 / 0.3530).
"""
from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from ..checks import check_int
from ..plugins import PLUGINS_HINT, load_plugins

__all__ = ["DatasetSpec", "Dataset", "LoadRequest", "register_dataset", "get_dataset", "get_spec", "list_datasets",
           "canonical_name", "dataset_options", "dataset_label", "known_train_size", "TrainSizes", "DATASET_FAMILIES",
           "recipe_family",
           "LAYOUTS", "IMAGENET_EVAL_CROP"]


@dataclass(frozen=True)
class DatasetSpec:
    """What a model needs to know about a dataset (not where its files are)."""

    name: str
    num_classes: int
    channels: int
    image_size: int  # square: H = W
    mean: Tuple[float, ...]  # per channel, in [0, 1] pixel units
    std: Tuple[float, ...]
    class_names: Optional[Tuple[str, ...]]
    description: str

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"dataset {self.name!r}: num_classes must be >= 1, got {self.num_classes}")
        if self.channels < 1 or self.image_size < 1:
            raise ValueError(f"dataset {self.name!r}: channels and image_size must be >= 1")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"dataset {self.name!r}: mean {self.mean} and std {self.std} need one value per channel ({self.channels})"
            )
        if not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in (*self.mean, *self.std)):
            # (NaN or inf: every normalized pixel would be NaN, 0 or inf)
            raise ValueError(f"dataset {self.name!r}: mean {self.mean} and std {self.std} must be finite numbers")
        if any(not s > 0 for s in self.std):
            raise ValueError(f"dataset {self.name!r}: std must be positive, got {self.std}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"dataset {self.name!r}: {len(self.class_names)} class names for {self.num_classes} classes"
            )

    def pixel_bounds(self) -> Tuple[List[float], List[float]]:
        """Per-channel valid normalized range: lo = (0 - mean) / std, hi = (1 - mean) / std."""
        lo = [(0.0 - m) / s for m, s in zip(self.mean, self.std)]
        hi = [(1.0 - m) / s for m, s in zip(self.mean, self.std)]
        return lo, hi


FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TINY_IMAGENET_MEAN, TINY_IMAGENET_STD = (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)
# The standard ImageNet evaluation (torchvision's reference scripts, timm, SRe2L, RDED,
# DD-Ranking): Resize(256) + CenterCrop(224), i.e. the shorter side resized to
# round(224 / 0.875) = 256 and the central 224 x 224 kept, 87.5% of it. The test split is
# decoded so wherever the imagenet family's recipes apply (ImageNet, and folders of images over
# 64 px); training splits, and the datasets of native resolution, keep the whole shorter side
# (Dataset.crop_fraction).
IMAGENET_EVAL_CROP = 0.875

# The one dataset without fixed classes/size: they come from the folder (and the caller).
IMAGEFOLDER = "imagefolder"
IMAGEFOLDER_DEFAULT_SIZE = 32
IMAGEFOLDER_DESCRIPTION = "user image folder: <root>/<split>/<class>/<image>"

LAYOUTS = ("arrays", "folders")  # decoded whole from array files / one image file per sample
# The recipe families: which per-dataset recipe a method or protocol picks (DD-Ranking's
# student, RDED's factor, CDA's recipe) when the user names none.
DATASET_FAMILIES = ("cifar", "tiny-imagenet", "imagenet")
# The largest images of the small-image recipes (CIFAR's, Tiny-ImageNet's): larger ones take
# ImageNet's, as RDED's release gives its ImageNet subsets (ImageNette, ImageWoof, ImageNet-100
# at 128 or 224 px) the ImageNet-1k recipe: a crop of 1/factor or a roll by 4 px of a 224 px image
# would be no augmentation.
SMALL_IMAGE_MAX = 64


@dataclass(frozen=True)
class LoadRequest:
    """One ``load_dataset`` call as a dataset's loader takes it: the name canonical, the
    split one of the dataset's, the mapping options folded into the arguments."""

    name: str
    split: str
    data_root: Optional[str] = None
    num_classes: Optional[int] = None
    image_size: Optional[int] = None
    download: bool = True
    channels: Optional[int] = None
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    progress: bool = False  # a folder dataset's scan (and decode into memory) shows progress

    def spec(self, num_classes: Optional[int] = None, **changes) -> DatasetSpec:
        """:func:`get_spec` with the request's class count (``num_classes``: the count found
        in the files instead), size and normalization; ``changes``: class_names, channels."""
        count = self.num_classes if num_classes is None else num_classes
        return get_spec(self.name, count, self.image_size, mean=self.mean, std=self.std, **changes)


@dataclass(frozen=True)
class Dataset:
    """Everything infer-fast knows about one dataset, registered once (:func:`register_dataset`).

    ``spec``: classes, channels, size, normalization, names (None: they come from the folder,
    as for imagefolder); ``loader``: reads one split, ``loader(LoadRequest) -> ImageSet |
    FolderImageSet``; ``layout``: "arrays" (fixed classes and size) or "folders" (a class
    subset or another decode size may be asked for); ``splits``: the split names
    ``load_dataset`` accepts; ``in_memory``: whether a folder split is decoded into memory
    by default (None: when its decoded size is small, see ``sets.fits_in_memory``; an array
    dataset is always in memory); ``train_size``: images in the real train split (the full set of the
    compression ratio; None: unknown); ``family``: one of DATASET_FAMILIES; ``aliases``:
    other accepted spellings (lower case)."""

    name: str
    spec: Optional[DatasetSpec]
    loader: Callable[[LoadRequest], Any]
    layout: str
    splits: Tuple[str, ...]
    train_size: Optional[int]
    family: str
    in_memory: Optional[bool] = None
    aliases: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = f"dataset {self.name!r}"
        if not self.name or self.name != self.name.strip().lower():
            raise ValueError(f"{where}: the name must be non-empty and lower case")
        if self.spec is not None and self.spec.name != self.name:
            raise ValueError(f"{where}: its spec is named {self.spec.name!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"{where}: layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.spec is None and self.layout != "folders":
            raise ValueError(f"{where}: only a folder dataset may take its classes from the files (spec None)")
        if not {"train", "test"} <= set(self.splits):
            raise ValueError(f"{where}: splits must include train and test, got {self.splits}")
        check_int(f"{where}: train_size", self.train_size, none="unknown")
        if self.family not in DATASET_FAMILIES:
            raise ValueError(f"{where}: family must be one of {', '.join(DATASET_FAMILIES)}, got {self.family!r}")
        if self.in_memory is not None and not isinstance(self.in_memory, bool):
            raise ValueError(f"{where}: in_memory must be True, False or None (by size), got {self.in_memory!r}")
        if self.in_memory is False and self.layout != "folders":
            raise ValueError(f"{where}: only a folder dataset can stay on disk (in_memory False)")
        if any(a != a.strip().lower() for a in self.aliases):
            raise ValueError(f"{where}: aliases must be lower case, got {self.aliases}")

    @property
    def description(self) -> str:
        return self.spec.description if self.spec is not None else IMAGEFOLDER_DESCRIPTION

    def family_at(self, image_size: Optional[int] = None) -> str:
        """The recipe family of this dataset decoded at ``image_size`` (None: its own size):
        ImageNet's for images larger than SMALL_IMAGE_MAX, else its registered family."""
        if image_size is None:
            image_size = self.spec.image_size if self.spec is not None else IMAGEFOLDER_DEFAULT_SIZE
        return "imagenet" if image_size > SMALL_IMAGE_MAX else self.family

    def crop_fraction(self, split: str, image_size: Optional[int] = None) -> float:
        """The share of the shorter side that decoding ``split``'s image files at ``image_size``
        keeps in its center crop: IMAGENET_EVAL_CROP for the test (= val) split where the
        imagenet family's recipes apply (family_at: ImageNet, and a folder of images over
        SMALL_IMAGE_MAX, trained with ImageNet's student recipe), as every such result is
        evaluated; the whole side otherwise (training splits: their augmentations crop;
        Tiny-ImageNet and the others: native size, no resampling)."""
        return IMAGENET_EVAL_CROP if self.family_at(image_size) == "imagenet" and split != "train" else 1.0


_DATASETS: Dict[str, Dataset] = {}  # canonical name -> entry, in registration order
_REGISTERED_BY: Dict[str, str] = {}  # canonical name -> the module that registered it (caller_module)


def definition_name(obj: Any) -> str:
    """Where the function or class ``obj`` is defined, as "module:qualname": the same for a
    notebook cell run again or a module reloaded, which make new objects of the same definition."""
    return f"{getattr(obj, '__module__', None)}:{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def caller_module(depth: int = 1) -> str:
    """The name of the module whose code called the function that calls this one (``depth``
    frames further up): the module registering an entry ("__main__" for a notebook's cell)."""
    return sys._getframe(depth + 1).f_globals.get("__name__", "?")


def register_dataset(entry: Dataset) -> Dataset:
    """Add ``entry`` to the registry (a ValueError if its name or an alias is taken). The same
    definition again, registered by the same module with a loader of the same name (a notebook
    cell run again, a module reloaded), replaces the entry of that name; a built-in dataset is
    replaced only by :mod:`.catalog`'s own reload."""
    registered_by = caller_module()
    old = _DATASETS.get(entry.name)
    if old is entry:  # (the same entry again: nothing to change)
        return entry
    if old is not None:
        _check_same_definition(old, entry, registered_by)
    taken = {n for d in _DATASETS.values() if d.name != entry.name for n in (d.name, *d.aliases)}
    clash = sorted(taken & {entry.name, *entry.aliases})
    if clash:
        raise ValueError(f"dataset {entry.name!r}: {', '.join(clash)} already registered")
    _DATASETS[entry.name] = entry
    _REGISTERED_BY[entry.name] = registered_by
    return entry


def _check_same_definition(old: Dataset, new: Dataset, registered_by: str) -> None:
    """A ValueError unless ``new``, registered by the module ``registered_by``, is the
    definition of ``old`` again: registered by the same module, its loader of the same name."""
    was = (_REGISTERED_BY.get(old.name, "?"), definition_name(old.loader))
    now = (registered_by, definition_name(new.loader))
    if was != now:
        raise ValueError(f"dataset {new.name!r}: {new.name} already registered by module {was[0]!r} (loader "
                         f"{was[1]}), this one by module {now[0]!r} (loader {now[1]}): give it another name (a "
                         "dataset is replaced only by the module that registered it, registering it again)")


def get_dataset(dataset) -> Dataset:
    """The registered entry of a dataset given by name (any accepted spelling) or mapping."""
    return _DATASETS[canonical_name(dataset)]


def recipe_family(dataset) -> str:
    """The recipe family (one of DATASET_FAMILIES) of ``dataset``, a name or a mapping with its
    ``image_size``: its registered family (an image folder's is CIFAR's), ImageNet's for images
    larger than SMALL_IMAGE_MAX. Every per-dataset recipe is picked by it: a method's recovery
    recipe, the students', DD-Ranking's, RDED's factor, CDA's."""
    return get_dataset(dataset).family_at(dataset_options(dataset)[1].get("image_size"))


def list_datasets() -> List[str]:
    """Registered dataset names (canonical spelling)."""
    return list(_DATASETS)


def known_train_size(dataset) -> Optional[int]:
    """Images in the real train split of ``dataset`` (a name, any accepted spelling), or
    None when it is unknown (imagefolder) or not a registered dataset."""
    try:
        return get_dataset(dataset).train_size
    except ValueError:
        return None


class TrainSizes(Mapping):
    """A read-only view {every accepted spelling: train-split size} of the registered
    datasets whose train size is known (looked up live: see :func:`known_train_size`)."""

    def __getitem__(self, name: str) -> int:
        size = known_train_size(name) if isinstance(name, str) else None
        if size is None:
            raise KeyError(name)
        return size

    def __iter__(self) -> Iterator[str]:
        return iter([n for d in _DATASETS.values() if d.train_size is not None for n in (d.name, *d.aliases)])

    def __len__(self) -> int:
        return sum(1 for _ in self)


# what a dataset mapping may set beside its name: positive integers, and true / false (a folder
# split decoded into memory or streamed from its files, whatever its size)
DATASET_OPTIONS = ("num_classes", "image_size", "in_memory")
DATASET_SWITCHES = ("in_memory",)


def dataset_options(dataset) -> Tuple[str, Dict[str, int]]:
    """(name, options) of a dataset given as a name, or as a mapping ``{name: imagenet,
    num_classes: 100, image_size: 64, in_memory: false}`` (a class-folder subset, another
    resolution, decoded into memory or streamed: folder datasets only). The options are
    checked here, naming the bad one."""
    if not isinstance(dataset, Mapping):
        return canonical_name(dataset), {}
    unknown = sorted(set(dataset) - {"name", *DATASET_OPTIONS})
    if unknown or "name" not in dataset:
        raise ValueError(f"dataset: a mapping takes name and optionally {', '.join(DATASET_OPTIONS)}, got {dict(dataset)!r}")
    name = canonical_name(dataset["name"])
    options = {k: dataset[k] for k in DATASET_OPTIONS if dataset.get(k) is not None}
    for key, value in options.items():
        if key in DATASET_SWITCHES:
            if not isinstance(value, bool):
                raise ValueError(f"dataset: {key} must be true or false, got {value!r}")
        else:
            check_int(f"dataset: {key}", value)
    if options.get("in_memory") is False and _DATASETS[name].layout != "folders":
        raise ValueError(f"dataset: in_memory false is for folder datasets; {name} is always held in memory")
    return name, options


def dataset_label(dataset) -> str:
    """How a dataset given by name or mapping is shown: "imagenet" or "imagenet (100 classes, 64px)"."""
    name, options = dataset_options(dataset)
    details = [f"{options['num_classes']} classes"] if "num_classes" in options else []
    details += [f"{options['image_size']}px"] if "image_size" in options else []
    return f"{name} ({', '.join(details)})" if details else name


def canonical_name(name) -> str:
    """The registered name for ``name`` (case and common spellings such as "CIFAR-10" accepted;
    a dataset mapping's name)."""
    if isinstance(name, Mapping):
        return dataset_options(name)[0]
    if not isinstance(name, str):
        raise ValueError(f"dataset must be a dataset name (a string), got {name!r}")
    key = name.strip().lower()
    for attempt in ("registered", "with the plug-ins"):  # (a plug-in's dataset, perhaps: a set names its dataset)
        if key in _DATASETS:
            return key
        for entry in _DATASETS.values():
            if key in entry.aliases:
                return entry.name
        load_plugins()
    raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())} ({PLUGINS_HINT})")


def get_spec(
    name: str,
    num_classes: Optional[int] = None,
    image_size: Optional[int] = None,
    *,
    channels: Optional[int] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    class_names: Optional[Sequence[str]] = None,
) -> DatasetSpec:
    """The spec of a registered dataset.

    - Fixed datasets (fashion-mnist, cifar...): ``num_classes`` / ``image_size``, when given,
      must match the registry (a ValueError says what differs).
    - tiny-imagenet / imagenet: ``num_classes`` may name a class-folder subset (e.g. 100
      ImageNet classes) and ``image_size`` another decode resolution.
    - imagefolder: ``num_classes`` is required (it comes from the folder); ``image_size``
      defaults to 32, ``channels`` to 3, mean/std to 0.5 per channel.
    """
    key, options = dataset_options(name)
    num_classes = options.get("num_classes") if num_classes is None else num_classes
    image_size = options.get("image_size") if image_size is None else image_size
    check_int("num_classes", num_classes, none="the dataset's")
    check_int("image_size", image_size, none="the dataset's")
    entry = _DATASETS[key]
    if entry.spec is None:
        return _folder_spec(key, num_classes, image_size, channels, mean, std, class_names)
    spec = entry.spec
    if channels is not None and channels != spec.channels:
        raise ValueError(f"dataset {key!r} has {spec.channels} channel(s), not {channels}")
    changes = {}
    if mean is not None:
        changes["mean"] = tuple(float(m) for m in mean)
    if std is not None:
        changes["std"] = tuple(float(s) for s in std)
    if entry.layout == "folders":
        if num_classes is not None and num_classes != spec.num_classes:
            changes["num_classes"] = num_classes
            changes["class_names"] = None
        if image_size is not None:
            changes["image_size"] = image_size
    else:
        if num_classes is not None and num_classes != spec.num_classes:
            raise ValueError(f"dataset {key!r} has {spec.num_classes} classes, not {num_classes} (num_classes requested)")
        if image_size is not None and image_size != spec.image_size:
            raise ValueError(f"dataset {key!r} is {spec.image_size}x{spec.image_size}, not {image_size}x{image_size}")
    if class_names is not None:
        changes["class_names"] = tuple(class_names)
    return replace(spec, **changes) if changes else spec


def _folder_spec(name: str, num_classes: Optional[int], image_size: Optional[int], channels: Optional[int],
                 mean: Optional[Sequence[float]], std: Optional[Sequence[float]],
                 class_names: Optional[Sequence[str]]) -> DatasetSpec:
    """The spec of a dataset whose classes come from its folders (imagefolder)."""
    if num_classes is None:
        raise ValueError(
            f"dataset {name!r} has no fixed class count: pass num_classes (load_dataset reads it from the folders)"
        )
    ch = 3 if channels is None else int(channels)
    if ch not in (1, 3):
        raise ValueError(f"{name}: channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    return DatasetSpec(
        name,
        num_classes,
        ch,
        IMAGEFOLDER_DEFAULT_SIZE if image_size is None else image_size,
        tuple(float(m) for m in mean) if mean is not None else (0.5,) * ch,
        tuple(float(s) for s in std) if std is not None else (0.5,) * ch,
        tuple(class_names) if class_names is not None else None,
        IMAGEFOLDER_DESCRIPTION,
    )
