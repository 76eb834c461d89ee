"""Models with dropout (EfficientNet) train the same in every process and resume to the same
bits: teachers and students draw dropout from generators of their own (training_rng), not
from the process's, which torch seeds differently in every process."""
import pytest
import torch
from conftest import kill_after_save, torch_threads

from infer_fast.data import load_dataset, load_test_split, write_image_folder
from infer_fast.methods.random import random_set
from infer_fast.student import StudentConfig, train_student
from infer_fast.teacher import TeacherConfig, train_teacher
from infer_fast.training_rng import derived_seed, training_rng

DROPOUT_STUDENT = dict(model="efficientnet-b0", epochs=2, batch_size=10, lr=0.005, labels="hard", mix="none",
                       augmentation="none", device="cpu")


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A 3-class image-folder tree of 16 px images (train 6 per class, val 2)."""
    root = tmp_path_factory.mktemp("tree")
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 18), ("val", 6)):
        images = torch.randint(0, 256, (n, 3, 16, 16), generator=gen, dtype=torch.uint8)
        write_image_folder(str(root / split), images, torch.arange(n) % 3, class_names=["a", "b", "c"], ext="png")
    return str(root)


def _student(tree, path, resume=False):
    """The state dict a student of the tree's random set (ipc 2) ends with, trained with its
    checkpoint at ``path``."""
    distilled = random_set(load_dataset("imagefolder", "train", data_root=tree), 2, seed=0)
    train_student(distilled, load_test_split("imagefolder", data_root=tree), StudentConfig(**DROPOUT_STUDENT),
                  progress=False, checkpoint=str(path), resume=resume)
    return torch.load(path, weights_only=True)["model"]


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_student_with_dropout_is_the_same_whatever_the_process_drew_before(tree, tmp_path):
    torch.manual_seed(1)
    first = _student(tree, tmp_path / "a.pt")
    torch.manual_seed(2)  # (another process's stream: torch seeds each differently)
    assert _equal(first, _student(tree, tmp_path / "b.pt"))


def test_a_student_with_dropout_resumes_to_the_same_bits(tree, tmp_path, monkeypatch):
    from infer_fast import student

    whole = _student(tree, tmp_path / "whole.pt")
    restore = kill_after_save(monkeypatch, student)  # (killed once the first epoch's checkpoint is on disk)
    with pytest.raises(KeyboardInterrupt):
        _student(tree, tmp_path / "killed.pt")
    restore()
    torch.manual_seed(3)
    assert _equal(whole, _student(tree, tmp_path / "killed.pt", resume=True))


def _teacher(tree, path, epochs=3):
    cfg = TeacherConfig(dataset="imagefolder", data_root=tree, model="efficientnet-b0", epochs=epochs, batch_size=6,
                        lr=0.05, device="cpu", seed=0)
    train_teacher(cfg, str(path), progress=False)
    return torch.load(path, weights_only=True)["state_dict"]


def test_a_teacher_with_dropout_resumes_to_the_same_bits(tree, tmp_path, monkeypatch):
    """Killed after its first epoch's checkpoint and run again: the weights of an uninterrupted
    training (the checkpoint keeps the generators' state; dropout restarted from the state after
    the weights' initialization before)."""
    from infer_fast import teacher

    whole = _teacher(tree, tmp_path / "whole.pt")
    restore = kill_after_save(monkeypatch, teacher)
    with pytest.raises(KeyboardInterrupt):
        _teacher(tree, tmp_path / "killed.pt")
    restore()
    torch.manual_seed(5)
    assert _equal(whole, _teacher(tree, tmp_path / "killed.pt"))


def test_training_rng_is_the_trainings_own_and_gives_the_process_its_own_back():
    torch.manual_seed(7)
    before = torch.get_rng_state()
    with training_rng("x", 3, torch.device("cpu")):
        drawn = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(8)
    with training_rng("x", 3, torch.device("cpu")):
        assert torch.equal(torch.rand(4), drawn)
    assert derived_seed("x", 3) != derived_seed("x", 4) != derived_seed("y", 3) and 0 <= derived_seed("x", 3) < 2**63
