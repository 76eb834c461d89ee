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
    with pytest.raises(SystemExit):
        cli.main(["distill", "--help"])
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
