"""infer-fast import: other methods' class-folder sets (with optional soft labels) as sets of
method "external"; bad folders give one clear error naming the folder or file."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import small_infer_set

from infer_fast.cli import main
from infer_fast.data import load_dataset
from infer_fast.methods.random import random_set
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
    torch.save(torch.zeros(10, 10, dtype=torch.int64), tmp_path / "soft.pt")
    with pytest.raises(DistilledSetError, match=r"soft.pt: soft labels must be a float tensor .*got int64 \(10, 10\)"):
        import_imagefolder(tmp_path / "set", "fashion-mnist-mini", soft_labels=tmp_path / "soft.pt")
    torch.save(torch.full((10, 10), 1e6, dtype=torch.float64), tmp_path / "soft.pt")
    with pytest.raises(DistilledSetError, match=r"soft.pt: soft labels: float64 values up to 1e\+06 overflow float16"):
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
    ds = small_infer_set()
    export_imagefolder(ds, tmp_path / "folders")
    imported = import_imagefolder(tmp_path / "folders", "fashion-mnist-mini",
                                  soft_labels=tmp_path / "folders" / "soft_labels.safetensors")
    files = json.loads((tmp_path / "folders" / "export.json").read_text())["files"]
    order = sorted(range(len(files)), key=lambda i: files[i])  # import order: class folder, then file name
    assert torch.equal(imported.soft_labels, ds.soft_labels_flat()[order])
    assert torch.equal(imported.labels, ds.hard_labels()[order])


@pytest.fixture(scope="module")
def named_export(tmp_path_factory):
    """A random Fashion-MNIST-mini set (2 per class) saved, and exported with naming="name":
    its class names need cleaning (T-shirt/top, Ankle boot)."""
    from infer_fast.storage import save_distilled

    root = tmp_path_factory.mktemp("named")
    ds = random_set(load_dataset("fashion-mnist-mini", "train"), 2, seed=3)
    save_distilled(ds, root / "set")
    export_imagefolder(ds, root / "folders", naming="name")
    return ds, root


def _same_set(imported, ds):
    assert imported.images.dtype == torch.uint8 and torch.equal(imported.images, ds.images)
    assert torch.equal(imported.labels, ds.labels) and imported.class_names == ds.class_names


def test_round_trip_of_class_names_made_folder_names(named_export, tmp_path):
    """export naming="name" -> import: the same uint8 pixels, labels and class order, mapped by
    export.json and, without it, by the folder names (raw, cleaned or index)."""
    import shutil

    ds, root = named_export
    folders = sorted(p.name for p in (root / "folders").iterdir() if p.is_dir())
    assert "T-shirt_top" in folders and "Ankle_boot" in folders
    _same_set(import_imagefolder(root / "folders", "fashion-mnist-mini"), ds)
    shutil.copytree(root / "folders", tmp_path / "bare")
    (tmp_path / "bare" / "export.json").unlink()
    (tmp_path / "bare" / "Trouser").rename(tmp_path / "bare" / "1")  # names and indices mixed
    _same_set(import_imagefolder(tmp_path / "bare", "fashion-mnist-mini"), ds)


def test_export_json_is_the_folder_map_and_is_checked(named_export, tmp_path):
    import shutil

    ds, root = named_export
    shutil.copytree(root / "folders", tmp_path / "f")
    listing = json.loads((tmp_path / "f" / "export.json").read_text())
    swapped = dict(listing, class_folders=[listing["class_folders"][1], listing["class_folders"][0]]
                   + listing["class_folders"][2:])
    (tmp_path / "f" / "export.json").write_text(json.dumps(swapped))
    imported = import_imagefolder(tmp_path / "f", "fashion-mnist-mini")  # export.json wins over the names
    assert imported.labels[:4].tolist() == [0, 0, 1, 1] and torch.equal(imported.images[:2], ds.images[2:4])
    for bad, match in ((dict(listing, class_folders=listing["class_folders"][:9]), r"class_folders must be 10"),
                       (dict(listing, class_names=list("abcdefghij")),
                        r"class 0 is 'a' in the exported set, 'T-shirt/top' in this dataset; also class 1 'b' / "
                        r"'Trouser', class 2 'c' / 'Pullover', \.\.\. \(10 of 10 class names differ\): import it as")):
        (tmp_path / "f" / "export.json").write_text(json.dumps(bad))
        with pytest.raises(DistilledSetError, match="export.json: " + match):
            import_imagefolder(tmp_path / "f", "fashion-mnist-mini")
    (tmp_path / "f" / "export.json").write_text(json.dumps(listing))
    (tmp_path / "f" / "0").mkdir()
    with pytest.raises(DistilledSetError, match=r"f/0: not one of the class folders export.json lists"):
        import_imagefolder(tmp_path / "f", "fashion-mnist-mini")


@pytest.mark.parametrize("names, folders, match", [
    # a cleaned name shared by two classes
    (("a/b", "a b"), ("a_b",), r"a_b: ambiguous, the folder name of classes 0 \('a/b'\) and 1 \('a b'\)"),
    # one class's cleaned name is another's raw name
    (("a/b", "a_b"), ("a_b",), r"a_b: ambiguous, the folder name of classes 0 \('a/b'\) and 1 \('a_b'\)"),
    # two folders for one class: its raw name and its cleaned name, or its cleaned name and its index
    (("c d", "e"), ("c d", "c_d"), r"c d and .*c_d are both class 0"),
    (("c/d", "e"), ("c_d", "0"), r"0 and .*c_d are both class 0"),
])
def test_ambiguous_folder_names_are_refused(tmp_path, monkeypatch, names, folders, match):
    import dataclasses

    import infer_fast.data

    spec = dataclasses.replace(infer_fast.data.get_spec("fashion-mnist-mini"),
                               class_names=names + tuple(f"class{i}" for i in range(len(names), 10)))
    monkeypatch.setattr(infer_fast.data, "get_spec", lambda name: spec)
    _grey_classes(tmp_path)
    __import__("shutil").rmtree(tmp_path / "0")  # class 0's folders: only those named above
    for folder in folders:
        _png(tmp_path / folder / "0.png", np.zeros((28, 28), dtype=np.uint8))
    with pytest.raises(DistilledSetError, match=match) as refused:
        import_imagefolder(tmp_path, "fashion-mnist-mini")
    assert "\n" not in str(refused.value)


def test_cli_export_naming_name_then_import(named_export, tmp_path, capsys):
    ds, root = named_export
    out = tmp_path / "folders"
    assert main(["export", str(root / "set"), str(out), "--naming", "name"]) == 0
    assert (out / "T-shirt_top").is_dir() and (out / "Ankle_boot").is_dir()
    assert main(["import", str(out), "--dataset", "fashion-mnist-mini", "--out", str(tmp_path / "set")]) == 0
    _same_set(load_distilled(tmp_path / "set"), ds)
    (out / "export.json").unlink()
    (out / "Ankle boot").mkdir()
    capsys.readouterr()
    assert main(["import", str(out), "--dataset", "fashion-mnist-mini", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "are both class 9" in err and not (tmp_path / "x").exists()
    assert main(["export", str(root / "set"), str(tmp_path / "y"), "--naming", "wnid"]) == 2
