"""Each name derived from another (a recovery's checkpoint, shares and results files beside a
set; a run directory's folders, report and sets; an export's listing) is defined once, and
whatever recognizes such names (the sweep of a killed writer's leftovers, a resume's search for
checkpoints, a run's check of what it began) is built from that definition: a changed
definition moves the writer and the reader together."""
import argparse
import os
import re
from types import SimpleNamespace

import pytest
import torch

from infer_fast import _io, distributed
from infer_fast.distill.checkpoints import CheckpointStore, recovery_checkpoints
from infer_fast.distill.run import recovery_checkpoint_path
from infer_fast.output_lock import lock_path, stale_leftovers

PID = str(os.getpid())


def _recovery_temporaries(out):
    """The temporary files (as write_atomically names them) of every file a recovery of the set
    ``out`` writes: its checkpoint, a rank's share of it, and a results file that share writes."""
    checkpoint = os.fspath(recovery_checkpoint_path(out))
    share = distributed.shard_path(checkpoint, 1, 2)
    store = CheckpointStore(checkpoint, {}, None, share, writes=True)
    store.write_results(0, {3: torch.zeros(1), 4: torch.zeros(1)})  # (the results file, named by the store)
    results_file = os.path.join(store.results_dir, store.result_files[(0, 3)])
    return [_io.hidden_sibling(path, _io.TEMP, PID) for path in (checkpoint, share, results_file)]


def _touch(paths):
    for path in paths:
        with open(path, "wb") as f:
            f.write(b"partial")


def test_the_sweep_finds_the_temporary_files_of_every_recovery_file_written(tmp_path):
    out = tmp_path / "fm"
    leftovers = _recovery_temporaries(out)
    _touch(leftovers)
    assert stale_leftovers(out) == sorted(leftovers)
    # another set's, and the user's own hidden files beside them, are not a writer's of this one
    checkpoint = os.fspath(recovery_checkpoint_path(tmp_path / "fm2"))
    _touch([_io.hidden_sibling(checkpoint, _io.TEMP, PID), tmp_path / ".fm.recovery.pt.notes"])
    assert stale_leftovers(out) == sorted(leftovers)


def test_changed_recovery_names_move_the_writers_and_the_sweep_together(tmp_path, monkeypatch):
    out = tmp_path / "fm"
    old_names = _recovery_temporaries(out)
    monkeypatch.setattr(_io, "RECOVERY_CHECKPOINT_SUFFIX", ".rescue")
    monkeypatch.setattr(_io, "RECOVERY_RESULTS_SUFFIX", ".done")
    monkeypatch.setattr(distributed, "_SHARD_SUFFIX", ".part{rank}of{world}")
    new_names = _recovery_temporaries(out)
    assert [os.path.basename(p) for p in new_names[:2]] == [f".fm.rescue.tmp-{PID}", f".fm.rescue.part1of2.tmp-{PID}"]
    assert os.path.basename(os.path.dirname(new_names[2])) == "fm.rescue.done"
    _touch(old_names + new_names)
    assert stale_leftovers(out) == sorted(new_names)  # (the old names are no writer's now)


def test_a_resume_finds_exactly_the_shares_the_ranks_write(tmp_path, monkeypatch):
    checkpoint = os.fspath(recovery_checkpoint_path(tmp_path / "fm"))
    shares = [distributed.shard_path(checkpoint, rank, world) for world in (2, 3) for rank in range(world)]
    _touch([checkpoint, *shares, checkpoint + ".notes"])
    assert recovery_checkpoints(checkpoint) == [checkpoint, *sorted(shares)]
    monkeypatch.setattr(distributed, "_SHARD_SUFFIX", "-rank{rank}-{world}")
    moved = [distributed.shard_path(checkpoint, rank, 2) for rank in range(2)]
    _touch(moved)
    assert recovery_checkpoints(checkpoint) == [checkpoint, *moved]


def test_the_longest_derived_name_follows_the_definitions(monkeypatch):
    longest = len(_io.longest_derived_name("x"))
    monkeypatch.setattr(_io, "RECOVERY_CHECKPOINT_SUFFIX", _io.RECOVERY_CHECKPOINT_SUFFIX + "abc")
    assert len(_io.longest_derived_name("x")) == longest + 3
    monkeypatch.setattr(distributed, "_SHARD_SUFFIX", distributed._SHARD_SUFFIX + "de")
    assert len(_io.longest_derived_name("x")) == longest + 5


def test_a_run_finds_the_sets_and_students_where_it_writes_them(tmp_path, monkeypatch):
    from infer_fast import pipeline, results, set_keys
    from infer_fast.set_keys import RunKey

    cfg = SimpleNamespace(ipc=[2, 10], methods=["random"], external={})

    def make_second_set(out):
        """The directory the run makes for its second set, made; whether the run sees it begun."""
        sets = pipeline._set_list(cfg, out)
        assert [directory.parent for _, directory in sets] == [out / pipeline.SETS_DIR] * 2
        assert not results._started(out, "random", {})
        sets[1][1].mkdir(parents=True)
        assert results._started(out, "random", {})
        return sets[1][1]

    assert make_second_set(tmp_path / "run") == tmp_path / "run" / "sets" / "random-ipc10"
    monkeypatch.setattr(pipeline, "SETS_DIR", "made")
    monkeypatch.setattr(set_keys, "_SET_DIRECTORY", "{method}_at_{ipc}")
    assert make_second_set(tmp_path / "moved") == tmp_path / "moved" / "made" / "random_at_10"

    monkeypatch.setattr(pipeline, "STUDENTS_DIR", "trained")
    out = tmp_path / "students"
    assert results._changed_unmade(["student"], {"config": {}}, cfg, out) == ["student"]
    (out / "trained").mkdir(parents=True)
    (out / "trained" / RunKey("random", 2, 0).checkpoint_name).write_bytes(b"")
    assert results._changed_unmade(["student"], {"config": {}}, cfg, out) == []


def test_a_run_directory_holds_its_folders_and_its_lock():
    from infer_fast.pipeline import CACHE_DIR, RUN_ENTRIES, RUN_FOLDERS, SETS_DIR, STUDENTS_DIR, TEACHERS_DIR

    assert RUN_FOLDERS == (TEACHERS_DIR, SETS_DIR, STUDENTS_DIR, CACHE_DIR)
    assert RUN_FOLDERS == ("teachers", "sets", "students", "cache")  # (the names on disk, as run directories hold)
    assert RUN_ENTRIES == (*RUN_FOLDERS, lock_path("run", inside=True).name)


def test_the_run_command_names_the_report_the_run_writes(tmp_path, monkeypatch, capsys):
    from infer_fast import cli, pipeline, results

    monkeypatch.setattr(results, "RUN_REPORT", "table.md")
    monkeypatch.setattr(cli, "_run_config", lambda args: SimpleNamespace(out=str(tmp_path)))
    monkeypatch.setattr(pipeline, "run_pipeline", lambda config, progress: {})
    monkeypatch.setattr(pipeline, "format_table", lambda results: "TABLE")
    cli.cmd_run(argparse.Namespace(quiet=True))
    printed = capsys.readouterr().out
    assert f"results in {tmp_path / results.RESULTS_FILE} and {tmp_path / 'table.md'}" in printed


def test_the_run_level_options_are_the_registrys(monkeypatch):
    from infer_fast.methods import registry
    from infer_fast.results import run_settings

    config = {"dataset": "d", "teachers": [], "method_options": {}, "accounting": "ipc", "selection": "random",
              "student": {}, "dynamic_epochs": None, "data_root": None, "recovery": {}, "later": 1}
    assert list(run_settings(config)) == ["dataset", "teachers", "method_options", "accounting", "selection",
                                          "student", "dynamic_epochs", "data_root", "recovery"]
    declared = registry.run_level_options()
    monkeypatch.setattr(registry, "run_level_options", lambda: {**declared, "later": None})
    assert run_settings(config)["later"] == 1  # (an option a method declares run-level is compared too)


def test_a_methods_effective_options_are_its_parsed_option_values(monkeypatch):
    from infer_fast.methods import get_method, registry
    from infer_fast.results import _method_effective

    infer = get_method("infer")
    effective = _method_effective(infer, {"dataset": "fashion-mnist"}, {})
    assert effective["r_bn"] == 1.0 and not set(effective) & {*infer.run_options, *infer.result_neutral}
    seen = []

    def values(parsed):
        seen.append(parsed)
        return {"marked": True}

    monkeypatch.setattr(registry, "parsed_option_values", values)
    assert _method_effective(infer, {"dataset": "fashion-mnist"}, {}) == {"marked": True} and len(seen) == 1


def test_an_export_is_imported_by_the_listing_it_writes(tmp_path):
    from infer_fast.data import load_dataset
    from infer_fast.methods.random import random_set
    from infer_fast.storage import DistilledSetError, export_imagefolder, import_imagefolder
    from infer_fast.storage.report import EXPORT_LISTING

    ds = random_set(load_dataset("fashion-mnist-mini", "train"), 1, seed=0)
    export_imagefolder(ds, tmp_path / "folders")
    listing = tmp_path / "folders" / EXPORT_LISTING
    assert listing.is_file()
    listing.write_text(listing.read_text().replace('"class_folders": [', '"class_folders": ["extra", '))
    refused = re.escape(f"{listing}: class_folders must be 10 distinct folder names")
    with pytest.raises(DistilledSetError, match=refused):
        import_imagefolder(tmp_path / "folders", "fashion-mnist-mini")


def test_rdeds_help_names_the_size_that_takes_imagenets_recipe(monkeypatch):
    from infer_fast.data.registry import SMALL_IMAGE_MAX
    from infer_fast.methods import rded

    assert f"imagenet or images over {SMALL_IMAGE_MAX} px" in rded._by_family("factor")
    monkeypatch.setattr(rded, "SMALL_IMAGE_MAX", 96)
    assert "imagenet or images over 96 px" in rded._by_family("factor")


def test_a_refusal_lists_its_first_names_and_says_when_there_are_more(tmp_path):
    """_text.first_names spells "a, b, ..." once (five copies differed: " ..." in one); a
    missing class folder's refusal quotes it."""
    from infer_fast._text import first_names
    from infer_fast.data.folders import scan_class_folders

    assert first_names(["a", "b"], 3) == "a, b"
    assert first_names(["a", "b", "c"], 3) == "a, b, c"
    assert first_names(range(7), 3) == "0, 1, 2, ..."
    for name in ("c1", "c2"):
        (tmp_path / name).mkdir()
    classes = ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7"]
    with pytest.raises(ValueError, match=re.escape("no folder for 6 of the 8 classes") + ".*: c0, c3, c4, c5, c6, ... "):
        scan_class_folders(str(tmp_path), class_names=classes)


@pytest.mark.parametrize("version", ["2", None, 1.5, True])
def test_a_checkpoint_recording_a_format_version_that_is_no_integer_is_refused_in_one_line(tmp_path, version):
    """Every checkpoint reader (teacher, student, recovery, RDED) goes through read_checkpoint:
    a format_version of another type was an internal error (TypeError comparing it), where a
    set's manifest says so in one line (the same check, _io.recorded_format_version)."""
    from infer_fast.teacher import load_teacher

    teacher = tmp_path / "t.pt"
    torch.save({"format": "infer-fast-teacher", "format_version": version, "state_dict": {}}, teacher)
    with pytest.raises(ValueError, match=re.escape(f"{str(teacher)!r}: format_version must be an integer, got {version!r}")):
        load_teacher(str(teacher))
