"""How many DataLoader worker pools a run starts, and how many workers each gets.

INFER's confidence selection scores every class's images in one loader pass (it used to start
a pool per class: 1000 for ImageNet), choosing exactly what scoring class by class chose; and
loader_workers keeps small jobs in-process where a worker is a new interpreter (spawn,
forkserver), not a fork.
"""
import multiprocessing
import subprocess
import sys

import pytest
import torch
from test_data_quirk_fixes import imagenet_tree

from infer_fast.data import load_dataset, sets
from infer_fast.data.sets import MIN_IMAGES_FOR_SPAWNED_WORKERS, MIN_IMAGES_FOR_WORKERS, loader_workers
from infer_fast.data.transforms import normalize
from infer_fast.methods.infer import _own_class_confidence, select_natural_sets
from infer_fast.models import create_model
from infer_fast.relabel import ensemble_logits


def tiny_teacher(spec, seed: int = 0):
    torch.manual_seed(seed)
    return create_model("convnet-w8-d2", num_classes=spec.num_classes, in_channels=spec.channels,
                        image_size=spec.image_size).eval()


@torch.no_grad()
def class_confidence_alone(train_set, indices, label, teachers, batch_size=500):
    """The old scoring: one class's images alone, in batches of ``batch_size`` (a loader each)."""
    spec, out = train_set.spec, []
    for images, _ in train_set.batches(batch_size, indices):
        out.append(ensemble_logits(teachers, normalize(images, spec.mean, spec.std)).softmax(1)[:, label].float())
    return torch.cat(out)


def select_class_by_class(train_set, K, seed, teachers):
    """The old confidence selection (a permutation per class from one generator, then a stable
    descending sort of the class's scores): the reference the new one must match exactly."""
    labels, num_classes = train_set.labels, train_set.spec.num_classes
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.empty((num_classes, K), dtype=torch.int64)
    for c in range(num_classes):
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        score = class_confidence_alone(train_set, idx, c, teachers)
        chosen[c] = idx[torch.sort(score, descending=True, stable=True).indices][:K]
    images = train_set.images_at(chosen.t().reshape(-1))
    return images.view((K, num_classes) + tuple(images.shape[1:]))


@pytest.fixture
def folder_train(tmp_path):
    """3 classes x 7 JPEGs, streamed from the files (a FolderImageSet)."""
    root = imagenet_tree(tmp_path / "data", classes=("n01", "n02", "n03"), train_per_class=7, val_per_class=1)
    train = load_dataset({"name": "imagefolder", "image_size": 8, "in_memory": False}, "train", data_root=str(root))
    assert isinstance(train, sets.FolderImageSet)
    return train


# ---- INFER's confidence selection: one loader --------------------------------------------------

def test_confidence_selection_chooses_what_scoring_class_by_class_chose(folder_train):
    mini = load_dataset("fashion-mnist-mini", "train").per_class(30, seed=0)
    for train, K in ((mini, 3), (folder_train, 2)):
        teachers = [tiny_teacher(train.spec, seed) for seed in (0, 1)]
        for seed in (0, 5):
            new = select_natural_sets(train, K, seed, selection="confidence", teachers=teachers)
            assert torch.equal(new, select_class_by_class(train, K, seed, teachers))


def test_one_pass_scores_equal_each_class_scored_alone_across_batch_boundaries(folder_train):
    """Loader batches of 3 over the classes' 7 images each: the teachers still see each class's
    own batches (3, 3, 1), so the scores are the same to the bit."""
    teachers = [tiny_teacher(folder_train.spec)]
    gen = torch.Generator().manual_seed(0)
    per_class = [idx[torch.randperm(idx.numel(), generator=gen)]
                 for idx in torch.argsort(folder_train.labels, stable=True).split(7)]
    scores = _own_class_confidence(folder_train, per_class, teachers, batch_size=3)
    assert len(scores) == 3
    for c, (idx, score) in enumerate(zip(per_class, scores)):
        assert torch.equal(score, class_confidence_alone(folder_train, idx, c, teachers, batch_size=3))


def test_confidence_selection_builds_one_loader_for_every_class(monkeypatch):
    train = load_dataset("fashion-mnist-mini", "train")
    calls = []
    original = train.batches

    def counting_batches(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "batches", counting_batches)
    natural = select_natural_sets(train, 2, 0, selection="confidence", teachers=[tiny_teacher(train.spec)])
    assert natural.shape[:2] == (2, 10)
    assert len(calls) == 1  # (it was one per class: 10)


def test_confidence_selection_progress_follows_the_scored_batches(capsys):
    train = load_dataset("fashion-mnist-mini", "train").per_class(20, seed=0)
    select_natural_sets(train, 1, 0, selection="confidence", teachers=[tiny_teacher(train.spec)], progress=True)
    err = capsys.readouterr().err
    assert "scoring natural images" in err and "batch" in err and "class/s" not in err


# ---- loader_workers under the start methods ----------------------------------------------------

@pytest.fixture
def four_cpus(monkeypatch):
    monkeypatch.setattr(sets, "_available_cpus", lambda: 4)


def start_method(monkeypatch, method, platform_default="fork"):
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False: method)
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: [platform_default, "spawn", "forkserver"])


def test_spawned_workers_need_many_more_images_than_forked_ones(monkeypatch, four_cpus):
    assert MIN_IMAGES_FOR_WORKERS < MIN_IMAGES_FOR_SPAWNED_WORKERS
    between = (MIN_IMAGES_FOR_WORKERS + MIN_IMAGES_FOR_SPAWNED_WORKERS) // 2
    start_method(monkeypatch, "fork")
    assert loader_workers(between) == 4
    assert loader_workers(MIN_IMAGES_FOR_WORKERS - 1) == 0
    for method in ("spawn", "forkserver"):
        start_method(monkeypatch, method)
        assert loader_workers(between) == 0, method
        assert loader_workers(MIN_IMAGES_FOR_SPAWNED_WORKERS) == 4, method
        assert loader_workers(between, requested=3) == 3, method  # (the caller's number wins)


def test_an_unset_start_method_is_the_platforms_default(monkeypatch, four_cpus):
    between = (MIN_IMAGES_FOR_WORKERS + MIN_IMAGES_FOR_SPAWNED_WORKERS) // 2
    start_method(monkeypatch, None, platform_default="spawn")  # (macOS; Linux from Python 3.14: forkserver)
    assert loader_workers(between) == 0
    start_method(monkeypatch, None, platform_default="fork")
    assert loader_workers(between) == 4


def test_reading_the_start_method_leaves_it_unset():
    """A later multiprocessing.set_start_method (without force) must still work (in a fresh
    interpreter: a progress bar of an earlier test here may have fixed it)."""
    code = ("import multiprocessing\n"
            "from infer_fast.data.sets import loader_workers\n"
            f"loader_workers({MIN_IMAGES_FOR_SPAWNED_WORKERS})\n"
            "multiprocessing.set_start_method('spawn')\n"
            "print(multiprocessing.get_start_method())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "spawn"
