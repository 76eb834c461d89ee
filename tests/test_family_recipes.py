"""A dataset's family picks each method's and the students' recipe where the user names none:
ImageNet's (INFER_METHOD.md §3, §4, §6) for ImageNet-family datasets, CIFAR's for the rest;
what the user gives always wins."""
import pytest

from infer_fast.evaluate import make_protocol
from infer_fast.methods import get_method
from infer_fast.methods.registry import Method
from infer_fast.run_config import PipelineConfig
from infer_fast.student import recipe_of


def _run(tmp_path, dataset, **values):
    teachers = [{"model": "resnet18-imagenet", "pretrained": True}] if dataset == "imagenet" else [{"model": "convnet"}]
    return PipelineConfig.from_dict({"dataset": dataset, "out": str(tmp_path / "run"), "teachers": teachers,
                                     "ipc": [10], "methods": ["infer", "sre2l", "cda"], **values}, where="test")


def test_imagenet_family_gets_the_imagenet_recovery_recipes(tmp_path):
    cfg = _run(tmp_path, "imagenet")
    infer, sre2l, cda = (cfg.options_for(m)["config"] for m in ("infer", "sre2l", "cda"))
    # INFER: 2000 iterations, r_bn 0.01, RandomResizedCrop + flip + roll by 32 (§3)
    assert (infer.iterations, infer.r_bn, infer.augmentation, infer.max_shift) == (2000, 0.01, "imagenet", 32)
    assert (sre2l.iterations, sre2l.r_bn, sre2l.augmentation) == (4000, 0.01, "imagenet")  # SRe2L on ImageNet (§6)
    assert (cda.iterations, cda.lr, cda.max_shift) == (4000, 0.25, 32)  # CDA's ImageNet-1k recipe
    # a class subset of ImageNet is still of its family
    subset = _run(tmp_path, {"name": "imagenet", "num_classes": 100})
    assert subset.options_for("infer")["config"].augmentation == "imagenet"


def test_cifar_family_keeps_the_cifar_recipe_and_the_user_wins(tmp_path):
    cfg = _run(tmp_path, "fashion-mnist")
    infer, sre2l, cda = (cfg.options_for(m)["config"] for m in ("infer", "sre2l", "cda"))
    assert (infer.iterations, infer.r_bn, infer.augmentation, infer.max_shift) == (1000, 1.0, "roll", 4)
    assert (sre2l.iterations, sre2l.r_bn, sre2l.augmentation) == (1000, 0.01, "roll")
    assert (cda.iterations, cda.lr, cda.r_bn) == (4000, 0.4, 0.05)  # its small-image (Tiny-ImageNet) recipe
    chosen = _run(tmp_path, "imagenet", recovery={"augmentation": "roll", "iterations": 7},
                  method_options={"cda": {"recipe": None}})
    assert chosen.options_for("infer")["config"].augmentation == "roll"
    assert chosen.options_for("infer")["config"].iterations == 7
    assert chosen.options_for("cda")["recipe"] == "imagenet-1k"  # (null: the family's, not a refusal)


def test_family_defaults_of_a_method_are_checked_and_applied():
    infer = get_method("infer")
    assert infer.with_dataset_defaults({}, "imagenet1k") == {"augmentation": "imagenet"}
    assert infer.with_dataset_defaults({"augmentation": "roll"}, "imagenet") == {"augmentation": "roll"}
    assert infer.with_dataset_defaults({"lr": 0.1}, "cifar10") == {"lr": 0.1}
    assert get_method("cda").with_dataset_defaults({}, "tiny-imagenet") == {"recipe": "tiny-imagenet"}
    with pytest.raises(ValueError, match="family_defaults"):
        Method(name="bad", label="Bad", summary="s", distill=lambda r: None, family_defaults={"mnist": {}})
    with pytest.raises(ValueError, match="family_defaults"):  # (an option it does not declare)
        Method(name="bad", label="Bad", summary="s", distill=lambda r: None, family_defaults={"imagenet": {"lr": 1}})


def test_students_get_their_dataset_family_recipe(tmp_path):
    assert recipe_of("imagenet") == recipe_of({"name": "imagenet", "num_classes": 10}) == "imagenet"
    assert recipe_of("cifar100") == recipe_of("tiny-imagenet") == recipe_of("fashion-mnist-mini") == "cifar"
    student = _run(tmp_path, "imagenet", student={"model": "resnet18-imagenet"}).student_config("infer", 0, 3)
    # the SRe2L protocol (§4): 300 epochs, RandomResizedCrop + flip + CutMix, T = 20
    assert (student.epochs, student.augmentation, student.mix, student.temperature) == (
        300, "resized_crop_flip", "cutmix", 20.0)
    assert _run(tmp_path, "imagenet", student={"epochs": 5}).student_config("infer", 0, 3).epochs == 5
    assert _run(tmp_path, "imagenet").student_config("infer_dyn", 0, 3).epochs == 75  # 300 / (M + 1)
    assert _run(tmp_path, "fashion-mnist").student_config("infer", 0, 1).epochs == 400
    assert make_protocol("infer-fast", {}, 1, "imagenet").recipe == "imagenet"
    assert make_protocol("infer-fast", {}, 1, "cifar10").recipe == "cifar"
    assert make_protocol("infer-fast", {}, 1, "imagenet", recipe="cifar").recipe == "cifar"


def test_an_image_folder_of_large_images_takes_the_imagenet_recipes(tmp_path):
    """One rule for every recipe: images larger than SMALL_IMAGE_MAX (64 px) take ImageNet's (an
    ImageNet subset in an image folder: ImageNette at 224 px, as RDED's release treats it), the
    recovery methods', the students', DD-Ranking's, RDED's and CDA's alike; at 64 px and below
    the registered family's (an image folder's is CIFAR's)."""
    from infer_fast import dd_ranking
    from infer_fast.data.registry import SMALL_IMAGE_MAX, recipe_family
    from infer_fast.methods import cda, rded

    large = {"name": "imagefolder", "num_classes": 10, "image_size": 224}
    small = {"name": "imagefolder", "num_classes": 10, "image_size": SMALL_IMAGE_MAX}
    assert recipe_family(large) == "imagenet" and recipe_family(small) == recipe_family("imagefolder") == "cifar"
    assert recipe_family({"name": "tiny-imagenet", "image_size": 128}) == "imagenet"
    assert recipe_family({"name": "imagenet", "image_size": 64}) == "imagenet"  # (its registered family)
    assert recipe_of(large) == dd_ranking.DDRankingProtocol().recipe_for(large) == rded.recipe_family("imagefolder", 224) \
        == "imagenet"
    assert cda.recipe_for(large) == "imagenet-1k" and cda.recipe_for(small) == "tiny-imagenet"
    assert get_method("infer").with_dataset_defaults({}, large) == {"augmentation": "imagenet"}
    assert make_protocol("infer-fast", {}, 1, large).recipe == "imagenet"
    assert make_protocol("dd-ranking", {}, 1, large).recipe_for(large) == "imagenet"
