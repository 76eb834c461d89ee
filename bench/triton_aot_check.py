"""Every Triton kernel specialization compiled for a GPU that is not here (issue 19).

Under ``TRITON_INTERPRET=1`` the tests run our Triton kernels on the CPU, and the interpreter
accepts code that the compiler refuses (types, layouts, constexpr-ness) or that an older
triton does not have: a GPU run would be the first to find out. So this compiles, with
triton's own compiler and no GPU, each specialization the launchers ask for, for the target
architecture (default sm_90: H100 and H200), exactly as ``kernel[grid](...)`` would on that GPU
(triton's argument specialization; a stand-in driver names the target), and reports each
one's registers, spills and shared memory (cuobjdump).

The specializations come from two places:
- ``--launches FILE``: those the test suite launched (``INFER_FAST_TRITON_LAUNCHES=FILE`` when
  running the tests records each distinct one, JSON lines; ``make test`` sets it): every path
  the tests force (splits, channel and pixel blocks, dtypes, misaligned inputs, ...);
- the launches of the public ops at the shapes of a real run, planned for the target's SM
  count (ResNet-18's BN layers at batch 100 in both layouts, fp32 and bf16, with and without
  the fused eval-BN; the UFC compose at 32^2 x 100 classes and 224^2 x 1000), recorded here
  without running the kernels.

    python bench/triton_aot_check.py --launches .venv/triton-launches.jsonl
    python bench/triton_aot_check.py --arch 90 --sms 132 --json out.json

Exits non-zero, naming the kernel and its arguments, when any specialization does not compile,
or when one at a real run's shapes spills registers to local memory.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

# Recording: the public ops take CPU tensors for the triton backend only under the
# interpreter (the kernels are not run: record-only). Compiling runs in a process of its own
# without it (COMPILE_FLAG): the compiler needs the kernels, and the helpers they call, as
# JITFunctions, which the interpreter replaces when the kernel modules are imported.
COMPILE_FLAG = "--compile-recorded"
os.environ.setdefault("TRITON_INTERPRET", "0" if COMPILE_FLAG in sys.argv else "1")

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

LAUNCHES_ENV = "INFER_FAST_TRITON_LAUNCHES"


# ----------------------------------------------------------------------------------------
# Recording: what a launch specializes on, as JSON
# ----------------------------------------------------------------------------------------
def _describe(value: Any) -> Any:
    """A launch argument as JSON: what triton specializes on (a tensor's dtype and 16-byte
    alignment; an int's value; a triton dtype by name)."""
    if isinstance(value, torch.Tensor):
        return {"tensor": str(value.dtype).replace("torch.", ""), "aligned": value.data_ptr() % 16 == 0}
    if isinstance(value, tl.dtype):
        return {"tl_dtype": value.name}
    if isinstance(value, float):
        return {"float": value}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return {"unrecorded": type(value).__name__}  # (the compile reports it: a test must not fail here)


def describe_launch(fn, args, kwargs) -> str:
    """One JSON line naming the kernel's function (module, name) and its described arguments."""
    return json.dumps({"module": fn.__module__, "kernel": fn.__name__, "args": [_describe(a) for a in args],
                       "kwargs": {k: _describe(v) for k, v in sorted(kwargs.items())}}, sort_keys=True)


@contextlib.contextmanager
def recording(run_kernels: bool = True) -> Iterator[set]:
    """Inside the block every interpreted Triton launch adds its :func:`describe_launch` line to
    the yielded set; ``run_kernels`` False skips running them (outputs stay uninitialized)."""
    from triton.runtime.interpreter import InterpretedFunction

    seen: set = set()
    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        seen.add(describe_launch(self.fn, args, kwargs))
        return original(self, *args, grid=grid, warmup=warmup, **kwargs) if run_kernels else None

    InterpretedFunction.run = run
    try:
        yield seen
    finally:
        InterpretedFunction.run = original


def append_launches(path: str, lines: set) -> None:
    """Add ``lines`` to the JSON-lines file ``path`` (one short append per process: the tests'
    processes may write at once)."""
    if lines:
        with open(path, "a") as f:
            f.write("".join(line + "\n" for line in sorted(lines)))


# ----------------------------------------------------------------------------------------
# Launches at a real run's shapes, planned for the target GPU
# ----------------------------------------------------------------------------------------
RESNET18_BN = [(64, 112), (64, 56), (128, 28), (256, 14), (512, 7)]  # (channels, side) at 224^2


@contextlib.contextmanager
def gpu_plans(sms: int) -> Iterator[None]:
    """The launchers plan as on a GPU with ``sms`` multiprocessors (they plan for 4 programs on
    the CPU, where the interpreter runs them one by one)."""
    from infer_fast.kernels import _launch, bn_stat_loss, ufc_compose

    def target(device, waves):
        return waves * sms

    saved = [(m, m.target_programs) for m in (_launch, bn_stat_loss, ufc_compose)]
    for module, _ in saved:
        module.target_programs = target
    try:
        yield
    finally:
        for module, original in saved:
            module.target_programs = original


def run_shapes(batch: int = 100) -> None:
    """The public ops, forward and backward, with backend "triton" at a real run's shapes."""
    from infer_fast.ops import bn_eval_with_stat_loss, bn_stat_loss, ufc_compose

    layers = [(batch, 1, channels, side) for channels, side in RESNET18_BN] + [(10 * 100, 10, 128, 32)]
    for dtype in (torch.float32, torch.bfloat16):
        for channels_last in (False, True):
            for rows, groups, channels, side in layers:  # (+ ConvNet-128 on CIFAR-100: 10 groups of 100)
                x = torch.empty((rows, channels, side, side), dtype=dtype)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                x.requires_grad_()
                rm, rv = torch.zeros(channels), torch.ones(channels)
                weight, bias = torch.ones(channels), torch.zeros(channels)
                bn_stat_loss(x, rm, rv, groups, backend="triton").sum().backward()
                y, loss = bn_eval_with_stat_loss(x, rm, rv, weight, bias, 1e-5, groups, backend="triton")
                torch.autograd.backward([y, loss], [torch.ones_like(y), torch.ones_like(loss)])
    for classes, side, sets in ((100, 32, 10), (1000, 224, 1)):  # (a recovery's: roll, flip, the valid range)
        natural = torch.zeros((sets, classes, 3, side, side))
        ufc = torch.zeros((sets, 3, side, side), requires_grad=True)
        shifts, flips = torch.zeros((sets, 2), dtype=torch.int64), torch.zeros(sets, dtype=torch.bool)
        ufc_compose(natural, ufc, torch.arange(sets), shifts, flips, -2.0, 2.0, backend="triton").sum().backward()


# ----------------------------------------------------------------------------------------
# Compiling for the target
# ----------------------------------------------------------------------------------------
class TargetDriver:
    """What JITFunction.run asks of triton's driver, for a GPU that is not here."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


def _argument(desc: Any) -> Any:
    """A launch argument that specializes as the one :func:`_describe` described."""
    if isinstance(desc, dict):
        if "tensor" in desc:  # (a misaligned one starts one element into its buffer)
            return torch.empty(64, dtype=getattr(torch, desc["tensor"]))[0 if desc["aligned"] else 1:]
        if "tl_dtype" in desc:
            return tl.dtype(desc["tl_dtype"])
        if "unrecorded" in desc:
            raise TypeError(f"a launch argument of type {desc['unrecorded']} was not recorded (extend _describe)")
        return desc["float"]
    return desc


def _jit_function(module: str, name: str):
    """The kernel ``name`` of ``module`` (imported without the interpreter: a JITFunction)."""
    import importlib

    from triton.runtime.jit import JITFunction

    kernel = getattr(importlib.import_module(module), name, None)
    if not isinstance(kernel, JITFunction):
        raise TypeError(f"{module}.{name} is not a @triton.jit kernel here ({type(kernel).__name__})")
    return kernel


def _resource_usage(cubin: bytes) -> Dict[str, int]:
    """Registers, local memory (spills; bytes per thread) and shared memory of the one kernel
    in ``cubin`` (cuobjdump -res-usage, the one beside triton's ptxas)."""
    import triton.backends.nvidia

    tool = os.path.join(os.path.dirname(triton.backends.nvidia.__file__), "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        text = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    usage = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text.split("Function", 1)[-1]))
    return {"registers": int(usage["REG"]), "local_bytes": int(usage["LOCAL"]), "stack_bytes": int(usage["STACK"]),
            "shared_bytes": int(usage["SHARED"])}


def compile_launch(line: str, driver: TargetDriver) -> Dict[str, Any]:
    """Compile one recorded launch for the driver's target as JITFunction.run does (no launch)."""
    from triton.runtime import driver as triton_driver

    launch = json.loads(line)
    jit_function = _jit_function(launch["module"], launch["kernel"])
    args = [_argument(a) for a in launch["args"]]
    kwargs = {k: _argument(v) for k, v in launch["kwargs"].items()}
    triton_driver.set_active(driver)  # (left set: triton's reset would look for a GPU driver)
    kernel = jit_function.run(*args, grid=(1,), warmup=True, **kwargs)
    return {"kernel": launch["kernel"], **_resource_usage(kernel.asm["cubin"]), "launch": launch}


def compile_recorded(path: str, arch: int) -> Dict[str, Any]:
    """Compile every launch recorded in ``path`` (JSON lines) for sm_<arch>: in a process
    without the interpreter (COMPILE_FLAG)."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError(f"{COMPILE_FLAG} needs TRITON_INTERPRET unset or 0")
    driver = TargetDriver(arch)
    lines = sorted({line.strip() for line in open(path) if line.strip()})
    results, failures, started = [], [], time.perf_counter()
    for line in lines:
        try:
            results.append(compile_launch(line, driver))
        except Exception as e:  # noqa: BLE001 (each failure is reported with its launch)
            failures.append({"launch": json.loads(line), "error": f"{type(e).__name__}: {e}"[:2000]})
    return {"compiled": len(results), "failed": len(failures), "compile_s": round(time.perf_counter() - started, 1),
            "failures": failures, "results": results}


def _compile_in_children(lines: List[str], arch: int, jobs: int) -> Optional[Dict[str, Any]]:
    """:func:`compile_recorded` of ``lines`` in ``jobs`` child processes at once (every other
    line to each), their reports merged; None (their errors printed) when one fails."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        children = []
        for j in range(max(1, min(jobs, len(lines)))):
            part = os.path.join(d, f"launches-{j}.jsonl")
            append_launches(part, set(lines[j::jobs]))
            children.append(subprocess.Popen([sys.executable, __file__, COMPILE_FLAG, part, "--arch", str(arch)],
                                             env={**os.environ, "TRITON_INTERPRET": "0"}, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True))
        outputs = [child.communicate() + (child.returncode,) for child in children]
    if any(status != 0 for _, _, status in outputs):
        for _, err, _ in outputs:
            print(err, file=sys.stderr)
        return None
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _, _ in outputs]
    return {"compiled": sum(r["compiled"] for r in reports), "failed": sum(r["failed"] for r in reports),
            "compile_s": round(time.perf_counter() - started, 1), "processes": len(reports),
            "failures": [f for r in reports for f in r["failures"]], "results": [x for r in reports for x in r["results"]]}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launches", help="JSON lines recorded by the tests (INFER_FAST_TRITON_LAUNCHES)")
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (default 90: H100, H200)")
    parser.add_argument("--sms", type=int, default=132, help="the target's SM count, for the real shapes' plans")
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                        else (os.cpu_count() or 1), help="compiling processes (default: one per available core)")
    parser.add_argument(COMPILE_FLAG, dest="compile_recorded", metavar="FILE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compile_recorded:  # (the child: its report as JSON on stdout)
        print(json.dumps(compile_recorded(args.compile_recorded, args.arch)))
        return 0

    lines: set = set()
    if args.launches:
        if not os.path.exists(args.launches):
            parser.error(f"--launches {args.launches}: no such file (run the tests with {LAUNCHES_ENV}={args.launches})")
        lines |= {line.strip() for line in open(args.launches) if line.strip()}
    tested = len(lines)
    with gpu_plans(args.sms), recording(run_kernels=False) as seen:
        run_shapes()
    lines |= seen
    compiled = _compile_in_children(sorted(lines), args.arch, args.jobs)
    if compiled is None:
        return 1
    by_kernel: Dict[str, Dict[str, int]] = {}
    for r in compiled["results"]:
        k = by_kernel.setdefault(r["kernel"], {"specializations": 0, "max_registers": 0, "max_local_bytes": 0})
        k["specializations"] += 1
        k["max_registers"] = max(k["max_registers"], r["registers"])
        k["max_local_bytes"] = max(k["max_local_bytes"], r["local_bytes"])
    report = {"triton": triton.__version__, "torch": torch.__version__, "arch": f"sm_{args.arch}", "sms": args.sms,
              "from_tests": tested, "from_real_shapes": len(seen), "specializations": len(lines),
              "kernels": by_kernel, **compiled}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    for name, k in sorted(by_kernel.items()):
        print(f"{name}: {k['specializations']} specializations, at most {k['max_registers']} registers and "
              f"{k['max_local_bytes']} bytes of local memory (spills) per thread")
    for f in compiled["failures"]:
        print(f"FAILED {f['launch']['kernel']} {json.dumps(f['launch']['kwargs'])}: {f['error']}", file=sys.stderr)
    # A spill at a real run's shapes is a regression (memory traffic in a bandwidth-bound kernel);
    # the tests' forced plans (one warp, large tiles) may spill, they only have to compile.
    spilling = [r for r in compiled["results"] if r["local_bytes"] and json.dumps(r["launch"], sort_keys=True) in seen]
    for r in spilling:
        print(f"SPILLS {r['kernel']} at a real shape: {r['local_bytes']} bytes of local memory per thread, "
              f"{r['registers']} registers: {json.dumps(r['launch']['kwargs'])}", file=sys.stderr)
    print(f"triton {triton.__version__}, sm_{args.arch}: {compiled['compiled']} of {len(lines)} specializations "
          f"compiled ({tested} from the tests, {len(seen)} at real shapes) in {compiled['compile_s']:.0f} s"
          + (f"; {len(spilling)} spill at real shapes" if spilling else ", none spilling at real shapes"))
    return 1 if compiled["failures"] or spilling or not compiled["results"] else 0


if __name__ == "__main__":
    sys.exit(main())
