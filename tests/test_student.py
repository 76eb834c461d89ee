"""Static soft labels, mixup and CutMix in logit space, the augmentations, the KL loss, the
CIFAR and ImageNet student recipes, INFER+Dyn, multi-seed evaluation and the
feature-duplication metric (infer_fast.student)."""
import dataclasses
import math

import torch
import torch.nn.functional as F
from conftest import train_tiny_teachers
import pytest

from infer_fast.data import load_dataset
from infer_fast.data.transforms import denormalize, normalize, random_flip, random_resized_crop
from infer_fast.storage import DistilledDataset, DistilledSet, load_distilled, save_distilled, valid_range
from infer_fast.relabel import relabel, relabel_directory
from infer_fast.student import (
    StudentConfig, augment, cutmix, cutmix_box, distillation_loss, evaluate_seeds, feature_duplication, mixup,
    sample_lambda, soft_target_cross_entropy, train_student,
)
from infer_fast.teacher import load_teacher

torch.set_num_threads(1)
FAST = dict(model="convnet-w8-d2", batch_size=50, device="cpu", temperature=4.0)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    paths = train_tiny_teachers(tmp_path_factory.mktemp("teachers"))
    return paths, [load_teacher(p)[0] for p in paths]


@pytest.fixture(scope="module")
def data():
    return load_dataset("fashion-mnist-mini", "train"), load_dataset("fashion-mnist-mini", "test")


def baseline_set(train, per_class=10):
    picked, s = train.per_class(per_class, seed=0), train.spec
    return DistilledSet(method="random", dataset=s.name, num_classes=s.num_classes, channels=s.channels,
                        image_size=s.image_size, mean=s.mean, std=s.std, images=picked.images, labels=picked.labels)


def infer_set(train, num_sets=2, groups=4):
    s, c = train.spec, train.spec.num_classes
    picked = train.per_class(num_sets, seed=0)
    natural = picked.images.view(c, num_sets, *picked.images.shape[1:]).transpose(0, 1).contiguous()
    gen = torch.Generator().manual_seed(0)
    return DistilledSet(method="infer", dataset=s.name, num_classes=c, channels=s.channels, image_size=s.image_size,
                        mean=s.mean, std=s.std, natural=natural,
                        ufc=0.3 * torch.randn(groups, s.channels, s.image_size, s.image_size, generator=gen),
                        ufc_index=torch.arange(groups) % num_sets, ufc_teacher=torch.zeros(groups, dtype=torch.long))


def direct_infer_images(ds):
    """Training images of an INFER set computed here, independently of DistilledDataset."""
    nat = normalize(ds.natural, ds.mean, ds.std)  # (K, C, ch, H, W)
    lo, hi = valid_range(ds.mean, ds.std)
    lo, hi = lo.view(1, -1, 1, 1), hi.view(1, -1, 1, 1)
    composed = [torch.maximum(torch.minimum(nat[ds.ufc_index[g]] + ds.ufc[g].float(), hi), lo) for g in range(ds.G)]
    return torch.cat([nat.flatten(0, 1)] + composed)


@torch.no_grad()
def mean_logits(models, x):
    return torch.stack([m(x) for m in models]).mean(0)


# ---- relabel --------------------------------------------------------------------------------

def test_relabel_infer_is_mean_of_teacher_logits(teachers, data):
    _, models = teachers
    ds = infer_set(data[0])
    out = relabel(ds, models, batch_size=7)
    assert out is ds and ds.has_soft_labels
    soft = ds.soft_labels_flat()
    assert soft.dtype == torch.float16 and soft.shape == (ds.num_training_images(), 10)
    expected = mean_logits(models, direct_infer_images(ds))
    torch.testing.assert_close(soft.float(), expected, rtol=2e-3, atol=2e-3)
    # not one teacher's logits alone
    assert not torch.allclose(soft.float(), mean_logits(models[:1], direct_infer_images(ds)), atol=1e-2)
    # the labels line up with DistilledDataset's training order
    images, stored, hard = DistilledDataset(ds).all_images()
    assert stored.dtype == torch.float16 and torch.equal(stored, soft)  # as stored: float32 a batch at a time
    assert torch.equal(hard, torch.arange(10).repeat(ds.K + ds.G))


def test_relabel_baseline_and_directory_round_trip(teachers, data, tmp_path):
    paths, models = teachers
    ds = baseline_set(data[0], per_class=3)
    save_distilled(ds, tmp_path / "set")
    relabel_directory(tmp_path / "set", paths, device="cpu")
    loaded = load_distilled(tmp_path / "set")
    expected = mean_logits(models, normalize(ds.images, ds.mean, ds.std))
    torch.testing.assert_close(loaded.soft_labels.float(), expected, rtol=2e-3, atol=2e-3)
    assert loaded.hyperparameters["relabel"]["teachers"] == [str(p) for p in paths]


def test_float32_sre2l_set_of_older_versions_relabels_and_trains(teachers, data, tmp_path, capsys):
    """SRe2L sets written before uint8 storage hold float32 normalized images: such a set on
    disk still loads, relabels from its stored floats (not re-quantized), and trains. With
    progress, relabel_directory shows a bar over the images and says where it saves the set."""
    paths, models = teachers
    train, test = data
    picked, s = train.per_class(3, seed=0), train.spec
    lo, hi = valid_range(s.mean, s.std)
    images = torch.maximum(torch.minimum(normalize(picked.images, s.mean, s.std) + 0.01, hi.view(1, -1, 1, 1)),
                           lo.view(1, -1, 1, 1))  # not on the uint8 grid
    old = DistilledSet(method="sre2l", dataset=s.name, num_classes=s.num_classes, channels=s.channels,
                       image_size=s.image_size, mean=s.mean, std=s.std, images=images, labels=picked.labels,
                       budget={"ipc": 3, "K": 0, "M": 2, "accounting": "ipc"})
    save_distilled(old, tmp_path / "old")
    capsys.readouterr()
    relabel_directory(tmp_path / "old", paths, device="cpu", progress=True)
    out, err = capsys.readouterr()
    assert "relabel:" in err and "0/30 " in err  # the bar, over the 30 images
    assert "relabelled sre2l set (30 stored images, " in err and str(tmp_path / "old") in err  # (progress: stderr)
    loaded = load_distilled(tmp_path / "old")
    assert loaded.images.dtype == torch.float32 and torch.equal(loaded.images, images)
    torch.testing.assert_close(loaded.soft_labels.float(), mean_logits(models, images), rtol=2e-3, atol=2e-3)
    r = train_student(loaded, test, StudentConfig(epochs=2, **FAST), progress=False)
    assert 0.0 <= r["final_accuracy"] <= 1.0 and r["num_training_images"] == 30


def test_relabel_needs_teachers(data):
    with pytest.raises(ValueError):
        relabel(baseline_set(data[0], 1), [])


# ---- mixup / loss ---------------------------------------------------------------------------

def test_mixup_interpolates_in_logit_space():
    gen = torch.Generator().manual_seed(3)
    x, z = torch.randn(6, 1, 4, 4, generator=gen), torch.randn(6, 5, generator=gen)
    lam = sample_lambda(0.8, gen)
    assert 0.0 <= lam <= 1.0
    perm = torch.randperm(6, generator=gen)
    xm, zm = mixup(x, z, lam, perm)
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x[perm])
    torch.testing.assert_close(zm, lam * z + (1 - lam) * z[perm])  # logits mixed, not probabilities
    probs = lam * z.softmax(1) + (1 - lam) * z[perm].softmax(1)
    assert not torch.allclose(zm.softmax(1), probs, atol=1e-4)
    # deterministic with the generator; alpha 0 disables mixup
    assert sample_lambda(0.8, torch.Generator().manual_seed(5)) == sample_lambda(0.8, torch.Generator().manual_seed(5))
    assert sample_lambda(0.0, gen) == 1.0
    draws = [sample_lambda(0.8, gen) for _ in range(400)]
    assert abs(sum(draws) / len(draws) - 0.5) < 0.06  # Beta(a, a) has mean 1/2


def test_distillation_loss_is_plain_kl():
    gen = torch.Generator().manual_seed(0)
    s, z, t = torch.randn(8, 10, generator=gen), 5 * torch.randn(8, 10, generator=gen), 30.0
    p = (z / t).softmax(1)
    manual = (p * (p.log() - (s / t).log_softmax(1))).sum(1).mean()
    torch.testing.assert_close(distillation_loss(s, z, t), manual)
    assert distillation_loss(z, z, t).abs().item() < 1e-6


# ---- training -------------------------------------------------------------------------------

def test_student_beats_chance_and_is_deterministic(teachers, data):
    _, models = teachers
    train, test = data
    ds = relabel(baseline_set(train, per_class=10), models)
    cfg = StudentConfig(epochs=40, eval_every=10, **FAST)
    r = train_student(ds, test, cfg, progress=False)
    assert r["final_accuracy"] > 0.3, r
    assert r["best_accuracy"] >= r["final_accuracy"] and r["best_label"]
    assert len(r["history"]) == 40 and r["history"][-1]["test_accuracy"] == r["final_accuracy"]
    assert r["elapsed_s"] > 0
    again = train_student(ds, test, StudentConfig(epochs=3, **FAST), progress=False)
    assert again["best_accuracy"] is None  # eval_every=0: only the final accuracy
    assert train_student(ds, test, StudentConfig(epochs=3, **FAST), progress=False)["history"] == again["history"]


def test_student_trains_on_infer_set(teachers, data):
    _, models = teachers
    ds = relabel(infer_set(data[0]), models)
    r = train_student(ds, data[1], StudentConfig(epochs=2, **FAST), progress=False)
    assert 0.0 <= r["final_accuracy"] <= 1.0 and r["num_training_images"] == ds.num_training_images()


def test_long_epochs_and_evaluations_show_progress_short_ones_do_not(teachers, data, monkeypatch, capsys):
    """An epoch's steps and an evaluation's batches get a bar once they have run SHORT_PHASE_S
    (an ImageNet-size set's epoch or val split: minutes that said nothing before, under 20
    steps or 10,000 test images); a small one is over sooner and stays quiet."""
    import infer_fast.student
    import infer_fast.teacher
    from infer_fast.progress import PROGRESS_ENV_VAR

    monkeypatch.setenv(PROGRESS_ENV_VAR, "bar")  # (tqdm's bars, as on a terminal: nested ones too)
    _, models = teachers
    ds = relabel(infer_set(data[0]), models)
    config = StudentConfig(epochs=1, **FAST)
    train_student(ds, data[1], config, progress=True)
    quiet = capsys.readouterr().err
    for module in (infer_fast.student, infer_fast.teacher):  # (every phase counts as long)
        monkeypatch.setattr(module, "SHORT_PHASE_S", 0.0)
    train_student(ds, data[1], config, progress=True)
    shown = capsys.readouterr().err
    for phase in ("epoch 1:", "evaluating on fashion-mnist-mini test:"):
        assert phase not in quiet and phase in shown, (phase, shown)


def test_hard_label_protocol_without_augmentation(data):
    """labels="hard": cross-entropy with the set's hard labels (no soft labels needed); with
    augmentation and mixing "none" the images go in as stored, and nothing is drawn for them."""
    train, test = data
    ds = baseline_set(train, per_class=10)  # not relabelled
    cfg = StudentConfig(epochs=30, labels="hard", augmentation="none", mix="none", **FAST)
    r = train_student(ds, test, cfg, progress=False)
    assert r["final_accuracy"] > 0.3, r
    assert train_student(ds, test, dataclasses.replace(cfg, epochs=2), progress=False)["history"] == \
        train_student(ds, test, dataclasses.replace(cfg, epochs=2), progress=False)["history"]
    x = torch.randn(3, 1, 4, 4)
    assert augment(x, (0.5,), (0.5,), torch.Generator(), "none") is x
    with pytest.raises(ValueError, match="needs labels='soft'"):
        StudentConfig(labels="hard", dynamic=True).validate()


def test_soft_target_cross_entropy_is_mixed_cross_entropy():
    logits, y = torch.randn(6, 5, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3, 4, 0])
    perm, lam = torch.tensor([5, 4, 3, 2, 1, 0]), 0.3
    target = lam * F.one_hot(y, 5).float() + (1 - lam) * F.one_hot(y[perm], 5).float()
    expected = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])
    torch.testing.assert_close(soft_target_cross_entropy(logits, target), expected)


def test_unrelabelled_set_is_refused(data):
    with pytest.raises(ValueError):
        train_student(baseline_set(data[0], 1), data[1], StudentConfig(epochs=1, **FAST), progress=False)


class Counting(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls, self.inputs = model, 0, []

    def forward(self, x):
        self.calls += 1
        self.inputs.append(x.detach().clone())
        return self.model(x)


def test_labelling_leaves_every_module_of_a_teacher_in_its_own_mode(teachers, data):
    """A wrapper in training mode around a teacher in eval mode (as Counting is): labelling
    through it puts back each module's own mode, so the teacher stays in eval mode (its BN
    running statistics untouched), not the wrapper's flag given to all."""
    from infer_fast.relabel import ensemble_logits

    _, models = teachers
    wrapped = Counting(models[0])
    assert wrapped.training and not models[0].training
    before = {k: v.clone() for k, v in models[0].state_dict().items()}
    ensemble_logits([wrapped], normalize(data[0].images[:8], data[0].spec.mean, data[0].spec.std))
    assert wrapped.training and not any(m.training for m in models[0].modules())
    assert all(torch.equal(v, before[k]) for k, v in models[0].state_dict().items())


def test_dynamic_calls_teachers_and_requires_them(teachers, data):
    _, models = teachers
    ds = baseline_set(data[0], per_class=2)  # no stored soft labels: dynamic mode does not need them
    with pytest.raises(ValueError):
        train_student(ds, data[1], StudentConfig(epochs=1, dynamic=True, **FAST), progress=False)
    counting = [Counting(m) for m in models]
    r = train_student(ds, data[1], StudentConfig(epochs=2, dynamic=True, **FAST), teachers=counting, progress=False)
    # the up-front check of each teacher's logits (one image), then 20 images / batch 50: one step per epoch, 2 epochs
    assert all(c.calls == 3 for c in counting)
    assert 0.0 <= r["final_accuracy"] <= 1.0


def test_evaluate_seeds(teachers, data):
    _, models = teachers
    ds = relabel(baseline_set(data[0], per_class=2), models)
    out = evaluate_seeds(ds, data[1], StudentConfig(epochs=1, **FAST), seeds=(0, 1))
    accs = torch.tensor(list(out["per_seed"].values()), dtype=torch.float64)
    assert set(out["per_seed"]) == {0, 1}
    assert out["mean"] == pytest.approx(accs.mean().item())
    assert out["std"] == pytest.approx(accs.std(unbiased=False).item())


def test_evaluate_seeds_checkpoints_every_seed_and_resumes_where_it_stopped(teachers, data, tmp_path, monkeypatch):
    """With a checkpoints folder each seed's student is checkpointed after every epoch; killed in
    seed 1's second epoch, a call with resume reads seed 0 back (no step trained again) and
    continues seed 1 from its first epoch, to the results of an uninterrupted call; checkpoints
    found without resume are refused before any training."""
    from infer_fast import student as student_mod

    _, models = teachers
    ds = relabel(baseline_set(data[0], per_class=5), models)
    cfg = StudentConfig(epochs=2, **FAST)
    full = evaluate_seeds(ds, data[1], cfg, seeds=(0, 1))
    folder = tmp_path / "students"
    real, calls = student_mod.distillation_loss, {"n": 0}
    steps_per_epoch = -(-ds.num_training_images() // cfg.batch_size)

    def counted(*args, **kwargs):
        calls["n"] += 1
        if calls.get("stop") == calls["n"]:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(student_mod, "distillation_loss", counted)
    calls["stop"] = 3 * steps_per_epoch + 1  # (seed 0's two epochs, seed 1's first: in seed 1's second)
    with pytest.raises(KeyboardInterrupt):
        evaluate_seeds(ds, data[1], cfg, seeds=(0, 1), checkpoints=str(folder))
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["seed0.pt", "seed1.pt"]
    assert torch.load(folder / "seed1.pt", weights_only=True)["epochs_done"] == 1
    with pytest.raises(ValueError, match=r"student checkpoints folder .*students holds seed0.pt, seed1.pt: resume to "
                                         r"continue them \(--resume\), or delete them"):
        evaluate_seeds(ds, data[1], cfg, seeds=(0, 1), checkpoints=str(folder))
    calls.update(n=0, stop=None)
    resumed = evaluate_seeds(ds, data[1], cfg, seeds=(0, 1), checkpoints=str(folder), resume=True)
    assert calls["n"] == steps_per_epoch  # seed 1's second epoch alone
    assert resumed["per_seed"] == full["per_seed"]
    for a, b in zip(resumed["results"], full["results"]):
        assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


def test_train_command_checkpoints_and_resume(teachers, data, tmp_path, capsys):
    """`infer-fast train --checkpoints DIR` keeps the seeds' students; the same command again is
    refused in one line, with --resume it reads them back; --resume needs --checkpoints."""
    from infer_fast.cli import main

    _, models = teachers
    save_distilled(relabel(baseline_set(data[0], per_class=2), models), tmp_path / "set")
    args = ["train", str(tmp_path / "set"), "--model", "convnet-w8-d2", "--epochs", "1", "--seeds", "2",
            "--device", "cpu", "--quiet", "--checkpoints", str(tmp_path / "students")]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "over 2 seed(s)" in first and (tmp_path / "students" / "seed1.pt").is_file()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("infer-fast train: error: student checkpoints folder ") and "holds seed0.pt, seed1.pt" in err
    assert main(args + ["--resume"]) == 0 and capsys.readouterr().out == first
    assert main(args[:-2] + ["--resume"]) == 2
    assert "--resume continues from --checkpoints DIR" in capsys.readouterr().err


# ---- ImageNet recipe (SRe2L): RandomResizedCrop + flip, CutMix ------------------------------

def test_cutmix_pastes_one_box_and_mixes_logits_with_its_area():
    gen = torch.Generator().manual_seed(3)
    x, z = torch.randn(6, 2, 10, 12, generator=gen), torch.randn(6, 5, generator=gen)
    x_before = x.clone()
    perm = torch.arange(6).roll(1)  # no fixed point: every pasted pixel differs
    xm, zm, lam = cutmix(x, z, 0.6, perm, torch.Generator().manual_seed(7))
    assert torch.equal(x, x_before)  # not in place
    changed = (xm != x).any(0).any(0)  # (H, W): where anything was pasted
    rows, cols = changed.any(1), changed.any(0)
    assert torch.equal(changed, rows[:, None] & cols[None, :])  # one rectangle, the same for every image
    assert 0 < changed.sum() <= 0.4 * 10 * 12  # at most 1 - lam of the image
    assert torch.equal(xm[:, :, changed], x[perm][:, :, changed])
    assert torch.equal(xm[:, :, ~changed], x[:, :, ~changed])
    assert lam == pytest.approx(1 - changed.sum().item() / (10 * 12))  # lambda of the box actually pasted
    torch.testing.assert_close(zm, lam * z + (1 - lam) * z[perm])  # logit space, with that lambda
    top, bottom, left, right = cutmix_box(10, 12, 0.6, torch.Generator().manual_seed(7))
    assert (bottom - top, right - left) == (int(rows.sum()), int(cols.sum()))
    # deterministic per generator seed; z may be None (INFER+Dyn)
    again = cutmix(x, None, 0.6, perm, torch.Generator().manual_seed(7))
    assert torch.equal(again[0], xm) and again[1] is None and again[2] == lam
    # lam = 1: nothing is pasted
    same, z_same, lam_same = cutmix(x, z, 1.0, perm, gen)
    assert torch.equal(same, x) and torch.equal(z_same, z) and lam_same == 1.0
    # in place (a batch the caller owns): the same images, pasted into x itself (perm's boxes read first)
    mine = x.clone()
    pasted, _, lam_in_place = cutmix(mine, z, 0.6, perm, torch.Generator().manual_seed(7), inplace=True)
    assert pasted is mine and torch.equal(mine, xm) and lam_in_place == lam


def test_cutmix_box_is_the_standard_clipped_box():
    boxes = [cutmix_box(10, 12, 0.6, torch.Generator().manual_seed(s)) for s in range(60)]
    areas = [(b - t) * (r - l) for t, b, l, r in boxes]
    # sides int(10 * sqrt(0.4)) = 6 and int(12 * sqrt(0.4)) = 7, half-widths 3: 6 x 6 when not clipped
    assert max(areas) == 36 and min(areas) < 36
    assert all(0 <= t <= b <= 10 and 0 <= l <= r <= 12 for t, b, l, r in boxes)
    assert len({(t, l) for t, _, l, _ in boxes}) > 10  # the centre moves


def test_resized_crop_flip_augmentation(data):
    train = data[0]
    s = train.spec
    x = train.normalized(list(range(8)))
    out = augment(x, s.mean, s.std, torch.Generator().manual_seed(0), "resized_crop_flip")
    assert out.shape == x.shape and out.dtype == x.dtype
    lo, hi = valid_range(s.mean, s.std)
    assert (out >= lo.view(1, -1, 1, 1) - 1e-5).all() and (out <= hi.view(1, -1, 1, 1) + 1e-5).all()
    assert torch.equal(out, augment(x, s.mean, s.std, torch.Generator().manual_seed(0), "resized_crop_flip"))
    assert not torch.equal(out, augment(x, s.mean, s.std, torch.Generator().manual_seed(1), "resized_crop_flip"))
    crop_flip = augment(x, s.mean, s.std, torch.Generator().manual_seed(0))
    assert not torch.allclose(out, crop_flip, atol=1e-3)
    # RandomResizedCrop(scale (0.08, 1), ratio (3/4, 4/3)) then flip, on pixels
    gen = torch.Generator().manual_seed(0)
    pixels = random_resized_crop(denormalize(x, s.mean, s.std), 28, (0.08, 1.0), (3 / 4, 4 / 3), gen)
    torch.testing.assert_close(out, normalize(random_flip(pixels, gen), s.mean, s.std))


@pytest.mark.parametrize("field, allowed", [("augmentation", "crop_flip, resized_crop_flip, shuffle_patches_crop_flip, none"),
                                            ("mix", "mixup, cutmix, none"), ("labels", "soft, hard")])
def test_unknown_augmentation_or_mix_is_refused(field, allowed, data):
    with pytest.raises(ValueError, match=f"{field} must be one of {allowed}"):
        StudentConfig(**{field: "bogus"}).validate()
    with pytest.raises(ValueError, match=field):
        StudentConfig.imagenet(**{field: "bogus"})
    with pytest.raises(ValueError, match=field):
        train_student(baseline_set(data[0], 1), data[1], StudentConfig(epochs=1, **{field: "bogus"}), progress=False)
    with pytest.raises(ValueError, match="augmentation"):
        augment(torch.zeros(1, 1, 4, 4), (0.5,), (0.5,), torch.Generator(), "bogus")


def test_recipes():
    assert StudentConfig.cifar() == StudentConfig()
    cifar = StudentConfig.cifar(epochs=5)
    assert (cifar.epochs, cifar.augmentation, cifar.mix, cifar.mixup_alpha, cifar.temperature) == (
        5, "crop_flip", "mixup", 0.8, 30.0)
    imagenet = StudentConfig.imagenet()
    assert (imagenet.epochs, imagenet.temperature, imagenet.augmentation, imagenet.mix, imagenet.mixup_alpha,
            imagenet.lr, imagenet.weight_decay, imagenet.batch_size) == (
        300, 20.0, "resized_crop_flip", "cutmix", 1.0, 1e-3, 0.01, 100)
    short = StudentConfig.imagenet(epochs=2, model="resnet18")
    assert (short.epochs, short.model, short.mix) == (2, "resnet18", "cutmix")


def test_student_imagenet_recipe_trains_and_is_reproducible(teachers, data):
    _, models = teachers
    ds = relabel(baseline_set(data[0], per_class=3), models)
    cfg = StudentConfig.imagenet(epochs=2, **FAST)
    first = train_student(ds, data[1], cfg, progress=False)
    assert math.isfinite(first["final_accuracy"]) and 0.0 <= first["final_accuracy"] <= 1.0
    assert first["config"]["augmentation"] == "resized_crop_flip" and first["config"]["mix"] == "cutmix"
    assert train_student(ds, data[1], cfg, progress=False)["history"] == first["history"]
    other = train_student(ds, data[1], dataclasses.replace(cfg, augmentation="crop_flip", mix="mixup"), progress=False)
    assert other["history"] != first["history"]


@pytest.mark.parametrize("recipe", ["cifar", "imagenet"])
def test_batches_augmented_on_the_device_are_the_hosts_on_the_cpu(teachers, data, recipe):
    """augment_on="device" moves the batch as stored to the training device and augments and
    mixes it there with the same draws from the run's generator: on the CPU the same code on the
    same tensors, so the same weights and history to the bit (crop + flip + mixup, and
    RandomResizedCrop + flip + CutMix). On a GPU: test_host_path.py."""
    ds = relabel(infer_set(data[0]), teachers[1])
    cfg = StudentConfig.from_recipe(recipe, epochs=2, **FAST)
    host = train_student(ds, data[1], cfg, progress=False)
    device = train_student(ds, data[1], dataclasses.replace(cfg, augment_on="device"), progress=False)
    assert device["history"] == host["history"] and device["config"]["augment_on"] == "device"
    assert all(torch.equal(a, b) for a, b in zip(device["model"].state_dict().values(),
                                                 host["model"].state_dict().values()))


def test_dynamic_cutmix_relabels_the_cut_mixed_batch(teachers, data):
    _, models = teachers
    ds = baseline_set(data[0], per_class=2)
    cfg = StudentConfig.imagenet(epochs=2, dynamic=True, **FAST)
    recording = [Counting(m) for m in models]
    r = train_student(ds, data[1], cfg, teachers=recording, progress=False)
    assert all(c.calls == 3 for c in recording)  # the up-front check, then 20 images / batch 50: one step per epoch
    assert math.isfinite(r["final_accuracy"])
    # the first batch rebuilt from the documented draw order: shuffle, augment, lambda, perm, box
    gen = torch.Generator().manual_seed(cfg.seed)
    images, _, _ = DistilledDataset(ds, hard_only=True).all_images()
    x = augment(images[torch.randperm(images.shape[0], generator=gen)], ds.mean, ds.std, gen, "resized_crop_flip")
    lam = sample_lambda(cfg.mixup_alpha, gen)
    expected, _, lam = cutmix(x, None, lam, torch.randperm(x.shape[0], generator=gen), gen)
    assert lam < 1.0  # a box was pasted
    for c in recording:
        torch.testing.assert_close(c.inputs[1], expected)  # (inputs[0]: the check's one zero image)
    again = train_student(ds, data[1], cfg, teachers=[Counting(m) for m in models], progress=False)
    assert again["history"] == r["history"]


# ---- feature duplication -------------------------------------------------------------------

def test_feature_duplication(teachers, data):
    _, models = teachers
    train = data[0]
    img = train.normalized([0])
    same = feature_duplication(img.repeat(6, 1, 1, 1), torch.tensor([0, 0, 0, 1, 1, 1]), models[0])
    assert same == pytest.approx(1.0, abs=1e-5)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(20, 1, 28, 28, generator=gen) * 2
    rand = feature_duplication(noise, torch.arange(20) % 4, models[0])
    real = feature_duplication(train.normalized(list(range(40))), train.labels[:40], models[0])
    for v in (rand, real):
        assert -1.0 <= v <= 1.0 and v < 1.0 - 1e-3
    with pytest.raises(ValueError):
        feature_duplication(img, torch.tensor([0]), models[0])
    with pytest.raises(ValueError, match="1 images but 2 labels"):
        feature_duplication(img, torch.tensor([0, 0]), models[0])
    # streamed chunks (as DistilledDataset.iter_chunks yields them) give the same value
    images = train.normalized(list(range(40)))
    chunks = [(0, images[:15]), (15, images[15:])]
    assert feature_duplication(iter(chunks), train.labels[:40], models[0], batch_size=7) == pytest.approx(real, abs=1e-9)


def test_feature_duplication_progress(teachers, data, capsys):
    """A bar over the images when asked (streamed chunks too), none by default."""
    _, models = teachers
    train = data[0]
    images = train.normalized(list(range(40)))
    capsys.readouterr()
    quiet = feature_duplication(images, train.labels[:40], models[0])
    assert capsys.readouterr().err == ""
    chunks = iter([(0, images[:15]), (15, images[15:])])
    shown = feature_duplication(chunks, train.labels[:40], models[0], batch_size=7, progress=True)
    err = capsys.readouterr().err
    assert "feature duplication:" in err and "0/40 " in err and shown == pytest.approx(quiet, abs=1e-9)


def test_student_resumes_after_interrupt_to_the_same_result(teachers, data, tmp_path, monkeypatch):
    from infer_fast import student as student_mod

    train, test = data
    ds = relabel(baseline_set(train), teachers[1])
    cfg = StudentConfig(epochs=4, eval_every=2, **FAST)
    full = train_student(ds, test, cfg, progress=False)
    ckpt = str(tmp_path / "student.pt")
    real, calls = student_mod.distillation_loss, {"n": 0}
    steps_per_epoch = -(-ds.num_training_images() // cfg.batch_size)

    def killed_in_epoch_3(*args, **kwargs):  # a kill during the third epoch
        calls["n"] += 1
        if calls["n"] == 2 * steps_per_epoch + 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(student_mod, "distillation_loss", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train_student(ds, test, cfg, progress=False, checkpoint=ckpt)
    monkeypatch.setattr(student_mod, "distillation_loss", real)
    assert torch.load(ckpt, weights_only=True)["epochs_done"] == 2
    with pytest.raises(ValueError, match="resume=True"):
        train_student(ds, test, cfg, progress=False, checkpoint=ckpt)
    with pytest.raises(ValueError, match=r"student checkpoint .* belongs to another run \(lr differs; recorded lr=0.001\)"):
        train_student(ds, test, StudentConfig(**{**cfg.__dict__, "lr": 0.5}), progress=False, checkpoint=ckpt, resume=True)
    other = relabel(baseline_set(train), teachers[1][:1])  # same images, soft labels of one teacher only
    with pytest.raises(ValueError, match=r"belongs to another run \(the distilled set's images or labels differ\)"):
        train_student(other, test, cfg, progress=False, checkpoint=ckpt, resume=True)
    resumed = train_student(ds, test, cfg, progress=False, checkpoint=ckpt, resume=True)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in full["history"]]
    assert resumed["final_accuracy"] == full["final_accuracy"] and resumed["best_accuracy"] == full["best_accuracy"]


def test_set_too_large_to_hold_trains_the_same(teachers, data, monkeypatch):
    """A set beyond the in-memory budget is composed batch by batch with the same values, so
    the student trains exactly as with the materialized set."""
    from infer_fast import storage

    _, models = teachers
    ds = relabel(infer_set(data[0]), models)
    held = DistilledDataset(ds)
    streamed = DistilledDataset(ds, cache_bytes=1)
    assert held.fits_in_memory and not streamed.fits_in_memory
    index = torch.tensor([0, 5, len(held) - 1, 23, 40, 41, 5])
    images, _, _ = held.all_images()
    assert torch.equal(streamed.images_at(index), images[index])
    cfg = StudentConfig(epochs=2, **FAST)
    full = train_student(ds, data[1], cfg, progress=False)
    real_init = storage.DistilledDataset.__init__

    def tiny_cache(self, *args, **kwargs):
        kwargs["cache_bytes"] = 1
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(storage.DistilledDataset, "__init__", tiny_cache)
    assert train_student(ds, data[1], cfg, progress=False)["history"] == full["history"]


def test_the_step_losses_are_read_once_per_epoch(teachers, data, step_loss_reads, monkeypatch):
    """A step's loss is never read on the host while the epoch runs (on a GPU each read is a
    host sync per step); the epoch's loss is still the steps' losses weighted by their batch
    sizes (40, 40, 20 images), summed in step order: the same bits as a read per step."""
    ds = relabel(baseline_set(data[0], per_class=10), teachers[1])  # 100 images
    history = train_student(ds, data[1], StudentConfig(epochs=2, **{**FAST, "batch_size": 40}), progress=False)["history"]
    monkeypatch.undo()
    assert len(step_loss_reads.losses) == 6 and step_loss_reads.reads == [] and step_loss_reads.means == 2
    values = [loss.item() for loss in step_loss_reads.losses]
    for epoch, record in enumerate(history):
        steps = values[3 * epoch:3 * epoch + 3]
        assert record["loss"] == (0.0 + steps[0] * 40 + steps[1] * 40 + steps[2] * 20) / 100
