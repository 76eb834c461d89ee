"""The infer-fast command line: subcommands, YAML configs with overrides, one-line errors."""
import os
import subprocess
import sys

import pytest
import torch


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


def test_models_and_datasets_listed():
    models = run_cli("models")
    assert models.returncode == 0 and "resnet18" in models.stdout and "convnet" in models.stdout
    datasets = run_cli("datasets")
    assert datasets.returncode == 0 and "fashion-mnist-mini" in datasets.stdout and "cifar100" in datasets.stdout


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


def test_teacher_from_yaml_with_override_then_resume_message(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "dataset: fashion-mnist-mini\nmodel: convnet-w8-d2\nepochs: 5\nbatch_size: 256\nlr: 0.05\n"
    )
    result = run_cli("teacher", "--config", "c.yaml", "--epochs", "1", "--out", "t.pt", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout and "after 1 epochs" in result.stdout
    ckpt = torch.load(tmp_path / "t.pt", weights_only=True)
    assert ckpt["config"]["epochs"] == 1 and ckpt["config"]["batch_size"] == 256
    again = run_cli("teacher", "--config", "c.yaml", "--epochs", "1", "--out", "t.pt", "--quiet", cwd=tmp_path)
    assert again.returncode == 0 and "already trained" in again.stdout


def test_inspect_and_export_a_distilled_set(tmp_path):
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
    result = run_cli("inspect", str(tmp_path / "set"))
    assert result.returncode == 0, result.stderr
    assert "compression" in result.stdout.lower()
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == ["manifest.json", "natural.safetensors", "ufc.safetensors"]
    result = run_cli("inspect", str(tmp_path / "set"), "--preview", str(tmp_path / "grid.png"))
    assert result.returncode == 0 and "preview:" in result.stdout, result.stderr
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    exported = run_cli("export", str(tmp_path / "set"), "--to", "imagefolder", str(tmp_path / "out"))
    assert exported.returncode == 0, exported.stderr
    pngs = list((tmp_path / "out").rglob("*.png"))
    assert len(pngs) == k * c + g * c


def test_distill_relabel_train_chain(tmp_path):
    """teacher -> distill (INFER and random) -> relabel -> train, all from the command line."""
    def ok(*args):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return result.stdout

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
    wrong = run_cli("distill", "--dataset", "fashion-mnist-mini", "--method", "sre2l", "--ipc", "2", "--out", "y", cwd=tmp_path)
    assert wrong.returncode == 2 and "--teachers" in wrong.stderr
    again = run_cli("distill", "--dataset", "fashion-mnist-mini", "--teachers", "t.pt", "--ipc", "1", "--out", "x", cwd=tmp_path)
    assert again.returncode == 2 and "ipc" in again.stderr and "Traceback" not in again.stderr


def _ok(*args, cwd):
    """The CLI's stdout; its exit status must be 0."""
    result = run_cli(*args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _tiny_teacher(cwd) -> None:
    _ok("teacher", "--dataset", "fashion-mnist-mini", "--model", "convnet-w8-d2", "--epochs", "1",
        "--batch-size", "256", "--lr", "0.05", "--out", "t.pt", "--quiet", cwd=cwd)


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


def test_distill_killed_with_sigkill_resumes_to_the_same_result(tmp_path):
    """A distillation killed (SIGKILL) after some UFCs were checkpointed continues with
    --resume and ends with the same compensators as an uninterrupted run."""
    from infer_fast.storage import load_distilled

    _tiny_teacher(tmp_path)
    args = ["distill", "--dataset", "fashion-mnist-mini", "--teachers", "t.pt", "--ipc", "5", "--iterations", "150",
            "--group-size", "1", "--quiet"]  # K = 4 UFCs, one batch each
    _ok(*args, "--out", "reference", cwd=tmp_path)
    checkpoint = tmp_path / "killed.recovery.pt"
    done = _sigkill_once_checkpointed([*args, "--out", "killed"], tmp_path, checkpoint)["ufc_index"].numel()
    assert 1 <= done < 4
    refused = run_cli(*args, "--out", "killed", cwd=tmp_path)
    assert refused.returncode == 2 and "resume" in refused.stderr
    _ok(*args, "--out", "killed", "--resume", cwd=tmp_path)
    reference, resumed = load_distilled(tmp_path / "reference"), load_distilled(tmp_path / "killed")
    assert torch.equal(resumed.ufc, reference.ufc)  # the same batches as the uninterrupted run: the same bits
    assert torch.equal(resumed.natural, reference.natural) and not checkpoint.exists()


def test_distill_killed_with_sigkill_inside_a_batch_resumes_bit_identically(tmp_path):
    """One batch holds all 4 UFCs and is checkpointed every 10 iterations: killed (SIGKILL) inside
    it, as soon as its checkpoint of iteration 70 is on disk (the test-only
    jobs.SIGKILL_AFTER_CHECKPOINT_ENV: the kill lands there on any machine, never by chance), the
    run continues with --resume from that iteration, says so, and ends with exactly
    (torch.equal) the compensators of an uninterrupted run."""
    import signal

    from infer_fast.distill.jobs import SIGKILL_AFTER_CHECKPOINT_ENV
    from infer_fast.storage import load_distilled

    _tiny_teacher(tmp_path)
    args = ["distill", "--dataset", "fashion-mnist-mini", "--teachers", "t.pt", "--ipc", "5", "--iterations", "150",
            "--group-size", "4", "--quiet"]  # K = 4 UFCs, all in one batch
    _ok(*args, "--out", "reference", cwd=tmp_path)
    killed = [*args, "--checkpoint-every", "10", "--out", "killed"]
    result = run_cli(*killed, cwd=tmp_path, env={SIGKILL_AFTER_CHECKPOINT_ENV: "70"})
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert not (tmp_path / "killed").exists()
    checkpoint = tmp_path / "killed.recovery.pt"
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["ufc_index"].numel() == 0  # the batch never finished: all that was saved is inside it
    (partial,) = saved["partials"]
    assert partial["k"] == [0, 1, 2, 3] and partial["iteration"] == 70
    out = _ok(*killed, "--resume", cwd=tmp_path)  # (--quiet: the resume report is printed all the same)
    assert ("resuming, 0/4 infer jobs already recovered; "
            "teacher 0 batch k=0..3 continues at iteration 70/150") in out
    reference, resumed = load_distilled(tmp_path / "reference"), load_distilled(tmp_path / "killed")
    assert torch.equal(resumed.ufc, reference.ufc) and torch.equal(resumed.natural, reference.natural)
    assert not checkpoint.exists()
