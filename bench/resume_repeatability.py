"""Is a resume inside a batch repeatable? (issue 20 point 0)

One checkpoint taken inside a batch (the test's setting: fashion-mnist-mini, a tiny teacher,
K = 4 UFCs in one batch, killed right after its checkpoint of iteration 10) is resumed N times,
each time from a fresh copy of the same file, in a fresh process; every result is compared bit
for bit (torch.equal, per UFC) with one uninterrupted run. A resume that is fully determined by
its checkpoint matches every time. Before infer_fast made MKL's first vector-math call at import
(infer_fast/mkl_vml.py), about 1 resume in 40 differed here: the resumed process's first Adam
step was its first MKL VML call, made by two threads at once, and MKL's lazy CPU detection
races (results/resume-repeatability-default-2026-12-06.json is that measurement).

    python bench/resume_repeatability.py                 # 40 resumes, about 4 minutes on 2 cores
    python bench/resume_repeatability.py --n 80 --env OMP_NUM_THREADS=1
    python bench/resume_repeatability.py --env INFER_FAST_BACKEND=torch

``--env`` is set for the resumed runs only (the reference and the checkpoint are made once, as
the CLI runs by default). Prints how many resumes differed, in which UFCs and by how much, and
writes the JSON under bench/results/.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

sys.path.insert(0, os.path.join(ROOT, "tests"))

from infer_fast.distill.checkpoints import SIGKILL_AFTER_CHECKPOINT_ENV  # noqa: E402
from infer_fast.storage import load_distilled  # noqa: E402
from resume_case import IN_BATCH_DISTILL as DISTILL, TINY_TEACHER as TEACHER  # noqa: E402  (test_cli.py's kill test)

KILL_AT = 10


def cli(args, cwd, env=None, expect=0):
    result = subprocess.run([sys.executable, "-m", "infer_fast.cli", *args], cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": ROOT, **(env or {})})
    if result.returncode != expect:
        raise SystemExit(f"{args[0]} exited {result.returncode}: {result.stderr.strip()[-500:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=40, help="resumes of the one checkpoint")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="set for the resumed runs (repeatable)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="folder of the JSON")
    parser.add_argument("--label", help="the JSON's name tag (default: the --env settings, or 'default')")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    work = tempfile.mkdtemp(prefix="resume-repeatability-")
    try:
        cli(TEACHER, work)
        cli([*DISTILL, "--out", "reference"], work)
        reference = load_distilled(os.path.join(work, "reference")).ufc
        killed = [*DISTILL, "--checkpoint-every", "10"]
        cli([*killed, "--out", "killed"], work, {SIGKILL_AFTER_CHECKPOINT_ENV: str(KILL_AT)}, expect=-signal.SIGKILL)
        checkpoint = os.path.join(work, "killed.recovery.pt")
        runs = []
        for i in range(args.n):
            out = f"resumed-{i}"
            shutil.copy(checkpoint, os.path.join(work, f"{out}.recovery.pt"))
            cli([*killed, "--out", out, "--resume"], work, env)
            ufc = load_distilled(os.path.join(work, out)).ufc
            differ = [k for k in range(reference.shape[0]) if not torch.equal(ufc[k], reference[k])]
            runs.append({"differ": differ, "max_abs_diff": float((ufc - reference).abs().max())})
            shutil.rmtree(os.path.join(work, out))
            print(f"resume {i + 1}/{args.n}: " + (f"UFCs {differ} differ" if differ else "identical"), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bad = [r for r in runs if r["differ"]]
    report = {
        "what": "resumes of one in-batch checkpoint (iteration 10 of 150, K=4 UFCs in one batch) vs one uninterrupted run",
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(), "env_of_resumes": env,
        "resumes": args.n, "differing": len(bad), "runs": runs,
    }
    os.makedirs(args.out, exist_ok=True)
    tag = args.label or "-".join(f"{k}={v}" for k, v in env.items()) or "default"
    path = os.path.join(args.out, f"resume-repeatability-{tag}-{report['date']}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    groups = sorted({tuple(r["differ"]) for r in bad})
    print(f"{len(bad)}/{args.n} resumes differ from the uninterrupted run" +
          (f" (UFCs {groups}, max |diff| {max(r['max_abs_diff'] for r in bad):.3g})" if bad else "") + f"; {path}")


if __name__ == "__main__":
    main()
