"""Recovery on a GPU (skipped without one): the loop makes no host synchronisation after its
first iteration, and each batch's iteration captured as a CUDA graph recovers what the eager
loop recovers."""
from dataclasses import replace

import pytest
import torch

from infer_fast.distill import RecoveryConfig, engine, recover_ufcs
from infer_fast.models import create_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def small_teacher(seed=0):
    torch.manual_seed(seed)
    teacher = create_model("resnet18", num_classes=10, in_channels=3, image_size=32).cuda().eval()
    with torch.no_grad():  # running statistics that are not the initial 0 / 1
        for module in teacher.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return teacher


def natural_sets(k=2, size=32):
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (k, 10, 3, size, size), generator=gen, dtype=torch.uint8)


@pytest.mark.parametrize("settings", [
    dict(augmentation="roll"),
    dict(augmentation="roll", fused_bn=True),
    dict(augmentation="roll", precision="bf16", channels_last=True, fused_bn=True),
    dict(augmentation="imagenet", max_shift=8),
], ids=["roll", "fused", "bf16", "imagenet"])
def test_no_host_sync_after_the_first_iteration(monkeypatch, settings):
    """Iterations 2..T run under torch.cuda.set_sync_debug_mode("error"): a .item(), a
    blocking copy to the host or a nonzero in the loop raises. The progress bar is on."""
    monkeypatch.setattr(engine, "CHECK_HOST_SYNCS", True)
    config = RecoveryConfig(iterations=12, group_size=2, **settings)
    result = recover_ufcs(natural_sets(), [small_teacher()], MEAN, STD, config, progress=True)
    assert torch.isfinite(result["ufc"]).all()
    assert torch.cuda.get_sync_debug_mode() == 0  # restored


GRAPH_CASES = {
    "roll": dict(augmentation="roll"),
    "imagenet": dict(augmentation="imagenet", max_shift=8),
    "bf16-fused": dict(augmentation="roll", precision="bf16", channels_last=True, fused_bn=True),
}


@pytest.mark.parametrize("case", list(GRAPH_CASES))
def test_cuda_graph_recovers_what_eager_does(case):
    """Each batch's iteration captured once and replayed gives the eager compensators, to the
    rounding of the two paths (the learning rate and Adam's bias correction in fp32 on the
    device instead of fp64 on the host; atomics in some backward kernels): per iteration at
    most a relative 1e-5 of an Adam step (2^-8 with a bf16 teacher) of size lr, doubled by
    the momentum."""
    settings = GRAPH_CASES[case]
    config = RecoveryConfig(iterations=10, group_size=2, **settings)
    teacher, natural = small_teacher(), natural_sets()
    eager = recover_ufcs(natural, [teacher], MEAN, STD, replace(config, cuda_graphs=False), progress=False)
    graphed = recover_ufcs(natural, [teacher], MEAN, STD, config, progress=False)
    assert [s["cuda_graph"] for s in eager["stats"]] == ["off"]
    assert [s["cuda_graph"] for s in graphed["stats"]] == ["captured"]
    relative = 2.0 ** -8 if config.precision == "bf16" else 1e-5
    bound = 2 * config.iterations * config.lr * relative
    torch.testing.assert_close(graphed["ufc"], eager["ufc"], rtol=0, atol=bound)


def test_failed_capture_goes_on_eagerly(monkeypatch):
    """A capture that fails is reported (a warning and the batch's stats) and the batch ends
    eagerly with the result it would have had."""
    config = RecoveryConfig(iterations=8, group_size=2)
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
    torch.testing.assert_close(result["ufc"], expected["ufc"], rtol=0, atol=2 * config.iterations * config.lr * 1e-5)


@pytest.mark.parametrize("augmentation", ["roll", "imagenet"])
def test_chunks_made_row_by_row_on_the_gpu(monkeypatch, augmentation):
    """The chunked mode on CUDA (each chunk composed and augmented for its rows, its gradient
    sent straight to the UFCs; the final pass without a gradient) recovers what the whole batch
    does, to float32 rounding, with no host synchronisation after the first iteration."""
    from conftest import rounding_bound

    config = RecoveryConfig(iterations=6, group_size=2, augmentation=augmentation, max_shift=8, cuda_graphs=False)
    teacher, natural = small_teacher(), natural_sets()
    whole = recover_ufcs(natural, [teacher], MEAN, STD, config, progress=False)
    monkeypatch.setattr(engine, "CHECK_HOST_SYNCS", True)
    chunked = recover_ufcs(natural, [teacher], MEAN, STD, replace(config, chunk_size=7), progress=True)
    assert [s["chunk_size"] for s in chunked["stats"]] == [7]
    torch.testing.assert_close(chunked["ufc"], whole["ufc"], rtol=0,
                               atol=rounding_bound(config.iterations, summed=10 * 32 * 32))
    assert torch.cuda.get_sync_debug_mode() == 0
