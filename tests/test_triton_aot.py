"""bench/triton_aot_check.py: a launch recorded under the Triton interpreter is compiled for a GPU
that is not here (sm_90), and a kernel that the interpreter runs but the compiler refuses is
reported by name (the check `make triton-check` runs on every launch of the test suite)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import BENCH

pytest.importorskip("triton")

PLANTED = textwrap.dedent('''
    import triton
    import triton.language as tl


    @triton.jit
    def total(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
        acc = 0.0
        for k in range(n):
            acc += tl.load(x_ptr + k)
        tl.store(out_ptr + tl.arange(0, BLOCK), tl.zeros((BLOCK,), tl.float32) + acc)


    @triton.jit
    def total_from_int(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
        acc = 0  # int32, then fp32 in the loop: the interpreter computes it, the compiler refuses it
        for k in range(n):
            acc += tl.load(x_ptr + k)
        tl.store(out_ptr + tl.arange(0, BLOCK), tl.zeros((BLOCK,), tl.float32) + acc)
''')

RECORD = textwrap.dedent('''
    import importlib.util, sys, torch
    spec = importlib.util.spec_from_file_location("triton_aot_check", sys.argv[1])
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    import planted_kernels
    x, out = torch.arange(8.0), torch.full((4,), float("nan"))
    with check.recording(run_kernels=True) as seen:
        for kernel in (planted_kernels.total, planted_kernels.total_from_int):
            out.fill_(float("nan"))
            kernel[(1,)](x, out, 8, BLOCK=4)
            assert out.tolist() == [28.0] * 4, (kernel, out)  # (the interpreter runs both)
        kernel[(1,)](x[1:], out, 7, BLOCK=4)  # misaligned: another specialization
    check.append_launches(sys.argv[2], seen)
''')


def test_a_kernel_the_interpreter_runs_but_the_compiler_refuses_is_reported(tmp_path):
    (tmp_path / "planted_kernels.py").write_text(PLANTED)
    launches = tmp_path / "launches.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    script = str(BENCH / "triton_aot_check.py")
    recorded = subprocess.run([sys.executable, "-c", RECORD, script, str(launches)], capture_output=True, text=True,
                              env={**env, "TRITON_INTERPRET": "1"}, timeout=300)
    assert recorded.returncode == 0, recorded.stderr
    lines = [json.loads(line) for line in launches.read_text().splitlines()]
    assert sorted(launch["kernel"] for launch in lines) == ["total", "total_from_int", "total_from_int"]
    aligned = sorted(launch["args"][0]["aligned"] for launch in lines if launch["kernel"] == "total_from_int")
    assert aligned == [False, True] and all(launch["kwargs"] == {"BLOCK": 4} for launch in lines)

    compiled = subprocess.run([sys.executable, script, "--compile-recorded", str(launches), "--arch", "90"],
                              capture_output=True, text=True, env={**env, "TRITON_INTERPRET": "0"}, timeout=300)
    assert compiled.returncode == 0, compiled.stderr
    report = json.loads(compiled.stdout.strip().splitlines()[-1])
    assert report["compiled"] == 1 and report["failed"] == 2
    [ok] = report["results"]
    assert ok["kernel"] == "total" and 0 < ok["registers"] <= 255 and ok["local_bytes"] == 0
    assert {f["launch"]["kernel"] for f in report["failures"]} == {"total_from_int"}
    assert all("Loop-carried variable acc" in f["error"] for f in report["failures"])
