"""The CIFAR/Tiny-ImageNet teachers in the layouts of the INFER release (zhangxin-xd/UFC,
models/{shufflenet,mobilenetv2,efficientnet}.py: ShuffleNetG2_cifar10/100,
MobileNetV2_cifar10/100, EfficientNetB0_cifar10/100): parameter counts, the release's
parameter names and shapes (a release state dict loads), forward shapes, the BatchNorm layers
that run, and the presets that use them."""
import os
from typing import List, Tuple

import pytest
import torch
from conftest import torch_threads
from torch import nn

from infer_fast.models import count_parameters, create_model, get_spec
from infer_fast.ops.bn_hooks import BNStatTracker

RELEASE = ["shufflenet-g2", "mobilenetv2-infer", "efficientnet-b0-infer"]

# Parameter counts measured with the release's model code (num_classes 10 / 100) and ours.
# EfficientNet-B0: the release's counts include its expansion-1 block's conv1 (32x32x1x1) and
# bn1 (2x32), which never run and are not built here: 1088 fewer.
RELEASE_PARAMS = {
    "shufflenet-g2": {10: 887582, 100: 959672},
    "mobilenetv2-infer": {10: 2296922, 100: 2412212},
    "efficientnet-b0-infer": {10: 3599686, 100: 3628576},
}
OUR_PARAMS = {
    "shufflenet-g2": {10: 887582, 100: 959672},
    "mobilenetv2-infer": {10: 2296922, 100: 2412212},
    "efficientnet-b0-infer": {10: 3598598, 100: 3627488},
}
UNUSED_IN_RELEASE = {"efficientnet-b0-infer": ("layers.0.conv1.", "layers.0.bn1.")}
# BatchNorm layers that run in a forward (all of ours; the release's EfficientNet has one more, unused)
EXECUTED_BN = {"shufflenet-g2": 1 + 16 * 3, "mobilenetv2-infer": 1 + 17 * 3 + 4 + 1, "efficientnet-b0-infer": 1 + 2 + 15 * 3}
FEATURES = {"shufflenet-g2": 800, "mobilenetv2-infer": 1280, "efficientnet-b0-infer": 320}
LAST_MAP_32 = {"shufflenet-g2": 4, "mobilenetv2-infer": 4, "efficientnet-b0-infer": 2}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with torch_threads(1):
        yield


# ---------------------------------------------------------------------------------------
# The release's state-dict keys and shapes, in order, written from its model files' layouts
# ---------------------------------------------------------------------------------------
Keys = List[Tuple[str, Tuple[int, ...]]]


def _bn(prefix: str, c: int) -> Keys:
    return [(f"{prefix}.weight", (c,)), (f"{prefix}.bias", (c,)), (f"{prefix}.running_mean", (c,)),
            (f"{prefix}.running_var", (c,)), (f"{prefix}.num_batches_tracked", ())]


def _conv_bn(conv: str, bn: str, cout: int, cin_per_group: int, k: int) -> Keys:
    return [(f"{conv}.weight", (cout, cin_per_group, k, k))] + _bn(bn, cout)


def _linear(num_classes: int, d: int) -> Keys:
    return [("linear.weight", (num_classes, d)), ("linear.bias", (num_classes,))]


def release_shufflenet_g2(num_classes: int) -> Keys:
    keys = _conv_bn("conv1", "bn1", 24, 3, 1)
    cin = 24
    for stage, (out, n) in enumerate(zip((200, 400, 800), (4, 8, 4)), start=1):
        for j in range(n):
            branch = out - cin if j == 0 else out
            mid = branch // 4
            g1 = 1 if cin == 24 else 2
            p = f"layer{stage}.{j}"
            keys += _conv_bn(f"{p}.conv1", f"{p}.bn1", mid, cin // g1, 1)
            keys += _conv_bn(f"{p}.conv2", f"{p}.bn2", mid, 1, 3)
            keys += _conv_bn(f"{p}.conv3", f"{p}.bn3", branch, mid // 2, 1)
            cin = out
    return keys + _linear(num_classes, 800)


def release_mobilenetv2(num_classes: int) -> Keys:
    keys = _conv_bn("conv1", "bn1", 32, 3, 3)
    cin, i = 32, 0
    for t, out, n, s in [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                         (6, 160, 3, 2), (6, 320, 1, 1)]:
        for j in range(n):
            stride, h, p = s if j == 0 else 1, t * cin, f"layers.{i}"
            keys += _conv_bn(f"{p}.conv1", f"{p}.bn1", h, cin, 1)
            keys += _conv_bn(f"{p}.conv2", f"{p}.bn2", h, 1, 3)
            keys += _conv_bn(f"{p}.conv3", f"{p}.bn3", out, h, 1)
            if stride == 1 and cin != out:
                keys += _conv_bn(f"{p}.shortcut.0", f"{p}.shortcut.1", out, cin, 1)
            cin, i = out, i + 1
    return keys + _conv_bn("conv2", "bn2", 1280, 320, 1) + _linear(num_classes, 1280)


def release_efficientnet_b0(num_classes: int) -> Keys:
    keys = _conv_bn("conv1", "bn1", 32, 3, 3)
    cin, i = 32, 0
    for t, out, n, k in zip([1, 6, 6, 6, 6, 6, 6], [16, 24, 40, 80, 112, 192, 320], [1, 2, 2, 3, 3, 4, 1],
                            [3, 3, 5, 3, 5, 5, 3]):
        for _ in range(n):
            h, se, p = t * cin, int(cin * 0.25), f"layers.{i}"
            keys += _conv_bn(f"{p}.conv1", f"{p}.bn1", h, cin, 1)  # (built for t == 1 too)
            keys += _conv_bn(f"{p}.conv2", f"{p}.bn2", h, 1, k)
            keys += [(f"{p}.se.se1.weight", (se, h, 1, 1)), (f"{p}.se.se1.bias", (se,)),
                     (f"{p}.se.se2.weight", (h, se, 1, 1)), (f"{p}.se.se2.bias", (h,))]
            keys += _conv_bn(f"{p}.conv3", f"{p}.bn3", out, h, 1)
            cin, i = out, i + 1
    return keys + _linear(num_classes, 320)


RELEASE_KEYS = {"shufflenet-g2": release_shufflenet_g2, "mobilenetv2-infer": release_mobilenetv2,
                "efficientnet-b0-infer": release_efficientnet_b0}


def _used(name: str, key: str) -> bool:
    return not key.startswith(UNUSED_IN_RELEASE.get(name, ()))


def _is_param(key: str) -> bool:
    return not key.endswith(("running_mean", "running_var", "num_batches_tracked"))


def _build(name, num_classes=10, in_channels=3, seed=0, **kw):
    torch.manual_seed(seed)
    return create_model(name, num_classes=num_classes, in_channels=in_channels, **kw)


# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", RELEASE)
def test_parameter_counts_match_the_release(name):
    for num_classes in (10, 100):
        keys = RELEASE_KEYS[name](num_classes)
        in_release = sum(torch.Size(shape).numel() for key, shape in keys if _is_param(key))
        assert in_release == RELEASE_PARAMS[name][num_classes]
        with torch.device("meta"):
            model = create_model(name, num_classes=num_classes)
        assert count_parameters(model) == OUR_PARAMS[name][num_classes]
        used = sum(torch.Size(shape).numel() for key, shape in keys if _is_param(key) and _used(name, key))
        assert used == OUR_PARAMS[name][num_classes]


@pytest.mark.parametrize("name", RELEASE)
def test_release_names_and_shapes_in_order_and_a_release_state_dict_loads(name):
    keys = RELEASE_KEYS[name](100)
    model = _build(name, num_classes=100)
    ours = [("linear." + k[5:] if k.startswith("head.") else k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(k, s) for k, s in keys if _used(name, k)]

    gen = torch.Generator().manual_seed(1)
    release_sd = {k: (torch.tensor(7) if k.endswith("num_batches_tracked") else torch.randn(s, generator=gen))
                  for k, s in keys}
    given = dict(release_sd)
    model.load_state_dict(release_sd)  # strict: every key used, none missing
    assert release_sd.keys() == given.keys()  # (the caller's dict is left as it was)
    loaded = model.state_dict()
    for key, value in release_sd.items():
        ours_key = "head." + key[7:] if key.startswith("linear.") else key
        if _used(name, key):
            assert torch.equal(loaded[ours_key], value), key
        else:
            assert ours_key not in loaded, key


@pytest.mark.parametrize("name", RELEASE)
def test_forward_shapes_and_feature_maps(name):
    model = _build(name, num_classes=100).eval()
    maps = []
    last_bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)][-1]
    handle = last_bn.register_forward_hook(lambda m, a, out: maps.append(out.shape[-1]))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
        assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, FEATURES[name])
    handle.remove()
    assert maps[0] == LAST_MAP_32[name]  # what the release's fixed 4x4 pool (or its adaptive one) saw
    model = _build(name, num_classes=200).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 200)  # the release's 4x4 pool would not fit
    gray = _build(name, num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        assert gray(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name", RELEASE)
def test_every_batchnorm_runs_and_the_tracker_sees_them(name):
    model = _build(name).eval()
    ran = []
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    handles = [bn.register_forward_pre_hook(lambda m, a: ran.append(m)) for bn in bns]
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    for h in handles:
        h.remove()
    assert len(ran) == len(bns) == len({id(m) for m in ran}) == EXECUTED_BN[name]
    tracker = BNStatTracker(model, groups=1)
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert len(tracker.names) == EXECUTED_BN[name] and tracker.losses().shape == (EXECUTED_BN[name], 1)
    tracker.remove()


@pytest.mark.parametrize("name", RELEASE)
def test_channels_last_computes_the_same(name):
    model = _build(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_efficientnet_release_regularization_and_names():
    model = _build("efficientnet-b0-infer")
    assert model.dropout.p == 0.2  # before the linear head, in training
    assert all(block.stochastic_depth.p == 0.0 for block in model.layers)  # the release's effective drop-connect
    assert model.layers[0].conv1 is None and model.layers[0].bn1 is None  # built by the release, never run
    assert get_spec("ShuffleNet_G2").name == "shufflenet-g2" and get_spec("shufflenet").name == "shufflenetv2"


@pytest.mark.parametrize("preset", ["cifar10.yaml", "cifar100.yaml", "tiny-imagenet.yaml"])
def test_presets_use_the_release_ensemble(preset):
    from infer_fast.pipeline import load_pipeline_config

    cfg = load_pipeline_config(os.path.join(os.path.dirname(__file__), "..", "configs", preset))
    assert [t["model"] for t in cfg.teachers] == ["resnet18", "mobilenetv2-infer", "efficientnet-b0-infer",
                                                  "shufflenet-g2"]


def _as_release_saves_it(name: str, model: nn.Module) -> dict:
    """``model``'s weights as the INFER release saves a teacher: from nn.DataParallel (keys
    prefixed ``module.``) under "state_dict", the head called ``linear``, and for EfficientNet
    the expansion-1 block's conv1 / bn1 it builds and never runs."""
    state = {("linear." + k[5:] if k.startswith("head.") else k): v for k, v in model.state_dict().items()}
    if name == "efficientnet-b0-infer":
        cin = model.conv1.out_channels
        state.update({"layers.0.conv1.weight": torch.randn(cin, cin, 1, 1),
                      **{k: torch.ones(s) for k, s in _bn("layers.0.bn1", cin)}})
    return {"state_dict": {"module." + k: v for k, v in state.items()}, "acc": 0.9, "epoch": 199}


@pytest.mark.parametrize("name", RELEASE)
def test_a_release_teacher_file_becomes_a_teacher_checkpoint(name, tmp_path, capsys):
    """`infer-fast teacher --pretrained NAME --weights FILE` takes a teacher file as the release
    writes it (the authors' CIFAR teachers: the same weights, so the same teachers as theirs)
    and writes the teacher checkpoint distill takes; create_model(pretrained=FILE) loads it."""
    from infer_fast.cli import main

    model = _build(name, num_classes=10, in_channels=1, seed=3).eval()
    torch.save(_as_release_saves_it(name, model), tmp_path / "release.pth")
    loaded = create_model(name, num_classes=10, in_channels=1, pretrained=str(tmp_path / "release.pth")).eval()
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))
    status = main(["teacher", "--pretrained", name, "--weights", str(tmp_path / "release.pth"),
                   "--dataset", "fashion-mnist-mini", "--out", str(tmp_path / "t.pt")])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert f"teacher {name} for fashion-mnist-mini: pretrained weights from {tmp_path / 'release.pth'}" in out
    saved = torch.load(tmp_path / "t.pt", weights_only=True)["state_dict"]
    assert saved.keys() == model.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match=f"'{name}' has no pretrained weights in torch hub's cache: give a weights file"):
        create_model(name, num_classes=10, pretrained=True)
