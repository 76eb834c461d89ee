"""bench/gpu_summary.py shows the build step's CUDA check (`infer-fast info --check`, issue 19)
and what the test step could not install (test.notes), so a GPU session that lacked either
says so in its summary."""
from conftest import run_bench_script


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
