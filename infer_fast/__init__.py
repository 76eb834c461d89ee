"""infer-fast: kernel-accelerated INFER dataset distillation (Inter-class Feature Compensator)."""
__version__ = "0.1.0"
