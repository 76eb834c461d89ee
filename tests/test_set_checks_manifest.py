"""Hand-edited or odd sets are refused on load with one line naming the file and field, and an
overwrite replaces the set's files only (what else the directory holds stays)."""
import json

import pytest
import torch

from infer_fast.storage import DistilledSet, DistilledSetError, load_distilled, save_distilled
from infer_fast.storage import disk


def make_set(n=6, c=3, soft=True, **fields):
    gen = torch.Generator().manual_seed(0)
    return DistilledSet(
        method="random", dataset="cifar10", num_classes=c, channels=1, image_size=4, mean=(0.5,), std=(0.25,),
        images=torch.randint(0, 256, (n, 1, 4, 4), generator=gen, dtype=torch.uint8), labels=torch.arange(n) % c,
        soft_labels=torch.randn(n, c, generator=gen) if soft else None,
        budget={"ipc": 2, "K": 0, "M": 0, "accounting": "ipc"}, seed=0, full_train_size=50000, **fields,
    )


@pytest.fixture
def saved(tmp_path):
    return save_distilled(make_set(), tmp_path / "set")


def edit(directory, fn):
    path = directory / "manifest.json"
    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m))


def test_overwrite_keeps_what_is_not_the_sets(saved, tmp_path):
    (saved / "NOTES.txt").write_text("keep me")
    (saved / "exported").mkdir()
    (saved / "exported" / "0.png").write_bytes(b"png")
    save_distilled(make_set(soft=False), saved, overwrite=True)  # (as relabel_directory rewrites a set)
    assert (saved / "NOTES.txt").read_text() == "keep me"
    assert (saved / "exported" / "0.png").read_bytes() == b"png"
    assert not (saved / "labels.safetensors").exists()  # the old set's own files went
    assert load_distilled(saved).soft_labels is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no .old-/.tmp- left


def test_a_set_without_images_is_refused(tmp_path):
    with pytest.raises(DistilledSetError, match=r"images\.safetensors holds no images"):
        make_set(n=0).validate()
    empty = make_set()
    save_distilled(empty, tmp_path / "set")
    empty.images, empty.labels, empty.soft_labels = empty.images[:0], empty.labels[:0], empty.soft_labels[:0]
    files = {f: disk._write_tensor_file(tmp_path / "set" / f, t) for f, t in empty.tensor_files().items()}
    edit(tmp_path / "set", lambda m: m.update(files=files, counts=disk.build_manifest(empty, files)["counts"]))
    with pytest.raises(DistilledSetError, match=r"set: inconsistent.*images\.safetensors holds no images"):
        load_distilled(tmp_path / "set")


@pytest.mark.parametrize("change, match", [
    (lambda m: m.update(method="rded"), r"manifest\.json: method 'rded' needs hyperparameters\.factor"),
    (lambda m: m.update(toolkit_version=3), r"manifest\.json: toolkit_version must be a string, got 3"),
    (lambda m: m.update(created=5), r"manifest\.json: created must be a string, got 5"),
    (lambda m: m["budget"].update(K="two"), r"manifest\.json: budget\.K .*integer >= 0, got 'two'"),
    (lambda m: m["budget"].update(ipc=0), r"manifest\.json: budget\.ipc .*integer >= 1, got 0"),
    (lambda m: m["budget"].update(ipc=2.0), r"manifest\.json: budget\.ipc .*, got 2\.0"),
    (lambda m: m["budget"].update(ipc=True), r"manifest\.json: budget\.ipc .*, got True"),
    (lambda m: m["counts"].update(stored_images=999), r"manifest\.json: counts\.stored_images records 999, .* hold 6"),
    (lambda m: m["counts"].update(soft_labels=1), r"manifest\.json: counts\.soft_labels records 1"),
])
def test_hand_edited_manifest_fields_are_refused(saved, change, match):
    edit(saved, change)
    with pytest.raises(DistilledSetError, match=match):
        load_distilled(saved)


def test_a_set_in_memory_gets_the_same_checks():
    with pytest.raises(DistilledSetError, match=r"budget\.K .*got 'two'"):
        DistilledSet(**{**_fields(), "budget": {"K": "two"}}).validate()
    with pytest.raises(DistilledSetError, match=r"needs hyperparameters\.factor"):
        DistilledSet(**{**_fields(), "method": "rded"}).validate()


def _fields():
    ds = make_set()
    return {k: getattr(ds, k) for k in ("method", "dataset", "num_classes", "channels", "image_size", "mean", "std",
                                        "images", "labels", "soft_labels", "budget", "seed", "full_train_size")}


@pytest.mark.parametrize("soft, match", [
    (torch.full((6, 3), 1e6, dtype=torch.float64), r"soft_labels: float64 values up to 1e\+06 overflow float16"),
    (torch.ones(6, 3, dtype=torch.int64), r"soft_labels must be float .*got dtype int64"),
])
def test_soft_labels_name_their_dtype(soft, match):
    with pytest.raises(DistilledSetError, match=match):
        DistilledSet(**{**_fields(), "soft_labels": soft})
