"""RDED's defaults spelled out and its batch size (result-neutral) in run continuation and
resume, the message for an RDED set trained without --dynamic, CDA's curriculum following the
crop scale (and its conflict with another augmentation said as CDA's default), non-finite
teacher logits in RDED's scoring, a diverging student, and a student's resume said."""
import pytest
import torch
from conftest import kill_after_rded_classes, kill_after_save, train_tiny_teachers
from torch import nn

from infer_fast.methods import DistillRequest, get_method
from infer_fast.methods import rded
from infer_fast.storage import DistilledDataset, DistilledSetError, load_distilled

DATASET = "fashion-mnist-mini"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return train_tiny_teachers(tmp_path_factory.mktemp("teachers"), seeds=(0,))


def _rded(out_dir, teacher, resume=False, **options):
    request = DistillRequest(method="rded", dataset=DATASET, ipc=2, out_dir=out_dir, teacher_paths=teacher,
                             options={"candidates_per_class": 12, "crops_per_image": 2, **options}, resume=resume,
                             progress=False, device="cpu")
    return load_distilled(request.make_set())


def _random_set(out_dir):
    request = DistillRequest(method="random", dataset=DATASET, ipc=10, out_dir=out_dir, progress=False, device="cpu")
    return load_distilled(request.make_set())


# ---- 1. RDED's defaults spelled out are the run of none --------------------------------------

def test_rded_parsed_options_hold_the_effective_values(tmp_path):
    parsed = DistillRequest(method="rded", dataset=DATASET, ipc=2, out_dir=tmp_path / "o", teacher_paths=["t.pt"],
                            options=None).parsed
    assert parsed == {"factor": 1, "candidates_per_class": 300, "crops_per_image": 5, "batch_size": 512,
                      "precision": "fp32", "channels_last": False, "checkpoint_minutes": 10.0}
    assert DistillRequest(method="rded", dataset={"name": "imagefolder", "image_size": 128}, ipc=2,
                          out_dir=tmp_path / "o", teacher_paths=["t.pt"]).parsed["factor"] == 2  # (ImageNet's family)


@pytest.mark.parametrize("spelled", [{"factor": 1}, {"crops_per_image": 5}, {"precision": "fp32"},
                                     {"batch_size": 512}, {"batch_size": 7}, {"channels_last": False}])
def test_a_run_spelling_out_rded_defaults_is_the_same_run(spelled):
    """A results file records the run config as given (an older one too: options not given);
    compared as the settings they take effect as, the defaults spelled out change nothing."""
    from infer_fast.results import effective_settings

    config = {"dataset": DATASET, "method_options": {"rded": {"candidates_per_class": 50}}}
    given = {"dataset": DATASET, "method_options": {"rded": {"candidates_per_class": 50, **spelled}}}
    recorded, current = effective_settings(config, given)
    assert recorded == current


def test_a_run_changing_an_rded_recipe_value_is_another_run():
    from infer_fast.results import effective_settings

    config = {"dataset": DATASET, "method_options": {"rded": {"candidates_per_class": 50}}}
    recorded, current = effective_settings(config, {**config, "method_options": {"rded": {
        "candidates_per_class": 50, "factor": 2}}})
    assert recorded["method_options.rded.factor"] == 1 and current["method_options.rded.factor"] == 2


# ---- 2. RDED's batch_size: a memory setting ---------------------------------------------------

def test_rded_resumes_under_another_batch_size(tmp_path, teacher, monkeypatch):
    """Killed after 3 classes, resumed with another batch_size: the uninterrupted run's images,
    the batch size recorded in the set's hyperparameters but not in the checkpoint's identity;
    a checkpoint of before, which recorded it, resumes too."""
    every_class = {"checkpoint_minutes": 1e-9}
    reference = _rded(tmp_path / "reference", teacher)
    assert reference.hyperparameters["batch_size"] == 512
    assert "batch_size" in get_method("rded").result_neutral
    for name, older in (("killed", False), ("older", True)):
        restore = kill_after_rded_classes(monkeypatch, 3)
        with pytest.raises(KeyboardInterrupt):
            _rded(tmp_path / name, teacher, **every_class)
        restore()
        checkpoint = tmp_path / f"{name}.recovery.pt"
        saved = torch.load(checkpoint, weights_only=True)
        assert "recipe.batch_size" not in saved["run"] and saved["run"]["recipe.crops_per_image"] == 2
        if older:  # (as a checkpoint written before batch_size was result-neutral)
            saved["run"]["recipe.batch_size"] = 512
            torch.save(saved, checkpoint)
        resumed = _rded(tmp_path / name, teacher, resume=True, batch_size=7)
        assert torch.equal(resumed.images, reference.images)
        assert resumed.hyperparameters["batch_size"] == 7
    restore = kill_after_rded_classes(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        _rded(tmp_path / "other", teacher, **every_class)
    restore()
    with pytest.raises(ValueError, match=r"recipe.crops_per_image differs"):  # (a recipe value still identifies it)
        _rded(tmp_path / "other", teacher, resume=True, crops_per_image=3)


# ---- 3. an RDED set trained without --dynamic --------------------------------------------------

def test_a_per_batch_set_without_labels_says_train_dynamic(tmp_path, teacher):
    with pytest.raises(DistilledSetError, match=r"rded set has no soft labels: its students are labelled by the "
                                                r"teachers per batch \(infer-fast train --dynamic --teachers T.pt"):
        DistilledDataset(_rded(tmp_path / "r", teacher))
    with pytest.raises(DistilledSetError, match=r"random set has no soft labels yet .* --labels hard"):
        DistilledDataset(_random_set(tmp_path / "x"))


# ---- 4. CDA's curriculum follows the crop scale ------------------------------------------------

def _cda_config(options):
    return get_method("cda").check_options(options)["config"]


def test_cda_curriculum_starts_at_the_crop_scales_high():
    from infer_fast.distill import RecoveryConfig

    default = _cda_config({})  # (the default run: the curriculum as before, so the same set)
    assert default == RecoveryConfig(augmentation="imagenet", crop_scale=(0.08, 1.0),
                                     crop_scale_curriculum=("cosine", 1.0, 1.0), iterations=4000, lr=0.25, r_bn=0.01,
                                     max_shift=32)
    narrower = _cda_config({"crop_scale": [0.08, 0.5]})
    assert narrower.crop_scale == (0.08, 0.5) and narrower.crop_scale_curriculum == ("cosine", 0.5, 1.0)
    given = _cda_config({"crop_scale": [0.08, 0.5], "crop_scale_curriculum": ["linear", 0.3, 0.5]})
    assert given.crop_scale_curriculum == ("linear", 0.3, 0.5)


def test_cda_default_curriculum_with_another_augmentation_says_how_to_turn_it_off():
    with pytest.raises(ValueError, match=r"CDA's default crop_scale_curriculum \('cosine', 1.0, 1.0\) .* needs "
                                         r"augmentation='imagenet', got augmentation='roll': .*crop_scale_curriculum: "
                                         r"null in a config, --crop-scale-curriculum off"):
        _cda_config({"augmentation": "roll"})
    plain = _cda_config({"augmentation": "roll", "crop_scale_curriculum": None})
    assert plain.augmentation == "roll" and plain.crop_scale_curriculum is None
    with pytest.raises(ValueError, match=r"crop_scale_curriculum \(--crop-scale-curriculum\) schedules RandomResizedCrop's scale"):  # (given)
        _cda_config({"augmentation": "roll", "crop_scale_curriculum": ["cosine", 1.0, 1.0]})


def test_cli_turns_the_cda_curriculum_off(tmp_path, teacher):
    from infer_fast.cli import main

    common = ["distill", "--method", "cda", "--dataset", DATASET, "--teachers", teacher[0], "--ipc", "1",
              "--iterations", "1", "--device", "cpu", "--quiet"]
    assert main([*common, "--augmentation", "roll", "--crop-scale-curriculum", "off", "--out", str(tmp_path / "a")]) == 0
    made = load_distilled(tmp_path / "a")
    assert made.hyperparameters["augmentation"] == "roll" and made.hyperparameters["crop_scale_curriculum"] is None
    assert main([*common, "--crop-scale", "[0.08,0.5]", "--out", str(tmp_path / "b")]) == 0
    assert load_distilled(tmp_path / "b").hyperparameters["crop_scale_curriculum"] == ["cosine", 0.5, 1.0]


# ---- 5. RDED with teachers whose logits are not finite --------------------------------------

class NanTeacher(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.head = nn.Linear(1, num_classes)

    def forward(self, x):
        return self.head(x.mean((1, 2, 3))[:, None]) * float("nan")


def test_rded_refuses_nan_teacher_logits_naming_the_class(tmp_path):
    from infer_fast.data import load_dataset

    patches = torch.zeros(4, 1, 14, 14)
    with pytest.raises(ValueError, match=r"class 3: the teachers' logits are not finite .* check the teachers"):
        rded.true_class_loss(patches, 3, [NanTeacher()], 28)
    with pytest.raises(ValueError, match=r"not finite .*try precision fp32"):
        rded.true_class_loss(patches, 3, [NanTeacher()], 28, precision="bf16")
    with pytest.raises(ValueError, match=r"class 0: the teachers' logits are not finite"):
        rded.rded_set(load_dataset(DATASET, "train"), [NanTeacher()], ipc=1,
                      options={"candidates_per_class": 4, "crops_per_image": 2})


# ---- 6, 7. a diverging student; a student's resume said --------------------------------------

def test_a_diverging_student_stops_before_its_checkpoint(tmp_path):
    from infer_fast.data import load_dataset
    from infer_fast.student import StudentConfig, StudentDivergedError, train_student

    ds, test = _random_set(tmp_path / "set"), load_dataset(DATASET, "test")
    cfg = StudentConfig(model="convnet-w8-d2", epochs=1, batch_size=16, lr=1e30, labels="hard", seed=3, device="cpu")
    checkpoint = tmp_path / "seed3.pt"
    with pytest.raises(StudentDivergedError, match=r"student training diverged: .* for seed 3 at epoch 1, step \d+ "
                                                   r"of 7, with lr 1e\+30: try a lower learning rate \(--lr"):
        train_student(ds, test, cfg, progress=False, checkpoint=checkpoint)
    assert not checkpoint.exists()


def test_a_resumed_student_says_so(tmp_path, monkeypatch, capsys):
    import infer_fast.student as student
    from infer_fast.data import load_dataset

    ds, test = _random_set(tmp_path / "set"), load_dataset(DATASET, "test")
    cfg = student.StudentConfig(model="convnet-w8-d2", epochs=2, batch_size=50, labels="hard", seed=1, device="cpu")
    checkpoint = tmp_path / "seed1.pt"
    restore = kill_after_save(monkeypatch, student)  # (after the first epoch's checkpoint)
    with pytest.raises(KeyboardInterrupt):
        student.train_student(ds, test, cfg, progress=False, checkpoint=checkpoint)
    restore()
    capsys.readouterr()
    student.train_student(ds, test, cfg, progress=False, checkpoint=checkpoint, resume=True)
    assert capsys.readouterr().out == f"{checkpoint}: resuming student seed 1 after epoch 1/2\n"
    student.train_student(ds, test, cfg, progress=False, checkpoint=checkpoint, resume=True)
    assert capsys.readouterr().out == ""  # (finished: read back, not continued)
