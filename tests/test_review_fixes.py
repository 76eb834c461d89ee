"""Faults a review of the session's changes found: a plug-in method's parse_options run for the
help of every command, options declared result_neutral on a method, dangling links named as
other files."""
import os

import pytest

from infer_fast import cli
from infer_fast.data.folders import scan_class_folders
from infer_fast.methods import Method, register, unregister
from infer_fast.options import Option

NEEDED = Option("reference", str, "a file the method needs (no default: it must be given)")
BATCH = Option("batch", int, "images per batch (any: the same set)", default=64, minimum=1, result_neutral=True)


def _needs_reference(options, seed):  # (the documented signature: parse_options(options, seed))
    return {"reference": options["reference"], "batch": options.get("batch", BATCH.default), "seed": seed}


def _unused_distill(request):
    raise AssertionError("not run here")


@pytest.fixture
def plugin_method():
    method = register(Method(name="needsref", label="Needs a reference", summary="a plug-in with a required option",
                             distill=_unused_distill, parse_options=_needs_reference, options=(NEEDED, BATCH),
                             uses_teachers=False))
    yield method
    unregister("needsref")


def test_a_plugin_whose_options_parse_only_when_given_leaves_every_command_working(plugin_method, capsys):
    """The help quotes each method's defaults per family, parsing its own recipe: a plug-in with the
    documented two-argument parse_options, or one reading an option only a user gives, broke the
    parser of every command (a traceback from `infer-fast info`)."""
    defaults = plugin_method.family_option_defaults()
    assert all(values == {"reference": None, "batch": 64} for values in defaults.values())
    assert cli.main(["datasets"]) == 0
    assert cli.main(["distill", "--help"]) == 0
    assert "--reference" in capsys.readouterr().out


def test_an_option_declared_result_neutral_is_one_of_the_methods(plugin_method):
    assert plugin_method.result_neutral == ("batch",)


def test_a_dangling_link_named_as_another_kind_of_file_is_skipped_as_that_file_would_be(tmp_path):
    cat = tmp_path / "train" / "cat"
    cat.mkdir(parents=True)
    from PIL import Image
    Image.new("RGB", (4, 4)).save(cat / "0.png")
    os.symlink(tmp_path / "nowhere" / "notes.txt", cat / "notes.txt")
    samples, classes = scan_class_folders(str(tmp_path / "train"))
    assert classes == ("cat",) or list(classes) == ["cat"]
    assert [os.path.basename(path) for path, _ in samples] == ["0.png"]
    os.symlink(tmp_path / "nowhere" / "1.png", cat / "1.png")  # (an image it stood for would be left out)
    with pytest.raises(FileNotFoundError, match="1.png: a symbolic link that leads nowhere"):
        scan_class_folders(str(tmp_path / "train"))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from conftest import train_tiny_teachers

    return train_tiny_teachers(tmp_path_factory.mktemp("teachers"), seeds=(0,))[0]


def _sre2l(out, teacher, dataset="fashion-mnist-mini", resume=True):
    from infer_fast.methods import DistillRequest

    return DistillRequest(method="sre2l", dataset=dataset, ipc=1, out_dir=str(out), teacher_paths=[teacher],
                          options={"iterations": 2}, resume=resume, progress=False, device="cpu").make_set()


def test_a_finished_set_is_the_same_request_with_the_datasets_own_values_spelled_out(tmp_path, teacher, capsys):
    out = tmp_path / "set"
    _sre2l(out, teacher)
    capsys.readouterr()
    for spelled in ({"name": "fashion-mnist-mini", "num_classes": 10}, {"name": "fashion-mnist-mini", "image_size": 28}):
        assert str(_sre2l(out, teacher, dataset=spelled)) == str(out)
        assert capsys.readouterr().out == f"{out}: already distilled; nothing to do\n"


def test_a_finished_set_of_other_training_images_is_not_this_requests(tmp_path, teacher, monkeypatch):
    from infer_fast.data.sets import ImageSet
    from infer_fast.storage.distilled_set import OutputExistsError

    out = tmp_path / "set"
    _sre2l(out, teacher)
    monkeypatch.setattr(ImageSet, "digest", lambda self, progress=False: "0" * 64)  # (another data root's images)
    with pytest.raises(OutputExistsError, match=r"belongs to another run \(the training images differ\)"):
        _sre2l(out, teacher)


def test_a_finished_set_compares_its_teachers_weights_not_their_files(tmp_path, teacher, capsys):
    """The request records each teacher's weights (model_digest, as the recovery checkpoint does):
    a teacher trained again to the same weights, whose file records other times, finds the set
    done (the file's SHA-256 refused it as "the teachers' weights differ"); other weights do not."""
    import torch
    from infer_fast.storage.distilled_set import OutputExistsError

    out = tmp_path / "set"
    _sre2l(out, teacher)
    capsys.readouterr()
    checkpoint = torch.load(teacher, weights_only=True)
    checkpoint["elapsed_s"] = checkpoint.get("elapsed_s", 0.0) + 1.5  # (the same training, timed again)
    again = tmp_path / "again.pt"
    torch.save(checkpoint, again)
    assert again.read_bytes() != open(teacher, "rb").read()
    assert str(_sre2l(out, str(again))) == str(out)
    assert capsys.readouterr().out == f"{out}: already distilled; nothing to do\n"
    weights = next(k for k, v in checkpoint["state_dict"].items() if v.is_floating_point())
    checkpoint["state_dict"][weights] = checkpoint["state_dict"][weights] + 1e-3
    torch.save(checkpoint, again)
    with pytest.raises(OutputExistsError, match=r"belongs to another run \(the teachers' weights \(or their order\) differ\)"):
        _sre2l(out, str(again))


@pytest.mark.parametrize("first_entries", [True, False], ids=["as-first-recorded", "with-the-data-entries"])
def test_a_set_recording_the_first_form_of_its_request_is_compared_in_that_form(tmp_path, teacher, capsys,
                                                                               first_entries):
    """A set whose request an earlier infer-fast recorded (no request_form: its teachers by their
    files' SHA-256, at first without the dataset's class count, image size and data digest) is
    found done by the same request, and refused naming what differs by another: it was refused
    as "the training images, the teachers' weights differ" whatever the request."""
    import json

    import torch
    from infer_fast._io import file_sha256
    from infer_fast.distill.run import FIRST_FORM_LATER_ENTRIES
    from infer_fast.storage.distilled_set import OutputExistsError

    out = tmp_path / "set"
    _sre2l(out, teacher)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    request = manifest["request"]
    assert request.pop("request_form") == 2
    request["teachers_sha256"] = [file_sha256(teacher)]
    if first_entries:
        for key in FIRST_FORM_LATER_ENTRIES:
            del request[key]
    manifest_path.write_text(json.dumps(manifest))
    capsys.readouterr()
    assert str(_sre2l(out, teacher)) == str(out)
    assert capsys.readouterr().out == f"{out}: already distilled; nothing to do\n"
    other = tmp_path / "other.pt"  # (another file, the same weights: form 1 told teachers by their files)
    checkpoint = torch.load(teacher, weights_only=True)
    checkpoint["elapsed_s"] = checkpoint.get("elapsed_s", 0.0) + 1.5
    torch.save(checkpoint, other)
    with pytest.raises(OutputExistsError, match=r"belongs to another run \(the teachers' weights \(or their order\) differ\)"):
        _sre2l(out, str(other))


def test_a_runs_teachers_and_dataset_are_compared_as_they_take_effect(tmp_path, monkeypatch):
    """The same checkpoint by a relative or an absolute path (its SHA-256 recorded), TeacherConfig's
    defaults spelled out, the dataset by another accepted spelling or with its own class count: the
    same run; another epochs, or the file retrained in place: named."""
    from infer_fast.results import _recorded_teacher, effective_settings
    from infer_fast.run_identity import differing

    monkeypatch.chdir(tmp_path)
    (tmp_path / "t1.pt").write_bytes(b"weights A")

    def config(dataset, *teachers):
        return {"dataset": dataset, "student": {}, "teachers": [_recorded_teacher(t) for t in teachers]}

    recorded = config("fashion-mnist-mini", {"path": "t1.pt"}, {"model": "convnet", "epochs": 1})
    current = config({"name": "FASHION_MNIST_MINI", "num_classes": 10}, {"path": str(tmp_path / "t1.pt")},
                     {"model": "convnet", "epochs": 1, "lr": 0.1, "seed": 0, "eval_batch_size": 7})
    assert differing(*effective_settings(recorded, current)) == []
    current["teachers"][1]["epochs"] = 2
    assert differing(*effective_settings(recorded, current)) == ["teachers[1].epochs"]
    (tmp_path / "t1.pt").write_bytes(b"weights B")  # (retrained in place: another teacher)
    current = config("fashion-mnist-mini", {"path": "t1.pt"}, {"model": "convnet", "epochs": 1})
    assert differing(*effective_settings(recorded, current)) == ["teachers[0].sha256"]
    before = {**recorded, "teachers": [{"path": "t1.pt"}, recorded["teachers"][1]]}  # (a file of before: no digest)
    assert differing(*effective_settings(before, current)) == []


def test_the_preview_composes_only_the_classes_it_shows(tmp_path, monkeypatch):
    """Its composed rows were made from whole natural sets (every class: 3.5 GB at ImageNet-1k's
    1000 classes of 224 px) to show 10 columns; now from the shown classes, the same pixels."""
    import torch
    from conftest import small_infer_set

    from infer_fast.storage import report
    from infer_fast.storage.dataset import DistilledDataset

    ds = small_infer_set()
    real, composed = report.ufc_compose, []

    def recording(natural, *args, **kwargs):
        composed.append((natural.shape, real(natural, *args, **kwargs)))
        return composed[-1][1]

    monkeypatch.setattr(report, "ufc_compose", recording)
    report.write_preview(ds, tmp_path / "p.png", max_classes=4)
    (shape, images), = composed
    assert shape[1] == 4  # (4 classes shown of 10)
    whole = DistilledDataset(ds, hard_only=True, cache_bytes=0)
    assert torch.equal(images.flatten(0, 1), torch.cat([whole.compose_groups(g, g + 1)[0, :4] for g in range(ds.G)]))
