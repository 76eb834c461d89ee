"""Stopping on a signal: SIGINT (Ctrl-C), SIGTERM (what SLURM, torchrun and `kill` send, SLURM
then SIGKILLs after KillWait, 30 s by default), SIGHUP (a closed terminal or ssh session) and
SIGUSR1/SIGUSR2 (SLURM's ``--signal=USR1@120``: a warning some time before the time limit, which
Python's default would answer by dying on the spot).

Without handlers SIGTERM and SIGHUP kill the process on the spot: no message, no cleanup, and
a recovery batch loses every iteration since its last checkpoint. With :func:`handlers_installed`
(cli.main) a signal raises :class:`Interrupted`, a KeyboardInterrupt, so every cleanup path that
Ctrl-C already takes (locks, temporary files, ``except BaseException``) runs for all three.

Code that can stop cleanly declares it with :func:`stop_at_safe_points`: inside, the first signal
only records itself in :data:`STOP` and the code checks ``STOP.signum`` at its safe points (a
plain attribute read, no host sync: the recovery loop does so once per iteration), saves what it
has and raises :func:`requested_stop`; leaving the region with the stop still pending raises it
there. A second Ctrl-C while a stop is pending raises at once (a user who presses it twice wants
out now), and so does any signal repeated REPEAT_GRACE_S or more after the first; another signal
within that time is the same stop told twice (SLURM signals every process of a job, and torchrun
forwards its own SIGTERM to its workers a millisecond later): raising on it would lose the save
under way. Processes that must stop together vote at each safe point (:func:`agree_on_stop`).

Called from Python (a script, a notebook's "interrupt kernel": SIGINT) there is no cli.main
to install the handlers: the calls that checkpoint (a recovery's batches, RDED's classes)
install them for their own duration (:func:`checkpointed_call`), so a stop saves the work under
way there too, and the Interrupted says where it is saved and that resume=True continues; a
call that continues by being made again (run_pipeline, run_demo) says so instead
(:func:`continued_by`: the outermost caller's words win)."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Callable, Dict, Iterator, Optional

# the signals that stop a command (SIGHUP, SIGUSR1 and SIGUSR2 do not exist on Windows)
SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, *(getattr(signal, name, None) for name in
                                                             ("SIGHUP", "SIGUSR1", "SIGUSR2"))) if s is not None)
# a signal repeated within this many seconds of the stop it would hurry is the same stop (above)
REPEAT_GRACE_S = 2.0


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived (``signum``): a KeyboardInterrupt, so it takes Ctrl-C's paths."""

    def __init__(self, signum: int):
        super().__init__(int(signum))  # (args: what a pickled copy is made again from)
        self.signum = int(signum)
        # for a Python caller (checkpointed_call, continued_by): where the progress is saved, how to continue
        self.how_to_continue = ""

    def __str__(self) -> str:
        return signal_name(self.signum) + (f": {self.how_to_continue}" if self.how_to_continue else "")


def signal_name(signum: int) -> str:
    """"SIGTERM" for 15, and so on."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_status(exc: KeyboardInterrupt) -> int:
    """128 + the signal's number, as a shell reports a process the signal ended (130 for a
    plain KeyboardInterrupt: Ctrl-C)."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


class _Stop:
    """The stop requested inside a safe-point region: ``signum`` (None: none), and how many
    regions are open (``depth``)."""

    def __init__(self):
        self.signum: Optional[int] = None
        self.at = 0.0  # (time.monotonic() when ``signum`` arrived)
        self.depth = 0


STOP = _Stop()


def _handler(signum, frame) -> None:
    """Inside a safe-point region the first signal is recorded for the region's code to act on
    between two steps, and a repeat of the stop within REPEAT_GRACE_S (but Ctrl-C) is let be;
    otherwise (outside a region, a second Ctrl-C, a signal repeated later) it raises where the
    program is."""
    if STOP.depth > 0:
        if STOP.signum is None:
            STOP.signum, STOP.at = signum, time.monotonic()
            return
        if signum != signal.SIGINT and time.monotonic() - STOP.at < REPEAT_GRACE_S:
            return
    STOP.signum = None
    raise Interrupted(signum)


@contextlib.contextmanager
def handlers_installed() -> Iterator[None]:
    """Our handler for SIGNALS while the block runs (the previous ones restored after). A
    signal ignored when we start stays ignored: ``nohup`` ignores SIGHUP, a shell's
    background job SIGINT, and they meant it. Only the main thread can set handlers: from
    another one, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        with _handler_replacing(lambda signum, handler: handler is not signal.SIG_IGN):
            yield
    finally:
        STOP.signum = None


@contextlib.contextmanager
def checkpointed_call(where: Callable[[], Optional[str]], again: str = "run it again with resume=True") -> Iterator[None]:
    """The duration of a library call that checkpoints at safe points (a recovery, RDED), made
    from Python: our handler for each of SIGNALS still at Python's default, which would lose
    the work since the last checkpoint (Ctrl-C, a notebook's "interrupt kernel", raising in
    the middle of an iteration; SIGTERM, SIGHUP, SIGUSR1/2 ending the process on the spot), the
    previous ones restored after. A handler already set (cli.main's, an outer call's, the
    caller's own) and an ignored signal are left as they are. An Interrupted leaving the call
    says where its progress is (``where()``: the checkpoint on disk, None: none) and how to go
    on from it (``again``: the call made again with resume=True, or what the call takes
    instead); from a thread other than the main one, nothing changes."""
    with _handler_replacing(lambda signum, handler: handler is _python_default(signum)):
        try:
            yield
        except Interrupted as exc:
            saved = where()
            if saved is not None and not exc.how_to_continue:
                exc.how_to_continue = f"progress is saved in {saved}: {again} to continue"
            raise


def file_where(path: Optional[str]) -> Callable[[], Optional[str]]:
    """A checkpointed_call's ``where`` for a checkpoint file: ``path`` once it is written (None:
    the call keeps none)."""
    return lambda: path if path is not None and os.path.exists(path) else None


@contextlib.contextmanager
def continued_by(how: str) -> Iterator[None]:
    """The duration of a library call that continues where it stopped when made again (a run
    directory's results, its sets' checkpoints: run_pipeline, run_demo): an Interrupted leaving
    it says ``how``, over what an inner call said (a recovery's "resume=True", which this call
    does not take); so does a plain Ctrl-C (Python's KeyboardInterrupt, raised where no
    handler of ours was installed: a step that keeps no checkpoint, the plots), made an
    Interrupted of SIGINT."""
    try:
        yield
    except Interrupted as exc:
        exc.how_to_continue = how
        raise
    except KeyboardInterrupt as exc:
        stop = Interrupted(signal.SIGINT)
        stop.how_to_continue = how
        raise stop.with_traceback(exc.__traceback__) from None


def _python_default(signum: int) -> object:
    """The handler Python starts with: KeyboardInterrupt for SIGINT, the system's default (the
    process ends) for the others."""
    return signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL


@contextlib.contextmanager
def _handler_replacing(replace: Callable[[int, object], bool]) -> Iterator[None]:
    """Our handler for each of SIGNALS whose handler ``replace(signum, handler)`` accepts while
    the block runs, exactly the previous ones restored after. Only the main thread can set
    handlers: from another one, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: Dict[int, object] = {}
    try:
        for signum in SIGNALS:
            if replace(signum, signal.getsignal(signum)):
                previous[signum] = signal.signal(signum, _handler)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def stop_at_safe_points() -> Iterator[None]:
    """A region whose code checks ``STOP.signum`` at its safe points (see the module's
    docstring). A stop still pending when the outermost region ends raises there, whatever
    ended it (the stop was asked for: an error on the way out is its context, not a reason to
    go on). Signal handlers run in the main thread: elsewhere the region is a plain block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    STOP.depth += 1
    try:
        yield
    finally:
        STOP.depth -= 1
        if STOP.depth == 0 and STOP.signum is not None:
            raise requested_stop()


def agree_on_stop(vote: Callable[[Optional[int]], Optional[int]]) -> Optional[int]:
    """For processes that must stop together (torchrun ranks sharing every batch: one that left
    alone would break the others' next collective, before rank 0 saved): the stop that ``vote``
    (this process's pending signal -> the same answer on every process) finds on any of them,
    made pending here too, so every one stops at this safe point. Returns it (None: go on); a
    signal that lands during the vote stays pending for the next one."""
    agreed = vote(STOP.signum)
    if agreed is not None and STOP.signum is None:
        STOP.signum = agreed
    return agreed


def requested_stop() -> Interrupted:
    """The Interrupted of the pending stop, which it clears (for the caller to raise)."""
    signum, STOP.signum = STOP.signum, None
    return Interrupted(signal.SIGINT if signum is None else signum)


def ignore_in_worker(worker_id: int = 0) -> None:
    """A DataLoader's worker_init_fn: the worker ignores the stop signals. Ctrl-C reaches the
    whole process group and SLURM signals every process of the job: a worker that died of it
    would make the main process fail on the lost worker (or print a worker's traceback) instead
    of stopping cleanly; the main process decides and shuts its workers down."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


PR_SET_PDEATHSIG = 1  # (linux/prctl.h)


def stop_when_parent_dies() -> bool:
    """Ask Linux to send this process SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG), the
    signal that stops a command saving its work. For a torchrun rank: its agent, killed itself
    (SIGKILL, the out-of-memory killer, or a signal it does not forward: SIGUSR1 unless
    torchrun's --signals-to-handle names it), left its ranks running on alone, holding their
    GPUs and the output's lock, until their work ended. True where it took effect (Linux);
    elsewhere False and nothing changes. (A parent that died before this call, or a parent
    thread other than the one that started this process ending, are Linux's rules: torchrun
    starts its ranks from its main thread.)"""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
    except (OSError, AttributeError):  # (no C library to load, or one without prctl)
        return False
