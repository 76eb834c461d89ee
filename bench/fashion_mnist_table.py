"""The Fashion-MNIST results table of the README: INFER, INFER+Dyn, random and SRe2L at each
ipc of configs/fashion-mnist.yaml, 3 student seeds, compression ratio and feature duplication.

    python bench/fashion_mnist_table.py                       # trains the teachers, then the table
    python bench/fashion_mnist_table.py --teachers t64.pt,t32.pt --parallel 2

Teachers are prepared once (trained, or the given checkpoints); then each ipc value runs as
its own ``infer-fast run`` process (``--parallel`` at a time, the CPU threads split between
them; every process resumes where it stopped). The merged results go to
bench/results/fashion-mnist-table-<date>.json with the machine, versions, commit and the
wall time, and the Markdown table is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_ops import environment  # noqa: E402

from infer_fast.pipeline import format_table, load_pipeline_config, prepare_teachers, summarize  # noqa: E402
from infer_fast.results import RESULTS_PARTS, format_score_table, score_tables, scores_note  # noqa: E402


def merged_results(parts: List[Dict[str, Any]], ipc_values: List[int]) -> Dict[str, Any]:
    """One results file of the processes' ``parts`` (one per ipc value, in ``ipc_values``' order):
    every keyed part of theirs (sets, runs, scores, external sets: their keys name the ipc), the
    config and teachers they share, and each process's timing by ipc."""
    merged = {"format": parts[0]["format"], "config": {**parts[0]["config"], "ipc": list(ipc_values)},
              "teachers": parts[0]["teachers"]}
    for name, (kind, _) in RESULTS_PARTS.items():
        if kind is dict and name not in ("config", "timing"):
            for part in parts:
                if part.get(name) is not None:
                    merged.setdefault(name, {}).update(part[name])
    merged["timing_per_ipc"] = {str(ipc): part.get("timing") for ipc, part in zip(ipc_values, parts)}
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=os.path.join(HERE, "..", "configs", "fashion-mnist.yaml"))
    parser.add_argument("--out", default="runs/fashion-mnist", help="run directory (one sub-directory per ipc)")
    parser.add_argument("--teachers", help="comma-separated trained teacher checkpoints (default: train the config's)")
    parser.add_argument("--parallel", type=int, default=2, help="ipc values run at once (default 2)")
    parser.add_argument("--seeds", type=int, help="student seeds (default: the config's)")
    parser.add_argument("--methods", help="comma-separated methods (default: the config's), e.g. cda,rded")
    parser.add_argument("--ipc", help="comma-separated ipc values (default: the config's)")
    parser.add_argument("--name", default="fashion-mnist-table", help="the JSON's name before its date")
    parser.add_argument("--data-root", dest="data_root", help="directory holding Fashion-MNIST")
    parser.add_argument("--results", default=os.path.join(HERE, "results"), help="where the JSON goes")
    args = parser.parse_args()

    started = time.perf_counter()
    threads = max(1, (os.cpu_count() or 1) // max(1, args.parallel))
    env_info = environment(torch.device("cpu"), threads)  # at the start: the code that runs
    teachers = [{"path": p} for p in args.teachers.split(",")] if args.teachers else None
    overrides = {k: [int(v) for v in getattr(args, k).split(",")] if k == "ipc" else getattr(args, k).split(",")
                 for k in ("methods", "ipc") if getattr(args, k)}
    cfg = load_pipeline_config(args.config, out=args.out, teachers=teachers, seeds=args.seeds, data_root=args.data_root,
                               **overrides)
    teacher_paths = prepare_teachers(cfg)  # once, before the parallel runs

    def run(ipc: int) -> dict:
        out = os.path.join(args.out, f"ipc{ipc}")
        cmd = [sys.executable, "-m", "infer_fast.cli", "run", args.config, "--out", out, "--ipc", str(ipc),
               "--teachers", ",".join(teacher_paths), "--quiet"]
        if args.seeds:
            cmd += ["--seeds", str(args.seeds)]
        if args.methods:
            cmd += ["--methods", args.methods]
        if args.data_root:
            cmd += ["--data-root", args.data_root]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        t0 = time.perf_counter()
        with open(os.path.join(args.out, f"ipc{ipc}.log"), "a") as log:
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        if code != 0:
            raise SystemExit(f"ipc {ipc} failed (exit {code}); see {args.out}/ipc{ipc}.log")
        with open(os.path.join(out, "results.json")) as f:
            results = json.load(f)
        results["wall_s"] = time.perf_counter() - t0
        return results

    os.makedirs(args.out, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        parts = list(pool.map(run, cfg.ipc))

    merged = merged_results(parts, cfg.ipc)
    merged["table"] = summarize(merged)
    wall = time.perf_counter() - started
    report = {
        "benchmark": "fashion-mnist-table",
        "environment": env_info,
        "parallel_processes": args.parallel,
        "wall_s_this_invocation": wall,
        "wall_s_per_ipc": {str(ipc): part["wall_s"] for ipc, part in zip(cfg.ipc, parts)},
        "teacher_training_s": [t.get("train_seconds") for t in merged["teachers"]],
        **merged,
    }
    os.makedirs(args.results, exist_ok=True)
    path = os.path.join(args.results, f"{args.name}-{report['environment']['date'][:10]}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(format_table(merged))
    for shown in score_tables(merged):
        print(f"\nDD-Ranking scores ({scores_note(shown)}):\n\n{format_score_table(shown)}")
    teachers_line = ", ".join(f"{t['model']} {100 * t['test_accuracy']:.2f}% ({t['train_seconds']:.0f} s)" for t in merged["teachers"])
    print(f"\nteachers: {teachers_line}")
    print(f"wall time of this invocation: {wall / 60:.1f} min ({args.parallel} processes x {threads} threads); JSON: {path}")


if __name__ == "__main__":
    main()
