"""infer_fast.data.registry: every registered dataset entry's facts agree with each other, the
train sizes the compression ratio uses come from the entries, and a dataset registered by a
test loads through load_dataset by name like the built-in ones."""
import pytest
import torch

from infer_fast.data import (
    Dataset,
    DatasetSpec,
    FolderImageSet,
    ImageSet,
    LoadRequest,
    canonical_name,
    get_dataset,
    get_spec,
    list_datasets,
    load_dataset,
    register_dataset,
    registry,
    write_image_folder,
)
from infer_fast.data.catalog import load_image_folder
from infer_fast.data.registry import DATASET_FAMILIES, LAYOUTS, known_train_size
from infer_fast.storage import KNOWN_TRAIN_SIZES
from infer_fast.storage.compression import resolve_train_size


def test_every_registered_entry_is_consistent():
    spellings = []
    for name in list_datasets():
        entry = get_dataset(name)
        assert entry.name == name and canonical_name(name.upper()) == name
        assert entry.layout in LAYOUTS and entry.family in DATASET_FAMILIES and callable(entry.loader)
        assert {"train", "test"} <= set(entry.splits)
        if entry.layout == "folders":
            assert "val" in entry.splits
        else:  # arrays: fixed classes and size, always decoded whole
            assert entry.spec is not None and entry.in_memory
        if entry.spec is None:  # classes and size from the folder: no fixed train size either
            assert entry.train_size is None
            with pytest.raises(ValueError, match="num_classes"):
                get_spec(name)
        else:
            assert get_spec(name) is entry.spec and entry.spec.name == name
            assert entry.description == entry.spec.description
            assert entry.train_size >= entry.spec.num_classes  # at least one image per class
        for alias in entry.aliases:
            assert canonical_name(alias) == name and get_dataset(alias) is entry
            assert known_train_size(alias) == entry.train_size
        spellings += [name, *entry.aliases]
    assert len(spellings) == len(set(spellings))  # no spelling names two datasets
    assert list_datasets()[-1] == "imagefolder" and get_dataset("imagefolder").spec is None
    # ImageNet always streamed; the other folder datasets by their decoded size (load_dataset)
    assert [n for n in list_datasets() if get_dataset(n).in_memory is False] == ["imagenet"]
    assert [n for n in list_datasets() if get_dataset(n).in_memory is None] == ["tiny-imagenet", "imagefolder"]


def test_train_sizes_come_from_the_entries():
    # every name the former hand-written table knew, with its value
    before = {"cifar10": 50000, "cifar100": 50000, "tiny-imagenet": 100000, "tinyimagenet": 100000,
              "imagenet": 1281167, "imagenet1k": 1281167, "imagenet-1k": 1281167, "fashion-mnist": 60000,
              "fashionmnist": 60000}
    for name, size in before.items():
        assert KNOWN_TRAIN_SIZES[name] == size and resolve_train_size(name, None) == (size, "built-in table")
    assert KNOWN_TRAIN_SIZES["CIFAR-10"] == 50000 and "imagefolder" not in KNOWN_TRAIN_SIZES
    assert dict(KNOWN_TRAIN_SIZES) == {n: get_dataset(n).train_size for n in KNOWN_TRAIN_SIZES}
    assert set(KNOWN_TRAIN_SIZES) >= set(before) | {"fashion-mnist-mini", "ilsvrc2012"}
    assert resolve_train_size("mystery", None) == (None, "unknown") and known_train_size(7) is None
    with pytest.raises(TypeError):
        KNOWN_TRAIN_SIZES["cifar10"] = 1  # read-only
    # the embedded subset's recorded size is what its train split holds
    train = load_dataset("fashion-mnist-mini", "train")
    assert len(train) == get_dataset("fashion-mnist-mini").train_size == 5000


def test_recipe_families_are_the_ones_methods_know():
    from infer_fast import dd_ranking
    from infer_fast.methods import cda, rded

    assert set(dd_ranking.FAMILY_RECIPES) == set(rded.RECIPES) == set(cda.FAMILY_RECIPES) == set(DATASET_FAMILIES)
    families = {n: get_dataset(n).family for n in list_datasets()}
    assert families == {"fashion-mnist": "cifar", "fashion-mnist-mini": "cifar", "cifar10": "cifar", "cifar100": "cifar",
                        "tiny-imagenet": "tiny-imagenet", "imagenet": "imagenet", "imagefolder": "cifar"}
    assert dd_ranking.DDRankingProtocol().recipe_for("imagenet-1k") == "imagenet" and cda.recipe_for("imagenet1k") == "imagenet-1k"
    assert cda.recipe_for({"name": "imagenet", "num_classes": 100}) == "imagenet-1k"
    assert cda.recipe_for("cifar10") == "tiny-imagenet" and rded.recipe_family("tinyimagenet", 64) == "tiny-imagenet"


TOY_SPEC = DatasetSpec("toy-shapes", 2, 1, 4, (0.5,), (0.25,), ("dark", "light"), "two classes of 4x4 squares")


def _toy_images(split):
    """3 dark (label 0) and 3 light (label 1) squares; the test split one of each."""
    n = 3 if split == "train" else 1
    labels = torch.tensor([0] * n + [1] * n)
    return (labels * 200 + 20).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).clone(), labels


@pytest.fixture
def toy_registry(monkeypatch):
    """The registry as it is, restored after the test (entries registered in it vanish)."""
    monkeypatch.setattr(registry, "_DATASETS", dict(registry._DATASETS))


def test_a_toy_dataset_registered_in_a_test_loads_by_name(toy_registry):
    requests = []

    def load_toy(request: LoadRequest) -> ImageSet:
        spec = request.spec()  # (the requested classes/size checked)
        requests.append(request)
        images, labels = _toy_images(request.split)
        return ImageSet(spec, images, labels, request.split)

    entry = register_dataset(Dataset("toy-shapes", TOY_SPEC, load_toy, "arrays", ("train", "test"), 6, "cifar",
                                     aliases=("toy",)))
    assert "toy-shapes" in list_datasets() and get_dataset("TOY") is entry and get_spec("toy") is TOY_SPEC
    train = load_dataset("toy", data_root="/nowhere")
    assert isinstance(train, ImageSet) and train.spec is TOY_SPEC and len(train) == 6
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1] and train.images[:, 0, 0, 0].tolist() == [20] * 3 + [220] * 3
    assert requests[-1] == LoadRequest("toy-shapes", "train", "/nowhere")
    test = load_dataset({"name": "toy-shapes", "num_classes": 2}, "test")
    assert test.split == "test" and test.labels.tolist() == [0, 1] and requests[-1].num_classes == 2
    assert torch.allclose(test.normalized()[:, 0, 0, 0], torch.tensor([(20 / 255 - 0.5) / 0.25, (220 / 255 - 0.5) / 0.25]))
    # its facts are used like the built-in ones'
    assert KNOWN_TRAIN_SIZES["toy"] == 6 and resolve_train_size("toy-shapes", None) == (6, "built-in table")
    with pytest.raises(ValueError, match="toy-shapes: split must be one of train, test, got 'val'"):
        load_dataset("toy", "val")
    with pytest.raises(ValueError, match="toy-shapes.*2 classes, not 3"):
        load_dataset("toy", num_classes=3)
    assert len(requests) == 2  # (both refused before anything was read)


def test_a_toy_folder_dataset_stays_on_disk_by_default(toy_registry, tmp_path):
    images, labels = _toy_images("train")
    write_image_folder(str(tmp_path / "train"), images, labels, class_names=["dark", "light"])
    register_dataset(Dataset("toy-folder", None, load_image_folder, "folders", ("train", "test", "val"), None,
                             "cifar", in_memory=False))
    lazy = load_dataset("toy-folder", data_root=str(tmp_path), image_size=4, channels=1)
    assert isinstance(lazy, FolderImageSet) and len(lazy) == 6 and lazy.spec.class_names == ("dark", "light")
    decoded = load_dataset("toy-folder", data_root=str(tmp_path), image_size=4, channels=1, in_memory=True)
    assert isinstance(decoded, ImageSet) and torch.equal(decoded.images, images) and torch.equal(decoded.labels, labels)
    assert known_train_size("toy-folder") is None and "toy-folder" not in KNOWN_TRAIN_SIZES


@pytest.mark.parametrize("changes, message", [
    ({"name": "cifar10"}, "cifar10 already registered"),
    ({"aliases": ("cifar-10",)}, "cifar-10 already registered"),
])
def test_a_taken_name_is_refused(toy_registry, changes, message):
    fields = dict(name="toy-shapes", spec=TOY_SPEC, loader=print, layout="arrays", splits=("train", "test"),
                  train_size=6, family="cifar")
    fields.update(changes)
    if fields["name"] != TOY_SPEC.name:
        fields["spec"] = DatasetSpec(fields["name"], 2, 1, 4, (0.5,), (0.25,), None, "")
    with pytest.raises(ValueError, match=message):
        register_dataset(Dataset(**fields))
    assert get_dataset("cifar-10").name == "cifar10"


@pytest.mark.parametrize("changes, message", [
    ({"layout": "zip"}, "layout must be one of arrays, folders, got 'zip'"),
    ({"family": "mnist"}, "family must be one of cifar, tiny-imagenet, imagenet"),
    ({"train_size": 0}, "train_size must be a positive integer or None"),
    ({"splits": ("train",)}, "splits must include train and test"),
    ({"in_memory": False}, "only a folder dataset can stay on disk"),
    ({"spec": None}, "only a folder dataset may take its classes from the files"),
    ({"name": "Toy"}, "lower case"),
    ({"aliases": ("TOY",)}, "aliases must be lower case"),
    ({"spec": get_spec("cifar10")}, "its spec is named 'cifar10'"),
])
def test_inconsistent_entries_are_refused(changes, message):
    fields = {**dict(name="toy-shapes", spec=TOY_SPEC, loader=print, layout="arrays", splits=("train", "test"),
                     train_size=6, family="cifar"), **changes}
    with pytest.raises(ValueError, match=message):
        Dataset(**fields)
