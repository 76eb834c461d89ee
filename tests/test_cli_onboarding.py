"""First use: the version flag, and the demo saying which kernel backends it could not check."""
import os
import subprocess
import sys

from infer_fast import __version__, demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_version_flag_prints_the_package_version():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for flag in ("--version", "-V"):
        done = subprocess.run([sys.executable, "-m", "infer_fast", flag], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"infer-fast {__version__}"


def test_demo_names_a_backend_it_could_not_check_and_why(monkeypatch):
    monkeypatch.setattr(demo, "available_backends", lambda device: ["torch"])
    reason = demo.backends.unavailable_reason
    monkeypatch.setattr(demo.backends, "unavailable_reason",
                        lambda name, device: reason(name, device) if name == "torch" else f"{name} is broken here")
    line = demo.check_backends()
    assert line.startswith("kernels vs float64 reference (max abs error): torch ")
    assert line.endswith("; not checked: cpu (cpu is broken here), triton (triton is broken here)")
