"""Fixes of a scale hunt (1000 classes, 50,000-image sets): RDED's checkpoint writes each
class once; export's free-space check counts the soft labels and a block per file; inspect
summarises long records; export records its image size so import can take it back; a folder
split is scanned once per process while its listing is unchanged."""
import os
import re

import pytest
import torch
from conftest import kill_after_rded_classes, train_tiny_teachers

from infer_fast.methods import DistillRequest, rded_checkpoint
from infer_fast.methods.rded_checkpoint import RDEDCheckpoint
from infer_fast.storage import load_distilled

# ---- 1. RDED's checkpoint: each run of finished classes written once ----


def _bytes_per_checkpoint(monkeypatch):
    """A list, filled with the bytes each checkpoint writes (every file saved, its size)."""
    real, written = rded_checkpoint.save_atomic, []

    def save(obj, path):
        real(obj, path)
        written[-1] += os.path.getsize(path)

    monkeypatch.setattr(rded_checkpoint, "save_atomic", save)
    return written


def test_rded_checkpoint_bytes_grow_linearly_and_restore_exactly(tmp_path, monkeypatch):
    """A checkpoint after each of 20 classes writes about the same bytes each time (the new
    class and the index), not every class done so far again (20x the class at the end); a
    restore gives back exactly the classes done and the generator's state."""
    classes, ipc = 20, 4
    images = torch.randint(0, 256, (classes * ipc, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    class_bytes = images[:ipc].numel()
    gen = torch.Generator().manual_seed(1)
    store = RDEDCheckpoint(tmp_path / "s.recovery.pt", lambda: {"method": "rded"}, 1e-9, True, lambda: 0.0)
    written = _bytes_per_checkpoint(monkeypatch)
    for c in range(1, 13):
        torch.rand(5, generator=gen)  # (the class's draws)
        written.append(0)
        store.after_class(c, classes, images, gen, now=True)
    assert max(written) - min(written) < class_bytes / 4, written
    assert sum(written) < 12 * class_bytes + 12 * (written[0] - class_bytes) + class_bytes
    restored, other = torch.zeros_like(images), torch.Generator()
    again = RDEDCheckpoint(tmp_path / "s.recovery.pt", lambda: {"method": "rded"}, 1e-9, True, lambda: 0.0)
    assert again.restore(restored, other, classes) == 12
    assert torch.equal(restored[:12 * ipc], images[:12 * ipc]) and not restored[12 * ipc:].any()
    assert torch.equal(other.get_state(), gen.get_state())


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return train_tiny_teachers(tmp_path_factory.mktemp("teachers"), seeds=(0,))


def _rded(out_dir, teacher, resume=False):
    request = DistillRequest(method="rded", dataset="fashion-mnist-mini", ipc=2, out_dir=out_dir, teacher_paths=teacher,
                             options={"candidates_per_class": 12, "crops_per_image": 2, "checkpoint_minutes": 1e-9},
                             resume=resume, device="cpu")
    return load_distilled(request.make_set())


def test_rded_resumes_a_checkpoint_of_the_old_format_and_rewrites_it_in_the_new(tmp_path, teacher, monkeypatch):
    """A checkpoint of format 1 (the images of every class done inside it) made from a run
    killed after 4 classes: a resume continues it to exactly the uninterrupted run's images,
    its next checkpoint moves those classes to a results file (the index holds no images),
    and the checkpoint and its results folder are gone once the set is saved."""
    reference = _rded(tmp_path / "reference", teacher)
    real = rded_checkpoint.save_atomic
    kill_after_rded_classes(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        _rded(tmp_path / "killed", teacher)
    checkpoint, results = tmp_path / "killed.recovery.pt", tmp_path / "killed.recovery.pt.results"
    new = torch.load(checkpoint, weights_only=True)
    assert "images" not in new and new["results"] == [1, 2, 3, 4] and len(os.listdir(results)) == 4
    old = {"format": rded_checkpoint.CHECKPOINT_FORMAT, "format_version": 1, "run": new["run"], "classes_done": 4,
           "images": reference.images[:8].clone(), "generator": new["generator"]}
    torch.save(old, checkpoint)
    for name in os.listdir(results):
        os.remove(results / name)
    indexes = []

    def recording(obj, path):
        real(obj, path)
        if "classes_done" in obj:
            indexes.append(obj)

    monkeypatch.setattr(rded_checkpoint, "save_atomic", recording)
    resumed = _rded(tmp_path / "killed", teacher, resume=True)
    assert torch.equal(resumed.images, reference.images)
    assert indexes[0]["classes_done"] == 5 and indexes[0]["results"] == [5] and "images" not in indexes[0]
    assert not checkpoint.exists() and not results.exists()


def test_rded_checkpoint_missing_a_results_file_is_refused_naming_it(tmp_path):
    images, gen = torch.zeros((6, 1, 4, 4), dtype=torch.uint8), torch.Generator()
    store = RDEDCheckpoint(tmp_path / "s.recovery.pt", lambda: {"method": "rded"}, None, True, lambda: 0.0)
    store.after_class(1, 3, images, gen, now=True)
    store.after_class(2, 3, images, gen, now=True)
    missing = rded_checkpoint.results_file(tmp_path / "s.recovery.pt", 1, 2)
    os.remove(missing)
    again = RDEDCheckpoint(tmp_path / "s.recovery.pt", lambda: {"method": "rded"}, None, True, lambda: 0.0)
    folder = tmp_path / "s.recovery.pt.results"
    with pytest.raises(ValueError, match=re.escape(f"lists classes 1..1 in '{missing}', which is missing: delete it "
                                                   f"and '{folder}' to start over")):
        again.restore(images, gen, 3)
    other = rded_checkpoint.results_file(tmp_path / "s.recovery.pt", 0, 1)  # (another run's, of 3 images per class)
    torch.save({"format": rded_checkpoint.RESULTS_FORMAT, "format_version": 2, "classes": [0, 1],
                "images": torch.zeros((3, 1, 4, 4), dtype=torch.uint8)}, other)
    with pytest.raises(ValueError, match=re.escape(f"RDED results file '{other}' holds images (3, 1, 4, 4), not "
                                                   "classes 0..0 of this run")):
        again.restore(images, gen, 3)


# ---- 2. export's free-space check: the soft labels and a block per file ----


def _baseline(n=40, c=10, size=8, soft=True):
    from infer_fast.storage import DistilledSet

    gen = torch.Generator().manual_seed(0)
    return DistilledSet(method="random", dataset="cifar10", num_classes=c, channels=3, image_size=size,
                        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                        images=torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8),
                        labels=torch.arange(n) % c, soft_labels=torch.randn(n, c, generator=gen) if soft else None,
                        budget={"ipc": n // c}, seed=0)


def _disk_usage(root):
    return sum(os.lstat(os.path.join(d, f)).st_blocks * 512 for d, _, files in os.walk(root) for f in files + [d])


def test_export_counts_a_block_per_file_and_the_soft_labels(tmp_path, monkeypatch):
    """40 PNGs of 8x8 pixels take a 4 KiB block each, 20x their pixels: with room for the
    pixels but not the blocks (faked), export refuses in one line before writing anything;
    the estimate covers what an export really takes, and counts the soft labels."""
    from infer_fast._io import OutputPathError
    from infer_fast.storage import export_imagefolder
    from infer_fast.storage.report import _class_folders, export_bytes

    ds = _baseline()
    need = export_bytes(ds, 40, _class_folders(ds, "index"), 4096)
    export_imagefolder(ds, tmp_path / "real")
    assert _disk_usage(tmp_path / "real") <= export_bytes(ds, 40, _class_folders(ds, "index"), os.statvfs(tmp_path).f_frsize)
    c, n = 2000, 4  # (soft labels of many classes: 16 KB for 4 images)
    many = _baseline(n=n, c=c, size=2)
    no_soft = _baseline(n=n, c=c, size=2, soft=False)
    folders = _class_folders(many, "index")
    assert export_bytes(many, n, folders, 4096) - export_bytes(no_soft, n, folders, 4096) >= n * c * 2
    free = 40 * 3 * 8 * 8 * 4  # (4x the pixels)
    assert free < need
    monkeypatch.setattr(os, "statvfs", lambda path: os.statvfs_result((4096, 4096, 10 ** 6, 0, free // 4096, 0, 0, 0, 0, 255)))
    with pytest.raises(OutputPathError, match=r"cannot write export directory .*: it needs about .* free"):
        export_imagefolder(ds, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---- 3. inspect summarises long records ----


def test_inspect_summarises_long_hyperparameters_keeping_them_in_the_manifest(tmp_path):
    """An imported set records a SHA-256 per source file and a count per class: inspect shows
    the first few of each and how many there are (one short line, not megabytes); the manifest
    keeps them whole."""
    import json

    from infer_fast.storage import inspect_report, save_distilled

    ds = _baseline()
    checksums = {f"{i % 10}/{i:05d}.png": f"{i:064x}" for i in range(5000)}
    ds.hyperparameters = {"per_class": [4] * 1000, "source_sha256": checksums, "source": "/data/set", "lr": 0.25,
                          "crop": [0.08, 1.0]}
    text = inspect_report(save_distilled(ds, tmp_path / "s"))
    line = next(line for line in text.splitlines() if line.startswith("  hyperparameters"))
    assert len(line) < 1000, len(line)
    shown = json.loads(line.split(None, 1)[1].split(" (long entries")[0])
    assert shown["per_class"] == [4, 4, 4, 4, 4, "... 1000 entries in all"]
    assert shown["source_sha256"]["..."] == "5000 entries in all" and len(shown["source_sha256"]) == 6
    assert shown["source_sha256"]["0/00000.png"] == f"{0:064x}"
    assert (shown["lr"], shown["crop"], shown["source"]) == (0.25, [0.08, 1.0], "/data/set")
    assert line.endswith("(long entries summarised: in full in manifest.json)")
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["hyperparameters"]["source_sha256"] == checksums and len(manifest["hyperparameters"]["per_class"]) == 1000


# ---- 4. export records its image size; import reads a set back at it ----


def _folder_dataset_set(name, classes, size):
    from infer_fast.data import get_spec
    from infer_fast.storage import DistilledSet

    spec = get_spec(name)
    gen = torch.Generator().manual_seed(2)
    return DistilledSet(method="random", dataset=name, num_classes=classes, channels=3, image_size=size,
                        mean=spec.mean, std=spec.std, budget={"ipc": 1}, seed=0,
                        images=torch.randint(0, 256, (classes, 3, size, size), generator=gen, dtype=torch.uint8),
                        labels=torch.arange(classes), soft_labels=torch.randn(classes, classes, generator=gen))


def test_cli_export_then_import_at_a_non_default_image_size(tmp_path, capsys):
    """Tiny-ImageNet decoded at 16 px (not its 64): export records the size in export.json and
    `import --dataset tiny-imagenet` reads the set back at it, images and soft labels whole;
    without export.json, --image-size says it; a bad --image-size is one line naming it."""
    import json
    import shutil

    from infer_fast.cli import main
    from infer_fast.storage import save_distilled

    ds = _folder_dataset_set("tiny-imagenet", 200, 16)
    save_distilled(ds, tmp_path / "set")
    assert main(["export", str(tmp_path / "set"), str(tmp_path / "png")]) == 0
    assert json.loads((tmp_path / "png" / "export.json").read_text())["image_size"] == [16, 16]
    assert main(["import", str(tmp_path / "png"), "--dataset", "tiny-imagenet", "--out", str(tmp_path / "back"),
                 "--soft-labels", str(tmp_path / "png" / "soft_labels.safetensors")]) == 0
    back = load_distilled(tmp_path / "back")
    assert back.image_size == (16, 16) and back.real_dataset == {"name": "tiny-imagenet", "num_classes": 200,
                                                                 "image_size": 16}
    assert torch.equal(back.images, ds.images) and torch.equal(back.labels, ds.labels)
    assert torch.equal(back.soft_labels, ds.soft_labels)
    shutil.copytree(tmp_path / "png", tmp_path / "bare")
    (tmp_path / "bare" / "export.json").unlink()
    capsys.readouterr()
    assert main(["import", str(tmp_path / "bare"), "--dataset", "tiny-imagenet", "--out", str(tmp_path / "x")]) == 2
    assert "16x16 pixels, the dataset's images are 64x64 (import does not resize)" in capsys.readouterr().err
    assert main(["import", str(tmp_path / "bare"), "--dataset", "tiny-imagenet", "--image-size", "16",
                 "--out", str(tmp_path / "flag")]) == 0
    assert torch.equal(load_distilled(tmp_path / "flag").images, ds.images)
    capsys.readouterr()
    for flags, message in ((["--dataset", "tiny-imagenet", "--image-size", "0"], "--image-size must be a positive integer"),
                           (["--dataset", "cifar10", "--image-size", "16"], "--image-size: dataset 'cifar10' has one size")):
        assert main(["import", str(tmp_path / "bare"), *flags, "--out", str(tmp_path / "y")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_import_reads_an_imagenet_class_subset_back_as_exported(tmp_path):
    """The 10-class ImageNet subset at 16 px: export.json's class count and size are taken."""
    from infer_fast.storage import export_imagefolder, import_imagefolder

    ds = _folder_dataset_set("imagenet", 10, 16)
    export_imagefolder(ds, tmp_path / "png")
    back = import_imagefolder(tmp_path / "png", "imagenet")
    assert back.real_dataset == {"name": "imagenet", "num_classes": 10, "image_size": 16}
    assert torch.equal(back.images, ds.images)


# ---- 5. a folder split is scanned once per process while its listing is unchanged ----


def test_a_folder_split_is_scanned_once_until_a_folder_changes(tmp_path, monkeypatch):
    """Two loads of one ImageNet-layout split list its folders once; a file added to a class
    folder (its mtime changes) is seen by the next load, which lists that folder again; a
    folder changed just now is listed on every load (its mtime may not tick again)."""
    import time

    from infer_fast.data import folders, load_dataset
    from infer_fast.data.synthetic import write_fake_imagenet

    write_fake_imagenet(tmp_path / "data", classes=4, train_per_class=3, val_per_class=1)
    train = tmp_path / "data" / "train"
    past = time.time() - 3600
    for folder in [train, *train.iterdir()]:
        os.utime(folder, (past, past))
    scanned = []
    real = os.scandir

    def counting(path="."):
        scanned.append(os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", counting)
    dataset = {"name": "imagenet", "num_classes": 4, "image_size": 16, "in_memory": False}

    def load():
        scanned.clear()
        return load_dataset(dataset, "train", data_root=str(tmp_path / "data"))

    first = load()
    assert len(scanned) == 5 and len(first) == 12  # (the split's folder and its 4 class folders)
    again = load()
    assert scanned == [] and again.paths == first.paths and torch.equal(again.labels, first.labels)
    changed = sorted(train.iterdir())[2]
    # (a folder changed less than RECENT_NS ago is listed again: a stall of that long on a busy
    # machine between this write and the next loads must not make it "old" and cached)
    monkeypatch.setattr(folders, "RECENT_NS", 10**15)
    (changed / "zz_new.JPEG").write_bytes((changed / os.listdir(changed)[0]).read_bytes())
    grown = load()
    assert scanned == [str(changed)] and len(grown) == 13 and grown.paths[-1 - 3] == str(changed / "zz_new.JPEG")
    load()
    assert scanned == [str(changed)]  # (changed just now: listed again)
