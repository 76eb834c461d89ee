"""Run-config settings that would silently change or do nothing are refused before any work:
``student: {dynamic}`` (each method decides its labelling), student options no student of the
run uses, ``dynamic_epochs`` without a method whose epochs it sets, external labels that are
a method's name in another case; and a student with mixup_alpha 0 is described as unmixed."""
import pytest
import torch
import yaml

from infer_fast.run_config import PipelineConfig, load_pipeline_config
from infer_fast.student import StudentConfig, augmentation_text, cutmix, mixup, sample_lambda

TEACHER = {"model": "convnet-w8-d2", "epochs": 1, "batch_size": 256, "lr": 0.05, "seed": 0}
STUDENT = {"model": "convnet-w8-d2", "epochs": 1, "batch_size": 64}


def config(tmp_path, **kw):
    values = dict(dataset="fashion-mnist-mini", teachers=[dict(TEACHER)], out=str(tmp_path / "run"), ipc=[2],
                  methods=["infer", "random"], recovery={"iterations": 1}, student=dict(STUDENT), seeds=1,
                  device="cpu")
    values.update(kw)
    return PipelineConfig.from_dict(values)


def config_file(tmp_path, **kw):
    """A run config's YAML file (as `infer-fast run` reads it), loaded."""
    values = dict(dataset="fashion-mnist-mini", teachers=[dict(TEACHER)], out=str(tmp_path / "run"), ipc=[2],
                  methods=["infer", "random"], recovery={"iterations": 1}, student=dict(STUDENT), seeds=1,
                  device="cpu")
    values.update(kw)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(values))
    return load_pipeline_config(str(path))


# ---- 1: student: {dynamic} would relabel every method per batch under its static name ----------------

@pytest.mark.parametrize("dynamic", [True, False])
def test_student_dynamic_is_refused_naming_the_methods_that_label_per_batch(tmp_path, dynamic):
    with pytest.raises(ValueError, match=r"^config: student: dynamic is each method's to set \(the students of "
                                         r"infer_dyn, rded are labelled by the teachers per batch"):
        config(tmp_path, methods=["infer", "infer_dyn"], student={**STUDENT, "dynamic": dynamic})
    # the per-batch methods still label per batch, the others statically
    cfg = config(tmp_path, methods=["infer", "infer_dyn", "random"])
    assert [cfg.student_config(m, 0, 1).dynamic for m in cfg.methods] == [False, True, False]


# ---- 2: student options no student of the run uses --------------------------------------------------

@pytest.mark.parametrize("student, message", [
    ({"labels": "hard", "temperature": 5}, r"temperature \(--temperature\) does not apply with hard labels"),
    ({"mix": "none", "mixup_alpha": 0.5}, r"mixup_alpha \(--mixup-alpha\) does not apply with mix='none'"),
    ({"patches": 2}, r"patches \(--patches\) does not apply with an augmentation other than shuffle_patches"),
])
def test_a_student_option_no_student_uses_is_refused(tmp_path, student, message):
    with pytest.raises(ValueError, match=rf"^config: student: {message}"):
        config(tmp_path, student={**STUDENT, **student})


def test_a_student_option_some_student_of_the_run_uses_is_taken(tmp_path):
    """RDED's students shuffle patches (its set's settings): patches applies to them; the
    infer-fast scores' students learn soft labels, so they take the temperature of a hard-label run."""
    cfg = config(tmp_path, methods=["random", "rded"], student={**STUDENT, "patches": 2})
    assert cfg.student_config("rded", 0, 1, {"augmentation": "shuffle_patches_crop_flip", "patches": 1}).patches == 2
    cfg = config(tmp_path, student={**STUDENT, "labels": "hard", "temperature": 5}, scores=True)
    assert cfg.score_protocol().student_config("soft", True, 0).temperature == 5
    with pytest.raises(ValueError, match=r"^config: student: temperature \(--temperature\) does not apply"):
        config(tmp_path, student={**STUDENT, "labels": "hard", "temperature": 5},
               scores={"protocol": "dd-ranking", "test_interval": 1})


# ---- 3: dynamic_epochs without a method whose student epochs it sets ----------------------------------

@pytest.mark.parametrize("methods", [["infer", "random"], ["rded"]])
def test_dynamic_epochs_without_a_method_it_applies_to_is_refused(tmp_path, methods):
    with pytest.raises(ValueError, match=r"run\.yaml: dynamic_epochs: 5 would be ignored: it is the student epochs "
                                         r"of infer_dyn, not among the run's methods"):
        config_file(tmp_path, methods=methods, recovery={}, dynamic_epochs=5)
    cfg = config_file(tmp_path, methods=[*methods, "infer_dyn"], recovery={}, dynamic_epochs=5)
    assert cfg.student_config("infer_dyn", 0, 1).epochs == 5


# ---- 4: an external label that is a method's name in another case ----------------------------------

@pytest.mark.parametrize("label", ["infer", "Infer", "random", "RDED", "rded", "infer_dyn"])
def test_an_external_label_naming_a_method_in_any_case_is_refused(tmp_path, label):
    with pytest.raises(ValueError, match=rf"^config: external label\(s\) {label} are the names of this run's own "
                                         r"methods or infer-fast's others, ignoring case"):
        config(tmp_path, external={label: str(tmp_path / "nowhere")})


# ---- 5: mixup_alpha 0 mixes nothing, and the student's description says so ---------------------------

@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_mixup_alpha_zero_is_described_and_trained_as_no_mixing(mix):
    assert augmentation_text(StudentConfig(mix=mix, mixup_alpha=0.0)) == "crop_flip, no mixing"
    assert augmentation_text(StudentConfig(mix=mix, mixup_alpha=0.0, augmentation="none")) == \
        "no augmentation or mixing"
    assert augmentation_text(StudentConfig(mix=mix)) == f"crop_flip + {mix}"
    gen = torch.Generator().manual_seed(0)
    x, z = torch.randn(6, 1, 8, 8), torch.randn(6, 10)
    perm = torch.randperm(6, generator=gen)
    lam = sample_lambda(0.0, gen)
    mixed_x, mixed_z = mixup(x, z, lam, perm) if mix == "mixup" else cutmix(x, z, lam, perm, gen)[:2]
    assert torch.equal(mixed_x, x) and torch.equal(mixed_z, z)
