"""Files infer-fast reads that it did not write, or that were edited since: a run directory whose
folders lead elsewhere through symbolic links, the user's soft labels beside an export, a teacher
checkpoint naming a huge model, a manifest or export.json naming billions of classes, a PNG
decompression bomb, JSON and YAML nested past the parser's recursion, a results file of the
wrong shape. Each is refused (or handled) in one line naming the file, before any large work."""
import json
import shutil
import struct
import zlib

import pytest
import torch
from safetensors.torch import save_file

from infer_fast import teacher as teacher_mod
from infer_fast._io import file_sha256
from infer_fast.data import get_spec
from infer_fast.distill import distill_random
from infer_fast.models import create_model
from infer_fast.output_lock import output_lock, stale_leftovers
from infer_fast.pipeline import PipelineConfig, RUN_FOLDERS
from infer_fast.results import load_results
from infer_fast.storage import (DistilledSetError, export_imagefolder, import_imagefolder, inspect_report,
                                load_distilled, read_manifest, save_distilled)
from infer_fast.storage.importer import IMPORT_ORDER, ROW_ORDER_KEY
from infer_fast.storage.report import EXPORTED_SOFT_LABELS, EXPORTED_SOFT_LABELS_SHA256
from infer_fast.teacher import TeacherConfig, load_teacher

torch.set_num_threads(1)

DATASET = "fashion-mnist-mini"
DEEP_JSON = "[" * 100_000 + "]" * 100_000  # (far past Python's recursion limit)


def _edit_json(path, edit):
    """``edit`` the JSON file ``path``: in place, or by returning what replaces it."""
    data = json.loads(path.read_text())
    replaced = edit(data)
    path.write_text(json.dumps(data if replaced is None else replaced))


def _without(key):
    def edit(data):
        del data[key]

    return edit


# ---- 1: the sweep of a run directory's leftovers never follows a symbolic link ----------------

def test_continuing_a_run_never_removes_files_reached_through_symbolic_links(tmp_path):
    """A run whose teachers/ is a link to a folder shared with other runs, and whose sets/ holds
    a link to another folder: the hidden files there, named like a writer's leftovers, are
    others' (another run writing its teacher, the user's), kept; the run's own leftover goes."""
    run, shared, elsewhere = tmp_path / "run", tmp_path / "shared_teachers", tmp_path / "elsewhere"
    (run / "sets").mkdir(parents=True)
    shared.mkdir()
    (run / "teachers").symlink_to(shared)
    other_runs_teacher = shared / ".teacher1-resnet18.pt.tmp-12345"
    other_runs_teacher.write_text("another run writing")
    (elsewhere / "deep").mkdir(parents=True)
    users_file = elsewhere / "deep" / ".report.tmp-4242"
    users_file.write_text("precious")
    users_folder = elsewhere / "deep" / ".thesis.old-0123456789ab"
    users_folder.mkdir()
    (users_folder / "chapter1.tex").write_text("draft")
    (run / "sets" / "my_data_link").symlink_to(elsewhere)
    own = run / "sets" / ".random-ipc1.tmp-0123456789ab"
    own.mkdir()
    not_ours = run / "sets" / ".notes.tmp-inprogress"  # (a tag infer-fast never makes: the user's)
    not_ours.write_text("mine")

    assert stale_leftovers(run, RUN_FOLDERS) == [str(own)]
    with output_lock(run, "run directory", inside=True, folders=RUN_FOLDERS):
        pass
    assert not own.exists() and not_ours.exists()
    assert other_runs_teacher.read_text() == "another run writing"
    assert users_file.read_text() == "precious" and (users_folder / "chapter1.tex").read_text() == "draft"


# ---- 2: soft labels given to an import of an export folder -------------------------------------

@pytest.fixture(scope="module")
def shuffled_set(tmp_path_factory):
    """A set whose training order is not by class, with soft labels (its classes' one-hot
    logits), and its export (training order: export.json's files)."""
    root = tmp_path_factory.mktemp("order")
    distill_random(DATASET, 2, root / "random", seed=0)
    ds = load_distilled(root / "random")
    order = torch.randperm(ds.images.shape[0], generator=torch.Generator().manual_seed(0))
    ds.images, ds.labels = ds.images[order].contiguous(), ds.labels[order].contiguous()
    ds.soft_labels = _one_hot_logits(ds.labels)
    save_distilled(ds, root / "shuffled")
    export_imagefolder(root / "shuffled", root / "export")
    return root


def _one_hot_logits(labels):
    logits = torch.full((labels.numel(), 10), -5.0)
    logits[torch.arange(labels.numel()), labels] = 5.0
    return logits.half()


def _import_order_labels(export):
    """One-hot logits of the export's images in import order (class folder, then file name)."""
    files = json.loads((export / "export.json").read_text())["files"]
    ordered = sorted(files, key=lambda f: (int(f.split("/")[0]), f.split("/")[1]))
    return _one_hot_logits(torch.tensor([int(f.split("/")[0]) for f in ordered]))


def _agree(imported):
    return bool((imported.soft_labels.float().argmax(1) == imported.labels).all())


@pytest.mark.parametrize("recorded", [True, False], ids=["row_order recorded", "no metadata"])
def test_the_users_soft_labels_are_read_in_import_order(shuffled_set, tmp_path, recorded):
    """The user's file of the export's images, in the documented import order (class, then file
    name), with or without its row_order metadata, pairs each row with its image: export.json's
    training order is that of the export's own soft labels, not of every file given."""
    export = tmp_path / "export"
    shutil.copytree(shuffled_set / "export", export)
    (export / EXPORTED_SOFT_LABELS).unlink()
    mine = tmp_path / "mine.safetensors"
    save_file({"soft_labels": _import_order_labels(export)}, str(mine),
              metadata={ROW_ORDER_KEY: IMPORT_ORDER} if recorded else None)
    assert _agree(import_imagefolder(export, DATASET, soft_labels=mine))


def test_the_exports_own_soft_labels_are_known_by_their_digest(shuffled_set, tmp_path):
    """export.json records its soft labels' SHA-256: that file, taken by default or given from
    anywhere (a copy), is read in the export's training order."""
    export = shuffled_set / "export"
    listing = json.loads((export / "export.json").read_text())
    assert listing[EXPORTED_SOFT_LABELS_SHA256] == file_sha256(export / EXPORTED_SOFT_LABELS)
    assert _agree(import_imagefolder(export, DATASET))
    copy = tmp_path / "copy.safetensors"
    shutil.copy(export / EXPORTED_SOFT_LABELS, copy)
    assert _agree(import_imagefolder(export, DATASET, soft_labels=copy))


def test_an_export_of_before_the_digest_maps_its_own_file_alone(shuffled_set, tmp_path):
    """An export.json written before the digest was recorded: its folder's own soft labels are
    in training order, another file in import order."""
    export = tmp_path / "export"
    shutil.copytree(shuffled_set / "export", export)
    _edit_json(export / "export.json", _without(EXPORTED_SOFT_LABELS_SHA256))
    assert _agree(import_imagefolder(export, DATASET, soft_labels=export / EXPORTED_SOFT_LABELS))
    mine = tmp_path / "mine.pt"
    torch.save(_import_order_labels(export), mine)
    assert _agree(import_imagefolder(export, DATASET, soft_labels=mine))


# ---- 3: a teacher checkpoint naming a model far larger than its weights ------------------------

def _teacher(path, model="convnet-w8-d2"):
    meta = teacher_mod._metadata(TeacherConfig(dataset=DATASET, model=model, epochs=1), get_spec(DATASET))
    net = create_model(model, num_classes=meta["num_classes"], in_channels=meta["channels"],
                       image_size=meta["image_size"])
    torch.save({**meta, "epochs_done": 1, "test_accuracy": None, "history": [], "elapsed_s": 0.0,
                "state_dict": net.state_dict(), "train_state": None}, path)
    return net


def test_a_checkpoint_naming_a_huge_model_is_refused_before_it_is_built(tmp_path, monkeypatch):
    path = tmp_path / "t.pt"
    _teacher(path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["model"] = "convnet-w30000-d3"  # (32 GB a layer, in a 25 KB file)
    torch.save(checkpoint, path)
    built_on = []

    def recording(*args, **kwargs):
        model = create_model(*args, **kwargs)
        built_on.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(teacher_mod, "create_model", recording)
    with pytest.raises(ValueError, match=rf"teacher '{path}': its weights do not fit its recorded model "
                                         r"'convnet-w30000-d3' \(missing features\.8\.weight.*features\.0\.weight is "
                                         r"\(8, 1, 3, 3\) in the file, \(30000, 1, 3, 3\) in the model"):
        load_teacher(path, DATASET)
    assert built_on == ["meta"]  # (never built for real)


def test_a_good_teacher_loads_its_weights_exactly(tmp_path):
    path = tmp_path / "t.pt"
    net = _teacher(path)
    model, _ = load_teacher(path, DATASET)
    saved = net.state_dict()
    assert all(torch.equal(tensor, saved[name]) and tensor.device.type == "cpu"
               for name, tensor in model.state_dict().items())


# ---- 4: class counts beyond the dataset's ------------------------------------------------------

@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    distill_random(DATASET, 1, root / "set", seed=0)
    export_imagefolder(root / "set", root / "export")
    return root


def test_a_manifest_naming_more_classes_than_its_dataset_is_refused(small_set, tmp_path):
    edited = tmp_path / "set"
    shutil.copytree(small_set / "set", edited)
    _edit_json(edited / "manifest.json", lambda m: m.update(num_classes=2_000_000_000, class_names=None))
    with pytest.raises(DistilledSetError, match=rf"{edited / 'manifest.json'}: num_classes 2000000000: dataset "
                                                rf"'{DATASET}' has 10 classes"):
        read_manifest(edited)


def test_inspect_counts_only_the_classes_its_labels_hold(small_set, tmp_path, monkeypatch):
    """A set of an image folder (a class count of its own) naming many more classes than its
    images have: inspect's per-class counts stop at the largest label."""
    edited = tmp_path / "set"
    shutil.copytree(small_set / "set", edited)
    _edit_json(edited / "manifest.json", lambda m: m.update(dataset="imagefolder", num_classes=50_000_000,
                                                             class_names=None))
    sizes = []
    bincount = torch.bincount

    def recording(*args, **kwargs):
        counts = bincount(*args, **kwargs)
        sizes.append(counts.numel())
        return counts

    monkeypatch.setattr(torch, "bincount", recording)
    report = inspect_report(edited)
    assert "10 images (uint8 pixels), 0-1 per class" in report and max(sizes) <= 10


def test_an_export_json_naming_more_classes_than_its_dataset_is_refused(tmp_path):
    from infer_fast.storage.importer import _exported_dataset

    listing = {"dataset": "imagenet", "image_size": [16, 16], "num_classes": 2_000_000_000}
    with pytest.raises(DistilledSetError, match=rf"{tmp_path / 'export.json'}: num_classes 2000000000: dataset "
                                                r"'imagenet' has 1000 classes"):
        _exported_dataset("imagenet", listing, tmp_path)


# ---- 5: a decompression bomb in an import folder ----------------------------------------------

def _png_header_only(path, width, height):
    """A small PNG whose header claims ``width`` x ``height`` pixels (Pillow refuses it on open)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_naming_the_file(small_set, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(small_set / "export", folder)
    bomb = sorted((folder / "0").iterdir())[0]
    _png_header_only(bomb, 30000, 30000)
    with pytest.raises(DistilledSetError, match=rf"{bomb}: cannot read the image: it exceeds Pillow's pixel limit"):
        import_imagefolder(folder, DATASET)


# ---- 6: JSON and YAML nested too deeply; results files of the wrong shape ----------------------

def test_deeply_nested_files_are_refused_in_one_line_naming_them(small_set, tmp_path):
    from infer_fast.config import load_yaml

    edited = tmp_path / "set"
    shutil.copytree(small_set / "set", edited)
    (edited / "manifest.json").write_text(DEEP_JSON)
    with pytest.raises(DistilledSetError, match=rf"{edited / 'manifest.json'}: not valid JSON \(nested too deeply"):
        read_manifest(edited)

    export = tmp_path / "export"
    shutil.copytree(small_set / "export", export)
    (export / "export.json").write_text(DEEP_JSON)
    with pytest.raises(DistilledSetError, match=rf"{export / 'export.json'}: not readable JSON \(nested too deeply"):
        import_imagefolder(export, DATASET)

    config = tmp_path / "deep.yaml"
    config.write_text("a: " + "[" * 500 + "]" * 500 + "\n")
    with pytest.raises(ValueError, match=rf"config file '{config}': nested too deeply to parse"):
        load_yaml(str(config))


@pytest.fixture
def results_file(tmp_path):
    """(path, config) of a results file as a run of one set and one student writes it."""
    cfg = PipelineConfig.from_dict(dict(
        dataset=DATASET, teachers=[{"model": "convnet-w8-d2", "epochs": 1}], out=str(tmp_path), ipc=[1],
        methods=["random"], student={"model": "convnet-w8-d2", "epochs": 1}, seeds=1, device="cpu"))
    path = tmp_path / "results.json"
    results = load_results(path, cfg, external={})
    results["sets"]["random/ipc1"] = {"training_images": 10, "stored_images": 10, "compression_ratio_percent": 0.2}
    results["runs"]["random/ipc1/seed0"] = {"final_accuracy": 0.1, "elapsed_s": 0.4}
    path.write_text(json.dumps(results))
    return path, cfg


@pytest.mark.parametrize("edit,message", [
    (lambda d: [d], r"is not an infer-fast results file"),
    (lambda d: d.update(config="x"), r"'config' must be an object, got \"x\""),
    (lambda d: d.update(runs=[]), r"'runs' must be an object, got \[\]"),
    (lambda d: d.update(sets=None), r"'sets' must be an object, got null"),
    (_without("teachers"), r"no 'teachers'"),
    (lambda d: d["sets"].update({"random-ipc1": {}}), r"sets: not a set key \(METHOD/ipcN\): 'random-ipc1'"),
    (lambda d: d["runs"].update({"random/ipc1/seed0": {"final_accuracy": "high", "elapsed_s": 1.0}}),
     r"runs\['random/ipc1/seed0'\]\.final_accuracy must be a number from 0 to 1, got \"high\""),
    (lambda d: d["runs"].update({"random/ipc1/seed0": 7}), r"runs\['random/ipc1/seed0'\] must be an object, got 7"),
    (lambda d: d["sets"]["random/ipc1"].update(stored_images="ten"),
     r"sets\['random/ipc1'\]\.stored_images must be a number, got \"ten\""),
    (lambda d: d.update(teachers=["t.pt"]), r"teachers\[0\] must be an object"),
    (lambda d: d.update(scores={"random/ipc1": {"scores": {}}}), r"scores\['random/ipc1'\]\.protocol must be an object"),
])
def test_a_results_file_of_the_wrong_shape_is_refused_naming_it(results_file, edit, message):
    path, cfg = results_file
    _edit_json(path, edit)
    with pytest.raises(ValueError, match=rf"{path}( is not a valid results file \()?.*{message}"):
        load_results(path, cfg, external={})


def test_a_results_file_nested_too_deeply_is_refused_naming_it(results_file):
    path, cfg = results_file
    path.write_text('{"format": "infer-fast-results", "x": ' + DEEP_JSON + "}")
    with pytest.raises(ValueError, match=rf"{path} cannot be read \(nested too deeply to parse\)"):
        load_results(path, cfg, external={})


def test_a_null_optional_part_of_a_results_file_counts_as_none(results_file):
    path, cfg = results_file
    _edit_json(path, lambda d: d.update(timing=None, scores=None, external_sets=None))
    results = load_results(path, cfg, external={})
    assert "timing" not in results and "scores" not in results and results["runs"]
