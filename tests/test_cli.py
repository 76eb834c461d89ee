"""The infer-fast command line: subcommands, YAML configs with overrides, one-line errors."""
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import torch_threads
from resume_case import IN_BATCH_DISTILL, TINY_TEACHER


def run_cli(*args, cwd=None, env=None):
    """The CLI run in a new process (``env``: variables set on top of this one's environment)."""
    env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "infer_fast.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


def test_info_reports_backends():
    result = run_cli("info")
    assert result.returncode == 0, result.stderr
    assert "backends (per device):" in result.stdout
    assert "cpu     cpu   usable" in result.stdout
    assert "CUDA kernels" in result.stdout


def test_models_and_datasets_listed(capsys):
    status, out, _ = _cli(capsys, "models")
    assert status == 0 and "resnet18" in out and "convnet" in out
    status, out, _ = _cli(capsys, "datasets")
    assert status == 0 and "fashion-mnist-mini" in out and "cifar100" in out


@pytest.mark.parametrize(
    "args,message",
    [
        (("teacher", "--dataset", "fashion-mnist-mini"), "--out FILE is required"),
        (("teacher", "--dataset", "no-such-set", "--out", "x.pt"), "no-such-set"),
        (("teacher", "--config", "missing.yaml", "--out", "x.pt"), "config file 'missing.yaml' does not exist"),
        (("inspect", "no-such-dir"), "no-such-dir"),
    ],
)
def test_user_errors_are_one_line_without_traceback(tmp_path, args, message):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_config_option_is_refused(tmp_path):
    (tmp_path / "c.yaml").write_text("dataset: fashion-mnist-mini\nlearning_rate: 0.1\n")
    result = run_cli("teacher", "--config", "c.yaml", "--out", "t.pt", cwd=tmp_path)
    assert result.returncode == 2 and "unknown option(s) learning_rate" in result.stderr


def test_teacher_from_yaml_with_override_then_resume_message(tmp_path, capsys, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(
        "dataset: fashion-mnist-mini\nmodel: convnet-w8-d2\nepochs: 5\nbatch_size: 256\nlr: 0.05\n"
    )
    status, out, err = _cli(capsys, "teacher", "--config", "c.yaml", "--epochs", "1", "--out", "t.pt", "--quiet")
    assert status == 0, err
    assert "test accuracy" in out and "after 1 epoch (" in out
    ckpt = torch.load(tmp_path / "t.pt", weights_only=True)
    assert ckpt["config"]["epochs"] == 1 and ckpt["config"]["batch_size"] == 256
    status, out, _ = _cli(capsys, "teacher", "--config", "c.yaml", "--epochs", "1", "--out", "t.pt", "--quiet")
    assert status == 0 and "already trained" in out


def test_inspect_and_export_a_distilled_set(tmp_path, capsys):
    from infer_fast.storage import DistilledSet, save_distilled

    gen = torch.Generator().manual_seed(0)
    k, c, g = 2, 3, 4
    ds = DistilledSet(
        method="infer", dataset="fashion-mnist-mini", num_classes=c, channels=1, image_size=8,
        mean=(0.286,), std=(0.353,),
        natural=torch.randint(0, 256, (k, c, 1, 8, 8), generator=gen, dtype=torch.uint8),
        ufc=0.1 * torch.randn(g, 1, 8, 8, generator=gen), ufc_index=torch.tensor([0, 0, 1, 1]),
        ufc_teacher=torch.tensor([0, 1, 0, 1]), budget={"ipc": 3, "K": k, "M": 2, "accounting": "fair"},
        seed=0, full_train_size=5000,
    )
    save_distilled(ds, tmp_path / "set")
    status, out, err = _cli(capsys, "inspect", tmp_path / "set")
    assert status == 0, err
    assert "compression" in out.lower()
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == ["manifest.json", "natural.safetensors", "ufc.safetensors"]
    status, out, err = _cli(capsys, "inspect", tmp_path / "set", "--preview", tmp_path / "grid.png")
    assert status == 0 and "preview:" in out, err
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    status, _, err = _cli(capsys, "export", tmp_path / "set", "--to", "imagefolder", tmp_path / "out")
    assert status == 0, err
    pngs = list((tmp_path / "out").rglob("*.png"))
    assert len(pngs) == k * c + g * c


def test_distill_relabel_train_chain(tmp_path, capsys, monkeypatch, one_thread):
    """teacher -> distill (INFER and random) -> relabel -> train, all from the command line (its
    main, in this process: 14 interpreter starts cost a minute; the tests above and the kill
    tests below start the CLI as a process)."""
    monkeypatch.chdir(tmp_path)

    def ok(*args):
        status, out, err = _cli(capsys, *args)
        assert status == 0, err
        return out

    ok("teacher", "--dataset", "fashion-mnist-mini", "--model", "convnet-w8-d2", "--epochs", "1",
       "--batch-size", "256", "--lr", "0.05", "--out", "t.pt", "--quiet")
    report = ok("distill", "--dataset", "fashion-mnist-mini", "--teachers", "t.pt", "--ipc", "3",
                "--iterations", "3", "--out", "infer", "--quiet")
    assert "method             infer" in report and "K 2, M 1" in report
    ok("distill", "--dataset", "fashion-mnist-mini", "--method", "random", "--ipc", "2", "--out", "random")
    for directory in ("infer", "random"):
        assert "relabelled" in ok("relabel", directory, "--teachers", "t.pt")
        out = ok("train", directory, "--model", "convnet-w8-d2", "--epochs", "2", "--seeds", "2", "--device", "cpu", "--quiet")
        assert "final top-1 on the real fashion-mnist-mini test split" in out and "over 2 seed(s)" in out
    # the SRe2L baseline, confidence-selected natural sets with the ImageNet augmentation, the ImageNet student recipe
    report = ok("distill", "--dataset", "fashion-mnist-mini", "--method", "sre2l", "--teachers", "t.pt", "--ipc", "2",
                "--iterations", "2", "--out", "sre2l", "--quiet")
    assert "method             sre2l" in report
    ok("distill", "--dataset", "fashion-mnist-mini", "--teachers", "t.pt", "--ipc", "3", "--iterations", "2",
       "--selection", "confidence", "--augmentation", "imagenet", "--max-shift", "3", "--out", "infer-c", "--quiet")
    from infer_fast.storage import load_distilled

    hyper = load_distilled(tmp_path / "infer-c").hyperparameters
    assert hyper["natural_selection"] == "confidence" and hyper["augmentation"] == "imagenet"
    assert hyper["r_bn"] == 0.01 and hyper["max_shift"] == 3 and hyper["iterations"] == 2  # the ImageNet recipe, overridden
    assert load_distilled(tmp_path / "sre2l").hyperparameters["r_bn"] == 0.01
    ok("relabel", "sre2l", "--teachers", "t.pt")
    out = ok("train", "sre2l", "--recipe", "imagenet", "--model", "convnet-w8-d2", "--epochs", "1", "--device", "cpu", "--quiet")
    assert "final top-1" in out
    status, _, err = _cli(capsys, "distill", "--dataset", "fashion-mnist-mini", "--method", "sre2l", "--ipc", "2",
                          "--out", "y")
    assert status == 2 and "--teachers" in err
    status, _, err = _cli(capsys, "distill", "--dataset", "fashion-mnist-mini", "--teachers", "t.pt", "--ipc", "1",
                          "--out", "x")
    assert status == 2 and "ipc" in err and "Traceback" not in err


def _ok(*args, cwd):
    """The CLI's stdout; its exit status must be 0."""
    result = run_cli(*args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _tiny_teacher(cwd) -> None:
    _ok(*TINY_TEACHER, cwd=cwd)


def test_progress_in_a_log_is_lines_without_carriage_returns(tmp_path, capsys, monkeypatch):
    """Output that is not a terminal (captured here, a file below) gets plain progress lines,
    never '\r' redraws: each of these bars (none runs 10 s) writes one line as it ends, with
    its losses; a 200-iteration distill wrote ~220 carriage returns into its log before."""
    from infer_fast.progress import PROGRESS_ENV_VAR

    import time

    from infer_fast.progress import LINE_INTERVAL_S

    monkeypatch.delenv(PROGRESS_ENV_VAR, raising=False)  # the form the stream calls for
    started = time.perf_counter()
    status, out, err = _cli(capsys, "teacher", "--dataset", "fashion-mnist-mini", "--model", "convnet-w8-d2",
                            "--epochs", "2", "--batch-size", "256", "--lr", "0.05", "--out", tmp_path / "t.pt")
    assert status == 0, err
    assert "\r" not in out + err and "epoch 2/2: train loss" in err  # (a progress line: stderr)
    epochs = [line for line in err.splitlines() if line.startswith("epoch ") and "100% 20/20 " in line]
    assert [line[:10] for line in epochs] == ["epoch 1/2:", "epoch 2/2:"]  # each epoch's bar as it ends
    assert all("loss=" in line and "lr=" in line for line in epochs)
    # 2 epochs x (the epoch's bar, its evaluation's, its summary line), and a heartbeat per LINE_INTERVAL_S at
    # most (a slow machine)
    assert len(err.splitlines()) <= 6 + (time.perf_counter() - started) / LINE_INTERVAL_S
    with open(tmp_path / "log", "w") as log:  # `infer-fast distill ... > log 2>&1`
        result = subprocess.run([sys.executable, "-m", "infer_fast.cli", "distill", "--dataset", "fashion-mnist-mini",
                                 "--teachers", "t.pt", "--ipc", "3", "--iterations", "200", "--out", "infer"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, timeout=600)
    text = (tmp_path / "log").read_text()
    assert result.returncode == 0, text
    assert "\r" not in text and "distilled set infer" in text
    bars = [line for line in text.splitlines() if line.startswith("teacher 1/1 UFCs")]
    assert bars and bars[-1].startswith("teacher 1/1 UFCs k=0..1: 100% 200/200 [")
    minutes, seconds = bars[-1].split("[", 1)[1].split("<", 1)[0].split(":")  # the bar's own elapsed time
    assert len(bars) <= 1 + (60 * int(minutes) + int(seconds) + 1) / LINE_INTERVAL_S  # the end + one per interval
    assert "ce=" in bars[-1] and "r_bn=" in bars[-1]


def _sigkill_once_checkpointed(argv, cwd, checkpoint) -> dict:
    """Run the CLI with ``argv``, SIGKILL it as soon as ``checkpoint`` exists, and return the
    checkpoint (the run's output directory must not have been written yet)."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "infer_fast.cli", *argv], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists() and not (cwd / "killed").exists(), "the kill came too late to test anything"
    return torch.load(checkpoint, weights_only=True)


def _assert_resumed_equals_uninterrupted(tmp_path, args, resumed, reference, resume_again=None) -> None:
    """torch.equal of the resumed run's compensators with the uninterrupted run's. On a mismatch
    the message says which UFCs differ and by how much, whether a second uninterrupted run
    matches the first (then the resume changed the result) or not (then this machine's
    arithmetic is not repeatable), and, given ``resume_again`` (the UFCs of the first
    checkpoint resumed again, once, to the end), whether that resume matches (then a later kill
    and resume changed the result, or resuming is not repeatable: issue 20 point 0 was such a
    case, MKL's first vector-math call racing on 2 threads, infer_fast/mkl_vml.py; measured by
    bench/resume_repeatability.py) or not."""
    from infer_fast.storage import load_distilled

    if torch.equal(resumed.ufc, reference.ufc):
        return
    differ = [k for k in range(reference.ufc.shape[0]) if not torch.equal(resumed.ufc[k], reference.ufc[k])]
    largest = (resumed.ufc - reference.ufc).abs().max().item()
    _ok(*args, "--out", "uninterrupted-again", cwd=tmp_path)
    again = load_distilled(tmp_path / "uninterrupted-again").ufc
    verdict = ("a second uninterrupted run matches the first: the resume changed the result"
               if torch.equal(again, reference.ufc)
               else "a second uninterrupted run differs too: this machine's arithmetic is not repeatable")
    if resume_again is not None:
        second = resume_again()
        verdict += ("; the first checkpoint resumed again, once, matches the uninterrupted run: a later kill and "
                    "resume changed the result, or resuming is not repeatable (as when MKL's first call raced, "
                    "infer_fast/mkl_vml.py)"
                    if torch.equal(second, reference.ufc)
                    else "; the first checkpoint resumed again, once, differs too"
                    + (" (the same as the resumed run)" if torch.equal(second, resumed.ufc) else ""))
    raise AssertionError(f"resumed UFCs {differ} differ from the uninterrupted run's (max |diff| {largest:.3g}); "
                         f"{verdict} (torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, "
                         f"{torch.get_num_threads()} threads here)")


def test_distill_killed_with_sigkill_resumes_to_the_same_result(tmp_path, capsys, monkeypatch):
    """A distillation killed (SIGKILL) after some UFCs were checkpointed continues with
    --resume and ends with the same compensators as an uninterrupted run."""
    from infer_fast.storage import load_distilled

    _tiny_teacher(tmp_path)
    args = ["distill", "--dataset", "fashion-mnist-mini", "--teachers", "t.pt", "--ipc", "5", "--iterations", "150",
            "--group-size", "1", "--quiet"]  # K = 4 UFCs, one batch each
    _ok(*args, "--out", "reference", cwd=tmp_path)
    checkpoint = tmp_path / "killed.recovery.pt"
    saved = _sigkill_once_checkpointed([*args, "--out", "killed"], tmp_path, checkpoint)
    done = sum(len(entry["jobs"]) for entry in saved["results"])
    assert 1 <= done < 4
    monkeypatch.chdir(tmp_path)  # (the refusal in this process: it comes before any work)
    status, _, err = _cli(capsys, *args, "--out", "killed")
    assert status == 2 and "resume" in err
    _ok(*args, "--out", "killed", "--resume", cwd=tmp_path)
    reference, resumed = load_distilled(tmp_path / "reference"), load_distilled(tmp_path / "killed")
    _assert_resumed_equals_uninterrupted(tmp_path, args, resumed, reference)  # the same batches: the same bits
    assert torch.equal(resumed.natural, reference.natural) and not checkpoint.exists()


def test_distill_killed_with_sigkill_inside_a_batch_resumes_bit_identically(tmp_path):
    """One batch holds all 4 UFCs and is checkpointed every 10 iterations: killed (SIGKILL) inside
    it, as soon as its checkpoint of a chosen iteration is on disk (the test-only
    checkpoints.SIGKILL_AFTER_CHECKPOINT_ENV: the kill lands there on any machine, never by chance),
    the run continues with --resume from that iteration, says so, and ends with exactly
    (torch.equal) the compensators of an uninterrupted run. Killed at the first checkpoint (where
    the old poll-based kill landed most), then, resumed, killed again in the middle and at the last
    one (a job preempted several times; issue 20 point 0): each resume continues where the kill
    before it left the batch, so the end is bit-identical only if every one of them was."""
    import signal

    from infer_fast.distill.checkpoints import SIGKILL_AFTER_CHECKPOINT_ENV
    from infer_fast.storage import load_distilled

    _tiny_teacher(tmp_path)
    args = IN_BATCH_DISTILL  # K = 4 UFCs, all in one batch
    _ok(*args, "--out", "reference", cwd=tmp_path)
    reference = load_distilled(tmp_path / "reference")
    checkpointed = [*args, "--checkpoint-every", "10"]
    killed = [*checkpointed, "--out", "killed"]
    checkpoint = tmp_path / "killed.recovery.pt"

    def resumed_report(at):
        return f"resuming, 0/4 INFER jobs already recovered; teacher 1/1 batch k=0..3 continues at iteration {at}/150"

    previous = None
    for iteration in (10, 70, 140):
        resume = [] if previous is None else ["--resume"]
        result = run_cli(*killed, *resume, cwd=tmp_path, env={SIGKILL_AFTER_CHECKPOINT_ENV: str(iteration)})
        assert result.returncode == -signal.SIGKILL, result.stderr
        assert previous is None or resumed_report(previous) in result.stdout  # (said before any iteration ran)
        assert not (tmp_path / "killed").exists()
        saved = torch.load(checkpoint, weights_only=True)
        assert saved["results"] == []  # the batch never finished: all that was saved is inside it
        (partial,) = saved["partials"]
        assert partial["k"] == [0, 1, 2, 3] and partial["iteration"] == iteration
        if previous is None:  # (for a resume of the first checkpoint alone, on a mismatch)
            shutil.copy(checkpoint, tmp_path / "first.kept.pt")
        previous = iteration
    out = _ok(*killed, "--resume", cwd=tmp_path)  # (--quiet: the resume report is printed all the same)
    assert resumed_report(previous) in out  # (the last kill's iteration)
    resumed = load_distilled(tmp_path / "killed")

    def resume_again():  # the first checkpoint resumed once, to the end: which kill changed the result
        shutil.copy(tmp_path / "first.kept.pt", tmp_path / "again.recovery.pt")
        _ok(*checkpointed, "--out", "again", "--resume", cwd=tmp_path)
        return load_distilled(tmp_path / "again").ufc

    _assert_resumed_equals_uninterrupted(tmp_path, args, resumed, reference, resume_again)
    assert torch.equal(resumed.natural, reference.natural) and not checkpoint.exists()


# ---------------------------------------------------------------------------------------
# Pretrained teachers: cached torchvision weights (made here: no real weights, no internet)
# ---------------------------------------------------------------------------------------
@pytest.fixture
def one_thread():
    """The in-process CLI runs tiny batches: one thread avoids OpenMP spin-waiting on a busy
    machine (a 10-image forward pass: 0.03 s instead of seconds on 2 shared cores)."""
    with torch_threads(1):
        yield


def _cli(capsys, *args):
    """(exit status, stdout, stderr) of the CLI run in this process (no interpreter start-up)."""
    from infer_fast.cli import main

    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def _cache_weights(torch_home, model, file_name, num_classes=1000):
    """Our ImageNet-layout ``model`` (1000 classes) saved as torchvision's file in TORCH_HOME's
    hub cache; with another ``num_classes``, returns the file's path instead."""
    from infer_fast.models import create_model

    torch.manual_seed(7)
    net = create_model(model, num_classes=num_classes, image_size=224)
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), folder / file_name)
    return net if num_classes == 1000 else folder / file_name


def test_models_names_the_pretrained_weight_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    status, out, _ = _cli(capsys, "models")
    folder = tmp_path / "th" / "hub" / "checkpoints"
    assert status == 0 and f"{folder}  (does not exist)" in out and "TORCH_HOME=" in out
    [line] = [l for l in out.splitlines() if "resnet18-f37072fd.pth" in l and not l.startswith("To fetch")]
    assert line.startswith("resnet18-imagenet") and line.endswith("missing")
    assert "get_model('resnet18', weights='IMAGENET1K_V1')" in out
    _cache_weights(tmp_path / "th", "resnet18-imagenet", "resnet18-f37072fd.pth")
    status, out, _ = _cli(capsys, "models")
    [line] = [l for l in out.splitlines() if "resnet18-f37072fd.pth" in l and not l.startswith("To fetch")]
    assert status == 0 and line.endswith("present") and "(does not exist)" not in out
    assert "get_model('resnet18'" not in out and "get_model('mobilenet_v2'" in out  # only the missing ones to fetch


def test_teacher_pretrained_writes_the_checkpoint_distill_takes(tmp_path, monkeypatch, capsys, one_thread):
    """`teacher --pretrained` writes the cached weights as the teacher checkpoint `run` writes:
    load_teacher gives the same weights, distill takes it; training options are refused."""
    from infer_fast.teacher import load_teacher

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    out = tmp_path / "rn18.pt"
    status, _, err = _cli(capsys, "teacher", "--pretrained", "resnet18-imagenet", "--epochs", "2", "--lr", "0.1", "--out", out)
    assert status == 2 and "--epochs, --lr do not apply" in err and not out.exists()
    status, _, err = _cli(capsys, "teacher", "--pretrained", "resnet18-imagenet", "--out", out)
    assert status == 2 and "resnet18-f37072fd.pth (resnet18-imagenet)" in err and not out.exists()
    src = _cache_weights(tmp_path / "th", "resnet18-imagenet", "resnet18-f37072fd.pth")
    status, stdout, err = _cli(capsys, "teacher", "--pretrained", "resnet18-imagenet", "--out", out)  # dataset: imagenet
    assert status == 0, err
    assert "teacher resnet18-imagenet for imagenet: pretrained weights from the torch hub cache" in stdout
    model, meta = load_teacher(str(out), dataset="imagenet", num_classes=1000)
    assert meta["config"]["pretrained"] is True and meta["test_accuracy"] is None
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in model.state_dict().items())
    status, stdout, _ = _cli(capsys, "teacher", "--pretrained", "resnet18-imagenet", "--out", out)
    assert status == 0 and len(stdout.splitlines()) == 1  # what the file holds, no "-> rn18.pt" after it
    assert "already holds a 'resnet18-imagenet' teacher for 'imagenet' from pretrained weights" in stdout
    # ImageNet's weights for a 10-class dataset would teach with a fresh, untrained head: refused
    small = tmp_path / "small.pt"
    weights = tmp_path / "th" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    status, _, err = _cli(capsys, "teacher", "--pretrained", "resnet18-imagenet", "--weights", weights,
                          "--dataset", "fashion-mnist-mini", "--out", small)
    assert status == 2 and len(err.strip().splitlines()) == 1 and not small.exists()
    assert "resnet18-imagenet's pretrained classifier has 1000 classes, not 10" in err and "untrained head" in err
    # a weights file of the data's classes (the 1-channel stem adapted from its RGB kernels): distill runs with it
    weights = _cache_weights(tmp_path / "w10", "resnet18-imagenet", "rn18-10.pth", num_classes=10)
    with pytest.warns(UserWarning, match="stem conv"):
        status, _, err = _cli(capsys, "teacher", "--pretrained", "resnet18-imagenet", "--weights", weights,
                              "--dataset", "fashion-mnist-mini", "--out", small)
    assert status == 0, err
    status, stdout, err = _cli(capsys, "distill", "--dataset", "fashion-mnist-mini", "--teachers", small, "--ipc", "2",
                               "--iterations", "1", "--device", "cpu", "--out", tmp_path / "set", "--quiet")
    assert status == 0 and "K 1, M 1" in stdout, err


def test_run_names_every_missing_weights_file_before_any_work(tmp_path, monkeypatch, capsys, one_thread):
    """All the pretrained teachers' missing files in one error before the run writes anything;
    with them cached, the teachers line names every teacher, measured or not."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    (tmp_path / "exp.yaml").write_text(
        f"dataset: fashion-mnist-mini\nout: {tmp_path / 'run'}\nteachers:\n"
        "  - {model: resnet18-imagenet, pretrained: true}\n  - {model: mobilenetv2-imagenet, pretrained: true}\n"
        "  - {model: convnet-w8-d1, epochs: 1, batch_size: 256}\n"
        "ipc: 1\nmethods: [random]\nstudent: {model: convnet-w8-d1, epochs: 1}\nseeds: 1\ndevice: cpu\n"
        "feature_duplication: false\n"
    )
    status, _, err = _cli(capsys, "run", tmp_path / "exp.yaml", "--quiet")
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "(2 files)" in err and str(tmp_path / "th" / "hub" / "checkpoints") in err
    assert "resnet18-f37072fd.pth (resnet18-imagenet)" in err and "mobilenet_v2-b0353104.pth (mobilenetv2-imagenet)" in err
    assert not (tmp_path / "run").exists()
    # (10-class weights under torchvision's names: pretrained teachers of the data's own classes)
    _cache_weights(tmp_path / "th", "resnet18-imagenet", "resnet18-f37072fd.pth", num_classes=10)
    _cache_weights(tmp_path / "th", "mobilenetv2-imagenet", "mobilenet_v2-b0353104.pth", num_classes=10)
    with pytest.warns(UserWarning, match="stem conv"):
        status, stdout, err = _cli(capsys, "run", tmp_path / "exp.yaml")
    assert status == 0, err
    [line] = [l for l in err.splitlines() if l.startswith("teachers: ")]
    assert line.startswith("teachers: resnet18-imagenet (pretrained, accuracy not measured), "
                           "mobilenetv2-imagenet (pretrained, accuracy not measured), convnet-w8-d1 ")
    assert line.endswith("%")


def test_every_config_is_checked_once_where_it_is_made(tmp_path, monkeypatch, capsys, one_thread):
    """Validated once, at the edge: through the commands (a run's YAML with teacher training,
    INFER, SRe2L, students and scores; distill of SRe2L and RDED; train; evaluate under
    DD-Ranking's protocol), every config object and distill request is checked exactly once,
    when it is made: no layer it is handed to checks it again (a method's options too: one
    Method.check_options per distill command)."""
    import collections

    from infer_fast.dd_ranking import DDRankingProtocol
    from infer_fast.distill.config import RecoveryConfig
    from infer_fast.evaluate import Protocol
    from infer_fast.methods import DistillRequest, Method
    from infer_fast.run_config import PipelineConfig
    from infer_fast.student import StudentConfig
    from infer_fast.teacher import TeacherConfig

    checks, seen = collections.Counter(), []
    for cls in (PipelineConfig, TeacherConfig, RecoveryConfig, StudentConfig, Protocol, DDRankingProtocol,
                DistillRequest):
        def counted(self, *args, _validate=cls.validate, **kwargs):
            checks[id(self)] += 1
            seen.append(self)  # (kept alive: an id is never reused by another config)
            return _validate(self, *args, **kwargs)
        monkeypatch.setattr(cls, "validate", counted)
    (tmp_path / "exp.yaml").write_text(
        f"dataset: fashion-mnist-mini\nout: {tmp_path / 'run'}\n"
        "teachers:\n  - {model: convnet-w8-d2, epochs: 1, batch_size: 256, lr: 0.05}\n"
        "ipc: 2\nmethods: [infer, sre2l]\nrecovery: {iterations: 2}\nsre2l: {iterations: 2}\n"
        "student: {model: convnet-w8-d2, epochs: 1}\nseeds: 1\ndevice: cpu\nfeature_duplication: false\n"
        "scores: true\n")
    status, _, err = _cli(capsys, "run", tmp_path / "exp.yaml", "--quiet")
    assert status == 0, err
    teacher = tmp_path / "run" / "teachers" / "teacher0-convnet-w8-d2.pt"
    option_checks = []
    monkeypatch.setattr(Method, "check_options", lambda self, *a, _check=Method.check_options, **k:
                        option_checks.append(self.name) or _check(self, *a, **k))
    status, _, err = _cli(capsys, "distill", "--dataset", "fashion-mnist-mini", "--method", "sre2l", "--teachers",
                          teacher, "--ipc", "1", "--iterations", "1", "--out", tmp_path / "set", "--quiet")
    assert status == 0, err
    status, _, err = _cli(capsys, "distill", "--dataset", "fashion-mnist-mini", "--method", "rded", "--teachers",
                          teacher, "--ipc", "1", "--candidates-per-class", "4", "--crops-per-image", "2", "--out",
                          tmp_path / "rded", "--quiet")
    assert status == 0, err
    assert option_checks == ["sre2l", "rded"]
    status, _, err = _cli(capsys, "train", tmp_path / "set", "--teachers", teacher, "--dynamic", "--model",
                          "convnet-w8-d2", "--epochs", "1", "--quiet")
    assert status == 0, err
    status, _, err = _cli(capsys, "evaluate", tmp_path / "set", "--teachers", teacher, "--full-data-checkpoint",
                          teacher, "--model", "convnet-w8-d2", "--protocol", "dd-ranking", "--seeds", "1", "--epochs",
                          "1", "--test-interval", "1", "--lr-grid", "0.01", "--device", "cpu", "--quiet")
    assert status == 0, err
    assert {type(c).__name__ for c in seen} == {"PipelineConfig", "TeacherConfig", "RecoveryConfig", "StudentConfig",
                                                "Protocol", "DDRankingProtocol", "DistillRequest"}
    twice = [c for c in seen if checks[id(c)] > 1]
    assert not twice, f"checked again after it was made: {twice[0]!r}"


@pytest.mark.parametrize("args, message", [
    (("teacher", "--dataset", "fashion-mnist-mini", "--lr", "inf", "--out", "{out}"), "argument --lr: must be a finite number, got inf"),
    (("teacher", "--dataset", "fashion-mnist-mini", "--momentum", "nan", "--out", "{out}"), "argument --momentum: must be a finite number"),
    (("teacher", "--dataset", "fashion-mnist-mini", "--momentum", "1.5", "--out", "{out}"), "argument --momentum: must be in [0, 1)"),
    (("distill", "--dataset", "fashion-mnist-mini", "--teachers", "{out}.pt", "--ipc", "2", "--out", "{out}", "--r-bn",
      "nan"), "argument --r-bn: must be a finite number"),
    (("train", "{out}", "--temperature", "inf"), "argument --temperature: must be a finite number, got inf"),
], ids=["teacher-lr-inf", "teacher-momentum-nan", "teacher-momentum-range", "distill-r-bn-nan", "train-temperature-inf"])
def test_non_finite_numbers_refused_before_work(capsys, tmp_path, args, message):
    """inf and nan learning rates, momenta and temperatures used to train a dead model and print
    a table (exit 0): refused in one line naming the option, nothing written."""
    out = tmp_path / "out"
    status, _, err = _cli(capsys, *(a.format(out=out) for a in args))
    assert status != 0 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (("distill", "--dataset", "fashion-mnist-mini", "--method", "random", "--ipc", "2", "--out", "{out}", "--teachers",
      "t.pt", "--iterations", "5"), "--iterations, --teachers do not apply to --method random"),
    (("distill", "--dataset", "fashion-mnist-mini", "--method", "random", "--ipc", "2", "--out", "{out}", "--resume"),
     "--resume does not apply to --method random"),
    (("train", "{out}", "--teachers", "t.pt"), "--teachers applies with --dynamic"),
], ids=["random-teachers-iterations", "random-resume", "train-teachers-without-dynamic"])
def test_options_that_do_not_apply_are_refused(capsys, tmp_path, args, message):
    """Options the command would ignore are refused by name (a user would think they took effect)."""
    out = tmp_path / "out"
    status, _, err = _cli(capsys, *(a.format(out=out) for a in args))
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (("distill", "--dataset", "fashion-mnist-mini", "--method", "rded", "--factor", "x"),
     "infer-fast distill: error: argument --factor: invalid int value: 'x' (see `infer-fast distill --help`)"),
    (("distill", "--method", "nope"), "infer-fast distill: error: argument --method: invalid choice: 'nope'"),
    (("train", "--epochs", "2.5"), "infer-fast train: error: argument --epochs: invalid int value: '2.5'"),
    (("models", "--bogus"), "infer-fast models: error: unrecognized arguments: --bogus (see `infer-fast models --help`)"),
    ((), "infer-fast: error: the following arguments are required: COMMAND"),
], ids=["typed-method-flag", "unknown-choice", "int-flag", "unknown-flag", "no-command"])
def test_usage_errors_are_one_line(capsys, args, message):
    """argparse's own errors (a flag's type or choice, an unknown flag) are one line like every
    other error, status 2 (returned by main: a notebook's main([...]) gets no SystemExit), without
    the usage block (--help shows it)."""
    status, _, err = _cli(capsys, *args)
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_non_finite_number_in_a_yaml_config_refused(capsys, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("dataset: fashion-mnist-mini\nipc: [2]\nmethods: [random]\nstudent: {lr: .inf}\n"
                      "teachers: [{model: convnet-w8-d2, epochs: 1}]\n"
                      f"out: {tmp_path / 'out'}\n")
    status, _, err = _cli(capsys, "run", config)
    assert status != 0 and "lr must be a finite number, got inf" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, message", [
    ("dataset: fashion-mnist-mini\nseeds: 0\nseeds: 1\n", "line 3, column 1: key 'seeds' given twice (first on line 2)"),
    ("dataset: fashion-mnist-mini\nstudent: {lr: 1, lr: 2}\n", "key 'lr' given twice"),
    ("dataset: [fashion-mnist-mini\nseeds: 1\n", "line 2, column 6: expected ',' or ']'"),
    (b"\xff\xfe\x00binary", "is not a UTF-8 text file"),
    ("dataset: a\x00b\n", "unacceptable character"),
], ids=["duplicated-key", "duplicated-nested-key", "parse-error", "binary", "control-character"])
def test_bad_yaml_config_is_one_line_naming_the_file(capsys, tmp_path, content, message):
    config = tmp_path / "run.yaml"
    config.write_bytes(content if isinstance(content, bytes) else content.encode())
    status, _, err = _cli(capsys, "run", config)
    assert status == 2 and message in err and str(config) in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("ipc", ["a,b", "10,x", "10,,50", "0", "-5", ""])
def test_run_ipc_that_is_not_positive_integers_is_one_line_naming_it(capsys, tmp_path, ipc):
    """`run --ipc a,b` said only "invalid literal for int()": now the option and its value,
    before the run directory is made."""
    config = tmp_path / "run.yaml"
    config.write_text(f"dataset: fashion-mnist-mini\nteachers: [{{model: convnet-w8-d1}}]\nout: {tmp_path / 'out'}\n"
                      "device: tpu\n")  # (an ipc taken would not start a run: the config is refused next)
    status, _, err = _cli(capsys, "run", config, f"--ipc={ipc}")
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--ipc takes comma-separated positive integers (e.g. 10,50), got {ipc!r}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml"]
