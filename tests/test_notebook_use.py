"""What a notebook does that a command does not: it changes directory while a loaded split is
held in a variable, and it calls the command line's main([...]) for its exit status."""
import pytest
import torch
from test_data_quirk_fixes import imagenet_tree

from infer_fast.cli import main
from infer_fast.data import load_dataset


def test_a_split_loaded_from_a_relative_root_reads_its_files_after_a_change_of_directory(tmp_path, monkeypatch):
    imagenet_tree(tmp_path / "imgs", classes=("n01", "n02"), train_per_class=2, val_per_class=1)
    # the same layout under the next directory, other pixels: a split that re-resolved its
    # paths there would read these without any error
    imagenet_tree(tmp_path / "other" / "imgs", classes=("n01", "n02"), train_per_class=2, val_per_class=1)
    for path in (tmp_path / "other" / "imgs").rglob("*.JPEG"):
        path.write_bytes((tmp_path / "imgs" / "train" / "n02" / "n02_0.JPEG").read_bytes())
    monkeypatch.chdir(tmp_path)
    split = load_dataset({"name": "imagefolder", "image_size": 8, "in_memory": False}, "train", data_root="imgs")
    before = split.images_at(torch.arange(len(split)))
    monkeypatch.chdir(tmp_path / "other")  # (a notebook's %cd)
    assert torch.equal(split.images_at(torch.arange(len(split))), before)


@pytest.mark.parametrize("argv, status", [(["--version"], 0), (["distill", "--help"], 0),
                                          (["distill", "--ipc", "abc"], 2), (["no-such-command"], 2)])
def test_main_returns_the_status_of_argparse_endings(argv, status, capsys):
    assert main(argv) == status  # (not SystemExit: a notebook cell shows no "To exit: use 'exit'" block)
    if status:
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
