"""OpenMP's wait setting on a quiet and on a shared CPU machine (infer_fast/openmp_spin.py).

    python bench/openmp_spin.py                 # JSON under bench/results/openmp-spin-<date>.json

Each row runs one workload in a fresh process (libgomp reads its environment as it loads):
INFER's recovery (recover_ufcs) with two ConvNet teachers at Fashion-MNIST's shape (10 classes,
1x28x28, K = 8 natural sets), ITERATIONS iterations, timed from the first iteration to the
last (wall and process CPU seconds), under three settings:
  libgomp default          nothing set: 300,000 spins at a barrier before sleeping
  GOMP_SPINCOUNT=10000     a short spin
  OMP_WAIT_POLICY=PASSIVE  threads sleep at once
alone and beside one busy single-thread process (another job on a 2-core machine). The
median of REPEATS runs per row; the ratio of each row to libgomp's default in the same
condition, measured in this run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SETTINGS = {
    "libgomp default": {},
    "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
}
BUSY_LOOP = "import time\nend = time.time() + {seconds}\nwhile time.time() < end: pass"


def workload(setting: str, iterations: int) -> dict:
    """Run in the child: the recovery, timed; returns wall and CPU seconds."""
    import torch

    from infer_fast.distill.config import RecoveryConfig
    from infer_fast.methods.infer import recover_ufcs
    from infer_fast.models import create_model
    from infer_fast.openmp_spin import spin_setting

    gen = torch.Generator().manual_seed(0)
    natural = torch.randint(0, 256, (8, 10, 1, 28, 28), generator=gen, dtype=torch.uint8)
    teachers = [create_model(name, num_classes=10, in_channels=1, image_size=28).eval().requires_grad_(False)
                for name in ("convnet-w32-d3", "convnet-w16-d3")]
    recover_ufcs(natural, teachers, [0.5], [0.5], RecoveryConfig(iterations=1), progress=False)  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    recover_ufcs(natural, teachers, [0.5], [0.5], RecoveryConfig(iterations=iterations), progress=False)
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, "openmp": spin_setting(),
            "threads": torch.get_num_threads()}


def run_child(setting: str, iterations: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(SETTINGS[setting])
    env["PYTHONPATH"] = os.path.dirname(HERE) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, __file__, "--child", setting, "--iterations", str(iterations)],
                         env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(iterations: int, repeats: int, busy: bool) -> list:
    competitor = None
    if busy:  # one single-thread job beside ours, for as long as the rows take
        competitor = subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(seconds=3600)])
    try:
        rows = []
        for setting in SETTINGS:
            runs = [run_child(setting, iterations) for _ in range(repeats)]
            rows.append({"setting": setting, "beside_busy_job": busy, "openmp": runs[0]["openmp"],
                         "threads": runs[0]["threads"], "iterations": iterations,
                         "wall_s_median": statistics.median(r["wall_s"] for r in runs),
                         "cpu_s_median": statistics.median(r["cpu_s"] for r in runs),
                         "wall_s_runs": [round(r["wall_s"], 3) for r in runs]})
            print(f"{'beside a busy job' if busy else 'alone':<18} {setting:<36} "
                  f"wall {rows[-1]['wall_s_median']:6.2f} s  cpu {rows[-1]['cpu_s_median']:6.2f} s", flush=True)
        base = rows[0]["wall_s_median"]
        for row in rows:
            row["wall_vs_libgomp_default"] = round(row["wall_s_median"] / base, 3)
        return rows
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="output file (default bench/results/openmp-spin-<date>.json)")
    parser.add_argument("--child", default=None, choices=list(SETTINGS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(workload(args.child, args.iterations)))
        return 0
    rows = measure(args.iterations, args.repeats, busy=False) + measure(args.iterations, args.repeats, busy=True)
    sys.path.insert(0, HERE)
    from bench_ops import environment, write_json

    import torch

    out = args.json or os.path.join(HERE, "results", f"openmp-spin-{datetime.date.today().isoformat()}.json")
    write_json(out, {"environment": environment(torch.device("cpu"), torch.get_num_threads()), "cpu_count": os.cpu_count(),
                     "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
