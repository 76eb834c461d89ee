"""A user's own teachers, models, methods and plug-ins: refused up front where they cannot work,
loaded by the plain CLI where they can."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import train_tiny_teachers
from infer_fast.cli import build_parser, main
from infer_fast.data import load_dataset
from infer_fast.data.registry import canonical_name
from infer_fast.distill import RecoveryConfig, distill_infer, recover_ufcs
from infer_fast.methods import DistillRequest, Method, get_method, register, unregister
from infer_fast.methods.infer import select_natural_sets
from infer_fast.methods.sre2l import recover_sre2l
from infer_fast.models import create_model, model_table
from infer_fast.models import registry as model_registry
from infer_fast.ops import BNStatTracker
from infer_fast.options import Option
from infer_fast.run_config import PipelineConfig
from infer_fast.storage import load_distilled
from infer_fast.teacher import TeacherConfig, train_teacher

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """(a BatchNorm teacher, a GroupNorm teacher) of the embedded data."""
    root = tmp_path_factory.mktemp("teachers")
    bn = train_tiny_teachers(root, seeds=(0,))[0]
    gn = str(root / "gn.pt")
    train_teacher(TeacherConfig(dataset="fashion-mnist-mini", model="convnet-w4-d1-groupnorm", epochs=1, batch_size=256,
                                device="cpu"), gn, progress=False)
    return bn, gn


@pytest.fixture
def registered():
    """register(method) for the test, every one unregistered after it."""
    names = []

    def add(method):
        names.append(method.name)
        return register(method)

    yield add
    for name in names:
        unregister(name)


# ---- 1: a teacher whose BatchNorm statistics cannot be matched, refused before any work ----------

@pytest.mark.parametrize("method", ["infer", "sre2l"])
def test_a_teacher_without_batchnorm_is_refused_naming_it_before_any_work(tmp_path, teachers, method):
    bn, gn = teachers
    out = tmp_path / "set"
    request = DistillRequest(method=method, dataset="fashion-mnist-mini", ipc=2, out_dir=out, teacher_paths=[bn, gn],
                             options={"iterations": 2}, progress=False)
    with pytest.raises(ValueError, match=rf"teacher 2/2 \({gn}\) has no BatchNorm1d/2d layer"):
        request.make_set()
    assert sorted(os.listdir(tmp_path)) == []  # no set, no recovery checkpoint of the first teacher's jobs


def test_a_batchnorm_without_running_statistics_is_refused_naming_the_teacher():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.Flatten(),
                        nn.LazyLinear(10)).eval()
    natural = torch.zeros((1, 10, 1, 8, 8), dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"teacher 1/1: BatchNorm layer '1' has no running statistics"):
        recover_ufcs(natural, [net], [0.5], [0.5], RecoveryConfig(iterations=1), progress=False)


def test_a_run_refuses_a_teacher_model_without_batchnorm_for_the_methods_matching_it(tmp_path):
    base = dict(dataset="fashion-mnist-mini", out=str(tmp_path / "run"), ipc=[2],
                teachers=[{"model": "convnet-w8-d2", "epochs": 1}, {"model": "convnet-w8-d2-groupnorm", "epochs": 1}])
    with pytest.raises(ValueError, match=r"teachers\[1\]: model 'convnet-w8-d2-groupnorm' has no BatchNorm1d/2d "
                                         r"layer.*\(infer, sre2l match the teachers' BatchNorm statistics\)"):
        PipelineConfig.from_dict({**base, "methods": ["infer", "random", "sre2l"]})
    PipelineConfig.from_dict({**base, "methods": ["random", "rded"]})  # (they only read the teachers' outputs)
    # a CE-only recovery (r_bn 0) matches no statistics: INFER's from `recovery`, SRe2L's from its own
    # section (its recipe's r_bn 0.01 is not the shared one)
    PipelineConfig.from_dict({**base, "methods": ["infer"], "recovery": {"r_bn": 0}})
    with pytest.raises(ValueError, match=r"\(sre2l matches the teachers' BatchNorm statistics\)"):
        PipelineConfig.from_dict({**base, "methods": ["infer", "sre2l"], "recovery": {"r_bn": 0}})
    PipelineConfig.from_dict({**base, "methods": ["infer", "sre2l"], "recovery": {"r_bn": 0}, "sre2l": {"r_bn": 0}})
    assert not (tmp_path / "run").exists()


# ---- 2: an image folder's class count, counted from its folders for the budget checks ------------

def test_an_image_folder_run_without_num_classes_checks_infers_budget_on_its_folders(tmp_path):
    from infer_fast.data.folders import write_image_folder

    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for split in ("train", "test"):
        write_image_folder(str(tmp_path / "data" / split), images, torch.arange(2).repeat_interleave(2))
    base = dict(dataset={"name": "imagefolder", "image_size": 8}, data_root=str(tmp_path / "data"),
                out=str(tmp_path / "run"), teachers=[{"model": "convnet-w8-d2", "epochs": 1}], methods=["infer", "random"])
    PipelineConfig.from_dict({**base, "ipc": [2]})
    # 2 classes, 1 teacher: K = floor(1 * 2 / 3) = 0 natural sets, known from the folders
    with pytest.raises(ValueError, match=r"ipc=1 is too small for INFER with C=2 classes"):
        PipelineConfig.from_dict({**base, "ipc": [1]})


# ---- 3: plug-ins loaded by the plain CLI -------------------------------------------------------

PLUGIN = '''
import torch
from torch import nn
from infer_fast.data import load_dataset
from infer_fast.data.registry import canonical_name
from infer_fast.distill.run import real_data_fields
from infer_fast.methods import Method, register
from infer_fast.models.registry import ModelSpec, register as register_model
from infer_fast.options import Option
from infer_fast.storage import DistilledSet, save_distilled


def first_images(request):
    train = load_dataset(request.dataset, "train")
    rows = torch.cat([torch.nonzero(train.labels == c).flatten()[:request.ipc] for c in range(10)])
    ds = DistilledSet(method="firstimg", **real_data_fields(train), images=train.images_at(rows),
                      labels=train.labels[rows], hyperparameters=dict(request.parsed), teachers=[],
                      budget={"ipc": request.ipc, "K": 0, "M": 0, "accounting": "ipc"}, seed=request.seed)
    return save_distilled(ds, request.out_dir)


register(Method(name="firstimg", label="First images", summary="the first ipc images of every class",
                distill=first_images, options=(Option("shade", float, "unused", default=0.5, minimum=0),),
                uses_teachers=False))
register_model(ModelSpec("plugnet", lambda num_classes, in_channels=3, image_size=32, **kw: nn.Sequential(
    nn.Conv2d(in_channels, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes)),
    "a plug-in's model"))
'''


def _cli(tmp_path, *args, plugins=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}
    env.pop("INFER_FAST_PLUGINS", None)
    if plugins is not None:
        env["INFER_FAST_PLUGINS"] = plugins
    return subprocess.run([sys.executable, "-m", "infer_fast.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_cli_loads_the_plugins_the_variable_names(tmp_path):
    (tmp_path / "myplug.py").write_text(PLUGIN)
    shown = _cli(tmp_path, "distill", "--help", plugins="myplug")
    assert shown.returncode == 0 and "firstimg" in shown.stdout and "--shade" in shown.stdout
    made = _cli(tmp_path, "distill", "--method", "firstimg", "--dataset", "fashion-mnist-mini", "--ipc", "1",
                "--out", "s", "--quiet", plugins="myplug")
    assert made.returncode == 0, made.stderr
    assert _cli(tmp_path, "inspect", "s", plugins=" myplug ,").returncode == 0
    unloaded = _cli(tmp_path, "inspect", "s")
    assert unloaded.returncode == 2 and "unknown method 'firstimg'" in unloaded.stderr
    refused = _cli(tmp_path, "distill", "--method", "firstimg")
    assert refused.returncode == 2 and "INFER_FAST_PLUGINS=module" in refused.stderr
    models = _cli(tmp_path, "models", plugins="myplug")
    assert models.returncode == 0 and "plugnet" in models.stdout


def test_a_plugin_that_fails_to_load_is_named_in_one_line(tmp_path):
    (tmp_path / "broken.py").write_text("raise ImportError('needs numpy 9')\n")
    for plugins, named in (("broken", "'broken' (INFER_FAST_PLUGINS)"), ("absent", "'absent' (INFER_FAST_PLUGINS)")):
        proc = _cli(tmp_path, "models", plugins=plugins)
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and named in proc.stderr and "failed to load" in proc.stderr


def test_the_cli_loads_the_plugins_of_installed_entry_points(tmp_path):
    (tmp_path / "myplug.py").write_text(PLUGIN)
    info = tmp_path / "myplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[infer_fast.plugins]\nmyplug = myplug\n")
    shown = _cli(tmp_path, "distill", "--help")
    assert shown.returncode == 0 and "firstimg" in shown.stdout


def test_python_lookups_of_a_plugins_model_and_dataset_load_it(tmp_path):
    """From Python too (not only the CLI): a name nothing registered loads the plug-ins the
    variable names before it is refused, as a teacher checkpoint or a set naming it needs."""
    (tmp_path / "myplug.py").write_text(PLUGIN + """
import dataclasses
from infer_fast.data.registry import get_dataset, register_dataset
mini = get_dataset("fashion-mnist-mini")
register_dataset(dataclasses.replace(mini, name="plugdata", aliases=(), spec=dataclasses.replace(mini.spec, name="plugdata")))
""")
    script = ("import sys; from infer_fast.models import create_model; from infer_fast.data.registry import "
              "canonical_name; print(type(create_model('plugnet', num_classes=3)).__name__, canonical_name('plugdata')); "
              "assert 'myplug' in sys.modules")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)]), "INFER_FAST_PLUGINS": "myplug"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.split() == ["Sequential", "plugdata"], proc.stderr
    with pytest.raises(ValueError, match="INFER_FAST_PLUGINS=module"):
        canonical_name("nosuchdata")
    with pytest.raises(ValueError, match="INFER_FAST_PLUGINS=module"):
        create_model("nosuchnet", num_classes=3)


def test_a_broken_plugin_spares_built_in_names_and_is_tried_again_on_a_miss(tmp_path, monkeypatch):
    """A built-in ConvNet variant (no alias) is no miss: it resolves whatever the plug-ins (the
    broken one is not even imported); a plug-in that failed is imported again on the next
    miss (fixed meanwhile, it would load) and said again."""
    from infer_fast import plugins
    from infer_fast.models.registry import resolve

    (tmp_path / "halfplug.py").write_text("import builtins\nbuiltins.halfplug_runs = getattr(builtins, 'halfplug_runs', 0) + 1\n"
                                          "raise ImportError('needs package foo')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("INFER_FAST_PLUGINS", "halfplug")
    monkeypatch.setattr(plugins, "_plugins", "not loaded")
    monkeypatch.setattr(plugins, "_imported", set())
    import builtins

    monkeypatch.setattr(builtins, "halfplug_runs", 0, raising=False)
    assert resolve("convnet-w32-d2")[1] == {"width": 32, "depth": 2}
    assert builtins.halfplug_runs == 0
    for _ in range(2):
        with pytest.raises(ValueError, match="'halfplug' .*failed to load: ImportError: needs package foo"):
            resolve("nosuchnet")
    assert builtins.halfplug_runs == 2


@pytest.mark.parametrize("module, said", [
    # the plug-in itself not found: where modules are looked up
    ("no_such_plugin_module", r"'no_such_plugin_module' .*failed to load: ModuleNotFoundError: .*\(a module is found "
                              r"on sys.path: add its folder to PYTHONPATH\)$"),
    # a module the plug-in imports: its own to install, the path is not the matter
    ("needs_dep", r"'needs_dep' .*failed to load: ModuleNotFoundError: No module named 'no_such_dependency_xyz'$")])
def test_a_plugin_module_not_found_says_where_modules_are_looked_up_only_for_itself(tmp_path, monkeypatch, module,
                                                                                     said):
    from infer_fast import plugins
    from infer_fast.models.registry import resolve

    (tmp_path / "needs_dep.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("INFER_FAST_PLUGINS", module)
    monkeypatch.setattr(plugins, "_plugins", "not loaded")
    monkeypatch.setattr(plugins, "_imported", set())
    with pytest.raises(ValueError, match=said):
        resolve("nosuchnet")


def test_an_unknown_method_says_how_to_load_a_plugin():
    with pytest.raises(ValueError, match="INFER_FAST_PLUGINS=module"):
        get_method("nosuchmethod")


# ---- 4: a model whose builder reads values, which the meta device has none of ----------------------

def _rescaled(num_classes, in_channels=3, image_size=32, **kw):
    net = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, num_classes))
    with torch.no_grad():  # a data-dependent init
        net[-1].weight.div_(net[-1].weight.norm().item())
    return net


def test_a_model_built_from_its_values_is_listed_and_checked(tmp_path):
    model_registry.register(model_registry.ModelSpec("rescaled", _rescaled, "a head rescaled by its norm"))
    try:
        row = next(r for r in model_table() if r["name"] == "rescaled")
        assert row["params"] == sum(p.numel() for p in _rescaled(10).parameters())
        PipelineConfig.from_dict(dict(dataset="fashion-mnist-mini", out=str(tmp_path / "run"), ipc=[2],
                                      teachers=[{"model": "rescaled", "epochs": 1}], methods=["infer", "random"]))
        with pytest.raises(ValueError, match="unknown model 'nosuchnet'"):  # (a user's error stays one)
            PipelineConfig.from_dict(dict(dataset="fashion-mnist-mini", out=str(tmp_path / "run"), ipc=[2],
                                          teachers=[{"model": "nosuchnet", "epochs": 1}], methods=["random"]))
    finally:
        model_registry.unregister("rescaled")


# ---- 5, 6: a method's declarations checked when it is made and registered ------------------------

@pytest.mark.parametrize("option, refused", [
    (Option("centers", int, "centers", default=-5, minimum=1), "option centers: its default -5"),
    (Option("mode", str, "how", default="fancy", choices=("plain", "greedy")), "option mode: its default 'fancy'"),
])
def test_an_option_default_its_declaration_refuses_is_refused(option, refused):
    with pytest.raises(ValueError, match=rf"method 'kcenter': {refused}"):
        Method(name="kcenter", label="k", summary="k", distill=lambda request: None, options=(option,))


def test_a_config_section_no_run_config_has_is_refused_at_register(registered):
    method = Method(name="meansec", label="m", summary="m", distill=lambda request: None, config_section="meansec")
    with pytest.raises(ValueError, match=r"config_section 'meansec' is no section.*recovery, sre2l"):
        registered(method)
    PipelineConfig.from_dict(dict(dataset="fashion-mnist-mini", out="run", ipc=[2], methods=["random"],
                                  teachers=[{"model": "convnet-w8-d2", "epochs": 1}]))


# ---- 7: torch's default dtype float64 ------------------------------------------------------------

def test_recovery_under_a_float64_default_dtype_gives_the_float32_results(tmp_path, teachers):
    bn, _ = teachers
    config = RecoveryConfig(iterations=3)
    distill_infer("fashion-mnist-mini", [bn], ipc=2, out_dir=tmp_path / "f32", config=config, progress=False)
    sre2l = [recover_sre2l(1, 10, (1, 28, 28), [_teacher(bn)], [0.5], [0.5], RecoveryConfig(iterations=2),
                           progress=False)["pixels"]]
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        distill_infer("fashion-mnist-mini", [bn], ipc=2, out_dir=tmp_path / "f64", config=config, progress=False)
        sre2l.append(recover_sre2l(1, 10, (1, 28, 28), [_teacher(bn)], [0.5], [0.5], RecoveryConfig(iterations=2),
                                   progress=False)["pixels"])
    finally:
        torch.set_default_dtype(saved)
    a, b = load_distilled(tmp_path / "f32"), load_distilled(tmp_path / "f64")
    assert b.ufc.dtype == torch.float32 and torch.equal(a.ufc, b.ufc) and torch.equal(a.natural, b.natural)
    assert torch.equal(*sre2l)


def _teacher(path):
    from infer_fast.teacher import load_teacher

    return load_teacher(path, dataset="fashion-mnist-mini")[0]


# ---- 8: a torch.compile'd teacher that already ran -------------------------------------------------

def test_a_compiled_teacher_called_before_recovers_as_the_plain_one(teachers):
    teacher = _teacher(teachers[0])
    natural = select_natural_sets(load_dataset("fashion-mnist-mini", "train"), K=1, seed=0)
    config = RecoveryConfig(iterations=2, group_size=1)
    plain = recover_ufcs(natural, [teacher], [0.5], [0.5], config, progress=False)["ufc"]
    compiled = torch.compile(copy.deepcopy(teacher))
    with torch.no_grad():
        compiled(torch.zeros(2, 1, 28, 28))  # (traced before any hook: a notebook's earlier cell)
    assert torch.equal(recover_ufcs(natural, [compiled], [0.5], [0.5], config, progress=False)["ufc"], plain)
    compiled = torch.compile(copy.deepcopy(teacher))
    compiled(torch.zeros(2, 1, 28, 28))
    tracker = BNStatTracker(compiled)  # (attached to it directly: hooks its graph does not run)
    try:
        compiled(torch.zeros(2, 1, 28, 28))
        with pytest.raises(RuntimeError, match=r"torch.compile'd model.*_orig_mod"):
            tracker.losses()
    finally:
        tracker.remove()


# ---- 9: BatchNorm1d on (N, C, L) ---------------------------------------------------------------

@pytest.mark.parametrize("fused", [False, True])
def test_a_batchnorm1d_on_sequences_matches_the_reference(fused):
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(4)
    net = nn.Sequential(nn.Conv1d(2, 4, 3), bn, nn.Flatten(), nn.Linear(4 * 6, 3))
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    net.eval()
    x = torch.randn(6, 2, 8)
    expected_out = net(x)
    with BNStatTracker(net, groups=2, fused=fused) as tracker:
        out = net(x)
        loss = tracker.losses()
    h = net[0](x).double().view(2, 3, 4, 6).transpose(1, 2).reshape(2, 4, -1)  # group, channel, its N/G * L values
    reference = (torch.linalg.vector_norm(h.mean(2) - bn.running_mean.double(), dim=1)
                 + torch.linalg.vector_norm(h.var(2, unbiased=False) - bn.running_var.double(), dim=1))
    assert loss.shape == (1, 2) and torch.allclose(loss[0].double(), reference, rtol=1e-5, atol=1e-6)
    assert torch.allclose(out, expected_out, atol=1e-6)


# ---- 10: a plug-in's own error ------------------------------------------------------------------

def _crashing_distill(request):
    return {}["centers"]


def test_a_plugins_own_error_names_its_method_and_module(tmp_path, registered, capsys):
    registered(Method(name="crashes", label="c", summary="raises", distill=_crashing_distill, uses_teachers=False))
    assert main(["distill", "--method", "crashes", "--dataset", "fashion-mnist-mini", "--ipc", "1",
                 "--out", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert err == (f"infer-fast distill: error in method 'crashes' (module {__name__}): KeyError: 'centers' "
                   "(run again with --debug for the traceback)\n")


# ---- 11: methods sharing an option, each with its own default ----------------------------------------

def test_the_help_gives_each_methods_default_of_a_shared_option(registered):
    for name, default in (("meana", 0.0), ("meanb", 7.0)):
        registered(Method(name=name, label=name, summary=name, distill=lambda request: None, uses_teachers=False,
                          options=(Option("jitter", float, "noise std", default=default, minimum=0),)))
    distill = build_parser()._subparsers._group_actions[0].choices["distill"]
    text = " ".join(distill.format_help().split())
    assert "noise std (default 0.0; 7.0 for --method meanb)" in text


def test_models_are_built_in_float32_whatever_the_default_dtype():
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = create_model("convnet-w8-d2", num_classes=10, in_channels=1, image_size=28)
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(saved)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
