"""Model zoo: registry, shapes, BN layers, features/head, init, parameter counts, external models."""
import copy
import enum
import io
import os
import sys
import types
import warnings

import pytest
import torch
from conftest import torch_threads
from torch import nn

from infer_fast.models import (
    ClassifierNet,
    HeadMismatch,
    count_parameters,
    create_model,
    get_spec,
    list_models,
    model_table,
    penultimate_features,
)
from infer_fast.models.convnet import ConvNet

SMALL = ["convnet", "resnet18", "resnet50", "mobilenetv2", "shufflenetv2", "efficientnet-b0"]
IMAGENET = ["resnet18-imagenet", "resnet50-imagenet", "mobilenetv2-imagenet",
            "efficientnet-b0-imagenet", "shufflenetv2-imagenet"]
ALL = list_models()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models run tiny batches: one thread avoids OpenMP spin-waiting on a busy machine
    (10x faster here on 2 shared cores)."""
    with torch_threads(1):
        yield


def _bn_layers(model):
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def _build(name, num_classes=10, in_channels=3, image_size=32, seed=0, **kw):
    torch.manual_seed(seed)
    return create_model(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kw)


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------
def test_registry_lists_the_required_names():
    assert set(SMALL + IMAGENET) <= set(ALL)
    assert len(ALL) == len(set(ALL))


@pytest.mark.parametrize("alias,canonical", [
    ("ConvNet", "convnet"), ("convnet-128", "convnet"), ("ResNet-18", "resnet18"), ("resnet_50", "resnet50"),
    ("mobilenet_v2", "mobilenetv2"), ("shufflenet", "shufflenetv2"), ("efficientnet_b0", "efficientnet-b0"),
    ("mobilenet_v2-imagenet", "mobilenetv2-imagenet"),
])
def test_aliases(alias, canonical):
    assert get_spec(alias).name == canonical


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError) as info:
        create_model("resnet19", num_classes=10)
    msg = str(info.value)
    assert "unknown model 'resnet19'" in msg
    for name in SMALL + IMAGENET:
        assert name in msg
    assert "torchvision:NAME" in msg
    with pytest.raises(ValueError, match="unknown model"):
        create_model("convnet-w64-d3-fancynorm", num_classes=10)


def test_unknown_name_suggests_each_model_once():
    from infer_fast.models.registry import unknown_model_error

    # (resnet50 has several close aliases: it is named once, and the next model still makes the list)
    assert "Did you mean 'resnet50', 'resnet18'?" in str(unknown_model_error("resnet5"))


def test_model_table_rows_and_param_counts():
    rows = {r["name"]: r for r in model_table()}
    assert list(rows) == ALL
    for r in rows.values():
        assert isinstance(r["params"], int) and r["params"] > 0
        assert isinstance(r["inputs"], str) and r["description"]
    assert rows["resnet18"]["inputs"] == "28/32/64" and rows["resnet18-imagenet"]["inputs"] == "224"
    expected = {  # 10 classes, 3 channels, 32x32 for ConvNet
        "convnet": 0.32e6, "resnet18": 11.17e6, "resnet50": 23.52e6, "mobilenetv2": 2.24e6,
        "shufflenetv2": 1.26e6, "efficientnet-b0": 4.02e6,
    }
    for name, count in expected.items():
        assert abs(rows[name]["params"] - count) / count < 0.01, (name, rows[name]["params"])
    assert rows["convnet"]["params"] == 320010  # 3x(conv+BN) + Linear(128*4*4, 10)


def test_imagenet_variants_match_torchvision_parameter_counts():
    # torchvision's published counts for 1000 classes
    expected = {"resnet18-imagenet": 11689512, "resnet50-imagenet": 25557032, "mobilenetv2-imagenet": 3504872,
                "efficientnet-b0-imagenet": 5288548, "shufflenetv2-imagenet": 2278604}
    for name, count in expected.items():
        with torch.device("meta"):
            model = create_model(name, num_classes=1000, image_size=224)
        assert count_parameters(model) == count, name


# ---------------------------------------------------------------------------------------
# Every registered model
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_train_forward_backward_1ch_28(name):
    model = _build(name, num_classes=7, in_channels=1, image_size=28).train()
    assert isinstance(model, ClassifierNet) and isinstance(model.head, nn.Linear)
    assert len(_bn_layers(model)) > 0
    x = torch.randn(2, 1, 28, 28)
    out = model(x)
    assert out.shape == (2, 7)
    nn.functional.cross_entropy(out, torch.tensor([0, 6])).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, no_grad
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", ALL)
def test_eval_3ch_32_features_head_determinism_and_bn_execution(name):
    model = _build(name, num_classes=10, in_channels=3, image_size=32).eval()
    ran = set()
    bns = _bn_layers(model)
    handles = [bn.register_forward_pre_hook(lambda m, a: ran.add(id(m))) for bn in bns]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        feats = model.forward_features(x)
        out2 = model.head(feats)
    for h in handles:
        h.remove()
    assert out.shape == (2, 10)
    assert feats.shape == (2, model.num_features) and feats.shape[1] == model.head.in_features
    assert torch.equal(out, out2)  # consistent and deterministic in eval mode
    assert len(ran) == len(bns)  # every BatchNorm layer runs in forward (INFER's BN loss needs it)
    with torch.no_grad():
        assert torch.equal(penultimate_features(model, x), feats)


@pytest.mark.parametrize("name", ["convnet", "resnet18", "shufflenetv2", "efficientnet-b0"])
def test_forward_64(name):
    model = _build(name, num_classes=200, in_channels=3, image_size=64).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 200)


def test_resnet18_imagenet_224():
    model = _build("resnet18-imagenet", num_classes=1000, image_size=224).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize("name", ALL)
def test_deterministic_init(name):
    a, b = _build(name, seed=3), _build(name, seed=3)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    for bn in _bn_layers(a):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))
    c = _build(name, seed=4)
    assert not torch.equal(a.head.weight, c.head.weight)


def test_kaiming_init_scale():
    model = _build("resnet18")
    w = model.layer3[0].conv2.weight  # fan_out = 256 * 3 * 3
    expected_std = (2.0 / (256 * 9)) ** 0.5
    assert abs(w.std().item() / expected_std - 1) < 0.05


def test_small_models_downsampling():
    # feature-map sizes before pooling for 32x32 inputs (the CIFAR variants' strides)
    def last_map(model):
        maps = []
        bn = _bn_layers(model)[-1]
        h = bn.register_forward_hook(lambda m, a, out: maps.append(out.shape[-1]))
        with torch.no_grad():
            model.eval()(torch.randn(1, 3, 32, 32))
        h.remove()
        return maps[-1]

    assert last_map(_build("resnet18")) == 4
    assert last_map(_build("mobilenetv2")) == 4
    assert last_map(_build("shufflenetv2")) == 4
    assert last_map(_build("efficientnet-b0")) == 2
    assert last_map(_build("resnet18-imagenet")) == 1


# ---------------------------------------------------------------------------------------
# ConvNet
# ---------------------------------------------------------------------------------------
def test_convnet_sizes_and_names():
    m28 = _build("convnet", in_channels=1, image_size=28)
    assert m28.num_features == 128 * 3 * 3  # 28 -> 14 -> 7 -> 3
    assert _build("convnet", image_size=64).num_features == 128 * 8 * 8
    m = _build("convnet-w64-d4", image_size=32)
    assert (m.width, m.depth, m.norm, m.num_features) == (64, 4, "batchnorm", 64 * 2 * 2)
    m = _build("convnet", width=32, depth=2, norm="none")
    assert m.num_features == 32 * 8 * 8 and not _bn_layers(m)
    with pytest.raises(ValueError, match="implies width=64"):
        create_model("convnet-w64", num_classes=10, width=32)
    with pytest.raises(ValueError, match="too deep"):
        create_model("convnet-d6", num_classes=10, image_size=32)
    with pytest.raises(ValueError, match="built for 32x32"):
        _build("convnet", image_size=32)(torch.randn(1, 3, 28, 28))


@pytest.mark.parametrize("norm,layer", [("instancenorm", nn.InstanceNorm2d), ("groupnorm", nn.GroupNorm),
                                        ("batchnorm", nn.BatchNorm2d)])
def test_convnet_norms(norm, layer):
    model = _build(f"convnet-w16-d3-{norm}", in_channels=1, image_size=28)
    assert isinstance(model, ConvNet) and model.norm == norm
    assert sum(isinstance(m, layer) for m in model.modules()) == 3
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


# ---------------------------------------------------------------------------------------
# Misc API
# ---------------------------------------------------------------------------------------
def test_argument_validation():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_classes"):
            create_model("convnet", num_classes=bad)
    with pytest.raises(ValueError, match="in_channels"):
        create_model("convnet", num_classes=10, in_channels=0)
    with pytest.raises(ValueError, match="no pretrained weights"):
        create_model("resnet18", num_classes=10, pretrained=True)


def test_models_pickle_and_copy():
    model = _build("convnet", image_size=28, in_channels=1)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    clone = copy.deepcopy(model)
    x = torch.randn(2, 1, 28, 28)
    model.eval(), loaded.eval(), clone.eval()
    assert torch.equal(model(x), loaded(x)) and torch.equal(model(x), clone(x))


def test_state_dict_aliases_load_torchvision_names():
    src = _build("mobilenetv2-imagenet", seed=1)
    sd = {("classifier.1." + k[5:] if k.startswith("head.") else k): v for k, v in src.state_dict().items()}
    dst = _build("mobilenetv2-imagenet", seed=2)
    dst.load_state_dict(sd)  # strict
    assert torch.equal(dst.head.weight, src.head.weight)
    wrapper = nn.Sequential(_build("resnet18", seed=2))  # also works nested
    sd = {("0.fc." + k[5:] if k.startswith("head.") else "0." + k): v for k, v in _build("resnet18", seed=1).state_dict().items()}
    wrapper.load_state_dict(sd)


# ---------------------------------------------------------------------------------------
# Built-in ImageNet variants: torchvision checkpoints from the local hub cache
# ---------------------------------------------------------------------------------------
@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    return tmp_path / "checkpoints"


def _torchvision_style_resnet18_checkpoint(folder):
    src = _build("resnet18-imagenet", num_classes=1000, seed=11)
    sd = {("fc." + k[5:] if k.startswith("head.") else k): v for k, v in src.state_dict().items()}
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}  # old torchvision files lack them
    torch.save(sd, folder / "resnet18-f37072fd.pth")
    return src


def test_builtin_imagenet_pretrained_from_cache(hub_dir):
    with pytest.raises(ValueError, match="never downloads"):
        create_model("resnet18-imagenet", num_classes=1000, pretrained=True)
    src = _torchvision_style_resnet18_checkpoint(hub_dir)
    model = _build("resnet18-imagenet", num_classes=1000, pretrained=True, seed=5)
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    with pytest.warns(UserWarning, match="fresh 10-class head.*stem conv"):
        gray = _build("resnet18-imagenet", num_classes=10, in_channels=1, pretrained=True)
    assert torch.allclose(gray.conv1.weight, src.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(gray.layer1[0].conv1.weight, src.layer1[0].conv1.weight)
    with pytest.raises(HeadMismatch, match="resnet18-imagenet's pretrained classifier has 1000 classes, not 10"):
        create_model("resnet18-imagenet", num_classes=10, pretrained=True, pretrained_head=True)
    kept = create_model("resnet18-imagenet", num_classes=1000, pretrained=True, pretrained_head=True)
    assert torch.equal(kept.head.weight, src.head.weight)
    with pytest.raises(ValueError, match="does not match"):
        create_model("resnet50-imagenet", num_classes=10, pretrained=str(hub_dir / "resnet18-f37072fd.pth"))


def test_every_missing_weights_file_named_in_one_error(hub_dir):
    """check_pretrained_weights (run before a run's or `teacher --pretrained`'s work) names all
    the files missing, and the folder, in one error; pretrained_weights_table says which are here."""
    from infer_fast.models import check_pretrained_weights, pretrained_weights_table

    requests = [("resnet18-imagenet", True), ("mobilenetv2-imagenet", True),
                ("efficientnet-b0-imagenet", str(hub_dir.parent / "mine.pth"))]
    with pytest.raises(ValueError) as info:
        check_pretrained_weights(requests)
    msg = str(info.value)
    assert "(3 files)" in msg and f"in {hub_dir} " in msg and "never downloads" in msg
    assert "resnet18-f37072fd.pth (resnet18-imagenet)" in msg and "mobilenet_v2-b0353104.pth (mobilenetv2-imagenet)" in msg
    assert f"; {hub_dir.parent / 'mine.pth'} (efficientnet-b0-imagenet)" in msg
    # (the reference releases' weights, IMAGENET1K_V1: torchvision's DEFAULT is V2 for mobilenet_v2)
    assert "get_model('resnet18', weights='IMAGENET1K_V1'); torchvision.models.get_model('mobilenet_v2', " \
           "weights='IMAGENET1K_V1')" in msg
    _torchvision_style_resnet18_checkpoint(hub_dir)
    torch.save({}, hub_dir / "mobilenet_v2-7ebf99e0.pth")  # the V2 weights are taken when V1's are not cached
    with pytest.raises(ValueError, match=r"\(1 file\): .*mine.pth") as info:
        check_pretrained_weights(requests)
    assert "resnet18-f37072fd" not in str(info.value) and "mobilenet_v2" not in str(info.value)
    check_pretrained_weights(requests[:2] + [("convnet", False)])
    with pytest.raises(ValueError, match="'resnet18' has no pretrained weights"):
        check_pretrained_weights([("resnet18", True)])
    folder, rows, fetch = pretrained_weights_table()
    found = {r["name"]: r["found"] and os.path.basename(r["found"]) for r in rows}
    assert folder == str(hub_dir) and set(found) == {n for n in IMAGENET}
    assert found["resnet18-imagenet"] == "resnet18-f37072fd.pth" and found["mobilenetv2-imagenet"] == "mobilenet_v2-7ebf99e0.pth"
    torch.save({}, hub_dir / "mobilenet_v2-b0353104.pth")  # and V1's first when both are
    [row] = [r for r in pretrained_weights_table()[1] if r["name"] == "mobilenetv2-imagenet"]
    assert os.path.basename(row["found"]) == "mobilenet_v2-b0353104.pth"
    assert found["resnet50-imagenet"] is None and "get_model('resnet50'" in fetch and "'resnet18'" not in fetch


def test_unusable_hub_cache_entries_are_not_taken_for_checkpoints(hub_dir):
    """An empty file, a cut-off copy or a folder under a checkpoint's name is said to be so,
    and skipped by the finder model loading uses (an older usable version is taken instead)."""
    from infer_fast.models.external import (find_torchvision_checkpoint, torchvision_cache_dir_problem,
                                            torchvision_checkpoint_status)

    (hub_dir / "resnet18-f37072fd.pth").write_bytes(b"")
    torch.save({"w": torch.zeros(100)}, hub_dir / "whole.pth")
    (hub_dir / "resnet50-0676ba61.pth").write_bytes((hub_dir / "whole.pth").read_bytes()[:300])
    (hub_dir / "mobilenet_v2-b0353104.pth").mkdir()
    archs = ("resnet18", "resnet50", "mobilenet_v2", "shufflenet_v2_x1_0")
    assert [torchvision_checkpoint_status(a) for a in archs] == [
        "resnet18-f37072fd.pth: empty", "resnet50-0676ba61.pth: not a complete torch checkpoint",
        "mobilenet_v2-b0353104.pth: not a file", "missing"]
    assert [find_torchvision_checkpoint(a) for a in archs] == [None] * 4
    with pytest.raises(ValueError, match=r"resnet50-0676ba61.pth \(resnet50-imagenet; the entry there is not a "
                                         r"complete torch checkpoint\)"):
        create_model("resnet50-imagenet", num_classes=1000, pretrained=True)
    torch.save({}, hub_dir / "mobilenet_v2-7ebf99e0.pth")
    assert torchvision_checkpoint_status("mobilenet_v2") == "present as mobilenet_v2-7ebf99e0.pth"
    torch.save({}, hub_dir / "resnet18-0000.pth", _use_new_zipfile_serialization=False)  # torch's legacy format
    assert find_torchvision_checkpoint("resnet18") == str(hub_dir / "resnet18-0000.pth")
    assert torchvision_cache_dir_problem() is None


def test_a_hub_checkpoints_folder_that_is_a_file_is_named_so(tmp_path, monkeypatch):
    from infer_fast.models.external import torchvision_cache_dir_problem, torchvision_checkpoint_status

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert torchvision_cache_dir_problem() == "does not exist"
    (tmp_path / "checkpoints").write_text("")
    assert torchvision_cache_dir_problem() == "is a file, not a folder"
    assert torchvision_checkpoint_status("resnet18") == "missing"


# ---------------------------------------------------------------------------------------
# torchvision:NAME / timm:NAME
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("lib", ["torchvision", "timm"])
def test_external_library_missing_gives_clear_error(lib, monkeypatch):
    monkeypatch.setitem(sys.modules, lib, None)  # import -> ImportError, installed or not
    with pytest.raises(ValueError) as info:
        create_model(f"{lib}:resnet18", num_classes=10)
    msg = str(info.value)
    assert f"{lib} is not installed" in msg and f"pip install {lib}" in msg
    assert "resnet18" in msg and "convnet" in msg  # lists the built-ins


class _TinyTV(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self.num_classes = num_classes  # (as timm's models have it)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn1(self.conv1(x))).mean((2, 3)))


class _TinyWeights(enum.Enum):
    IMAGENET1K_V1 = "https://download.pytorch.org/models/tiny-0123abcd.pth"
    DEFAULT = "https://download.pytorch.org/models/tiny-0123abcd.pth"  # alias, as torchvision's DEFAULT

    @property
    def url(self):
        return self.value


def _fake_torchvision(calls):
    tv = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")

    def get_model(name, weights=None, **kw):
        calls.append((name, weights, kw))
        model = _TinyTV(**kw)
        if weights is not None:  # torchvision reads the hub cache
            path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
            model.load_state_dict(torch.load(path, weights_only=True))
        return model

    models.list_models = lambda: ["tiny"]
    models.get_model = get_model
    models.get_model_weights = lambda name: _TinyWeights
    tv.models = models
    return tv, models


def test_torchvision_adaptation_with_fake_module(monkeypatch, hub_dir):
    calls = []
    tv, models = _fake_torchvision(calls)
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)

    with pytest.raises(ValueError, match="has no model 'resnet18'"):
        create_model("torchvision:resnet18", num_classes=10)

    # no weights: built with num_classes; 1 channel -> fresh first conv, with a note
    with pytest.warns(UserWarning, match="first conv 'conv1'"):
        model = create_model("torchvision:tiny", num_classes=10, in_channels=1)
    assert calls[-1] == ("tiny", None, {"num_classes": 10})
    assert model.conv1.in_channels == 1 and model.fc.out_features == 10
    x = torch.randn(2, 1, 8, 8)
    assert model(x).shape == (2, 10)
    assert penultimate_features(model.eval(), x).shape == (2, 4)  # via a hook on fc

    # pretrained, nothing cached: clear error, no download
    with pytest.raises(ValueError, match="tiny-0123abcd.pth.*never downloads"):
        create_model("torchvision:tiny", num_classes=10, pretrained=True)

    # pretrained from the cache: head replaced, RGB kernels summed for 1 channel
    torch.manual_seed(0)
    ref = _TinyTV()
    torch.save(ref.state_dict(), hub_dir / "tiny-0123abcd.pth")
    with pytest.warns(UserWarning, match="1000-class classifier 'fc'.*summing"):
        model = create_model("torchvision:tiny", num_classes=10, in_channels=1, pretrained=True)
    assert model.fc.out_features == 10
    with pytest.raises(HeadMismatch, match="torchvision:tiny's pretrained classifier has 1000 classes, not 10"):
        create_model("torchvision:tiny", num_classes=10, in_channels=1, pretrained=True, pretrained_head=True)
    assert torch.allclose(model.conv1.weight, ref.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(model.bn1.weight, ref.bn1.weight)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 1000 classes, 3 channels: nothing to adapt, no warning
        model = create_model("torchvision:tiny", num_classes=1000, pretrained=True)
    assert torch.equal(model.fc.weight, ref.fc.weight)


def test_timm_with_fake_module(monkeypatch):
    calls = []
    timm = types.ModuleType("timm")
    timm.is_model = lambda name: name == "tiny"
    timm.create_model = lambda name, **kw: calls.append((name, kw)) or _TinyTV(kw.get("num_classes", 1000))
    timm.models = types.SimpleNamespace(get_pretrained_cfg=lambda name, allow_unregistered=True: None)
    monkeypatch.setitem(sys.modules, "timm", timm)
    model = create_model("timm:tiny", num_classes=5, in_channels=1)
    assert calls[-1] == ("tiny", {"pretrained": False, "num_classes": 5, "in_chans": 1})
    assert model.fc.out_features == 5
    with pytest.raises(ValueError, match="has no model"):
        create_model("timm:nope", num_classes=5)
    with pytest.raises(ValueError, match="never downloads"):
        create_model("timm:tiny", num_classes=5, pretrained=True)
    # weights cached: timm builds the model; with pretrained_head, at the weights' class count (timm's default)
    weights = types.SimpleNamespace(file=__file__)
    timm.models.get_pretrained_cfg = lambda name, allow_unregistered=True: weights
    assert create_model("timm:tiny", num_classes=5, pretrained=True).num_classes == 5
    assert calls[-1][1]["num_classes"] == 5 and calls[-1][1]["pretrained"] is True
    assert create_model("timm:tiny", num_classes=1000, pretrained=True, pretrained_head=True).num_classes == 1000
    assert "num_classes" not in calls[-1][1]
    with pytest.raises(HeadMismatch, match="timm:tiny's pretrained classifier has 1000 classes, not 5"):
        create_model("timm:tiny", num_classes=5, pretrained=True, pretrained_head=True)


def test_a_model_built_to_read_its_shapes_is_not_initialized(monkeypatch):
    """On the meta device there are no values to set: init_weights returns at once (its
    Kaiming init under torch.device("meta") ran through torch's Python references, which made
    `infer-fast models` take 4 s instead of 1); a model on the CPU is initialized as before."""
    from infer_fast.models import build_to_check, model_table
    from infer_fast.models.registry import all_specs

    def refused(*args, **kwargs):
        raise AssertionError("an init ran on meta tensors")

    monkeypatch.setattr(torch.nn.init, "kaiming_normal_", refused)
    monkeypatch.setattr(torch.nn.init, "normal_", refused)
    for spec in all_specs():
        size = 32 if 32 in spec.input_sizes else spec.input_sizes[0]
        model = build_to_check(lambda: spec.build(num_classes=10, in_channels=3, image_size=size))
        assert all(p.is_meta for p in model.parameters()), spec.name
    assert len(model_table()) == len(all_specs())
    with pytest.raises(AssertionError, match="an init ran"):  # (on the CPU: initialized, as before)
        all_specs()[0].build(num_classes=10, in_channels=3, image_size=32)


def test_the_model_zoos_docstring_example_runs():
    """Its `>>>` lines are an example a reader copies: they ran into an undefined x."""
    import doctest

    import infer_fast.models as zoo

    result = doctest.testmod(zoo)
    assert result.attempted >= 4 and result.failed == 0
