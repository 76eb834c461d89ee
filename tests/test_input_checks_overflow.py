"""Finite values a user may type that float32 or int64 cannot hold: refused in one line
naming the option, before any work (not an "internal error" from torch later)."""
import pytest

from infer_fast import cli

HUGE_INT = "99999999999999999999999"


@pytest.mark.parametrize("argv, message", [
    (("teacher", "--dataset", "fashion-mnist-mini", "--epochs", "2", "--lr", "1e39", "--out", "t.pt"),
     "argument --lr: must be a finite number within float32's range (|x| <= 3.40282e+38), got 1e+39"),
    (("teacher", "--dataset", "fashion-mnist-mini", "--weight-decay", "1e39", "--out", "t.pt"),
     "argument --weight-decay: must be a finite number within float32's range"),
    (("teacher", "--dataset", "fashion-mnist-mini", "--seed", HUGE_INT, "--out", "t.pt"),
     f"argument --seed: must be an integer from -9223372036854775808 to 9223372036854775807 (a 64-bit integer), got {HUGE_INT}"),
    (("distill", "--dataset", "fashion-mnist-mini", "--teachers", "t.pt", "--ipc", "2", "--lr", "1e39", "--out", "s"),
     "argument --lr: must be a finite number within float32's range"),
    (("distill", "--dataset", "fashion-mnist-mini", "--teachers", "t.pt", "--ipc", "2", "--iterations", HUGE_INT,
      "--out", "s"), f"argument --iterations: must be a positive integer, at most 9223372036854775807 (a 64-bit integer), got "
                     f"{HUGE_INT}"),
    (("distill", "--dataset", "fashion-mnist-mini", "--teachers", "t.pt", "--ipc", "2", "--max-shift", HUGE_INT,
      "--out", "s"), "argument --max-shift: must be an integer >= 0, at most 9223372036854775807"),
    (("distill", "--dataset", "fashion-mnist-mini", "--method", "random", "--ipc", "1", "--seed", HUGE_INT,
      "--out", "s"), "argument --seed: must be an integer from -9223372036854775808 to 9223372036854775807"),
    (("train", "no-set", "--lr", "1e39"), "argument --lr: must be a finite number within float32's range"),
])
def test_values_beyond_float32_or_int64_are_refused_naming_the_option(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert "internal error" not in err and list(tmp_path.iterdir()) == []
