"""Recovery on a GPU (skipped without one): the CUDA kernels are the ones that run, the loop
makes no host synchronisation after its first iteration (replays of the captured iteration
included), and what it recovers agrees with the eager loop on torch's own kernels (another
implementation of every op) to a bound derived from the arithmetic."""
import math
from dataclasses import replace

import pytest
import torch

from infer_fast.distill import RecoveryConfig, cuda_graphs, engine, recover_ufcs
from infer_fast.models import create_model
from infer_fast.ops import available_backends
from infer_fast.ops.bn_hooks import bn_layers

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
CLASSES, SIZE = 10, 32


@pytest.fixture(autouse=True)
def float32_convolutions():
    """The bounds below are derived for float32 arithmetic: cuDNN's default TF32 convolutions
    (10-bit mantissas) would round the two runs' slightly different inputs differently."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_the_cuda_kernels_are_built_for_this_gpu():
    """A GPU without our CUDA kernels is a failed installation, not a reason to skip."""
    assert "cuda" in available_backends("cuda"), "the CUDA backend is unavailable on this GPU (see infer-fast info)"


def small_teacher(seed=0):
    torch.manual_seed(seed)
    teacher = create_model("resnet18", num_classes=CLASSES, in_channels=3, image_size=SIZE).cuda().eval()
    with torch.no_grad():  # running statistics that are not the initial 0 / 1
        for module in teacher.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return teacher


def natural_sets(k=2, size=SIZE):
    """Pixels away from 0 and 255: the composed images stay inside the clamp's bounds, which
    a compensator of either sign would otherwise switch on and off."""
    gen = torch.Generator().manual_seed(0)
    return torch.randint(16, 240, (k, CLASSES, 3, size, size), generator=gen, dtype=torch.uint8)


# Comparing two recoveries element by element fails for any two roundings: Adam's normalized
# step turns a rounding-sized gradient element into a whole step of either sign, and the
# trajectories part (measured on the CPU, ResNet-18 at 32 px: our C++ kernels and torch's are
# 1e-6 apart after one iteration and 0.1 after ten; a learning rate 2^-20 larger does the
# same). With Adam's epsilon far above every gradient, its steps are lr * g / eps, smooth in
# the gradient, and the two runs stay as close as their gradients are.
LINEAR_ADAM_EPS = 1e3


def comparable(iterations, **settings):
    return RecoveryConfig(iterations=iterations, group_size=2, eps=LINEAR_ADAM_EPS, **settings)


def on_torch_kernels(natural, teacher, config):
    """The same recovery, eager, on the ``torch`` backend: torch's own ops for every fused op."""
    result = recover_ufcs(natural, [teacher], MEAN, STD, replace(config, cuda_graphs=False), progress=False,
                          backend="torch")
    assert {s["backend"] for s in result["stats"]} == {"torch"}
    return result


def agreement_bound(config, teacher):
    """How far apart (norm-wise, relative) two recoveries through different kernels, graphs or
    chunks may end: each iteration's gradient differs by the rounding of its sums (float32:
    sqrt(K L) eps, K = values per BN statistic, L = BN layers; bf16: every layer's output and
    gradient rounded to 8 bits, sqrt(L) 2^-8), T times; and a ReLU whose input is within that
    rounding of 0 may switch in one run only, which moves that unit's share of the gradient
    (float32: 2e-3 allowed; measured on the CPU between our C++ kernels and torch's, chunked
    or whole, T <= 24: up to 5e-4 in float32, 0.035 in bf16). A wrong kernel, a frozen
    learning rate or augmentation moves the result by O(1)."""
    layers = len(bn_layers(teacher))
    if config.precision == "bf16":
        return config.iterations * math.sqrt(layers) * 2.0 ** -8
    rounding = math.sqrt(layers * CLASSES * SIZE * SIZE) * torch.finfo(torch.float32).eps
    return config.iterations * rounding + 2e-3


def assert_agree(result, reference, config, teacher):
    distance = ((result["ufc"] - reference["ufc"]).norm() / reference["ufc"].norm()).item()
    bound = agreement_bound(config, teacher)
    assert distance <= bound, f"relative distance {distance:.3g} > {bound:.3g}"


@pytest.fixture
def replays(monkeypatch):
    """How many iterations ran as replays of a captured CUDA graph (while the fixture is active)."""
    count = [0]
    replay = cuda_graphs.CapturedIteration.replay

    def counting_replay(self):
        count[0] += 1
        return replay(self)

    monkeypatch.setattr(cuda_graphs.CapturedIteration, "replay", counting_replay)
    return count


@pytest.mark.parametrize("settings", [
    dict(augmentation="roll"),
    dict(augmentation="roll", fused_bn=True),
    dict(augmentation="roll", precision="bf16", channels_last=True, fused_bn=True),
    dict(augmentation="imagenet", max_shift=8),
], ids=["roll", "fused", "bf16", "imagenet"])
def test_no_host_sync_after_the_first_iteration(monkeypatch, replays, settings):
    """Iterations 2..T run under torch.cuda.set_sync_debug_mode("error"): a .item(), a
    blocking copy to the host or a nonzero in the loop raises; the iterations after the
    capture are replays of the CUDA graph (counted), so they are checked too. The progress bar
    is on. The CUDA backend ran, and the result agrees with torch's kernels."""
    monkeypatch.setattr(engine, "CHECK_HOST_SYNCS", True)
    config = comparable(24, **settings)
    teacher, natural = small_teacher(), natural_sets()
    result = recover_ufcs(natural, [teacher], MEAN, STD, config, progress=True)
    assert torch.cuda.get_sync_debug_mode() == 0  # restored
    assert [(s["backend"], s["cuda_graph"]) for s in result["stats"]] == [("cuda", "captured")]
    assert replays[0] == config.iterations - cuda_graphs.GRAPH_WARMUP_ITERATIONS
    monkeypatch.setattr(engine, "CHECK_HOST_SYNCS", False)
    assert_agree(result, on_torch_kernels(natural, teacher, config), config, teacher)


GRAPH_CASES = {
    "roll": dict(augmentation="roll"),
    "imagenet": dict(augmentation="imagenet", max_shift=8),
    "bf16-fused": dict(augmentation="roll", precision="bf16", channels_last=True, fused_bn=True),
}


@pytest.mark.parametrize("case", list(GRAPH_CASES))
def test_cuda_graph_recovers_what_eager_does(case):
    """Each batch's iteration captured once and replayed recovers what the eager loop does
    (on the same kernels; the learning rate and Adam's bias correction in fp32 on the device
    instead of fp64 on the host) and what the eager loop on torch's kernels does: a kernel
    wrong in both CUDA paths alike cannot pass (agreement_bound)."""
    config = comparable(10, **GRAPH_CASES[case])
    teacher, natural = small_teacher(), natural_sets()
    eager = recover_ufcs(natural, [teacher], MEAN, STD, replace(config, cuda_graphs=False), progress=False)
    graphed = recover_ufcs(natural, [teacher], MEAN, STD, config, progress=False)
    assert [(s["backend"], s["cuda_graph"]) for s in eager["stats"]] == [("cuda", "off")]
    assert [(s["backend"], s["cuda_graph"]) for s in graphed["stats"]] == [("cuda", "captured")]
    assert_agree(graphed, eager, config, teacher)
    assert_agree(graphed, on_torch_kernels(natural, teacher, config), config, teacher)


def test_the_cuda_kernels_run_in_recovery():
    """The profiler sees our CUDA kernels (namespace infer_fast::cuda) in a recovery on the
    GPU: the statistics, the BN backward and the compose."""
    from torch.profiler import ProfilerActivity, profile

    config = RecoveryConfig(iterations=2, group_size=2, cuda_graphs=False)
    teacher, natural = small_teacher(), natural_sets()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        result = recover_ufcs(natural, [teacher], MEAN, STD, config, progress=False)
        torch.cuda.synchronize()
    ours = {e.name for e in prof.events()
            if e.device_type == torch.autograd.DeviceType.CUDA and "infer_fast::cuda" in e.name}
    assert result["stats"][0]["backend"] == "cuda"
    for kernel in ("bn_sums", "bn_backward", "ufc_compose"):
        assert any(kernel in name for name in ours), f"no {kernel} kernel among {sorted(ours)}"


def test_failed_capture_goes_on_eagerly(monkeypatch):
    """A capture that fails is reported (a warning and the batch's stats) and the batch ends
    eagerly with the result it would have had."""
    config = comparable(8)
    teacher, natural = small_teacher(), natural_sets()
    expected = recover_ufcs(natural, [teacher], MEAN, STD, replace(config, cuda_graphs=False), progress=False)

    class FailingCapture:
        def __init__(self, graph):
            pass

        def __enter__(self):
            raise RuntimeError("capture is not possible here")

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "graph", FailingCapture)
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
        result = recover_ufcs(natural, [teacher], MEAN, STD, config, progress=False)
    assert result["stats"][0]["cuda_graph"].startswith("eager: CUDA graph capture failed (RuntimeError")
    assert_agree(result, expected, config, teacher)


@pytest.mark.parametrize("augmentation", ["roll", "imagenet"])
def test_chunks_made_row_by_row_on_the_gpu(monkeypatch, augmentation):
    """The chunked mode on CUDA (each chunk composed and augmented for its rows, its gradient
    sent straight to the UFCs; the final pass without a gradient) recovers what the whole batch
    does, within agreement_bound, with no host synchronisation after the first iteration."""
    config = comparable(6, augmentation=augmentation, max_shift=8, cuda_graphs=False)
    teacher, natural = small_teacher(), natural_sets()
    whole = recover_ufcs(natural, [teacher], MEAN, STD, config, progress=False)
    monkeypatch.setattr(engine, "CHECK_HOST_SYNCS", True)
    chunked = recover_ufcs(natural, [teacher], MEAN, STD, replace(config, chunk_size=7), progress=True)
    assert [s["chunk_size"] for s in chunked["stats"]] == [7]
    assert_agree(chunked, whole, config, teacher)
    assert torch.cuda.get_sync_debug_mode() == 0
