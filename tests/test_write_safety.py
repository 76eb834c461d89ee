"""Writes that a kill, a long name or a symbolic link cannot turn into lost work: an overwrite
interrupted between its two renames keeps the set; names too long for the file system are
refused before any work; an output that is a symbolic link is refused before any work; an
export holds its output's lock (a killed export's temporary folder goes); a set saved by a run
killed before removing its checkpoint is recognized, the checkpoint removed."""
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from infer_fast import _io
from infer_fast.cli import main
from infer_fast.distill import run as distill_run
from infer_fast.output_lock import OutputInUseError, lock_path, output_lock
from infer_fast.pipeline import RUN_FOLDERS
from infer_fast.storage import export_imagefolder, load_distilled, save_distilled
from infer_fast.storage.distilled_set import OutputExistsError
from infer_fast.teacher import TeacherConfig, train_teacher

DATASET = "fashion-mnist-mini"
TINY_TEACHER = dict(dataset=DATASET, model="convnet-w8-d2", epochs=1, batch_size=256, lr=0.05, device="cpu")
DISTILL = ["distill", "--dataset", DATASET, "--ipc", "2", "--iterations", "3", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = tmp_path_factory.mktemp("write-safety") / "t.pt"
    train_teacher(TeacherConfig(**TINY_TEACHER), str(path), progress=False)
    return path


def cli(capsys, *args):
    """(status, stdout, stderr) of the CLI run in this process."""
    capsys.readouterr()
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def one_line_error(status, err, *fragments):
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def random_set(path):
    from infer_fast.distill import distill_random

    distill_random(DATASET, 2, path, seed=0, progress=False)
    return path


def hidden(directory, name):
    """The hidden siblings (``.<name>.*``) of ``name`` in ``directory``."""
    return sorted(e for e in os.listdir(directory) if e.startswith(f".{name}."))


# ---------------------------------------------------------------------------------------------
# 1. an overwrite (relabel) interrupted between its two renames

def interrupt_after_rename(patched, which):
    """Make os.rename raise KeyboardInterrupt once it has renamed a path for which ``which(src,
    dst)`` holds (an interrupt landing right after that rename)."""
    real = os.rename

    def rename(src, dst, *args, **kwargs):
        real(src, dst, *args, **kwargs)
        if which(os.fspath(src), os.fspath(dst)):
            raise KeyboardInterrupt

    patched.setattr(os, "rename", rename)


def test_ctrl_c_between_the_two_renames_puts_the_previous_set_back(capsys, monkeypatch, tmp_path, teacher):
    """Ctrl-C after the old set was renamed aside, before the new one was renamed in: the old
    set is renamed back before the new one is cleaned up (not: the new one deleted, the old
    one hidden until the next writer deleted it too)."""
    out = random_set(tmp_path / "s")
    with monkeypatch.context() as patched:
        interrupt_after_rename(patched, lambda src, dst: ".s.old-" in dst)
        status, _, err = cli(capsys, "relabel", out, "--teachers", teacher)
    assert status == 130 and "interrupted" in err
    assert load_distilled(out).soft_labels_flat() is None  # the previous set, whole
    assert hidden(tmp_path, "s") == []
    status, _, err = cli(capsys, "relabel", out, "--teachers", teacher)
    assert status == 0, err
    assert load_distilled(out).soft_labels_flat() is not None


KILLED_RELABEL = textwrap.dedent("""
    import os, signal, sys
    real = os.rename
    def rename(src, dst, *args, **kwargs):
        real(src, dst, *args, **kwargs)
        if ".old-" in os.fspath(dst):
            os.kill(os.getpid(), signal.SIGKILL)  # (killed between the swap's two renames)
    os.rename = rename
    from infer_fast.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_a_kill_between_the_two_renames_loses_no_set(capsys, tmp_path, teacher):
    """SIGKILL after the old set was renamed aside: the set is missing, its previous version at
    ``.s.old-*`` and the new one at ``.s.tmp-*``. The next relabel puts the previous one back
    (saying so) instead of deleting both, and relabels it."""
    out = random_set(tmp_path / "s")
    done = subprocess.run([sys.executable, "-c", KILLED_RELABEL, "relabel", str(out), "--teachers", str(teacher)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert not out.exists() and [e.split("-")[0] for e in hidden(tmp_path, "s")] == [".s.lock", ".s.old", ".s.tmp"]
    status, _, err = cli(capsys, "inspect", out)
    one_line_error(status, err, "no such distilled set", "interrupted overwrite left the previous set at",
                   f"the next relabel of {out} puts it back")
    status, stdout, err = cli(capsys, "relabel", out, "--teachers", teacher)
    assert status == 0, err
    assert re.search(rf"{re.escape(str(out))}: put back the set that an interrupted overwrite had left at .*\.s\.old-",
                     stdout)
    assert load_distilled(out).soft_labels_flat() is not None
    assert hidden(tmp_path, "s") == []


def test_a_replaced_set_that_is_not_whole_is_not_put_back(tmp_path):
    """Only a whole set is put back; a replaced set partly deleted (a kill during the removal
    that follows a finished swap, the set then removed by hand) is a leftover like others."""
    out = random_set(tmp_path / "s")
    old = tmp_path / ".s.old-0123456789ab"
    os.rename(out, old)
    (old / "images.safetensors").unlink()
    with output_lock(out, "distilled set"):
        pass
    assert not out.exists() and not old.exists()


def test_an_interrupt_just_after_the_second_rename_keeps_the_new_set(monkeypatch, tmp_path):
    """An interrupt that lands after the new set was renamed in (before the rename call
    returned to the swap): the new set stays, the old one is left for the next writer's sweep."""
    out = random_set(tmp_path / "s")
    ds = load_distilled(out)
    ds.seed = 7
    with monkeypatch.context() as patched:
        interrupt_after_rename(patched, lambda src, dst: ".s.tmp-" in src)
        with pytest.raises(KeyboardInterrupt):
            save_distilled(ds, out, overwrite=True)
    assert load_distilled(out).seed == 7
    with output_lock(out, "distilled set"):
        pass
    assert hidden(tmp_path, "s") == [] and load_distilled(out).seed == 7


def test_a_run_directorys_sets_are_put_back_too(capsys, tmp_path):
    """`infer-fast run` relabels its sets in place the same way, holding the run directory's lock:
    a set in it that an interrupted overwrite left missing is put back; a replaced set beside
    a set that is there gives back the user's files and goes."""
    run = tmp_path / "run"
    missing = random_set(run / "sets" / "random-ipc2")
    old = run / "sets" / ".random-ipc2.old-0123456789ab"
    os.rename(missing, old)
    shutil.copytree(old, run / "sets" / ".random-ipc2.tmp-0123456789ab")
    kept = random_set(run / "sets" / "other")
    (run / "sets" / ".other.old-0123456789ab").mkdir()
    (run / "sets" / ".other.old-0123456789ab" / "notes.txt").write_text("mine")
    capsys.readouterr()
    with output_lock(run, "run directory", inside=True, folders=RUN_FOLDERS):
        pass
    assert f"{missing}: put back the set that an interrupted overwrite had left at {old}" in capsys.readouterr().out
    assert load_distilled(missing) is not None and (kept / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(run / "sets")) == ["other", "random-ipc2"]


# ---------------------------------------------------------------------------------------------
# 2. names too long for the file system, once the suffixes of the names made from them are added

def _name_max(directory):
    return os.pathconf(directory, "PC_NAME_MAX")


def _allowed(directory):
    """The longest name (in bytes) an output in ``directory`` may have."""
    return _name_max(directory) - (len(_io.longest_derived_name("x")) - 1)


def test_the_longest_derived_name_is_the_longest_name_made(tmp_path):
    """longest_derived_name has the shape of the names the writers make (every number at its
    widest), and every other name made from an output's name is shorter."""
    from infer_fast.distill.checkpoints import CheckpointStore
    from infer_fast.distill.run import recovery_checkpoint_path
    from infer_fast.distributed import shard_path

    out = tmp_path / "NAME"
    checkpoint = os.fspath(recovery_checkpoint_path(out))
    share = shard_path(checkpoint, 999998, 999999)
    written = []
    store = CheckpointStore(checkpoint, {}, None, share, writes=True)
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr("infer_fast.distill.checkpoints.save_atomic", lambda obj, path: written.append(path))
        store.write_results(999999, {999999: None})
    results_tmp = os.path.basename(_io.hidden_sibling(written[0], _io.TEMP, "4194304"))
    longest = _io.longest_derived_name("NAME")
    assert re.sub(r"\d+", "N", results_tmp) == re.sub(r"\d+", "N", longest)
    others = [_io.hidden_sibling(out, _io.TEMP), _io.hidden_sibling(out, _io.REPLACED), lock_path(out),
              _io.hidden_sibling(out, _io.TEMP, "4194304"), _io.hidden_sibling(share, _io.TEMP, "4194304"),
              checkpoint + ".results"]
    assert all(len(os.path.basename(os.fspath(name))) < len(longest) for name in others)


def test_check_writable_counts_the_bytes_of_the_longest_derived_name(tmp_path):
    allowed = _allowed(tmp_path)
    for kind in ("file", "directory"):
        _io.check_writable(tmp_path / ("b" * allowed), "--out", kind=kind)
        with pytest.raises(_io.OutputPathError) as refused:
            _io.check_writable(tmp_path / ("b" * (allowed + 1)), "--out", kind=kind)
        assert refused.value.errno == errno.ENAMETOOLONG
        message = str(refused.value)
        assert f"--out '{tmp_path / ('b' * (allowed + 1))}': its name is too long ({allowed + 1} bytes)" in message
        assert f"allows {_name_max(tmp_path)} bytes per name; choose a name of at most {allowed} bytes" in message
    wide = "é" * (allowed // 2 + 1)  # fewer characters than allowed, more bytes
    with pytest.raises(_io.OutputPathError, match=rf"too long \({2 * len(wide)} bytes\)"):
        _io.check_writable(tmp_path / wide, "--out", kind="directory")
    _io.check_writable(tmp_path / ("b" * 300), "run directory", kind="inside")  # (its own name is not extended)
    assert os.listdir(tmp_path) == []


def test_a_distill_whose_name_is_too_long_is_refused_before_any_work(capsys, tmp_path, teacher):
    out = tmp_path / ("b" * 235)  # (a name the file system takes; its recovery's results files' it does not)
    started = time.monotonic()
    status, _, err = cli(capsys, *DISTILL, "--teachers", teacher, "--out", out)
    assert time.monotonic() - started < 5
    one_line_error(status, err, f"output directory '{out}': its name is too long (235 bytes)")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", ["teacher", "evaluate"])
def test_other_outputs_whose_names_are_too_long_are_refused_before_any_work(capsys, tmp_path, teacher, command):
    out = tmp_path / ("b" * 240 + ".json")
    args = {"teacher": ["teacher", "--dataset", DATASET, "--model", "convnet-w8-d1", "--epochs", "1", "--device",
                        "cpu", "--quiet", "--out", out],
            "evaluate": ["evaluate", tmp_path / "missing-set", "--teachers", teacher, "--out", out]}[command]
    status, _, err = cli(capsys, *args)
    one_line_error(status, err, f"'{out}': its name is too long (245 bytes)")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# 3. an output that is a symbolic link

def test_a_distill_to_a_broken_symbolic_link_is_refused_before_any_work(capsys, tmp_path, teacher):
    link = tmp_path / "dl"
    link.symlink_to(tmp_path / "nonexistent")
    status, _, err = cli(capsys, *DISTILL, "--teachers", teacher, "--out", link)
    one_line_error(status, err, f"{link} is a symbolic link (to {tmp_path / 'nonexistent'}, which does not exist)",
                   "remove it or choose another output directory")
    assert sorted(os.listdir(tmp_path)) == ["dl"]  # no recovery checkpoint: refused before the work


def test_a_symbolic_link_is_refused_alike_wherever_it_leads(capsys, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "live").symlink_to(tmp_path / "real")
    (tmp_path / "dead").symlink_to(tmp_path / "nowhere")
    for link, leads in ((tmp_path / "live", ")"), (tmp_path / "dead", ", which does not exist)")):
        status, _, err = cli(capsys, "distill", "--dataset", DATASET, "--method", "random", "--ipc", "2",
                             "--out", link)
        one_line_error(status, err, f"{link} is a symbolic link (to {os.readlink(link)}{leads}")
    ds = load_distilled(random_set(tmp_path / "s"))
    for link in (tmp_path / "live", tmp_path / "dead"):
        for overwrite in (False, True):
            with pytest.raises(OutputExistsError, match="is a symbolic link"):
                save_distilled(ds, link, overwrite=overwrite)
        with pytest.raises(OutputExistsError, match="is a symbolic link"):
            export_imagefolder(tmp_path / "s", link)
    assert os.listdir(tmp_path / "real") == [] and not (tmp_path / "nowhere").exists()
    # import too, before it reads the folder (whose unreadable file would otherwise be named first)
    (tmp_path / "folder").mkdir()
    status, _, err = cli(capsys, "import", tmp_path / "folder", "--dataset", DATASET, "--out", tmp_path / "dead")
    one_line_error(status, err, f"{tmp_path / 'dead'} is a symbolic link (to {tmp_path / 'nowhere'}, which does not exist)")


# ---------------------------------------------------------------------------------------------
# 4. export holds its output's lock

def test_an_export_removes_what_a_killed_export_left(tmp_path):
    source = random_set(tmp_path / "s")
    stale = tmp_path / ".ex1.tmp-0123456789ab"
    (stale / "0").mkdir(parents=True)
    (stale / "0" / "00.png").write_bytes(b"partial")
    other = tmp_path / ".ex2.tmp-0123456789ab"
    other.mkdir()
    count = export_imagefolder(source, tmp_path / "ex1")
    assert count == len(list((tmp_path / "ex1").rglob("*.png")))
    assert not stale.exists() and other.exists() and not lock_path(tmp_path / "ex1").exists()


def test_a_second_export_to_the_same_output_is_refused(capsys, tmp_path):
    source = random_set(tmp_path / "s")
    with output_lock(tmp_path / "ex1", "export directory"):
        with pytest.raises(OutputInUseError, match=f"export directory {tmp_path / 'ex1'} is being written by process"):
            export_imagefolder(source, tmp_path / "ex1")
        status, _, err = cli(capsys, "export", source, tmp_path / "ex1")
    one_line_error(status, err, "is being written by process")
    assert not (tmp_path / "ex1").exists()


# ---------------------------------------------------------------------------------------------
# 5. a run killed after saving its set, before removing its checkpoint

def _leftover_checkpoint(tmp_path):
    return sorted(e for e in os.listdir(tmp_path) if ".recovery.pt" in e)


@pytest.mark.parametrize("resume", [True, False])
def test_a_checkpoint_beside_a_whole_set_is_named_never_removed(capsys, monkeypatch, tmp_path, teacher, resume):
    """A run killed after saving its set leaves its recovery checkpoint (GBs on ImageNet): the
    next distill to that --out names it (it said only "already exists"). It is not removed: an
    interrupted run's checkpoint beside a set copied there since looks the same, and is hours of
    work (a set of another method there: the same refusal, the checkpoint kept)."""
    out = tmp_path / "s"
    with monkeypatch.context() as patched:  # (as if killed between the save and the removal)
        patched.setattr(distill_run, "remove_recovery_checkpoints", lambda checkpoint: None)
        status, _, err = cli(capsys, *DISTILL, "--teachers", teacher, "--out", out)
    assert status == 0, err
    assert _leftover_checkpoint(tmp_path) == ["s.recovery.pt", "s.recovery.pt.results"]
    status, _, err = cli(capsys, *DISTILL, "--teachers", teacher, "--out", out, *(["--resume"] if resume else []))
    one_line_error(status, err, f"{out} already exists; choose another output directory (a recovery checkpoint is "
                   f"beside it, {out}.recovery.pt: a run killed after saving its set leaves one; if the set is that "
                   "run's whole result, delete the checkpoint)")
    assert _leftover_checkpoint(tmp_path) == ["s.recovery.pt", "s.recovery.pt.results"]
    shutil.rmtree(out)
    random_set(out)  # (another method's set where the interrupted run's checkpoint lies)
    status, _, err = cli(capsys, *DISTILL, "--teachers", teacher, "--out", out, "--resume")
    one_line_error(status, err, f"{out} already exists", f"a recovery checkpoint is beside it, {out}.recovery.pt")
    assert _leftover_checkpoint(tmp_path) == ["s.recovery.pt", "s.recovery.pt.results"]
