"""`infer-fast info` shows how OpenMP's threads wait (openmp_spin.py); infer_fast sets nothing."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOW = ("import os, infer_fast\n"
        "from infer_fast.openmp_spin import spin_setting\n"
        "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY')); print(spin_setting())")


def run_python(code, **env_changes):
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(env_changes)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.splitlines()


def test_nothing_set_is_libgomps_default_with_the_advice():
    values, setting = run_python(SHOW)
    assert values == "None None"  # (importing infer_fast sets neither)
    assert setting.startswith("libgomp's default") and "OMP_WAIT_POLICY=PASSIVE" in setting


@pytest.mark.parametrize("name,value", [("GOMP_SPINCOUNT", "5"), ("OMP_WAIT_POLICY", "PASSIVE")])
def test_a_users_setting_is_shown(name, value):
    _, setting = run_python(SHOW, **{name: value})
    assert setting == f"{name}={value}"
