"""Progress bars that read well both on a terminal and in a log.

Every progress bar of the package is made by :func:`progress_bar`. On a terminal it is tqdm's
bar, redrawn in place with carriage returns. When the stream it writes to (stderr unless
``file=`` says otherwise) is not a terminal, e.g. ``infer-fast distill ... > log 2>&1``, it is
a :class:`LineProgress`: plain newline-terminated lines, one every ``LINE_INTERVAL_S`` seconds
while the bar runs and one when it ends, never a carriage return. The environment variable
``INFER_FAST_PROGRESS`` (``auto``, ``bar`` or ``lines``) forces either form.

A progress message (what a command is doing: ``epoch 3/10: ...``, ``distilling INFER ipc 10 -> ...``)
goes to stderr too, by :func:`say`: stdout keeps a command's results (``infer-fast teacher ... >
result.txt`` holds the summary line, not the epochs).
"""
import os
import sys

from tqdm import tqdm

PROGRESS_ENV_VAR = "INFER_FAST_PROGRESS"
PROGRESS_MODES = ("auto", "bar", "lines")
# seconds between two lines of a running bar in a log: lines grow with the run's duration, not
# with its number of bars or steps (a teacher of 200 epochs opens 400 bars)
LINE_INTERVAL_S = 10.0
# a phase that is instant on a small dataset and minutes on ImageNet (a folder scan, a listing
# digest) opens its bar with delay=SHORT_PHASE_S: shown only once it has run this long
SHORT_PHASE_S = 2.0


def say(message: str) -> None:
    """Print the progress message ``message`` to stderr, with the bars, flushed (it shows in its
    place among the bars' lines in a log); a command's results stay on stdout."""
    print(message, file=sys.stderr, flush=True)


def progress_mode() -> str:
    """The progress form ``INFER_FAST_PROGRESS`` asks for: 'auto' (the default), 'bar' or
    'lines'; any other value is a ValueError naming the variable."""
    mode = os.environ.get(PROGRESS_ENV_VAR, "").strip().lower() or "auto"
    if mode not in PROGRESS_MODES:
        raise ValueError(f"{PROGRESS_ENV_VAR}={os.environ[PROGRESS_ENV_VAR]!r}: expected one of "
                         f"{', '.join(PROGRESS_MODES)}")
    return mode


def is_terminal(stream) -> bool:
    """Whether ``stream`` is an open interactive terminal."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """A progress bar over ``iterable`` taking tqdm's arguments (desc, total, unit, disable,
    leave, initial, postfix...): tqdm's own bar on a terminal, a :class:`LineProgress` in a log
    (see the module's doc)."""
    mode = progress_mode()
    if mode == "auto":
        mode = "bar" if is_terminal(kwargs.get("file") or sys.stderr) else "lines"
    return tqdm(iterable, **kwargs) if mode == "bar" else LineProgress(iterable, **kwargs)


class _Discard:
    """A stream that drops what tqdm's own display writes (its '\\r' redraws)."""

    encoding = "utf-8"

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class LineProgress(tqdm):
    """A tqdm bar for logs: writes ``desc: 40% 80/200 [00:05<00:07, 16.0it/s, loss=0.5]`` lines,
    newline-terminated, to its stream (stderr by default): one every ``interval`` seconds while
    it runs, and one when it closes, with the mean rate since its start. A bar opened while
    another one runs (an epoch's steps inside the student's epochs) writes its closing line only
    if it ran long enough to write a line before: short inner passes stay out of the log. A bar
    with tqdm's ``delay`` that closes sooner writes nothing, as tqdm's own bar shows nothing."""

    def __init__(self, iterable=None, *, interval: float = LINE_INTERVAL_S, **kwargs):
        self.out = kwargs.get("file") or sys.stderr
        if kwargs.get("disable", False) is None:  # tqdm's "off when not a terminal", on our stream
            kwargs["disable"] = not is_terminal(self.out)
        self.interval = interval
        self.last_line_t = None  # when the last line was written (None: none yet)
        self.last_line_n = None
        self.closing = False
        super().__init__(iterable, **{**kwargs, "file": _Discard()})
        if not self.disable:
            self.nested = self.pos != 0  # tqdm's row: another bar was open when this one opened

    def display(self, msg=None, pos=None):
        """Called by tqdm on each refresh (updates, postfix changes): a line when one is due."""
        if self.closing:
            return True
        now = self._time()
        # (tqdm's first refresh comes before it sets start_t)
        since = now - (self.last_line_t if self.last_line_t is not None else getattr(self, "start_t", now))
        if since >= self.interval and self.n != self.last_line_n:
            self.write_line(now)
        return True

    def close(self):
        if getattr(self, "disable", True):  # (also when tqdm refused its arguments)
            return
        self.closing = True  # tqdm's close clears or redraws its row: nothing to do in a log
        super().close()
        now = self._time()
        too_short = self.last_line_t is None and now - self.start_t < self.delay
        if (not self.nested or self.last_line_t is not None) and self.n != self.last_line_n and not too_short:
            self.write_line(now)

    def write_line(self, now: float) -> None:
        meter = self.format_dict
        meter.update(ncols=0, rate=None)  # no bar drawing; the mean rate since the start
        self.out.write(self.format_meter(**meter) + "\n")
        self.out.flush()
        self.last_line_t, self.last_line_n = now, self.n
