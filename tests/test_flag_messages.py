"""A bad flag value is refused in the user's terms: argparse's one line naming the flag as typed
(``argument --group-size: must be a positive integer, got 0``), before any command runs; the
same value in a config file names the file and its key; a config made in Python names the field."""
import pytest

from infer_fast.cli import main
from infer_fast.distill.config import RecoveryConfig

DISTILL = ["distill", "--dataset", "fashion-mnist", "--teachers", "missing.pt", "--ipc", "1"]


@pytest.mark.parametrize("flag, value, said", [
    ("--group-size", "0", "argument --group-size: must be a positive integer, got 0"),
    ("--chunk-size", "-1", "argument --chunk-size: must be a positive integer, got -1"),
    ("--lr", "-1", "argument --lr: must be positive, got -1.0"),
    ("--lr", "1e40", "argument --lr: must be a finite number within float32's range"),
    ("--r-bn", "-2", "argument --r-bn: must be >= 0, got -2.0"),
    ("--checkpoint-every", "0", "argument --checkpoint-every: must be a positive integer, got 0"),
    ("--crop-scale", "2,1", "argument --crop-scale: must be two values with 0 < low <= high <= 1, got [2, 1]"),
    ("--betas", "1,2", "argument --betas: must be two values in [0, 1), got [1, 2]"),
    ("--betas", "0.5", "argument --betas: must be two values in [0, 1), got [0.5]"),
])
def test_a_bad_distill_flag_is_named_as_typed(tmp_path, capsys, flag, value, said):
    assert main([*DISTILL, "--out", str(tmp_path / "set"), flag, value]) == 2
    err = capsys.readouterr().err
    assert f"infer-fast distill: error: {said}" in err and len(err.strip().splitlines()) == 1
    assert "None" not in err
    assert not (tmp_path / "set").exists()  # (refused while parsing: nothing made)


@pytest.mark.parametrize("command", [["train", "somewhere"], ["evaluate", "somewhere", "--teachers", "t.pt"],
                                     ["teacher", "--dataset", "fashion-mnist", "--out", "t.pt"]])
def test_the_student_and_teacher_flags_too(capsys, command):
    assert main([*command, "--epochs", "0"]) == 2
    assert "argument --epochs: must be a positive integer, got 0" in capsys.readouterr().err


def test_off_and_choices_are_still_the_flags_own(tmp_path, capsys):
    """"off" is a value of a cadence flag, and a bad choice keeps argparse's list of choices."""
    assert main([*DISTILL, "--out", str(tmp_path / "set"), "--checkpoint-every", "off"]) == 2
    assert "missing.pt" in capsys.readouterr().err  # (got past the flags: the teacher is missing)
    assert main([*DISTILL, "--out", str(tmp_path / "set"), "--method", "nope"]) == 2
    assert "argument --method: invalid choice: 'nope'" in capsys.readouterr().err


def test_a_config_file_names_its_key_and_python_the_field(tmp_path, capsys):
    config = tmp_path / "d.yaml"
    config.write_text("group_size: 0\n")
    assert main([*DISTILL, "--out", str(tmp_path / "set"), "--config", str(config)]) == 2
    assert f"config file '{config}': group_size must be a positive integer or None (automatic), got 0" \
        in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"^betas must be two values in \[0, 1\), got \(1, 2\)$"):
        RecoveryConfig(betas=(1, 2))
    with pytest.raises(ValueError, match=r"^crop_scale must be two values"):
        RecoveryConfig(crop_scale=(0.5,))


def test_a_conflict_of_two_flags_names_both_flags(tmp_path, capsys):
    assert main([*DISTILL, "--out", str(tmp_path / "set"), "--chunk-size", "8", "--fused-bn"]) == 2
    assert "fused_bn (--fused-bn) does not apply with chunk_size (--chunk-size)" in capsys.readouterr().err
