"""A recovery or RDED called from Python (a script, a notebook's "interrupt kernel": SIGINT) stops
on a signal as the CLI does (infer_fast/interrupts.py, checkpointed_call): the iteration or class
under way finishes and is saved, the caller gets a KeyboardInterrupt that says where the progress
is, resume=True continues to the bits of an uninterrupted run, and the handlers the caller had are
back afterwards. Before, only cli.main installed the handlers: Python's default SIGINT handler
raised in the middle of an iteration and the batch under way was lost."""
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from conftest import train_tiny_teachers

from infer_fast import interrupts
from infer_fast.storage import load_distilled

# K = 4 UFCs of one teacher in one batch (ipc 5), the signal as iteration 10 of 30 starts
RECOVERY_SCRIPT = """
    import os, signal, sys
    import torch
    from infer_fast import interrupts
    from infer_fast.distill import RecoveryConfig, distill_infer
    from infer_fast.distill.engine import SIGNAL_AT_ITERATION_ENV

    teacher, root = sys.argv[1], sys.argv[2]
    before = {s: signal.getsignal(s) for s in interrupts.SIGNALS}

    def distill(name, resume=False):
        distill_infer("fashion-mnist-mini", [teacher], 5, os.path.join(root, name), resume=resume, progress=False,
                      config=RecoveryConfig(iterations=30, group_size=4))

    os.environ[SIGNAL_AT_ITERATION_ENV] = "SIGINT:10"  # (engine: the process signals itself there)
    try:
        distill("stopped")
        print("stopped: finished")
    except KeyboardInterrupt as exc:
        print(f"stopped: {type(exc).__name__}: {exc}")
    del os.environ[SIGNAL_AT_ITERATION_ENV]
    print("handlers restored:", {s: signal.getsignal(s) for s in interrupts.SIGNALS} == before)
    saved = torch.load(os.path.join(root, "stopped.recovery.pt"), weights_only=True)
    print("saved iterations:", [partial["iteration"] for partial in saved["partials"]])
    distill("stopped", resume=True)
    distill("reference")
    print("handlers restored:", {s: signal.getsignal(s) for s in interrupts.SIGNALS} == before)
"""

# ipc 2 from 12 candidates per class, Ctrl-C while class 3 is scored
RDED_SCRIPT = """
    import os, signal, sys
    import torch
    from infer_fast import interrupts
    from infer_fast.methods import rded
    from infer_fast.methods.registry import DistillRequest

    teacher, root = sys.argv[1], sys.argv[2]
    before = {s: signal.getsignal(s) for s in interrupts.SIGNALS}
    real, interrupt_at = rded.class_images, [3]

    def class_images(batch, c, *args):
        if c in interrupt_at:
            interrupt_at.clear()
            os.kill(os.getpid(), signal.SIGINT)
        return real(batch, c, *args)

    rded.class_images = class_images

    def distill(name, resume=False):
        DistillRequest(method="rded", dataset="fashion-mnist-mini", ipc=2, out_dir=os.path.join(root, name),
                       teacher_paths=[teacher], options={"candidates_per_class": 12, "crops_per_image": 2},
                       resume=resume, progress=False, device="cpu").make_set()

    try:
        distill("stopped")
        print("stopped: finished")
    except KeyboardInterrupt as exc:
        print(f"stopped: {type(exc).__name__}: {exc}")
    print("handlers restored:", {s: signal.getsignal(s) for s in interrupts.SIGNALS} == before)
    saved = torch.load(os.path.join(root, "stopped.recovery.pt"), weights_only=True)
    print("saved classes:", saved["classes_done"])
    distill("stopped", resume=True)
    distill("reference")
"""

# teacher and student training, SIGTERM right after epoch 1 of 2 is saved: before, Python's default
# ended the process there (and a Ctrl-C said nothing of the checkpoint)
TRAINING_SCRIPT = """
    import os, signal, sys
    import torch
    from infer_fast import interrupts, student, teacher
    from infer_fast.data import load_dataset

    root, tests = sys.argv[1], sys.argv[2]
    sys.path.insert(0, tests)
    from conftest import small_infer_set

    before = {s: signal.getsignal(s) for s in interrupts.SIGNALS}
    real_load = teacher.load_dataset  # (10 images a class: an epoch takes a moment)
    teacher.load_dataset = lambda name, split, **kwargs: real_load(name, split, **kwargs).per_class(10)

    def stopped(module, train):
        real = module.save_atomic

        def save_then_term(*args, **kwargs):
            real(*args, **kwargs)
            module.save_atomic = real
            os.kill(os.getpid(), signal.SIGTERM)

        module.save_atomic = save_then_term
        try:
            train()
            print("finished")
        except KeyboardInterrupt as exc:
            print(f"{type(exc).__name__}: {exc}")
        print("handlers restored:", {s: signal.getsignal(s) for s in interrupts.SIGNALS} == before)

    cfg = teacher.TeacherConfig(dataset="fashion-mnist-mini", model="convnet-w8-d2", epochs=2, batch_size=256,
                                lr=0.05, device="cpu")
    stopped(teacher, lambda: teacher.train_teacher(cfg, os.path.join(root, "t.pt"), progress=False))
    print("teacher epochs:", teacher.train_teacher(cfg, os.path.join(root, "t.pt"), progress=False)["epochs_done"])

    distilled, test = small_infer_set(), load_dataset("fashion-mnist-mini", "test").per_class(10)
    config = student.StudentConfig(model="convnet-w8-d2", epochs=2, batch_size=8, device="cpu")

    def train(name, resume=False):
        return student.train_student(distilled, test, config, progress=False, checkpoint=os.path.join(root, name),
                                     resume=resume)["model"].state_dict()

    stopped(student, lambda: train("s.pt"))
    resumed, reference = train("s.pt", resume=True), train("reference.pt")
    print("student bit-identical:", all(torch.equal(resumed[k], reference[k]) for k in reference))
"""


def test_sigterm_in_teacher_and_student_training_called_from_python_says_where_the_epochs_are(tmp_path):
    result = run_script(TRAINING_SCRIPT, tmp_path, os.path.dirname(os.path.abspath(__file__)))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if not line.startswith(str(tmp_path))]
    assert lines == [
        f"Interrupted: SIGTERM: progress is saved in {tmp_path / 't.pt'}: call train_teacher again with the same "
        "out to continue",
        "handlers restored: True",
        "teacher epochs: 2",
        f"Interrupted: SIGTERM: progress is saved in {tmp_path / 's.pt'}: run it again with resume=True to continue",
        "handlers restored: True",
        "student bit-identical: True"]
    assert f"{tmp_path / 't.pt'}: resuming after epoch 1/2" in result.stdout


def run_script(code: str, *args) -> subprocess.CompletedProcess:
    """``python -c code args...`` in a new session (its signals stay in that process)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], capture_output=True,
                          text=True, timeout=300, start_new_session=True)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    (path,) = train_tiny_teachers(tmp_path_factory.mktemp("teachers"), seeds=(0,))
    return path


def test_ctrl_c_in_a_recovery_called_from_python_saves_its_iteration_and_resumes_bit_identically(tmp_path, teacher):
    result = run_script(RECOVERY_SCRIPT, teacher, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == [f"stopped: Interrupted: SIGINT: progress is saved in {tmp_path / 'stopped.recovery.pt'}: "
                         "run it again with resume=True to continue",
                         "handlers restored: True",
                         "saved iterations: [11]"]  # (iteration 10, under way, finished and saved)
    assert "teacher 1/1 batch k=0..3 continues at iteration 11/30" in result.stdout
    assert lines[-1] == "handlers restored: True"
    assert torch.equal(load_distilled(tmp_path / "stopped").ufc, load_distilled(tmp_path / "reference").ufc)
    assert not (tmp_path / "stopped.recovery.pt").exists()


def test_ctrl_c_in_rded_called_from_python_saves_the_class_under_way_and_resumes_bit_identically(tmp_path, teacher):
    result = run_script(RDED_SCRIPT, teacher, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[:3] == [
        f"stopped: Interrupted: SIGINT: progress is saved in {tmp_path / 'stopped.recovery.pt'}: run it again with "
        "resume=True to continue",
        "handlers restored: True",
        "saved classes: 4"]  # (class 3, under way, finished and saved)
    assert "resuming RDED after 4/10 classes" in result.stdout
    assert torch.equal(load_distilled(tmp_path / "stopped").images, load_distilled(tmp_path / "reference").images)


@pytest.fixture
def python_default_sigint():
    """SIGINT at Python's default handler for the test (as in a script or a notebook's cell)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_the_handlers_are_ours_during_a_recovery_and_the_callers_after_it(tmp_path, teacher, monkeypatch,
                                                                          python_default_sigint):
    """During the call SIGINT at Python's default is ours, a caller's own handler is kept; after
    it (returned or stopped) each is as it was."""
    from infer_fast.distill import RecoveryConfig, distill_infer, engine

    seen, stop_at, real = [], [None], engine.cosine_lr

    def watched(t, cfg):  # (every iteration: what handles SIGINT then; a stop as the handler records it)
        seen.append(signal.getsignal(signal.SIGINT))
        if t == stop_at[0]:
            interrupts.STOP.signum = signal.SIGINT
        return real(t, cfg)

    monkeypatch.setattr(engine, "cosine_lr", watched)

    def distill(name):
        distill_infer("fashion-mnist-mini", [teacher], 5, tmp_path / name, config=RecoveryConfig(iterations=4),
                      progress=False)

    distill("returned")
    assert seen and all(handler is interrupts._handler for handler in seen)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    seen.clear()
    stop_at[0] = 2
    with pytest.raises(interrupts.Interrupted, match="progress is saved in .*stopped.recovery.pt: run it again with "
                                                     "resume=True to continue"):
        distill("stopped")
    assert seen and all(handler is interrupts._handler for handler in seen)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    def own(signum, frame):
        pass

    signal.signal(signal.SIGINT, own)
    seen.clear()
    stop_at[0] = None
    distill("own")
    assert seen and all(handler is own for handler in seen)
    assert signal.getsignal(signal.SIGINT) is own


def test_checkpointed_call_keeps_the_clis_handlers_and_ignored_signals(python_default_sigint):
    """Nested in cli.main's handlers (or another call's) it changes nothing, and restores
    nothing when it ends; an ignored signal stays ignored; from another thread, nothing changes."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with interrupts.checkpointed_call(lambda: None):
            assert signal.getsignal(signal.SIGINT) is interrupts._handler
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            with interrupts.checkpointed_call(lambda: None):
                assert signal.getsignal(signal.SIGINT) is interrupts._handler
            assert signal.getsignal(signal.SIGINT) is interrupts._handler
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with interrupts.handlers_installed():
            with interrupts.checkpointed_call(lambda: None):
                pass
            assert signal.getsignal(signal.SIGINT) is interrupts._handler
    finally:
        signal.signal(signal.SIGHUP, previous)

    in_thread = []

    def from_a_thread():
        with interrupts.checkpointed_call(lambda: None):
            in_thread.append(signal.getsignal(signal.SIGINT))

    worker = threading.Thread(target=from_a_thread)
    worker.start()
    worker.join()
    assert in_thread == [signal.default_int_handler]
