"""A stopped evaluation continues: `evaluate --checkpoints DIR --resume`, evaluate_set's and
DD-Ranking's ``checkpoints`` folder, and `run`'s scores step keep the full-data run and every
student they trained; the rerun trains only what was left (SIGTERM or Ctrl-C, simulated by a
KeyboardInterrupt from a training epoch)."""
import os

import pytest
import torch

import infer_fast.student as student_module
import infer_fast.teacher as teacher_module
from infer_fast.cli import main
from infer_fast.dd_ranking import DDRankingProtocol, evaluate_set_dd_ranking
from infer_fast.evaluate import Protocol, checkpoint_files, evaluate_set
from infer_fast.pipeline import SCORES_DIR, PipelineConfig, run_pipeline
from infer_fast.storage import save_distilled
from infer_fast.teacher import load_teacher

torch.set_num_threads(1)

STUDENT = {"model": "convnet-w8-d2", "epochs": 2, "batch_size": 50, "temperature": 4.0}


class Epochs:
    """Counts the student epochs (StudentRun.train_epoch) and the teacher-recipe epochs (the
    full-data run's, a run's teachers') trained since :meth:`reset`; the epoch ``stop_at`` of the
    students, or ``stop_teacher_at`` of the teacher recipe (1-based, counted from the reset),
    raises KeyboardInterrupt before it trains, as a stop would."""

    def __init__(self, monkeypatch):
        self.reset()
        student_epoch, teacher_epoch = student_module.StudentRun.train_epoch, teacher_module._train_epoch

        def counted_student_epoch(run, *args, **kwargs):
            self.student += 1
            if self.student == self.stop_at:
                raise KeyboardInterrupt
            return student_epoch(run, *args, **kwargs)

        def counted_teacher_epoch(*args, **kwargs):
            self.teacher += 1
            if self.teacher == self.stop_teacher_at:
                raise KeyboardInterrupt
            return teacher_epoch(*args, **kwargs)
        monkeypatch.setattr(student_module.StudentRun, "train_epoch", counted_student_epoch)
        monkeypatch.setattr(teacher_module, "_train_epoch", counted_teacher_epoch)

    def reset(self, stop_at=None, stop_teacher_at=None):
        self.student = self.teacher = 0
        self.stop_at, self.stop_teacher_at = stop_at, stop_teacher_at


def test_a_stopped_evaluation_continues_its_full_data_run_and_students(teacher, labelled_set, tmp_path, monkeypatch):
    """8 students of 2 epochs and a full-data run of 2 epochs; stopped in the third student's
    second epoch, the evaluation given the folder again reads the full-data run and the two
    finished students back, continues the third after its first epoch, and reports what an
    evaluation never stopped does."""
    protocol = Protocol(student=STUDENT, seeds=1, full_data_epochs=2)
    epochs = Epochs(monkeypatch)
    whole = evaluate_set(labelled_set, [teacher[1]], protocol, device="cpu", progress=False)
    assert (epochs.student, epochs.teacher) == (16, 2)

    folder = tmp_path / "checkpoints"
    epochs.reset(stop_at=6)
    with pytest.raises(KeyboardInterrupt):
        evaluate_set(labelled_set, [teacher[1]], protocol, device="cpu", progress=False, checkpoints=str(folder))
    assert epochs.teacher == 2 and len(checkpoint_files(folder, full_data=False)) == 3
    epochs.reset()
    resumed = evaluate_set(labelled_set, [teacher[1]], protocol, device="cpu", progress=False,
                           checkpoints=str(folder))
    assert (epochs.student, epochs.teacher) == (16 - 5, 0)
    assert resumed["per_seed"] == whole["per_seed"] and resumed["full_data_hard"] == whole["full_data_hard"]
    assert len(checkpoint_files(folder)) == 8 + 1  # (kept: an evaluation of more seeds reads these back)
    assert len(checkpoint_files(folder, full_data=False)) == 8 and not os.path.exists(folder / ".lock")

    epochs.reset()  # every student finished: nothing is trained again
    assert evaluate_set(labelled_set, [teacher[1]], protocol, device="cpu", progress=False,
                        checkpoints=str(folder))["per_seed"] == whole["per_seed"]
    assert (epochs.student, epochs.teacher) == (0, 0)
    epochs.reset()  # another student setting: students of their own (none of the others read back), the same full data
    evaluate_set(labelled_set, [teacher[1]], Protocol(student=dict(STUDENT, lr=0.002), seeds=1, full_data_epochs=2),
                 device="cpu", progress=False, checkpoints=str(folder))
    assert (epochs.student, epochs.teacher) == (16, 0) and len(checkpoint_files(folder, full_data=False)) == 16


def test_a_stopped_full_data_run_resumes_from_its_checkpoint(teacher, labelled_set, tmp_path, monkeypatch):
    """Stopped in the full-data run's second epoch, the rerun trains its last epoch only."""
    protocol = Protocol(student=dict(STUDENT, epochs=1), seeds=1, full_data_epochs=2)
    epochs = Epochs(monkeypatch)
    epochs.reset(stop_teacher_at=2)
    folder = str(tmp_path / "checkpoints")
    with pytest.raises(KeyboardInterrupt):
        evaluate_set(labelled_set, [teacher[1]], protocol, device="cpu", progress=False, checkpoints=folder)
    epochs.reset()
    report = evaluate_set(labelled_set, [teacher[1]], protocol, device="cpu", progress=False, checkpoints=folder)
    assert (epochs.teacher, epochs.student) == (1, 8) and "trained here" in report["full_data_hard"]["source"]
    (full_data,) = (path for path in checkpoint_files(folder) if path not in checkpoint_files(folder, full_data=False))
    assert os.path.basename(full_data).startswith("full-data-convnet-w8-d2-fashion-mnist-mini-")
    assert load_teacher(full_data)[1]["test_accuracy"] == report["full_data_hard"]["accuracy"]


def test_a_stopped_dd_ranking_evaluation_continues_its_rounds_and_rates(teacher, labelled_set, tmp_path,
                                                                           monkeypatch):
    """DD-Ranking's protocol: every rate of the grid and run of a round has a checkpoint of its
    own; a rerun trains only the epochs left."""
    protocol = DDRankingProtocol(student={"model": "convnet-w8-d2", "epochs": 2, "batch_size": 50}, rounds=1,
                                 lr_grid=(0.001, 0.01), test_interval=1)
    students = protocol.student_count()  # (7 runs, each on 2 rates)
    epochs = Epochs(monkeypatch)
    folder = str(tmp_path / "checkpoints")
    epochs.reset(stop_at=8)
    with pytest.raises(KeyboardInterrupt):
        evaluate_set_dd_ranking(labelled_set, [teacher[1]], protocol, full_data_checkpoint=teacher[0], device="cpu",
                                progress=False, checkpoints=folder)
    epochs.reset()
    report = evaluate_set_dd_ranking(labelled_set, [teacher[1]], protocol, full_data_checkpoint=teacher[0],
                                     device="cpu", progress=False, checkpoints=folder)
    assert epochs.student == 2 * students - 7 and len(checkpoint_files(folder)) == students == 14
    assert set(report["per_round"][0]["runs"]["set_hard"]["grid"]) == {"0.001", "0.01"}


def test_evaluate_cli_continues_with_checkpoints_and_resume(teacher, labelled_set, tmp_path, monkeypatch, capsys):
    """`evaluate --checkpoints DIR`: stopped, the same command is refused (as train's) until
    --resume, which trains only what was left; --resume needs --checkpoints."""
    save_distilled(labelled_set, tmp_path / "set")
    folder = tmp_path / "checkpoints"
    argv = ["evaluate", str(tmp_path / "set"), "--teachers", teacher[0], "--full-data-checkpoint", teacher[0],
            "--seeds", "1", "--model", "convnet-w8-d2", "--epochs", "1", "--device", "cpu", "--quiet",
            "--checkpoints", str(folder)]
    epochs = Epochs(monkeypatch)
    epochs.reset(stop_at=4)
    assert main(argv) == 130
    stopped = capsys.readouterr().err.strip().splitlines()[-1]
    assert stopped.startswith(f"infer-fast evaluate: interrupted (SIGINT); progress is saved in {folder}{os.sep}")
    assert stopped.endswith(": run the same command with --resume to continue")
    assert main(argv) == 2  # (the set's first three students: their files named)
    assert (f"--checkpoints {folder} holds set-" in (refused := capsys.readouterr().err)
            and "resume to continue them (--resume), or delete them" in refused)
    epochs.reset()
    assert main(argv + ["--resume"]) == 0
    assert epochs.student == 8 - 3 and "LRS" in capsys.readouterr().out
    without_folder = [a for a in argv if a not in ("--checkpoints", str(folder))]
    assert main(without_folder + ["--resume"]) == 2
    assert "--resume continues from --checkpoints DIR" in capsys.readouterr().err


def test_run_continues_its_scores_after_a_stop(teacher, tmp_path, monkeypatch, capsys):
    """`run`'s scores step checkpoints its full-data run and students in the run directory: a
    stop in the third score student, and the rerun trains only what was left (the full-data run
    not again), says what it scores as the rest of the run does, and removes the score
    students' checkpoints once every set is scored (the full-data run's stays)."""
    def config(out):  # (a teacher of another architecture than the students': the full data is trained)
        return PipelineConfig.from_dict(dict(
            dataset="fashion-mnist-mini", out=str(out), ipc=[2], methods=["random"], seeds=1, device="cpu",
            teachers=[{"model": "convnet-w8-d1", "epochs": 1, "batch_size": 256, "lr": 0.05, "seed": 0}],
            student={"model": "convnet-w8-d2", "epochs": 2, "batch_size": 64, "device": "cpu"},
            scores={"protocol": "infer-fast", "full_data_epochs": 1}))
    epochs = Epochs(monkeypatch)
    whole = run_pipeline(config(tmp_path / "whole"), progress=False)
    assert epochs.teacher == 1 + 1  # (the run's teacher, the full-data run)

    out = tmp_path / "run"
    epochs.reset(stop_at=2 + 2 * 2 + 2)  # (the run's student, two score students, a score student's first epoch)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config(out), progress=False)
    epochs.reset()
    capsys.readouterr()
    results = run_pipeline(config(out), progress=True)
    assert (epochs.student, epochs.teacher) == (16 - 5, 0)
    assert results["scores"]["random/ipc2"]["per_seed"] == whole["scores"]["random/ipc2"]["per_seed"]
    printed = "".join(capsys.readouterr())  # (progress on stderr, the student's resume line)
    assert "seed 1/1, the set: static soft labels" in printed and "resuming student seed 0 after epoch 1/2" in printed
    left = [os.path.basename(path) for path in checkpoint_files(out / SCORES_DIR)]
    assert len(left) == 1 and left[0].startswith("full-data-convnet-w8-d2-fashion-mnist-mini-")
