"""The automatic recovery plan from the memory available (CPU: /proc/meminfo and cgroups), and
an out-of-memory in a batch reported as one line naming --chunk-size / --group-size."""
import pytest
import torch

from infer_fast import memory
from infer_fast.distill import RecoveryConfig, engine, plan, recover_ufcs
from infer_fast.models import create_model

GiB = 1 << 30
ALLOCATOR_ERROR = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
                   "to allocate 123456789 bytes. Error code 12 (Cannot allocate memory)")


def _teacher(model="convnet-w8-d1", channels=1, size=28):
    torch.manual_seed(0)
    return create_model(model, num_classes=10, in_channels=channels, image_size=size).eval().requires_grad_(False)


def _natural(K=3, channels=1, size=28):
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (K, 10, channels, size, size), dtype=torch.uint8, generator=gen)


def _fake_available(monkeypatch, nbytes):
    monkeypatch.setattr(memory, "available_memory", lambda device: nbytes)


# --- reading the available memory -------------------------------------------------------------

def test_meminfo_available_is_read_in_bytes(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683784 kB\nMemFree:        1000 kB\nMemAvailable:   23945580 kB\n")
    assert memory.meminfo_available(str(meminfo)) == 23945580 * 1024
    meminfo.write_text("MemTotal:       24683784 kB\n")  # kernels before 3.14
    assert memory.meminfo_available(str(meminfo)) is None
    assert memory.meminfo_available(str(tmp_path / "missing")) is None


def _mountinfo(tmp_path, *lines):
    path = tmp_path / "mountinfo"
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def _cgroup(tmp_path, text):
    path = tmp_path / "cgroup"
    path.write_text(text)
    return str(path)


def test_cgroup_v2_headroom_is_the_tightest_limit_on_the_way_up(tmp_path):
    """The process's cgroup and its ancestors: each limit minus its usage without reclaimable
    page cache; the smallest wins; "max" and the root (no memory.max) set none."""
    root = tmp_path / "cg2"
    app = root / "user.slice" / "app"
    app.mkdir(parents=True)
    (app / "memory.max").write_text(f"{4 * GiB}\n")
    (app / "memory.current").write_text(f"{GiB}\n")
    (app / "memory.stat").write_text(f"anon 100\ninactive_file {GiB // 4}\nactive_file 7\n")
    (root / "user.slice" / "memory.max").write_text("max\n")
    (root / "user.slice" / "memory.current").write_text(f"{2 * GiB}\n")
    mounts = _mountinfo(tmp_path, f"30 23 0:26 / {root} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate",
                        "31 23 0:27 / /proc rw - proc proc rw")
    membership = _cgroup(tmp_path, "0::/user.slice/app\n")
    assert memory.cgroup_headroom(membership, mounts) == 4 * GiB - (GiB - GiB // 4)
    (root / "user.slice" / "memory.max").write_text(f"{3 * GiB}\n")  # a parent's tighter limit
    assert memory.cgroup_headroom(membership, mounts) == GiB
    (root / "user.slice" / "memory.max").write_text("max\n")
    (app / "memory.max").write_text("max\n")
    assert memory.cgroup_headroom(membership, mounts) is None  # no limit anywhere


def test_cgroup_v1_memory_controller_in_a_container(tmp_path):
    """v1: the memory controller's line of /proc/self/cgroup; a container shows the host's path
    while its own cgroup is the mount's root; the huge "no limit" value sets none."""
    mount = tmp_path / "memory"
    mount.mkdir()
    (mount / "memory.limit_in_bytes").write_text(f"{3 * GiB}\n")
    (mount / "memory.usage_in_bytes").write_text(f"{2 * GiB}\n")
    (mount / "memory.stat").write_text(f"cache 5\ninactive_file 1\ntotal_inactive_file {GiB}\n")
    mounts = _mountinfo(tmp_path, f"35 31 0:32 /docker/abc {mount} rw,relatime - cgroup cgroup rw,memory",
                        f"36 31 0:33 / {tmp_path / 'cpu'} rw,relatime - cgroup cgroup rw,cpu")
    membership = _cgroup(tmp_path, "5:cpu:/\n4:memory:/docker/abc\n0::/\n")
    assert memory.cgroup_headroom(membership, mounts) == 2 * GiB
    (mount / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert memory.cgroup_headroom(membership, mounts) is None
    assert memory.cgroup_headroom(str(tmp_path / "missing"), mounts) is None


def test_cpu_available_memory_is_the_smaller_figure(monkeypatch):
    monkeypatch.setattr(memory, "meminfo_available", lambda: 8 * GiB)
    monkeypatch.setattr(memory, "cgroup_headroom", lambda: 3 * GiB)
    assert memory.available_memory("cpu") == 3 * GiB
    monkeypatch.setattr(memory, "cgroup_headroom", lambda: None)
    assert memory.available_memory("cpu") == 8 * GiB
    monkeypatch.setattr(memory, "meminfo_available", lambda: None)
    assert memory.available_memory("cpu") is None


def test_out_of_memory_errors_are_recognised():
    assert memory.is_out_of_memory(RuntimeError(ALLOCATOR_ERROR))
    assert memory.is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert memory.is_out_of_memory(MemoryError())
    assert not memory.is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert memory.first_line(RuntimeError(ALLOCATOR_ERROR)).startswith("DefaultCPUAllocator: can't allocate memory")


def test_out_of_memory_message_of_one_group_suggests_smaller_chunks():
    error = plan.out_of_memory_error(RuntimeError(ALLOCATOR_ERROR), torch.device("cpu"), "teacher 1/1 UFC k=0", 1, 1000, 400)
    message = str(error)
    assert isinstance(error, MemoryError) and "\n" not in message
    assert "(1 x 1000 images, in chunks of 400)" in message and "--chunk-size 200" in message
    assert "--group-size" not in message  # one group per batch already


# --- the plan ---------------------------------------------------------------------------------

def test_cpu_plan_fits_the_groups_in_the_available_memory(monkeypatch):
    """G is what fits in MEMORY_FRACTION of the available memory, at most the 512-image cap;
    when one group does not fit, one group in chunks of what fits beside its inputs."""
    teacher, natural = _teacher(), _natural().float()
    C = natural.shape[1]
    per_image = plan.activation_bytes_per_image(teacher, natural, 4)
    assert per_image > 2 * 8 * 28 * 28 * 4  # at least the saved conv output and its gradient
    group = per_image * C / plan.MEMORY_FRACTION  # available memory that fits one group
    _fake_available(monkeypatch, int(3.5 * group))
    assert plan.auto_batch_plan(teacher, natural, K=100) == (3, None)
    _fake_available(monkeypatch, int(1000 * group))
    assert plan.auto_batch_plan(teacher, natural, K=100) == (plan.CPU_MAX_IMAGES // C, None)
    assert plan.auto_batch_plan(teacher, natural, K=2) == (2, None)
    _fake_available(monkeypatch, int(0.6 * group))
    with pytest.warns(RuntimeWarning, match="runs in chunks of"):
        G, chunk_size = plan.auto_batch_plan(teacher, natural, K=100)
    inputs = plan.BATCH_INPUT_COPIES * natural[0].numel() * 4
    assert G == 1 and chunk_size == int((0.6 * per_image * C - inputs) / per_image) and 1 <= chunk_size < C
    _fake_available(monkeypatch, None)  # unreadable (CPU off Linux): the image cap alone
    assert plan.auto_batch_plan(teacher, natural, K=100) == (plan.CPU_MAX_IMAGES // C, None)


def test_the_plan_runs_and_names_the_chunk_size_given(monkeypatch):
    """--chunk-size without --group-size: the plan sizes the groups and runs the user's chunks;
    when one group does not fit, its warning names those chunks, not the ones it would choose."""
    teacher, natural = _teacher(), _natural().float()
    C = natural.shape[1]
    per_image = plan.activation_bytes_per_image(teacher, natural, 4)
    group = per_image * C / plan.MEMORY_FRACTION
    _fake_available(monkeypatch, int(3.5 * group))
    assert plan.auto_batch_plan(teacher, natural, K=100, chunk_size=4) == (3, 4)
    _fake_available(monkeypatch, int(0.6 * group))
    with pytest.warns(RuntimeWarning, match="runs in chunks of"):
        _, fits = plan.auto_batch_plan(teacher, natural, K=100)
    assert fits != 2  # (the message tells the two apart)
    with pytest.warns(RuntimeWarning, match=f"it runs in chunks of 2 images, as --chunk-size asks [(]{fits} would fit"):
        assert plan.auto_batch_plan(teacher, natural, K=100, chunk_size=2) == (1, 2)
    with pytest.warns(RuntimeWarning, match="chunks of 2 images, as --chunk-size asks"):
        out = recover_ufcs(_natural(K=1), [teacher], [0.5], [0.25], RecoveryConfig(iterations=2, chunk_size=2),
                           progress=False)
    assert all(s["chunk_size"] == 2 for s in out["stats"])


def test_cpu_plan_caps_the_activations_however_much_memory_there_is(monkeypatch):
    """A big machine does not make CPU chunks bigger than CPU_MAX_ACTIVATION_BYTES (larger
    passes are not faster there): the peak stays a few GiB for ImageNet's 1000-image groups."""
    teacher, natural = _teacher(), _natural().float()
    C = natural.shape[1]
    per_image = plan.activation_bytes_per_image(teacher, natural, 4)
    monkeypatch.setattr(plan, "CPU_MAX_ACTIVATION_BYTES", int(2.5 * per_image))  # a cap below one group
    _fake_available(monkeypatch, 1 << 40)
    with pytest.warns(RuntimeWarning, match="the CPU's cap for activations"):
        assert plan.auto_batch_plan(teacher, natural, K=100) == (1, 2)
    monkeypatch.setattr(plan, "CPU_MAX_ACTIVATION_BYTES", int(2.5 * per_image * C))  # two and a half groups
    assert plan.auto_batch_plan(teacher, natural, K=100) == (2, None)


def test_demo_shapes_plan_as_before_with_a_modest_machine(monkeypatch):
    """The demo's teachers (ConvNet-w32-d3 / w16-d3 on 28x28 Fashion-MNIST, 10 classes) with
    only 1 GiB available: the 512-image cap decides, as before the plan read memory."""
    _fake_available(monkeypatch, GiB)
    for model in ("convnet-w32-d3", "convnet-w16-d3"):
        assert plan.auto_batch_plan(_teacher(model), _natural().float(), K=100) == (51, None)


def test_recovery_runs_the_chunks_the_plan_chose(monkeypatch):
    teacher, natural = _teacher(), _natural(K=1)
    per_image = plan.activation_bytes_per_image(teacher, natural.float(), 4)
    _fake_available(monkeypatch, int(0.6 * per_image * 10 / plan.MEMORY_FRACTION))
    with pytest.warns(RuntimeWarning, match="runs in chunks of"):
        out = recover_ufcs(natural, [teacher], [0.5], [0.25], RecoveryConfig(iterations=2), progress=False)
    assert out["group_size"] == 1 and all(1 <= s["chunk_size"] < 10 for s in out["stats"])


# --- out of memory ----------------------------------------------------------------------------

def test_out_of_memory_in_a_batch_is_one_line_and_the_checkpoint_resumes(tmp_path, monkeypatch, capsys):
    """The CPU allocator failing in the second batch: exit 2, one line naming what ran out, the
    batch and --chunk-size / --group-size (never "internal error"); the first batch is in the
    checkpoint and --resume finishes from it."""
    from conftest import train_tiny_teachers
    from infer_fast.cli import main

    (teacher,) = train_tiny_teachers(tmp_path, seeds=(0,))
    real_batch, real_losses = engine.optimize_batch, engine.TeacherLosses.__call__
    failing = []

    def batch(*args, **kwargs):
        failing[:] = [args[6][0] > 0]  # ks: every batch after the first runs out of memory
        return real_batch(*args, **kwargs)

    def losses(self, x, compiled=True):
        if failing[0]:
            raise RuntimeError(ALLOCATOR_ERROR)
        return real_losses(self, x, compiled)

    monkeypatch.setattr(engine, "optimize_batch", batch)
    monkeypatch.setattr(engine.TeacherLosses, "__call__", losses)
    args = ["distill", "--dataset", "fashion-mnist-mini", "--teachers", teacher, "--ipc", "5", "--iterations", "2",
            "--group-size", "2", "--out", str(tmp_path / "set"), "--quiet"]  # K = 4 UFCs, two batches
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "internal error" not in err
    for part in ("ran out of CPU memory", "k=2..3 (2 x 10 images", "--group-size N (groups per batch, now 2)",
                 "--chunk-size N", "--chunk-size 10", "chunk_size", "can't allocate memory",
                 f"is in {tmp_path / 'set'}.recovery.pt: --resume continues"):
        assert part in err, part
    monkeypatch.undo()
    assert main([*args, "--resume"]) == 0
    assert "resuming, 2/4 INFER jobs already recovered" in capsys.readouterr().out
