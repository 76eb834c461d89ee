"""`infer-fast run` refuses a train split with too few images of a class for a set it makes
(random's ipc, INFER's K natural sets, RDED's candidates) before any work: before the
teachers train, not when the set is made (RDED's after every other set)."""
import pytest
import torch

from infer_fast import pipeline
from infer_fast.data import write_image_folder
from infer_fast.pipeline import PipelineConfig, run_pipeline

TEACHER = {"model": "convnet-w8-d2", "epochs": 1, "batch_size": 256, "seed": 0}
MINI_TRAIN = "the train split of fashion-mnist-mini"  # (500 images of every class)


@pytest.fixture(autouse=True)
def no_teachers(monkeypatch):
    """The refusal comes first: a run that reaches its teachers fails the test."""
    def reached(*args, **kwargs):
        raise AssertionError("the run reached its teachers before refusing the class counts")

    monkeypatch.setattr(pipeline, "prepare_teachers", reached)
    monkeypatch.setattr(pipeline, "_load_teachers", reached)


def refusal(tmp_path, **settings) -> str:
    values = dict(dataset="fashion-mnist-mini", teachers=[dict(TEACHER)], out=str(tmp_path / "run"), device="cpu",
                  student={"model": "convnet-w8-d2", "epochs": 1, "device": "cpu"})
    values.update(settings)
    with pytest.raises(ValueError) as refused:
        run_pipeline(PipelineConfig.from_dict(values), progress=False)
    assert not (tmp_path / "run").exists()  # (refused before the run directory was made)
    return str(refused.value)


def test_random_refused_at_an_ipc_above_a_class(tmp_path):
    assert refusal(tmp_path, ipc=[2, 501], methods=["random"]) == (
        f"random at ipc 501 needs 501 images of every class, but class 0 of {MINI_TRAIN} has 500 "
        "(10 classes have fewer): lower ipc (--ipc)")


def test_infer_refused_by_its_natural_sets(tmp_path):
    # one teacher, fair budget: K = floor(560 * 10 / 11) = 509 natural sets; INFER+Dyn trains on INFER's set
    assert refusal(tmp_path, ipc=[560], methods=["infer_dyn"]) == (
        f"infer at ipc 560 (K = 509 natural sets) needs 509 images of every class, but class 0 of "
        f"{MINI_TRAIN} has 500 (10 classes have fewer): lower ipc (--ipc)")


def test_rded_refused_by_its_candidates_before_other_sets(tmp_path):
    message = refusal(tmp_path, ipc=[1], methods=["random", "rded"],
                      method_options={"rded": {"candidates_per_class": 600}})
    assert message == (
        f"rded with candidates_per_class=600 needs 600 images of every class, but class 0 of {MINI_TRAIN} has 500 "
        "(10 classes have fewer): lower it (method_options: {rded: {candidates_per_class: N}})")


def test_folder_split_counted_per_class(tmp_path):
    """An image folder's classes are counted from its scan: the first short class is named,
    and no count of others where it is the only one."""
    root = tmp_path / "data"
    counts = {"train": [3, 6], "test": [2, 2]}
    for split, per_class in counts.items():
        labels = torch.arange(2).repeat_interleave(torch.tensor(per_class))
        write_image_folder(str(root / split), torch.zeros(len(labels), 1, 16, 16, dtype=torch.uint8), labels)
    message = refusal(tmp_path, dataset={"name": "imagefolder", "image_size": 16}, data_root=str(root), ipc=[5],
                      methods=["random"])
    assert message == (f"random at ipc 5 needs 5 images of every class, but class 0 of the train split of "
                       f"imagefolder at {str(root / 'train')!r} has 3: lower ipc (--ipc)")
