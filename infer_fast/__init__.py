"""infer-fast: kernel-accelerated INFER dataset distillation (Inter-class Feature Compensator)."""

from infer_fast.mkl_vml import loading_torch, start_mkl_vml_on_one_thread

with loading_torch():  # (MKL ends the process as torch loads when the working directory is gone: mkl_vml.py)
    import torch  # noqa: F401  (loads libtorch first, so the compiled extension infer_fast._C can load)

start_mkl_vml_on_one_thread()  # before anything runs in parallel: MKL's first call races (mkl_vml.py)

__version__ = "0.1.0"
