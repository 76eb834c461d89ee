"""Folder datasets whose quirks were passed over without a word, or hung the process:

- a file that does not decode in a split decoded by DataLoader workers: one clean error, then
  the process exits (the workers ignore SIGTERM, so workers left running hung the exit);
- a class without its folder (ImageNet's val, Tiny-ImageNet's train and class-folder val, an
  image folder's test split): refused, not trained or evaluated on the other classes;
- Tiny-ImageNet's images beside ``images/``, a file listed twice in ``val_annotations.txt``, an
  image of ``val/images`` not listed, a class the annotations give no image: refused;
- a symbolic link whose target is missing: refused as a missing file, not skipped.
"""
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infer_fast.data import load_dataset
from infer_fast.data.sets import MIN_IMAGES_FOR_WORKERS

REPO = Path(__file__).resolve().parents[1]
EXIT_LIMIT_S = 60  # (a hang is what is tested: the run itself takes a few seconds)


def write_images(folder: Path, names, seed: int = 0) -> None:
    """8x8 RGB JPEGs ``folder/<name>`` (tiny: the tests are about the trees, not the pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / name, quality=90)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def imagenet_tree(root: Path, classes=("n01", "n02", "n03", "n04"), train_per_class: int = 2,
                  val_per_class: int = 2) -> Path:
    for k, wnid in enumerate(classes):
        write_images(root / "train" / wnid, [f"{wnid}_{i}.JPEG" for i in range(train_per_class)], seed=k)
        write_images(root / "val" / wnid, [f"val_{k}_{i}.JPEG" for i in range(val_per_class)], seed=10 + k)
    return root


def tiny_tree(root: Path, classes=("n03", "n01", "n02"), val_form: str = "annotated") -> Path:
    """A small tiny-imagenet-200/ (wnids.txt unsorted, as the real one) with val in the
    official ``images/`` + ``val_annotations.txt`` form, or as class folders."""
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in classes))
    lines = []
    for k, wnid in enumerate(classes):
        write_images(base / "train" / wnid / "images", [f"{wnid}_{i}.JPEG" for i in range(2)], seed=k)
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        names = [f"val_{k * 2 + i}.JPEG" for i in range(2)]
        if val_form == "annotated":
            write_images(base / "val" / "images", names, seed=10 + k)
            lines += [f"{name}\t{wnid}\t0\t0\t7\t7\n" for name in names]
        else:
            write_images(base / "val" / wnid / "images", names, seed=10 + k)
    if lines:
        (base / "val" / "val_annotations.txt").write_text("".join(lines))
    return base


def tiny(root: Path, split: str):
    return load_dataset({"name": "tiny-imagenet", "num_classes": 3, "image_size": 8}, split, data_root=str(root),
                        num_workers=0)


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=EXIT_LIMIT_S)


# ---- a decode error in worker processes ---------------------------------------------------------

def test_a_truncated_image_decoded_by_workers_fails_in_one_line_and_the_command_exits(tmp_path):
    """`infer-fast teacher` on a training split large enough for worker processes, one JPEG of it
    truncated: the one-line error and status 2, within the time limit (it used to print the line,
    then wait forever on the workers at the interpreter's exit)."""
    per_class = MIN_IMAGES_FOR_WORKERS // 2 + 1  # (the split's size decides the workers: no knob to set)
    root = imagenet_tree(tmp_path / "data", classes=("n01", "n02"), train_per_class=per_class, val_per_class=1)
    bad = root / "train" / "n02" / "n02_7.JPEG"
    truncate(bad)
    (tmp_path / "teacher.yaml").write_text(
        "dataset: {name: imagenet, num_classes: 2, image_size: 8}\nmodel: convnet-w8-d2\nepochs: 1\n"
        "batch_size: 8\ndevice: cpu\n")
    code = f"""
        import multiprocessing, sys
        multiprocessing.set_start_method("fork")  # (MIN_IMAGES_FOR_WORKERS is the forked threshold; 3.14 forkservers)
        from infer_fast.cli import main
        sys.exit(main(["teacher", "--config", "teacher.yaml", "--data-root", {str(root)!r}, "--out", "t.pt", "--quiet"]))
    """
    try:
        proc = run_python(code, tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the command did not exit within {EXIT_LIMIT_S} s of the decode error (its workers left running)")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("infer-fast teacher: error: cannot decode image "), proc.stderr
    assert str(bad) in lines[0]


def test_a_worker_error_shuts_the_workers_down_before_it_reaches_the_caller(tmp_path):
    """The error kept (a log, a retry list) keeps the iterator's frame: its workers are gone all
    the same, not left to garbage collection."""
    root = imagenet_tree(tmp_path / "data", classes=("n01", "n02"), val_per_class=3)
    truncate(root / "val" / "n02" / "val_1_1.JPEG")
    split = load_dataset({"name": "imagenet", "num_classes": 2, "image_size": 8}, "test", data_root=str(root),
                         in_memory=False)
    before = set(multiprocessing.active_children())
    with pytest.raises(ValueError, match="cannot decode image .*val_1_1.JPEG") as caught:
        for _ in split.batches(2, num_workers=2):
            pass
    assert caught.value.__traceback__ is not None  # (held here, with the frames)
    assert set(multiprocessing.active_children()) == before


def test_workers_of_batches_a_failed_consumer_still_holds_are_shut_down_at_exit(tmp_path):
    """A consumer that fails between two batches keeps the generator (its traceback holds it):
    the interpreter's exit shuts the workers down instead of waiting on them forever."""
    root = imagenet_tree(tmp_path / "data", classes=("n01", "n02"), val_per_class=3)
    code = f"""
        from infer_fast.data import load_dataset
        split = load_dataset({{"name": "imagenet", "num_classes": 2, "image_size": 8}}, "test",
                             data_root={str(root)!r}, in_memory=False)
        def consume():
            batches = split.batches(2, num_workers=2)
            for images, labels in batches:
                raise RuntimeError("the consumer failed")
        try:
            consume()
        except RuntimeError as exc:
            kept = exc
        print("done")
    """
    try:
        proc = run_python(code, tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the interpreter did not exit within {EXIT_LIMIT_S} s (the workers left running)")
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr


# ---- a class without its folder ----------------------------------------------------------------

def test_imagenet_val_missing_a_class_folder_is_refused(tmp_path):
    root = imagenet_tree(tmp_path)
    dataset = {"name": "imagenet", "num_classes": 4, "image_size": 8}
    assert len(load_dataset(dataset, "test", data_root=str(root), num_workers=0)) == 8
    shutil.rmtree(root / "val" / "n02")
    with pytest.raises(ValueError, match=rf"val has no folder for 1 of the 4 classes of .*{os.sep}train: n02 "):
        load_dataset(dataset, "test", data_root=str(root), num_workers=0)


def test_tiny_imagenet_train_missing_a_class_listed_in_wnids_is_refused(tmp_path):
    base = tiny_tree(tmp_path)
    assert tiny(tmp_path, "train").class_counts().tolist() == [2, 2, 2]
    shutil.rmtree(base / "train" / "n03")
    with pytest.raises(ValueError, match=r"train has no folder for 1 of the 3 classes listed in .*wnids.txt: n03 "):
        tiny(tmp_path, "train")


def test_tiny_imagenet_class_folder_val_missing_a_class_is_refused(tmp_path):
    base = tiny_tree(tmp_path, val_form="folders")
    assert tiny(tmp_path, "test").class_counts().tolist() == [2, 2, 2]
    shutil.rmtree(base / "val" / "n01")
    with pytest.raises(ValueError, match=r"val has no folder for 1 of the 3 classes listed in .*wnids.txt: n01 "):
        tiny(tmp_path, "test")


def test_tiny_imagenet_annotations_without_a_class_are_refused(tmp_path):
    base = tiny_tree(tmp_path)
    annotations = base / "val" / "val_annotations.txt"
    kept = [line for line in annotations.read_text().splitlines(True) if "\tn02\t" not in line]
    annotations.write_text("".join(kept))
    for name in ("val_4.JPEG", "val_5.JPEG"):  # (n02's: the folder and the file agree, n02 has no val image)
        (base / "val" / "images" / name).unlink()
    with pytest.raises(ValueError, match=r"val_annotations.txt lists no image of 1 of the 3 classes listed in "
                                         r".*wnids.txt: n02 "):
        tiny(tmp_path, "test")


def test_image_folder_test_split_missing_a_class_folder_is_refused(tmp_path):
    for k, name in enumerate(("cat", "dog", "eel")):
        write_images(tmp_path / "train" / name, ["0.png", "1.png"], seed=k)
        if name != "dog":
            write_images(tmp_path / "test" / name, ["0.png"], seed=10 + k)
    with pytest.raises(ValueError, match=r"test has no folder for 1 of the 3 classes .*: dog "):
        load_dataset({"name": "imagefolder", "image_size": 8}, "test", data_root=str(tmp_path), num_workers=0)


# ---- images skipped or counted twice -----------------------------------------------------------

def test_tiny_imagenet_images_beside_the_images_folder_are_refused(tmp_path):
    base = tiny_tree(tmp_path)
    write_images(base / "train" / "n01", ["extra.JPEG"])
    with pytest.raises(ValueError, match=r"train/n01 holds 1 image beside its images/ folder \(extra.JPEG, ...\)"):
        tiny(tmp_path, "train")


def test_tiny_imagenet_an_image_listed_twice_is_refused(tmp_path):
    base = tiny_tree(tmp_path)
    annotations = base / "val" / "val_annotations.txt"
    text = annotations.read_text()
    annotations.write_text(text + text.splitlines(True)[2])
    with pytest.raises(ValueError, match=r"val_annotations.txt:7: val_2.JPEG is listed twice \(first on line 3\)"):
        tiny(tmp_path, "test")


def test_tiny_imagenet_an_unlisted_val_image_is_refused(tmp_path):
    base = tiny_tree(tmp_path)
    assert len(tiny(tmp_path, "test")) == 6
    write_images(base / "val" / "images", ["val_99.JPEG"])
    (base / "val" / "images" / "._val_0.JPEG").write_bytes(b"\0\5\26\7")  # (macOS's AppleDouble: hidden, skipped)
    with pytest.raises(ValueError, match=r"val/images holds 1 image not listed in .*val_annotations.txt "
                                         r"\(val_99.JPEG, ...\)"):
        tiny(tmp_path, "test")


def test_a_dangling_symbolic_link_in_a_class_folder_is_refused_as_a_missing_file(tmp_path):
    root = imagenet_tree(tmp_path)
    link = root / "train" / "n01" / "n01_gone.JPEG"
    os.symlink(tmp_path / "elsewhere" / "x.JPEG", link)
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(link))}: a symbolic link that leads nowhere "
                                                r"\(broken, or a loop\), to .*x.JPEG: restore its target"):
        load_dataset({"name": "imagenet", "num_classes": 4, "image_size": 8}, "train", data_root=str(root),
                     num_workers=0)
