"""Operating-system errors and bad inputs end a command in one line, exit status 2, and
leave nothing behind (issue 12, points 2 and 4).

Read-only media and a full disk are real here: each such test mounts a read-only and a tiny
tmpfs in a private mount namespace (``unshare -rm``, no privileges needed) and runs the
commands inside it; where that is impossible the test is skipped and the portable tests
below (errors injected at the write) still cover the paths."""
import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from infer_fast import _io
from infer_fast.cli import main
from infer_fast.teacher import TeacherConfig, train_teacher

TINY_TEACHER = dict(dataset="fashion-mnist-mini", model="convnet-w8-d2", epochs=1, batch_size=256, lr=0.05,
                    device="cpu")
TEACHER_ARGS = ["teacher", "--dataset", "fashion-mnist-mini", "--model", "convnet-w8-d2", "--epochs", "1",
                "--batch-size", "256", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A trained tiny teacher and a small relabelled INFER set, both in a fresh directory."""
    root = tmp_path_factory.mktemp("os-errors")
    teacher = root / "t.pt"
    train_teacher(TeacherConfig(**TINY_TEACHER), str(teacher), progress=False)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["distill", "--dataset", "fashion-mnist-mini", "--teachers", "t.pt", "--ipc", "2",
                     "--iterations", "3", "--device", "cpu", "--quiet", "--out", "set"]) == 0
        assert main(["relabel", "set", "--teachers", "t.pt"]) == 0
    finally:
        os.chdir(cwd)
    return root


def run_main(argv, capsys, cwd):
    """(exit status, stderr) of the CLI run in this process from ``cwd``."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        capsys.readouterr()
        status = main([str(a) for a in argv])
    finally:
        os.chdir(old)
    return status, capsys.readouterr().err


def assert_one_line_error(status, stderr, *fragments):
    assert status == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def leftovers(directory):
    """Temporary files or directories anywhere under ``directory``."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if ".tmp" in p.name or ".old-" in p.name)


# ---------------------------------------------------------------------------------------------
# real read-only media and a full disk, in a private mount namespace

def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o ro tmpfs $d"],
                           capture_output=True)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(not _unshare_works(), reason="cannot mount a tmpfs in a private namespace here")

DRIVER = textwrap.dedent("""
    import contextlib, io, json, os, sys, traceback
    from infer_fast.cli import main
    results = []
    for argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                status = main(argv)
        except BaseException:
            status, err = "raised", io.StringIO(traceback.format_exc())
        results.append({"argv": argv, "status": status, "stderr": err.getvalue()})
    listing = {d: sorted(os.listdir(d)) for d in json.loads(sys.argv[2])}
    print(json.dumps({"results": results, "listing": listing}))
""")


def run_in_namespace(workspace, setup, cases, listed):
    """Run the CLI ``cases`` in a private mount namespace after the shell ``setup``; returns
    (results, {directory: its entries at the end})."""
    driver = workspace / "driver.py"
    driver.write_text(DRIVER)
    script = f"set -e; {setup}; exec {sys.executable} driver.py \"$0\" \"$1\""
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script, json.dumps(cases), json.dumps(listed)],
                          cwd=workspace, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return found["results"], found["listing"]


@needs_mounts
def test_read_only_media(workspace, tmp_path):
    """Every command that writes refuses read-only media before any work, in one line naming
    the path, exit 2; `inspect` of a set on read-only media works and writes nothing."""
    ro = tmp_path / "ro"
    ro.mkdir()
    (workspace / "run.yaml").write_text("dataset: fashion-mnist-mini\nteachers: [{path: t.pt}]\nout: unused\n")
    setup = (f"mount -t tmpfs tmpfs {ro} && cp -r set {ro}/set && mount -o remount,ro {ro}")
    cases = [
        TEACHER_ARGS + ["--out", f"{ro}/t.pt"],
        ["distill", "--dataset", "fashion-mnist-mini", "--teachers", "t.pt", "--ipc", "2", "--iterations", "3",
         "--device", "cpu", "--quiet", "--out", f"{ro}/x"],
        ["distill", "--dataset", "fashion-mnist-mini", "--method", "random", "--ipc", "2", "--out", f"{ro}/r"],
        ["export", "set", f"{ro}/exported"],
        ["relabel", f"{ro}/set", "--teachers", "t.pt"],
        ["inspect", f"{ro}/set", "--preview", f"{ro}/preview.png"],
        ["run", "run.yaml", "--out", f"{ro}/run", "--quiet"],
        ["inspect", f"{ro}/set"],
    ]
    results, listing = run_in_namespace(workspace, setup, cases, [str(ro), f"{ro}/set"])
    for result in results[:-1]:
        assert result["status"] == 2, result
        lines = result["stderr"].strip().splitlines()
        assert len(lines) == 1 and "Read-only file system" in lines[0] and str(ro) in lines[0], result
    assert results[-1]["status"] == 0, results[-1]  # inspect alone only reads
    assert listing[str(ro)] == ["set"]
    assert listing[f"{ro}/set"] == ["labels.safetensors", "manifest.json", "natural.safetensors", "ufc.safetensors"]
    assert leftovers(workspace) == []


@needs_mounts
def test_full_disk_is_refused_before_any_work(workspace, tmp_path):
    """With no room for the output, teacher and distill stop before training or recovery
    (no epoch runs), say how much is needed and free, and write nothing."""
    full = tmp_path / "full"
    full.mkdir()
    cases = [
        TEACHER_ARGS + ["--out", f"{full}/t.pt"],
        ["distill", "--dataset", "fashion-mnist-mini", "--teachers", "t.pt", "--ipc", "2", "--iterations", "3",
         "--device", "cpu", "--quiet", "--out", f"{full}/x"],
    ]
    results, listing = run_in_namespace(workspace, f"mount -t tmpfs -o size=8k tmpfs {full}", cases, [str(full)])
    for result in results:
        assert result["status"] == 2, result
        line = result["stderr"].strip()
        assert "\n" not in line and "needs about" in line and "free" in line and str(full) in line, result
    assert listing[str(full)] == []


# ---------------------------------------------------------------------------------------------
# portable: errors injected where the bytes are written

class _FillsUp:
    """A file on a disk that fills up while it is written: part of the data goes in, then the
    write fails as the kernel reports it, OSError ENOSPC naming no file."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def fill_disk_at(monkeypatch, when):
    """Writes to temporary files (``.tmp-`` in the path) fail for lack of space: at ``open``
    (naming the file) or in the middle of a ``write`` (naming none, as a real full disk)."""
    real_open = open

    def opened(path, mode="r", *args, **kwargs):
        if "w" not in mode or ".tmp-" not in os.fspath(path):
            return real_open(path, mode, *args, **kwargs)
        if when == "open":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
        return _FillsUp(real_open(path, mode, *args, **kwargs))

    monkeypatch.setattr("builtins.open", opened)


@pytest.mark.parametrize("when", ["open", "write"])
def test_disk_full_during_a_checkpoint_write_is_one_line_and_leaves_no_temp_file(tmp_path, capsys, monkeypatch, when):
    """A write that fails after the work (the disk filled up meanwhile) ends in one line
    naming the file given (not the temporary one beside it), exit 2, and its temporary file
    is gone."""
    fill_disk_at(monkeypatch, when)
    status, err = run_main(TEACHER_ARGS + ["--out", "t.pt"], capsys, tmp_path)
    assert_one_line_error(status, err, "error: t.pt: No space left on device")
    assert ".tmp-" not in err
    assert list(tmp_path.iterdir()) == []


def test_disk_full_while_writing_a_json_file_names_it(tmp_path, monkeypatch):
    """save_json_atomic (the evaluation report, results.json) on a disk that fills up: the
    OSError names the file, nothing is left."""
    fill_disk_at(monkeypatch, "write")
    with pytest.raises(OSError) as caught:
        _io.save_json_atomic({"accuracy": [0.5] * 100}, str(tmp_path / "report.json"))
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "report.json")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_while_writing_a_manifest_names_the_set_being_written(tmp_path, capsys, monkeypatch):
    fill_disk_at(monkeypatch, "write")
    status, err = run_main(["distill", "--dataset", "fashion-mnist-mini", "--method", "random", "--ipc", "2",
                            "--out", "r", "--quiet"], capsys, tmp_path)  # (--quiet: no "saving" line on stderr)
    assert_one_line_error(status, err, "error: r: No space left on device")
    assert ".tmp-" not in err
    assert list(tmp_path.iterdir()) == []


def test_evaluate_refuses_an_unwritable_report_before_any_training(workspace, tmp_path, capsys, monkeypatch):
    from infer_fast import evaluate

    def trains(*args, **kwargs):
        raise AssertionError("students trained before the report's path was checked")

    monkeypatch.setattr(evaluate, "evaluate_set", trains)
    blocker = tmp_path / "afile"
    blocker.write_text("in the way")
    status, err = run_main(["evaluate", workspace / "set", "--teachers", workspace / "t.pt", "--device", "cpu",
                            "--out", blocker / "report.json"], capsys, tmp_path)
    assert_one_line_error(status, err, "--out", f"{blocker} is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_disk_full_while_saving_a_set_leaves_nothing(tmp_path, capsys, monkeypatch):
    from infer_fast.storage import disk as storage  # where save_distilled looks safetensors_save up

    def no_space(tensors, path, metadata=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))

    monkeypatch.setattr(storage, "safetensors_save", no_space)
    status, err = run_main(["distill", "--dataset", "fashion-mnist-mini", "--method", "random", "--ipc", "2",
                            "--out", "r", "--quiet"], capsys, tmp_path)  # (--quiet: no "saving" line on stderr)
    assert_one_line_error(status, err, f"r{os.sep}images.safetensors: No space left on device")
    assert ".tmp-" not in err
    assert list(tmp_path.iterdir()) == []


def test_safetensors_failures_are_os_errors(tmp_path):
    """safetensors reports I/O failures as text; they come out as the OSError they are."""
    with pytest.raises(OSError) as caught:
        _io.safetensors_save({"x": torch.zeros(2)}, tmp_path / "missing-dir" / "x.safetensors")
    assert caught.value.errno == errno.ENOENT and caught.value.filename.endswith("x.safetensors")
    _io.safetensors_save({"x": torch.zeros(2)}, tmp_path / "x.safetensors")
    assert (tmp_path / "x.safetensors").stat().st_mode & 0o777 == _io.default_file_mode()


@pytest.mark.parametrize("command", ["teacher", "distill", "random", "export", "run"])
def test_an_output_under_a_file_is_refused_before_any_work(workspace, tmp_path, capsys, command):
    blocker = tmp_path / "afile"
    blocker.write_text("in the way")
    out = blocker / "sub" / "out"
    argv = {
        "teacher": TEACHER_ARGS + ["--out", out],
        "distill": ["distill", "--dataset", "fashion-mnist-mini", "--teachers", workspace / "t.pt", "--ipc", "2",
                    "--device", "cpu", "--quiet", "--out", out],
        "random": ["distill", "--dataset", "fashion-mnist-mini", "--method", "random", "--ipc", "2", "--out", out],
        "export": ["export", workspace / "set", out],
        "run": ["run", workspace / "run-under-file.yaml", "--out", out, "--quiet"],
    }[command]
    (workspace / "run-under-file.yaml").write_text("dataset: fashion-mnist-mini\nteachers: [{path: t.pt}]\nout: x\n")
    status, err = run_main(argv, capsys, tmp_path)
    assert_one_line_error(status, err, f"{blocker} is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_successful_commands_leave_no_temporary_files(workspace, tmp_path, capsys):
    """teacher, distill (all methods), relabel, export and inspect --preview: nothing but
    their outputs, readable by others (the umask's mode, not safetensors' private 0600)."""
    shutil.copy(workspace / "t.pt", tmp_path / "t.pt")
    common = ["--dataset", "fashion-mnist-mini", "--ipc", "2", "--iterations", "2", "--device", "cpu", "--quiet"]
    for argv in (
        TEACHER_ARGS + ["--out", "t2.pt"],
        ["distill", *common, "--teachers", "t.pt", "--out", "infer"],
        ["distill", *common, "--teachers", "t.pt", "--method", "sre2l", "--out", "sre2l"],
        ["distill", "--dataset", "fashion-mnist-mini", "--method", "random", "--ipc", "2", "--out", "random"],
        ["relabel", "infer", "--teachers", "t.pt"],
        ["export", "infer", "exported"],
        ["inspect", "infer", "--preview", "preview.png"],
    ):
        status, err = run_main(argv, capsys, tmp_path)
        assert status == 0, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "infer", "preview.png", "random", "sre2l",
                                                          "t.pt", "t2.pt"]
    assert leftovers(tmp_path) == []
    for path in (tmp_path / "infer").iterdir():
        assert path.stat().st_mode & 0o777 == _io.default_file_mode(), path


# ---------------------------------------------------------------------------------------------
# bad inputs: one line naming the option or the path (point 4)

def _yaml(tmp_path, name, text):
    (tmp_path / name).write_text(textwrap.dedent(text))
    return name


def test_config_file_values_are_type_checked_like_flags(workspace, tmp_path, capsys):
    shutil.copy(workspace / "t.pt", tmp_path / "t.pt")
    cases = [
        (["distill", "--config", _yaml(tmp_path, "a.yaml", "dataset: 12\nipc: 2\nteachers: [t.pt]\nout: y\n")],
         "dataset must be a string or a mapping, got 12"),
        (["teacher", "--config", _yaml(tmp_path, "b.yaml", "dataset: 12\nout: y.pt\n")], "dataset must be a string"),
        # a dataset mapping checked as teacher and run check it, before any data is read
        (["distill", "--config", _yaml(tmp_path, "a2.yaml", "dataset: {name: imagenet, image_size: big}\nipc: 2\n"
                                                               "method: random\nout: y\n")],
         "dataset: image_size must be a positive integer, got 'big'"),
        (["distill", "--config", _yaml(tmp_path, "a3.yaml", "dataset: {name: imagefolder, in_memory: maybe}\nipc: 2\n"
                                                               "method: random\nout: y\n")],
         "dataset: in_memory must be true or false, got 'maybe'"),
        (["distill", "--config", _yaml(tmp_path, "c.yaml", "dataset: fashion-mnist-mini\nipc: two\nout: y\n")],
         "ipc must be an integer, got 'two'"),
        (["distill", "--config", _yaml(tmp_path, "d.yaml", "dataset: fashion-mnist-mini\nipc: 2\nout: y\n"
                                                               "teachers: t.pt\ncompile: off\n")],
         "quote the word"),
        (["distill", "--config", _yaml(tmp_path, "e.yaml", "dataset: fashion-mnist-mini\nipc: 2\nout: y\n"
                                                               "teachers: t.pt\nfused_bn: 1\n")],
         "fused_bn must be true or false"),
        (["distill", "--config", _yaml(tmp_path, "f.yaml", "dataset: fashion-mnist-mini\nipc: 2\nout: y\n"
                                                               "teachers: t.pt\nr_bn: high\n")],
         "r_bn must be a finite number, got 'high'"),
        (["run", _yaml(tmp_path, "g.yaml", "dataset: 12\nteachers: [{path: t.pt}]\nout: y\n")],
         "dataset must be a name or {name, num_classes, image_size, in_memory}, got 12"),
        (["run", _yaml(tmp_path, "g2.yaml", "dataset: {name: imagenet, image_size: big}\nteachers: [{path: t.pt}]\n"
                                            "out: y\n")], "dataset: image_size must be a positive integer, got 'big'"),
        (["run", _yaml(tmp_path, "h.yaml", "dataset: fashion-mnist-mini\nteachers: [{path: t.pt}]\nout: y\n"
                                           "device: tpu\n")], "device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    ]
    for argv, message in cases:
        status, err = run_main(argv, capsys, tmp_path)
        assert_one_line_error(status, err, message)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".yaml")) == ["t.pt"]


def test_device_names_are_validated(workspace, capsys, tmp_path):
    cases = [
        ["distill", "--dataset", "fashion-mnist-mini", "--teachers", workspace / "t.pt", "--ipc", "2", "--out", "x",
         "--device", "tpu"],
        ["relabel", workspace / "set", "--teachers", workspace / "t.pt", "--device", "bogus"],
        ["train", workspace / "set", "--device", "tpu", "--epochs", "1", "--quiet"],
        TEACHER_ARGS[:-3] + ["--device", "cuda:x", "--out", "t.pt"],
    ]
    for argv in cases:
        status, err = run_main(argv, capsys, tmp_path)
        assert_one_line_error(status, err, "device must be auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        status, err = run_main(TEACHER_ARGS[:-3] + ["--device", "cuda", "--out", "t.pt"], capsys, tmp_path)
        assert_one_line_error(status, err, "no CUDA GPU is available")
    assert list(tmp_path.iterdir()) == []


def test_teacher_files_that_are_not_teachers(workspace, tmp_path, capsys):
    """A directory, a text file, and weights that do not fit the recorded model: each one
    line saying what is wrong with which file."""
    (tmp_path / "notes.pt").write_text("hello\n")
    ckpt = torch.load(workspace / "t.pt", weights_only=True)
    ckpt["model"] = "convnet-w16-d2"  # the weights are a convnet-w8-d2's
    torch.save(ckpt, tmp_path / "mismatch.pt")
    distill = ["distill", "--dataset", "fashion-mnist-mini", "--ipc", "2", "--out", "x", "--device", "cpu",
               "--teachers"]
    cases = [
        (distill + [tmp_path], "is a directory, expected a file"),
        (distill + ["notes.pt"], "'notes.pt' is not a PyTorch checkpoint"),
        (distill + ["mismatch.pt"], "its weights do not fit its recorded model 'convnet-w16-d2'"),
        (["relabel", workspace / "set", "--teachers", "mismatch.pt"], "do not fit"),
        (["distill", "--config", tmp_path, "--out", "x"], "is a directory, expected a file"),
    ]
    for argv, message in cases:
        status, err = run_main(argv, capsys, tmp_path)
        assert_one_line_error(status, err, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mismatch.pt", "notes.pt"]


def test_pickles_that_are_not_weights_only_are_one_line_naming_the_file(workspace, tmp_path, capsys):
    """A teacher checkpoint, imported soft labels or pretrained weights pickled with other
    Python objects than tensors are refused (never unpickled) in one line naming the file and
    what torch's weights-only loader met, instead of its many-line advice; nothing written."""
    import argparse

    ckpt = torch.load(workspace / "t.pt", weights_only=True)
    torch.save({**ckpt, "config": argparse.Namespace(**ckpt["config"])}, tmp_path / "pickled.pt")
    assert run_main(["export", workspace / "set", "exported"], capsys, tmp_path)[0] == 0
    count = len(json.loads((tmp_path / "exported" / "export.json").read_text())["files"])
    torch.save({"soft_labels": torch.zeros(count, 10), "note": argparse.Namespace()}, tmp_path / "labels.pt")
    names = sorted(p.name for p in tmp_path.iterdir())
    cases = [
        (["distill", "--dataset", "fashion-mnist-mini", "--teachers", "pickled.pt", "--ipc", "2", "--device", "cpu",
          "--out", "x"], "teacher checkpoint 'pickled.pt': not a weights-only checkpoint"),
        (["import", "exported", "--dataset", "fashion-mnist-mini", "--soft-labels", "labels.pt", "--out", "x"],
         "soft labels file 'labels.pt': not a weights-only checkpoint"),
        (["teacher", "--pretrained", "resnet18-imagenet", "--weights", "pickled.pt", "--dataset", "fashion-mnist-mini",
          "--out", "x"], "resnet18-imagenet weights file 'pickled.pt': not a weights-only checkpoint"),
    ]
    for argv, message in cases:
        status, err = run_main(argv, capsys, tmp_path)
        assert_one_line_error(status, err, message, "(Unsupported global: GLOBAL argparse.Namespace")
    assert sorted(p.name for p in tmp_path.iterdir()) == names


def test_teachers_that_do_not_fit_the_data_are_refused_before_any_work(workspace, tmp_path, capsys):
    """A teacher recording an unknown model, a ConvNet built for 32x32 images, one taking RGB
    images, one with nan weights, on 28x28 grayscale data: each command that loads teachers
    stops in one line naming the file given and what does not fit; nothing is written (a
    3-channel teacher was an internal error, a nan one a diverged recovery pointing at a
    recovery checkpoint that did not exist)."""
    from infer_fast.models import create_model

    ckpt = torch.load(workspace / "t.pt", weights_only=True)
    torch.save({**ckpt, "model": "no-such-model"}, tmp_path / "unknown.pt")
    for name, channels, size in (("size32.pt", 1, 32), ("rgb.pt", 3, 28)):
        net = create_model(ckpt["model"], num_classes=10, in_channels=channels, image_size=size)
        torch.save({**ckpt, "channels": channels, "image_size": size, "state_dict": net.state_dict()}, tmp_path / name)
    state = dict(ckpt["state_dict"])
    state["head.bias"] = state["head.bias"].clone().fill_(float("nan"))
    torch.save({**ckpt, "state_dict": state}, tmp_path / "nan.pt")
    shutil.copytree(workspace / "set", tmp_path / "set")
    names, manifest = sorted(p.name for p in tmp_path.iterdir()), (tmp_path / "set" / "manifest.json").read_bytes()
    distill = ["distill", "--dataset", "fashion-mnist-mini", "--ipc", "2", "--iterations", "2", "--device", "cpu",
               "--quiet", "--out", "x", "--teachers"]
    cases = [
        (distill + ["unknown.pt"], "teacher 'unknown.pt' records model 'no-such-model', which cannot be built"),
        (distill + ["size32.pt"], "teacher 'size32.pt' (convnet-w8-d2) takes 32x32 images, not the 28x28 ones of fashion-mnist-mini"),
        (distill + ["rgb.pt"], "teacher 'rgb.pt' takes 3-channel images, not the 1-channel ones of fashion-mnist-mini"),
        (distill + ["nan.pt"], "teacher 'nan.pt' holds non-finite weights (nan or inf) in 1 tensor(s): head.bias"),
        (["distill", "--dataset", "fashion-mnist-mini", "--method", "sre2l", "--ipc", "1", "--iterations", "2",
          "--device", "cpu", "--quiet", "--out", "x", "--teachers", "nan.pt"], "teacher 'nan.pt' holds non-finite weights"),
        (["relabel", "set", "--teachers", "rgb.pt"], "teacher 'rgb.pt' takes 3-channel images"),
        (["train", "set", "--dynamic", "--teachers", "size32.pt", "--epochs", "1", "--device", "cpu", "--quiet"],
         "teacher 'size32.pt' (convnet-w8-d2) takes 32x32 images, not the 28x28 ones of fashion-mnist-mini"),
        (["evaluate", "set", "--teachers", "unknown.pt", "--device", "cpu", "--quiet", "--out", "report.json"],
         "teacher 'unknown.pt' records model 'no-such-model'"),
    ]
    for argv, message in cases:
        status, err = run_main(argv, capsys, tmp_path)
        assert_one_line_error(status, err, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    assert (tmp_path / "set" / "manifest.json").read_bytes() == manifest


def test_internal_errors_are_short_and_status_1_with_the_traceback_under_debug(capsys, monkeypatch, tmp_path):
    """A bug (not the user's doing) ends in one line, status 1, pointing at --debug; with
    --debug (before or after the command) the traceback is shown instead."""
    from infer_fast import info

    def broken():
        raise KeyError("a bug\nwith a second line")

    monkeypatch.setattr(info, "format_info", broken)
    status, err = run_main(["info"], capsys, tmp_path)
    assert status == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "internal error: KeyError: 'a bug" in err and "--debug" in err
    for argv in (["--debug", "info"], ["info", "--debug"]):
        with pytest.raises(KeyError, match="a bug"):
            main(argv)
    user_error = ["teacher", "--dataset", "no-such-dataset", "--out", tmp_path / "t.pt"]
    status, err = run_main(user_error, capsys, tmp_path)
    assert_one_line_error(status, err, "unknown dataset 'no-such-dataset'")
    with pytest.raises(ValueError, match="unknown dataset"):
        main([str(a) for a in user_error + ["--debug"]])
