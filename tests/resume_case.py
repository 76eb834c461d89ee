"""The in-batch resume case, defined once: test_cli.py's kill-and-resume tests and
bench/resume_repeatability.py (which repeats the test's resume N times) run these commands.
No imports: the bench reads it without the tests' conftest (which sets TRITON_INTERPRET)."""

# a one-epoch teacher written to t.pt in the working folder
TINY_TEACHER = ["teacher", "--dataset", "fashion-mnist-mini", "--model", "convnet-w8-d2", "--epochs", "1",
                "--batch-size", "256", "--lr", "0.05", "--out", "t.pt", "--quiet"]
# K = 4 UFCs, all in one batch (ipc 5, fair accounting), 150 iterations
IN_BATCH_DISTILL = ["distill", "--dataset", "fashion-mnist-mini", "--teachers", "t.pt", "--ipc", "5",
                    "--iterations", "150", "--group-size", "4", "--quiet"]
