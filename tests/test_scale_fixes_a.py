"""Memory at scale: INFER's natural sets stay uint8 and each recovery batch normalizes only its
own sets (the same bits); relabel counts the soft labels it writes in its free-space check and
fills them fp16 chunk by chunk; students hold the soft labels fp16."""
import errno
import os

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from infer_fast import memory
from infer_fast import relabel as relabel_module
from infer_fast._io import OutputPathError
from infer_fast.data import load_dataset
from infer_fast.data.transforms import normalize
from infer_fast.distill import RecoveryConfig, RecoveryOutOfMemoryError, engine, jobs, plan, recover_ufcs
from infer_fast.distill.variables import BatchVariable
from infer_fast.methods import infer as infer_module
from infer_fast.relabel import ensemble_logits, relabel, relabel_directory
from infer_fast.storage import DistilledDataset, DistilledSet, distilled_set, save_distilled
from infer_fast.student import StudentConfig, train_student

torch.set_num_threads(1)

DATASET = "fashion-mnist-mini"
ALLOCATOR_ERROR = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
                   "to allocate 123456789 bytes. Error code 12 (Cannot allocate memory)")


# --- 1. INFER's natural sets: uint8, a batch's own normalized when it starts ----------------------

def _batch_sources(monkeypatch):
    """(ks, the source the engine composed the batch with) of every optimized batch, and the runners."""
    seen, runners = [], []
    real_batch, real_init = engine.optimize_batch, jobs._JobRunner.__init__

    def batch(*args, **kwargs):
        seen.append((list(args[6]), args[1]))
        return real_batch(*args, **kwargs)

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        runners.append(self)

    monkeypatch.setattr(engine, "optimize_batch", batch)
    monkeypatch.setattr(jobs._JobRunner, "__init__", init)
    return seen, runners


def _old_composition(monkeypatch):
    """Recovery as before: every natural set normalized at once, each batch composed with all
    K of them through the sets' own indices ks."""
    def all_sets(self, ks, device):
        return None if self.natural is None else normalize(self.natural, self.mean, self.std).contiguous().to(device)

    def variable(self, source, gens, ks, num_classes, image_shape, device):
        index = torch.tensor(list(ks), dtype=torch.int64, device=device)
        v = torch.zeros((len(ks),) + tuple(image_shape), dtype=torch.float32, device=device, requires_grad=True)
        return BatchVariable(v, lambda v: (source, v, index), list(ks))

    monkeypatch.setattr(jobs._JobRunner, "natural_sets", all_sets)
    monkeypatch.setattr(infer_module.Compensators, "variable", variable)


@pytest.mark.parametrize("settings", [
    dict(group_size=2),  # batches k=0..1 and k=2
    dict(group_size=2, augmentation="imagenet"),
    dict(group_size=2, chunk_size=7),  # chunked: composed row by row from source_rows
])
def test_a_batch_holds_its_own_natural_sets_in_float32_with_the_same_bits(natural, teachers, train_set, monkeypatch,
                                                                        settings):
    """The recovery holds the natural sets as uint8 and gives each batch only its own sets in
    float32 (normalized when it starts, in ks order), so memory no longer grows by K float32
    sets; the UFCs and stats are bit-identical to composing with all K sets normalized at once."""
    spec = train_set.spec
    config = RecoveryConfig(iterations=2, seed=3, **settings)
    with monkeypatch.context() as patch:
        seen, runners = _batch_sources(patch)
        new = recover_ufcs(natural, teachers, spec.mean, spec.std, config, progress=False)
    assert [ks for ks, _ in seen] == [[0, 1], [2], [0, 1], [2]]
    for ks, source in seen:
        assert source.dtype == torch.float32 and source.shape == (len(ks),) + tuple(natural.shape[1:])
        assert torch.equal(source, normalize(natural[ks], spec.mean, spec.std))
    assert len(runners) == 1 and runners[0].natural.dtype == torch.uint8 and runners[0].natural.shape == natural.shape
    with monkeypatch.context() as patch:
        _old_composition(patch)
        old = recover_ufcs(natural, teachers, spec.mean, spec.std, config, progress=False)
    assert torch.equal(new["ufc"], old["ufc"])
    strip = lambda stats: [{k: v for k, v in s.items() if "seconds" not in k} for s in stats]  # noqa: E731
    assert strip(new["stats"]) == strip(old["stats"])


def test_the_automatic_plan_counts_the_batch_natural_sets(monkeypatch):
    """auto_batch_plan counts what each image of a batch holds beside the teacher's activations
    (its float32 natural image): fewer groups fit. (The activations measured as one natural
    image's bytes, so holding it halves the groups.)"""
    from infer_fast.models import create_model

    torch.manual_seed(0)
    teacher = create_model("convnet-w8-d1", num_classes=10, in_channels=1, image_size=28).eval().requires_grad_(False)
    probe = torch.zeros(1, 10, 1, 28, 28)
    per_image = probe[0, 0].numel() * probe.element_size()
    monkeypatch.setattr(plan, "activation_bytes_per_image", lambda teacher, natural, rows: per_image)
    monkeypatch.setattr(memory, "available_memory", lambda device: int(4.5 * per_image * 10 / plan.MEMORY_FRACTION))
    assert plan.auto_batch_plan(teacher, probe, K=100) == (4, None)
    assert plan.auto_batch_plan(teacher, probe, K=100, holds_natural=True) == (2, None)
    assert plan.auto_batch_plan(teacher, probe, K=100, holds_natural=False) == (4, None)


def test_out_of_memory_making_a_batch_sets_names_the_batch(natural, teachers, train_set, monkeypatch):
    """The batch's float32 sets that do not fit: the batch's one-line error (--group-size)."""
    def failing(*args, **kwargs):
        raise RuntimeError(ALLOCATOR_ERROR)

    monkeypatch.setattr(jobs, "normalize", failing)
    spec = train_set.spec
    with pytest.raises(RecoveryOutOfMemoryError, match=r"k=0\.\.1 \(2 x 10 images.*--group-size N"):
        recover_ufcs(natural, teachers[:1], spec.mean, spec.std, RecoveryConfig(iterations=2, group_size=2),
                     progress=False)


def test_out_of_memory_holding_the_natural_sets_names_ipc(teacher_paths, tmp_path, monkeypatch, capsys):
    """The K natural sets themselves (uint8, the whole run) not fitting: one line naming K and
    --ipc, not the batch options that cannot lower them."""
    from infer_fast.cli import main

    def failing(*args, **kwargs):
        raise RuntimeError(ALLOCATOR_ERROR)

    monkeypatch.setattr(infer_module, "select_natural_sets", failing)
    assert main(["distill", "--dataset", DATASET, "--teachers", teacher_paths[0], "--ipc", "5", "--iterations", "1",
                 "--out", str(tmp_path / "set"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "internal error" not in err
    for part in ("K=4 natural sets (4 x 10 images", "GiB as uint8", "lower --ipc (now 5", "can't allocate memory"):
        assert part in err, part
    assert "--group-size" not in err and "--chunk-size" not in err


# --- 2. relabel's free-space check counts the soft labels ---------------------------------------

def _tiny_set(num_classes=512, n=512, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return DistilledSet(method="random", dataset="tiny", num_classes=num_classes, channels=1, image_size=2,
                        mean=[0.5], std=[0.25], images=torch.randint(0, 256, (n, 1, 2, 2), dtype=torch.uint8,
                                                                     generator=gen),
                        labels=torch.arange(n) % num_classes)


def _linear_teacher(pixels=4, num_classes=512):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(pixels, num_classes)).eval()


def test_relabel_directory_needs_room_for_the_soft_labels_before_labelling(tmp_path, monkeypatch):
    """The set is rewritten with N x C fp16 soft labels: with room for the set but not for its
    labels, relabel_directory stops before labelling anything, naming the bytes it needs."""
    ds = _tiny_set()
    save_distilled(ds, tmp_path / "set")
    teacher = tmp_path / "teacher.pt"
    torch.save({}, teacher)  # (never loaded: the check comes first)
    labels = 512 * 512 * 2  # N x C fp16
    free = ds.nbytes() + labels // 2  # the set fits, its labels do not
    monkeypatch.setattr(os, "statvfs", lambda path: os.statvfs_result((1, 1, 1 << 40, free, free, 0, 0, 0, 0, 255)))
    labelled = []
    monkeypatch.setattr(relabel_module, "relabel", lambda *a, **kw: labelled.append(a))
    with pytest.raises(OutputPathError) as caught:
        relabel_directory(tmp_path / "set", [str(teacher)])
    assert caught.value.errno == errno.ENOSPC and "needs about" in str(caught.value)
    assert labelled == []
    needed = ds.nbytes(relabelled=True)
    assert ds.soft_label_nbytes() == labels and needed == ds.nbytes() + labels
    # a set relabelled already: its old labels are replaced, not counted twice
    ds.set_soft_labels(torch.zeros(512, 512))
    assert ds.nbytes(relabelled=True) == needed and ds.nbytes() == needed


# --- 3. relabel fills the fp16 labels chunk by chunk ----------------------------------------------

def _old_relabel_labels(ds, teachers, batch_size):
    """The labels as relabel made them before: float32 logits per batch, concatenated, then fp16."""
    chunks = []
    for _, images in DistilledDataset(ds, hard_only=True).iter_chunks():
        for start in range(0, images.shape[0], batch_size):
            chunks.append(ensemble_logits(teachers, images[start:start + batch_size]))
    return torch.cat(chunks).to(torch.float16)


def _infer_set(k=2, c=10, g=4):
    gen = torch.Generator().manual_seed(1)
    return DistilledSet(method="infer", dataset="tiny", num_classes=c, channels=1, image_size=8, mean=[0.5],
                        std=[0.25], natural=torch.randint(0, 256, (k, c, 1, 8, 8), dtype=torch.uint8, generator=gen),
                        ufc=0.3 * torch.randn(g, 1, 8, 8, generator=gen), ufc_index=torch.arange(g) % k,
                        ufc_teacher=torch.zeros(g, dtype=torch.int64))


def test_relabel_stores_the_same_bits_without_a_full_size_float32_copy(monkeypatch):
    """The stored fp16 labels are the old path's bits (INFER and images layouts), and labelling
    allocates the N x C labels once, fp16: no float32 copy of them all, no full-size
    temporaries (the old path held fp32 chunks, their concatenation, fp16 and bool copies and
    clones: ~9x the labels)."""
    torch.manual_seed(0)
    infer = _infer_set()
    teachers = [nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval() for _ in range(2)]
    expected = _old_relabel_labels(infer, teachers, 7)
    relabel(infer, teachers, batch_size=7)
    assert infer.natural_labels.dtype == torch.float16 and torch.equal(infer.soft_labels_flat(), expected)

    ds, teacher = _tiny_set(), _linear_teacher()
    expected = _old_relabel_labels(ds, [teacher], 64)
    n, c = 512, 512
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        relabel(ds, teacher, batch_size=64)
    assert torch.equal(ds.soft_labels, expected)
    # allocations of at least one byte per label (a batch's logits are 64 x C x 4 bytes: fewer)
    large = [e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage >= n * c]
    assert large == [n * c * 2], large
    # checking the set before it is saved reads its labels a block at a time too
    monkeypatch.setattr(distilled_set, "SOFT_LABEL_BLOCK", 1 << 12)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        ds.validate()
    assert [e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage >= n * c // 2] == []


def test_set_soft_labels_checks_and_keeps_its_own_copy():
    """set_soft_labels converts block by block to the same fp16 bits, refuses overflow and
    inf/nan naming them, and keeps a copy of the caller's tensor (copy=False: the tensor itself)."""
    ds = _tiny_set(num_classes=3, n=6)
    logits = torch.randn(6, 3, dtype=torch.float64)
    ds.set_soft_labels(logits)
    assert torch.equal(ds.soft_labels, logits.to(torch.float16))
    logits.zero_()
    assert not torch.equal(ds.soft_labels, logits.half())  # not a view of the caller's
    own = ds.empty_soft_labels()
    own.fill_(1.5)
    ds.set_soft_labels(own, copy=False)
    assert ds.soft_labels.data_ptr() == own.data_ptr()
    from infer_fast.storage import DistilledSetError

    with pytest.raises(DistilledSetError, match="float64 values up to 1e[+]06 overflow float16"):
        ds.set_soft_labels(torch.full((6, 3), 1e6, dtype=torch.float64))
    with pytest.raises(DistilledSetError, match="contain inf/nan"):
        ds.set_soft_labels(torch.full((6, 3), float("nan")))
    with pytest.raises(ValueError, match="copy=False"):
        ds.set_soft_labels(torch.zeros(6, 3), copy=False)


# --- 4. students hold the soft labels fp16 ----------------------------------------------------------

def test_students_keep_the_soft_labels_fp16_with_the_same_training(train_set):
    """DistilledDataset and the student hold the set's fp16 labels (no float32 copy of them
    all) and make a batch's float32; training gives the same bits as with float32 labels."""
    torch.manual_seed(0)
    picked, s = train_set.per_class(3, seed=0), train_set.spec
    ds = DistilledSet(method="random", dataset=s.name, num_classes=s.num_classes, channels=s.channels,
                      image_size=s.image_size, mean=s.mean, std=s.std, images=picked.images, labels=picked.labels)
    ds.set_soft_labels(4 * torch.randn(len(picked.labels), s.num_classes))
    data = DistilledDataset(ds)
    assert data.soft_labels.dtype == torch.float16 and data.soft_labels.data_ptr() == ds.soft_labels.data_ptr()
    _, soft, _ = data.all_images()
    assert soft.dtype == torch.float16
    assert data[4][1].dtype == torch.float32 and torch.equal(data[4][1], ds.soft_labels[4].float())

    test_set = load_dataset(DATASET, "test")
    cfg = StudentConfig(model="convnet-w8-d2", batch_size=10, device="cpu", epochs=1, seed=0)
    fp16 = train_student(ds, test_set, cfg, progress=False)
    real_all = DistilledDataset.all_images

    def float32_labels(self):  # the old way: float32 labels for the whole set
        images, soft, hard = real_all(self)
        return images, soft.float(), hard

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DistilledDataset, "all_images", float32_labels)
        fp32 = train_student(ds, test_set, cfg, progress=False)
    assert fp16["history"] == fp32["history"] and fp16["final_accuracy"] == fp32["final_accuracy"]
    for a, b in zip(fp16["model"].state_dict().values(), fp32["model"].state_dict().values()):
        assert torch.equal(a, b)
