"""The CLI where its streams or environment are unusual: a closed stdout or stderr, a terminal
that cannot show "±", a bad torchrun variable, the current directory deleted under a run."""
import os
import subprocess
import sys
import textwrap

import pytest

from infer_fast import cli

REPO = os.path.join(os.path.dirname(__file__), "..")


def _shell(command: str, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": REPO, **env}
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=environment, timeout=120)


@pytest.mark.parametrize("closed", [">&-", "2>&-"])
def test_a_closed_stream_drops_its_output_and_the_command_succeeds(closed):
    """Python makes a closed descriptor's stream None: wrapping None failed at the first write
    ("internal error: AttributeError", status 120)."""
    done = _shell(f"{sys.executable} -m infer_fast.cli datasets {closed}")
    assert done.returncode == 0, done.stderr
    assert "AttributeError" not in done.stderr + done.stdout


def test_output_a_terminal_cannot_encode_is_replaced_not_fatal(capsys):
    class Ascii:
        encoding = "ascii"

        def __init__(self):
            self.written = []

        def write(self, text):
            text.encode(self.encoding)  # (a UnicodeEncodeError as a real stream of this encoding raises)
            self.written.append(text)
            return len(text)

        def flush(self):  # (the guard flushes each line)
            pass

    stream = Ascii()
    guard = cli._GuardedStream(stream, "stdout", "infer-fast run")
    assert guard.write("73.6 ± 0.2 – ok\n") == len("73.6 ? 0.2 ? ok\n")
    assert stream.written == ["73.6 ? 0.2 ? ok\n"] and not guard.failed


@pytest.mark.parametrize("variable, value", [("WORLD_SIZE", "abc"), ("WORLD_SIZE", "0")])
def test_a_bad_torchrun_variable_is_one_line(variable, value):
    done = _shell(f"{sys.executable} -m infer_fast.cli datasets", **{variable: value})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"infer-fast: error: {variable}='{value}' is not a positive integer: torchrun sets it; unset it to run one "
        "process"]


def test_an_error_naming_no_file_after_the_directory_was_deleted_says_so(tmp_path, monkeypatch, capsys):
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert cli._failed("distill", FileNotFoundError(2, "No such file or directory"), ()) == 2
    assert capsys.readouterr().err == ("infer-fast distill: error: the current directory no longer exists (deleted?): "
                                       "cd to an existing directory and run the command again\n")


def test_each_line_reaches_a_log_file_when_printed_in_order_with_stderr(tmp_path):
    """stdout to a file is block-buffered by Python: a batch job's epoch lines came after its
    "interrupted" line on stderr, or never (killed). The guard flushes each line as it ends."""
    log = tmp_path / "job.log"
    code = textwrap.dedent("""
        import os, sys
        from infer_fast.cli import _guarded_output
        with _guarded_output("infer-fast teacher"):
            print("epoch 1/2: test accuracy 0.5")
            sys.stderr.write("infer-fast teacher: interrupted (SIGTERM)\\n")
            os._exit(143)  # (killed: no flush at exit)
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT, env=env, timeout=120)
    assert proc.returncode == 143
    assert log.read_text().splitlines() == ["epoch 1/2: test accuracy 0.5", "infer-fast teacher: interrupted (SIGTERM)"]
