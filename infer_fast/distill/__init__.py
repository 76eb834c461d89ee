"""INFER distillation: natural sets + recovery of Universal Feature Compensators (UFCs),
and the SRe2L and random baselines under the same protocol.

    K = infer_budget(ipc=10, num_classes=10, num_teachers=4)          # fair: K = 7
    natural = select_natural_sets(train, K, seed=0)                    # uint8 (K, C, ch, H, W)
    out = recover_ufcs(natural, teachers, mean, std, RecoveryConfig())  # ufc (K*M, ch, H, W)
    path = distill_infer("cifar10", ["t0.pt", "t1.pt"], ipc=10, out_dir="c10-ipc10")
    path = distill_sre2l("cifar10", ["t0.pt"], ipc=10, out_dir="c10-sre2l")

Recovery (INFER_METHOD.md §3): for natural set k and teacher m, u_k^m starts at zero and
minimizes CE(f_m(aug(X^k + u)), 0..C-1) + r_bn * (first_bn_mult * R_1 + sum_l R_l) with
Adam (lr 0.25, betas (0.5, 0.9)) under a cosine schedule lr_t = 0.5 (1 + cos(pi t / T)) lr.
aug is a roll by randint(0, 4) on H and W for small images, RandomResizedCrop + flip + roll
by up to 32 for ImageNet-size ones (``RecoveryConfig.imagenet()``). No clamp during
optimization; the final images are clamped to the valid pixel range.

Batching: the K UFCs of one teacher are optimized G at a time (teacher in eval mode, BN
statistics per group, loss summed over groups, Adam elementwise), so every UFC gets exactly
the gradient it would get alone. Each UFC (m, k) draws its augmentation from its own
generator seeded from (seed, m, k), so the result does not depend on G (up to float
rounding of differently sized convolutions). SRe2L runs through the same loop with free
images (from noise) in place of the compensators.

Checkpoints: after every finished batch the finished UFCs are written atomically; a resumed
run skips them (UFC results do not depend on batching, so the group size may differ).

The package is the recovery engine that methods build on: ``config`` (RecoveryConfig and the
builder from user options), ``variables`` (what a method's jobs optimize: the RecoveryKind
hooks), ``engine`` (one batch of jobs: the
optimization loop; ``augment`` and ``cuda_graphs`` its augmentation and captured
iterations), ``jobs`` (the scheduler: which batches, in what order, on which rank;
``recover``), ``checkpoints`` (the checkpoint store: index, results
files, in-batch states, resume), ``run`` (dataset and teachers in, a distilled set on disk
out: what every method's set-making shares). Each method's own code is its module in
``infer_fast.methods``: INFER's budget, natural sets, compensators, recover_ufcs and
distill_infer in ``infer.py``; SRe2L's free images, recover_sre2l and distill_sre2l in
``sre2l.py``; distill_random in ``random.py``. Those names are importable from here too.
"""
from ..choices import ACCOUNTINGS, COMPILE_MODES, DISTRIBUTED_MODES, PRECISIONS, RECOVERY_AUGMENTATIONS, SELECTIONS
from .config import RecoveryConfig, recovery_config
from .plan import RecoveryOutOfMemoryError, auto_batch_plan
from .checkpoints import recovery_checkpoints
from .jobs import RecoveryDivergedError

# the methods' functions, from their modules (imported when first used: those modules build on this package)
_FROM_METHODS = {"infer_budget": "infer", "select_natural_sets": "infer", "recover_ufcs": "infer",
                 "distill_infer": "infer", "recover_sre2l": "sre2l", "distill_sre2l": "sre2l",
                 "distill_random": "random"}


def __getattr__(name):
    if name in _FROM_METHODS:
        import importlib

        return getattr(importlib.import_module(f"infer_fast.methods.{_FROM_METHODS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ACCOUNTINGS", "RECOVERY_AUGMENTATIONS", "SELECTIONS", "PRECISIONS", "DISTRIBUTED_MODES", "COMPILE_MODES",
    "RecoveryDivergedError", "RecoveryOutOfMemoryError", "RecoveryConfig", "recovery_config", "infer_budget", "select_natural_sets",
    "recover_ufcs", "recover_sre2l", "recovery_checkpoints", "auto_batch_plan", "distill_infer", "distill_sre2l",
    "distill_random",
]
