"""Cross-architecture evaluation (one set, students of other architectures): two spellings of
one network are one architecture; `train`'s result line names the student and its labels, and
with --eval-every the best accuracy, labelled; an evaluation report names its students' model."""
import pytest

from infer_fast.evaluate import same_architecture
from infer_fast.storage import save_distilled


@pytest.mark.parametrize("a,b,same", [
    ("convnet-w32-d3", "convnet-w32-d3-batchnorm", True),  # (a default spelt out)
    ("convnet", "convnet-w128", True),
    ("convnet-w32", "convnet-w32-d3", True),
    ("convnet", "convnet-w128-d3-batchnorm", True),
    ("convnet", "convnet-w64", False),
    ("convnet-w32-d3", "convnet-w32-d3-instancenorm", False),
    ("resnet18", "convnet", False),
])
def test_spellings_of_one_network_are_one_architecture(a, b, same):
    assert same_architecture(a, b) is same and same_architecture(b, a) is same


def test_train_names_the_student_its_labels_and_the_labelled_best(labelled_set, tmp_path, capsys):
    from infer_fast.cli import main

    save_distilled(labelled_set, tmp_path / "set")
    capsys.readouterr()
    assert main(["train", str(tmp_path / "set"), "--model", "convnet-w8-d2", "--epochs", "2", "--eval-every", "1",
                 "--seeds", "2", "--quiet"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("student convnet-w8-d2 (static soft labels) on "), line
    assert "over 2 seed(s)" in line and "; best over periodic test evaluations (optimistic" in line, line


def test_an_evaluation_report_names_its_students_model():
    from infer_fast.evaluate import report_student

    assert report_student({"protocol": {"student_config": {"model": "resnet18"}}}) == "resnet18"
    assert report_student({"protocol": {}}) == "?"  # (a report of before)
