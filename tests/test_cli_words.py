"""The CLI's errors name the options as the user gave them: the flag typed (--seeds, not the
protocol's rounds), a --config file's key as the file's, and a command's own prog and help for
a word it does not know. Each is refused before any work, in one line, status 2."""
import pytest

from infer_fast.cli import main
from infer_fast.storage import save_distilled


def _err(capsys, *args):
    status = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.fixture(scope="module")
def saved_set(labelled_set, tmp_path_factory):
    path = tmp_path_factory.mktemp("set") / "set"
    save_distilled(labelled_set, path)
    return path


@pytest.fixture
def evaluate(saved_set, teacher):
    return ["evaluate", saved_set, "--teachers", teacher[0], "--device", "cpu", "--quiet"]


@pytest.mark.parametrize("protocol", [[], ["--protocol", "dd-ranking"]], ids=["infer-fast", "dd-ranking"])
def test_evaluate_seeds_named_as_typed(capsys, evaluate, protocol):
    err = _err(capsys, *evaluate, *protocol, "--seeds", "0")
    assert err == "infer-fast evaluate: error: --seeds must be a positive integer, got 0"


def test_evaluate_lr_under_dd_ranking_names_the_flags(capsys, evaluate):
    err = _err(capsys, *evaluate, "--protocol", "dd-ranking", "--lr", "0.1")
    assert err.endswith("error: --lr does not apply to --protocol dd-ranking: it searches --lr-grid (--set-lr for "
                        "the set's soft-label runs)")


@pytest.mark.parametrize("extra, said", [
    (["--epochs", "1", "--test-interval", "5"], "--epochs (1) must be at least --test-interval (5): "),
    (["--epochs", "3"], "--epochs (3) must be at least --test-interval (20, its default): "),
    (["--test-interval", "1000"], "--test-interval (1000) must be at most the students' epochs (400, the cifar "
                                  "recipe's; --epochs sets them): "),
], ids=["both", "default-interval", "recipe-epochs"])
def test_dd_ranking_epochs_and_interval_named_as_flags(capsys, evaluate, extra, said):
    err = _err(capsys, *evaluate, "--protocol", "dd-ranking", *extra)
    assert f"error: {said}the protocol's accuracy is the best of the tests every --test-interval epochs" in err
    assert "test_interval" not in err


def test_full_data_checkpoint_of_another_model_names_the_flags(capsys, evaluate, teacher):
    from infer_fast.teacher import load_teacher

    model = load_teacher(teacher[0])[1]["model"]
    err = _err(capsys, *evaluate, "--full-data-checkpoint", teacher[0], "--model", "convnet", "--seeds", "1",
               "--epochs", "1")
    assert err.endswith(f"error: --full-data-checkpoint {teacher[0]} is a {model}, the students are convnet "
                        f"(--model): give --model {model}, or leave --full-data-checkpoint out")


def test_full_data_checkpoint_python_wording_kept(labelled_set, teacher):
    from infer_fast.evaluate import check_full_data_checkpoint

    with pytest.raises(ValueError, match=r"^full_data_checkpoint '.*' is a convnet-w\S+, the students are convnet: "
                                         r"the full-data accuracy must come from the students' architecture$"):
        check_full_data_checkpoint(teacher[0], "convnet", labelled_set.real_dataset, labelled_set.class_names)


@pytest.mark.parametrize("protocol", [[], ["--protocol", "dd-ranking"]], ids=["infer-fast", "dd-ranking"])
def test_weight_range_refused_by_argparse(capsys, evaluate, protocol):
    err = _err(capsys, *evaluate, *protocol, "--weight", "2")
    assert err == ("infer-fast evaluate: error: argument --weight: must be in [0, 1], got 2.0 "
                   "(see `infer-fast evaluate --help`)")


def test_weight_range_in_python_names_the_field():
    from infer_fast.dd_ranking import DDRankingProtocol
    from infer_fast.evaluate import Protocol

    for cls in (Protocol, DDRankingProtocol):
        with pytest.raises(ValueError, match=r"^weight must be in \[0, 1\], got 1.5$"):
            cls(weight=1.5)


def test_distill_options_that_do_not_apply_named_as_given(capsys, tmp_path):
    base = ["distill", "--dataset", "fashion-mnist-mini", "--method", "random", "--ipc", "2", "--out", tmp_path / "x"]
    assert _err(capsys, *base, "--iterations", "5").endswith(
        "error: --iterations does not apply to --method random (ipc real training images per class, uniformly at "
        "random)")
    config = tmp_path / "dc.yaml"
    config.write_text("iterations: 5\nlr: 0.1\n")
    err = _err(capsys, *base, "--config", config, "--teachers", "t.pt")
    assert f"error: --teachers, iterations, lr (config file '{config}') do not apply to --method random" in err
    config.write_text("iterations: 5\n")
    assert f"error: iterations (config file '{config}') does not apply to --method random" in _err(
        capsys, *base, "--config", config)
    assert not (tmp_path / "x").exists()


def test_pretrained_teacher_options_named_as_given(capsys, tmp_path):
    config = tmp_path / "tc.yaml"
    config.write_text("epochs: 5\n")
    base = ["teacher", "--pretrained", "resnet18-imagenet", "--out", tmp_path / "t.pt"]
    assert _err(capsys, *base, "--config", config).endswith(
        f"without training: epochs (config file '{config}') does not apply (leave it out, or train with --model "
        "instead)")
    assert _err(capsys, *base, "--epochs", "3", "--lr", "0.1").endswith(
        "without training: --epochs, --lr do not apply (leave them out, or train with --model instead)")
    assert not (tmp_path / "t.pt").exists()


@pytest.mark.parametrize("args, prog", [
    (["train", "SET", "--foo", "1"], "infer-fast train"),
    (["models", "--bogus"], "infer-fast models"),
    (["--bogus", "models"], "infer-fast"),  # (before the command: the top parser's word)
], ids=["train", "models", "top"])
def test_unknown_words_refused_by_their_command(capsys, args, prog):
    words = " ".join(a for a in args if a not in ("train", "SET", "models"))
    assert _err(capsys, *args) == f"{prog}: error: unrecognized arguments: {words} (see `{prog} --help`)"


def test_distill_ipc_named_as_typed(capsys, tmp_path):
    err = _err(capsys, "distill", "--dataset", "fashion-mnist-mini", "--method", "random", "--ipc", "0",
               "--out", tmp_path / "x")
    assert err == "infer-fast distill: error: --ipc must be a positive integer, got 0"


@pytest.mark.parametrize("command", [["relabel", "SET", "--teachers", "t.pt"], ["teacher", "--out", "t.pt"]],
                         ids=["relabel", "teacher"])
def test_device_named_as_typed(capsys, command):
    err = _err(capsys, *command, "--device", "foo")
    assert err.endswith("error: --device must be auto, cpu, cuda or cuda:N, got 'foo'")
