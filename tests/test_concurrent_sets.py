"""Concurrent writers and readers of one set or report, as a bug hunt found them: a load while
relabel swapped the set in paired the new labels with the old manifest (or called the set
corrupt); two imports to one --out both succeeded, one set lost; two evaluations to one --out
both succeeded, one report lost. Every writer locks; a reader reads one version whole. The
interleavings are simulated (a swap between the manifest's read and the tensor files'), not raced."""
import os

import pytest
import torch
from conftest import small_infer_set

from infer_fast.cli import main
from infer_fast.output_lock import output_lock
from infer_fast.storage import disk, export_imagefolder, load_distilled, save_distilled
from infer_fast.storage.distilled_set import DistilledSetError, OutputExistsError

torch.set_num_threads(1)

DATASET = "fashion-mnist-mini"


def _version(seed):
    """A small INFER set told apart by its seed (recorded in the manifest) and its soft labels."""
    ds = small_infer_set()
    ds.seed = seed
    ds.set_soft_labels(torch.randn(ds.num_training_images(), ds.num_classes, generator=torch.Generator().manual_seed(seed)))
    return ds


def _cli(capsys, *args):
    capsys.readouterr()
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def _one_line_refusal(status, err, fragment):
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]


def _swap_after_the_manifest(monkeypatch, swap, times=1):
    """Run ``swap`` (a writer putting a new version in) right after a load has read the manifest
    (check_compatible comes next), the first ``times`` loads' reads."""
    compatible = disk.check_compatible
    done = []

    def check_then_swap(*args, **kwargs):
        if len(done) < times:
            done.append(True)
            swap()
        return compatible(*args, **kwargs)

    monkeypatch.setattr(disk, "check_compatible", check_then_swap)
    monkeypatch.setattr(disk, "_READ_PAUSE_S", 0.0)
    return done


def _assert_is(loaded, version):
    assert loaded.seed == version.seed
    assert torch.equal(loaded.soft_labels_flat(), version.soft_labels_flat())


@pytest.mark.parametrize("verify_checksums", [True, False])
@pytest.mark.parametrize("writer", ["relabel's save", "renamed aside, kept"])
def test_a_set_swapped_during_a_load_is_read_whole_as_the_new_version(tmp_path, monkeypatch, writer, verify_checksums):
    """Before: the old manifest with the new files: "SHA-256 checksum mismatch", "missing tensor
    file", or (without checksums) the new labels under the old manifest, silently."""
    directory = tmp_path / "set"
    old, new = _version(1), _version(2)
    save_distilled(old, directory)

    def swap():
        if writer == "relabel's save":  # (the old directory renamed aside and deleted: its files gone)
            save_distilled(new, directory, overwrite=True)
        else:  # (the old version whole elsewhere: a reader of it got one version, but not the current one)
            save_distilled(new, tmp_path / "new")
            os.rename(directory, tmp_path / "old")
            os.rename(tmp_path / "new", directory)

    done = _swap_after_the_manifest(monkeypatch, swap)
    loaded = load_distilled(directory, verify_checksums=verify_checksums)
    assert done  # (the swap did come between the manifest and the files)
    _assert_is(loaded, new)


def test_inspect_reports_the_version_it_read(tmp_path, monkeypatch):
    """inspect's rows of the manifest (the files' SHA-256) are those of the set it loaded, not of a
    version a relabel swapped in after the load (the manifest was read again by path)."""
    from infer_fast.storage import inspect_report, load_distilled as load, read_manifest

    directory = tmp_path / "set"
    old, new = _version(1), _version(2)
    save_distilled(old, directory)
    first = read_manifest(directory)
    loaded = disk.load_with_manifest

    def load_then_swap(*args, **kwargs):
        found = loaded(*args, **kwargs)
        save_distilled(new, directory, overwrite=True)
        return found

    monkeypatch.setattr("infer_fast.storage.report.load_with_manifest", load_then_swap)
    report = inspect_report(directory)
    assert "seed               1" in report
    assert all(entry["sha256"][:12] in report for entry in first["files"].values())
    _assert_is(load(directory), new)  # (the swap did happen)


def test_a_set_rewritten_throughout_every_read_is_refused_in_one_clear_line(tmp_path, monkeypatch):
    directory = tmp_path / "set"
    versions = [_version(1), _version(2)]
    save_distilled(versions[0], directory)
    turns = iter(range(100))
    _swap_after_the_manifest(monkeypatch, lambda: save_distilled(versions[next(turns) % 2], directory, overwrite=True),
                             times=100)
    with pytest.raises(DistilledSetError, match=rf"^set {directory} changed while being read \(another process is "
                                                r"writing it\): retry when it is done$"):
        load_distilled(directory)


def test_a_corrupt_file_in_a_set_nobody_rewrites_is_still_refused_as_corrupt(tmp_path, monkeypatch):
    directory = tmp_path / "set"
    save_distilled(_version(1), directory)
    labels = directory / "labels.safetensors"
    data = bytearray(labels.read_bytes())
    data[-1] ^= 0xFF  # (the same size: only the checksum tells)
    labels.write_bytes(bytes(data))
    monkeypatch.setattr(disk, "_READ_PAUSE_S", 0.0)
    with pytest.raises(DistilledSetError, match=rf"^{labels}: SHA-256 checksum mismatch \(file is corrupt or was "
                                                "modified\\)"):
        load_distilled(directory)


def test_a_set_missing_beside_an_interrupted_overwrite_still_says_where_it_is(tmp_path, monkeypatch):
    """The set's name missing, its previous version at .<name>.old-*: an overwrite between its
    two renames (read again) or killed there, which the last try says as before."""
    directory = tmp_path / "set"
    save_distilled(_version(1), directory)
    os.rename(directory, tmp_path / ".set.old-0123456789ab")
    monkeypatch.setattr(disk, "_READ_PAUSE_S", 0.0)
    with pytest.raises(DistilledSetError, match=r"no such distilled set \(an interrupted overwrite left the previous "
                                                r"set at .*\.set\.old-0123456789ab"):
        load_distilled(directory)


def test_save_without_overwrite_never_replaces_a_set_that_appeared_after_its_check(tmp_path, monkeypatch):
    """Before: the set that appeared (another import's) was swapped out, silently lost."""
    directory = tmp_path / "set"
    theirs, ours = _version(1), _version(2)
    save_distilled(theirs, tmp_path / "theirs")
    build_manifest = disk.build_manifest

    def appear_then_build(*args, **kwargs):  # (after save_distilled's early check, before its rename)
        os.rename(tmp_path / "theirs", directory)
        return build_manifest(*args, **kwargs)

    monkeypatch.setattr(disk, "build_manifest", appear_then_build)
    with pytest.raises(OutputExistsError, match=rf"^{directory} already exists; choose another output directory$"):
        save_distilled(ours, directory)
    monkeypatch.undo()
    _assert_is(load_distilled(directory), theirs)
    assert sorted(os.listdir(tmp_path)) == ["set"]  # (the temporary removed)


@pytest.fixture
def export(tmp_path):
    export_imagefolder(small_infer_set(), tmp_path / "export")
    return tmp_path / "export"


def test_an_import_to_an_output_being_written_is_refused_in_one_line(export, tmp_path, capsys):
    """Before: no lock: both imports went on, and one set was lost."""
    out = tmp_path / "imp"
    with output_lock(out, "output directory"):
        status, _, err = _cli(capsys, "import", export, "--dataset", DATASET, "--out", out)
    _one_line_refusal(status, err, f"output directory {out} is being written by process {os.getpid()}")
    assert not out.exists()
    status, _, err = _cli(capsys, "import", export, "--dataset", DATASET, "--out", out)  # (free again: imported)
    assert status == 0, err
    assert load_distilled(out).num_training_images() == small_infer_set().num_training_images()


def test_an_evaluation_whose_report_is_being_written_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """Before: both evaluations ran to the end, the later report replacing the earlier's."""
    import infer_fast.storage

    directory, report = tmp_path / "set", tmp_path / "rep.json"
    save_distilled(_version(1), directory)
    loads = []
    monkeypatch.setattr(infer_fast.storage, "load_distilled", lambda *a, **k: loads.append(a))
    with output_lock(report, "evaluation report"):
        status, _, err = _cli(capsys, "evaluate", directory, "--teachers", tmp_path / "t.pt", "--model", "convnet-w8-d2",
                              "--epochs", "1", "--seeds", "1", "--out", report, "--device", "cpu", "--quiet")
    _one_line_refusal(status, err, f"evaluation report {report} is being written by process {os.getpid()}")
    assert loads == [] and not report.exists()
