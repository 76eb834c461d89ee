"""infer-fast: kernel-accelerated INFER dataset distillation (Inter-class Feature Compensator)."""
import torch  # noqa: F401  (loads libtorch first, so the compiled extension infer_fast._C can load)

__version__ = "0.1.0"
