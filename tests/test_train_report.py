"""`infer-fast train --out FILE`: the results as JSON (the set, the students' settings, the
accuracy over the seeds, each seed's epochs), what a table across students is built from; the
file is checked before any training and replaces only an earlier training report."""
import json

import pytest

from infer_fast.cli import main
from infer_fast.storage import save_distilled


@pytest.fixture(scope="module")
def set_dir(tmp_path_factory, labelled_set):
    path = tmp_path_factory.mktemp("train-report") / "set"
    save_distilled(labelled_set, path)
    return str(path)


def test_the_report_holds_what_the_line_says(set_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    out.write_text(json.dumps({"format": "infer-fast-train"}))  # (an earlier training report: replaced)
    args = ["train", set_dir, "--model", "convnet-w8-d2", "--epochs", "2", "--seeds", "2", "--eval-every", "1",
            "--batch-size", "8", "--device", "cpu", "--quiet", "--out", str(out)]
    assert main(args) == 0
    line = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["format"] == "infer-fast-train"
    assert report["set"]["path"] == set_dir and report["set"]["method"] == "random"
    assert report["set"]["training_images"] == 20 and len(report["set"]["sha256"]) == 64
    assert report["student_config"]["model"] == "convnet-w8-d2" and report["student_config"]["epochs"] == 2 and report["student_config"]["device"] == "cpu"
    assert "seed" not in report["student_config"]  # (each seed's own is per_seed's)
    seeds = report["per_seed"]
    assert [s["seed"] for s in seeds] == [0, 1] and all(len(s["history"]) == 2 for s in seeds)
    finals = [s["final_accuracy"] for s in seeds]
    assert report["final_accuracy"]["mean"] == pytest.approx(sum(finals) / 2)
    assert f"{100 * report['final_accuracy']['mean']:.2f} +- {100 * report['final_accuracy']['std']:.2f} %" in line
    assert all(s["history"][-1]["test_accuracy"] == s["final_accuracy"] for s in seeds)
    assert report["best_accuracy"]["mean"] >= report["final_accuracy"]["mean"] - 1e-12
    assert f"report: {out}" in line


@pytest.mark.parametrize("existing", ["manifest", "other"])
def test_a_file_that_is_no_training_report_is_refused_before_training(set_dir, tmp_path, capsys, existing):
    out = tmp_path / "r.json"
    out.write_text(json.dumps({"format": "infer-fast-evaluation"}) if existing == "other" else "{}")
    before = out.read_text()
    assert main(["train", set_dir, "--epochs", "1", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "is not an infer-fast training report" in err and "student" not in capsys.readouterr().out
    assert out.read_text() == before


def test_a_teacher_given_as_out_is_refused(set_dir, tmp_path, capsys, teacher):
    args = ["train", set_dir, "--epochs", "1", "--quiet", "--dynamic", "--teachers", teacher[0], "--out", teacher[0]]
    assert main(args) == 2
    assert "is the file given as --teachers" in capsys.readouterr().err
