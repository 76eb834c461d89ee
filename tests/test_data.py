"""infer_fast.data: registry, on-disk formats (written here, read back exactly), error
messages, the embedded Fashion-MNIST subset, and the batched transforms.

No test touches the network: the Fashion-MNIST download is pointed at file:// URLs."""
import gzip
import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import decoded

from infer_fast import data
from infer_fast.data import (
    FolderImageSet,
    ImageSet,
    denormalize,
    formats,
    get_spec,
    list_datasets,
    load_dataset,
    normalize,
    random_crop_with_padding,
    random_flip,
    random_resized_crop,
    read_idx,
    write_cifar_batches,
    write_idx,
    write_image_folder,
)
from infer_fast.data.transforms import crop_windows
from infer_fast.progress import PROGRESS_ENV_VAR

PIL = pytest.importorskip("PIL.Image")


def rand_u8(shape, seed=0):
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def rand_labels(n, classes, seed=1):
    labels = torch.arange(n) % classes  # every class present
    return labels[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]


def class_major(labels):
    """Order in which a class-folder reader returns samples written by write_image_folder."""
    return torch.argsort(labels, stable=True)


@pytest.fixture
def no_fmnist_sources(tmp_path, monkeypatch):
    """No system directory, an empty cache, and a download URL that cannot work offline."""
    monkeypatch.setattr(formats, "FASHION_MNIST_SYSTEM_DIRS", [str(tmp_path / "no-system-dir")])
    monkeypatch.setattr(formats, "FASHION_MNIST_URL", (tmp_path / "no-server").as_uri() + "/")
    monkeypatch.setenv("INFER_FAST_CACHE", str(tmp_path / "cache"))
    return tmp_path


def write_fmnist(directory, n, split="train", seed=0, gz=True):
    img_stem, lbl_stem = formats.FASHION_MNIST_FILES[split]
    ext = ".gz" if gz else ""
    images, labels = rand_u8((n, 28, 28), seed), rand_labels(n, 10, seed).to(torch.uint8)
    write_idx(os.path.join(directory, img_stem + ext), images)
    write_idx(os.path.join(directory, lbl_stem + ext), labels)
    return images, labels


# ----------------------------------------------------------------------------- registry


def test_registry_names_and_specs():
    assert list_datasets() == ["fashion-mnist", "fashion-mnist-mini", "cifar10", "cifar100", "tiny-imagenet", "imagenet", "imagefolder"]
    c10 = get_spec("cifar10")
    assert (c10.num_classes, c10.channels, c10.image_size) == (10, 3, 32)
    assert c10.mean == (0.4914, 0.4822, 0.4465) and c10.std == (0.2023, 0.1994, 0.2010)
    assert get_spec("cifar100").mean == (0.5071, 0.4867, 0.4408) and len(get_spec("cifar100").class_names) == 100
    assert get_spec("tiny-imagenet").std == (0.2302, 0.2265, 0.2262) and get_spec("tiny-imagenet").image_size == 64
    assert get_spec("imagenet").num_classes == 1000 and get_spec("imagenet").mean == (0.485, 0.456, 0.406)
    fm = get_spec("fashion-mnist")
    assert (fm.mean, fm.std, fm.channels, fm.image_size) == ((0.2860,), (0.3530,), 1, 28)
    assert get_spec("CIFAR-10").name == "cifar10" and get_spec("Fashion_MNIST").name == "fashion-mnist"
    lo, hi = c10.pixel_bounds()
    assert lo == pytest.approx([-0.4914 / 0.2023, -0.4822 / 0.1994, -0.4465 / 0.2010])
    assert hi == pytest.approx([(1 - 0.4914) / 0.2023, (1 - 0.4822) / 0.1994, (1 - 0.4465) / 0.2010])


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown dataset 'mnist3'.*cifar10.*imagefolder"):
        get_spec("mnist3")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("svhn")
    with pytest.raises(ValueError, match="imagefolder.*num_classes"):
        get_spec("imagefolder")
    with pytest.raises(ValueError, match="cifar10.*10 classes, not 100"):
        get_spec("cifar10", num_classes=100)
    with pytest.raises(ValueError, match="32x32, not 64x64"):
        get_spec("cifar10", image_size=64)
    spec = get_spec("imagefolder", num_classes=4, image_size=16, channels=1)
    assert (spec.num_classes, spec.image_size, spec.mean, spec.std) == (4, 16, (0.5,), (0.5,))
    assert get_spec("imagenet", num_classes=100, image_size=64).num_classes == 100


# --------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.float32, torch.float64])
def test_idx_round_trip(tmp_path, name, dtype):
    x = (torch.randn(3, 5, 2, generator=torch.Generator().manual_seed(0)) * 100).to(dtype)
    path = write_idx(tmp_path / name, x)
    y = read_idx(path)
    assert y.dtype == dtype and torch.equal(x, y)
    with open(path, "rb") as f:
        assert (f.read(2) == b"\x1f\x8b") == name.endswith(".gz")


def test_idx_errors(tmp_path):
    images, labels = rand_u8((6, 28, 28)), torch.arange(6, dtype=torch.uint8)
    img, lbl = str(tmp_path / "img"), str(tmp_path / "lbl")
    write_idx(img, images)
    write_idx(lbl, labels)
    assert torch.equal(formats.read_idx_pair(img, lbl)[0][:, 0], images)
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        read_idx(tmp_path / "nothing-here")
    # wrong magic: labels where images are expected, and garbage
    with pytest.raises(ValueError, match=r"lbl: wrong magic number 0x00000801, expected 0x00000803"):
        formats.read_idx_pair(lbl, img)
    (tmp_path / "junk").write_bytes(b"\x12\x34\x56\x78" + bytes(100))
    with pytest.raises(ValueError, match="junk: wrong magic number 0x12345678"):
        read_idx(tmp_path / "junk")
    # truncated: fewer bytes than the header promises (raw and gz), or no header at all
    raw = open(img, "rb").read()
    (tmp_path / "cut").write_bytes(raw[:-10])
    with pytest.raises(ValueError, match=r"cut: truncated IDX file: header says 6x28x28 \(4704 data bytes\), the file holds 4694"):
        read_idx(tmp_path / "cut")
    with open(tmp_path / "cut2.gz", "wb") as f:
        f.write(gzip.compress(raw[:-1]))
    with pytest.raises(ValueError, match="cut2.gz: truncated IDX"):
        read_idx(tmp_path / "cut2.gz")
    gz = gzip.compress(raw)
    (tmp_path / "cutstream.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(ValueError, match="cutstream.gz: truncated or corrupt gzip"):
        read_idx(tmp_path / "cutstream.gz")
    (tmp_path / "tiny").write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="tiny: truncated IDX file"):
        read_idx(tmp_path / "tiny")
    (tmp_path / "long").write_bytes(raw + b"xx")
    with pytest.raises(ValueError, match="long: 2 unexpected bytes"):
        read_idx(tmp_path / "long")
    (tmp_path / "fake.gz").write_bytes(raw)
    with pytest.raises(ValueError, match="fake.gz: named .gz but is not a gzip file"):
        read_idx(tmp_path / "fake.gz")
    # label/image count mismatch
    write_idx(lbl, torch.arange(5, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"label/image count mismatch: .*img holds 6 images, .*lbl holds 5 labels"):
        formats.read_idx_pair(img, lbl)
    write_idx(lbl, torch.full((6,), 10, dtype=torch.uint8))
    with pytest.raises(ValueError, match="label 10 out of range for 10 classes"):
        formats.read_idx_pair(img, lbl, num_classes=10)


# ----------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_mini_counts_and_balance():
    train, test = load_dataset("fashion-mnist-mini", "train"), load_dataset("fashion-mnist-mini", "test")
    assert isinstance(train, ImageSet) and (len(train), len(test)) == (5000, 1000)
    assert train.images.dtype == torch.uint8 and tuple(train.images.shape) == (5000, 1, 28, 28)
    assert train.spec.num_classes == 10 and train.spec.class_names[0] == "T-shirt/top"
    assert train.class_counts().tolist() == [500] * 10 and test.class_counts().tolist() == [100] * 10
    assert 0.2 < train.images.float().mean().item() / 255 < 0.4  # real clothing images, not noise
    with pytest.raises(ValueError, match="10 classes, not 100"):
        load_dataset("fashion-mnist-mini", num_classes=100)
    for name in ("ATTRIBUTION.md", "LICENSE"):
        with data.embedded_file(name) as path:
            text = open(path, encoding="utf-8").read()
        assert "Zalando" in text and "MIT" in text


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_data_root_preferred(no_fmnist_sources, tmp_path, gz):
    root = tmp_path / "root"
    images, labels = write_fmnist(root, 7, "train", gz=gz)
    # the system directory also holds a (different) copy: the data root wins
    system = tmp_path / "system"
    write_fmnist(system, 9, "train", seed=5)
    formats.FASHION_MNIST_SYSTEM_DIRS[:] = [str(system)]
    ds = load_dataset("fashion-mnist", "train", data_root=str(root))
    assert len(ds) == 7 and torch.equal(ds.images[:, 0], images) and torch.equal(ds.labels, labels.long())
    # data_root/fashion-mnist/ also counts as the data root
    sub = tmp_path / "root2" / "fashion-mnist"
    write_fmnist(sub, 4, "train")
    assert len(load_dataset("fashion-mnist", "train", data_root=str(tmp_path / "root2"))) == 4
    # without a data root: the system directory, then the cache
    assert len(load_dataset("fashion-mnist", "train")) == 9
    formats.FASHION_MNIST_SYSTEM_DIRS[:] = []
    write_fmnist(tmp_path / "cache" / "fashion-mnist", 3, "train")
    assert len(load_dataset("fashion-mnist", "train")) == 3


def test_fashion_mnist_download_and_all_fail(no_fmnist_sources, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("fashion-mnist", "test")
    msg = str(info.value)
    assert "t10k-images-idx3-ubyte" in msg
    assert str(tmp_path / "no-system-dir") in msg and "dataset-fashion-mnist" in msg  # (1) Debian's directory
    assert formats.FASHION_MNIST_URL in msg and "failed" in msg  # (2) the download
    with pytest.raises(FileNotFoundError, match=r"download=False"):
        load_dataset("fashion-mnist", "test", download=False)
    # a working "server" (file:// URL): the files are downloaded into the cache, then reused
    server = tmp_path / "server"
    images, _ = write_fmnist(server, 5, "test")
    monkeypatch.setattr(formats, "FASHION_MNIST_URL", server.as_uri())
    ds = load_dataset("fashion-mnist", "test")
    assert torch.equal(ds.images[:, 0], images)
    assert sorted(os.listdir(tmp_path / "cache" / "fashion-mnist")) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    monkeypatch.setattr(formats, "FASHION_MNIST_URL", (tmp_path / "gone").as_uri())
    assert len(load_dataset("fashion-mnist", "test")) == 5
    # a broken download is rejected and leaves nothing in the cache
    (server / "train-images-idx3-ubyte.gz").write_bytes(b"not a file")
    (server / "train-labels-idx1-ubyte.gz").write_bytes(b"")
    monkeypatch.setattr(formats, "FASHION_MNIST_URL", server.as_uri())
    with pytest.raises(FileNotFoundError, match="wrong magic number"):
        load_dataset("fashion-mnist", "train")
    assert sorted(os.listdir(tmp_path / "cache" / "fashion-mnist")) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_a_download_stopped_after_its_first_file_is_finished_by_the_next(no_fmnist_sources, tmp_path, monkeypatch):
    """A download that failed on the labels (the images already in the cache) left a cache every
    later load refused ("holds part of the dataset") without downloading again; an offline
    failure left an empty cache folder."""
    with pytest.raises(FileNotFoundError, match="failed"):
        load_dataset("fashion-mnist", "test")
    assert not (tmp_path / "cache" / "fashion-mnist").exists()  # (offline: nothing made)
    server = tmp_path / "server"
    images, labels = write_fmnist(server, 5, "test")
    labels_file = server / "t10k-labels-idx1-ubyte.gz"
    labels_file.rename(tmp_path / "held-back.gz")  # (the server fails on the second file)
    monkeypatch.setattr(formats, "FASHION_MNIST_URL", server.as_uri())
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset("fashion-mnist", "test")
    assert os.listdir(tmp_path / "cache" / "fashion-mnist") == ["t10k-images-idx3-ubyte.gz"]  # (whole: kept)
    with pytest.raises(FileNotFoundError, match="download=False"):  # (a partial cache is no data set)
        load_dataset("fashion-mnist", "test", download=False)
    (tmp_path / "held-back.gz").rename(labels_file)
    (server / "t10k-images-idx3-ubyte.gz").unlink()  # (the first file is not fetched again)
    # a download killed on this host (its process gone) left its partial file: removed; a live one's kept
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    cache = tmp_path / "cache" / "fashion-mnist"
    killed, alive = (cache / f".t10k-labels-idx1-ubyte.gz.download-{socket.gethostname()}-{pid}"
                     for pid in (gone, os.getppid()))
    for path in (killed, alive):
        path.write_bytes(b"partial")
    ds = load_dataset("fashion-mnist", "test")
    assert torch.equal(ds.images[:, 0], images) and torch.equal(ds.labels, labels.long())
    assert sorted(os.listdir(cache)) == sorted([alive.name, "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"])


@pytest.mark.parametrize("dataset", ["fashion-mnist", "cifar10", "cifar100", "tiny-imagenet", "imagenet",
                                     "imagefolder"])
@pytest.mark.parametrize("root, problem", [("missing", "does not exist"), ("a-file", "is not a directory")])
def test_a_data_root_that_is_no_directory_is_refused_by_name(tmp_path, monkeypatch, dataset, root, problem):
    # (the system directory holds the files: a root given must not be passed over for them)
    system = tmp_path / "system"
    write_fmnist(system, 3, "test")
    monkeypatch.setattr(formats, "FASHION_MNIST_SYSTEM_DIRS", [str(system)])
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(FileNotFoundError, match=rf"data_root \(--data-root\) .*{root} {problem}; expected the folder"):
        load_dataset(dataset, "test", data_root=str(tmp_path / root))


def test_fashion_mnist_root_without_the_files_is_the_only_place_searched(tmp_path, monkeypatch):
    system = tmp_path / "system"
    write_fmnist(system, 3, "test")
    monkeypatch.setattr(formats, "FASHION_MNIST_SYSTEM_DIRS", [str(system)])
    monkeypatch.setenv("INFER_FAST_CACHE", str(tmp_path / "cache"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("fashion-mnist", "test", data_root=str(tmp_path / "empty"))
    msg = str(info.value)
    assert "data_root (--data-root)" in msg and "t10k-images-idx3-ubyte[.gz]" in msg
    assert str(tmp_path / "empty" / "FashionMNIST" / "raw") in msg and str(system) not in msg
    assert not os.path.exists(tmp_path / "cache")  # nothing downloaded either


def test_fashion_mnist_partial_root(no_fmnist_sources, tmp_path):
    root = tmp_path / "partial"
    write_fmnist(root, 3, "train")
    os.remove(root / "train-labels-idx1-ubyte.gz")
    with pytest.raises(FileNotFoundError, match="partial holds part of the dataset but not train-labels-idx1-ubyte"):
        load_dataset("fashion-mnist", "train", data_root=str(root))
    with pytest.raises(ValueError, match="split must be"):
        load_dataset("fashion-mnist", "validation", data_root=str(root))


# ------------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("variant,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_round_trip(tmp_path, variant, classes):
    train_x, test_x = rand_u8((23, 3, 32, 32), 1), rand_u8((7, 3, 32, 32), 2)
    train_y, test_y = rand_labels(23, classes if classes == 10 else 23, 3), rand_labels(7, 7, 4)
    if classes == 100:
        train_y = train_y * 4 + 3  # labels up to 91
    names = [f"name{i}" for i in range(classes)]
    folder = write_cifar_batches(tmp_path, (train_x, train_y), (test_x, test_y), variant, class_names=names)
    expected = {"cifar10": ["batches.meta"] + [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "cifar100": ["meta", "test", "train"]}
    assert sorted(os.listdir(folder)) == expected[variant]
    tr = load_dataset(variant, "train", data_root=str(tmp_path))
    te = load_dataset(variant.upper(), "test", data_root=str(tmp_path), num_classes=classes)
    assert torch.equal(tr.images, train_x) and torch.equal(tr.labels, train_y) and tr.labels.dtype == torch.int64
    assert torch.equal(te.images, test_x) and torch.equal(te.labels, test_y)
    assert tr.spec.class_names == tuple(names) and tr.spec.num_classes == classes
    # the folder itself can be the data root
    assert torch.equal(load_dataset(variant, "test", data_root=folder).images, test_x)
    # the official pickles: bytes keys, data (N, 3072) row-major R, G, B planes
    batch = pickle.load(open(os.path.join(folder, "test_batch" if variant == "cifar10" else "test"), "rb"), encoding="bytes")
    assert batch[b"data"].shape == (7, 3072) and torch.equal(torch.from_numpy(batch[b"data"][:, 1024:2048]).view(7, 32, 32), test_x[:, 1])


def test_cifar_errors(tmp_path):
    x, y = rand_u8((10, 3, 32, 32)), torch.arange(10)
    folder = write_cifar_batches(tmp_path, (x, y), (x, y), "cifar10")
    with pytest.raises(ValueError, match="10 classes, not 100"):
        load_dataset("cifar10", data_root=str(tmp_path), num_classes=100)
    with pytest.raises(FileNotFoundError, match="pass data_root"):
        load_dataset("cifar10")
    with pytest.raises(FileNotFoundError, match="no cifar-100-python/ under"):
        load_dataset("cifar100", data_root=str(tmp_path))
    os.remove(os.path.join(folder, "data_batch_3"))
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_dataset("cifar10", data_root=str(tmp_path))
    raw = open(os.path.join(folder, "test_batch"), "rb").read()
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        f.write(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="test_batch: truncated or not a CIFAR python pickle"):
        load_dataset("cifar10", "test", data_root=str(tmp_path))
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        pickle.dump({b"data": x.numpy().reshape(10, -1), b"labels": list(range(9))}, f)
    with pytest.raises(ValueError, match="label/image count mismatch in .*test_batch: 10 images, 9 labels"):
        load_dataset("cifar10", "test", data_root=str(tmp_path))
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        pickle.dump({b"data": x.numpy().reshape(10, -1)[:, :100], b"labels": list(range(10))}, f)
    with pytest.raises(ValueError, match=r"must be uint8 of shape \(N, 3072\)"):
        load_dataset("cifar10", "test", data_root=str(tmp_path))
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        pickle.dump({b"data": x.numpy().reshape(10, -1), b"labels": [12] * 10}, f)
    with pytest.raises(ValueError, match="test_batch: label 12 out of range for 10 classes"):
        load_dataset("cifar10", "test", data_root=str(tmp_path))
    # a negative label is named as it is (not the largest label), with the file
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        pickle.dump({b"data": x.numpy().reshape(10, -1), b"labels": [9] + [-1] * 9}, f)
    with pytest.raises(ValueError, match=r"test_batch: label -1 out of range for 10 classes \(0 to 9\) \(9 labels"):
        load_dataset("cifar10", "test", data_root=str(tmp_path))


# ------------------------------------------------------------------------ image folders


def test_image_folder_round_trip(tmp_path):
    train_x, train_y = rand_u8((11, 3, 16, 16), 1), rand_labels(11, 3, 2)
    test_x, test_y = rand_u8((5, 3, 16, 16), 3), torch.tensor([0, 2, 2, 1, 0])
    write_image_folder(tmp_path / "train", train_x, train_y, class_names=["cat", "dog", "eel"])
    write_image_folder(tmp_path / "val", test_x, test_y, class_names=["cat", "dog", "eel"])
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "dog" / ".DS_Store").write_bytes(b"\0")
    tr = load_dataset("imagefolder", "train", data_root=str(tmp_path), image_size=16)
    order = class_major(train_y)
    assert isinstance(tr, ImageSet) and tr.spec.num_classes == 3 and tr.spec.class_names == ("cat", "dog", "eel")
    assert torch.equal(tr.images, train_x[order]) and torch.equal(tr.labels, train_y[order])
    assert tr.spec.mean == (0.5, 0.5, 0.5)
    te = load_dataset("imagefolder", "test", data_root=str(tmp_path), image_size=16, num_classes=3, mean=(0.1, 0.2, 0.3), std=(1, 1, 1))
    assert torch.equal(te.images, test_x[class_major(test_y)]) and te.spec.mean == (0.1, 0.2, 0.3)
    # lazy (FolderImageSet), and decoding with a worker process gives the same tensors
    lazy = load_dataset("imagefolder", "train", data_root=str(tmp_path), image_size=16, in_memory=False)
    assert isinstance(lazy, FolderImageSet) and len(lazy) == 11
    img, label = lazy[0]
    assert img.dtype == torch.uint8 and torch.equal(img, tr.images[0]) and label == int(tr.labels[0])
    assert torch.equal(lazy.to_memory(num_workers=1, batch_size=4).images, tr.images)
    assert torch.equal(lazy.per_class(2, seed=3).labels, tr.per_class(2, seed=3).labels)
    # resize (shorter side) + center crop; grayscale
    small = load_dataset("imagefolder", "train", data_root=str(tmp_path), image_size=8, channels=1)
    assert tuple(small.images.shape) == (11, 1, 8, 8) and small.spec.mean == (0.5,)


def test_image_folder_grayscale_and_resize(tmp_path):
    x, y = rand_u8((4, 1, 12, 12)), torch.tensor([0, 1, 0, 1])
    write_image_folder(tmp_path / "train", x, y)  # default names "0", "1"
    ds = load_dataset("imagefolder", data_root=str(tmp_path), image_size=12, channels=1)
    assert torch.equal(ds.images, x[class_major(y)])
    # a 40x20 image: shorter side 20 -> 10, width 40 -> 20, then the central 10 columns
    wide = np.tile(np.arange(40, dtype=np.uint8) * 6, (20, 1))
    PIL.fromarray(wide).save(tmp_path / "wide.png")
    out = formats.decode_image(str(tmp_path / "wide.png"), 10, channels=1)
    assert tuple(out.shape) == (1, 10, 10)
    expected = np.asarray(PIL.fromarray(wide).resize((20, 10), PIL.BILINEAR))[:, 5:15]
    assert np.array_equal(out[0].numpy(), expected)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot decode image .*bad.png"):
        formats.decode_image(str(tmp_path / "bad.png"), 10)


def test_image_folder_errors(tmp_path):
    x, y = rand_u8((4, 3, 8, 8)), torch.tensor([0, 1, 0, 1])
    write_image_folder(tmp_path / "train", x, y)
    with pytest.raises(ValueError, match="found 2 classes, expected 5 \\(num_classes requested\\)"):
        load_dataset("imagefolder", data_root=str(tmp_path), num_classes=5)
    with pytest.raises(FileNotFoundError, match="no test/ or val/ folder under"):
        load_dataset("imagefolder", "test", data_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pass data_root"):
        load_dataset("imagefolder")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("imagefolder", data_root=str(tmp_path / "nope"))
    os.makedirs(tmp_path / "train" / "2")
    (tmp_path / "train" / "2" / "readme.md").write_text("no images here")
    with pytest.raises(ValueError, match=r"empty class folder: .*train/2 holds no images"):
        load_dataset("imagefolder", data_root=str(tmp_path))
    os.makedirs(tmp_path / "flat" / "train")
    for i in range(4):  # images straight in train/, no class folders
        PIL.fromarray(x[i].permute(1, 2, 0).numpy()).save(tmp_path / "flat" / "train" / f"{i}.png")
    with pytest.raises(ValueError, match="no class folders under .*holds 4 loose images"):
        load_dataset("imagefolder", data_root=str(tmp_path / "flat"))
    # a test split with a class the training split does not have
    write_image_folder(tmp_path / "test", x, torch.tensor([0, 1, 2, 3]))
    os.rename(tmp_path / "train" / "2", tmp_path / "unused")
    with pytest.raises(ValueError, match=r"class folder\(s\) \['2', '3'\] are not among the 2 known classes"):
        load_dataset("imagefolder", "test", data_root=str(tmp_path))


def _save_png_named(path, arr):
    """Lossless content under any name (Pillow reads the format from the bytes)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.fromarray(arr.permute(1, 2, 0).numpy()).save(path, format="PNG")


def test_tiny_imagenet_tree(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    wnids = ["n03", "n01", "n02"]  # wnids.txt is not sorted; labels follow the sorted order
    os.makedirs(base)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    x = rand_u8((6, 3, 64, 64), 7)
    y = torch.tensor([2, 0, 1, 0, 2, 1])  # labels in sorted-wnid order: n01=0, n02=1, n03=2
    sorted_w = sorted(wnids)
    for i in range(6):
        _save_png_named(str(base / "train" / sorted_w[y[i]] / "images" / f"{sorted_w[y[i]]}_{i}.JPEG"), x[i])
    (base / "train" / "n01" / "n01_boxes.txt").write_text("boxes, not an image")
    vx, vy = rand_u8((4, 3, 64, 64), 8), torch.tensor([1, 2, 0, 1])
    lines = []
    for i in range(4):
        _save_png_named(str(base / "val" / "images" / f"val_{i}.JPEG"), vx[i])
        lines.append(f"val_{i}.JPEG\t{sorted_w[vy[i]]}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")

    with pytest.raises(ValueError, match=r"tiny-imagenet at .*: found 3 classes, expected 200 .*num_classes: 3"):
        load_dataset("tiny-imagenet", data_root=str(tmp_path))
    tr = load_dataset("tiny-imagenet", "train", data_root=str(tmp_path), num_classes=3)
    order = sorted(range(6), key=lambda i: (int(y[i]), f"{sorted_w[y[i]]}_{i}"))
    assert tr.spec.class_names == ("n01", "n02", "n03") and tr.spec.image_size == 64 and tr.spec.mean == (0.4802, 0.4481, 0.3975)
    assert torch.equal(tr.images, x[order]) and torch.equal(tr.labels, y[order])
    va = load_dataset("tiny-imagenet", "test", data_root=str(base), num_classes=3)
    assert torch.equal(va.images, vx) and torch.equal(va.labels, vy)
    small = load_dataset("tiny-imagenet", "val", data_root=str(tmp_path), num_classes=3, image_size=32, in_memory=False)
    assert isinstance(small, FolderImageSet) and tuple(small[0][0].shape) == (3, 32, 32)

    # val in class-folder form
    os.rename(base / "val", tmp_path / "val_annotated")
    for i in range(4):
        _save_png_named(str(base / "val" / sorted_w[vy[i]] / f"v{i}.png"), vx[i])
    va2 = load_dataset("tiny-imagenet", "test", data_root=str(tmp_path), num_classes=3)
    assert torch.equal(va2.labels, vy.sort().values)

    # errors: an unknown wnid and a missing file in the annotations
    shutil.rmtree(base / "val")
    os.rename(tmp_path / "val_annotated", base / "val")
    ann = base / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_9.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match=r"val_annotations.txt:5: class 'n99' is not in wnids.txt"):
        load_dataset("tiny-imagenet", "test", data_root=str(tmp_path), num_classes=3)
    ann.write_text("\n".join(lines[:2]) + "\nval_9.JPEG\tn01\t0\t0\t1\t1\n")
    with pytest.raises(FileNotFoundError, match=r"val_annotations.txt:3: image file not found: .*val_9.JPEG"):
        load_dataset("tiny-imagenet", "test", data_root=str(tmp_path), num_classes=3)
    with pytest.raises(FileNotFoundError, match="no tiny-imagenet-200/"):
        load_dataset("tiny-imagenet", data_root=str(base / "train" / "n01"))


def test_imagenet_tree(tmp_path):
    # smooth images, so that JPEG keeps them close to the original
    ramp = torch.linspace(0, 1, 30).view(1, 1, 1, 30) * torch.linspace(0.3, 1, 20).view(1, 1, 20, 1)
    x = (ramp * torch.tensor([200.0, 120.0, 60.0]).view(1, 3, 1, 1) + torch.arange(5.0).view(5, 1, 1, 1) * 10).round().to(torch.uint8)
    y = torch.tensor([0, 1, 1, 0, 1])
    write_image_folder(tmp_path / "train", x, y, class_names=["n015", "n020"], ext="JPEG")
    write_image_folder(tmp_path / "val", x[:2], y[:2], class_names=["n015", "n020"], ext="png")
    with pytest.raises(ValueError, match="found 2 classes, expected 1000"):
        load_dataset("imagenet", data_root=str(tmp_path))
    tr = load_dataset("imagenet", "train", data_root=str(tmp_path), num_classes=2, image_size=16)
    assert isinstance(tr, FolderImageSet) and len(tr) == 5 and tr.spec.mean == (0.485, 0.456, 0.406)
    img, label = tr[0]
    assert img.dtype == torch.uint8 and tuple(img.shape) == (3, 16, 16) and label == 0
    # JPEG is lossy: close to the resized original, not equal
    ref = F.interpolate(x[:1].float(), size=(16, 24), mode="bilinear", antialias=True, align_corners=False)[0, :, :, 4:20]
    assert (img.float() - ref).abs().mean() < 4
    va = load_dataset("imagenet", "val", data_root=str(tmp_path), num_classes=2, image_size=16, in_memory=True)
    assert isinstance(va, ImageSet) and va.labels.tolist() == [0, 1] and va.spec.class_names == ("n015", "n020")
    # val must be in class-folder form
    shutil.rmtree(tmp_path / "val")
    os.makedirs(tmp_path / "val")
    for i in range(2):
        PIL.fromarray(x[i].permute(1, 2, 0).numpy()).save(tmp_path / "val" / f"ILSVRC2012_val_{i:08d}.JPEG")
    with pytest.raises(ValueError, match="holds flat images; the val split must be in class-folder form"):
        load_dataset("imagenet", "test", data_root=str(tmp_path), num_classes=2)


def test_a_folder_scan_and_its_digest_show_progress_only_when_they_run_long(tmp_path, monkeypatch, capsys):
    """The scan of a folder split and its listing digest (a size check per file), minutes on
    ImageNet, open progress bars once they have run SHORT_PHASE_S: a small tree says nothing,
    and nothing is said without progress."""
    from infer_fast.data import folders, sets

    monkeypatch.setenv(PROGRESS_ENV_VAR, "lines")
    write_image_folder(tmp_path / "train", rand_u8((4, 3, 8, 8)), torch.tensor([0, 1, 0, 1]),
                       class_names=["n01", "n02"], ext="png")
    options = dict(data_root=str(tmp_path), num_classes=2, image_size=8)
    load_dataset("imagenet", "train", progress=True, **options).digest(progress=True)
    assert capsys.readouterr().err == ""  # short
    monkeypatch.setattr(folders, "SHORT_PHASE_S", 0.0)
    monkeypatch.setattr(sets, "SHORT_PHASE_S", 0.0)
    quiet = load_dataset("imagenet", "train", **options)
    digest = quiet.digest()
    assert capsys.readouterr().err == ""  # no progress asked
    assert load_dataset("imagenet", "train", progress=True, **options).digest(progress=True) == digest
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"scanning {tmp_path / 'train'}: 100% 2/2 ")
    assert lines[1].startswith("listing digest imagenet train: 100% 4/4 ")


CACHED = {"name": "imagenet", "num_classes": 2, "image_size": 8}


def _val_tree(root, n=6, seed=0):
    """An ImageNet-layout tree of PNGs (lossless: the cache's pixels compare exactly)."""
    labels = torch.arange(n) % 2
    for split in ("train", "val"):
        write_image_folder(root / split, rand_u8((n, 3, 8, 8), seed), labels, class_names=["n01", "n02"], ext="png")


def _cached_test_split(tmp_path):
    return data.load_test_split(CACHED, data_root=str(tmp_path / "tree"), decode_cache=str(tmp_path / "cache"))


def test_decode_cache_is_reused_memory_mapped_without_decoding(tmp_path, decode_log):
    """A second load_test_split with the same decode_cache decodes nothing and maps the same
    pixels from the cache file."""
    _val_tree(tmp_path / "tree")
    first = _cached_test_split(tmp_path)
    assert isinstance(first, ImageSet) and decoded(decode_log) == 6
    [cache_file] = (tmp_path / "cache").glob("*.u8")
    again = _cached_test_split(tmp_path)
    assert decoded(decode_log) == 0
    direct = load_dataset(CACHED, "test", data_root=str(tmp_path / "tree")).to_memory(num_workers=0)
    assert torch.equal(again.images, direct.images) and torch.equal(again.labels, direct.labels)
    if os.path.exists("/proc/self/maps"):  # the pixels are the file's pages, not a copy
        assert str(cache_file) in open("/proc/self/maps").read()


def _rss_file_bytes():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssFile:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the resident size from /proc")
def test_a_mapped_split_read_in_order_holds_about_a_batch(tmp_path):
    """Going through a MappedImageSet (the decode cache) batch by batch keeps about one batch of
    its file resident, not the file: without the release, a pass over ImageNet's val split held
    7 GB; its pixels are the file's, and a batch kept past its turn still reads right."""
    from infer_fast.data.sets import MappedImageSet

    spec = get_spec("imagenet")
    n, shape = 1200, (3, 224, 224)  # 180 MB
    pixels = np.random.default_rng(0).integers(0, 256, size=(64,) + shape, dtype=np.uint8)
    path = tmp_path / "cache.u8"
    with open(path, "wb") as f:
        for start in range(0, n, 64):
            f.write(pixels[: min(64, n - start)].tobytes())
    mapped = MappedImageSet(spec, str(path), (n,) + shape, torch.arange(n) % 1000, "val")
    batch_bytes, before, most = 100 * int(np.prod(shape)), _rss_file_bytes(), 0
    kept = None
    for k, (images, labels) in enumerate(mapped.batches(100)):
        assert torch.equal(images[0], torch.from_numpy(pixels[(100 * k) % 64]))
        assert labels[0] == (100 * k) % 1000 and int(images.sum()) > 0  # (every pixel read, as a forward does)
        most = max(most, _rss_file_bytes() - before)
        kept = images if k == 0 else kept
    assert most <= 3 * batch_bytes < n * int(np.prod(shape)) / 3  # (15 MB a batch; 180 MB in all)
    assert torch.equal(kept[0], torch.from_numpy(pixels[0]))  # (released, read again from the file)
    assert torch.equal(mapped.images_at([1199, 3]), torch.from_numpy(pixels[[1199 % 64, 3]]))


@pytest.mark.parametrize("interruption", ["no record", "torn record", "short file", "decode in progress"])
def test_an_interrupted_decode_cache_is_decoded_again(tmp_path, decode_log, interruption):
    """What a kill can leave (the file renamed but its .json record not written, a record cut
    short, a partial temporary file) and a cache file of the wrong size are not trusted: the
    split is decoded again and the pixels are right; a killed writer's temporary file (its
    process gone from this host) is removed."""
    _val_tree(tmp_path / "tree")
    _cached_test_split(tmp_path)
    decoded(decode_log)
    [cache_file] = (tmp_path / "cache").glob("*.u8")
    record = cache_file.with_name(cache_file.name + ".json")
    if interruption == "no record":
        record.unlink()
    elif interruption == "torn record":
        record.write_text(record.read_text()[:20])
    elif interruption == "short file":
        cache_file.write_bytes(cache_file.read_bytes()[:100])
    else:  # killed while decoding: only the temporary file of the first decode is there
        gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        prefix = f".{cache_file.name}.tmp-"
        dead, alive, elsewhere = (cache_file.with_name(f"{prefix}{host}-{pid}") for host, pid in
                                  ((socket.gethostname(), int(gone.stdout)), (socket.gethostname(), os.getppid()),
                                   ("other-host", int(gone.stdout))))
        # a dead writer's decode of the split before its files changed (another name): removed too
        before = cache_file.with_name(f".{cache_file.name.replace('px-', 'px-0')}.tmp-{socket.gethostname()}-{gone.stdout.strip()}")
        cache_file.rename(dead)
        for path in (alive, elsewhere, before):
            path.write_bytes(b"")
    rebuilt = _cached_test_split(tmp_path)
    assert decoded(decode_log) == 6
    if interruption == "decode in progress":  # the dead writers' files removed, not another's
        assert not dead.exists() and not before.exists() and alive.exists() and elsewhere.exists()
    direct = load_dataset(CACHED, "test", data_root=str(tmp_path / "tree")).to_memory(num_workers=0)
    assert torch.equal(rebuilt.images, direct.images)
    decoded(decode_log)  # (the direct decode's)
    _cached_test_split(tmp_path)  # complete again: reused
    assert decoded(decode_log) == 0


def test_a_decode_cache_of_other_files_is_not_reused(tmp_path, decode_log, capsys):
    """A changed tree (here a file added) has another digest: its split is decoded into a
    cache of its own, never read from the old one, which is removed (it would never be read
    again); the caches of another tree, or of the same tree at another resolution or class
    count, in the same directory are kept."""
    _val_tree(tmp_path / "tree")
    _val_tree(tmp_path / "other", n=4)
    cache = str(tmp_path / "cache")
    kept = [data.load_test_split(CACHED, data_root=str(tmp_path / "other"), decode_cache=cache),
            data.load_test_split({**CACHED, "image_size": 6}, data_root=str(tmp_path / "tree"), decode_cache=cache)]
    old = _cached_test_split(tmp_path)
    decoded(decode_log)
    [old_file] = [p for p in (tmp_path / "cache").glob("*.u8") if old.files.listing_digests()[1][:16] in p.name]
    PIL.fromarray(rand_u8((8, 8, 3), 9).numpy()).save(tmp_path / "tree" / "val" / "n02" / "added.png")
    capsys.readouterr()
    grown = data.load_test_split(CACHED, data_root=str(tmp_path / "tree"), decode_cache=cache, progress=True)
    assert len(grown) == 7 and decoded(decode_log) == 7
    direct = load_dataset(CACHED, "test", data_root=str(tmp_path / "tree")).to_memory(num_workers=0)
    assert torch.equal(grown.images, direct.images)
    assert not old_file.exists() and not Path(f"{old_file}.json").exists()
    assert f"decode cache: removed {old_file}" in capsys.readouterr().out
    left = sorted(p.name for p in (tmp_path / "cache").glob("*.u8"))
    assert left == sorted({f"{s.spec.name}-{s.split}-{s.spec.image_size}px-{s.files.listing_digests()[1][:16]}.u8" for s in kept + [grown]})
    assert len(left) == 3


# --------------------------------------------------------------------------- ImageSet


def test_image_set_subsets_and_normalized():
    spec = get_spec("cifar10")
    images, labels = rand_u8((60, 3, 32, 32)), rand_labels(60, 10)
    ds = ImageSet(spec, images, labels)
    a, b, c = ds.per_class(3, seed=1), ds.per_class(3, seed=1), ds.per_class(3, seed=2)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert a.labels.tolist() == [k for k in range(10) for _ in range(3)]
    with pytest.raises(ValueError) as info:
        ds.per_class(7, seed=0)
    # in the user's terms (an ipc), naming the data, no internal function
    assert str(info.value).startswith("a subset of 7 per class (ipc 7) needs 7 images of every class, but class 0 "
                                      "of the train split of cifar10 has 6")
    assert "per_class(" not in str(info.value)
    sub = ds.subset([5, 2])
    assert torch.equal(sub.images, images[[5, 2]]) and sub[1][1] == int(labels[2])
    assert len(ds.subset(labels == 3)) == 6
    assert torch.equal(ds.shuffled(4).labels, ds.shuffled(4).labels)
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    torch.testing.assert_close(ds.normalized([1]), ((images[[1]].float() / 255) - mean) / std)
    assert ds.normalized().dtype == torch.float32
    with pytest.raises(ValueError, match="label/image count mismatch"):
        ImageSet(spec, images, labels[:-1])
    with pytest.raises(ValueError, match=r"images are \(3, 16, 16\), the spec says \(3, 32, 32\)"):
        ImageSet(spec, rand_u8((2, 3, 16, 16)), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        ImageSet(spec, images[:1], torch.tensor([10]))


# ------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float16, torch.float32, torch.float64])
def test_normalize_and_denormalize_leave_their_input_and_compute_the_formula(dtype):
    """They work in place only on tensors they make themselves (a conversion, a product): the
    caller's tensor is left as it was, and the values are the formula's, computed out of place."""
    gen = torch.Generator().manual_seed(0)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)
    raw = torch.randint(0, 256, (2, 3, 5, 5), generator=gen, dtype=torch.uint8)
    x = raw if dtype == torch.uint8 else (raw.to(torch.float64) / 255).to(dtype)
    kept = x.clone()
    out = normalize(x, mean, std)
    assert torch.equal(x, kept) and out.data_ptr() != x.data_ptr()
    pixels = x.to(torch.float32) / 255 if dtype == torch.uint8 else x.to(torch.float64 if dtype == torch.float64
                                                                         else torch.float32)
    m, s = torch.tensor(mean, dtype=pixels.dtype).view(3, 1, 1), torch.tensor(std, dtype=pixels.dtype).view(3, 1, 1)
    assert torch.equal(out, (pixels - m) / s)
    back = denormalize(out, mean, std)
    assert torch.equal(back, out * s + m) and out.data_ptr() != back.data_ptr()
    assert torch.equal(denormalize(out, mean, std, to_uint8=True),
                       (out * s + m).clamp(0, 1).mul(255).round().to(torch.uint8))
    flat = normalize(raw[0, 0], (0.5,), (0.25,))  # (one image plane: broadcast to (1, H, W), as before)
    assert flat.shape == (1, 5, 5) and torch.equal(flat, ((raw[0, 0].float() / 255 - 0.5) / 0.25)[None])


def test_normalize_round_trip():
    x = rand_u8((4, 3, 5, 5))
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    y = normalize(x, mean, std)
    assert y.dtype == torch.float32
    assert torch.equal(denormalize(y, mean, std, to_uint8=True), x)
    torch.testing.assert_close(denormalize(y, mean, std), x.float() / 255)
    torch.testing.assert_close(normalize(x.float() / 255, mean, std), y)
    with pytest.raises(ValueError, match="mean has 2 values but the images have 3 channels"):
        normalize(x, (0.1, 0.2), (1, 1))


def test_random_flip():
    x = torch.randn(64, 2, 4, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(random_flip(x, torch.Generator().manual_seed(1), p=1.0), x.flip(-1))
    assert torch.equal(random_flip(x, torch.Generator().manual_seed(1), p=0.0), x)
    out = random_flip(x, torch.Generator().manual_seed(1))
    assert torch.equal(out, random_flip(x, torch.Generator().manual_seed(1)))
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert bool((flipped ^ kept).all()) and 10 < int(flipped.sum()) < 54
    # the flags are one uniform draw per sample from the generator
    expected = torch.rand(64, generator=torch.Generator().manual_seed(1), dtype=torch.float64) < 0.5
    assert torch.equal(flipped, expected)
    # in place: the same draws and values, written into x itself
    mine = x.clone()
    assert random_flip(mine, torch.Generator().manual_seed(1), inplace=True) is mine and torch.equal(mine, out)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("size", [(5, 5), (3, 7), (9, 9)])
def test_crop_windows_are_the_slices(layout, size):
    """crop_windows(x, source, top, left, size)[k] is x[source[k], :, top[k]:+h, left[k]:+w] for
    any input layout, repeated sources and windows touching the borders."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 9, 11, generator=gen)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.randn(6, 3, 18, 11, generator=gen)[:, :, ::2]
    h, w = size
    source = torch.tensor([0, 5, 5, 2, 3, 1, 4, 0])
    top = torch.randint(0, 9 - h + 1, (8,), generator=gen)
    left = torch.randint(0, 11 - w + 1, (8,), generator=gen)
    top[0], left[0], top[1], left[1] = 0, 0, 9 - h, 11 - w  # the corners
    out = crop_windows(x, source, top, left, size)
    assert out.shape == (8, 3, h, w)
    for k in range(8):
        t, l = int(top[k]), int(left[k])
        assert torch.equal(out[k], x[source[k], :, t:t + h, l:l + w])


@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_random_crop_with_padding(mode):
    x = torch.randn(200, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = random_crop_with_padding(x, 8, 2, torch.Generator().manual_seed(5), padding_mode=mode)
    assert out.shape == x.shape
    assert torch.equal(out, random_crop_with_padding(x, 8, 2, torch.Generator().manual_seed(5), padding_mode=mode))
    # every sample is the padded image's window at the offsets drawn (rows, then columns)
    gen = torch.Generator().manual_seed(5)
    top, left = torch.randint(0, 5, (200,), generator=gen), torch.randint(0, 5, (200,), generator=gen)
    padded = F.pad(x, (2, 2, 2, 2), mode=mode)
    for k in range(200):
        assert torch.equal(out[k], padded[k, :, top[k] : top[k] + 8, left[k] : left[k] + 8])
    assert len(set(zip(top.tolist(), left.tolist()))) == 25  # all offsets occur
    if mode == "constant":  # a shifted window has zero rows/columns
        k = int(((top == 0) & (left == 4)).nonzero()[0])
        assert torch.equal(out[k, :, :2], torch.zeros(3, 2, 8)) and torch.equal(out[k, :, :, -2:], torch.zeros(3, 8, 2))
        assert torch.equal(out[k, :, 2:, :6], x[k, :, :6, 2:])
    assert torch.equal(random_crop_with_padding(x, 8, 0, torch.Generator()), x)
    small = random_crop_with_padding(x, (5, 6), 0, torch.Generator().manual_seed(0))
    assert small.shape == (200, 3, 5, 6)
    with pytest.raises(ValueError, match="larger than the padded image"):
        random_crop_with_padding(x, 13, 2)


def test_random_resized_crop():
    x = torch.rand(6, 3, 20, 30, generator=torch.Generator().manual_seed(0))
    out = random_resized_crop(x, 16, gen=torch.Generator().manual_seed(3))
    assert out.shape == (6, 3, 16, 16) and out.dtype == x.dtype
    assert torch.equal(out, random_resized_crop(x, 16, gen=torch.Generator().manual_seed(3)))
    assert not torch.equal(out, random_resized_crop(x, 16, gen=torch.Generator().manual_seed(4)))
    assert out.min() >= 0 and out.max() <= 1  # bilinear: no overshoot
    sq = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    # the whole image at its own size: the identity
    torch.testing.assert_close(random_resized_crop(sq, 12, scale=(1, 1), ratio=(1, 1), gen=torch.Generator()), sq)
    # boxes: inside the image, area fraction within scale, ratio within range when a try fits
    top, left, h, w = data.transforms.resized_crop_boxes(500, 20, 30, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0))
    assert bool(((top >= 0) & (left >= 0) & (top + h <= 20) & (left + w <= 30) & (h > 0) & (w > 0)).all())
    frac = (h * w).double() / 600
    assert frac.min() > 0.06 and frac.max() <= 1
    assert tuple(random_resized_crop(x, (10, 14), gen=torch.Generator()).shape) == (6, 3, 10, 14)
    with pytest.raises(ValueError, match="expected float images"):
        random_resized_crop(rand_u8((1, 1, 4, 4)), 4)


class _RunsCode:
    """What a crafted pickle does: unpickling calls os.system."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_pickle_that_would_run_code_is_refused(tmp_path, protocol):
    """A data_batch_1 crafted to run a command is refused with one clear error, through the
    library and the CLI (exit 2), and the command never runs; the official format (numpy 1
    and 2 arrays, bytes pickled with protocol 2) still loads."""
    import subprocess
    import sys

    x, y = rand_u8((10, 3, 32, 32)), torch.arange(10)
    folder = write_cifar_batches(tmp_path, (x, y), (x, y), "cifar10")
    assert torch.equal(load_dataset("cifar10", data_root=str(tmp_path)).labels[:10], y)
    marker = tmp_path / "executed"
    with open(os.path.join(folder, "data_batch_1"), "wb") as f:
        pickle.dump({b"data": _RunsCode(f"touch {marker}"), b"labels": list(range(10))}, f, protocol=protocol)
    with pytest.raises(ValueError, match=r"data_batch_1: refused to load: the pickle names (posix|os)\.system, "
                                         r"which could run code"):
        load_dataset("cifar10", data_root=str(tmp_path))
    cli = subprocess.run([sys.executable, "-m", "infer_fast.cli", "distill", "--dataset", "cifar10", "--method", "random",
                          "--ipc", "1", "--data-root", str(tmp_path), "--out", str(tmp_path / "set")],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 2 and "refused to load" in cli.stderr and len(cli.stderr.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "set").exists()


# ------------------------------------------------------------------ decode_image's decoders


def _photo_like(w, h, seed=0):
    """uint8 (h, w, 3): smooth gradients and a disc plus mild noise (JPEG-friendly, as photos)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / w * 200, yy / h * 180, (xx + yy) / (w + h) * 120 + 60], axis=-1)
    img[(xx - w / 2) ** 2 + (yy - h / 2) ** 2 < (min(w, h) / 4) ** 2] = (30, 160, 90)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def test_decode_image_draft_is_close_to_the_full_decode(tmp_path):
    path = str(tmp_path / "big.JPEG")
    PIL.fromarray(_photo_like(1000, 750)).save(path, quality=90)
    for size, channels in ((112, 3), (112, 1), (64, 3)):  # shorter side >= 4 x size: a reduced decode
        full = formats.decode_image(path, size, channels, decoder="pillow")
        draft = formats.decode_image(path, size, channels, decoder="pillow-draft")
        assert draft.shape == full.shape == (channels, size, size) and draft.dtype == torch.uint8
        diff = (draft.int() - full.int()).abs()
        assert 0 < diff.float().mean() < 0.5 and diff.max() <= 4, (size, channels)
        assert torch.equal(formats.decode_image(path, size, channels, decoder="pillow-draft"), draft)  # deterministic
    # shorter side under 4 x size: no reduced decode, the same pixels as the full decode
    assert torch.equal(formats.decode_image(path, 200, decoder="pillow-draft"), formats.decode_image(path, 200, decoder="pillow"))
    assert data.folders.DEFAULT_DECODER in data.folders.DECODERS
    with pytest.raises(ValueError, match="decoder must be one of .*'pillow-draft'.*got 'nvjpeg'"):
        formats.decode_image(path, 64, decoder="nvjpeg")


@pytest.mark.parametrize("decoder", data.folders.DECODERS)
def test_decode_image_exact_sizes_and_odd_files(tmp_path, decoder):
    decode = lambda name, size, channels=3: formats.decode_image(str(tmp_path / name), size, channels, decoder=decoder)  # noqa: E731
    # an image already size x size keeps its exact pixels (lossless PNG; a JPEG as decoded)
    square = _photo_like(48, 48, seed=1)
    PIL.fromarray(square).save(tmp_path / "square.png")
    assert torch.equal(decode("square.png", 48), torch.from_numpy(square).permute(2, 0, 1))
    PIL.fromarray(square).save(tmp_path / "square.jpg", quality=90)
    assert torch.equal(decode("square.jpg", 48), torch.from_numpy(np.array(PIL.open(tmp_path / "square.jpg"))).permute(2, 0, 1))
    # a PNG named .JPEG, big enough for a draft: decoded by its content, resized as any image
    big = _photo_like(400, 300, seed=2)
    PIL.fromarray(big).save(tmp_path / "png.JPEG", format="PNG")
    expected = np.asarray(PIL.fromarray(big).resize((43, 32), PIL.BILINEAR))[:, 6:38]  # round(5.5) = 6
    assert np.array_equal(decode("png.JPEG", 32).permute(1, 2, 0).numpy(), expected)
    # CMYK and grayscale JPEGs: RGB (or L) out, close to the full decode of the same file
    PIL.fromarray(big).convert("CMYK").save(tmp_path / "cmyk.JPEG", quality=90)
    PIL.fromarray(big).convert("L").save(tmp_path / "gray.JPEG", quality=90)
    for name in ("cmyk.JPEG", "gray.JPEG"):
        full = formats.decode_image(str(tmp_path / name), 32, decoder="pillow")
        out = decode(name, 32)
        assert out.shape == (3, 32, 32) and (out.int() - full.int()).abs().float().mean() < 0.5
    gray = decode("gray.JPEG", 32)
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert decode("gray.JPEG", 32, channels=1).shape == (1, 32, 32)


def test_a_decode_cache_for_a_split_decoded_into_memory_says_it_is_unused(tmp_path, capsys):
    """An image-folder split small enough for memory is decoded into it, not cached: said,
    nothing written (it was silent)."""
    _val_tree(tmp_path / "tree")
    test = data.load_test_split({"name": "imagenet", "num_classes": 2, "image_size": 8, "in_memory": True},
                                data_root=str(tmp_path / "tree"), decode_cache=str(tmp_path / "cache"), progress=True)
    assert len(test) == 6 and not (tmp_path / "cache").exists()
    assert f"decode cache: imagenet's test split fits in memory and was decoded into it; {tmp_path / 'cache'} is " \
           "not used" in capsys.readouterr().out
