"""Students and teachers in bf16 and channels_last (infer_fast.mixed_precision): forward passes
under bf16 autocast while weights, gradients and the optimizer stay fp32; channels_last weights
and batches; the options recorded in checkpoints (older ones count as fp32) and passed from
`evaluate` (with the students' augment_on) to every student and to its full-data run."""
import pytest
import torch
from torch import nn

from infer_fast import student as student_module
from infer_fast import teacher as teacher_module
from infer_fast.mixed_precision import autocast, batch_in_layout, model_in_layout
from infer_fast.student import StudentConfig, train_student
from infer_fast.teacher import TeacherConfig, load_teacher, train_teacher
from test_student import FAST, baseline_set, data, teachers  # noqa: F401 (data, teachers: the fixtures)

torch.set_num_threads(1)


class Recorded:
    """The models a module's ``create_model`` made, each with what its convolutions and linear
    layers saw: (training?, output dtype, input in channels_last?) per call."""

    def __init__(self, monkeypatch, module):
        self.models, self.calls = [], []
        real = module.create_model

        def recording(*args, **kwargs):
            model = real(*args, **kwargs)
            for layer in model.modules():
                if isinstance(layer, (nn.Conv2d, nn.Linear)):
                    layer.register_forward_hook(self._hook)
            self.models.append(model)
            return model

        monkeypatch.setattr(module, "create_model", recording)

    def _hook(self, layer, inputs, output):
        x = inputs[0]
        spatial = x.dim() == 4 and x.shape[1] > 1  # (one channel: both layouts are the same strides)
        self.calls.append((layer.training, output.dtype,
                           x.is_contiguous(memory_format=torch.channels_last) if spatial else None, type(layer)))


def test_a_bf16_student_runs_its_forward_passes_in_bf16_and_keeps_fp32_weights(data, monkeypatch):  # noqa: F811
    train, test = data
    recorded = Recorded(monkeypatch, student_module)
    cfg = StudentConfig(epochs=30, labels="hard", augmentation="none", mix="none", precision="bf16", **FAST)
    result = train_student(baseline_set(train, per_class=10), test, cfg, progress=False)
    (model,) = recorded.models
    assert {dtype for _, dtype, _, _ in recorded.calls} == {torch.bfloat16}
    assert {training for training, _, _, _ in recorded.calls} == {True, False}  # training and the evaluation
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    losses = [h["loss"] for h in result["history"]]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < 0.5 * losses[0]
    assert result["final_accuracy"] > 0.3, result  # as the fp32 student of test_student.py's hard-label test
    assert result["config"]["precision"] == "bf16"


def test_a_channels_last_student_trains_like_the_default_layout(data, monkeypatch):  # noqa: F811
    """Weights and batches in channels_last: every convolution with more than one input channel
    sees a channels_last input, and the losses are the default layout's to float32 rounding."""
    train, test = data
    ds = baseline_set(train, per_class=10)
    cfg = StudentConfig(epochs=2, labels="hard", **FAST)
    default = train_student(ds, test, cfg, progress=False)
    recorded = Recorded(monkeypatch, student_module)
    last = train_student(ds, test, StudentConfig(**{**cfg.__dict__, "channels_last": True}), progress=False)
    layouts = {(training, cl) for training, _, cl, kind in recorded.calls if kind is nn.Conv2d and cl is not None}
    assert layouts == {(True, True), (False, True)}
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in recorded.models[0].parameters() if p.dim() == 4)
    assert [h["loss"] for h in last["history"]] == pytest.approx([h["loss"] for h in default["history"]], rel=1e-4)


def test_a_channels_last_infer_dyn_student_labels_with_teacher_copies_in_that_layout(teachers, data):  # noqa: F811
    """INFER+Dyn with channels_last: copies of the teachers in channels_last label the batches
    (the caller's teachers keep their layout), and the losses are the default layout's to float32
    rounding."""
    _, models = teachers
    ds = baseline_set(data[0], per_class=2)
    cfg = StudentConfig(epochs=2, dynamic=True, **FAST)
    default = train_student(ds, data[1], cfg, teachers=models, progress=False)
    strides = [p.stride() for m in models for p in m.parameters()]
    weights_seen = []  # (hooks are deep-copied with a module: they see the copies' weights)
    hooks = [layer.register_forward_hook(lambda layer, inputs, output: weights_seen.append((
                 inputs[0].shape[0], layer.weight.is_contiguous(memory_format=torch.channels_last))))
             for m in models for layer in m.modules() if isinstance(layer, nn.Conv2d) and layer.in_channels > 1]
    last = train_student(ds, data[1], StudentConfig(**{**cfg.__dict__, "channels_last": True}), teachers=models,
                         progress=False)
    for hook in hooks:
        hook.remove()
    # the batches' labels (not the up-front check of the caller's teachers' logits on one image)
    labelling = [channels_last for rows, channels_last in weights_seen if rows > 1]
    assert labelling and all(labelling)
    assert [p.stride() for m in models for p in m.parameters()] == strides
    assert [h["loss"] for h in last["history"]] == pytest.approx([h["loss"] for h in default["history"]], rel=1e-4)


def test_fp32_and_the_default_layout_are_the_same_tensors():
    x = torch.randn(2, 3, 4, 4)
    model = nn.Conv2d(3, 2, 1)
    assert batch_in_layout(x, False) is x and model_in_layout(model, False) is model
    with autocast(torch.device("cpu"), "fp32"):
        assert model(x).dtype == torch.float32
    assert batch_in_layout(x, True).is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch_in_layout(x, True), x)


def test_a_bf16_teacher_trains_in_bf16_and_its_checkpoint_records_it(tmp_path, monkeypatch):
    recorded = Recorded(monkeypatch, teacher_module)
    out = str(tmp_path / "t.pt")
    cfg = TeacherConfig(dataset="fashion-mnist-mini", model="convnet-w8-d2", epochs=1, batch_size=256, lr=0.05,
                        device="cpu", precision="bf16", channels_last=True)
    summary = train_teacher(cfg, out, progress=False)
    assert {dtype for _, dtype, _, _ in recorded.calls} == {torch.bfloat16}
    assert {cl for _, _, cl, _ in recorded.calls if cl is not None} == {True}
    assert summary["config"]["precision"] == "bf16" and summary["config"]["channels_last"] is True
    model, _ = load_teacher(out)  # a teacher like any other: fp32 weights, usable by every method
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert summary["test_accuracy"] > 0.3
    with pytest.raises(ValueError, match="precision"):  # another run: refused by name
        train_teacher(TeacherConfig(**{**cfg.__dict__, "precision": "fp32"}), out, progress=False)


def test_checkpoints_older_than_the_options_count_as_fp32(data, tmp_path):  # noqa: F811
    """A student or teacher checkpoint written before these options continues as an fp32 run in the
    default layout (and only as that)."""
    train, test = data
    ds = baseline_set(train, per_class=2)
    cfg = StudentConfig(epochs=1, labels="hard", **FAST)
    ckpt = str(tmp_path / "student.pt")
    done = train_student(ds, test, cfg, progress=False, checkpoint=ckpt)
    state = torch.load(ckpt, weights_only=True)
    for name in ("precision", "channels_last"):
        del state["run"]["config"][name]
    torch.save(state, ckpt)
    assert train_student(ds, test, cfg, progress=False, checkpoint=ckpt, resume=True)["history"] == done["history"]
    with pytest.raises(ValueError, match=r"another run \(precision differs\)"):
        train_student(ds, test, StudentConfig(**{**cfg.__dict__, "precision": "bf16"}), progress=False,
                      checkpoint=ckpt, resume=True)

    out = str(tmp_path / "t.pt")
    teacher_cfg = TeacherConfig(dataset="fashion-mnist-mini", model="convnet-w8-d2", epochs=1, batch_size=256,
                                device="cpu")
    train_teacher(teacher_cfg, out, progress=False)
    state = torch.load(out, weights_only=True)
    for name in ("precision", "channels_last"):
        del state["config"][name]
    torch.save(state, out)
    assert train_teacher(teacher_cfg, out, progress=False)["epochs_done"] == 1  # "already trained", not refused
    with pytest.raises(ValueError, match="channels_last"):
        train_teacher(TeacherConfig(**{**teacher_cfg.__dict__, "channels_last": True}), out, progress=False)


@pytest.mark.parametrize("protocol", ["infer-fast", "dd-ranking"])
def test_evaluate_passes_the_options_to_its_students_and_its_full_data_run(protocol, monkeypatch):
    from infer_fast.cli import _evaluation_protocol, build_parser
    from infer_fast.dd_ranking import DDRankingProtocol
    from infer_fast.evaluate import train_full_data

    args = build_parser().parse_args(["evaluate", "some-set", "--teachers", "t.pt", "--protocol", protocol, "--precision", "bf16",
                                      "--channels-last", "--augment-on", "device", "--temperature", "7"])
    made = _evaluation_protocol(args, "fashion-mnist")
    student = (made.student_config("fashion-mnist", "soft", True, 0.002, 0) if isinstance(made, DDRankingProtocol)
               else made.student_config("soft", True, 0))
    assert (student.precision, student.channels_last, student.augment_on, student.temperature) == (
        "bf16", True, "device", 7.0)

    trained = []
    monkeypatch.setattr(teacher_module, "train_teacher", lambda cfg, out, progress: trained.append(cfg) or
                        {"test_accuracy": 0.5})
    assert train_full_data("convnet", "fashion-mnist", None, "cpu", 2, False, student=made.student) == 0.5
    (cfg,) = trained  # computes as the students do (where a teacher can); learns with the teacher recipe
    assert (cfg.precision, cfg.channels_last, cfg.epochs, cfg.lr) == ("bf16", True, 2, TeacherConfig(dataset="fashion-mnist").lr)


def test_an_unknown_precision_is_refused_by_name():
    from test_cli import run_cli

    result = run_cli("train", "some-set", "--precision", "fp16")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "--precision" in result.stderr and "fp16" in result.stderr
    with pytest.raises(ValueError, match="precision"):
        StudentConfig(precision="fp16")
    with pytest.raises(ValueError, match="precision"):
        TeacherConfig(dataset="fashion-mnist", precision="half")


@pytest.mark.parametrize("protocol", ["infer-fast", "dd-ranking"])
def test_a_runs_scores_train_their_students_as_the_run_does(protocol, tmp_path):
    """`infer-fast run` with bf16 channels_last students scores its sets with such students too
    (DD-Ranking's protocol takes the run's model and epochs, and how its students compute)."""
    from test_pipeline import tiny_config

    cfg = tiny_config(tmp_path / "run", scores=protocol, student={"model": "convnet-w8-d2", "epochs": 20,
                                                                "precision": "bf16", "channels_last": True})
    made = cfg.score_protocol()
    assert (made.student["precision"], made.student["channels_last"]) == ("bf16", True)
