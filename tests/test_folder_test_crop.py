"""The test split of an image folder decoded above SMALL_IMAGE_MAX is cropped as ImageNet's is:
its students train with the ImageNet recipe (recipe_family), and are evaluated as RDED's release
and every ImageNet-subset result are (Resize(size / 0.875) + CenterCrop(size))."""
import numpy as np
import pytest
import torch
from PIL import Image

from infer_fast.data import load_dataset, load_test_split
from infer_fast.data.folders import decode_image
from infer_fast.data.registry import IMAGENET_EVAL_CROP, SMALL_IMAGE_MAX, get_dataset, recipe_family


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes of non-square photos (300 x 200, like ImageNet's), in train/ and val/."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(root / split / name / f"{i}.png")
    return root


@pytest.mark.parametrize("size, crop", [(128, IMAGENET_EVAL_CROP), (SMALL_IMAGE_MAX, 1.0), (32, 1.0)])
def test_a_folders_test_split_is_cropped_where_the_imagenet_recipes_apply(folder, size, crop):
    dataset = {"name": "imagefolder", "image_size": size}
    assert recipe_family(dataset) == ("imagenet" if crop != 1.0 else "cifar")
    test = load_test_split(dataset, data_root=str(folder))
    assert torch.equal(test.images[0], decode_image(str(folder / "val" / "a" / "0.png"), size, 3, crop=crop))
    train = load_dataset(dataset, "train", data_root=str(folder))  # (training splits: the whole side, always)
    assert torch.equal(train.images[0], decode_image(str(folder / "train" / "a" / "0.png"), size, 3, crop=1.0))


def test_the_crop_and_the_recipe_family_are_one_decision():
    for name in ("imagenet", "tiny-imagenet", "imagefolder", "cifar10"):
        entry = get_dataset(name)
        for size in (None, 32, 64, 65, 224):
            family = recipe_family(name if size is None else {"name": name, "image_size": size})
            assert entry.family_at(size) == family
            assert entry.crop_fraction("test", size) == (IMAGENET_EVAL_CROP if family == "imagenet" else 1.0)
            assert entry.crop_fraction("train", size) == 1.0
