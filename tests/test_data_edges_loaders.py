"""Edge cases of the data loaders that real trees hit: a decompression-bomb image, a decode
cache of changed files or of another folder, CIFAR pickles re-saved with protocol 5, a
Tiny-ImageNet val split already sorted into class folders, an interrupted valprep.sh, and
ImageNet's evaluation geometry (Resize(256) + CenterCrop(224))."""
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from conftest import decoded

from infer_fast import data
from infer_fast.data import FolderImageSet, get_dataset, load_dataset, write_cifar_batches, write_image_folder
from infer_fast.data.folders import decode_image, resize_and_crop_geometry

PIL = pytest.importorskip("PIL.Image")


def rand_u8(shape, seed=0):
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# ------------------------------------------------------------------ decompression bombs


def test_a_decompression_bomb_is_refused_naming_the_file(tmp_path, monkeypatch):
    """Pillow refuses an image of more than 2 x MAX_IMAGE_PIXELS with DecompressionBombError,
    which is no OSError: it is the same clear error as any undecodable file, naming it and
    its size, through decode_image and a folder split; between 1x and 2x it only warns."""
    monkeypatch.setattr(PIL, "MAX_IMAGE_PIXELS", 100)
    PIL.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "bomb.png")  # 400 pixels > 200
    with pytest.raises(ValueError, match=r"cannot decode image .*bomb\.png: it exceeds Pillow's pixel limit.*"
                                         r"MAX_IMAGE_PIXELS.*400 pixels"):
        decode_image(str(tmp_path / "bomb.png"), 8)
    split = FolderImageSet(data.get_spec("imagenet", 1, 8), [(str(tmp_path / "bomb.png"), 0)], "test")
    with pytest.raises(ValueError, match=r"bomb\.png: it exceeds Pillow's pixel limit"):
        split.images_at([0], num_workers=0)
    PIL.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "big.png")  # 144 pixels: a warning only
    with pytest.warns(PIL.DecompressionBombWarning):
        assert decode_image(str(tmp_path / "big.png"), 8).shape == (3, 8, 8)


# ------------------------------------------------------------------ the decode cache's key

CACHED = {"name": "imagenet", "num_classes": 2, "image_size": 8}


def _bmp_tree(root, seed=0):
    """An ImageNet-layout tree of BMPs: a file rewritten with other pixels keeps its byte size."""
    labels = torch.arange(4) % 2
    for split in ("train", "val"):
        write_image_folder(root / split, rand_u8((4, 3, 8, 8), seed), labels, class_names=["n01", "n02"], ext="bmp")


def _cached(root, cache):
    return data.load_test_split(CACHED, data_root=str(root), decode_cache=str(cache))


def _fresh(root):
    return load_dataset(CACHED, "test", data_root=str(root)).to_memory(num_workers=0).images


def _rewrite_same_size(path, seed):
    """Other pixels in ``path``, the same byte size, a modification time 10 s later."""
    before = os.stat(path)
    PIL.fromarray(rand_u8((8, 8, 3), seed).numpy()).save(path)
    assert os.path.getsize(path) == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**10))


def test_a_file_changed_in_place_at_the_same_size_is_decoded_again(tmp_path, decode_log):
    """The cache's key holds every file's modification time: a file rewritten at the same size
    (the listing digest, the split's identity, unchanged) is decoded again, not read stale."""
    _bmp_tree(tmp_path / "tree")
    first = _cached(tmp_path / "tree", tmp_path / "cache")
    assert decoded(decode_log) == 4
    identity = first.digest()
    changed = tmp_path / "tree" / "val" / "n02" / "00001.bmp"
    _rewrite_same_size(changed, seed=5)
    again = _cached(tmp_path / "tree", tmp_path / "cache")
    assert decoded(decode_log) == 4 and again.digest() == identity
    assert torch.equal(again.images, _fresh(tmp_path / "tree"))
    assert not torch.equal(again.images, first.images)  # (first: still the old file's pages)
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 1  # (the stale one replaced)
    decoded(decode_log)
    _cached(tmp_path / "tree", tmp_path / "cache")
    assert decoded(decode_log) == 0  # (and the new one reused)


def test_a_cache_of_another_folder_with_the_same_listing_is_not_reused(tmp_path, decode_log):
    """A copy of the tree elsewhere (same names, sizes and even times, as ``cp -p`` makes)
    whose pixels differ: its record names another folder, so the copy is decoded, not read
    from the original's cache."""
    _bmp_tree(tmp_path / "tree")
    original = _cached(tmp_path / "tree", tmp_path / "cache")
    shutil.copytree(tmp_path / "tree", tmp_path / "copy")  # (copy2: the times kept)
    changed = tmp_path / "copy" / "val" / "n01" / "00000.bmp"
    stamp = os.stat(changed)
    _rewrite_same_size(changed, seed=9)
    os.utime(changed, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # (the original's time, too)
    listing = load_dataset(CACHED, "test", data_root=str(tmp_path / "copy"), in_memory=False).listing_digests()
    assert listing == original.files.listing_digests()  # (only the folder tells them apart)
    decoded(decode_log)
    copy = _cached(tmp_path / "copy", tmp_path / "cache")
    assert decoded(decode_log) == 4
    assert torch.equal(copy.images, _fresh(tmp_path / "copy"))
    assert not torch.equal(copy.images, original.images)
    record = json.loads(next((tmp_path / "cache").glob("*.u8.json")).read_text())
    assert record["folder"] == os.path.realpath(tmp_path / "copy" / "val")


# ------------------------------------------------------------------ CIFAR at protocol 5


def _resave(folder, protocol):
    """Every pickle of ``folder`` loaded and saved again at ``protocol``, its labels as numpy
    arrays (as a script that re-saves the batches with numpy 2 may leave them)."""
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        for key in (b"labels", b"fine_labels"):
            if key in d:
                d[key] = np.asarray(d[key], dtype=np.int64)
        with open(path, "wb") as f:
            pickle.dump(d, f, protocol=protocol)


@pytest.mark.parametrize("variant, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_pickles_saved_with_protocol_5_load(tmp_path, variant, classes):
    """At protocol 5 numpy reduces an array to numeric._frombuffer (an array over the pickled
    bytes): allowed, and the values come back exactly; code is still refused (test_data)."""
    train = (rand_u8((12, 3, 32, 32), 1), torch.arange(12) % classes)
    test = (rand_u8((5, 3, 32, 32), 2), torch.arange(5) % classes)
    folder = write_cifar_batches(tmp_path, train, test, variant)
    _resave(folder, protocol=5)
    assert b"_frombuffer" in open(os.path.join(folder, "test_batch" if variant == "cifar10" else "test"), "rb").read()
    for split, (images, labels) in (("train", train), ("test", test)):
        loaded = load_dataset(variant, split, data_root=str(tmp_path))
        assert torch.equal(loaded.images, images) and torch.equal(loaded.labels, labels)


# ------------------------------------------------------------------ Tiny-ImageNet val sorted


def _tiny_tree(base, wnids, x, y):
    os.makedirs(base)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for i in range(len(y)):
        directory = base / "train" / wnids[y[i]] / "images"
        os.makedirs(directory, exist_ok=True)
        PIL.fromarray(x[i].permute(1, 2, 0).numpy()).save(directory / f"{wnids[y[i]]}_{i}.JPEG", format="PNG")


def test_tiny_imagenet_val_sorted_into_class_folders_beside_its_old_annotations(tmp_path):
    """The usual preprocessing moves val/images/* into val/<wnid>/images/ and leaves
    val_annotations.txt (and maybe the emptied val/images) behind: the class folders are the
    split. Images in both forms are refused, naming the folder."""
    base = tmp_path / "tiny-imagenet-200"
    wnids = ["n01", "n02", "n03"]
    _tiny_tree(base, wnids, rand_u8((3, 3, 64, 64), 1), torch.arange(3))
    vx, vy = rand_u8((4, 3, 64, 64), 2), [1, 2, 0, 1]
    lines = []
    for i in range(4):
        directory = base / "val" / wnids[vy[i]] / "images"
        os.makedirs(directory, exist_ok=True)
        PIL.fromarray(vx[i].permute(1, 2, 0).numpy()).save(directory / f"val_{i}.JPEG", format="PNG")
        lines.append(f"val_{i}.JPEG\t{wnids[vy[i]]}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    os.makedirs(base / "val" / "images")  # emptied
    val = load_dataset("tiny-imagenet", "test", data_root=str(tmp_path), num_classes=3)
    order = [2, 0, 3, 1]  # by class, then file name
    assert val.labels.tolist() == [vy[i] for i in order] and torch.equal(val.images, vx[order])
    assert val.files.crop == 1.0  # (native 64x64: no eval crop)
    PIL.fromarray(vx[0].permute(1, 2, 0).numpy()).save(base / "val" / "images" / "val_0.JPEG", format="PNG")
    with pytest.raises(ValueError, match=r"tiny-imagenet: .*val holds the val split twice: 1 image in .*images "
                                         r"\(labelled by val_annotations.txt\) and 3 class folders"):
        load_dataset("tiny-imagenet", "test", data_root=str(tmp_path), num_classes=3)


# ------------------------------------------------------------------ ImageNet val half sorted


@pytest.mark.parametrize("split, not_images, loose, said", [
    # an interrupted valprep.sh (it moves the 50,000 files one by one)
    ("val", (".DS_Store", "LOC_val_solution.csv", "ILSVRC2012_validation_ground_truth.txt", "valprep.sh"),
     [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(3)],
     "imagenet: {folder} holds 3 loose images beside its 2 class folders: valprep.sh may have been interrupted"),
    # a class archive extracted into train/ instead of train/<wnid>/: that class missing or short
    ("train", ("LOC_synset_mapping.txt",), ["n03_0.JPEG", "n03_1.JPEG"],
     "{folder} holds 2 loose images beside its 2 class folders (n03_0.JPEG, ...): move them into their class folders"),
])
def test_loose_images_beside_class_folders_are_refused(tmp_path, split, not_images, loose, said):
    """Images beside a split's class folders are refused in one line that counts them, not
    skipped without a word (other files are no sign of it)."""
    x, y = rand_u8((4, 3, 8, 8)), torch.tensor([0, 1, 0, 1])
    for folder in {"train", split}:
        write_image_folder(tmp_path / folder, x, y, class_names=["n01", "n02"], ext="png")
    for name in not_images:
        (tmp_path / split / name).write_text("not an image")
    loaded = "test" if split == "val" else "train"
    assert len(load_dataset("imagenet", loaded, data_root=str(tmp_path), num_classes=2)) == 4
    for i, name in enumerate(loose):
        PIL.fromarray(x[i].permute(1, 2, 0).numpy()).save(tmp_path / split / name)
    with pytest.raises(ValueError) as info:
        load_dataset("imagenet", loaded, data_root=str(tmp_path), num_classes=2)
    message = str(info.value)
    assert message.startswith(said.format(folder=tmp_path / split)) and "\n" not in message


# ------------------------------------------------------------------ ImageNet's eval geometry


def _one_image_tree(root, w, h, seed=0):
    """ImageNet layout with one w x h PNG per split and class (lossless: exact comparisons)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    for split in ("train", "val"):
        for wnid in ("n01", "n02"):
            os.makedirs(root / split / wnid)
            PIL.fromarray(pixels).save(root / split / wnid / "a.png")
    return PIL.fromarray(pixels)


def test_imagenet_val_is_decoded_as_resize_256_center_crop_224(tmp_path):
    """The val split of the imagenet family is decoded as every ImageNet result is evaluated:
    shorter side to round(224 / 0.875) = 256 (bilinear), the central 224 x 224; the training
    split keeps the whole shorter side, as before."""
    from infer_fast.data.registry import IMAGENET_EVAL_CROP

    assert IMAGENET_EVAL_CROP == 0.875
    assert resize_and_crop_geometry(500, 375, 224, IMAGENET_EVAL_CROP) == ((341, 256), (58, 16))
    assert resize_and_crop_geometry(500, 375, 224) == ((299, 224), (38, 0))
    original = _one_image_tree(tmp_path, 500, 375)
    dataset = {"name": "imagenet", "num_classes": 2}
    val = load_dataset(dataset, "val", data_root=str(tmp_path))
    assert val.crop == 0.875 and load_dataset(dataset, "test", data_root=str(tmp_path)).crop == 0.875
    expected = np.asarray(original.resize((341, 256), PIL.BILINEAR).crop((58, 16, 58 + 224, 16 + 224)))
    assert np.array_equal(val[0][0].permute(1, 2, 0).numpy(), expected)
    train = load_dataset(dataset, "train", data_root=str(tmp_path))
    assert train.crop == 1.0
    expected = np.asarray(original.resize((299, 224), PIL.BILINEAR).crop((38, 0, 38 + 224, 224)))
    assert np.array_equal(train[0][0].permute(1, 2, 0).numpy(), expected)


def test_only_the_imagenet_family_test_split_takes_the_eval_crop():
    """Native-resolution datasets and user folders keep the whole image at every split."""
    assert get_dataset("imagenet").crop_fraction("test") == get_dataset("imagenet").crop_fraction("val") == 0.875
    assert get_dataset("imagenet").crop_fraction("train") == 1.0
    for name in ("tiny-imagenet", "imagefolder", "cifar10", "fashion-mnist"):
        assert get_dataset(name).crop_fraction("test") == get_dataset(name).crop_fraction("train") == 1.0
    with pytest.raises(ValueError, match=r"crop must be a fraction in \(0, 1\]"):
        FolderImageSet(data.get_spec("imagenet"), [], "test", crop=1.5)


def test_the_decode_cache_key_holds_the_geometry(tmp_path, decode_log):
    """The same files decoded with another crop have the same identity but another cache key;
    a cache whose record has no key (made before the eval crop) is decoded again."""
    _bmp_tree(tmp_path / "tree")
    split = load_dataset(CACHED, "test", data_root=str(tmp_path / "tree"), in_memory=False)
    whole = FolderImageSet(split.spec, list(zip(split.paths, split.labels.tolist())), "test", crop=1.0)
    assert split.crop == 0.875
    assert split.listing_digests()[0] == whole.listing_digests()[0] == split.digest()
    assert split.listing_digests()[1] != whole.listing_digests()[1]
    _cached(tmp_path / "tree", tmp_path / "cache")
    [record_path] = (tmp_path / "cache").glob("*.u8.json")
    record = json.loads(record_path.read_text())
    del record["key"]  # (as the earlier version wrote it)
    record_path.write_text(json.dumps(record))
    decoded(decode_log)
    rebuilt = _cached(tmp_path / "tree", tmp_path / "cache")
    assert decoded(decode_log) == 4 and torch.equal(rebuilt.images, _fresh(tmp_path / "tree"))
    assert json.loads(record_path.read_text())["key"] == split.listing_digests()[1]
