"""Teacher training: checkpoints, resume after an interruption, loading and refusals."""
import os
import pytest
import torch
from conftest import teacher_stopped_after_epoch_1

from infer_fast import teacher as teacher_mod
from infer_fast.data import ImageSet
from infer_fast.teacher import TeacherConfig, load_teacher, train_teacher

TINY = dict(dataset="fashion-mnist-mini", model="convnet-w8-d2", batch_size=256, lr=0.05, seed=3, device="cpu")


def test_train_then_load(tmp_path):
    out = str(tmp_path / "t.pt")
    summary = train_teacher(TeacherConfig(epochs=2, **TINY), out, progress=False)
    assert summary["epochs_done"] == 2 and len(summary["history"]) == 2
    assert summary["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
    model, meta = load_teacher(out, dataset="fashion-mnist-mini", num_classes=10)
    assert meta["dataset"] == "fashion-mnist-mini" and meta["model"] == "convnet-w8-d2"
    assert meta["normalization"]["mean"] == pytest.approx([0.2860])
    assert meta["toolkit_version"]
    assert not model.training and all(not p.requires_grad for p in model.parameters())
    # the loaded model reproduces the recorded accuracy
    from infer_fast.data import load_dataset

    test = load_dataset("fashion-mnist-mini", "test")
    acc = teacher_mod.evaluate(model, test, 500, torch.device("cpu"))
    assert acc == pytest.approx(summary["test_accuracy"])


def test_resume_after_interruption_gives_the_same_teacher(tmp_path, monkeypatch):
    full = str(tmp_path / "full.pt")
    train_teacher(TeacherConfig(epochs=2, **TINY), full, progress=False)

    interrupted = str(tmp_path / "interrupted.pt")
    real_evaluate = teacher_mod.evaluate
    calls = []

    def crash_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed during epoch 2, after epoch 1's checkpoint
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(teacher_mod, "evaluate", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(TeacherConfig(epochs=2, **TINY), interrupted, progress=False)
    half = torch.load(interrupted, weights_only=True)
    assert half["epochs_done"] == 1 and half["train_state"] is not None
    with pytest.raises(ValueError, match="unfinished"):
        load_teacher(interrupted)

    monkeypatch.setattr(teacher_mod, "evaluate", real_evaluate)
    train_teacher(TeacherConfig(epochs=2, **TINY), interrupted, progress=False)
    a, b = torch.load(full, weights_only=True), torch.load(interrupted, weights_only=True)
    assert a["test_accuracy"] == b["test_accuracy"]
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=0)


def test_refusals(tmp_path):
    out = str(tmp_path / "t.pt")
    train_teacher(TeacherConfig(epochs=1, **TINY), out, progress=False)
    with pytest.raises(ValueError, match="trained on 'fashion-mnist-mini', not 'cifar10'"):
        load_teacher(out, dataset="cifar10")
    with pytest.raises(ValueError, match="predicts 10 classes, not 100"):
        load_teacher(out, num_classes=100)
    with pytest.raises(ValueError, match=r"teacher checkpoint .* belongs to another run \(model differs; recorded "
                                         r"model='convnet-w8-d2'\): resume with the same settings"):
        train_teacher(TeacherConfig(epochs=1, **{**TINY, "model": "convnet-w16-d2"}), out, progress=False)
    with pytest.raises(ValueError, match=r"another run \(epochs, lr differ; recorded epochs=1, lr=0.05\)"):
        train_teacher(TeacherConfig(**{**TINY, "epochs": 3, "lr": 0.1}), out, progress=False)
    # where it trains and evaluates, and where its data lies, are not what the teacher is: kept
    kept = train_teacher(TeacherConfig(epochs=1, **{**TINY, "eval_batch_size": 7, "data_root": str(tmp_path)}), out,
                         progress=False)
    assert kept["epochs_done"] == 1
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        load_teacher(str(bad))
    with pytest.raises(FileNotFoundError):
        load_teacher(str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        train_teacher(TeacherConfig(epochs=0, **TINY), str(tmp_path / "x.pt"), progress=False)


def _untrained_teacher(path, model="convnet-w8-d1", dataset="fashion-mnist-mini", channels=None, image_size=None,
                       recorded=None):
    """A teacher checkpoint as train_teacher writes it for ``dataset`` (a name or mapping),
    with freshly initialized weights for ``channels`` x ``image_size`` inputs (default: the
    dataset's) and ``recorded`` entries changed after the model is built; returns its path."""
    from infer_fast.data import get_spec
    from infer_fast.models import create_model

    meta = teacher_mod._metadata(TeacherConfig(dataset=dataset, model=model, epochs=1), get_spec(dataset))
    meta["channels"] = channels or meta["channels"]
    meta["image_size"] = image_size or meta["image_size"]
    net = create_model(model, num_classes=meta["num_classes"], in_channels=meta["channels"], image_size=meta["image_size"])
    torch.save({**meta, **(recorded or {}), "epochs_done": 1, "test_accuracy": None, "history": [], "elapsed_s": 0.0,
                "state_dict": net.state_dict(), "train_state": None}, path)
    return str(path)


def test_teachers_that_do_not_fit_the_data_are_refused_naming_the_file(tmp_path):
    """load_teacher for a dataset refuses, in one line naming the checkpoint, a model it
    cannot build, a teacher of other input channels or class count, one built for another
    image size (where the model is: ConvNet's head depends on it), and nan or inf weights;
    ``channels`` and ``image_size`` default to the dataset's and may be given (a set's own)."""
    def refused(path, match, **kwargs):
        with pytest.raises(ValueError, match=match) as caught:
            load_teacher(path, **kwargs)
        assert f"teacher {path!r}" in str(caught.value) and "\n" not in str(caught.value)

    fashion = dict(dataset="fashion-mnist-mini", num_classes=10)
    refused(_untrained_teacher(tmp_path / "unknown.pt", recorded={"model": "no-such-model"}),
            "records model 'no-such-model', which cannot be built: unknown model", **fashion)
    refused(_untrained_teacher(tmp_path / "rgb.pt", channels=3), "takes 3-channel images, not the 1-channel ones "
            "of fashion-mnist-mini", **fashion)
    size32 = _untrained_teacher(tmp_path / "size32.pt", image_size=32)
    refused(size32, r"\(convnet-w8-d1\) takes 32x32 images, not the 28x28 ones of fashion-mnist-mini", **fashion)
    load_teacher(size32, **fashion, image_size=32)  # data of that size (a set stored at 32x32)
    load_teacher(size32)  # no data to fit
    load_teacher(_untrained_teacher(tmp_path / "any.pt", model="mobilenetv2", image_size=32), **fashion)  # any size
    inf = _untrained_teacher(tmp_path / "inf.pt")
    ckpt = torch.load(inf, weights_only=True)
    ckpt["state_dict"]["features.0.weight"][0, 0, 0, 0] = float("inf")
    torch.save(ckpt, inf)
    refused(inf, r"holds non-finite weights \(nan or inf\) in 1 tensor\(s\): features.0.weight$")
    subset = {"name": "imagenet", "num_classes": 100, "image_size": 64}  # a mapping: its own class count and size
    imagenet = _untrained_teacher(tmp_path / "imagenet.pt", dataset=subset)
    load_teacher(imagenet, dataset=subset)
    refused(imagenet, r"predicts 100 classes, imagenet has 1000$", dataset="imagenet")
    refused(imagenet, r"takes 64x64 images, not the 128x128 ones of imagenet \(100 classes, 128px\)",
            dataset={**subset, "image_size": 128})


def test_pretrained_teacher_from_the_weight_cache(tmp_path, monkeypatch, capsys):
    """ImageNet teachers come from torchvision weights in the local cache, written as a teacher
    checkpoint that load_teacher (and so distill/relabel/run) accepts; nothing is downloaded."""
    from test_models import _torchvision_style_resnet18_checkpoint

    from infer_fast.teacher import pretrained_teacher

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    out = str(tmp_path / "rn18.pt")
    with pytest.raises(ValueError, match="never downloads"):
        pretrained_teacher("resnet18-imagenet", "imagenet", out)
    assert not os.path.exists(out)
    src = _torchvision_style_resnet18_checkpoint(tmp_path / "checkpoints")
    meta = pretrained_teacher("resnet18-imagenet", "imagenet", out)
    assert meta["model"] == "resnet18-imagenet" and meta["num_classes"] == 1000 and meta["test_accuracy"] is None
    model, loaded = load_teacher(out, dataset="imagenet", num_classes=1000)
    assert not model.training and loaded["config"]["pretrained"] is True
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert pretrained_teacher("resnet18-imagenet", "imagenet", out)["model"] == "resnet18-imagenet"  # kept, not rebuilt
    assert "already holds a 'resnet18-imagenet' teacher for 'imagenet' from pretrained weights" in capsys.readouterr().out
    with pytest.raises(ValueError, match="already holds a 'resnet18-imagenet' teacher for 'imagenet' .*not 'mobilenetv2-imagenet'"):
        pretrained_teacher("mobilenetv2-imagenet", "imagenet", out)  # another teacher is not silently kept


def test_resume_on_other_data_is_refused(tmp_path, monkeypatch):
    """An interrupted teacher continued on a training split with other content (another
    --data-root, changed files) is refused: the checkpoint records the data's digest."""
    out = str(tmp_path / "t.pt")
    real_load = teacher_mod.load_dataset
    teacher_stopped_after_epoch_1(monkeypatch, TeacherConfig(epochs=2, **TINY), out)

    def other_pixels(name, split, **kwargs):
        data = real_load(name, split, **kwargs)
        if split != "train":
            return data
        images = data.images.clone()  # (the loader's own tensors stay as they are)
        images[0] = 255 - images[0]
        return ImageSet(data.spec, images, data.labels, split)

    monkeypatch.setattr(teacher_mod, "load_dataset", other_pixels)
    with pytest.raises(ValueError, match=r"belongs to another run \(the training images differ\): .*--data-root"):
        train_teacher(TeacherConfig(epochs=2, **TINY), out, progress=False)
    monkeypatch.setattr(teacher_mod, "load_dataset", real_load)
    assert train_teacher(TeacherConfig(epochs=2, **TINY), out, progress=False)["epochs_done"] == 2


def test_evaluation_batches_hold_a_bounded_number_of_pixels(monkeypatch):
    """Evaluation streams the split in batches whose pixel count is capped (ImageNet's val at
    224^2 in batches of 1000 cost 6 GiB), with the same accuracy as one batch."""
    from infer_fast.data import load_dataset

    test = load_dataset("fashion-mnist-mini", "test")
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x):
            seen.append(x.shape[0])
            return x.flatten(1)[:, :10]

    whole = teacher_mod.evaluate(Recorder(), test, 1000, "cpu")
    assert seen == [1000]
    seen.clear()
    monkeypatch.setattr(teacher_mod, "EVAL_MAX_PIXELS", 300 * 28 * 28)
    assert teacher_mod.evaluate(Recorder(), test, 1000, "cpu") == whole
    assert seen == [300, 300, 300, 100]


@pytest.mark.parametrize("progress", [False, True])
def test_the_step_losses_are_read_once_per_epoch_or_per_bar_update(tmp_path, step_loss_reads, monkeypatch, progress):
    """No step's loss is read on the host while an epoch runs (a host sync per step on a GPU):
    the epoch's loss is read once after it; with a progress bar, its running loss every
    PROGRESS_LOSS_EVERY steps and at the last step, whose read is the epoch's loss (not read
    again). The epoch's loss is still the steps' losses
    weighted by their batch sizes (19 x 256 + 136 images), summed in step order."""
    monkeypatch.setattr(teacher_mod, "PROGRESS_LOSS_EVERY", 8)
    summary = train_teacher(TeacherConfig(epochs=1, **TINY), str(tmp_path / "t.pt"), progress=progress)
    seen = step_loss_reads
    monkeypatch.undo()
    assert len(seen.losses) == 20 and seen.reads == []
    assert seen.means == (len([0, 8, 16, 19]) if progress else 1)
    total = 0.0
    for step, loss in enumerate(seen.losses):
        total += loss.item() * (136 if step == 19 else 256)
    assert summary["history"][0]["train_loss"] == total / 5000


def test_a_diverging_teacher_stops_with_one_error_and_no_final_checkpoint(tmp_path, monkeypatch):
    from infer_fast.data import load_dataset

    def small(name, split, **kwargs):  # (10 images a class: the divergence shows in the first steps)
        return load_dataset(name, split, **kwargs).per_class(10)

    monkeypatch.setattr(teacher_mod, "load_dataset", small)
    out = tmp_path / "t.pt"
    with pytest.raises(teacher_mod.TeacherDivergedError) as info:
        train_teacher(TeacherConfig(epochs=2, **{**TINY, "batch_size": 20, "lr": 1e10}), str(out), progress=False)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)  # (the CLI's one line)
    assert "non-finite" in msg and "at epoch 1, step " in msg and "of 5" in msg and "lower learning rate (--lr" in msg
    assert not out.exists()


def test_a_teacher_with_a_negative_batchnorm_variance_is_refused_naming_the_layer(tmp_path):
    path = _untrained_teacher(tmp_path / "t.pt")
    ckpt = torch.load(path, weights_only=True)
    layer = next(k for k in ckpt["state_dict"] if k.endswith("running_var"))[:-len(".running_var")]
    ckpt["state_dict"][f"{layer}.running_var"][0] = -1.0
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=rf"teacher '.*t.pt' holds a negative BatchNorm running variance "
                                         rf"\(running_var\) in 1 layer\(s\): {layer} "):
        load_teacher(path)


@pytest.mark.parametrize("legacy", [False, True])
def test_a_truncated_teacher_checkpoint_is_named_truncated(tmp_path, legacy):
    path = _untrained_teacher(tmp_path / "t.pt")
    whole = open(path, "rb").read()
    if legacy:  # (torch.save's pre-zip format)
        torch.save(torch.load(path, weights_only=True), path, _use_new_zipfile_serialization=False)
        whole = open(path, "rb").read()
    (tmp_path / "x.pt").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(ValueError, match=r"teacher checkpoint '.*x.pt' is truncated or corrupt \(not a complete torch "
                                         r"checkpoint"):
        load_teacher(str(tmp_path / "x.pt"))


def test_a_seed_near_the_int64_limit_trains(tmp_path, monkeypatch):
    from infer_fast.data import load_dataset

    monkeypatch.setattr(teacher_mod, "load_dataset", lambda name, split, **kw: load_dataset(name, split, **kw).per_class(2))
    seed = 2**63 - 1  # (the epoch's generator is seeded with seed * 100_003 + epoch: modulo 2**64)
    summary = train_teacher(TeacherConfig(epochs=1, **{**TINY, "seed": seed}), str(tmp_path / "t.pt"), progress=False)
    assert summary["epochs_done"] == 1
