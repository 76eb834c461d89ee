"""The distilled-dataset format: round trips, atomic writes, corruption, the Dataset, the
compression ratio, previews and image-folder export."""
import hashlib
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from infer_fast import storage, viz
from infer_fast.storage import disk
from infer_fast.storage import (
    DistilledDataset,
    DistilledSet,
    DistilledSetError,
    compression_ratio_from_counts,
    compression_ratio_from_manifest,
    export_imagefolder,
    inspect_report,
    load_distilled,
    quantize_images,
    read_manifest,
    save_distilled,
    write_preview,
)

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
BACKENDS = ["torch", "auto"]


def make_infer(k=2, c=3, ch=3, h=8, w=8, g=4, ufc_dtype=torch.float32, soft=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mean, std = (MEAN if ch == 3 else (0.5,) * ch), (STD if ch == 3 else (0.25,) * ch)
    ds = DistilledSet(
        method="infer", dataset="cifar10", num_classes=c, channels=ch, image_size=(h, w), mean=mean, std=std,
        natural=torch.randint(0, 256, (k, c, ch, h, w), generator=gen, dtype=torch.uint8),
        # large enough that many composed pixels hit the per-channel clamp
        ufc=(1.5 * torch.randn(g, ch, h, w, generator=gen)).to(ufc_dtype),
        ufc_index=torch.arange(g) % k,
        ufc_teacher=torch.arange(g) % 4,
        hyperparameters={"iterations": 1000, "lr": 0.25, "r_bn": 1.0},
        teachers=[{"name": n, "model": n, "accuracy": 0.9} for n in ("resnet18", "mobilenetv2", "efficientnet_b0", "shufflenet")],
        budget={"ipc": 10, "K": k, "M": 4, "accounting": "fair"},
        seed=7, full_train_size=50000, class_names=[f"class {i}" for i in range(c)],
    )
    if soft:
        ds.natural_labels = torch.randn(k, c, c, generator=gen).half()
        ds.ufc_labels = torch.randn(g, c, c, generator=gen).half()
    return ds


BASELINES = [pytest.param("random", torch.uint8, id="random"), pytest.param("sre2l", torch.uint8, id="sre2l"),
             pytest.param("sre2l", torch.float16, id="sre2l-float16-older"),
             pytest.param("sre2l", torch.float32, id="sre2l-float32-older")]


def make_baseline(method="random", n=7, c=3, ch=3, h=8, w=8, soft=True, seed=1, dtype=torch.uint8):
    """A baseline set; ``dtype`` float16/float32: normalized images, as SRe2L sets of
    infer-fast before uint8 storage held."""
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        images = torch.randint(0, 256, (n, ch, h, w), generator=gen, dtype=torch.uint8)
    else:
        images = torch.randn(n, ch, h, w, generator=gen).to(dtype)
    return DistilledSet(
        method=method, dataset="cifar10", num_classes=c, channels=ch, image_size=h, mean=MEAN[:ch], std=STD[:ch],
        images=images, labels=torch.arange(n) % c,
        soft_labels=torch.randn(n, c, generator=gen) if soft else None,  # float32 -> stored fp16
        budget={"ipc": 2}, seed=0, full_train_size=50000,
    )


def direct_images(ds):
    """Training images computed without ufc_compose, in the documented order."""
    mean = torch.tensor(ds.mean).view(-1, 1, 1)
    std = torch.tensor(ds.std).view(-1, 1, 1)
    lo, hi = (0 - mean) / std, (1 - mean) / std
    nat = (ds.natural.float() / 255 - mean) / std
    out = [nat[k, c] for k in range(ds.K) for c in range(ds.num_classes)]
    for g in range(ds.G):
        for c in range(ds.num_classes):
            x = nat[int(ds.ufc_index[g]), c] + ds.ufc[g].float()
            out.append(torch.maximum(torch.minimum(x, hi), lo))
    return torch.stack(out)


def assert_same_set(a, b):
    assert (a.method, a.dataset, a.num_classes, a.channels, a.image_size) == (b.method, b.dataset, b.num_classes, b.channels, b.image_size)
    assert a.mean == b.mean and a.std == b.std
    assert (a.hyperparameters, a.teachers, a.budget, a.seed, a.full_train_size, a.class_names) == \
        (b.hyperparameters, b.teachers, b.budget, b.seed, b.full_train_size, b.class_names)
    ta, tb = a._tensors(), b._tensors()
    assert set(ta) == set(tb)
    for name in ta:
        assert ta[name].dtype == tb[name].dtype, name
        assert torch.equal(ta[name], tb[name]), name


# ---------------------------------------------------------------------------------------
# round trips and the manifest
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("ufc_dtype", [torch.float32, torch.float16], ids=str)
def test_infer_roundtrip_and_manifest(tmp_path, ufc_dtype):
    ds = make_infer(ufc_dtype=ufc_dtype)
    out = save_distilled(ds, tmp_path / "set")
    assert sorted(p.name for p in out.iterdir()) == ["labels.safetensors", "manifest.json", "natural.safetensors", "ufc.safetensors"]
    loaded = load_distilled(out, expected_dataset="cifar10", expected_num_classes=3)
    assert_same_set(ds, loaded)
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "infer-fast-distilled" and m["format_version"] == storage.FORMAT_VERSION
    assert m["toolkit_version"] and m["method"] == "infer" and m["image_size"] == [8, 8]
    assert m["normalization"]["mean"] == list(MEAN)
    assert m["budget"] == {"ipc": 10, "K": 2, "M": 4, "accounting": "fair"}
    for fname, entry in m["files"].items():
        assert entry["sha256"] == hashlib.sha256((out / fname).read_bytes()).hexdigest()
        assert entry["bytes"] == (out / fname).stat().st_size
    assert m["files"]["natural.safetensors"]["tensors"] == {"natural": {"shape": [2, 3, 3, 8, 8], "dtype": "uint8"}}
    assert m["files"]["ufc.safetensors"]["tensors"]["ufc"] == {"shape": [4, 3, 8, 8], "dtype": str(ufc_dtype)[6:]}
    assert m["files"]["labels.safetensors"]["tensors"]["ufc_labels"] == {"shape": [4, 3, 3], "dtype": "float16"}
    assert m["counts"] == {"stored_images": 10, "training_images": 18, "K": 2, "G": 4, "soft_labels": True}


def test_not_relabelled_set_has_no_labels_file(tmp_path):
    out = save_distilled(make_infer(soft=False), tmp_path / "s")
    assert not (out / "labels.safetensors").exists()
    loaded = load_distilled(out)
    assert loaded.natural_labels is None and loaded.ufc_labels is None and not loaded.has_soft_labels


@pytest.mark.parametrize("method, dtype", BASELINES)
def test_baseline_roundtrip(tmp_path, method, dtype):
    ds = make_baseline(method, dtype=dtype)
    assert ds.soft_labels.dtype == torch.float16
    loaded = load_distilled(save_distilled(ds, tmp_path / method))
    assert_same_set(ds, loaded)
    assert loaded.images.dtype == dtype


def test_zero_compensators_roundtrip(tmp_path):
    ds = make_infer(g=0)
    loaded = load_distilled(save_distilled(ds, tmp_path / "s"))
    assert loaded.G == 0 and loaded.num_training_images() == 6
    images, soft, hard = DistilledDataset(loaded, backend="torch").all_images()
    assert torch.allclose(images, direct_images(loaded)) and soft.shape == (6, 3) and hard.tolist() == [0, 1, 2] * 2


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(k=st.integers(1, 3), c=st.integers(1, 4), ch=st.sampled_from([1, 3]), h=st.integers(1, 5),
       w=st.integers(1, 5), g=st.integers(0, 5), half=st.booleans(), soft=st.booleans())
def test_roundtrip_property(tmp_path, k, c, ch, h, w, g, half, soft):
    ds = make_infer(k=k, c=c, ch=ch, h=h, w=w, g=g, ufc_dtype=torch.float16 if half else torch.float32, soft=soft)
    loaded = load_distilled(save_distilled(ds, tmp_path / "p", overwrite=True))
    assert_same_set(ds, loaded)
    assert loaded.num_training_images() == k * c + g * c


def test_validation_errors():
    with pytest.raises(DistilledSetError, match="quantize_images"):
        make_infer().__class__(**{**_fields(make_infer()), "natural": torch.rand(2, 3, 3, 8, 8)}).validate()
    bad = make_infer()
    bad.ufc_index = torch.tensor([0, 1, 2, 0])
    with pytest.raises(DistilledSetError, match="ufc_index"):
        bad.validate()
    with pytest.raises(DistilledSetError, match="unknown method"):
        DistilledSet(**{**_fields(make_infer()), "method": "dc"}).validate()
    with pytest.raises(DistilledSetError, match="ufc_labels: float32 values up to 1e[+]06 overflow float16"):
        DistilledSet(**{**_fields(make_infer()), "ufc_labels": torch.full((4, 3, 3), 1e6)}).validate()
    with pytest.raises(DistilledSetError, match="inf/nan"):
        DistilledSet(**{**_fields(make_infer()), "ufc_labels": torch.full((4, 3, 3), float("nan"))}).validate()
    with pytest.raises(DistilledSetError, match="budget records K"):
        DistilledSet(**{**_fields(make_infer()), "budget": {"K": 5}}).validate()
    with pytest.raises(DistilledSetError, match="JSON"):
        DistilledSet(**{**_fields(make_infer()), "hyperparameters": {"x": object()}}).validate()
    # the sizes and records: infer_fast.checks' rules (a bool is no count), as a DistilledSetError
    for field, value, match in (("num_classes", True, "num_classes must be a positive integer, got True"),
                                ("channels", 0, "channels must be a positive integer"),
                                ("full_train_size", 1.5, "full_train_size must be a positive integer or None"),
                                ("seed", "0", "seed must be an integer or None")):
        with pytest.raises(DistilledSetError, match=match):
            DistilledSet(**{**_fields(make_infer()), field: value}).validate()
    # quantize_images maps a normalized uint8 image back exactly
    px = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    assert torch.equal(quantize_images(storage.normalize_uint8(px, MEAN, STD), MEAN, STD), px)


def _fields(ds):
    import dataclasses

    return {f.name: getattr(ds, f.name) for f in dataclasses.fields(ds)}


# ---------------------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------------------

def _crash_after_first_file(monkeypatch):
    real = disk._write_tensor_file
    calls = []

    def flaky(path, tensors):
        if calls:
            raise OSError("simulated crash (disk full) while writing " + path.name)
        calls.append(path)
        return real(path, tensors)

    monkeypatch.setattr(disk, "_write_tensor_file", flaky)


def test_crash_mid_write_leaves_no_set(tmp_path, monkeypatch):
    _crash_after_first_file(monkeypatch)
    with pytest.raises(OSError, match="simulated crash"):
        save_distilled(make_infer(), tmp_path / "set")
    assert not (tmp_path / "set").exists()
    assert list(tmp_path.iterdir()) == []  # temp directory removed too
    with pytest.raises(DistilledSetError, match="no such distilled set"):
        load_distilled(tmp_path / "set")


def test_crash_mid_overwrite_keeps_previous_set(tmp_path, monkeypatch):
    first = make_infer(seed=1)
    save_distilled(first, tmp_path / "set")
    _crash_after_first_file(monkeypatch)
    with pytest.raises(OSError, match="simulated crash"):
        save_distilled(make_infer(seed=2), tmp_path / "set", overwrite=True)
    assert_same_set(first, load_distilled(tmp_path / "set"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_hard_crash_leaves_only_an_unloadable_temp_dir(tmp_path, monkeypatch):
    """A killed process cannot clean up: the partial temp dir has no manifest and another name."""
    _crash_after_first_file(monkeypatch)
    monkeypatch.setattr(disk, "_cleanup", lambda path: None)
    with pytest.raises(OSError):
        save_distilled(make_infer(), tmp_path / "set")
    assert not (tmp_path / "set").exists()
    (leftover,) = tmp_path.iterdir()
    assert leftover.name.startswith(".set.tmp-") and not (leftover / "manifest.json").exists()
    with pytest.raises(DistilledSetError, match="missing manifest"):
        load_distilled(leftover)


def test_a_failure_between_renames_puts_the_previous_set_back(tmp_path, monkeypatch):
    first = make_infer(seed=1)
    save_distilled(first, tmp_path / "set")
    real_rename = os.rename

    def rename(src, dst):
        if ".tmp-" in str(src):
            raise OSError("simulated crash between renames")
        return real_rename(src, dst)

    monkeypatch.setattr(disk.os, "rename", rename)
    monkeypatch.setattr(disk, "_cleanup", lambda path: None)
    with pytest.raises(OSError):
        save_distilled(make_infer(seed=2), tmp_path / "set", overwrite=True)
    assert_same_set(first, load_distilled(tmp_path / "set"))  # (the hint after a real kill: test_write_safety.py)
    assert not list(tmp_path.glob(".set.old-*"))


def test_overwrite_rules(tmp_path):
    save_distilled(make_infer(seed=1), tmp_path / "set")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_distilled(make_infer(seed=2), tmp_path / "set")
    with pytest.raises(ValueError, match="overwrite=True"):  # also a ValueError, for the CLI
        save_distilled(make_infer(seed=2), tmp_path / "set")
    second = make_infer(seed=2)
    save_distilled(second, tmp_path / "set", overwrite=True)
    assert_same_set(second, load_distilled(tmp_path / "set"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(DistilledSetError, match="not an infer-fast distilled set"):
        save_distilled(second, other, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep me"


# ---------------------------------------------------------------------------------------
# corruption and incompatibility
# ---------------------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    return save_distilled(make_infer(), tmp_path / "set")


def _edit_manifest(directory, fn):
    path = directory / "manifest.json"
    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m))


def test_flipped_byte_fails_checksum(saved):
    path = saved / "ufc.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DistilledSetError, match=r"ufc\.safetensors: SHA-256 checksum mismatch"):
        load_distilled(saved)


def test_truncated_file(saved):
    path = saved / "natural.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DistilledSetError, match=r"natural\.safetensors: size .*truncated"):
        load_distilled(saved)


def test_missing_file(saved):
    (saved / "labels.safetensors").unlink()
    with pytest.raises(DistilledSetError, match=r"labels\.safetensors: missing tensor file"):
        load_distilled(saved)


def test_manifest_shape_edit(saved):
    _edit_manifest(saved, lambda m: m["files"]["ufc.safetensors"]["tensors"]["ufc"].update(shape=[5, 3, 8, 8]))
    with pytest.raises(DistilledSetError, match=r"ufc\.safetensors: tensor 'ufc' has shape \[4, 3, 8, 8\], manifest.json records \[5, 3, 8, 8\]"):
        load_distilled(saved)


def test_manifest_dtype_edit(saved):
    _edit_manifest(saved, lambda m: m["files"]["natural.safetensors"]["tensors"]["natural"].update(dtype="float32"))
    with pytest.raises(DistilledSetError, match="has dtype uint8"):
        load_distilled(saved)


def test_manifest_num_classes_edit_is_inconsistent(saved):
    _edit_manifest(saved, lambda m: m.update(num_classes=4, class_names=None))
    with pytest.raises(DistilledSetError, match="inconsistent distilled set: natural must have shape"):
        load_distilled(saved)


@pytest.mark.parametrize("version,msg", [(2, "unknown format version 2.*newer"), (0, "unknown format version 0"), ("1", "must be an integer")])
def test_wrong_format_version(saved, version, msg):
    _edit_manifest(saved, lambda m: m.update(format_version=version))
    with pytest.raises(DistilledSetError, match=msg):
        load_distilled(saved)


def test_bad_manifest(saved):
    (saved / "manifest.json").write_text("{not json")
    with pytest.raises(DistilledSetError, match="not valid JSON"):
        load_distilled(saved)
    (saved / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DistilledSetError, match="not an infer-fast distilled-set manifest"):
        load_distilled(saved)


def test_manifest_missing_key_and_unexpected_file(tmp_path):
    out = save_distilled(make_infer(), tmp_path / "a")
    _edit_manifest(out, lambda m: m.pop("teachers"))
    with pytest.raises(DistilledSetError, match="missing key 'teachers'"):
        load_distilled(out)
    out = save_distilled(make_infer(), tmp_path / "b")
    _edit_manifest(out, lambda m: m["files"].update({"images.safetensors": m["files"]["natural.safetensors"]}))
    with pytest.raises(DistilledSetError, match="unexpected file 'images.safetensors'"):
        load_distilled(out)


def test_incompatible_expectations(saved):
    with pytest.raises(DistilledSetError, match="distilled from dataset 'cifar10', expected 'cifar100'"):
        load_distilled(saved, expected_dataset="cifar100")
    with pytest.raises(DistilledSetError, match="3 classes, expected 10"):
        load_distilled(saved, expected_num_classes=10)
    with pytest.raises(DistilledSetError, match="images"):
        load_distilled(saved, expected_image_size=32)
    assert load_distilled(saved, expected_dataset="CIFAR10", expected_num_classes=3, expected_image_size=8).K == 2
    assert isinstance(DistilledSetError("x"), ValueError)


# ---------------------------------------------------------------------------------------
# the torch Dataset
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ch", [1, 3])
@pytest.mark.parametrize("cache_bytes", [0, 1 << 30], ids=["per-item", "cached"])
def test_dataset_matches_direct_composition(tmp_path, backend, ch, cache_bytes):
    ds = load_distilled(save_distilled(make_infer(ch=ch), tmp_path / "s"))
    data = DistilledDataset(ds, backend=backend, cache_bytes=cache_bytes)
    expected = direct_images(ds)
    assert len(data) == 2 * 3 + 4 * 3 == expected.shape[0]
    k, c = ds.K, ds.num_classes
    lo, hi = storage.valid_range(ds.mean, ds.std)
    clamped = 0
    for i in range(len(data)):
        image, soft, hard = data[i]
        assert image.dtype == torch.float32 and image.shape == (ch, 8, 8)
        torch.testing.assert_close(image, expected[i], rtol=1e-6, atol=1e-6)
        assert hard == i % c
        if i < k * c:  # natural image k*C + c
            assert torch.equal(soft, ds.natural_labels[i // c, i % c].float())
        else:  # composed image K*C + g*C + c
            g, cc = divmod(i - k * c, c)
            assert torch.equal(soft, ds.ufc_labels[g, cc].float())
            clamped += int(((image == lo.view(-1, 1, 1)) | (image == hi.view(-1, 1, 1))).sum())
        assert image.min() >= lo.min() - 1e-6 and image.max() <= hi.max() + 1e-6
    assert clamped > 0  # the clamp was exercised
    images, soft, hard = data.all_images()
    torch.testing.assert_close(images, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(soft, ds.soft_labels_flat().float()) and torch.equal(hard, ds.hard_labels())
    # large-set path: only the natural sets a chunk uses are normalized, UFC indices remapped
    lean = DistilledDataset(ds, backend=backend, cache_bytes=0, chunk_images=3)
    lean._keep_natural = False
    torch.testing.assert_close(lean.all_images()[0], expected, rtol=1e-6, atol=1e-6)
    assert data[-1][2] == data[len(data) - 1][2]
    with pytest.raises(IndexError):
        data[len(data)]


def test_dataset_half_ufc_and_dataloader():
    ds = make_infer(ufc_dtype=torch.float16)
    data = DistilledDataset(ds, backend="torch")
    torch.testing.assert_close(data.all_images()[0], direct_images(ds), rtol=1e-6, atol=1e-6)
    batch = next(iter(torch.utils.data.DataLoader(data, batch_size=5, shuffle=False)))
    assert batch[0].shape == (5, 3, 8, 8) and batch[1].shape == (5, 3) and batch[2].tolist() == [0, 1, 2, 0, 1]


def test_dataset_needs_soft_labels_unless_hard_only(tmp_path):
    ds = make_infer(soft=False)
    with pytest.raises(DistilledSetError, match="not relabelled.*hard_only=True"):
        DistilledDataset(ds)
    data = DistilledDataset(ds, hard_only=True, backend="torch")
    image, hard = data[7]
    assert image.shape == (3, 8, 8) and hard == 1
    images, soft, hard = data.all_images()
    assert soft is None and images.shape == (18, 3, 8, 8)
    # relabel through set_soft_labels (training order) and load the result as a full set
    logits = torch.randn(18, 3)
    ds.set_soft_labels(logits)
    assert torch.equal(ds.natural_labels[1, 2], logits[1 * 3 + 2].half())
    assert torch.equal(ds.ufc_labels[3, 0], logits[6 + 3 * 3 + 0].half())
    loaded = load_distilled(save_distilled(ds, tmp_path / "relabelled"))
    torch.testing.assert_close(DistilledDataset(str(tmp_path / "relabelled"))[10][1], logits[10].half().float())
    assert loaded.has_soft_labels


@pytest.mark.parametrize("method, dtype", BASELINES)
def test_baseline_dataset(method, dtype):
    ds = make_baseline(method, dtype=dtype)
    data = DistilledDataset(ds, backend="torch", expected_dataset="cifar10")
    image, soft, hard = data[3]
    if dtype == torch.uint8:
        expected = storage.normalize_uint8(ds.images[3], ds.mean, ds.std)
    else:
        expected = ds.images[3].float()
    assert torch.equal(image, expected) and hard == int(ds.labels[3])
    assert torch.equal(soft, ds.soft_labels[3].float())
    with pytest.raises(DistilledSetError, match="expected 'cifar100'"):
        DistilledDataset(ds, expected_dataset="cifar100")


# ---------------------------------------------------------------------------------------
# compression ratio
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("ipc,paper", [(10, 0.81), (50, 4.04)])
def test_imagenet_compression_ratio_matches_paper(ipc, paper):
    """K = ipc natural sets, M = 4 UFCs each, one C-dim soft label per training image."""
    k, m, c = ipc, 4, 1000
    cr = compression_ratio_from_counts(
        stored_images=k * c + k * m, image_shape=(3, 224, 224), soft_labels=k * c * (m + 1),
        num_classes=c, full_train_size=1281167, index_elements=2 * k * m,
    )
    # exact values 0.8096% and 4.0479%; the paper prints 0.81 and 4.04
    assert abs(cr["percent"] - paper) < 0.01
    assert cr["label_elements"] == k * c * (m + 1) * c
    assert cr["stored_elements"] == cr["image_elements"] + cr["label_elements"] + cr["index_elements"]
    assert "soft labels C each" in cr["accounting"]


@pytest.mark.parametrize("ipc,paper", [(10, 0.78), (50, 3.90)])
def test_imagenet_random_baseline_ratio_images_only(ipc, paper):
    cr = compression_ratio_from_counts(stored_images=ipc * 1000, image_shape=(3, 224, 224), soft_labels=0,
                                       num_classes=1000, full_train_size=1281167)
    assert abs(cr["percent"] - paper) < 0.01


def test_compression_ratio_of_a_set_and_its_manifest(tmp_path):
    ds = make_infer()
    cr = ds.compression_ratio()
    img = 3 * 8 * 8
    assert cr["image_elements"] == (2 * 3 + 4) * img
    assert cr["label_elements"] == (2 * 3 + 4 * 3) * 3
    assert cr["index_elements"] == 2 * 4
    assert cr["full_elements"] == 50000 * img
    assert cr["ratio"] == pytest.approx(cr["stored_elements"] / cr["full_elements"])
    out = save_distilled(ds, tmp_path / "s")
    from_manifest = compression_ratio_from_manifest(read_manifest(out))
    assert from_manifest["ratio"] == cr["ratio"] and from_manifest["full_train_size_source"] == "recorded"
    unlabelled = make_infer(soft=False)
    assert unlabelled.compression_ratio()["label_elements"] == 0
    # not recorded: falls back to the built-in table, or refuses
    ds.full_train_size = None
    assert ds.compression_ratio()["full_train_size_source"] == "built-in table"
    ds.dataset = "mystery"
    with pytest.raises(DistilledSetError, match="full_train_size"):
        ds.compression_ratio()
    assert ds.compression_ratio(full_train_size=10)["full_elements"] == 10 * img
    base = make_baseline()
    cr = base.compression_ratio()
    assert cr["image_elements"] == 7 * img and cr["label_elements"] == 7 * 3 and cr["index_elements"] == 7


# ---------------------------------------------------------------------------------------
# inspect, preview, export
# ---------------------------------------------------------------------------------------

def test_inspect_report(saved):
    text = inspect_report(saved)
    for needle in ("method             infer", "cifar10: 3 classes", "2 sets x 3 classes", "4 compensators",
                   "18 (6 natural + 12 composed)", "compression ratio", "accounting", "resnet18",
                   "checksums          all 3 tensor files OK", "ipc 10"):
        assert needle in text, needle
    cr = make_infer().compression_ratio()
    assert f"{cr['percent']:.4f}%" in text
    data = bytearray((saved / "natural.safetensors").read_bytes())
    data[100] ^= 0xFF
    (saved / "natural.safetensors").write_bytes(bytes(data))
    with pytest.raises(DistilledSetError, match="checksum"):
        inspect_report(saved)


def test_inspect_report_baseline(tmp_path):
    text = inspect_report(save_distilled(make_baseline(soft=False), tmp_path / "b"))
    assert "random" in text and "none (not relabelled yet)" in text and "7 images (uint8 pixels)" in text


def test_inspect_report_of_a_set_labelled_per_batch(tmp_path):
    """RDED's sets store no soft labels by design: inspect says its students take the
    teachers' labels on every batch, not that the set waits for a relabel."""
    ds = make_baseline("rded", soft=False)
    ds.hyperparameters = {"factor": 1}  # (what its students' augmentation reads)
    text = inspect_report(save_distilled(ds, tmp_path / "r"))
    assert "none: RDED's students are labelled by the teachers on every batch" in text
    assert "not relabelled yet" not in text


def png_size(path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return height, width


@pytest.mark.parametrize("ch", [1, 3])
def test_preview_png(tmp_path, ch):
    ds = make_infer(ch=ch)
    path = write_preview(save_distilled(ds, tmp_path / "s"), tmp_path / "preview.png", max_sets=4, backend="torch")
    pad, gap = 2, 8
    # natural: K=2 rows of C=3; compensators: 4 in one row of 3 + 1; composed: min(4, max_sets) rows
    heights = [viz.grid_size(6, 8, 8, 3, pad)[0], viz.grid_size(4, 8, 8, 3, pad)[0], viz.grid_size(12, 8, 8, 3, pad)[0]]
    assert png_size(path) == (sum(heights) + 2 * gap, viz.grid_size(3, 8, 8, 3, pad)[1])
    with Image.open(path) as img:
        img.load()
        assert img.mode == ("L" if ch == 1 else "RGB")
    # the first natural tile shows the stored uint8 image (round trip through normalize/denormalize)
    pixels = torch.from_numpy(__import__("numpy").array(Image.open(path))).reshape(png_size(path) + (ch,))
    assert torch.equal(pixels[pad:pad + 8, pad:pad + 8].permute(2, 0, 1), ds.natural[0, 0])


def test_preview_baseline(tmp_path):
    path = write_preview(make_baseline(n=7), tmp_path / "b.png", max_sets=2)
    # 3 classes x up to 2 images each: 2 rows of 3 tiles
    assert png_size(path) == viz.grid_size(6, 8, 8, 3, 2)


def test_export_imagefolder(tmp_path):
    ds = make_infer()
    src = save_distilled(ds, tmp_path / "s")
    out = tmp_path / "folder"
    n = export_imagefolder(src, out, backend="torch")
    assert n == 18
    assert sorted(p.name for p in out.iterdir()) == ["0", "1", "2", "export.json", "soft_labels.safetensors"]
    meta = json.loads((out / "export.json").read_text())
    assert len(meta["files"]) == 18 and meta["files"][7] == "1/07.png" and meta["class_folders"] == ["0", "1", "2"]
    import numpy as np

    expected = quantize_images(direct_images(ds), ds.mean, ds.std)
    for i, rel in enumerate(meta["files"]):
        with Image.open(out / rel) as img:
            px = torch.from_numpy(np.array(img)).permute(2, 0, 1)
        assert torch.equal(px, expected[i]), rel
        if i < 6:  # natural images come back exactly as stored
            assert torch.equal(px, ds.natural[i // 3, i % 3])
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(out / "soft_labels.safetensors"))["soft_labels"], ds.soft_labels_flat())
    with pytest.raises(FileExistsError, match="not an empty directory"):
        export_imagefolder(src, out)
    named = export_imagefolder(src, tmp_path / "named", naming="name", backend="torch")
    assert named == 18 and (tmp_path / "named" / "class_1" / "07.png").is_file()


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_export_baseline_gray(tmp_path, dtype):
    ds = make_baseline("sre2l", ch=1, n=12, c=11, soft=False, dtype=dtype)
    assert export_imagefolder(ds, tmp_path / "o") == 12
    assert (tmp_path / "o" / "00" / "00.png").is_file() and (tmp_path / "o" / "10" / "10.png").is_file()
    assert not (tmp_path / "o" / "soft_labels.safetensors").exists()
    if dtype == torch.uint8:  # stored pixels are exported as they are
        import numpy as np
        from PIL import Image

        png = torch.from_numpy(np.array(Image.open(tmp_path / "o" / "10" / "10.png")))
        assert torch.equal(png, ds.images[10, 0])


# ---------------------------------------------------------------------------------------
# viz
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("ch", [1, 3])
def test_save_grid_png(tmp_path, ch):
    images = torch.rand(10, ch, 5, 7)
    path = viz.save_grid(images, tmp_path / "grid.png", nrow=4, padding=2)
    assert png_size(path) == (3 * (5 + 2) + 2, 4 * (7 + 2) + 2)
    import numpy as np

    with Image.open(path) as img:
        arr = np.array(img)
    arr = torch.from_numpy(arr).reshape(png_size(path) + (ch,))
    tile = arr[2 + 7:2 + 7 + 5, 2 + 9:2 + 9 + 7].permute(2, 0, 1)  # image 5 = row 1, col 1
    assert torch.equal(tile, (images[5] * 255).round().to(torch.uint8))
    assert torch.all(arr[0] == 255)  # padding is white


def test_scale_images():
    u = torch.zeros(3, 3, 4, 4)
    u[0, 0, 0, 0], u[0, 1, 1, 1] = 2.0, -1.0
    u[1] = 0.3  # constant image
    sym = viz.scale_images(u, "symmetric")
    assert sym[0, 0, 0, 0] == 1.0 and sym[0, 1, 1, 1] == 0.25 and sym[0, 2, 0, 0] == 0.5
    assert torch.all(sym[2] == 0.5)
    mm = viz.scale_images(u, "minmax")
    assert mm[0].min() == 0 and mm[0].max() == 1 and torch.all(mm[1] == 0.5)
    assert torch.equal(viz.scale_images(torch.full((1, 1, 2, 2), 1.7)), torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError):
        viz.scale_images(u, "log")
    with pytest.raises(ValueError, match="channels"):
        viz.make_grid(torch.rand(2, 2, 4, 4))
