"""The settings that do not change a result, declared once on their options
(``option(..., result_neutral=True)``): a teacher, student or recovery checkpoint and a run's
results file continue under other values of them (the evaluation batch size the out-of-memory
message tells a user to lower, the device), and a run config's other checks."""
from dataclasses import dataclass, field

import pytest
import torch

from infer_fast.distill.config import RESULT_NEUTRAL, RecoveryConfig
from infer_fast.options import option, result_neutral_fields
from infer_fast.run_config import PipelineConfig
from infer_fast.student import STUDENT_RESULT_NEUTRAL, StudentConfig
from infer_fast.teacher import TEACHER_RESULT_NEUTRAL, TeacherConfig

torch.set_num_threads(1)


def test_the_neutral_settings_are_those_declared_on_the_options():
    @dataclass(frozen=True)
    class Example:
        lr: float = field(default=0.1, metadata=option("learning rate"))
        batch: int = field(default=8, metadata=option("rows per batch", result_neutral=True))
        seed: int = 0

    assert result_neutral_fields(Example) == ("batch",)
    assert TEACHER_RESULT_NEUTRAL == result_neutral_fields(TeacherConfig)
    assert set(TEACHER_RESULT_NEUTRAL) == {"device", "eval_batch_size", "data_root"}
    assert STUDENT_RESULT_NEUTRAL == result_neutral_fields(StudentConfig)
    assert {"device", "eval_batch_size"} <= set(STUDENT_RESULT_NEUTRAL)
    assert not {"seed", "epochs", "lr", "precision", "eval_every"} & set(STUDENT_RESULT_NEUTRAL)
    assert RESULT_NEUTRAL == result_neutral_fields(RecoveryConfig)
    assert set(RESULT_NEUTRAL) == {"group_size", "chunk_size", "fused_bn", "compile", "cuda_graphs", "distributed",
                                   "checkpoint_every", "checkpoint_minutes"}


def test_train_resumes_with_another_eval_batch_size(tmp_path, capsys):
    """`infer-fast train --resume` with another --eval-batch-size (what the out-of-memory message
    says to lower) continues the checkpointed students, to the same result."""
    from infer_fast.cli import main
    from infer_fast.data import load_dataset
    from infer_fast.storage import DistilledSet, save_distilled

    train = load_dataset("fashion-mnist-mini", "train")
    picked, spec = train.per_class(2, seed=0), train.spec
    save_distilled(DistilledSet(method="random", dataset=spec.name, num_classes=spec.num_classes,
                                channels=spec.channels, image_size=spec.image_size, mean=spec.mean, std=spec.std,
                                images=picked.images, labels=picked.labels), tmp_path / "set")
    args = ["train", str(tmp_path / "set"), "--labels", "hard", "--model", "convnet-w8-d2", "--epochs", "1",
            "--seeds", "1", "--device", "cpu", "--quiet", "--checkpoints", str(tmp_path / "students")]
    assert main(args + ["--eval-batch-size", "500"]) == 0
    first = capsys.readouterr().out
    assert main(args + ["--resume", "--eval-batch-size", "100"]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out == first
    # a setting that changes the students still refuses the checkpoint, by name
    assert main(args + ["--resume", "--batch-size", "8"]) == 2
    assert "belongs to another run (batch_size differs" in capsys.readouterr().err


def _run_config(out, teacher=None, student=None, teachers=1):
    return PipelineConfig.from_dict(dict(
        dataset="fashion-mnist-mini", out=str(out), methods=["random"], ipc=[1],
        teachers=[{"model": "convnet", "epochs": 1, **(teacher or {}), **({"seed": i} if i else {})}  # (one teacher once)
                  for i in range(teachers)], student=student or {}))


def _continue(out, old_cfg, new_cfg):
    """Whether a run of ``new_cfg`` continues the results file ``old_cfg``'s run left, once a
    student of it is on disk (its settings can no longer change freely)."""
    from infer_fast.results import _check_same_settings, recorded_config

    (out / "students").mkdir(exist_ok=True)
    (out / "students" / "random-ipc1-seed0.pt").write_bytes(b"x")
    old = {"config": recorded_config(old_cfg), "runs": {"random/ipc1/seed0": {}}}
    _check_same_settings(out / "results.json", old, new_cfg, recorded_config(new_cfg))


def test_a_run_continues_with_other_evaluation_batches_and_devices(tmp_path):
    old = _run_config(tmp_path, {"eval_batch_size": 1000}, {"eval_batch_size": 1000})
    _continue(tmp_path, old, _run_config(tmp_path, {"eval_batch_size": 100, "device": "cpu"}, {"eval_batch_size": 100}))
    _continue(tmp_path, old, _run_config(tmp_path, None, {"device": "cpu"}))


def test_a_differing_teacher_setting_is_named(tmp_path):
    old = _run_config(tmp_path, {"eval_batch_size": 1000})
    with pytest.raises(ValueError, match=r"belongs to another run \(teachers\[0\]\.epochs differs; "
                                         r"recorded teachers\[0\]\.epochs=1\)"):
        _continue(tmp_path, old, _run_config(tmp_path, {"epochs": 2, "eval_batch_size": 100}))
    with pytest.raises(ValueError, match=r"belongs to another run \(teachers differs"):  # another number of them
        _continue(tmp_path, old, _run_config(tmp_path, {"eval_batch_size": 1000}, teachers=2))


@pytest.mark.parametrize("methods", [["infer"], ["infer", "infer_dyn"]])
def test_dynamic_epochs_true_is_refused_as_itself(tmp_path, methods):
    """YAML's ``dynamic_epochs: yes`` (True) is no epoch count: refused naming dynamic_epochs,
    not as the student's epochs it would become under INFER+Dyn."""
    with pytest.raises(ValueError, match=r"^config: dynamic_epochs must be a positive integer, got True$"):
        PipelineConfig.from_dict(dict(dataset="fashion-mnist-mini", out=str(tmp_path), methods=methods,
                                      teachers=[{"model": "convnet", "epochs": 1}], dynamic_epochs=True))


@pytest.mark.parametrize("ipc", [[True], [1, 0], ["2"], [], [2 ** 64]])
def test_ipc_entries_are_positive_integers(tmp_path, ipc):
    with pytest.raises(ValueError, match=r"^config: ipc must be a positive integer"):
        PipelineConfig.from_dict(dict(dataset="fashion-mnist-mini", out=str(tmp_path), methods=["random"], ipc=ipc,
                                      teachers=[{"model": "convnet", "epochs": 1}]))
