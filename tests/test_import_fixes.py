"""infer-fast import, as a bug hunt found it: soft labels paired with other images without a word
(the export's own values saved again as .pt, files numbered without zero padding), sets of the
imagefolder dataset and ImageNet's wnid-named folders refused, probabilities taken as logits, a
coloured palette PNG read as gray."""
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import small_infer_set
from PIL import Image
from safetensors.torch import load_file, save_file

from infer_fast.cli import main
from infer_fast.imagenet_wnids import IMAGENET_WNIDS
from infer_fast.storage import DistilledSet, DistilledSetError, export_imagefolder, import_imagefolder, load_distilled
from infer_fast.storage.importer import IMPORT_ORDER, ROW_ORDER_KEY

torch.set_num_threads(1)

DATASET = "fashion-mnist-mini"


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _import_order(export):
    """The export's training index of each image, in import order (class folder, then file name)."""
    files = json.loads((export / "export.json").read_text())["files"]
    return sorted(range(len(files)), key=lambda i: files[i])


# ---- 1: the export's own soft labels saved again (.pt, fp16 or fp32) beside its export.json ----

@pytest.fixture(scope="module")
def infer_export(tmp_path_factory):
    """An INFER set (training order not class-major) and its export."""
    root = tmp_path_factory.mktemp("infer_export")
    ds = small_infer_set()
    export_imagefolder(ds, root / "export")
    return ds, root / "export"


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_the_exports_soft_labels_saved_again_follow_its_order(infer_export, tmp_path, dtype):
    """Its values (the export's file moved away, as "row order unknown" advised) pair each image
    with its own row: they were read in import order (the hunt's set: 4 of 40 rows right)."""
    ds, export = infer_export
    folder = tmp_path / "export"
    shutil.copytree(export, folder)
    own = load_file(str(folder / "soft_labels.safetensors"))["soft_labels"]
    (folder / "soft_labels.safetensors").unlink()
    resaved = tmp_path / "labels.pt"
    torch.save({"soft_labels": own.to(dtype)}, resaved)
    imported = import_imagefolder(folder, DATASET, soft_labels=resaved)
    order = _import_order(folder)
    assert torch.equal(imported.soft_labels, ds.soft_labels_flat()[order])
    # the same values already put in import order are taken in it
    torch.save(own[order].to(dtype), resaved)
    assert torch.equal(import_imagefolder(folder, DATASET, soft_labels=resaved).soft_labels,
                       ds.soft_labels_flat()[order])


def test_other_soft_labels_beside_an_export_listing_another_order_are_refused(infer_export, tmp_path, capsys):
    """Other values, no recorded order: their rows may be the export's or import order."""
    ds, export = infer_export
    other = tmp_path / "other.pt"
    torch.save(torch.randn(ds.num_training_images(), 10, generator=torch.Generator().manual_seed(5)), other)
    assert main(["import", str(export), "--dataset", DATASET, "--soft-labels", str(other),
                 "--out", str(tmp_path / "set")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "other.pt: row order unknown: export.json lists these images" in err
    assert f"{ROW_ORDER_KEY} = {IMPORT_ORDER!r}" in err and not (tmp_path / "set").exists()
    recorded = tmp_path / "other.safetensors"
    save_file({"soft_labels": torch.load(other)}, str(recorded), metadata={ROW_ORDER_KEY: IMPORT_ORDER})
    assert torch.equal(import_imagefolder(export, DATASET, soft_labels=recorded).soft_labels,
                       torch.load(other).half())


def test_the_advice_without_export_json_no_longer_leads_to_a_mix_up(infer_export, tmp_path):
    ds, export = infer_export
    folder = tmp_path / "export"
    shutil.copytree(export, folder)
    (folder / "export.json").unlink()
    other = tmp_path / "other.pt"
    torch.save(torch.randn(ds.num_training_images(), 10, generator=torch.Generator().manual_seed(6)), other)
    with pytest.raises(DistilledSetError, match=r"row order unknown: .*if these are an export's soft labels .*put "
                                                r"that export's export.json back"):
        import_imagefolder(folder, DATASET, soft_labels=other)
    shutil.copy(export / "export.json", folder)  # (following it: other values are refused, not paired)
    with pytest.raises(DistilledSetError, match=r"other.pt: row order unknown: export.json lists"):
        import_imagefolder(folder, DATASET, soft_labels=other)


# ---- 2: a set of the imagefolder dataset ----

@pytest.fixture(scope="module")
def image_folder_set():
    """A grayscale imagefolder set of 3 classes at 16 px, normalized its own way."""
    gen = torch.Generator().manual_seed(4)
    return DistilledSet(method="random", dataset="imagefolder", num_classes=3, channels=1, image_size=16,
                        mean=(0.4,), std=(0.2,), budget={"ipc": 2}, seed=0, class_names=["apple", "kiwi", "zebra"],
                        images=torch.randint(0, 256, (6, 1, 16, 16), generator=gen, dtype=torch.uint8),
                        labels=torch.tensor([0, 0, 1, 1, 2, 2]),
                        soft_labels=torch.randn(6, 3, generator=gen)).validate()


def test_cli_imports_an_imagefolder_export(image_folder_set, tmp_path, capsys):
    """Its class count, names, channels, size and normalization from export.json: refused before
    ("dataset 'imagefolder' has no fixed class count: pass num_classes", with no way to)."""
    ds = image_folder_set
    export_imagefolder(ds, tmp_path / "png")
    assert main(["import", str(tmp_path / "png"), "--dataset", "imagefolder", "--out", str(tmp_path / "back")]) == 0
    back = load_distilled(tmp_path / "back")
    assert back.class_names == ["apple", "kiwi", "zebra"] and back.channels == 1 and back.image_size == (16, 16)
    assert back.mean == ds.mean and back.std == ds.std
    assert torch.equal(back.images, ds.images) and torch.equal(back.labels, ds.labels)
    assert torch.equal(back.soft_labels, ds.soft_labels)


def test_an_image_folders_classes_are_its_folders_sorted(tmp_path):
    """Without export.json: as the imagefolder loader takes them, folder names sorted as text
    (class 2 is folder "10"), each named; --num-classes other than the folders' count refused."""
    names = [str(i) for i in range(11)]
    for name in names:
        _png(tmp_path / "set" / name / "a.png", np.full((32, 32, 3), int(name), dtype=np.uint8))
    ds = import_imagefolder(tmp_path / "set", "imagefolder")
    assert ds.class_names == sorted(names) and ds.class_names[2] == "10"
    assert ds.images[:, 0, 0, 0].tolist() == [int(n) for n in sorted(names)] and ds.labels.tolist() == list(range(11))
    with pytest.raises(DistilledSetError, match=r"11 class folders for the 12 classes of imagefolder"):
        import_imagefolder(tmp_path / "set", {"name": "imagefolder", "num_classes": 12})


# ---- 2 and 3: ImageNet's classes by wnid, and a class subset ----

def test_imagenet_class_folders_named_by_wnid(tmp_path):
    """export --naming name of a set recording the wnids, its export.json gone: refused before
    ("not a class of this dataset (folders must be class indices 0..999)")."""
    gen = torch.Generator().manual_seed(1)
    ds = DistilledSet(method="random", dataset="imagenet", num_classes=1000, channels=3, image_size=4,
                      mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), budget={"ipc": 1}, seed=0,
                      class_names=list(IMAGENET_WNIDS),
                      images=torch.randint(0, 256, (1000, 3, 4, 4), generator=gen, dtype=torch.uint8),
                      labels=torch.arange(1000)).validate()
    export_imagefolder(ds, tmp_path / "png", naming="name")
    (tmp_path / "png" / "export.json").unlink()
    back = import_imagefolder(tmp_path / "png", {"name": "imagenet", "image_size": 4})
    assert back.class_names == list(IMAGENET_WNIDS)
    assert torch.equal(back.images, ds.images) and torch.equal(back.labels, ds.labels)


def test_cli_imports_an_imagenet_class_subset_named_by_wnid(tmp_path, capsys):
    """ImageNet-100 style: --num-classes N, wnid folders sorted as the loader labels a subset."""
    wnids = [IMAGENET_WNIDS[500], IMAGENET_WNIDS[7], IMAGENET_WNIDS[42]]
    for i, wnid in enumerate(wnids):
        _png(tmp_path / "set" / wnid / "a.png", np.full((8, 8, 3), i, dtype=np.uint8))
    args = ["import", str(tmp_path / "set"), "--dataset", "imagenet", "--image-size", "8"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2  # (1000 classes: a subset says how)
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no folder for class(es)" in err and "--num-classes N" in err
    assert main([*args, "--num-classes", "3", "--out", str(tmp_path / "b")]) == 0
    back = load_distilled(tmp_path / "b")
    assert back.class_names == sorted(wnids) and back.num_classes == 3
    assert back.images[:, 0, 0, 0].tolist() == [1, 2, 0]  # (folders sorted: 7th, 42nd, 500th wnid)
    assert main(["import", str(tmp_path / "set"), "--dataset", DATASET, "--num-classes", "3",
                 "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"--num-classes: dataset {DATASET!r} has 10 classes" in err


# ---- 4: files numbered without zero padding ----

def test_soft_labels_for_files_numbered_without_padding_are_refused(tmp_path):
    """0.png .. 11.png import as 0, 1, 10, 11, 2, ...: rows in the numbers' order were paired
    with other images (100 of 120) without a word."""
    for c in range(10):
        for i in range(12):
            _png(tmp_path / "set" / str(c) / f"{i}.png", np.full((28, 28), i, dtype=np.uint8))
    torch.save(torch.randn(120, 10), tmp_path / "soft.pt")
    with pytest.raises(DistilledSetError, match=r"soft.pt: row order unknown: the images are numbered without zero "
                                                r"padding .*\(0/11.png before 0/2.png\); rename the files") as refused:
        import_imagefolder(tmp_path / "set", DATASET, soft_labels=tmp_path / "soft.pt")
    assert "\n" not in str(refused.value)
    save_file({"soft_labels": torch.randn(120, 10)}, str(tmp_path / "soft.safetensors"),
              metadata={ROW_ORDER_KEY: IMPORT_ORDER})
    assert import_imagefolder(tmp_path / "set", DATASET, soft_labels=tmp_path / "soft.safetensors").has_soft_labels
    assert import_imagefolder(tmp_path / "set", DATASET).soft_labels is None  # (no rows: nothing to pair)


# ---- 5: probabilities ----

def test_probabilities_are_refused_as_soft_labels(tmp_path):
    for c in range(10):
        _png(tmp_path / "set" / str(c) / "0.png", np.full((28, 28), c, dtype=np.uint8))
    probabilities = torch.randn(10, 10, generator=torch.Generator().manual_seed(3)).softmax(1)
    torch.save(probabilities, tmp_path / "p.pt")
    with pytest.raises(DistilledSetError, match=r"p.pt: soft labels look like probabilities .*logits are expected: "
                                                r"save log\(\) of them"):
        import_imagefolder(tmp_path / "set", DATASET, soft_labels=tmp_path / "p.pt")
    torch.save(probabilities.log(), tmp_path / "logits.pt")
    assert import_imagefolder(tmp_path / "set", DATASET, soft_labels=tmp_path / "logits.pt").has_soft_labels


# ---- 6: palette PNGs ----

def test_a_coloured_palette_png_is_read_as_its_colours(tmp_path):
    """Refused for a grayscale dataset as the same image in RGB is; a gray palette is gray."""
    def palette(size, colour):  # (an adaptive palette: the colour exact, not dithered)
        return Image.fromarray(np.full((size, size, 3), colour, dtype=np.uint8)).convert("P", palette=Image.ADAPTIVE)

    red, gray = palette(28, (200, 10, 10)), palette(28, (77, 77, 77))
    for c in range(10):
        (tmp_path / "set" / str(c)).mkdir(parents=True)
        (gray if c else red).save(tmp_path / "set" / str(c) / "a.png")
    with pytest.raises(DistilledSetError, match=r"0/a.png: a palette \(P\) image in colour, the dataset's images "
                                                r"have 1 channel"):
        import_imagefolder(tmp_path / "set", DATASET)
    gray.save(tmp_path / "set" / "0" / "a.png")
    assert import_imagefolder(tmp_path / "set", DATASET).images.unique().tolist() == [77]
    for c in range(10):
        palette(32, (200, 10, 10)).save(tmp_path / "set" / str(c) / "a.png")
    assert import_imagefolder(tmp_path / "set", "cifar10").images[0, :, 0, 0].tolist() == [200, 10, 10]


def test_sre2ls_release_layout_is_read_by_class_index(tmp_path):
    """SRe2L's recover script (and CDA's, and the methods built on its code) writes
    ``syn_data/new<ccc>/class<ccc>_id<iii>.jpg``: the folder names its class index."""
    syn = tmp_path / "syn_data"
    for c in range(10):
        for i in range(2):
            _png(syn / f"new{c:03d}" / f"class{c:03d}_id{i:03d}.png", np.full((28, 28), 20 * c + i, np.uint8))
    ds = import_imagefolder(syn, "fashion-mnist-mini")
    assert ds.labels.tolist() == [c for c in range(10) for _ in range(2)]
    assert ds.images[:, 0, 0, 0].tolist() == [20 * c + i for c in range(10) for i in range(2)]


@pytest.mark.parametrize("listing", [True, False])
def test_an_export_with_an_image_removed_and_its_rows_in_the_exports_order_is_refused(infer_export, tmp_path, listing):
    """One image deleted, its row taken out of the export's soft labels (still in its order): the
    rows paired in import order (36 of 39 wrong), with or without export.json."""
    ds, export = infer_export
    folder = tmp_path / "export"
    shutil.copytree(export, folder)
    own = load_file(str(folder / "soft_labels.safetensors"))["soft_labels"]
    (folder / "soft_labels.safetensors").unlink()
    files = json.loads((folder / "export.json").read_text())["files"]
    removed = files.index(sorted(files)[0])  # (the first in import order)
    (folder / files[removed]).unlink()
    if not listing:
        (folder / "export.json").unlink()
    kept = tmp_path / "kept.pt"
    torch.save(torch.cat([own[:removed], own[removed + 1:]]), kept)
    with pytest.raises(DistilledSetError, match="kept.pt: row order unknown"):
        import_imagefolder(folder, DATASET, soft_labels=kept)
