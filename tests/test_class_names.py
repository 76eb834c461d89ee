"""Class names are compared wherever a set, a teacher and a split meet (checks.check_class_names):
a label is only a class's index, so a folder tree whose class folders sort another way (the same
count, other names or another order) used to score students, distil or relabel with every class
taken for another, silently. Sets and teachers recording no class names (older files) are not
checked."""
import os

import numpy as np
import pytest
import torch

from conftest import torch_threads
from infer_fast.checks import check_class_names
from infer_fast.data import load_dataset, load_test_split
from infer_fast.distill.run import load_set_teachers
from infer_fast.imagenet_wnids import IMAGENET_WNIDS
from infer_fast.methods.random import random_set
from infer_fast.relabel import relabel, relabel_directory
from infer_fast.storage import load_distilled, save_distilled
from infer_fast.student import StudentConfig, evaluate_seeds
from infer_fast.teacher import TeacherConfig, load_teacher, load_teachers_for_set, train_teacher

NAMES = ("Apple", "banana", "Cherry", "my class é")  # sorted: Apple, Cherry, banana, my class é
LOWER = tuple(n.lower() for n in NAMES)  # sorted: apple, banana, cherry, my class é
TINY_STUDENT = dict(model="convnet-w8-d1", epochs=1, batch_size=8, device="cpu", labels="hard")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny batches: one thread avoids OpenMP spin-waiting on a busy machine."""
    with torch_threads(1):
        yield


def _tree(root, names, splits=("train", "val"), per_class=3, size=32, layout="{split}/{name}"):
    """A class-folder tree: ``per_class`` PNGs per class and split, coloured by the class's name
    (the same name looks the same in every tree)."""
    from PIL import Image

    for name in names:
        colour = [(sum(map(ord, name)) * k) % 256 for k in (3, 5, 7)]
        for split in splits:
            folder = os.path.join(root, layout.format(split=split, name=name))
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                pixels = np.full((size, size, 3), colour, dtype=np.uint8)
                pixels[i, :, :] = 255 - pixels[i, :, :]
                Image.fromarray(pixels).save(os.path.join(folder, f"{i}.png"))
    return str(root)


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """A: train/ and val/ of NAMES; B: val/ alone of their lower-case names (another order);
    C: train/ and val/ of the lower-case names."""
    base = tmp_path_factory.mktemp("trees")
    return {"A": _tree(base / "A", NAMES), "B": _tree(base / "B", LOWER, splits=("val",)),
            "C": _tree(base / "C", LOWER)}


@pytest.fixture(scope="module")
def set_a(trees, tmp_path_factory):
    """A random set (ipc 2) of tree A, on disk."""
    out = tmp_path_factory.mktemp("sets") / "a"
    save_distilled(random_set(load_dataset("imagefolder", "train", data_root=trees["A"]), 2, seed=0), out)
    return str(out)


@pytest.fixture(scope="module")
def teachers(trees, tmp_path_factory):
    """{tree: teacher checkpoint trained one epoch on it} for trees A and C."""
    folder = tmp_path_factory.mktemp("teachers")
    paths = {}
    for tree in ("A", "C"):
        paths[tree] = str(folder / f"{tree}.pt")
        with torch_threads(1):
            train_teacher(TeacherConfig(dataset="imagefolder", data_root=trees[tree], model="convnet-w8-d1", epochs=1,
                                        batch_size=8, device="cpu"), paths[tree], progress=False)
    return paths


# ---- the one comparison --------------------------------------------------------------------

def test_check_class_names_is_quiet_when_they_agree_or_one_side_records_none():
    check_class_names(["a", "b"], ("a", "b"), "x", "y", "todo")  # (a list and a tuple: the same names)
    check_class_names(None, ["a", "b"], "x", "y", "todo")
    check_class_names(["a", "b"], None, "x", "y", "todo")
    # a name with a combining accent (NFD: a folder copied from macOS) is its composed name (NFC)
    check_class_names(["caf\u00e9", "d"], ["cafe\u0301", "d"], "x", "y", "todo")


def test_check_class_names_names_both_sides_and_the_first_differences():
    with pytest.raises(ValueError, match=r"^class 1 is 'Cherry' in the set, 'banana' in the test split; also class 2 "
                                         r"'banana' / 'cherry' \(2 of 4 class names differ\): do this$"):
        check_class_names(["Apple", "Cherry", "banana", "d"], ["Apple", "banana", "cherry", "d"], "the set",
                          "the test split", "do this")
    with pytest.raises(ValueError, match=r"^class 0 is 'b' in x, 'a' in y; also class 1 'a' / 'b' \(the same classes "
                                         r"in another order\): t$"):
        check_class_names(["b", "a"], ["a", "b"], "x", "y", "t")
    many = [f"c{i}" for i in range(10)]
    with pytest.raises(ValueError, match=r"class 0 is 'c0' in x, 'd0' in y; also class 1 'c1' / 'd1', class 2 'c2' / "
                                         r"'d2', \.\.\. \(10 of 10 class names differ\)"):
        check_class_names(many, [n.replace("c", "d") for n in many], "x", "y", "t")
    with pytest.raises(ValueError, match=r"^x has 2 classes, y 3: t$"):
        check_class_names(["a", "b"], ["a", "b", "c"], "x", "y", "t")


# ---- a set's students on a test split ------------------------------------------------------------

def test_train_refuses_a_test_split_of_another_class_order_before_any_training(trees, tmp_path, capsys, monkeypatch):
    """The tester's repro: a set of tree A, students scored on B's val split (lower-case folders:
    another sorted order) reported 50% instead of 100%. Now one line naming both, no training."""
    from infer_fast import student
    from infer_fast.cli import main

    assert main(["distill", "--dataset", "imagefolder", "--data-root", trees["A"], "--method", "random", "--ipc", "2",
                 "--out", str(tmp_path / "perm"), "--quiet"]) == 0
    capsys.readouterr()
    trained = []
    monkeypatch.setattr(student.StudentRun, "train", lambda self, *a: trained.append(1) or 0.0)
    status = main(["train", str(tmp_path / "perm"), "--labels", "hard", "--epochs", "1", "--model", "convnet-w8-d1",
                   "--data-root", trees["B"], "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1 and not trained
    val_b = os.path.join(trees["B"], "val")
    assert err.startswith(f"infer-fast train: error: class 0 is 'Apple' in the distilled set, 'apple' in the test split "
                          f"of imagefolder at {val_b!r}; also class 1 'Cherry' / 'banana', class 2 'banana' / "
                          "'cherry' (3 of 4 class names differ): its students would be scored against other "), err
    assert "(3 of 4 class names differ)" in err and "--data-root" in err
    assert main(["train", str(tmp_path / "perm"), "--labels", "hard", "--epochs", "1", "--model", "convnet-w8-d1",
                 "--data-root", trees["A"], "--quiet"]) == 0 and trained  # the set's own data: accepted


def test_evaluate_seeds_refuses_and_a_set_without_class_names_is_not(trees, set_a):
    ds = load_distilled(set_a)
    assert ds.class_names == ["Apple", "Cherry", "banana", "my class é"]
    test_b = load_test_split("imagefolder", data_root=trees["B"])
    config = StudentConfig(**TINY_STUDENT)
    with pytest.raises(ValueError, match=r"class 0 is 'Apple' in the distilled set, 'apple' in the test split of "
                                         r"imagefolder at .*B/val'"):
        evaluate_seeds(ds, test_b, config, seeds=(0,))
    ds.class_names = None  # (a set recording none, as an import of a folder dataset: not checked)
    assert 0.0 <= evaluate_seeds(ds, test_b, config, seeds=(0,))["mean"] <= 1.0


def test_evaluate_set_refuses_before_the_full_data_run(trees, set_a, monkeypatch):
    """The report trains a full-data model first: the test split is checked before it."""
    from infer_fast import evaluate
    from infer_fast.models import create_model

    ds = load_distilled(set_a)
    teacher = create_model("convnet-w8-d1", num_classes=4, in_channels=3, image_size=32).eval()
    relabel(ds, [teacher])
    monkeypatch.setattr(evaluate, "train_full_data", lambda *a, **k: pytest.fail("trained before the check"))
    protocol = evaluate.Protocol(student={"model": "convnet-w8-d1", "epochs": 1}, seeds=1)
    with pytest.raises(ValueError, match=r"class 0 is 'Apple' in the distilled set, 'apple' in the test split"):
        evaluate.evaluate_set(ds, [teacher], protocol, data_root=trees["C"], device="cpu", progress=False)


# ---- teachers ------------------------------------------------------------------------------------

def test_a_teacher_records_the_class_names_it_was_trained_on(teachers):
    _, meta = load_teacher(teachers["A"])
    assert meta["class_names"] == ["Apple", "Cherry", "banana", "my class é"]
    assert load_teacher(teachers["C"])[1]["class_names"] == ["apple", "banana", "cherry", "my class é"]


def test_teachers_of_another_class_order_are_refused_by_distill_relabel_and_students(trees, teachers, set_a, tmp_path,
                                                                                      capsys):
    from infer_fast.cli import main

    train_a = load_dataset("imagefolder", "train", data_root=trees["A"])
    train_a_dir = os.path.join(trees["A"], "train")
    with pytest.raises(ValueError, match=rf"^class 0 is 'apple' in teacher '{teachers['C']}', 'Apple' in the train "
                                         rf"split of imagefolder at '{train_a_dir}'; .*: its outputs would be read as "
                                         r"other classes"):
        load_set_teachers([teachers["C"]], "imagefolder", train_a, "cpu")
    teachers_a, _ = load_set_teachers([teachers["A"]], "imagefolder", train_a, "cpu")  # its own classes: accepted
    assert len(teachers_a) == 1
    # distill (its teachers checked before any recovery), relabel and INFER+Dyn's students (a set's teachers)
    status = main(["distill", "--dataset", "imagefolder", "--data-root", trees["A"], "--method", "sre2l", "--ipc", "1",
                   "--teachers", teachers["C"], "--iterations", "1", "--device", "cpu", "--out", str(tmp_path / "s"),
                   "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and "class 0 is 'apple' in teacher" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()
    with pytest.raises(ValueError, match=r"class 0 is 'apple' in teacher .*, 'Apple' in the distilled set"):
        relabel_directory(set_a, teachers["C"])
    with pytest.raises(ValueError, match=r"class 0 is 'apple' in teacher .*, 'Apple' in the distilled set"):
        load_teachers_for_set(teachers["C"], load_distilled(set_a))
    assert len(load_teachers_for_set(teachers["A"], load_distilled(set_a))) == 1


def test_a_teacher_without_class_names_is_not_checked(trees, teachers, tmp_path):
    """A checkpoint written before class names were recorded loads as before."""
    ckpt = torch.load(teachers["C"], weights_only=False)
    del ckpt["class_names"]
    old = str(tmp_path / "old.pt")
    torch.save(ckpt, old)
    train_a = load_dataset("imagefolder", "train", data_root=trees["A"])
    models, _ = load_set_teachers([old], "imagefolder", train_a, "cpu")
    assert len(models) == 1


def test_a_full_data_checkpoint_of_other_classes_is_refused(teachers, set_a):
    from infer_fast.evaluate import check_full_data_checkpoint

    a_names = ["Apple", "Cherry", "banana", "my class é"]
    with pytest.raises(ValueError, match=r"class 0 is 'apple' in teacher .*, 'Apple' in the distilled set"):
        check_full_data_checkpoint(teachers["C"], "convnet-w8-d1", "imagefolder", a_names)
    assert check_full_data_checkpoint(teachers["A"], "convnet-w8-d1", "imagefolder", a_names)["model"] == "convnet-w8-d1"
    # DD-Ranking's full-data accuracy from a checkpoint is checked against the set's classes too
    from infer_fast.dd_ranking import DDRankingProtocol, _full_data
    from infer_fast.storage import load_distilled

    distilled = load_distilled(set_a)
    with pytest.raises(ValueError, match=r"class 0 is 'apple' in teacher .*, 'Apple' in the distilled set"):
        _full_data(DDRankingProtocol(), distilled, "convnet-w8-d1", None, "cpu", teachers["C"], progress=False)


def test_a_teacher_resume_compares_the_class_names():
    """The "same run?" identity of a teacher checkpoint includes the class names (the digest of
    an array split does not see them); a checkpoint older than them counts as this data's."""
    from infer_fast import teacher as teacher_mod
    from infer_fast.data import get_spec

    meta = teacher_mod._metadata(TeacherConfig(dataset="fashion-mnist-mini", model="convnet-w8-d1", epochs=2),
                                 get_spec("fashion-mnist-mini"))
    meta["data_sha256"] = "same"
    renamed = dict(meta, class_names=list(reversed(meta["class_names"])))
    with pytest.raises(ValueError, match=r"belongs to another run \(the class names \(or their order\) differ\)"):
        teacher_mod._check_same_run(renamed, meta, "t.pt")
    older = {k: v for k, v in meta.items() if k != "class_names"}
    teacher_mod._check_same_run(older, meta, "t.pt")


def test_an_imagenet_subset_teacher_is_refused_for_another_subset(tmp_path):
    """{name: imagenet, num_classes: N} is whichever N class folders the tree holds: a teacher of
    one subset was accepted for another of the same size."""
    dataset = {"name": "imagenet", "num_classes": 3, "image_size": 16}
    one = _tree(tmp_path / "one", ("n01440764", "n01443537", "n01484850"), size=20)
    other = _tree(tmp_path / "other", ("n01440764", "n01443537", "n01491361"), size=20)
    path = str(tmp_path / "t.pt")
    train_teacher(TeacherConfig(dataset=dataset, data_root=one, model="convnet-w8-d1", epochs=1, batch_size=8,
                                device="cpu"), path, progress=False)
    assert load_teacher(path)[1]["class_names"] == ["n01440764", "n01443537", "n01484850"]
    train_other = load_dataset(dataset, "train", data_root=other)
    with pytest.raises(ValueError, match=r"class 2 is 'n01484850' in teacher .*, 'n01491361' in the train split of "
                                         r"imagenet at .*other/train' \(1 of 3 class names differ\)"):
        load_set_teachers([path], dataset, train_other, "cpu")
    load_set_teachers([path], dataset, load_dataset(dataset, "train", data_root=one), "cpu")


def test_a_pretrained_imagenet_teacher_records_the_sorted_wnids(tmp_path):
    """ImageNet-1k weights classify the 1000 wnids in sorted order, the imagenet loader's class
    names: recorded, a tree of other class folders is refused."""
    from infer_fast.models import create_model
    from infer_fast.teacher import pretrained_teacher

    assert len(IMAGENET_WNIDS) == len(set(IMAGENET_WNIDS)) == 1000 and list(IMAGENET_WNIDS) == sorted(IMAGENET_WNIDS)
    weights = tmp_path / "w.pth"
    torch.save(create_model("resnet18-imagenet", num_classes=1000, image_size=224).state_dict(), weights)
    out = str(tmp_path / "rn18.pt")
    assert pretrained_teacher("resnet18-imagenet", "imagenet", out, pretrained=str(weights))["class_names"] == \
        list(IMAGENET_WNIDS)
    load_teacher(out, class_names=IMAGENET_WNIDS)
    fake = [f"n{1440764 + 37 * c:08d}" for c in range(1000)]  # (made-up wnids: another tree)
    with pytest.raises(ValueError, match=r"class 1 is 'n01443537' in teacher .*, 'n01440801' in the train split"):
        load_teacher(out, class_names=fake, names_from="the train split")


# ---- infer-fast run ------------------------------------------------------------------------------

def _run_config(trees, tmp_path, **values):
    from infer_fast.run_config import PipelineConfig

    return PipelineConfig.from_dict({
        "dataset": "imagefolder", "data_root": trees["C"], "out": str(tmp_path / "run"), "ipc": [1],
        "methods": ["random"], "student": {"model": "convnet-w8-d1", "epochs": 1, "batch_size": 8}, "seeds": 1,
        "device": "cpu", "feature_duplication": False, **values})


def test_run_refuses_a_teacher_or_an_external_set_of_other_classes_before_any_set(trees, teachers, set_a, tmp_path):
    from infer_fast.pipeline import run_pipeline

    with pytest.raises(ValueError, match=r"class 0 is 'Apple' in teacher .*, 'apple' in the test split of imagefolder"):
        run_pipeline(_run_config(trees, tmp_path, teachers=[{"path": teachers["A"]}]), progress=False)
    assert not (tmp_path / "run" / "sets").exists()
    labelled = tmp_path / "labelled"
    ds = load_distilled(set_a)
    save_distilled(relabel(ds, load_teachers_for_set(teachers["A"], ds)), labelled)
    with pytest.raises(ValueError, match=rf"class 0 is 'Apple' in the set '{labelled}', 'apple' in the test split"):
        run_pipeline(_run_config(trees, tmp_path / "2", teachers=[{"path": teachers["C"]}],
                                 external={"Other": str(labelled)}), progress=False)
    assert not (tmp_path / "2" / "run" / "sets").exists() and not (tmp_path / "2" / "run" / "teachers").exists()


def test_splits_of_one_tree_match_their_class_names_in_composed_form(tmp_path):
    """A val tree copied from macOS names its folders decomposed (NFD), the train tree composed
    (NFC): the same classes, labelled alike."""
    from PIL import Image

    from infer_fast.data import load_dataset

    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    for split, cafe in (("train", "caf\u00e9"), ("val", "cafe\u0301")):
        for name in (cafe, "tea"):
            os.makedirs(tmp_path / split / name)
            Image.fromarray(pixels).save(tmp_path / split / name / "a.png")
    test = load_dataset({"name": "imagefolder", "num_classes": 2, "image_size": 8}, "test", data_root=str(tmp_path))
    assert test.labels.tolist() == [0, 1] and test.spec.class_names == ("caf\u00e9", "tea")
