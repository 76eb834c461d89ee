"""infer_fast sets libgomp's spin count before torch loads it, unless the user chose (openmp_spin.py)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOW = ("import os, infer_fast\n"
        "from infer_fast.openmp_spin import spin_setting\n"
        "print(os.environ.get('GOMP_SPINCOUNT')); print(spin_setting())")


def run_python(code, **env_changes):
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(env_changes)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.splitlines()


def test_importing_infer_fast_first_sets_the_spin_count():
    count, setting = run_python(SHOW)
    assert count == "10000"
    assert setting.startswith("GOMP_SPINCOUNT=10000 (set by infer-fast")


@pytest.mark.parametrize("name,value", [("GOMP_SPINCOUNT", "5"), ("OMP_WAIT_POLICY", "PASSIVE")])
def test_a_users_setting_wins(name, value):
    count, setting = run_python(SHOW, **{name: value})
    assert count == (value if name == "GOMP_SPINCOUNT" else "None")
    assert setting == f"{name}={value} (yours)"


def test_torch_loaded_first_is_left_alone_and_said():
    count, setting = run_python("import torch\n" + SHOW)
    assert count == "None"  # (libgomp had read its environment already)
    assert setting.startswith("libgomp's default")
