"""Stopping on a signal (SIGINT, SIGTERM, SIGHUP, SIGUSR1/2: infer_fast/interrupts.py), a stdout that
cannot be written, memory running out, a deleted working directory: one line on stderr and
a meaningful exit status, with the work saved or finished where it can be."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from resume_case import IN_BATCH_DISTILL, TINY_TEACHER

from infer_fast import interrupts


def run_cli(*args, cwd=None, env=None, **popen):
    """The CLI in a new process (``env``: variables on top of this one's)."""
    return subprocess.run([sys.executable, "-m", "infer_fast.cli", *args], cwd=cwd, env={**os.environ, **(env or {})},
                          timeout=600, **{"capture_output": True, "text": True, **popen})


def run_python(code: str, *args, cwd=None, **popen):
    """``python -c code args...`` in a new session (a signal to its process group stays there)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], cwd=cwd, timeout=300,
                          start_new_session=True, **{"capture_output": True, "text": True, **popen})


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder holding the tiny teacher t.pt (resume_case.TINY_TEACHER)."""
    folder = tmp_path_factory.mktemp("interrupts")
    result = run_cli(*TINY_TEACHER, cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture
def handlers():
    with interrupts.handlers_installed():
        yield


def _cli(capsys, *args):
    from infer_fast.cli import main

    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


# ---------------------------------------------------------------------------------------
# The handlers and safe points (in this process)
# ---------------------------------------------------------------------------------------
def test_a_signal_raises_interrupted_at_once_outside_a_safe_point_region(handlers):
    with pytest.raises(interrupts.Interrupted) as raised:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # (the handler runs at the next bytecode)
            pass
    assert raised.value.signum == signal.SIGTERM and isinstance(raised.value, KeyboardInterrupt)
    assert interrupts.exit_status(raised.value) == 143 and interrupts.exit_status(KeyboardInterrupt()) == 130


def test_inside_a_region_a_signal_waits_for_a_safe_point_and_a_second_one_does_not(handlers):
    with interrupts.stop_at_safe_points():
        os.kill(os.getpid(), signal.SIGHUP)
        assert interrupts.STOP.signum == signal.SIGHUP  # recorded, not raised
        with pytest.raises(interrupts.Interrupted) as raised:
            os.kill(os.getpid(), signal.SIGINT)  # a second one: at once
            for _ in range(1000):
                pass
        assert raised.value.signum == signal.SIGINT and interrupts.STOP.signum is None
    with pytest.raises(interrupts.Interrupted) as raised:  # left pending: raised as the region ends
        with interrupts.stop_at_safe_points():
            os.kill(os.getpid(), signal.SIGTERM)
    assert raised.value.signum == signal.SIGTERM and interrupts.STOP.signum is None


def test_the_same_stop_told_twice_at_once_is_one_stop_and_later_it_hurries_it(handlers, monkeypatch):
    """SLURM signals every process of a job and torchrun forwards its own SIGTERM to its workers
    a millisecond later: a repeat within REPEAT_GRACE_S is the same stop (it raised at once, in
    the middle of the save the first one asked for); a repeat later, or a second Ctrl-C, hurries it."""
    clock = iter([100.0, 100.001, 100.002, 103.0])  # (time.monotonic() at each signal)
    monkeypatch.setattr(interrupts.time, "monotonic", lambda: next(clock))
    with interrupts.stop_at_safe_points():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # (torchrun's, 1 ms later)
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(1000):
            pass
        assert interrupts.STOP.signum == signal.SIGTERM  # (one stop pending, none raised)
        with pytest.raises(interrupts.Interrupted) as raised:
            os.kill(os.getpid(), signal.SIGTERM)  # (3 s later: hurry it)
            for _ in range(1000):
                pass
        assert raised.value.signum == signal.SIGTERM


def test_sigusr1_ahead_of_a_time_limit_saves_the_batch_as_sigterm_does(work):
    """SLURM's --signal=USR1@120 warns a job before its time limit: Python's default for SIGUSR1
    killed the process on the spot, losing the batch since its last checkpoint."""
    from infer_fast.distill.engine import SIGNAL_AT_ITERATION_ENV

    stopped = run_cli(*IN_BATCH_DISTILL, "--out", "usr1", cwd=work, env={SIGNAL_AT_ITERATION_ENV: "SIGUSR1:40"})
    assert stopped.returncode == 128 + signal.SIGUSR1, stopped.stderr
    assert stopped.stderr.splitlines() == ["infer-fast distill: interrupted (SIGUSR1); progress is saved in "
                                           "usr1.recovery.pt: run the same command with --resume to continue"]
    (partial,) = torch.load(work / "usr1.recovery.pt", weights_only=True)["partials"]
    assert partial["iteration"] == 41


def test_handlers_are_restored_and_an_ignored_signal_stays_ignored(capsys, monkeypatch):
    """cli.main installs its handlers for the command only; nohup's ignored SIGHUP stays ignored."""
    before = {s: signal.getsignal(s) for s in interrupts.SIGNALS}
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with interrupts.handlers_installed():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is interrupts._handler
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert _cli(capsys, "datasets")[0] == 0
    assert {s: signal.getsignal(s) for s in interrupts.SIGNALS} == before


# ---------------------------------------------------------------------------------------
# distill and teacher stopped by a signal: progress saved, one line, 128 + signum
# ---------------------------------------------------------------------------------------
def test_sigterm_inside_a_batch_saves_its_iteration_and_resume_is_bit_identical(work):
    """SIGTERM as iteration 40 of the batch starts (engine.SIGNAL_AT_ITERATION_ENV), with the
    default cadence (every 10 minutes: no checkpoint would land in this run): the iteration
    under way completes, the batch's state after it (iteration 41) is written by the cadence's
    own path, the run ends with status 143 and one line naming the checkpoint, and --resume
    ends with exactly the compensators of an uninterrupted run. Before, nothing was saved and
    the process died silently."""
    from infer_fast.distill.engine import SIGNAL_AT_ITERATION_ENV
    from infer_fast.storage import load_distilled

    stopped = run_cli(*IN_BATCH_DISTILL, "--out", "term", cwd=work, env={SIGNAL_AT_ITERATION_ENV: "SIGTERM:40"})
    assert stopped.returncode == 143, stopped.stderr
    assert stopped.stderr.splitlines() == ["infer-fast distill: interrupted (SIGTERM); progress is saved in "
                                           "term.recovery.pt: run the same command with --resume to continue"]
    saved = torch.load(work / "term.recovery.pt", weights_only=True)
    (partial,) = saved["partials"]
    assert saved["results"] == [] and partial["k"] == [0, 1, 2, 3] and partial["iteration"] == 41
    resumed = run_cli(*IN_BATCH_DISTILL, "--out", "term", "--resume", cwd=work)
    assert resumed.returncode == 0, resumed.stderr
    assert "teacher 1/1 batch k=0..3 continues at iteration 41/150" in resumed.stdout
    reference = run_cli(*IN_BATCH_DISTILL, "--out", "reference", cwd=work)
    assert reference.returncode == 0, reference.stderr
    assert torch.equal(load_distilled(work / "term").ufc, load_distilled(work / "reference").ufc)


def test_a_stop_saves_the_batch_even_with_the_in_batch_cadence_off(tmp_path, monkeypatch):
    """checkpoint_minutes and checkpoint_every off: no state is saved inside a batch at a cadence,
    but a stop signal still saves the batch where it stopped (it was lost), and a resume ends
    with the uninterrupted run's compensators."""
    from conftest import train_tiny_teachers

    from infer_fast.distill import RecoveryConfig, distill_infer, engine
    from infer_fast.storage import load_distilled

    teacher = train_tiny_teachers(tmp_path, seeds=(0,))
    config = RecoveryConfig(iterations=12, group_size=4, checkpoint_minutes=None, checkpoint_every=None)

    def run(out, **kwargs):
        return load_distilled(distill_infer("fashion-mnist-mini", teacher, 5, tmp_path / out, config=config,
                                            progress=False, **kwargs))

    reference = run("reference")
    real = engine.cosine_lr

    def signalled(t, cfg):  # (as the handler does inside the batch's safe-point region)
        if t == 5:
            interrupts.STOP.signum = signal.SIGTERM
        return real(t, cfg)

    monkeypatch.setattr(engine, "cosine_lr", signalled)
    with pytest.raises(interrupts.Interrupted):
        run("stopped")
    monkeypatch.setattr(engine, "cosine_lr", real)
    (partial,) = torch.load(tmp_path / "stopped.recovery.pt", weights_only=True)["partials"]
    assert partial["iteration"] == 6
    assert torch.equal(run("stopped", resume=True).ufc, reference.ufc)


def test_a_signal_in_the_last_iteration_saves_the_finished_batch(work):
    """Ctrl-C during a batch's last iteration: that state cannot be resumed as a partial, so the
    batch finishes (its final pass) and its results are saved before the stop (status 130)."""
    from infer_fast.distill.engine import SIGNAL_AT_ITERATION_ENV

    stopped = run_cli(*IN_BATCH_DISTILL, "--out", "last", cwd=work, env={SIGNAL_AT_ITERATION_ENV: "SIGINT:149"})
    assert stopped.returncode == 130, stopped.stderr
    assert stopped.stderr.splitlines() == ["infer-fast distill: interrupted (SIGINT); progress is saved in "
                                           "last.recovery.pt: run the same command with --resume to continue"]
    saved = torch.load(work / "last.recovery.pt", weights_only=True)
    assert saved["partials"] == [] and [entry["jobs"] for entry in saved["results"]] == [[[0, k] for k in range(4)]]


def test_sighup_before_any_checkpoint_says_only_that(work):
    """Stopped before its checkpoint exists (here: while the teacher is read), a distill says
    only which signal (status 129): there is nothing to resume from."""
    result = run_python("""
        import os, signal, sys
        import infer_fast.teacher as teacher
        real = teacher.load_teachers_for_split
        def hang_up(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGHUP)
            return real(*args, **kwargs)
        teacher.load_teachers_for_split = hang_up
        from infer_fast.cli import main
        sys.exit(main(sys.argv[1:]))
    """, *IN_BATCH_DISTILL, "--out", "hup", cwd=work)
    assert result.returncode == 129, result.stderr
    assert result.stderr.splitlines() == ["infer-fast distill: interrupted (SIGHUP)"]
    assert not (work / "hup.recovery.pt").exists()


def test_sigterm_in_teacher_training_says_the_same_command_resumes(work):
    """SIGTERM right after a teacher's first epoch is checkpointed: one line naming the
    checkpoint, status 143 (before: killed silently); the same command then resumes."""
    args = ["teacher", "--dataset", "fashion-mnist-mini", "--model", "convnet-w8-d2", "--epochs", "2",
            "--batch-size", "256", "--lr", "0.05", "--out", "t2.pt", "--quiet"]
    stopped = run_python("""
        import os, signal, sys
        import infer_fast.teacher as teacher
        real = teacher.save_atomic
        def save_then_sigterm(*args, **kwargs):
            real(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGTERM)
        teacher.save_atomic = save_then_sigterm
        from infer_fast.cli import main
        sys.exit(main(sys.argv[1:]))
    """, *args, cwd=work)
    assert stopped.returncode == 143, stopped.stderr
    assert stopped.stderr.splitlines() == ["infer-fast teacher: interrupted (SIGTERM); progress is saved in t2.pt: "
                                           "run the same command to continue"]
    resumed = run_cli(*args, cwd=work)
    assert resumed.returncode == 0, resumed.stderr
    assert "t2.pt: resuming after epoch 1/2" in resumed.stdout and "after 2 epochs" in resumed.stdout


def test_run_says_running_it_again_continues(tmp_path, capsys, monkeypatch):
    """`run` continues its directory when run again: its interrupted line says so."""
    def stopped(*args, **kwargs):
        raise interrupts.Interrupted(signal.SIGTERM)

    monkeypatch.setattr("infer_fast.pipeline.load_pipeline_config", lambda *args, **kwargs: None)
    monkeypatch.setattr("infer_fast.pipeline.run_pipeline", stopped)
    status, _, err = _cli(capsys, "run", tmp_path / "exp.yaml")
    assert status == 143
    assert err.splitlines() == ["infer-fast run: interrupted (SIGTERM); run the same command to continue where it stopped"]


def test_train_with_checkpoints_says_where_progress_is(tmp_path, capsys, monkeypatch):
    """`train --checkpoints DIR` stopped after a seed's checkpoint: the line names it and says
    --resume continues."""
    from infer_fast.data import load_dataset
    from infer_fast.storage import DistilledSet, save_distilled

    def stopped(*args, checkpoints, **kwargs):
        os.makedirs(checkpoints)
        open(os.path.join(checkpoints, "seed0.pt"), "w").close()
        raise interrupts.Interrupted(signal.SIGTERM)

    picked = load_dataset("fashion-mnist-mini", "train").per_class(1, seed=0)
    spec = picked.spec
    save_distilled(DistilledSet(method="random", dataset=spec.name, num_classes=spec.num_classes, channels=spec.channels,
                                image_size=spec.image_size, mean=spec.mean, std=spec.std, images=picked.images,
                                labels=picked.labels), tmp_path / "set")
    monkeypatch.setattr("infer_fast.student.evaluate_seeds", stopped)
    status, _, err = _cli(capsys, "train", tmp_path / "set", "--quiet", "--labels", "hard", "--epochs", "1",
                          "--checkpoints", tmp_path / "students")
    assert status == 143, err
    assert err.splitlines() == [f"infer-fast train: interrupted (SIGTERM); progress is saved in "
                                f"{tmp_path / 'students' / 'seed0.pt'}: run the same command with --resume to continue"]


# ---------------------------------------------------------------------------------------
# DataLoader workers (a streamed image folder)
# ---------------------------------------------------------------------------------------
FOLDER_SCRIPT = """
    import gc, os, signal, sys
    import torch
    from infer_fast import interrupts
    from infer_fast.data import FolderImageSet, get_spec, sets
    import torch.utils.data._utils.signal_handling as handling

    where = sys.argv[1]
    spec = get_spec("fashion-mnist-mini")
    split = FolderImageSet(spec, [(f"image-{i}", i % 10) for i in range(64)])
    parent = os.getpid()

    def decode(path, size, channels, crop=1.0):
        if where == "batch" and os.path.basename(path) == "image-0":  # Ctrl-C to the group while the parent waits for it
            os.killpg(os.getpgid(0), signal.SIGINT)
        ignored = all(signal.getsignal(s) is signal.SIG_IGN for s in interrupts.SIGNALS)
        return torch.full((channels, size, size), int(ignored) + 10 * int(os.getpid() != parent), dtype=torch.uint8)

    sets.decode_image = decode
    if where == "start":  # Ctrl-C while the iterator starts its workers
        real = handling._set_SIGCHLD_handler
        def start_then_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            real()
        handling._set_SIGCHLD_handler = start_then_interrupt
    with interrupts.handlers_installed():
        try:
            values = [int(v) for images, _ in split.batches(8, num_workers=2) for v in images.unique()]
            print("values", sorted(set(values)))
        except KeyboardInterrupt as exc:
            print("interrupted", getattr(exc, "signum", None))
        gc.collect()
"""


def test_dataloader_workers_ignore_the_stop_signals(tmp_path):
    """Every image is decoded in a worker process (10 + ...) that ignores SIGINT, SIGTERM and
    SIGHUP (1): the main process decides, and shuts its workers down."""
    result = run_python(FOLDER_SCRIPT, "none", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "values [11]", result.stdout + result.stderr


@pytest.mark.parametrize("where", ["start", "batch"])
def test_ctrl_c_in_a_streamed_epoch_stops_without_tracebacks(tmp_path, where):
    """Ctrl-C while the DataLoader iterator starts its workers (before: a half-built iterator,
    whose clean-up printed AttributeError ... _workers_status) or while a batch comes from a
    worker with the whole process group signalled (before: BrokenPipeError tracebacks from
    multiprocessing's resource_sharer): the stop is acted on between batches, stderr stays
    empty."""
    result = run_python(FOLDER_SCRIPT, where, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"interrupted {int(signal.SIGINT)}" and result.stderr == "", result.stderr


# ---------------------------------------------------------------------------------------
# stdout that cannot be written
# ---------------------------------------------------------------------------------------
def _closed_pipe():
    read, write = os.pipe()
    os.close(read)
    return write


@pytest.mark.parametrize("stdout,reason", [("pipe", "Broken pipe"), ("/dev/full", "No space left on device")])
def test_a_listing_to_a_closed_pipe_or_a_full_disk_says_it_once(tmp_path, stdout, reason):
    """`infer-fast models | head -1`: one line on stderr, status 0, no "Exception ignored" at exit."""
    target = _closed_pipe() if stdout == "pipe" else open(stdout, "w")
    try:
        result = run_cli("models", cwd=tmp_path, capture_output=False, stdout=target, stderr=subprocess.PIPE)
    finally:
        os.close(target) if stdout == "pipe" else target.close()
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"infer-fast models: stdout: {reason}: further output dropped"]


def test_teacher_training_goes_on_when_stdout_breaks(work):
    """`teacher ... | head -1` (unbuffered: the first epoch's line fails at once): before, the
    training stopped after epoch 1 with an unfinished checkpoint; now it trains every epoch."""
    from infer_fast.teacher import load_teacher

    args = ["teacher", "--dataset", "fashion-mnist-mini", "--model", "convnet-w8-d2", "--epochs", "2",
            "--batch-size", "256", "--lr", "0.05", "--out", "piped.pt"]
    pipe = _closed_pipe()
    try:
        result = run_cli(*args, cwd=work, env={"PYTHONUNBUFFERED": "1", "INFER_FAST_PROGRESS": "lines"},
                         capture_output=False, stdout=pipe, stderr=subprocess.PIPE)
    finally:
        os.close(pipe)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("stdout: Broken pipe: further output dropped") == 1
    assert "Exception ignored" not in result.stderr and "error" not in result.stderr
    assert load_teacher(str(work / "piped.pt"))[1]["epochs_done"] == 2


# ---------------------------------------------------------------------------------------
# out of memory, a deleted working directory
# ---------------------------------------------------------------------------------------
def _out_of_memory(*args, **kwargs):
    raise MemoryError()


def test_out_of_memory_is_one_line_naming_what_lowers_it(tmp_path, capsys, monkeypatch):
    """MemoryError (as under `ulimit -v`): the user's machine, not a bug (status 2, not
    "internal error ... please report it"), with the options that lower it where known."""
    monkeypatch.setattr("infer_fast.teacher.train_teacher", _out_of_memory)
    status, _, err = _cli(capsys, "teacher", "--dataset", "fashion-mnist-mini", "--out", tmp_path / "t.pt")
    assert status == 2 and err.splitlines() == [
        "infer-fast teacher: error: out of memory (MemoryError): lower --batch-size or --eval-batch-size, or free memory"]
    monkeypatch.setattr("infer_fast.models.model_table", _out_of_memory)
    status, _, err = _cli(capsys, "models")
    assert status == 2 and err.splitlines() == [
        "infer-fast models: error: out of memory (MemoryError): free memory, or run it on a machine with more"]


def test_a_deleted_working_directory_is_one_line(tmp_path):
    """Started in a deleted directory: MKL, as torch loads, ended the process ("Intel oneMKL
    FATAL ERROR: Cannot load libtorch_cpu.so", status 2); now the CLI says why (status 2).
    (Needs infer_fast/__init__.py to import torch inside mkl_vml.loading_torch().)"""
    gone = tmp_path / "gone"
    gone.mkdir()
    result = run_python("""
        import os, sys
        os.chdir(sys.argv[1])
        os.rmdir(sys.argv[1])
        os.execv(sys.executable, [sys.executable, "-m", "infer_fast.cli", "datasets"])
    """, gone)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == ["infer-fast: error: the current directory no longer exists (deleted?): cd to "
                                          "an existing directory and run the command again"]


def test_an_error_in_a_dataloader_worker_is_its_own_one_line(capsys, monkeypatch):
    """A worker's error (a file that does not decode) reaches the main process as torch's
    re-raise, the worker's traceback as its message: the CLI prints the worker's line alone."""
    from infer_fast import cli

    worker_error = ValueError("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                              "call last):\n  File \"x.py\", line 1, in f\n    raise ValueError(...)\nValueError: "
                              "cannot decode image t/0.jpg: image file is truncated")

    def fail(args):
        raise worker_error

    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser(), fail))
    assert cli.main(["datasets"]) == 2
    assert capsys.readouterr().err == "infer-fast datasets: error: cannot decode image t/0.jpg: image file is truncated\n"


def _with_func(parser, func):
    parser.set_defaults(func=func)
    for action in parser._subparsers._group_actions:
        for sub in action.choices.values():
            sub.set_defaults(func=func)
    return parser
