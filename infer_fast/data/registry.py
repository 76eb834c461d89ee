"""The dataset registry: class count, resolution and normalization of every known dataset.

    spec = get_spec("cifar10")
    lo, hi = spec.pixel_bounds()          # valid normalized range per channel

Normalization constants follow INFER_METHOD.md §3 (CIFAR, ImageNet, Tiny-ImageNet) and the
usual Fashion-MNIST values (0.2860 / 0.3530).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ["DatasetSpec", "get_spec", "list_datasets", "canonical_name", "dataset_options", "dataset_label",
           "FOLDER_DATASETS", "ARRAY_DATASETS"]


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

_SPECS: Dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec(
            "fashion-mnist", 10, 1, 28, FASHION_MNIST_MEAN, FASHION_MNIST_STD, FASHION_MNIST_CLASSES,
            "Fashion-MNIST (Zalando), 60k/10k grayscale 28x28, IDX files",
        ),
        DatasetSpec(
            "fashion-mnist-mini", 10, 1, 28, FASHION_MNIST_MEAN, FASHION_MNIST_STD, FASHION_MNIST_CLASSES,
            "embedded Fashion-MNIST subset, 500/class train + 100/class test, no download",
        ),
        DatasetSpec(
            "cifar10", 10, 3, 32, CIFAR10_MEAN, CIFAR10_STD, CIFAR10_CLASSES,
            "CIFAR-10, 50k/10k RGB 32x32, python pickle batches (cifar-10-batches-py/)",
        ),
        DatasetSpec(
            "cifar100", 100, 3, 32, CIFAR100_MEAN, CIFAR100_STD, CIFAR100_CLASSES,
            "CIFAR-100 (fine labels), 50k/10k RGB 32x32, python pickles (cifar-100-python/)",
        ),
        DatasetSpec(
            "tiny-imagenet", 200, 3, 64, TINY_IMAGENET_MEAN, TINY_IMAGENET_STD, None,
            "Tiny-ImageNet-200, 100k/10k RGB 64x64, folders (tiny-imagenet-200/)",
        ),
        DatasetSpec(
            "imagenet", 1000, 3, 224, IMAGENET_MEAN, IMAGENET_STD, None,
            "ImageNet-1k (ILSVRC2012), train/ and val/ class folders, 224x224",
        ),
    )
}
# The one entry without fixed classes/size: they come from the folder (and the caller).
IMAGEFOLDER = "imagefolder"
IMAGEFOLDER_DEFAULT_SIZE = 32

ARRAY_DATASETS = ("fashion-mnist", "fashion-mnist-mini", "cifar10", "cifar100")  # decoded whole into memory
FOLDER_DATASETS = ("tiny-imagenet", "imagenet", IMAGEFOLDER)  # one image file per sample

_ALIASES = {
    "fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist",
    "fashion_mnist_mini": "fashion-mnist-mini", "fmnist-mini": "fashion-mnist-mini",
    "cifar-10": "cifar10", "cifar_10": "cifar10", "cifar-100": "cifar100", "cifar_100": "cifar100",
    "tinyimagenet": "tiny-imagenet", "tiny_imagenet": "tiny-imagenet", "tiny-imagenet-200": "tiny-imagenet",
    "imagenet-1k": "imagenet", "imagenet1k": "imagenet", "ilsvrc2012": "imagenet",
    "image-folder": IMAGEFOLDER, "image_folder": IMAGEFOLDER,
}


def list_datasets() -> List[str]:
    """Registered dataset names (canonical spelling)."""
    return list(_SPECS) + [IMAGEFOLDER]


DATASET_OPTIONS = ("num_classes", "image_size")  # what a dataset mapping may set beside its name


def dataset_options(dataset) -> Tuple[str, Dict[str, int]]:
    """(name, options) of a dataset given as a name, or as a mapping ``{name: imagenet,
    num_classes: 100, image_size: 64}`` (a class-folder subset, another resolution: folder
    datasets only). The options are checked here, naming the bad one."""
    if not isinstance(dataset, Mapping):
        return canonical_name(dataset), {}
    unknown = sorted(set(dataset) - {"name", *DATASET_OPTIONS})
    if unknown or "name" not in dataset:
        raise ValueError(f"dataset: a mapping takes name and optionally {', '.join(DATASET_OPTIONS)}, got {dict(dataset)!r}")
    name = canonical_name(dataset["name"])
    options = {k: dataset[k] for k in DATASET_OPTIONS if dataset.get(k) is not None}
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"dataset: {key} must be a positive integer, got {value!r}")
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
    key = _ALIASES.get(key, key)
    if key not in _SPECS and key != IMAGEFOLDER:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}")
    return key


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
    if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if image_size is not None and (not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1):
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    if key == IMAGEFOLDER:
        if num_classes is None:
            raise ValueError(
                "dataset 'imagefolder' has no fixed class count: pass num_classes (load_dataset reads it from the folders)"
            )
        ch = 3 if channels is None else int(channels)
        if ch not in (1, 3):
            raise ValueError(f"imagefolder: channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
        return DatasetSpec(
            IMAGEFOLDER,
            num_classes,
            ch,
            IMAGEFOLDER_DEFAULT_SIZE if image_size is None else image_size,
            tuple(float(m) for m in mean) if mean is not None else (0.5,) * ch,
            tuple(float(s) for s in std) if std is not None else (0.5,) * ch,
            tuple(class_names) if class_names is not None else None,
            "user image folder: <root>/<split>/<class>/<image>",
        )
    spec = _SPECS[key]
    if channels is not None and channels != spec.channels:
        raise ValueError(f"dataset {key!r} has {spec.channels} channel(s), not {channels}")
    changes = {}
    if mean is not None:
        changes["mean"] = tuple(float(m) for m in mean)
    if std is not None:
        changes["std"] = tuple(float(s) for s in std)
    if key in FOLDER_DATASETS:
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
