"""Progress bars: tqdm's bar on a terminal, plain lines in a log (infer_fast.progress)."""
import io

import pytest
from tqdm import std as tqdm_std
from tqdm import tqdm

from infer_fast.progress import LINE_INTERVAL_S, PROGRESS_ENV_VAR, LineProgress, progress_bar


class FakeClock:
    """tqdm's clock (tqdm.std.time), moved by hand: lines depend on elapsed time only."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(tqdm_std, "time", fake)  # read by every tqdm made from here on
    return fake


@pytest.fixture
def auto_form(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV_VAR, raising=False)


# mininterval=0, miniters=1: tqdm refreshes on every step (it otherwise skips refreshes by its
# own clock and lets a monitor thread refresh bars on the real one)
EVERY_STEP = dict(mininterval=0, miniters=1)


def test_a_line_every_interval_and_at_the_end_with_the_postfix(clock):
    log = io.StringIO()
    bar = LineProgress(range(210), desc="recover", file=log, **EVERY_STEP)
    for i in bar:
        clock.now += 0.5  # 105 s in all
        bar.set_postfix(loss=f"{i / 100:.2f}")
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == 105 // LINE_INTERVAL_S + 1  # one per 10 s, then the final one
    assert all(line.startswith("recover: ") and "loss=" in line for line in lines)
    assert lines[0].startswith("recover:   9% 19/210 [00:10<")
    # the final line: the count reached, the mean rate since the start, the last postfix
    assert lines[-1] == "recover: 100% 210/210 [01:45<00:00,  2.00it/s, loss=2.09]"


def test_a_bar_without_total_and_a_disabled_bar(clock):
    log = io.StringIO()
    for _ in LineProgress(iter(range(30)), desc="stream", unit="img", file=log, **EVERY_STEP):
        clock.now += 1.0
    # (the last heartbeat, at 30 s, is the final count: no second line for it)
    assert log.getvalue().splitlines() == [f"stream: {n}img [00:{n},  1.00img/s]" for n in (10, 20, 30)]
    quiet = io.StringIO()
    for _ in LineProgress(range(30), desc="off", file=quiet, disable=True, **EVERY_STEP):
        clock.now += 1.0
    assert quiet.getvalue() == ""


def test_a_nested_bar_writes_only_when_it_runs_long(clock):
    """An inner bar shorter than the interval stays out of the log; a long one writes its
    lines and its end; the outer bar writes its own lines as always."""
    log = io.StringIO()
    outer = LineProgress(total=2, desc="epochs", file=log, leave=False, **EVERY_STEP)
    for name, steps in (("short", 10), ("long", 30)):  # 5 s, then 15 s
        for _ in LineProgress(range(steps), desc=name, file=log, leave=False, **EVERY_STEP):
            clock.now += 0.5
        outer.update(1)
    outer.close()
    lines = log.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["long", "long", "epochs"]
    assert lines[0].startswith("long:  67% 20/30 [00:10<") and lines[1].startswith("long: 100% 30/30 [00:15<")
    assert lines[2].startswith("epochs: 100% 2/2 [00:20<")


def test_a_delayed_bar_writes_nothing_when_it_ends_sooner(clock):
    """delay (a phase that is instant on a small dataset): a bar closed before it is quiet;
    one that ran longer writes its end."""
    lines = {}
    for step in (0.125, 0.5):  # 1.25 s, 5 s in all
        log = io.StringIO()
        for _ in LineProgress(range(10), desc="scan", file=log, delay=2, **EVERY_STEP):
            clock.now += step
        lines[step] = log.getvalue().splitlines()
    assert lines[0.125] == [] and lines[0.5] == ["scan: 100% 10/10 [00:05<00:00,  2.00it/s]"]


def test_the_form_follows_the_stream_unless_the_variable_forces_it(monkeypatch, auto_form):
    log, terminal = io.StringIO(), Terminal()
    assert type(progress_bar(range(3), file=log)) is LineProgress
    bar = progress_bar(range(3), file=terminal)
    assert type(bar) is tqdm
    list(bar)
    assert "\r" in terminal.getvalue()  # tqdm's redraws, as before
    monkeypatch.setenv(PROGRESS_ENV_VAR, "bar")
    assert type(progress_bar(range(3), file=log)) is tqdm
    monkeypatch.setenv(PROGRESS_ENV_VAR, "lines")
    assert type(progress_bar(range(3), file=Terminal())) is LineProgress
    monkeypatch.setenv(PROGRESS_ENV_VAR, "dots")
    with pytest.raises(ValueError, match=f"{PROGRESS_ENV_VAR}='dots': expected one of auto, bar, lines"):
        progress_bar(range(3), file=log)


def test_a_misspelt_variable_is_a_one_line_cli_error(monkeypatch, capsys):
    from infer_fast.cli import main

    monkeypatch.setenv(PROGRESS_ENV_VAR, "line")
    assert main(["datasets"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"infer-fast datasets: error: {PROGRESS_ENV_VAR}='line': expected one of auto, bar, lines\n"
