"""infer-fast import, from a bug hunt: 16-bit gray images in an RGB dataset, class folders named
by non-ASCII digits, an export's soft labels without its export.json, and a class with no images
(each test fails on the code before its fix)."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import small_infer_set

from infer_fast.cli import main
from infer_fast.data import load_dataset
from infer_fast.data.folders import decode_image
from infer_fast.methods.random import random_set
from infer_fast.storage import DistilledSetError, export_imagefolder, import_imagefolder

LEVELS = np.arange(32 * 32, dtype=np.int64).reshape(32, 32) * 65535 // (32 * 32 - 1)  # 0..65535
AS_8BIT = torch.from_numpy(np.floor(LEVELS / 257 + 0.5).astype(np.uint8))  # round(v / 257)


def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def _rgb_classes(root):
    for c in range(10):
        _png(root / str(c) / "0.png", np.full((32, 32, 3), c, dtype=np.uint8))


@pytest.mark.parametrize("only_gray", [False, True])
def test_16_bit_gray_in_an_rgb_dataset_is_scaled_and_expanded(tmp_path, only_gray):
    """cifar10 (3 channels): a 16-bit gray PNG (Pillow's I;16) beside RGB ones was an internal
    error (stack of [3,32,32] and [1,32,32]); a set of only such images a shape error."""
    if only_gray:
        for c in range(10):
            _png(tmp_path / str(c) / "0.png", LEVELS.astype(np.uint16))
    else:
        _rgb_classes(tmp_path)
        _png(tmp_path / "3" / "wide.png", LEVELS.astype(np.uint16))
    ds = import_imagefolder(tmp_path, "cifar10")
    wide = ds.images[ds.labels == 3][-1]
    assert wide.shape == (3, 32, 32) and all(torch.equal(channel, AS_8BIT) for channel in wide)


def test_every_reader_scales_16_bit_gray_and_refuses_float_levels(tmp_path):
    """decode_image (image-folder datasets) shares the rule: 16-bit levels scaled, not clipped at
    255 by Pillow's convert; a float (F) image refused naming the file."""
    _png(tmp_path / "wide.png", LEVELS.astype(np.uint16))
    decoded = decode_image(str(tmp_path / "wide.png"), 32, channels=3)
    assert decoded.shape == (3, 32, 32) and all(torch.equal(channel, AS_8BIT) for channel in decoded)
    _png(tmp_path / "float.tif", np.full((32, 32), 0.5, dtype=np.float32))
    with pytest.raises(ValueError, match=r"float.tif: a 32-bit float \(F\) image"):
        decode_image(str(tmp_path / "float.tif"), 32, channels=3)


@pytest.mark.parametrize("name", ["²", "٣", "３"])
def test_only_ascii_digits_are_class_indices(tmp_path, name):
    """"²" raised int()'s own error naming no folder; "٣" and "３" were taken as class 3."""
    _rgb_classes(tmp_path)
    (tmp_path / "3").rename(tmp_path / name)
    with pytest.raises(DistilledSetError, match=f"/{name}: not a class of this dataset") as refused:
        import_imagefolder(tmp_path, "cifar10")
    assert "\n" not in str(refused.value)


def test_an_exports_soft_labels_without_its_listing_are_not_paired_by_guess(tmp_path, capsys):
    """Without export.json, an export's soft labels (row i = training image i) were paired in
    import order (class, then file name): every image of an INFER set took another's row."""
    ds = small_infer_set()
    export_imagefolder(ds, tmp_path / "e")
    (tmp_path / "e" / "export.json").unlink()
    soft = tmp_path / "e" / "soft_labels.safetensors"
    assert main(["import", str(tmp_path / "e"), "--dataset", "fashion-mnist-mini", "--soft-labels", str(soft),
                 "--out", str(tmp_path / "set")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "soft_labels.safetensors: row order unknown" in err and "export.json" in err
    assert not (tmp_path / "set").exists()
    # rows recorded in import order (the file's metadata says so): taken as they are
    from safetensors.torch import save_file

    files = sorted(p.relative_to(tmp_path / "e") for p in (tmp_path / "e").rglob("*.png"))  # import order
    order = [int(f.stem) for f in files]  # each one's training index
    assert order != sorted(order)
    save_file({"soft_labels": ds.soft_labels_flat()[order].contiguous()}, str(soft),
              metadata={"row_order": "by class, then by file name"})
    imported = import_imagefolder(tmp_path / "e", "fashion-mnist-mini", soft_labels=soft)
    assert torch.equal(imported.soft_labels, ds.soft_labels_flat()[order])
    assert torch.equal(imported.labels, ds.hard_labels()[order])


def test_a_class_major_export_without_its_listing_pairs_its_rows(tmp_path):
    """A random set trains class by class: its export's rows are in import order already."""
    ds = random_set(load_dataset("fashion-mnist-mini", "train"), 2, seed=1)
    ds.set_soft_labels(torch.randn(20, 10, generator=torch.Generator().manual_seed(1)))
    export_imagefolder(ds, tmp_path / "e")
    (tmp_path / "e" / "export.json").unlink()
    imported = import_imagefolder(tmp_path / "e", "fashion-mnist-mini",
                                  soft_labels=tmp_path / "e" / "soft_labels.safetensors")
    assert torch.equal(imported.soft_labels, ds.soft_labels) and torch.equal(imported.images, ds.images)


def test_a_class_without_images_survives_the_round_trip(tmp_path):
    """Export writes an empty folder for a class the set has no images of; import refused it
    ("9: no images"). With export.json (which lists no file there) the class stays empty."""
    full = random_set(load_dataset("fashion-mnist-mini", "train"), 2, seed=1)
    keep = full.labels != 9
    ds = dataclasses.replace(full, images=full.images[keep], labels=full.labels[keep]).validate()
    ds.set_soft_labels(torch.randn(18, 10, generator=torch.Generator().manual_seed(2)))
    export_imagefolder(ds, tmp_path / "e")
    assert not any((tmp_path / "e" / "9").iterdir())
    imported = import_imagefolder(tmp_path / "e", "fashion-mnist-mini",
                                  soft_labels=tmp_path / "e" / "soft_labels.safetensors")
    assert torch.equal(imported.images, ds.images) and torch.equal(imported.labels, ds.labels)
    assert torch.equal(imported.soft_labels, ds.soft_labels)
    assert imported.hyperparameters["per_class"] == [2] * 9 + [0] and imported.budget["ipc"] == 2
    # an empty folder export.json lists files in (they were deleted), or of another tool: refused
    listing = json.loads((tmp_path / "e" / "export.json").read_text())
    shutil.rmtree(tmp_path / "e" / "8")
    (tmp_path / "e" / "8").mkdir()
    with pytest.raises(DistilledSetError, match=r"e/8: no images"):
        import_imagefolder(tmp_path / "e", "fashion-mnist-mini")
    (tmp_path / "e" / "export.json").unlink()
    with pytest.raises(DistilledSetError, match=r"e/8: no images"):
        import_imagefolder(tmp_path / "e", "fashion-mnist-mini")
    assert listing["files"] and not any(f.startswith("9/") for f in listing["files"])
