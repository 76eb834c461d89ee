"""Several commands, or several tries, in one process (a notebook, threads): TRITON_INTERPRET
set after the first Triton use, a plug-in fixed or named after the first load, cli.main from two
threads at once, and the folders a refused distill made for its mistyped --out."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import infer_fast
from infer_fast import cli
from infer_fast.output_lock import output_lock

# the infer_fast under test, for the fresh interpreters below (process-wide state starts fresh there)
PACKAGE_ROOT = Path(infer_fast.__file__).resolve().parents[1]
# what the fresh interpreters must not inherit from the test session (conftest sets TRITON_INTERPRET)
OWN_VARIABLES = ("TRITON_INTERPRET", "INFER_FAST_PLUGINS", "INFER_FAST_BACKEND")


def _fresh_python(code: str, *path: Path, **variables: str) -> subprocess.CompletedProcess:
    """``code`` run by a fresh Python with infer_fast (and ``path``) importable and the environment
    ``variables``; asserts it ends well."""
    env = {k: v for k, v in os.environ.items() if k not in OWN_VARIABLES}
    env.update(variables, PYTHONPATH=os.pathsep.join(map(str, (PACKAGE_ROOT, *path))))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


# ---- 1: TRITON_INTERPRET set after the first Triton use ------------------------------------------

TRITON_BN_CALL = """
import os, torch
from infer_fast.ops import bn_stat_loss
from infer_fast.ops.backends import BackendUnavailableError
x, mean, var = torch.randn(4, 3, 2, 2), torch.zeros(3), torch.ones(3)
def bn_on_triton():
    try:
        bn_stat_loss(x, mean, var, backend="triton")
        return "ran"
    except BackendUnavailableError as exc:
        return str(exc)
"""


def test_triton_interpret_set_after_a_refusal_is_refused_with_a_restart_line():
    pytest.importorskip("triton")
    done = _fresh_python(TRITON_BN_CALL + """
print(bn_on_triton())
os.environ["TRITON_INTERPRET"] = "1"
print(bn_on_triton())
""")
    first, second = done.stdout.splitlines()
    assert first.endswith("needs TRITON_INTERPRET=1 set before the first Triton use in the process"), first
    assert second.endswith("Triton's kernels were loaded without TRITON_INTERPRET=1 in this process (set it before "
                           "the first Triton use): restart Python with it set"), second


def test_triton_interpret_set_after_info_is_said_by_info_and_refused_before_work(tmp_path):
    pytest.importorskip("triton")
    done = _fresh_python(f"""
import contextlib, io, os
from infer_fast import cli
with contextlib.redirect_stdout(io.StringIO()):
    cli.main(["info"])
os.environ["TRITON_INTERPRET"] = "1"
with contextlib.redirect_stdout(io.StringIO()) as info:
    cli.main(["info"])
print(info.getvalue())
os.environ["INFER_FAST_BACKEND"] = "triton"
print("rc", cli.main(["distill", "--dataset", "fashion-mnist-mini", "--teachers", "{tmp_path}/t.pt",
                      "--ipc", "2", "--iterations", "2", "--out", "{tmp_path}/set"]))
""", CUDA_VISIBLE_DEVICES="")  # (the forced backend is checked on the default device: the CPU here)
    restart = "Triton's kernels were loaded without TRITON_INTERPRET=1 in this process"
    assert "TRITON_INTERPRET off" in done.stdout  # (the kernels' mode, not the variable's value now)
    assert f"triton  cpu   {restart}" in done.stdout
    assert done.stdout.splitlines()[-1] == "rc 2"
    assert done.stderr.startswith("infer-fast distill: error: INFER_FAST_BACKEND='triton' is unavailable: " + restart)
    assert "active drivers" not in done.stderr


def test_triton_interpret_set_after_import_but_before_the_first_triton_use_runs():
    pytest.importorskip("triton")
    done = _fresh_python(TRITON_BN_CALL + """
os.environ["TRITON_INTERPRET"] = "1"
print(bn_on_triton())
""")
    assert done.stdout.strip() == "ran"


# ---- 2: plug-ins fixed, or named, after the first load ---------------------------------------------

PLUGIN_DATASET = """
import dataclasses
from infer_fast.data.registry import get_dataset, register_dataset
mini = get_dataset("fashion-mnist-mini")
register_dataset(dataclasses.replace(mini, name="NAME", spec=dataclasses.replace(mini.spec, name="NAME"), aliases=()))
"""


def _write_plugin(folder: Path, module: str, dataset: str) -> None:
    (folder / f"{module}.py").write_text(PLUGIN_DATASET.replace("NAME", dataset))


def test_a_failed_plugin_is_imported_again_at_the_next_lookup_and_loads_once_fixed(tmp_path):
    """A plug-in that failed is imported again at the next lookup: said again while broken, and
    once fixed (a notebook, no restart) it loads, what it registered before failing registered
    again as the same definition (replaced, not refused as "already registered"); a value
    that no longer names it loads the others."""
    (tmp_path / "myplug.py").write_text(PLUGIN_DATASET.replace("NAME", "half-set") + "raise RuntimeError('typo in my plug-in')\n")
    _write_plugin(tmp_path, "goodplug", "good-set")
    done = _fresh_python(f"""
import importlib, os
from infer_fast import cli
os.environ["INFER_FAST_PLUGINS"] = "myplug"
print("rc", cli.main(["datasets"]))
print("rc", cli.main(["datasets"]))
open("{tmp_path}/myplug.py", "w").write({PLUGIN_DATASET.replace("NAME", "half-set")!r})
importlib.invalidate_caches()
os.environ["INFER_FAST_PLUGINS"] = "myplug,goodplug"
print("rc", cli.main(["datasets"]))  # (fixed: imported again, loads)
os.environ["INFER_FAST_PLUGINS"] = "goodplug"
print("rc", cli.main(["datasets"]))
del os.environ["INFER_FAST_PLUGINS"]
print("rc", cli.main(["datasets"]))
""", tmp_path)
    codes = [line for line in done.stdout.splitlines() if line.startswith("rc ")]
    assert codes == ["rc 2", "rc 2", "rc 0", "rc 0", "rc 0"], done.stdout + done.stderr
    errors = done.stderr.splitlines()
    failed = "infer-fast: error: plug-in module 'myplug' (INFER_FAST_PLUGINS) failed to load: RuntimeError: typo in my plug-in"
    assert errors == [failed, failed], errors
    assert done.stdout.count("good-set") == 3 and done.stdout.count("half-set") == 3, done.stdout


def test_modules_named_after_the_first_load_are_loaded(tmp_path):
    _write_plugin(tmp_path, "lateplug", "late-set")
    _write_plugin(tmp_path, "laterplug", "later-set")
    done = _fresh_python("""
import os
from infer_fast import cli
cli.main(["datasets"])
os.environ["INFER_FAST_PLUGINS"] = "lateplug"
print("rc", cli.main(["datasets"]))
from infer_fast.data import registry
os.environ["INFER_FAST_PLUGINS"] = "lateplug,laterplug"
print(registry.canonical_name("later-set"))
""", tmp_path)
    assert "late-set" in done.stdout.split("rc 0")[0]
    assert done.stdout.splitlines()[-1] == "later-set"


# ---- 3: cli.main from two threads at once -----------------------------------------------------------

def test_threads_starting_commands_at_once_each_get_the_whole_parser(tmp_path):
    done = _fresh_python(f"""
import threading
from infer_fast import cli
import infer_fast.distill, infer_fast.evaluate  # (the commands' modules: the registry is what the threads race for)
codes = {{}}
def distill(i):
    try:
        codes[i] = cli.main(["distill", "--dataset", "fashion-mnist-mini", "--ipc", "2", "--iterations", "2",
                             "--out", "{tmp_path}/out" + str(i), "--teachers", "{tmp_path}/missing.pt"])
    except SystemExit as exc:
        codes[i] = "SystemExit(%s)" % exc.code
threads = [threading.Thread(target=distill, args=(i,)) for i in range(3)]
[t.start() for t in threads]; [t.join() for t in threads]
print(sorted(codes.values()))
""")
    assert done.stdout.strip() == "[2, 2, 2]", done.stdout + done.stderr
    assert "unrecognized arguments" not in done.stderr
    assert done.stderr.count("teacher checkpoint") == 3


def test_a_thread_looking_up_while_another_loads_the_plugins_waits_for_them(tmp_path):
    (tmp_path / "slowplug.py").write_text("import time\ntime.sleep(0.5)\n" + PLUGIN_DATASET.replace("NAME", "slow-set"))
    done = _fresh_python("""
import os, threading, time
os.environ["INFER_FAST_PLUGINS"] = "slowplug"
from infer_fast.data.registry import list_datasets
from infer_fast.plugins import load_plugins
loading = threading.Thread(target=load_plugins)
loading.start()
time.sleep(0.2)  # (while slowplug is being imported)
load_plugins()
print("slow-set" in list_datasets())
loading.join()
""", tmp_path)
    assert done.stdout.strip() == "True"


def test_guarded_output_of_interleaved_commands_puts_the_streams_back():
    """Commands in threads end in any order: a guard is left to the command that installed it,
    and when the last one ends the streams are the ones the first found."""
    before = sys.stdout, sys.stderr
    first, second, third = (cli._guarded_output(who) for who in ("a", "b", "c"))
    first_out = first.__enter__()
    second_out = second.__enter__()
    third_out = third.__enter__()
    assert sys.stdout is third_out
    second.__exit__(None, None, None)
    assert sys.stdout is third_out  # (not the guard the ended command had replaced)
    third.__exit__(None, None, None)
    assert sys.stdout is second_out  # (what it replaced: the ended command's guard, until the last ends)
    first.__exit__(None, None, None)
    assert (sys.stdout, sys.stderr) == before
    assert first_out is not sys.stdout


def test_guarded_output_ended_first_by_the_outer_command_keeps_the_inner_ones_guard():
    before = sys.stdout, sys.stderr
    outer, inner = cli._guarded_output("outer"), cli._guarded_output("inner")
    outer.__enter__()
    inner_out = inner.__enter__()
    outer.__exit__(None, None, None)
    assert sys.stdout is inner_out and isinstance(sys.stderr, cli._GuardedStream)
    inner.__exit__(None, None, None)
    assert (sys.stdout, sys.stderr) == before


# ---- 4: the folders a refused distill made for its --out ---------------------------------------------

def test_a_refused_distill_leaves_no_folders_of_its_mistyped_out(tmp_path, capsys):
    rc = cli.main(["distill", "--dataset", "fashion-mnist-mini", "--ipc", "2", "--iterations", "2",
                   "--out", str(tmp_path / "typo" / "a" / "b" / "set"), "--teachers", str(tmp_path / "missing.pt")])
    assert rc == 2
    assert "teacher checkpoint" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_output_lock_removes_only_the_empty_folders_it_made(tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    with output_lock(existing / "made" / "empty" / "out"):
        (existing / "made" / "kept.txt").write_text("the user's")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "existing", "existing/made", "existing/made/kept.txt"]
    with output_lock(tmp_path / "new" / "out"):
        (tmp_path / "new" / "out").write_text("written")
    assert (tmp_path / "new" / "out").read_text() == "written"
