"""Distillation methods, one module each, behind one registry (``registry.py``): INFER and
INFER+Dyn (``infer``), SRe2L (``sre2l``), the random real-image baseline (``random``), CDA
(``cda``) and RDED (``rded``). ``DistillRequest(method=name, ...).make_set()`` makes a set."""
from .registry import (ClassImages, DistillRequest, Method, all_methods, distill_method_names, get_method,
                       load_plugins, register, run_method_names, set_layout, unregister)

__all__ = ["ClassImages", "DistillRequest", "Method", "all_methods", "distill_method_names", "get_method",
           "load_plugins", "register", "run_method_names", "set_layout", "unregister"]
