"""The registered ops (torch.ops.infer_fast_C.*, what torch.compile graphs call) check their
arguments themselves, once, in the functional ops, before any launcher of any backend: the torch
and Triton launchers trust what they are given (a short index was read past its end and crashed
the process, a short running_mean was read past its end, groups that do not divide N gave a
wrong loss, a negative index wrapped, a (1, 2) shifts was broadcast to every group). A name that
is no backend is refused (it ran the Triton kernels), and under torch.compile an unusable
backend raises BackendUnavailableError (it surfaced as Dynamo's InternalTorchDynamoError)."""
import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import infer_fast
from conftest import backend_params
from infer_fast.ops import BackendUnavailableError, backends, bn_eval_with_stat_loss, bn_stat_loss, ufc_compose

ops = torch.ops.infer_fast_C

# The functional op that checks a differentiable op's arguments (its message names it).
CHECKED_BY = {"bn_stat_loss": "bn_stat_forward", "bn_eval_with_stat_loss": "bn_eval_stat_forward",
              "ufc_compose": "ufc_compose_forward"}


class LauncherReached(AssertionError):
    """A launcher ran for arguments the op should have refused first."""


@contextlib.contextmanager
def launchers_refused():
    """The Python backends' launchers (torch, triton) looked up as usual (a name that is no
    backend raises as it would) but never run: a bad call that reaches one fails the test instead
    of reading out of bounds. (The C++ launchers check their arguments themselves.)"""
    def lookup(backend, name):
        backends.launcher(backend, name)

        def refuse(*args, **kwargs):
            raise LauncherReached(f"the {backend} launcher {name} ran")
        return refuse

    infer_fast._C.set_python_launchers(lookup)
    try:
        yield
    finally:
        infer_fast._C.set_python_launchers(backends.launcher)


def bn_cases(device, eval_mode):
    """(good call, [(case, bad call, expected message)]) of the forward BN ops; a call takes
    (op, backend)."""
    x = torch.randn(4, 3, 2, 2, device=device)
    rm, rv = torch.zeros(3, device=device), torch.ones(3, device=device)

    def call(x=x, rm=rm, rv=rv, groups=2, weight=None, bias=None, eps=1e-5):
        if eval_mode:
            return lambda op, be: op(x, rm, rv, weight, bias, eps, groups, be)
        return lambda op, be: op(x, rm, rv, groups, be)

    cases = [
        ("groups 0", call(groups=0), r"groups must be >= 1, got 0"),
        ("groups -1", call(groups=-1), r"groups must be >= 1, got -1"),
        ("groups 3 for N=4", call(groups=3), r"groups=3 does not divide the batch size N=4 of x"),
        ("running_mean short", call(rm=rm[:2]), r"running_mean must have shape \[3\] \(one value per channel of x\)"),
        ("running_var short", call(rv=rv[:2]), r"running_var must have shape \[3\]"),
        ("running_mean int", call(rm=rm.long()), r"running_mean must be float16, bfloat16, float32 or float64"),
        ("x 3-D", call(x=x[..., 0]), r"x must be \(N, C, H, W\) or \(N, C\), got shape \[4, 3, 2\]"),
        ("x int", call(x=x.long()), r"x must be float16, bfloat16, float32 or float64, got Long"),
        ("x empty", call(x=x[:0]), r"x must not be empty"),
    ]
    if eval_mode:
        cases += [
            ("weight short", call(weight=torch.ones(2, device=device)), r"weight must have shape \[3\]"),
            ("bias int", call(bias=torch.ones(3, dtype=torch.long, device=device)), r"bias must be float16"),
            ("eps nan", call(eps=float("nan")), r"eps must be a finite non-negative number"),
        ]
    if device != "cpu":
        cases.append(("running_mean on the host", call(rm=rm.cpu()), r"running_mean is on cpu but x is on cuda"))
    return call(), cases


def backward_cases(device):
    x = torch.randn(4, 3, 2, 2, device=device)
    rm, rv = torch.zeros(3, device=device), torch.ones(3, device=device)
    stats, grad_loss = torch.zeros(2, 2, 4, device=device), torch.ones(2, device=device)

    def call(x=x, rm=rm, stats=stats, grad_loss=grad_loss, grad_y=None, rv=None, weight=None):
        return lambda op, be: op(x, rm, stats, grad_loss, grad_y, rv, weight, 1e-5, be)

    return call(), [
        ("stats of C=1", call(stats=torch.zeros(1, 2, 2, device=device), grad_loss=grad_loss[:1]),
         r"stats must have shape \[1, 2, 4\], got \[1, 2, 2\]"),
        ("stats of 3 groups for N=4",
         call(stats=torch.zeros(3, 2, 4, device=device), grad_loss=torch.ones(3, device=device)),
         r"the 3 groups of stats do not divide the batch size N=4 of x"),
        ("stats 2-D", call(stats=stats[0]), r"stats must be \(G, 2, C \+ 1\)"),
        ("stats fp64 for fp32 x", call(stats=stats.double()), r"stats must have dtype Float, got Double"),
        ("grad_loss short", call(grad_loss=grad_loss[:1]), r"grad_loss must have shape \[2\], got \[1\]"),
        ("grad_y of another shape", call(grad_y=x[:2], rv=rv), r"grad_y must have shape \[4, 3, 2, 2\]"),
        ("grad_y without running_var", call(grad_y=torch.ones_like(x)), r"grad_y needs running_var"),
        ("no gradient", call(grad_loss=None), r"grad_loss and grad_y are both None"),
        ("weight short", call(grad_y=torch.ones_like(x), rv=rv, weight=torch.ones(2, device=device)),
         r"weight must have shape \[3\]"),
        ("running_mean short", call(rm=rm[:2]), r"running_mean must have shape \[3\]"),
        ("x 3-D", call(x=x[..., 0]), r"x must be \(N, C, H, W\) or \(N, C\)"),
    ]


def compose_cases(device, backward):
    natural, ufc = torch.rand(2, 3, 1, 4, 4, device=device), torch.zeros(2, 1, 4, 4, device=device)
    index = torch.tensor([0, 1], device=device)
    grad_out = torch.ones(2, 3, 1, 4, 4, device=device)
    bound = torch.zeros(1, device=device)

    def call(natural=natural, ufc=ufc, index=index, shifts=None, flips=None, lo=None, hi=None, grad_out=grad_out):
        if backward:
            return lambda op, be: op(grad_out, natural, ufc, index, shifts, flips, lo, hi, be)
        return lambda op, be: op(natural, ufc, index, shifts, flips, lo, hi, be)

    cases = [
        ("index of 1 for 2 UFCs", call(index=index[:1]), r"index must have shape \[2\] \(one natural set per UFC"),
        ("index int32", call(index=index.int()), r"index must have dtype Long, got Int"),
        ("ufc of 2 channels for 1", call(ufc=torch.zeros(2, 2, 4, 4, device=device)),
         r"ufc images \[2, 4, 4\] must match natural images \[1, 4, 4\]"),
        ("ufc fp64", call(ufc=ufc.double()), r"ufc must have dtype Float, got Double"),
        ("natural 4-D", call(natural=natural[0]), r"natural must be 5-D \(K, C, ch, H, W\)"),
        ("natural int", call(natural=natural.long(), ufc=ufc.long()), r"natural must be float16"),
        ("natural not contiguous", call(natural=natural.transpose(3, 4)), r"natural must be contiguous"),
        ("shifts (1, 2)", call(shifts=torch.zeros(1, 2, dtype=torch.long, device=device)),
         r"shifts must have shape \[2, 2\]"),
        ("shifts float", call(shifts=torch.zeros(2, 2, device=device)), r"shifts must have dtype Long, got Float"),
        ("flips short", call(flips=torch.ones(1, dtype=torch.bool, device=device)), r"flips must have shape \[2\]"),
        ("flips float", call(flips=torch.ones(2, device=device)), r"flips must have dtype uint8 or bool"),
        ("lo empty", call(lo=bound[:0], hi=bound[:0]), r"lo must have shape \[1\]"),
        ("lo without hi", call(lo=bound), r"lo and hi must be both None or both tensors"),
        ("hi fp64", call(lo=bound, hi=bound.double()), r"hi must have dtype Float, got Double"),
    ]
    if device == "cpu":  # (a CUDA index is checked by the kernels themselves: a device-side assert)
        cases += [
            ("index out of range", call(index=torch.tensor([0, 7])),
             r"index values must lie in \[0, 2\) \(natural has 2 sets\), got index\[1\] = 7"),
            ("index negative", call(index=torch.tensor([0, -1])), r"index values must lie in \[0, 2\)"),
        ]
    else:
        cases.append(("index on the host", call(index=index.cpu()), r"index is on cpu but natural is on cuda"))
    if backward:
        cases.append(("grad_out of 2 classes", call(grad_out=grad_out[:, :2]),
                      r"grad_out must have shape \[2, 3, 1, 4, 4\]"))
    return call(), cases


OPS = {
    "bn_stat_loss": lambda device: bn_cases(device, eval_mode=False),
    "bn_stat_forward": lambda device: bn_cases(device, eval_mode=False),
    "bn_eval_with_stat_loss": lambda device: bn_cases(device, eval_mode=True),
    "bn_eval_stat_forward": lambda device: bn_cases(device, eval_mode=True),
    "bn_stat_backward": backward_cases,
    "ufc_compose": lambda device: compose_cases(device, backward=False),
    "ufc_compose_forward": lambda device: compose_cases(device, backward=False),
    "ufc_compose_backward": lambda device: compose_cases(device, backward=True),
}


def outcome(run, error, pattern):
    """'' when ``run()`` raised ``error`` matching ``pattern`` (and ran no launcher), else what it did."""
    try:
        run()
    except LauncherReached as exc:
        return f"not refused: {exc}"
    except Exception as exc:  # noqa: BLE001  (any other error is a wrong answer: shown)
        if isinstance(exc, error) and re.search(pattern, str(exc)):
            return ""
        return f"raised {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
    return "no error"


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("op", sorted(OPS))
def test_bad_arguments_are_refused_naming_them_before_any_launcher(backend, device, op):
    """Every bad call raises the functional op's message naming the argument, on every backend,
    before any launcher ran; good arguments with a name that is no backend raise
    UnknownBackendError (the Triton kernels ran)."""
    fn = getattr(ops, op)
    good, cases = OPS[op](device)
    failures = []
    with launchers_refused():
        for case, call, pattern in cases:
            why = outcome(lambda: call(fn, backend), RuntimeError, rf"^{CHECKED_BY.get(op, op)}: {pattern}")
            if why:
                failures.append(f"{case}: {why}")
        why = outcome(lambda: good(fn, "bogus"), backends.UnknownBackendError, r"unknown backend 'bogus'")
        if why:
            failures.append(f"backend 'bogus': {why}")
    assert not failures, f"{op} on backend {backend!r} ({device}):\n  " + "\n  ".join(failures)


@pytest.mark.parametrize("name", ["bogus", "auto", "Triton", ""])
def test_a_launcher_of_a_name_that_is_no_backend_is_refused(name):
    """backends.launcher (how the ops find the Python backends' launchers) took every name that
    is not torch, cpu or cuda for Triton."""
    for op in backends.LAUNCHERS:
        with pytest.raises(backends.UnknownBackendError, match=f"backend {name!r} is unavailable"):
            backends.launcher(name, op)


# The calls that crashed the process (a Triton kernel reading an index past its end; the
# functional op dividing by zero groups of stats), on every usable backend of a device, in a
# child process: a regression fails the test instead of killing pytest.
CRASHES = r"""
import json, sys, torch
import infer_fast.ops
from infer_fast.ops import available_backends
ops, device = torch.ops.infer_fast_C, sys.argv[1]
natural, ufc = torch.rand(2, 3, 1, 4, 4, device=device), torch.zeros(2, 1, 4, 4, device=device)
index, bound = torch.tensor([0], device=device), torch.zeros(1, device=device)
x, rm = torch.randn(4, 3, 2, 2, device=device), torch.zeros(3, device=device)
cases = {
    "compose, index of 1 for 2 UFCs": lambda be: ops.ufc_compose(natural, ufc, index, None, None, None, None, be),
    "compose backward, index of 1 for 2 UFCs": lambda be: ops.ufc_compose_backward(
        torch.ones(2, 3, 1, 4, 4, device=device), natural, ufc, index, None, None, -bound - 1, bound + 1, be),
    "backward, stats of 0 groups": lambda be: ops.bn_stat_backward(
        x, rm, torch.zeros(0, 2, 4, device=device), torch.ones(0, device=device), None, None, None, 0.0, be),
}
for backend in available_backends(device):
    for case, call in cases.items():
        try:
            call(backend)
            said = "no error"
        except Exception as exc:
            said = f"{type(exc).__name__}: {exc}"
        if device == "cuda":
            torch.cuda.synchronize()
        print(json.dumps([backend, case, said.splitlines()[0]]), flush=True)
"""


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"))])
def test_the_calls_that_crashed_raise_in_a_child_process(device):
    package_root = str(Path(infer_fast.__file__).resolve().parents[1])  # (the infer_fast this process runs)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", CRASHES, device], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"status {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    said = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {backend for backend, _, _ in said} == set(backends.available_backends(device))
    for backend, case, message in said:
        want = r"groups >= 1" if "stats" in case else r"index must have shape \[2\]"
        assert re.search(want, message), f"{backend}, {case}: {message}"


def compiled_case(op):
    """A function of x calling ``op`` with backend 'cuda' on CPU tensors (unusable everywhere)."""
    rm, rv = torch.zeros(3), torch.ones(3)
    natural = torch.rand(2, 3, 3, 2, 2)
    if op == "bn_stat_loss":
        return lambda x: bn_stat_loss(x, rm, rv, groups=2, backend="cuda").sum()
    if op == "bn_eval_with_stat_loss":
        return lambda x: bn_eval_with_stat_loss(x, rm, rv, groups=2, backend="cuda")[0].sum()
    return lambda x: ufc_compose(natural, x[:2], torch.tensor([0, 1]), backend="cuda").sum()


@pytest.mark.parametrize("fullgraph", [False, True])
@pytest.mark.parametrize("op", ["bn_stat_loss", "bn_eval_with_stat_loss", "ufc_compose"])
def test_a_compiled_function_raises_backend_unavailable(op, fullgraph):
    """Dynamo ran the backend's resolution at trace time and wrapped what it raised in an
    InternalTorchDynamoError, which `except BackendUnavailableError` (the CLI's) does not catch."""
    torch._dynamo.reset()
    compiled = torch.compile(compiled_case(op), fullgraph=fullgraph, backend="aot_eager")
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    with pytest.raises(BackendUnavailableError, match="backend 'cuda' is unavailable: backend 'cuda' runs on CUDA"):
        compiled(x)
    with pytest.raises(BackendUnavailableError):  # (again: the graph raises each time it runs)
        compiled(x)


def test_a_compiled_function_raises_for_a_name_that_is_no_backend():
    torch._dynamo.reset()
    x, rm, rv = torch.randn(4, 3, 2, 2), torch.zeros(3), torch.ones(3)
    compiled = torch.compile(lambda x: bn_stat_loss(x, rm, rv, backend="bogus"), fullgraph=True, backend="aot_eager")
    with pytest.raises(backends.UnknownBackendError, match="unknown backend 'bogus'"):
        compiled(x)
