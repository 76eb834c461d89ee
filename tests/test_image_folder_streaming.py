"""An image folder is decoded into memory when it is small and streamed from its files when it
is large (the decoded size against sets.IN_MEMORY_BUDGET and the memory available), or as the
dataset mapping's ``in_memory`` says; a streamed one is distilled decoding only the chosen
files (INFER_FAST_DECODE_LOG counts every decode)."""
import collections

import pytest
import torch

from infer_fast.data import DECODE_LOG_ENV, FolderImageSet, ImageSet, load_dataset, sets, write_image_folder
from infer_fast.methods import DistillRequest
from infer_fast.storage import load_distilled
from infer_fast.teacher import TeacherConfig, train_teacher

pytest.importorskip("PIL.Image")

CLASSES, PER_CLASS, SIZE = 3, 5, 16
DECODED_BYTES = CLASSES * PER_CLASS * 3 * SIZE * SIZE  # the train split's uint8 pixels


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (CLASSES * PER_CLASS, 3, SIZE, SIZE), dtype=torch.uint8, generator=gen)
    labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    write_image_folder(str(root / "train"), images, labels, class_names=["ant", "bee", "cow"])
    write_image_folder(str(root / "val"), images[::PER_CLASS], labels[::PER_CLASS], class_names=["ant", "bee", "cow"])
    return root


def dataset(**options):
    return {"name": "imagefolder", "image_size": SIZE, **options}


def test_small_folder_in_memory_large_one_streamed(root, monkeypatch, tmp_path):
    log = tmp_path / "decodes.log"
    monkeypatch.setenv(DECODE_LOG_ENV, str(log))
    assert isinstance(load_dataset(dataset(), data_root=str(root)), ImageSet)  # small: the fast path
    log.unlink()
    monkeypatch.setattr(sets, "IN_MEMORY_BUDGET", DECODED_BYTES - 1)  # one byte over the budget: streamed
    streamed = load_dataset(dataset(), data_root=str(root))
    assert isinstance(streamed, FolderImageSet) and len(streamed) == CLASSES * PER_CLASS
    assert not log.exists()  # decided from the scan: nothing decoded
    monkeypatch.setattr(sets, "IN_MEMORY_BUDGET", DECODED_BYTES)
    assert isinstance(load_dataset(dataset(), data_root=str(root)), ImageSet)
    # within the budget, but more than half of the memory available now: streamed
    monkeypatch.setattr("infer_fast.memory.available_memory", lambda device: 2 * DECODED_BYTES - 2)
    assert isinstance(load_dataset(dataset(), data_root=str(root)), FolderImageSet)
    monkeypatch.setattr("infer_fast.memory.available_memory", lambda device: 2 * DECODED_BYTES)
    assert isinstance(load_dataset(dataset(), data_root=str(root)), ImageSet)


def test_the_mapping_forces_either_way(root, monkeypatch):
    assert isinstance(load_dataset(dataset(in_memory=False), data_root=str(root)), FolderImageSet)
    monkeypatch.setattr(sets, "IN_MEMORY_BUDGET", 0)
    forced = load_dataset(dataset(in_memory=True), data_root=str(root))
    assert isinstance(forced, ImageSet) and forced.images.shape == (CLASSES * PER_CLASS, 3, SIZE, SIZE)
    # the argument over the mapping
    assert isinstance(load_dataset(dataset(in_memory=False), data_root=str(root), in_memory=True), ImageSet)


@pytest.mark.parametrize("given, message", [
    (dataset(in_memory="no"), "dataset: in_memory must be true or false, got 'no'"),
    (dataset(in_memory=0), "dataset: in_memory must be true or false, got 0"),
    ({"name": "cifar10", "in_memory": False}, "in_memory false is for folder datasets; cifar10 is always held"),
])
def test_a_bad_in_memory_is_refused_naming_it(root, given, message):
    with pytest.raises(ValueError, match=message):
        load_dataset(given, data_root=str(root))


def test_a_streamed_folder_is_distilled_decoding_only_the_chosen_files(root, tmp_path, monkeypatch):
    teacher = str(tmp_path / "t.pt")
    train_teacher(TeacherConfig(dataset=dataset(), model="convnet-w8-d2", epochs=1, batch_size=8, device="cpu",
                                data_root=str(root)), teacher, progress=False)
    streamed = load_dataset(dataset(in_memory=False), data_root=str(root))
    log = tmp_path / "decodes.log"
    monkeypatch.setenv(DECODE_LOG_ENV, str(log))
    for method, ipc, options, kept in (("random", 2, {}, 2), ("infer", 2, {"iterations": 1}, 1)):
        out = tmp_path / method
        DistillRequest(method=method, dataset=dataset(in_memory=False), ipc=ipc, out_dir=str(out),
                       teacher_paths=[teacher] if method == "infer" else (), options=options, data_root=str(root),
                       progress=False, device="cpu").make_set()
        decoded = collections.Counter(log.read_text().splitlines())
        log.unlink()
        # random: ipc images per class; INFER (C 3, M 1, ipc 2): K = 1 natural set; each decoded once
        assert sum(decoded.values()) == kept * CLASSES and set(decoded.values()) == {1}
        assert sorted(decoded) == sorted(streamed.per_class(kept, seed=0).paths)
        assert load_distilled(str(out)).num_classes == CLASSES


def test_an_imported_sets_compression_ratio_counts_the_split_without_decoding_it(root, monkeypatch, tmp_path):
    """A set that does not know the training split's size (an import) gets it from a scan of
    the folder, even where the split would be decoded into memory by default (it is small)."""
    from types import SimpleNamespace

    from infer_fast.methods.random import random_set
    from infer_fast.pipeline import _compression_ratio
    from infer_fast.set_keys import SetKey

    ds = random_set(load_dataset(dataset(), data_root=str(root)), 1, seed=0)
    ds.full_train_size = None  # as an imported set
    log = tmp_path / "decodes.log"
    monkeypatch.setenv(DECODE_LOG_ENV, str(log))
    run = SimpleNamespace(dataset=dataset(), data_root=str(root))  # (the run config's two fields it reads)
    ratio = _compression_ratio(run, SetKey.external("Other", 1), ds)
    assert not log.exists()
    assert ratio == ds.compression_ratio(full_train_size=CLASSES * PER_CLASS)


def test_each_local_rank_counts_its_own_copy_against_the_memory_available(root, monkeypatch):
    """Under torchrun every process on the machine decodes its own copy: the share of the memory
    available is split between them (LOCAL_WORLD_SIZE)."""
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr("infer_fast.memory.available_memory", lambda device: 4 * DECODED_BYTES - 4)
    assert isinstance(load_dataset(dataset(), data_root=str(root)), FolderImageSet)
    monkeypatch.setattr("infer_fast.memory.available_memory", lambda device: 4 * DECODED_BYTES)
    assert isinstance(load_dataset(dataset(), data_root=str(root)), ImageSet)


def test_a_split_has_one_identity_in_memory_streamed_or_cached(root, tmp_path):
    """Whether a folder split is held in memory depends on the memory free when it is loaded; what
    checkpoints tie their resume to (its digest, and its subsets') must not."""
    from infer_fast.data import decoded_cache

    held = load_dataset(dataset(in_memory=True), data_root=str(root))
    streamed = load_dataset(dataset(in_memory=False), data_root=str(root))
    cached = decoded_cache(streamed, str(tmp_path / "cache"))
    assert held.digest() == streamed.digest() == cached.digest()
    for split in (held, cached):
        assert split.per_class(2, seed=1).digest() == streamed.per_class(2, seed=1).digest()
    assert held.subset([0, 1]).digest() != held.subset([1, 0]).digest()  # (an order is part of it)
    # arrays (no files) keep the content digest
    arrays = ImageSet(held.spec, held.images.clone(), held.labels.clone())
    assert arrays.digest() != held.digest() and arrays.digest() == ImageSet(held.spec, held.images, held.labels).digest()


def test_a_teacher_trained_on_the_split_in_memory_is_the_same_run_streamed(root, tmp_path, capsys):
    out = str(tmp_path / "t.pt")
    config = dict(model="convnet-w8-d2", epochs=1, batch_size=8, device="cpu", data_root=str(root))
    train_teacher(TeacherConfig(dataset=dataset(in_memory=True), **config), out, progress=False)
    capsys.readouterr()
    train_teacher(TeacherConfig(dataset=dataset(in_memory=False), **config), out, progress=False)
    assert "already trained" in capsys.readouterr().out  # not refused as other training images
