"""An option given explicitly that the command would not use is refused, naming it (a user
would think it took effect), and the CLI's messages name its flags, not the API's keywords."""
import pytest


def _cli(capsys, *args):
    """(exit status, stdout, stderr) of the CLI run in this process."""
    from infer_fast.cli import main

    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def random_set(tmp_path, capsys):
    """A random set of fashion-mnist-mini at ipc 1 (hard labels only: not relabelled)."""
    out = tmp_path / "set"
    status, _, err = _cli(capsys, "distill", "--method", "random", "--dataset", "fashion-mnist-mini", "--ipc", "1",
                          "--out", out, "--quiet")
    assert status == 0, err
    return out


@pytest.mark.parametrize("args,named", [
    (("--labels", "hard", "--temperature", "5"), "temperature (--temperature) does not apply with hard labels"),
    (("--labels", "hard", "--mix", "none", "--mixup-alpha", "0.5"), "mixup_alpha (--mixup-alpha) does not apply"),
    (("--labels", "hard", "--patches", "2"), "patches (--patches) does not apply with an augmentation other"),
])
def test_train_refuses_a_student_option_it_would_not_use(random_set, capsys, args, named):
    status, _, err = _cli(capsys, "train", random_set, "--epochs", "1", *args)
    assert status == 2 and len(err.strip().splitlines()) == 1 and named in err


def test_train_takes_the_options_it_uses(random_set, capsys):
    status, stdout, err = _cli(capsys, "train", random_set, "--epochs", "1", "--labels", "hard", "--mix", "cutmix",
                               "--mixup-alpha", "1.0", "--augmentation", "shuffle_patches_crop_flip", "--patches", "2")
    assert status == 0, err
    assert "final top-1" in stdout
    # (the student's summary, a progress line on stderr: not "INFER+Dyn", not "static labels")
    assert "(hard labels, shuffle_patches_crop_flip + cutmix)" in err


def test_an_unrelabelled_set_names_the_flags_that_train_it(random_set, capsys):
    status, _, err = _cli(capsys, "train", random_set, "--epochs", "1")
    assert status == 2 and "infer-fast relabel" in err and "--labels hard" in err and "hard_only=True" in err


def test_recovery_refuses_crop_scale_without_the_crops():
    from infer_fast.distill import recovery_config

    with pytest.raises(ValueError, match=r"crop_scale \(--crop-scale\) does not apply with augmentation='roll'"):
        recovery_config({"crop_scale": (0.5, 1.0)})
    assert recovery_config({"augmentation": "imagenet", "crop_scale": (0.5, 1.0)}).crop_scale == (0.5, 1.0)
    assert recovery_config({"augmentation": "roll"}).crop_scale == (0.08, 1.0)  # (not given: its default, unused)


def test_distill_refuses_crop_scale_with_the_roll_augmentation(tmp_path, capsys):
    status, _, err = _cli(capsys, "distill", "--dataset", "fashion-mnist-mini", "--teachers", tmp_path / "t.pt",
                          "--ipc", "2", "--crop-scale", "[0.5, 1.0]", "--out", tmp_path / "s")
    assert status == 2 and "crop_scale (--crop-scale) does not apply" in err and not (tmp_path / "s").exists()


def test_evaluate_refuses_full_data_epochs_with_a_checkpoint_and_an_empty_lr_grid(random_set, tmp_path, capsys):
    base = ("evaluate", random_set, "--teachers", tmp_path / "t.pt")
    status, _, err = _cli(capsys, *base, "--full-data-checkpoint", tmp_path / "t.pt", "--full-data-epochs", "3")
    assert status == 2 and "--full-data-epochs" in err and "--full-data-checkpoint" in err
    status, _, err = _cli(capsys, *base, "--protocol", "dd-ranking", "--lr-grid", "")
    assert status == 2 and "--lr-grid takes comma-separated positive numbers" in err


@pytest.mark.parametrize("flag", ["--methods", "--teachers"])
def test_run_refuses_an_empty_list(tmp_path, capsys, flag):
    config = tmp_path / "exp.yaml"
    config.write_text(f"dataset: fashion-mnist-mini\nout: {tmp_path / 'run'}\nteachers: [{{path: t.pt}}]\n"
                      "ipc: 1\nmethods: [random]\n")
    status, _, err = _cli(capsys, "run", config, flag, "")
    assert status == 2 and f"{flag} is empty" in err and not (tmp_path / "run").exists()


def test_an_existing_recovery_checkpoint_names_the_resume_flag(tmp_path):
    from infer_fast.distill import RecoveryConfig
    from infer_fast.distill.checkpoints import CheckpointStore

    base = tmp_path / "s.recovery.pt"
    base.write_bytes(b"")  # (its content is not read before the refusal)
    with pytest.raises(ValueError, match=r"exists: run the same command with --resume \(resume=True from Python\) to continue it"):
        CheckpointStore.open(base, {}, RecoveryConfig(), resume=False, split_jobs=False)


def test_a_decode_cache_for_a_dataset_of_arrays_is_refused(random_set, tmp_path, capsys):
    status, _, err = _cli(capsys, "train", random_set, "--epochs", "1", "--labels", "hard",
                          "--decode-cache", tmp_path / "cache")
    assert status == 2 and "--decode-cache applies to datasets read from image files" in err
    assert "fashion-mnist-mini is read from arrays" in err and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("where,message", [
    ("{set}/manifest.json", "--preview takes a .png file"),
    ("{set}/preview.png", "is inside the set"),
    ("", "--preview takes a .png file"),
])
def test_inspect_writes_its_preview_outside_the_set_only(random_set, capsys, where, message):
    manifest = (random_set / "manifest.json").read_bytes()
    status, out, err = _cli(capsys, "inspect", random_set, "--preview", where.format(set=random_set))
    assert status == 2 and message in err and not out  # (refused before the report)
    assert (random_set / "manifest.json").read_bytes() == manifest and not (random_set / "preview.png").exists()


def test_inspect_writes_a_preview_beside_the_set(random_set, tmp_path, capsys):
    status, out, err = _cli(capsys, "inspect", random_set, "--preview", tmp_path / "grid.png")
    assert status == 0, err
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_cadence_turned_off_on_the_command_line(tmp_path, capsys):
    """--checkpoint-minutes off: no time-based checkpoints (None), as `null` in a config file (the
    flag took only numbers, "invalid float value: 'off'"); the help says so; other words refused."""
    from infer_fast.cli import build_parser
    from infer_fast.config import merge
    from infer_fast.options import OFF

    args = build_parser().parse_args(["distill", "--checkpoint-minutes", "off", "--checkpoint-every", "5"])
    assert args.checkpoint_minutes is OFF
    assert merge(args, None, ["checkpoint_minutes", "checkpoint_every"]) == {"checkpoint_minutes": None,
                                                                             "checkpoint_every": 5}
    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args(["distill", "--checkpoint-minutes", "of"])
    assert refused.value.code == 2 and "--checkpoint-minutes: invalid float value: 'of'" in capsys.readouterr().err
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["distill"].format_help().split())
    assert "(default 10.0; off: never)" in help_text
