"""infer-fast: kernel-accelerated INFER dataset distillation (Inter-class Feature Compensator)."""
import torch  # noqa: F401  (loads libtorch first, so the compiled extension infer_fast._C can load)

from infer_fast.mkl_vml import start_mkl_vml_on_one_thread

start_mkl_vml_on_one_thread()  # before anything runs in parallel: MKL's first call races (mkl_vml.py)

__version__ = "0.1.0"
