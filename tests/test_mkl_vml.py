"""MKL VML's CPU detection runs once, on one thread, when infer_fast is imported (issue 20
point 0, infer_fast/mkl_vml.py).

The race it avoids is rare (about 1 in 40 processes), so the test does not wait for it:
gdb stops at MKL's detection routine (mkl_serv_vml_cpu_detect, reached only while VML's
CPU id is not yet set) and the test reads where each call came from. A process that
imports only torch makes the detection inside the OpenMP region of its first large sqrt,
where two threads can race; one that imports infer_fast makes it once, during the import,
outside any parallel region.
"""
import os
import shutil
import subprocess
import sys

import pytest
import torch

# the child: import (or not) infer_fast, print a marker, then VML functions over 4 chunks of
# at::vml's 2048-element grain, on 2 OpenMP threads
CHILD = """
import sys
import torch
if sys.argv[1] == "infer_fast":
    import infer_fast  # noqa: F401
print("IMPORTED", flush=True)
torch.sqrt(torch.rand(8192))
torch.exp(torch.rand(8192, dtype=torch.float64))
torch.tanh(torch.rand(8192))
print("DONE", flush=True)
"""

# gdb: every call of MKL's CPU detection, whether it ran inside an OpenMP region (on the thread
# that opened it, below GOMP_parallel, or on a worker, below gomp_thread_start; both below
# ATen's invoke_parallel)
GDB_SCRIPT = """
set pagination off
set breakpoint pending on
python
import gdb
class Detect(gdb.Breakpoint):
    def stop(self):
        stack = gdb.execute("bt", to_string=True)
        inside = any(frame in stack for frame in ("GOMP_parallel", "gomp_thread_start", "invoke_parallel"))
        print("DETECT parallel=%s" % inside, flush=True)
        return False
Detect("mkl_serv_vml_cpu_detect")
end
run
"""

pytestmark = [
    pytest.mark.skipif(shutil.which("gdb") is None, reason="needs gdb to watch MKL's CPU detection"),
    pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="this torch has no MKL (at::vml uses SLEEF)"),
]


def detections(tmp_path, imports: str):
    """The process's lines in order: 'IMPORTED', 'DETECT parallel=True|False' per call of the
    detection, 'DONE'."""
    child, script = tmp_path / "child.py", tmp_path / "detect.gdb"
    child.write_text(CHILD)
    script.write_text(GDB_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # (PYTHONPATH as is: the child imports the tests' infer_fast)
    proc = subprocess.run(["gdb", "-q", "-batch", "-x", str(script), "--args", sys.executable, str(child), imports],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("IMPORTED", "DETECT", "DONE"))]
    if not lines and "ptrace" in proc.stdout + proc.stderr:  # (a sandbox that forbids tracing)
        pytest.skip("gdb cannot trace a process here: " + (proc.stdout + proc.stderr).strip().splitlines()[-1])
    assert lines[-1:] == ["DONE"], proc.stdout[-2000:] + proc.stderr[-2000:]
    return lines


def test_a_torch_process_detects_the_cpu_inside_its_first_parallel_vml_call(tmp_path):
    # the control: what the race needs, and proof that gdb sees the detection at all
    lines = detections(tmp_path, "torch")
    if lines == ["IMPORTED", "DONE"]:
        pytest.skip("this torch's MKL has no mkl_serv_vml_cpu_detect to watch")
    # after the import, on one thread or on both at once (the race), always inside the region
    detections_after_import = lines[1:-1]
    assert lines[0] == "IMPORTED" and detections_after_import, lines
    assert set(detections_after_import) == {"DETECT parallel=True"}, lines


def test_importing_infer_fast_detects_the_cpu_once_outside_any_parallel_region(tmp_path):
    lines = detections(tmp_path, "infer_fast")
    assert lines == ["DETECT parallel=False", "IMPORTED", "DONE"], lines
