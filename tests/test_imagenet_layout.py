"""ImageNet's real on-disk layout end to end, streamed: a small fake tree (wnid folders, JPEGs
of varied sizes, grayscale and CMYK ones, a PNG named .JPEG) through teacher training,
`infer-fast run` of a small config with that teacher, the same run under torchrun with 2
processes, and `infer-fast run` of the ImageNet recipe itself (configs/imagenet.yaml: its
methods, teachers from the weight cache and settings) at tiny budgets. Every decoded file is
logged (INFER_FAST_DECODE_LOG): the training split is never decoded in full by distillation,
and the val split once, into the decode cache."""
import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml

from infer_fast.config import load_yaml
from infer_fast.data import DECODE_LOG_ENV, FolderImageSet, load_dataset
from infer_fast.data.synthetic import write_fake_imagenet
from infer_fast.models import create_model, get_spec
from infer_fast.models.external import torchvision_file_names
from infer_fast.teacher import TeacherConfig, load_teacher, train_teacher

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 6, 4, 2
DATASET = {"name": "imagenet", "num_classes": CLASSES, "image_size": 32}
CONFIG = """\
dataset: {{name: imagenet, num_classes: {classes}, image_size: 32}}
data_root: {root}
out: unused
teachers: [{{path: {teacher}}}]
ipc: 1
methods: [infer, infer_dyn, random, sre2l]
accounting: ipc
recovery: {{iterations: 2, r_bn: 0.01, augmentation: imagenet, max_shift: 4}}
sre2l: {{iterations: 2, r_bn: 0.01}}
student: {{model: convnet-w8-d2, epochs: 1, batch_size: 8, augmentation: resized_crop_flip, mix: cutmix, mixup_alpha: 1.0,
          temperature: 20.0}}
seeds: 1
device: cpu
"""


def decodes(log):
    """{path: times decoded} from a decode log (and empties it)."""
    if not os.path.exists(log):
        return collections.Counter()
    with open(log) as f:
        counts = collections.Counter(line.strip() for line in f if line.strip())
    os.unlink(log)
    return counts


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """(root, teacher checkpoint, decode log): the fake tree and a teacher trained on it."""
    root = tmp_path_factory.mktemp("fake-imagenet")
    counts = write_fake_imagenet(root / "data", classes=CLASSES, train_per_class=TRAIN_PER_CLASS,
                                 val_per_class=VAL_PER_CLASS)
    assert counts["train"] == CLASSES * TRAIN_PER_CLASS and counts["png_named_jpeg"] == 1
    assert counts["grayscale"] and counts["cmyk"]
    log = str(root / "decodes.log")
    os.environ[DECODE_LOG_ENV] = log
    try:
        teacher = str(root / "teacher.pt")
        train_teacher(TeacherConfig(dataset=DATASET, model="convnet-w8-d2", epochs=2, batch_size=8, lr=0.05,
                                    data_root=str(root / "data"), device="cpu"), teacher, progress=False)
    finally:
        del os.environ[DECODE_LOG_ENV]
    seen = decodes(log)
    # teacher training streams the split: every training image once per epoch, every val image
    # once per epoch's evaluation, through the same loader
    train_files = [p for p in seen if f"{os.sep}train{os.sep}" in p]
    assert len(train_files) == CLASSES * TRAIN_PER_CLASS and set(seen.values()) == {2}
    return root, teacher, log


def test_folder_split_streams_in_bounded_batches(tree):
    root, _, log = tree
    train = load_dataset(DATASET, "train", data_root=str(root / "data"))
    assert isinstance(train, FolderImageSet) and len(train) == CLASSES * TRAIN_PER_CLASS
    os.environ[DECODE_LOG_ENV] = log
    try:
        picked = train.per_class(1, seed=0)  # labels only
        assert not os.path.exists(log)
        images = picked.images_at(torch.arange(len(picked)))
        shapes = [tuple(x.shape) for x, _ in train.batches(5, num_workers=1)]
    finally:
        del os.environ[DECODE_LOG_ENV]
    assert images.shape == (CLASSES, 3, 32, 32) and images.dtype == torch.uint8
    assert shapes == [(5, 3, 32, 32)] * 4 + [(4, 3, 32, 32)]
    assert sum(decodes(log).values()) == CLASSES + len(train)
    # the same pixels as decoding the split into memory
    assert torch.equal(train.to_memory().images_at(picked_indices(train)), images)


def picked_indices(train):
    from infer_fast.data.sets import per_class_indices

    return per_class_indices(train.labels, CLASSES, 1, 0)


def run_cli(root, out, ranks, log):
    (root / "exp.yaml").write_text(CONFIG.format(classes=CLASSES, root=root / "data", teacher=root / "teacher.pt"))
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)] if ranks > 1 else []
    env = dict(os.environ, OMP_NUM_THREADS="1", **{DECODE_LOG_ENV: log})
    proc = subprocess.run([sys.executable, *launcher, "-m", "infer_fast.cli", "run", "exp.yaml", "--out", out, "--quiet"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(root / out / "results.json") as f:
        return json.load(f)


def check_run(results, seen):
    train_decoded = [p for p in seen if f"{os.sep}train{os.sep}" in p]
    val_decoded = [p for p in seen if f"{os.sep}val{os.sep}" in p]
    # the natural images of INFER (K = 1 per class) and the random set's: never the whole split
    assert len(train_decoded) <= 2 * CLASSES < CLASSES * TRAIN_PER_CLASS
    # the val split decoded once, into the cache every student evaluation reads
    assert len(val_decoded) == CLASSES * VAL_PER_CLASS and all(seen[p] == 1 for p in val_decoded)
    assert set(results["sets"]) == {"infer/ipc1", "infer_dyn/ipc1", "random/ipc1", "sre2l/ipc1"}
    assert len(results["runs"]) == 4
    for method in ("random", "sre2l"):  # one image per class: duplication is undefined, not an error
        assert results["sets"][f"{method}/ipc1"]["feature_duplication"] is None
    assert results["sets"]["infer/ipc1"]["feature_duplication"] is not None


def test_run_with_a_teacher_trained_on_the_tree_streams_the_split(tree):
    root, _, log = tree
    results = run_cli(root, "one", 1, log)
    check_run(results, decodes(log))
    assert (root / "one" / "results.md").read_text().startswith("# imagenet (6 classes, 32px)")


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend")
def test_run_under_torchrun_streams_the_split_and_equals_one_process(tree):
    root, _, log = tree
    if not (root / "one" / "results.json").exists():
        run_cli(root, "one", 1, log)
        decodes(log)
    two = run_cli(root, "two", 2, log)
    check_run(two, decodes(log))
    with open(root / "one" / "results.json") as f:
        one = json.load(f)
    assert {k: r["final_accuracy"] for k, r in two["runs"].items()} == {k: r["final_accuracy"] for k, r in one["runs"].items()}


def test_teacher_trained_on_the_tree_loads_for_the_subset(tree):
    _, teacher, _ = tree
    model, meta = load_teacher(teacher, dataset=DATASET, num_classes=CLASSES)
    assert meta["dataset"] == "imagenet" and meta["num_classes"] == CLASSES and meta["image_size"] == 32
    assert len(meta["data_sha256"]) == 64


# ---- the ImageNet recipe itself -----------------------------------------------------------
RECIPE = Path(__file__).resolve().parents[1] / "configs" / "imagenet.yaml"
RECIPE_TRAIN_PER_CLASS = 8  # more than the images the methods decode per class (1 + 1 + RDED's 4)
# the recipe made tiny: only its budgets and sizes change, every other value is the file's
TINY = {
    "dataset": {"name": "imagenet", "num_classes": CLASSES, "image_size": 32},
    "ipc": [1], "seeds": 1, "device": "cpu",
    "recovery": {"iterations": 1}, "sre2l": {"iterations": 1},
    # RDED: ipc 1 x its 2 x 2 patches per image take at least 4 candidates per class (300 in the recipe)
    "method_options": {"cda": {"iterations": 1}, "rded": {"candidates_per_class": 4}},
    "student": {"epochs": 1},
}


def layered(base, over):
    """``base`` with ``over`` on top, mappings merged key by key (a value that is not a mapping
    replaces the base's)."""
    merged = dict(base)
    for key, value in over.items():
        merged[key] = layered(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    """(the recipe as the file holds it, the config the run got, results.json, decodes): `infer-fast
    run` of the recipe at TINY budgets on a fake tree, its teachers' weights (random, for the
    tree's CLASSES classes: pretrained weights teach the classes they have) where torchvision
    caches them."""
    recipe = load_yaml(str(RECIPE))
    root = tmp_path_factory.mktemp("imagenet-recipe")
    write_fake_imagenet(root / "data", classes=CLASSES, train_per_class=RECIPE_TRAIN_PER_CLASS,
                        val_per_class=VAL_PER_CLASS)
    cache = root / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(0)
    for teacher in recipe["teachers"]:
        preferred, _ = torchvision_file_names(get_spec(teacher["model"]).torchvision_name)
        torch.save(create_model(teacher["model"], num_classes=CLASSES, image_size=224).state_dict(), cache / preferred[0])
    config = {**layered(recipe, TINY), "data_root": str(root / "data")}
    (root / "imagenet-tiny.yaml").write_text(yaml.safe_dump(config))
    log = str(root / "decodes.log")
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_HOME=str(root / "torch-home"), **{DECODE_LOG_ENV: log})
    proc = subprocess.run([sys.executable, "-m", "infer_fast.cli", "run", "imagenet-tiny.yaml", "--out", str(root / "run"),
                           "--quiet"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(root / "run" / "results.json") as f:
        results = json.load(f)
    return recipe, config, results, decodes(log)


def test_run_of_the_imagenet_recipe_at_tiny_budgets_streams_the_split(recipe_run):
    recipe, config, results, seen = recipe_run
    assert {"cda", "rded"} <= set(recipe["methods"]) and len(recipe["teachers"]) == 3
    # the run's config: the file's values but for TINY's (the run directory comes from --out)
    assert {k: results["config"][k] for k in config if k != "out"} == {k: v for k, v in config.items() if k != "out"}
    assert set(results["sets"]) == {f"{method}/ipc1" for method in recipe["methods"]}
    assert len(results["runs"]) == len(recipe["methods"])
    assert [t["model"] for t in results["teachers"]] == [t["model"] for t in recipe["teachers"]]
    train_decoded = [p for p in seen if f"{os.sep}train{os.sep}" in p]
    val_decoded = [p for p in seen if f"{os.sep}val{os.sep}" in p]
    # INFER's and random's image per class and RDED's candidates: never the whole split
    candidates = TINY["method_options"]["rded"]["candidates_per_class"]
    assert 0 < len(train_decoded) <= CLASSES * (2 + candidates) < CLASSES * RECIPE_TRAIN_PER_CLASS
    assert len(val_decoded) == CLASSES * VAL_PER_CLASS and all(seen[p] == 1 for p in val_decoded)


def test_the_recipe_run_distils_with_the_recipe_settings(recipe_run):
    recipe, _, results, _ = recipe_run

    def hyperparameters(method):
        with open(os.path.join(results["config"]["out"], results["sets"][f"{method}/ipc1"]["directory"], "manifest.json")) as f:
            return json.load(f)["hyperparameters"]

    infer = hyperparameters("infer")
    assert {k: infer[k] for k in recipe["recovery"] if k != "iterations"} == \
        {k: v for k, v in recipe["recovery"].items() if k != "iterations"}
    assert infer["natural_selection"] == recipe["selection"]
    assert hyperparameters("sre2l")["r_bn"] == recipe["sre2l"]["r_bn"]
    # CDA's ImageNet-1k recipe (recipe: imagenet-1k): lr 0.25, the crop-scale curriculum 1.0 -> 0.08
    assert recipe["method_options"]["cda"] == {"recipe": "imagenet-1k"}
    cda = hyperparameters("cda")
    assert cda["lr"] == 0.25 and cda["crop_scale_curriculum"][0] == "cosine" and cda["crop_scale"] == [0.08, 1.0]
    # RDED's ImageNet recipe: 2 x 2 patches per image, 5 crops per candidate
    rded = hyperparameters("rded")
    assert rded["family"] == "imagenet" and rded["factor"] == 2 and rded["crops_per_image"] == 5


@pytest.mark.parametrize("ranks", [1, 2])
def test_distill_takes_the_dataset_mapping_from_its_config(tree, ranks):
    """`distill --config` with `dataset: {name: imagenet, num_classes, image_size}` as `teacher`
    and `run` take it, alone and under torchrun: INFER decodes only its natural images."""
    if ranks > 1 and (not dist.is_available() or not dist.is_gloo_available()):
        pytest.skip("no gloo backend")
    root, teacher, log = tree
    out = f"distilled-{ranks}"
    (root / "d.yaml").write_text(f"dataset: {{name: imagenet, num_classes: {CLASSES}, image_size: 32}}\n"
                                 f"data_root: {root / 'data'}\nteachers: [{teacher}]\nipc: 2\niterations: 1\n"
                                 f"device: cpu\nout: {out}\n")
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)] if ranks > 1 else []
    env = dict(os.environ, OMP_NUM_THREADS="1", **{DECODE_LOG_ENV: log})
    proc = subprocess.run([sys.executable, *launcher, "-m", "infer_fast.cli", "distill", "--config", "d.yaml", "--quiet"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from infer_fast.storage import load_distilled

    ds = load_distilled(str(root / out))
    assert (ds.dataset, ds.num_classes, ds.height, ds.K) == ("imagenet", CLASSES, 32, 1)
    # K = floor(ipc C / (C + M)) = 1 natural image per class, the only training files decoded
    train = load_dataset(DATASET, "train", data_root=str(root / "data"))
    assert set(decodes(log)) == set(train.per_class(1, seed=0).paths)
