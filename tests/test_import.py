"""infer-fast import: other methods' class-folder sets (with optional soft labels) as sets of
method "external"; bad folders give one clear error naming the folder or file."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from infer_fast.cli import main
from infer_fast.data import load_dataset
from infer_fast.distill.run import random_set
from infer_fast.storage import DistilledSetError, export_imagefolder, import_imagefolder, load_distilled


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random Fashion-MNIST-mini set (3 per class) with soft labels, exported as PNG folders."""
    root = tmp_path_factory.mktemp("import")
    ds = random_set(load_dataset("fashion-mnist-mini", "train"), 3, seed=1)
    ds.set_soft_labels(torch.randn(30, 10, generator=torch.Generator().manual_seed(0)))
    export_imagefolder(ds, root / "folders")
    return ds, root / "folders"


def test_round_trip_through_our_export(exported):
    ds, folders = exported
    imported = import_imagefolder(folders, "fashion-mnist-mini", soft_labels=folders / "soft_labels.safetensors",
                                  name="ours")
    assert imported.method == "external" and imported.budget["ipc"] == 3
    assert torch.equal(imported.images, ds.images) and torch.equal(imported.labels, ds.labels)
    assert torch.equal(imported.soft_labels, ds.soft_labels)
    hyper = imported.hyperparameters
    assert hyper["source_method"] == "ours" and hyper["per_class"] == [3] * 10
    assert len(hyper["source_sha256"]) == 30 and all(len(v) == 64 for v in hyper["source_sha256"].values())


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folders_named_by_class_name(tmp_path):
    from infer_fast.data import get_spec

    names = get_spec("cifar10").class_names
    for c, name in enumerate(names):
        _png(tmp_path / name / "a.png", np.full((32, 32, 3), c, dtype=np.uint8))
    ds = import_imagefolder(tmp_path, "cifar10")
    assert ds.labels.tolist() == list(range(10)) and ds.images[:, 0, 0, 0].tolist() == list(range(10))
    assert ds.soft_labels is None


def _grey_classes(root, classes=10, size=28):
    for c in range(classes):
        _png(root / str(c) / "0.png", np.full((size, size), 10 * c, dtype=np.uint8))


@pytest.mark.parametrize("damage, match", [
    (lambda r: __import__("shutil").rmtree(r / "7"), r"no folder for class\(es\) 7 of 10"),
    (lambda r: _png(r / "3" / "big.png", np.zeros((32, 32), dtype=np.uint8)), r"3/big.png: 32x32 pixels, the dataset's images are 28x28"),
    (lambda r: (r / "4" / "broken.png").write_text("not an image"), r"4/broken.png: cannot read the image"),
    (lambda r: (r / "zebra").mkdir(), r"zebra: not a class of this dataset"),
    (lambda r: [p.unlink() for p in (r / "2").iterdir()], r"2: no images"),
    (lambda r: (r / "007").mkdir() or _png(r / "007" / "x.png", np.zeros((28, 28), dtype=np.uint8)), r"are both class 7"),
    (lambda r: (r / "5" / "loop.png").symlink_to(r / "5" / "loop.png"), r"5/loop.png: a symbolic link that leads nowhere"),
    (lambda r: (r / "6" / "gone.png").symlink_to(r / "nowhere.png"), r"6/gone.png: a symbolic link that leads nowhere"),
])
def test_bad_folders_are_named(tmp_path, damage, match):
    _grey_classes(tmp_path)
    damage(tmp_path)
    with pytest.raises(DistilledSetError, match=match):
        import_imagefolder(tmp_path, "fashion-mnist-mini")


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    """A 16-bit grayscale PNG (Pillow: I;16 / I) gives round(v / 257), the 8-bit level of the
    same brightness; Pillow's own conversion clips every level above 255 to 255."""
    _grey_classes(tmp_path)
    levels = np.arange(28 * 28, dtype=np.int64).reshape(28, 28) * 65535 // (28 * 28 - 1)
    Image.fromarray(levels.astype(np.uint16)).save(tmp_path / "1" / "wide.png")
    with Image.open(tmp_path / "1" / "wide.png") as im:
        assert im.mode in ("I;16", "I;16B", "I")  # (what Pillow reads back)
    ds = import_imagefolder(tmp_path, "fashion-mnist-mini")
    wide = ds.images[ds.labels == 1][1, 0]  # (files sorted by name: 0.png, wide.png)
    expected = torch.from_numpy(np.floor(levels / 257 + 0.5).astype(np.uint8))
    assert torch.equal(wide, expected) and int(wide.max()) == 255 and int((wide == 255).sum()) <= 2


def test_soft_labels_of_the_wrong_shape_are_refused(tmp_path):
    _grey_classes(tmp_path / "set")
    torch.save(torch.zeros(9, 10), tmp_path / "soft.pt")
    with pytest.raises(DistilledSetError, match=r"soft labels must be a float tensor \(10, 10\)"):
        import_imagefolder(tmp_path / "set", "fashion-mnist-mini", soft_labels=tmp_path / "soft.pt")
    torch.save({"logits": torch.zeros(10, 10)}, tmp_path / "soft.pt")
    assert import_imagefolder(tmp_path / "set", "fashion-mnist-mini", soft_labels=tmp_path / "soft.pt").has_soft_labels


def test_cli_import_then_inspect_and_train(exported, tmp_path, capsys):
    _, folders = exported
    assert main(["import", str(folders), "--dataset", "fashion-mnist-mini", "--out", str(tmp_path / "set"),
                 "--soft-labels", str(folders / "soft_labels.safetensors"), "--name", "RDED"]) == 0
    out = capsys.readouterr().out
    assert "method             external" in out and "RDED" in out
    manifest = json.loads((tmp_path / "set" / "manifest.json").read_text())
    assert manifest["method"] == "external" and manifest["hyperparameters"]["source"] == str(folders)
    assert load_distilled(tmp_path / "set").num_training_images() == 30
    assert main(["train", str(tmp_path / "set"), "--model", "convnet-w8-d2", "--epochs", "1", "--device", "cpu",
                 "--quiet"]) == 0
    assert main(["import", str(tmp_path / "nowhere"), "--dataset", "fashion-mnist-mini", "--out",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "nowhere: not a directory of class folders" in err and not (tmp_path / "x").exists()


def test_soft_labels_follow_our_exports_training_order(tmp_path):
    """An INFER set's training order (natural images, then composed ones) is not class-major:
    importing its export keeps every image with its own soft labels (export.json's order)."""
    from infer_fast.storage import DistilledSet

    gen = torch.Generator().manual_seed(0)
    k, c, g = 2, 10, 3
    ds = DistilledSet(method="infer", dataset="fashion-mnist-mini", num_classes=c, channels=1, image_size=28,
                      mean=(0.286,), std=(0.353,),
                      natural=torch.randint(0, 256, (k, c, 1, 28, 28), generator=gen, dtype=torch.uint8),
                      ufc=0.2 * torch.randn(g, 1, 28, 28, generator=gen), ufc_index=torch.tensor([0, 1, 1]),
                      ufc_teacher=torch.zeros(g, dtype=torch.int64), budget={"ipc": 5, "K": k, "M": 1, "accounting": "fair"})
    ds.set_soft_labels(torch.randn(ds.num_training_images(), c, generator=gen))
    export_imagefolder(ds, tmp_path / "folders")
    imported = import_imagefolder(tmp_path / "folders", "fashion-mnist-mini",
                                  soft_labels=tmp_path / "folders" / "soft_labels.safetensors")
    files = json.loads((tmp_path / "folders" / "export.json").read_text())["files"]
    order = sorted(range(len(files)), key=lambda i: files[i])  # import order: class folder, then file name
    assert torch.equal(imported.soft_labels, ds.soft_labels_flat()[order])
    assert torch.equal(imported.labels, ds.hard_labels()[order])
