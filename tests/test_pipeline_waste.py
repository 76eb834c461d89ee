"""Work a run or a distillation did more than once, or for nothing: the teachers' digests hashed
once per distillation and once per run, the teachers given by path loaded once by a run that
scores external sets; a run of only external sets (``methods: []``) scores them; a continued
run whose sets are all made looks for no compiler; each method's options parsed once per config."""
import collections
import sys

import pytest
import torch

import infer_fast._io
import infer_fast.teacher
from infer_fast.data import load_dataset
from infer_fast.methods import DistillRequest
from infer_fast.methods.random import random_set
from infer_fast.pipeline import run_pipeline
from infer_fast.relabel import relabel
from infer_fast.run_config import PipelineConfig
from infer_fast.storage import save_distilled

torch.set_num_threads(1)

DATASET = "fashion-mnist-mini"
STUDENT = {"model": "convnet-w8-d2", "epochs": 1, "batch_size": 64, "device": "cpu"}


def _caller(skip: str) -> str:
    """"module.function" of the innermost frame outside this file and the module ``skip`` (who asked)."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_globals.get("__name__") in (skip, __name__)
                                 or frame.f_code.co_name.startswith("<")):  # (a comprehension: its function's)
        frame = frame.f_back
    return f"{frame.f_globals.get('__name__')}.{frame.f_code.co_name}" if frame is not None else "?"


@pytest.fixture
def counted(monkeypatch):
    """Counters of model_digest calls (by the calling function) and of load_teacher calls (by
    the calling function outside infer_fast.teacher, and the path loaded), while the test runs."""
    digests, loads = collections.Counter(), collections.Counter()
    real_digest, real_load = infer_fast._io.model_digest, infer_fast.teacher.load_teacher

    def model_digest(model):
        digests[_caller("infer_fast._io").rpartition(".")[0]] += 1  # (by module)
        return real_digest(model)

    def load_teacher(path, *args, **kwargs):
        loads[(_caller("infer_fast.teacher"), str(path))] += 1
        return real_load(path, *args, **kwargs)

    # (the modules that imported it by name hold their own reference)
    for module in ("infer_fast._io", "infer_fast.distill.run", "infer_fast.distill.jobs"):
        if hasattr(sys.modules[module], "model_digest"):
            monkeypatch.setattr(sys.modules[module], "model_digest", model_digest)
    monkeypatch.setattr(infer_fast.teacher, "load_teacher", load_teacher)
    return digests, loads


@pytest.fixture(scope="module")
def external(tmp_path_factory, teachers):
    """A random set at ipc 2 relabelled by the first of the tiny teachers (conftest), saved."""
    path = tmp_path_factory.mktemp("external") / "theirs"
    save_distilled(relabel(random_set(load_dataset(DATASET, "train"), 2, seed=7), [teachers[0]]), path)
    return str(path)


def _config(tmp_path, **kw):
    values = dict(dataset=DATASET, teachers=[{"model": "convnet-w8-d2", "epochs": 1}], out=str(tmp_path / "run"),
                  ipc=[2], methods=["random"], student=dict(STUDENT), seeds=1, device="cpu",
                  feature_duplication=False)
    return PipelineConfig.from_dict({**values, **kw})


# ---- 1. the teachers' digests and loads ----------------------------------------------------------

@pytest.mark.parametrize("method", ["infer", "sre2l"])
def test_a_distillation_hashes_each_teacher_once(tmp_path, teacher_paths, counted, method):
    """Loaded (and checked distinct), recorded in the request and in the recovery's identity: one
    digest of each teacher's weights (it was three)."""
    digests, _ = counted
    DistillRequest(method=method, dataset=DATASET, ipc=2, out_dir=tmp_path / method, teacher_paths=teacher_paths,
                   options={"iterations": 1}, progress=False).make_set()
    assert sum(digests.values()) == len(teacher_paths), dict(digests)


def test_a_recovery_of_models_a_caller_gives_still_hashes_them(teachers, natural, counted):
    """Models not loaded by a set's run (no digests carried): the recovery hashes them itself."""
    from infer_fast.distill import recover_ufcs
    from infer_fast.distill.config import RecoveryConfig

    digests, _ = counted
    spec = load_dataset(DATASET, "train").spec
    recover_ufcs(natural, teachers, spec.mean, spec.std, RecoveryConfig(iterations=1), progress=False)
    assert sum(digests.values()) == len(teachers), dict(digests)


def test_a_run_scoring_external_sets_hashes_its_teachers_once_and_scores_with_them(tmp_path, teacher_paths, external, counted):
    """Teachers given by path, an external set scored with static labels (its labelling teachers
    checked before any work): the run hashes each teacher's weights once (it did twice: the
    check, then the run) and its scores take the teachers the run loaded (they loaded them
    again). The check before any work still reads the file once before the run loads it
    against the test split (teacher.py has no check of a loaded teacher against a split)."""
    digests, loads = counted
    cfg = _config(tmp_path, teachers=[{"path": teacher_paths[0]}], external={"theirs": external}, scores=True)
    results = run_pipeline(cfg, progress=False)
    assert sorted(results["scores"]) == ["external:theirs/ipc2", "random/ipc2"]
    by_run = {caller.rpartition(".")[2]: n for (caller, path), n in loads.items()
              if caller.startswith("infer_fast.pipeline.") and path == teacher_paths[0]}
    assert by_run == {"_path_teacher_digests": 1, "_load_teachers": 1}, dict(loads)
    assert digests["infer_fast.pipeline"] == 1, dict(digests)


# ---- 2. a run of only external sets --------------------------------------------------------------

def test_a_run_of_only_external_sets_scores_them(tmp_path, teacher_paths, external):
    """README: external sets join the run's students, table and scores; with ``methods: []`` they
    are the whole run (it was refused: "methods must be chosen from ...")."""
    cfg = _config(tmp_path, teachers=[{"path": teacher_paths[0]}], methods=[], external={"theirs": external},
                  scores=True)
    results = run_pipeline(cfg, progress=False)
    assert [row["label"] for row in results["table"]] == ["theirs"]
    assert list(results["scores"]) == ["external:theirs/ipc2"]
    assert list(results["runs"]) == ["external:theirs/ipc2/seed0"]
    assert not (tmp_path / "run" / "sets").exists()  # (nothing distilled)


def test_no_methods_and_no_external_sets_is_refused_saying_what_to_write(tmp_path):
    with pytest.raises(ValueError, match=r"^config: methods is empty and no external sets are given: list methods "
                                         r"among infer, .*, or give the sets to score as external: "
                                         r"\{LABEL: SET_DIR\}$"):
        _config(tmp_path, methods=[])


def test_a_config_file_of_only_external_sets_refuses_a_method_section_it_ignores(tmp_path, external):
    from infer_fast.run_config import load_pipeline_config

    path = tmp_path / "run.yaml"
    path.write_text(f"dataset: {DATASET}\nteachers: [{{model: convnet-w8-d2, epochs: 1}}]\nout: {tmp_path}/run\n"
                    f"methods: []\nexternal: {{theirs: {external}}}\n")
    assert load_pipeline_config(str(path)).methods == []
    path.write_text(path.read_text() + "sre2l: {iterations: 2}\n")
    with pytest.raises(ValueError, match=r"sre2l: iterations would be ignored: sre2l, whose setting it is, is not "
                                         r"among the run's methods \(none: it scores only its external sets\)$"):
        load_pipeline_config(str(path))


# ---- 3. the compiler of a recovery the run will not run ------------------------------------------

def test_a_continued_run_whose_sets_are_made_looks_for_no_compiler(tmp_path, monkeypatch):
    from torch._inductor import cpp_builder

    looked = []

    def no_compiler():
        looked.append(1)
        raise RuntimeError("No working C++ compiler found")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    compiled = dict(methods=["infer", "infer_dyn", "random"], ipc=[2, 3], recovery={"compile": "default"})
    with pytest.raises(ValueError, match=r"^config: compile='default' on the CPU needs a working C\+\+ compiler"):
        _config(tmp_path, **compiled)  # (a new run: INFER's sets are to make)
    assert len(looked) == 1
    (tmp_path / "run" / "sets" / "infer-ipc2").mkdir(parents=True)
    with pytest.raises(ValueError, match="needs a working C"):
        _config(tmp_path, **compiled)  # (its set at ipc 3 is still to make)
    (tmp_path / "run" / "sets" / "infer-ipc3").mkdir()
    looked.clear()
    assert _config(tmp_path, **compiled).methods == ["infer", "infer_dyn", "random"]  # (every INFER set made)
    assert not looked


# ---- 4. each method's options parsed once --------------------------------------------------------

def test_a_config_parses_each_methods_options_once(tmp_path, monkeypatch):
    parsed = collections.Counter()
    real = PipelineConfig.options_for

    def options_for(self, name):
        parsed[name] += 1
        return real(self, name)

    monkeypatch.setattr(PipelineConfig, "options_for", options_for)
    _config(tmp_path, methods=["infer", "infer_dyn", "sre2l", "random", "cda"])
    assert parsed and set(parsed.values()) == {1}, dict(parsed)


def test_loaded_teachers_give_each_model_its_own_digest_after_the_list_changes(monkeypatch):
    """The digests a LoadedTeachers carries go with their models: reordered, or with a model
    put in since, each gets its own (the identities and the distinctness check read them)."""
    import torch

    from infer_fast._io import model_digest
    from infer_fast.distill import run as run_mod

    a, b, c = (torch.nn.Linear(2, 2) for _ in range(3))
    loaded = run_mod.LoadedTeachers([a, b], [model_digest(a), model_digest(b)])
    computed = []
    monkeypatch.setattr(run_mod, "model_digest", lambda m: computed.append(m) or model_digest(m))
    assert run_mod.teacher_digests(loaded) == [model_digest(a), model_digest(b)] and computed == []
    loaded.reverse()
    assert run_mod.teacher_digests(loaded) == [model_digest(b), model_digest(a)] and computed == []
    loaded[0] = c
    assert run_mod.teacher_digests(loaded) == [model_digest(c), model_digest(a)] and computed == [c]
