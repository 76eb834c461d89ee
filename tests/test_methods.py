"""The method registry: every method one module, the CLI and `infer-fast run` built from it; a
toy method defined here alone runs end to end; CDA and RDED inside a run."""
import dataclasses
import json

import pytest
import torch

from infer_fast.cli import main
from infer_fast.data import load_dataset
from infer_fast.distill.run import real_data_fields
from infer_fast.methods import DistillRequest, Method, all_methods, get_method, register, unregister
from infer_fast.options import Option
from infer_fast.pipeline import PipelineConfig, run_pipeline
from infer_fast.storage import DistilledSet, load_distilled, save_distilled

torch.set_num_threads(1)

TINY_TEACHER = {"model": "convnet-w8-d2", "epochs": 1, "batch_size": 256, "lr": 0.05, "seed": 0}
TINY_STUDENT = {"model": "convnet-w8-d2", "epochs": 2, "batch_size": 64, "device": "cpu"}


def toy_distill(request: DistillRequest):
    """The first ``ipc`` training images of every class, shifted by ``offset`` pixels."""
    train = load_dataset(request.dataset, "train", data_root=request.data_root)
    offset = request.parsed["offset"]  # (checked and parsed when the request was made)
    rows = torch.cat([torch.nonzero(train.labels == c).flatten()[:request.ipc] for c in range(train.spec.num_classes)])
    images = torch.roll(train.images_at(rows), offset, dims=-1)
    ds = DistilledSet(method="toy", **real_data_fields(train), images=images, labels=train.labels[rows],
                      hyperparameters={"offset": offset}, teachers=[],
                      budget={"ipc": request.ipc, "K": 0, "M": 0, "accounting": "ipc"}, seed=request.seed)
    return save_distilled(ds, request.out_dir)


OFFSET = Option("offset", int, "pixels the images are rolled by", default=0, minimum=-3)


def toy_parse(options, seed=0):
    """(A cross-field check would go here; each value is checked against OFFSET already.)"""
    return {"offset": options.get("offset", OFFSET.default)}


@pytest.fixture
def toy():
    method = register(Method(name="toy", label="Toy", summary="the first ipc images per class, shifted",
                             distill=toy_distill, parse_options=toy_parse, options=(OFFSET,), uses_teachers=False))
    yield method
    unregister("toy")


def test_builtin_methods_and_their_facts():
    names = [m.name for m in all_methods()]
    assert names[:4] == ["infer", "infer_dyn", "sre2l", "random"] and {"cda", "rded"} <= set(names)
    assert get_method("infer").layout == "compensated" and get_method("sre2l").layout == "images"
    assert get_method("infer_dyn").set_method == "infer" and get_method("infer_dyn").student_labels == "per-batch"
    assert get_method("rded").student_labels == "per-batch" and get_method("cda").resumable
    # RDED continues after its last checkpointed class, on rank 0 alone; the recovery methods split across ranks
    assert get_method("rded").resumable and not get_method("rded").all_ranks
    assert all(get_method(m).all_ranks for m in ("infer", "sre2l", "cda")) and not get_method("random").resumable
    with pytest.raises(ValueError, match="unknown method 'nope'; known: infer, infer_dyn"):
        get_method("nope")
    with pytest.raises(ValueError, match="iterations do not apply to method random"):
        get_method("random").check_options({"iterations": 3})
    with pytest.raises(ValueError, match="already registered"):
        register(Method(name="infer", label="x", summary="x", distill=toy_distill))
    with pytest.raises(ValueError, match="give distill, or trains_on"):
        Method(name="bad", label="x", summary="x")


@pytest.mark.parametrize("first", ["infer_fast.methods.sre2l", "infer_fast.methods.rded", "infer_fast.distill"])
def test_the_builtin_order_does_not_depend_on_which_module_is_imported_first(first):
    """Importing one method's module (or reaching a method's function through infer_fast.distill)
    loads the others while that one is still being imported; the order is the built-in one."""
    import subprocess
    import sys

    code = (f"import {first}\nimport infer_fast.distill as d\nd.distill_sre2l\n"
            "from infer_fast.methods import all_methods\nprint(' '.join(m.name for m in all_methods()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["infer", "infer_dyn", "sre2l", "random", "cda", "rded"]


def test_a_toy_method_defined_here_runs_end_to_end(toy, tmp_path, capsys):
    """Registered in this file alone: `distill --method toy` with its own option as a flag,
    its set stored and loaded, and an `infer-fast run` row of its own."""
    out = tmp_path / "toy"
    assert main(["distill", "--method", "toy", "--dataset", "fashion-mnist-mini", "--ipc", "2", "--offset", "3",
                 "--out", str(out), "--quiet"]) == 0
    ds = load_distilled(out)
    assert ds.method == "toy" and ds.images.shape[0] == 20 and ds.hyperparameters["offset"] == 3
    capsys.readouterr()
    assert main(["distill", "--method", "toy", "--dataset", "fashion-mnist-mini", "--ipc", "2", "--offset", "x",
                 "--out", str(tmp_path / "bad")]) == 2  # a typed flag: argparse refuses it
    assert "--offset: invalid int value: 'x'" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["distill", "--method", "toy", "--dataset", "fashion-mnist-mini", "--ipc", "2", "--offset", "-4",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "argument --offset: must be an integer >= -3, got -4" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["distill", "--method", "toy", "--dataset", "fashion-mnist-mini", "--ipc", "2", "--iterations", "3",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--iterations does not apply to --method toy" in capsys.readouterr().err

    cfg = PipelineConfig.from_dict(dict(dataset="fashion-mnist-mini", teachers=[dict(TINY_TEACHER)],
                                        out=str(tmp_path / "run"), ipc=[2], methods=["toy", "random"],
                                        method_options={"toy": {"offset": 1}}, student=TINY_STUDENT, seeds=1,
                                        device="cpu", feature_duplication=False))
    results = run_pipeline(cfg, progress=False)
    assert sorted(results["runs"]) == ["random/ipc2/seed0", "toy/ipc2/seed0"]
    assert load_distilled(tmp_path / "run" / "sets" / "toy-ipc2").hyperparameters["offset"] == 1
    assert "| Toy | 2 |" in (tmp_path / "run" / "results.md").read_text()
    with pytest.raises(ValueError, match="method_options: toy: offset must be an integer >= -3, got 'x'"):
        PipelineConfig.from_dict(dict(dataset="fashion-mnist-mini", teachers=[dict(TINY_TEACHER)], out="o",
                                      methods=["toy"], method_options={"toy": {"offset": "x"}}))


def test_a_distill_request_is_checked_and_parsed_when_made(tmp_path):
    """The request is the edge of a method: made, it holds its options parsed over the method's
    recipe for the dataset's family (ImageNet's augmentation for an ImageNet-family set); a bad
    option, ipc or missing teachers is refused there, before any method runs; it cannot change."""
    from infer_fast.distill.config import RecoveryConfig

    base = dict(dataset="fashion-mnist-mini", ipc=2, out_dir=tmp_path / "o", teacher_paths=["t.pt"])
    request = DistillRequest(method="infer", options={"iterations": 3, "selection": "confidence"}, **base)
    assert request.parsed["config"] == RecoveryConfig(iterations=3) and request.parsed["selection"] == "confidence"
    assert request.parsed["accounting"] == "fair"
    imagenet = DistillRequest(method="sre2l", **{**base, "dataset": "imagenet"})
    assert imagenet.parsed["config"] == RecoveryConfig.recipe("imagenet", "sre2l", "sre2l-imagenet")
    for fields, message in (
        (dict(method="infer", options={"r_bn": -1.0}), "r_bn must be"),
        (dict(method="rded", options={"factor": 0}), "factor must be a positive integer"),
        (dict(method="random", options={"iterations": 3}), "iterations do not apply to method random"),
        (dict(method="infer_dyn"), "method infer_dyn makes no set of its own"),
        (dict(method="nope"), "unknown method 'nope'"),
        (dict(method="sre2l", ipc=0), "ipc must be a positive integer"),
        (dict(method="cda", teacher_paths=()), "teachers: method cda needs at least one teacher checkpoint"),
        (dict(method="infer", options=["iterations", 3]), "options must be a mapping of infer's option names"),
        # a dataset mapping, checked by the one check teacher and run use (random has no recipe to look up)
        (dict(method="random", dataset={"name": "imagenet", "image_size": "big"}), "image_size must be a positive"),
        (dict(method="random", dataset={"name": "cifar10", "in_memory": False}), "in_memory false is for folder"),
        (dict(method="random", dataset="mnist-9"), "unknown dataset 'mnist-9'"),
    ):
        with pytest.raises(ValueError, match=message):
            DistillRequest(**{**base, **fields})
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.options = {"iterations": -1}
    # (no options given: the dataset family's recipe and the defaults, so a run that writes them out is the same run)
    assert DistillRequest(method="rded", options=None, **base).parsed == {
        "factor": 1, "candidates_per_class": 300, "crops_per_image": 5, "batch_size": 512, "precision": "fp32",
        "channels_last": False, "checkpoint_minutes": 10.0}
    assert not (tmp_path / "o").exists()


def test_a_method_declares_its_options(toy, tmp_path, capsys):
    """A method's Option declarations give its typed flag (in a help section of its own, the
    default in the help) and check a YAML value, from `distill --config` and `run` alike."""
    from test_options import _command_actions

    action = _command_actions("distill")["offset"]
    # (an int flag, checked against the declared range as it is read)
    assert action.type.__name__ == "int" and action.type("3") == 3 and action.option_strings == ["--offset"]
    assert action.default is None
    assert action.help == "pixels the images are rolled by (default 0)"
    assert main(["distill", "--help"]) == 0
    out = capsys.readouterr().out
    assert "options of --method toy:\n  --offset OFFSET" in out
    words = " ".join(out.split())  # (argparse wraps the description)
    assert "rded: teacher-scored real patches" in words and "toy: the first ipc images per class, shifted" in words
    assert "The sets of infer, sre2l, random, cda, toy are unlabelled" in words  # (RDED's students: per-batch labels)
    (tmp_path / "toy.yaml").write_text("method: toy\noffset: 1.5\n")
    assert main(["distill", "--config", str(tmp_path / "toy.yaml"), "--dataset", "fashion-mnist-mini", "--ipc", "2",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "toy.yaml': offset must be an integer >= -3, got 1.5" in err and not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="method_options: toy: offset must be an integer >= -3, got -9"):
        PipelineConfig.from_dict(dict(dataset="fashion-mnist-mini", teachers=[dict(TINY_TEACHER)], out="o",
                                      methods=["toy"], method_options={"toy": {"offset": -9}}))
    with pytest.raises(ValueError, match="options must be Option declarations"):
        Method(name="bad", label="x", summary="x", distill=toy_distill, options=("offset",))
    with pytest.raises(ValueError, match="option offset is declared with another kind or other choices by method "
                                         "'toy'"):
        register(Method(name="toy2", label="x", summary="x", distill=toy_distill,
                        options=(Option("offset", float, "x"),)))
    assert "toy2" not in [m.name for m in all_methods()]


@pytest.fixture
def no_toyclash():
    yield
    unregister("toyclash")  # (where a test fails: registered, it would break the other tests' commands)


@pytest.mark.parametrize("option,message", [
    (Option("ipc", int, "x", default=1), "option ipc is an option of infer-fast distill itself [(]--ipc[)]"),
    (Option("teachers", str, "x"), "option teachers is an option of infer-fast distill itself"),
    (Option("resume", bool, "x"), "option resume takes the flag --resume, which infer-fast distill has for its own "
                                  "switch"),
    (Option("target", str, "x", flag="--out"), "option target takes the flag --out, which infer-fast distill has "
                                                "for its own option out"),
    (Option("no_cuda_graphs", bool, "x"), "option no_cuda_graphs takes the flag --no-cuda-graphs, which infer-fast "
                                          "distill has for option cuda_graphs of method 'infer'"),
], ids=["ipc", "teachers", "resume", "out-flag", "no-cuda-graphs"])
def test_an_option_clashing_with_the_distill_commands_flags_is_refused(option, message, no_toyclash, tmp_path,
                                                                     capsys):
    """Accepted, it broke every `infer-fast distill` call (argparse: conflicting option string)."""
    with pytest.raises(ValueError, match=f"method 'toyclash': {message}"):
        register(Method(name="toyclash", label="x", summary="x", distill=toy_distill, options=(option,)))
    assert "toyclash" not in [m.name for m in all_methods()]
    assert main(["distill", "--method", "random", "--dataset", "fashion-mnist-mini", "--ipc", "1",
                 "--out", str(tmp_path / "r"), "--quiet"]) == 0  # the command still builds and runs
    capsys.readouterr()


def test_two_options_of_one_method_sharing_a_flag_are_refused(no_toyclash):
    options = (Option("fast", bool, "x", default=True), Option("no_fast", bool, "x"))  # both --no-fast
    with pytest.raises(ValueError, match="option no_fast takes the flag --no-fast, which infer-fast distill has for "
                                         "option fast of method 'toyclash'"):
        register(Method(name="toyclash", label="x", summary="x", distill=toy_distill, options=options))
    register(Method(name="toyclash", label="x", summary="x", distill=toy_distill,  # (the seed: a method's own, shared)
                    options=(Option("seed", int, "x"), Option("flagless", int, "x", flag=None))))
    assert get_method("toyclash").option_names == ("seed", "flagless")


def test_the_distill_commands_flags_are_the_declared_ones():
    """Every flag of `infer-fast distill` is a request option's, a method option's or a declared
    switch (distill_command_flags): what register() checks a new method's options against."""
    from infer_fast.methods.distill_options import distill_command_flags, distill_method_options
    from test_options import _command_actions

    flags = {f for action in _command_actions("distill").values() for f in action.option_strings}
    method_flags = {opt.flag_name for opt, _ in distill_method_options().values()}
    assert flags - {"-h"} == set(distill_command_flags()) | method_flags


def test_builtin_methods_declare_typed_options():
    """CDA's recipe (its recipe names), RDED's recipe values, INFER's selection and accounting:
    typed flags whose help says the default; a bad YAML value refused naming the option."""
    from test_options import _command_actions

    from infer_fast.methods import cda

    actions = _command_actions("distill")
    assert tuple(actions["recipe"].choices) == tuple(cda.RECIPES) and "tiny-imagenet for tiny-imagenet and cifar" \
        in actions["recipe"].help
    assert actions["factor"].type.__name__ == "int" and "1 for cifar and tiny-imagenet, 2 for imagenet" in actions["factor"].help
    assert actions["batch_size"].type("512") == 512 and actions["batch_size"].help.endswith("(default 512)")
    assert tuple(actions["accounting"].choices) == ("fair", "ipc") and "(default fair)" in actions["accounting"].help
    # one flag, two meanings: each method's words (the recovery checkpoints inside a batch, RDED after a class)
    minutes = actions["checkpoint_minutes"].help
    assert minutes.startswith("infer, sre2l, cda: also checkpoint inside a batch") and minutes.endswith("(default 10.0; off: never)")
    assert "; rded: checkpoint after the class that ends M minutes" in minutes
    for method, options, message in (
            ("cda", {"recipe": 1}, "recipe must be a string or None .*, got 1"),
            ("rded", {"crops_per_image": "5"}, "crops_per_image must be a positive integer"),
            ("infer", {"selection": "best"}, "selection must be one of random, confidence, got 'best'")):
        with pytest.raises(ValueError, match=message):
            get_method(method).check_options(options)
    assert get_method("cda").check_options({"recipe": None})["recipe"] == "imagenet-1k"  # (null: the default)


def test_run_config_method_options_are_checked():
    base = dict(dataset="fashion-mnist-mini", teachers=[dict(TINY_TEACHER)], out="o")
    with pytest.raises(ValueError, match="method_options: infer .*infer's options go in recovery"):
        PipelineConfig.from_dict({**base, "method_options": {"infer": {"iterations": 2}}})
    with pytest.raises(ValueError, match="^config: method_options: rded: factor must be a positive integer"):
        PipelineConfig.from_dict({**base, "methods": ["rded"], "method_options": {"rded": {"factor": 0}}})
    # a method without options is not offered as taking them (it was, then refused the options given)
    with pytest.raises(ValueError, match=r"method_options: random \(.*random takes none; method_options takes cda, "
                                         r"rded\)$"):
        PipelineConfig.from_dict({**base, "methods": ["random"], "method_options": {"random": {"iterations": 2}}})
    PipelineConfig.from_dict({**base, "methods": ["random"], "method_options": {"random": {}}})
    with pytest.raises(ValueError, match="methods must be chosen from infer, infer_dyn, sre2l, random, cda, rded"):
        PipelineConfig.from_dict({**base, "methods": ["gvbsm"]})
    with pytest.raises(ValueError, match=r"student: seed is the run's to set \(seeds: N trains students of seeds "):
        PipelineConfig.from_dict({**base, "student": {"seed": 7}})  # (it was accepted, every student seed 0..N-1)


def test_run_config_reads_the_methods_facts():
    """Which section holds a method's options, what it shares of ``recovery``, the run-level
    settings it takes and its budget check are facts of the Method, not names in run_config."""
    base = dict(dataset="fashion-mnist-mini", teachers=[dict(TINY_TEACHER)], out="o", recovery={"seed": 4})
    cfg = PipelineConfig.from_dict({**base, "methods": ["infer", "sre2l", "cda"], "accounting": "ipc",
                                    "sre2l": {"iterations": 5}, "method_options": {"cda": {"recipe": "imagenet-21k"}}})
    assert cfg.method_options_of("infer") == {"seed": 4, "accounting": "ipc", "selection": "random"}
    assert cfg.method_options_of("sre2l") == {"seed": 4, "iterations": 5}
    assert cfg.method_options_of("cda") == {"seed": 4, "recipe": "imagenet-21k"}
    assert cfg.method_options_of("rded") == {}  # (it shares no recovery setting it does not declare)
    # the checkpoint cadence is the run's: every method that checkpoints takes it, its own section wins
    cadence = PipelineConfig.from_dict({**base, "methods": ["sre2l", "cda", "rded", "random"],
                                        "recovery": {"checkpoint_minutes": 3.0, "checkpoint_every": 50},
                                        "sre2l": {"checkpoint_every": 7}})
    assert cadence.method_options_of("sre2l") == {"checkpoint_minutes": 3.0, "checkpoint_every": 7}
    assert cadence.method_options_of("cda") == {"checkpoint_minutes": 3.0, "checkpoint_every": 50}
    assert cadence.method_options_of("rded") == {"checkpoint_minutes": 3.0}
    assert cadence.options_for("sre2l")["config"].checkpoint_minutes == 3.0
    with pytest.raises(ValueError, match="method_options: infer_dyn .*infer_dyn trains on infer's set"):
        PipelineConfig.from_dict({**base, "method_options": {"infer_dyn": {}}})

    def small_only(options, ipc, spec, num_teachers):
        if ipc > options["offset"] + 2:
            raise ValueError(f"ipc={ipc} is more than toy takes")

    register(Method(name="toy", label="Toy", summary="x", distill=toy_distill, parse_options=toy_parse,
                    options=(OFFSET, Option("seed", int, "x")), uses_teachers=False, check_budget=small_only))
    try:
        PipelineConfig.from_dict({**base, "methods": ["toy"], "ipc": [2, 3], "method_options": {"toy": {"offset": 1}}})
        with pytest.raises(ValueError, match="config: method_options: toy: ipc=3 is more than toy takes"):
            PipelineConfig.from_dict({**base, "methods": ["toy"], "ipc": [2, 3]})
        assert PipelineConfig.from_dict({**base, "methods": ["toy"], "ipc": [2]}).method_options_of("toy") == {"seed": 4}
    finally:
        unregister("toy")


def test_cli_distill_refuses_what_a_method_does_not_take(tmp_path, capsys):
    for argv, message in (
        (["--method", "rded", "--teachers", "t.pt", "--factor", "0"], "argument --factor: must be a positive integer"),
        (["--method", "rded", "--teachers", "t.pt", "--iterations", "5"], "--iterations does not apply to --method rded"),
        (["--method", "cda"], "--teachers T1.pt[,T2.pt...] is required for --method cda"),
    ):
        assert main(["distill", "--dataset", "fashion-mnist-mini", "--ipc", "2", "--out", str(tmp_path / "x")]
                    + argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    (tmp_path / "dyn.yaml").write_text("method: infer_dyn\nteachers: [t.pt]\n")  # (not a --method choice)
    assert main(["distill", "--config", str(tmp_path / "dyn.yaml"), "--dataset", "fashion-mnist-mini", "--ipc", "2",
                 "--out", str(tmp_path / "x")]) == 2
    assert "method must be one of infer, sre2l, random, cda, rded, got 'infer_dyn'" in capsys.readouterr().err


def test_cda_and_rded_in_a_run(tmp_path, monkeypatch):
    """CDA (resumable recovery, relabelled) and RDED (teachers label every batch: no stored soft
    labels, no relabelling, compression ratio without them; its students augment as the
    release's, at the set's factor) beside random in one run."""
    import infer_fast.student

    cfg = PipelineConfig.from_dict(dict(
        dataset="fashion-mnist-mini", teachers=[dict(TINY_TEACHER)], out=str(tmp_path / "run"), ipc=[2],
        methods=["cda", "rded", "random"], recovery={"seed": 3, "augmentation": "roll"},
        method_options={"cda": {"iterations": 2},
                        "rded": {"candidates_per_class": 8, "crops_per_image": 2, "factor": 2}},
        student=TINY_STUDENT, seeds=1, device="cpu", feature_duplication=False))
    students, train_student = {}, infer_fast.student.train_student

    def recording(ds, test, config, **kw):  # (the config each method's student got)
        students[ds.method] = config
        return train_student(ds, test, config, **kw)

    monkeypatch.setattr(infer_fast.student, "train_student", recording)
    results = run_pipeline(cfg, progress=False)
    assert (students["rded"].augmentation, students["rded"].patches, students["rded"].dynamic) == \
        ("shuffle_patches_crop_flip", 2, True)
    assert {(c.augmentation, c.patches) for m, c in students.items() if m != "rded"} == {("crop_flip", 1)}
    cda = load_distilled(tmp_path / "run" / "sets" / "cda-ipc2")
    rded = load_distilled(tmp_path / "run" / "sets" / "rded-ipc2")
    assert cda.method == "cda" and cda.has_soft_labels and cda.seed == 3
    assert cda.hyperparameters["crop_scale_curriculum"] == ["cosine", 1.0, 1.0]
    assert rded.method == "rded" and not rded.has_soft_labels and rded.images.shape[0] == 20
    assert "no soft labels stored" in results["sets"]["rded/ipc2"]["compression_ratio_note"]
    assert results["runs"]["rded/ipc2/seed0"]["epochs"] == 2  # (per-batch labels, no epoch reduction)
    table = (tmp_path / "run" / "results.md").read_text()
    assert "| CDA | 2 |" in table and "| RDED | 2 |" in table
    json.dumps(results, allow_nan=False)
