"""Recovery on a GPU (skipped without one): the loop makes no host synchronisation after its
first iteration."""
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
