"""bench/gpu_summary.py shows the build step's CUDA check (`infer-fast info --check`, issue 19)
and what the test step could not install (test.notes), so a GPU session that lacked either
says so in its summary; and the key numbers of the steps outside `all` (issue 18): the decode
step's images/s per decoder and the ImageNet rehearsal's time and peak per step."""
import json

from conftest import run_bench_json, run_bench_script


def test_summary_shows_a_failed_cuda_check_and_the_test_notes(tmp_path):
    (tmp_path / "build.status").write_text("1\n")
    (tmp_path / "build.log").write_text(
        "  CUDA kernels skipped: the installed torch 2.11.0+cpu is a CPU-only build\n"
        "infer-fast info --check: FAILED: a CUDA GPU is visible but the CUDA kernels were skipped at build: "
        "the installed torch 2.11.0+cpu is a CPU-only build\n")
    (tmp_path / "test.status").write_text("0\n")
    (tmp_path / "test.log").write_text("....\n40 passed in 12.0s\n")
    (tmp_path / "test.notes").write_text("pip could not install pytest-xdist==3.8.0 (offline?)\n"
                                         "pytest-xdist missing: the tests ran in one process\n")
    proc = run_bench_script("gpu_summary.py", tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "build     failed (1)" in text
    assert "build: CUDA kernels skipped: the installed torch 2.11.0+cpu is a CPU-only build\n" in text
    assert ("build check: infer-fast info --check: FAILED: a CUDA GPU is visible but the CUDA kernels were "
            "skipped at build: the installed torch 2.11.0+cpu is a CPU-only build\n") in text
    assert "tests: 40 passed in 12.0s\n" in text
    assert "tests: note: pip could not install pytest-xdist==3.8.0 (offline?)\n" in text
    assert "tests: note: pytest-xdist missing: the tests ran in one process\n" in text


def test_summary_without_a_check_or_notes_says_so(tmp_path):
    (tmp_path / "test.notes").write_text("")  # the test step found everything it needs
    proc = run_bench_script("gpu_summary.py", tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "build check: no record\n" in proc.stdout
    assert "tests: note:" not in proc.stdout


def test_summary_shows_the_decode_rows_per_decoder(tmp_path):
    # the decode step's JSON as bench_decode.py writes it (its CPU dry run: --quick)
    _, result = run_bench_json("bench_decode.py", tmp_path / "decode.json", "--quick", "--no-forward")
    (tmp_path / "decode.status").write_text("0\n")
    proc = run_bench_script("gpu_summary.py", tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "  decode    ok\n" in text and "  rehearsal not run\n" in text
    assert "decode (CPU: " in text and ", 6 generated images to 64 px), images/s by DataLoader workers w:\n" in text
    speeds = {(r["decoder"], r["workers"]): r for r in result["results"] if r["section"] == "decode"}
    for decoder in {d for d, _ in speeds}:  # every decoder's images/s at each worker count, from the JSON
        cells = [f"w={w} {speeds[(decoder, w)]['images_per_s']:.0f}" for w in (0, 1)]
        assert f"    decode, batch 3, {decoder}: {cells[0]}" in text and cells[1] in text
    assert f"w=0 {speeds[('pillow-draft', 0)]['images_per_s']:.0f} ({speeds[('pillow-draft', 0)]['ratio_to_pillow']:.2f}x)" in text
    assert "    pixels of pillow-draft vs pillow: mean |diff| " in text
    if result["skipped"]:
        assert "    skipped torchvision: torchvision is not usable" in text


def test_summary_shows_the_rehearsal_steps(tmp_path):
    # the rehearsal step's JSON (rehearse_imagenet.py), the fields the summary reads
    record = {"device": "cuda", "environment": {"device": "NVIDIA H200"},
              "tree": {"classes": 1000, "train_per_class": 4, "val_per_class": 1},
              "run": {"returncode": 0, "wall_s": 251.4, "process_tree_peak_rss_gib": 5.104},
              "steps": {"test split": {"seconds": 2.206, "peak_rss_gib": 0.535},
                        "set rded/ipc1": {"seconds": 41.26, "peak_rss_gib": None}},
              "decoded_files": {"val": 1000, "train": 6000}}
    (tmp_path / "rehearsal.json").write_text(json.dumps(record))
    (tmp_path / "rehearsal.status").write_text("0\n")
    proc = run_bench_script("gpu_summary.py", tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "  rehearsal ok\n" in text
    assert ("rehearsal on cuda (NVIDIA H200), 1000 classes x 4 train + 1 val images: 251 s wall, peak 5.10 GiB "
            "resident (process tree; the steps': main process); decoded {'val': 1000, 'train': 6000}\n") in text
    assert "    test split                                2.2 s  peak 0.54 GiB\n" in text
    assert "    set rded/ipc1                            41.3 s  peak unknown\n" in text


def test_summary_of_a_rehearsal_cut_short_says_so(tmp_path):
    (tmp_path / "rehearsal.status").write_text("timed out after 540 s\n")  # step_rehearsal's note
    proc = run_bench_script("gpu_summary.py", tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "  rehearsal timed out after 540 s\n" in proc.stdout
    assert "rehearsal on" not in proc.stdout


def recovery_row(row, **fields):
    """A row of bench_recovery.py's JSON, the fields the summary reads."""
    return {"teacher": "resnet18-imagenet", "row": row, "ufcs": 3, "iterations": 8, "group_size": 3, **fields}


def test_summary_of_a_recovery_whose_reference_ran_out_of_memory(tmp_path):
    """The reference row errored: the others have no speed-up (None), shown as n/a, and the
    summary goes on (it stopped at the first None, losing every step's status)."""
    (tmp_path / "imagenet.status").write_text("0\n")
    (tmp_path / "rehearsal.status").write_text("0\n")
    (tmp_path / "recovery-imagenet.json").write_text(json.dumps({
        "reduced": False, "complete": False,
        "rows": [recovery_row("reference", error="out of memory: CUDA out of memory. Tried to allocate 2.00 GiB",
                              speedup_vs_reference=None),
                 recovery_row("toolkit", ms_per_ufc_iteration=12.5, speedup_vs_reference=None, peak_memory_mib=900.0,
                              cuda_graph=["captured"],
                              per_iteration_timing="steady state: (T(8) - T(4)) / 4 iterations")],
        "projections": []}))
    proc = run_bench_script("gpu_summary.py", tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "  imagenet  ok\n" in text and "  rehearsal ok\n" in text
    assert "recovery imagenet (INCOMPLETE: it ended before its last row):\n" in text
    assert "reference                        out of memory: CUDA out of memory. Tried to allocate 2.00 GiB\n" in text
    assert ("toolkit                              12.50 ms/UFC-it (steady state)  n/a ref  peak 900 MiB  "
            "graph: captured\n") in text


def test_a_json_the_summary_cannot_read_costs_only_its_own_lines(tmp_path):
    """A field missing (a run cut short, another version) or a file cut short names the file
    and why, and every other section is still summarized."""
    (tmp_path / "ops.status").write_text("0\n")
    (tmp_path / "ops.json").write_text(json.dumps({"results": []}))  # no "environment"
    (tmp_path / "recovery-cifar100.json").write_text('{"rows": [')  # a file cut short
    (tmp_path / "ops-overhead.json").write_text(json.dumps({"results": [
        {"op": "bn_stat_loss", "impl": "cuda", "fwd_bwd_host_us": None, "ratio_to_baseline": None}]}))
    (tmp_path / "test.log").write_bytes(b"\xff\xfe stray bytes\n3 passed in 1.0s\n")
    record = {"device": "cuda", "environment": {"device": "NVIDIA H200"},
              "tree": {"classes": 4, "train_per_class": 4, "val_per_class": 1},
              "run": {"returncode": 0, "wall_s": 20.0, "process_tree_peak_rss_gib": 1.0},
              "steps": {"test split": {"seconds": 2.0, "peak_rss_gib": 0.5}}, "decoded_files": {}}
    (tmp_path / "rehearsal.json").write_text(json.dumps(record))
    proc = run_bench_script("gpu_summary.py", tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "  ops       ok\n" in text and "tests: 3 passed in 1.0s\n" in text
    assert "ops.json: not summarized (KeyError: 'environment')\n" in text
    assert "recovery-cifar100.json: not summarized (JSONDecodeError: " in text
    assert "ops-overhead.json: not summarized (TypeError: " in text
    assert "rehearsal on cuda (NVIDIA H200), 4 classes x 4 train + 1 val images: 20 s wall" in text
