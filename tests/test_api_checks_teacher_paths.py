"""One teacher checkpoint given as a single str or os.PathLike, at every public entry that
takes teacher paths, is a list of one: not a sequence of its characters (which failed with
"teacher checkpoint 't' does not exist")."""
from pathlib import Path

import pytest
import torch

from conftest import train_tiny_teachers
from infer_fast.distill import RecoveryConfig, distill_infer
from infer_fast.methods import DistillRequest
from infer_fast.relabel import relabel_directory
from infer_fast.storage import load_distilled

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    return train_tiny_teachers(tmp_path_factory.mktemp("teacher"), seeds=(0,))[0]


def test_teacher_path_list_takes_one_path_or_several():
    from infer_fast.teacher import teacher_path_list  # (the one helper every entry reads them with)

    assert teacher_path_list("t8.pt") == ["t8.pt"]
    assert teacher_path_list(Path("dir") / "t8.pt") == [str(Path("dir") / "t8.pt")]
    assert teacher_path_list(("a.pt", Path("b.pt"))) == ["a.pt", "b.pt"]
    assert teacher_path_list(None) == [] and teacher_path_list([]) == []
    for bad in (b"t8.pt", 3, [1], {"t8.pt": 1}):
        with pytest.raises(ValueError, match="teacher_paths must be a path .* or a list of paths"):
            teacher_path_list(bad)


def test_a_distill_request_holds_one_path_as_a_list_of_one(tmp_path):
    base = dict(method="infer", dataset="fashion-mnist-mini", ipc=2, out_dir=tmp_path / "o")
    assert DistillRequest(teacher_paths="t8.pt", **base).teacher_paths == ["t8.pt"]
    assert DistillRequest(teacher_paths=tmp_path / "t8.pt", **base).teacher_paths == [str(tmp_path / "t8.pt")]
    with pytest.raises(ValueError, match="teacher_paths must be a path"):
        DistillRequest(teacher_paths=[3], **base)


def test_a_missing_single_path_is_named_whole(tmp_path):
    missing = str(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        distill_infer("fashion-mnist-mini", missing, ipc=2, out_dir=tmp_path / "o",
                      config=RecoveryConfig(iterations=1), progress=False)
    assert not (tmp_path / "o").exists()


def test_one_teacher_path_distills_and_relabels(teacher_path, tmp_path):
    out = distill_infer("fashion-mnist-mini", teacher_path, ipc=2, out_dir=tmp_path / "infer",
                        config=RecoveryConfig(iterations=1), progress=False)
    assert [t["path"] for t in load_distilled(out).teachers] == [teacher_path]
    request = DistillRequest(method="rded", dataset="fashion-mnist-mini", ipc=1, out_dir=tmp_path / "rded",
                             teacher_paths=Path(teacher_path), options={"factor": 1, "candidates_per_class": 2},
                             progress=False)
    assert [t["path"] for t in load_distilled(request.make_set()).teachers] == [teacher_path]
    relabelled = relabel_directory(out, Path(teacher_path))
    assert relabelled.hyperparameters["relabel"]["teachers"] == [teacher_path]
    assert load_distilled(out).hyperparameters["relabel"]["teachers"] == [teacher_path]  # (saved back)
    from infer_fast.teacher import load_teachers_for_set

    assert len(load_teachers_for_set(teacher_path, relabelled)) == 1  # (not one per character)
