"""torch.compile around the toolkit, on the CPU: a teacher holding a compiled submodule (whose
BatchNorm hooks a graph traced before would not run: the BN loss silently lost its layers) is
refused naming it; the fused eval-BN op compiles with dynamic shapes under fullgraph (its eps
check read a symbolic float); --compile without a C++ compiler is refused before any work
rather than failing at the first iteration as an internal error."""
import pytest
import torch
from torch import nn

from infer_fast.distill import RecoveryConfig, recover_ufcs
from infer_fast.distill import engine
from infer_fast.ops import BNStatTracker, bn_eval_with_stat_loss
from infer_fast.ops.reference import bn_eval_with_stat_loss_naive

MEAN, STD = [0.5], [0.5]


def two_blocks() -> nn.Sequential:
    torch.manual_seed(0)
    block = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())  # noqa: E731
    return nn.Sequential(block(1, 4), block(4, 4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()


def test_a_teacher_with_a_compiled_submodule_is_refused_naming_it():
    torch._dynamo.reset()
    model = two_blocks()
    model[0] = torch.compile(model[0], backend="aot_eager")
    model(torch.randn(2, 1, 8, 8))  # (traced before any hook: a tracker's hooks in it would never run)
    with pytest.raises(ValueError, match=r"model Sequential: submodule '0' is torch.compile'd: hooks added after "
                                         r"Dynamo traced it do not run.*its \._orig_mod\)"):
        BNStatTracker(model, groups=1)
    natural = torch.randint(0, 256, (1, 10, 1, 8, 8), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"teacher 1/1: submodule '0' is torch.compile'd"):
        recover_ufcs(natural, model, MEAN, STD, RecoveryConfig(iterations=1), progress=False)
    # the fused tracker replaces the layers' class, which Dynamo's guards see: it traces again, hooks and all
    tracker = BNStatTracker(model, groups=1, fused=True)
    try:
        model(torch.randn(2, 1, 8, 8))
        assert tracker.names == ["0._orig_mod.1", "1.1"]
    finally:
        tracker.remove()
    # a compiled top is unwrapped, and a CE-only recovery hooks nothing
    recover_ufcs(natural, torch.compile(two_blocks(), backend="aot_eager"), MEAN, STD, RecoveryConfig(iterations=1),
                 progress=False)
    recover_ufcs(natural, model, MEAN, STD, RecoveryConfig(iterations=1, r_bn=0.0), progress=False)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_the_fused_eval_op_compiles_with_dynamic_shapes_under_fullgraph(backend):
    torch._dynamo.reset()
    rm, rv = torch.zeros(3), torch.ones(3)
    compiled = torch.compile(lambda x: bn_eval_with_stat_loss(x, rm, rv, groups=2, backend=backend), fullgraph=True,
                             dynamic=True, backend="aot_eager")
    for n in (8, 6):  # (another batch: the same graph, symbolic in it)
        x = torch.randn(n, 3, 5, 5, generator=torch.Generator().manual_seed(n))
        y, loss = compiled(x)
        y_eager, loss_eager = bn_eval_with_stat_loss(x, rm, rv, groups=2, backend=backend)
        torch.testing.assert_close(y, y_eager)
        torch.testing.assert_close(loss, loss_eager)
        _, loss_ref = bn_eval_with_stat_loss_naive(x.double(), rm.double(), rv.double(), None, None, 0.0, 2)
        torch.testing.assert_close(loss, loss_ref.float())
    with pytest.raises(ValueError, match="eps must be a finite non-negative float, got -1"):  # (checked eagerly)
        bn_eval_with_stat_loss(x, rm, rv, eps=-1.0, groups=2, backend=backend)


def test_compile_without_a_cpp_compiler_is_refused_before_any_work(monkeypatch):
    from torch._inductor import cpp_builder

    def no_compiler():
        raise RuntimeError("No working C++ compiler found in torch._inductor.config.cpp.cxx: (None, 'g++')")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    natural = torch.randint(0, 256, (1, 10, 1, 8, 8), dtype=torch.uint8)
    ran = []
    monkeypatch.setattr(engine, "cosine_lr", lambda *args: ran.append(1))
    with pytest.raises(ValueError, match=r"compile='default' on the CPU needs a working C\+\+ compiler for "
                                         r"torch.compile \(RuntimeError: No working C\+\+ compiler .*\): install one "
                                         r"\(g\+\+\) or set CXX to it, or turn it off \(--compile off; in a run "
                                         r"config, compile: 'off' in the method's section: recovery, sre2l, "
                                         r"method_options\)"):
        recover_ufcs(natural, two_blocks(), MEAN, STD, RecoveryConfig(iterations=1, compile="default"),
                     progress=False)
    assert not ran
    engine.check_compiler(RecoveryConfig(compile="off"), torch.device("cpu"))  # (nothing compiled: not asked)
    # a run refuses it with the config's other checks, before its teachers train
    from infer_fast.run_config import PipelineConfig

    base = dict(dataset="fashion-mnist-mini", out="o", ipc=[2], device="cpu",
                teachers=[{"model": "convnet-w8-d2", "epochs": 1}])
    with pytest.raises(ValueError, match=r"^config: compile='default' on the CPU needs a working C\+\+ compiler"):
        PipelineConfig.from_dict({**base, "methods": ["infer"], "recovery": {"compile": "default"}})
    with pytest.raises(ValueError, match=r"^config: compile='reduce-overhead' on the CPU"):
        PipelineConfig.from_dict({**base, "methods": ["sre2l"], "sre2l": {"compile": "reduce-overhead"}})
    PipelineConfig.from_dict({**base, "methods": ["infer", "random"]})
