"""What a call leaves behind in the caller's process: the memory plan's probe graph (once per
teacher and distill: a notebook's sweep grew by ~130 MiB per call at ImageNet size) and the
caller's seeded random stream (a folder split's decoding workers); the caller's matplotlib
backend and pyplot figures (a run's plots)."""
import gc
import os
import warnings
import weakref

import torch
from test_data_quirk_fixes import imagenet_tree

from infer_fast.data import load_dataset
from infer_fast.distill.plan import activation_bytes_per_image
from infer_fast.models import create_model


def live_tensors() -> list:
    gc.collect()
    with warnings.catch_warnings():  # (an isinstance on torch.distributed's deprecated reduce_op warns)
        warnings.simplefilter("ignore", FutureWarning)
        return [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]


def frozen_teacher():
    teacher = create_model("convnet-w8-d2", num_classes=10, in_channels=1, image_size=28).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def test_the_memory_probe_leaves_no_graph_and_lets_its_teacher_go():
    natural = torch.rand(1, 10, 1, 28, 28)
    teacher = frozen_teacher()
    first = activation_bytes_per_image(teacher, natural, 4)
    before = live_tensors()  # (held: no id of theirs is reused by a tensor made after)
    assert [activation_bytes_per_image(teacher, natural, 4) for _ in range(3)] == [first] * 3
    # no tensor the calls made is left (was 12 per call for this teacher); counts alone differed when
    # another test's leftovers were freed meanwhile (once under pytest-xdist: 130 after, 150 before)
    known = {id(t) for t in before}
    assert [tuple(t.shape) for t in live_tensors() if id(t) not in known] == []
    del before, known
    weight = weakref.ref(next(teacher.parameters()))
    del teacher
    gc.collect()
    assert weight() is None  # (the leaked graph held the teacher's weights)


def test_decoding_workers_leave_the_callers_random_stream_alone(tmp_path):
    root = imagenet_tree(tmp_path / "data", classes=("n01", "n02"), train_per_class=3, val_per_class=1)
    train = load_dataset({"name": "imagefolder", "image_size": 8, "in_memory": False}, "train", data_root=str(root))
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    decoded = [images for images, _ in train.batches(2, num_workers=1)]
    assert sum(len(images) for images in decoded) == 6
    assert torch.equal(torch.rand(3), expected)


def test_plots_leave_the_callers_backend_and_figures_alone(tmp_path):
    import subprocess
    import sys

    # (a fresh interpreter: the backend a session chose, here pdf's, is the one to keep)
    script = f"""
import matplotlib
matplotlib.use("pdf")
import matplotlib.pyplot as plt
from test_plots import method_run_results
from infer_fast.plots import draw_plots, write_plots
mine = plt.figure()
drawn = draw_plots(method_run_results())
written = write_plots(method_run_results(), {str(tmp_path)!r})
assert set(drawn) == set(written) and drawn["compression"].axes
print(matplotlib.get_backend(), plt.get_fignums())
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(__file__))
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split("\n")[-2] == "pdf [1]"
