"""DD-Ranking's scores of the demo's three sets (INFER, random, SRe2L at ipc 10 on the embedded
Fashion-MNIST subset), measured with `infer-fast evaluate`'s protocol at the demo's scale, or
with DD-Ranking's own (``--protocol dd-ranking``: the rate grid, the best of the tests every
20 epochs, teacher labels per batch; the demo's student model and epochs, ``--seeds`` rounds).

    python bench/dd_ranking_demo.py                 # runs the demo into --work (or continues it)
    python bench/dd_ranking_demo.py --seeds 3
    python bench/dd_ranking_demo.py --protocol dd-ranking --seeds 2

Protocol: the demo's student (convnet-w32-d3, 100 epochs, batch 64, the CIFAR recipe
otherwise), the demo's two teachers label the random subsets; the full-data hard-label
accuracy is the first teacher's recorded test accuracy (the same architecture trained on
the whole training split with hard labels). Writes bench/results/dd-ranking-demo-<date>.json
(environment, every report) and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_ops import environment  # noqa: E402

from infer_fast.dd_ranking import DDRankingProtocol, evaluate_set_dd_ranking  # noqa: E402
from infer_fast.demo import IPC, STUDENT, run_demo  # noqa: E402
from infer_fast.evaluate import Protocol, evaluate_set  # noqa: E402
from infer_fast.pipeline import set_directory  # noqa: E402
from infer_fast.set_keys import SetKey  # noqa: E402
from infer_fast.storage import load_distilled  # noqa: E402
from infer_fast.teacher import load_teacher  # noqa: E402

SETS = (("INFER", SetKey("infer", IPC)), ("Random", SetKey("random", IPC)), ("SRe2L", SetKey("sre2l", IPC)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="runs/dd-ranking-demo", help="the demo's run directory (made or continued)")
    parser.add_argument("--seeds", type=int, default=3, help="students per run, or DD-Ranking's rounds (default 3)")
    parser.add_argument("--protocol", choices=("infer-fast", "dd-ranking"), default="infer-fast")
    parser.add_argument("--out", help="default bench/results/dd-ranking-demo[-dd-ranking-protocol]-<date>.json")
    args = parser.parse_args()
    dd = args.protocol == "dd-ranking"
    args.out = args.out or os.path.join(HERE, "results", f"dd-ranking-demo{'-dd-ranking-protocol' if dd else ''}-"
                                        f"{datetime.date.today()}.json")

    started = time.perf_counter()
    results = run_demo(args.work, progress=False)
    teacher_paths = [t["path"] for t in results["teachers"]]
    teachers = [load_teacher(p)[0] for p in teacher_paths]
    if dd:
        protocol = DDRankingProtocol(student={k: STUDENT[k] for k in ("model", "epochs")}, rounds=args.seeds)
        evaluate = evaluate_set_dd_ranking
    else:
        protocol, evaluate = Protocol(student=dict(STUDENT), seeds=args.seeds), evaluate_set
    reports = {}
    for label, key in SETS:
        ds = load_distilled(set_directory(args.work, results["sets"][str(key)]))
        reports[label] = evaluate(ds, teachers, protocol, full_data_checkpoint=teacher_paths[0], device="cpu",
                                  progress=False)
        print(f"{label}: done ({time.perf_counter() - started:.0f} s)", flush=True)
    record = {"environment": environment(torch.device("cpu"), torch.get_num_threads()),
              "wall_seconds": time.perf_counter() - started, "reports": reports}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)

    def pct(summary):
        return f"{100 * summary['mean']:.1f} ± {100 * summary['std']:.1f}"

    if dd:
        print("\n| set | hard | soft | random soft | soft, no mix | random soft, no mix | HLR | IOR | LRS | ARS "
              "| LRS printed | ARS printed |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for label, report in reports.items():
            acc, sc, printed = report["accuracy"], report["scores"], report["scores_printed"]
            print(f"| {label} | {pct(acc['set_hard'])} | {pct(acc['set_soft'])} | {pct(acc['random_soft'])} | "
                  f"{pct(acc['set_plain'])} | {pct(acc['random_plain'])} | {pct(sc['hlr'])} | {pct(sc['ior'])} | "
                  f"{pct(sc['lrs'])} | {pct(sc['ars'])} | {printed['lrs']['mean']:.4g} | {printed['ars']['mean']:.4g} |")
        print(f"\n({args.seeds} round(s); {record['wall_seconds']:.0f} s) -> {args.out}")
        return

    print("\n| set | soft | soft, no aug. | hard | hard, no aug. | random soft | HLR | IOR | LRS | ARS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, report in reports.items():
        acc, rnd, sc = report["accuracy"]["set"], report["accuracy"]["random"], report["scores"]
        print(f"| {label} | {pct(acc['soft'])} | {pct(acc['soft_plain'])} | {pct(acc['hard'])} | {pct(acc['hard_plain'])} "
              f"| {pct(rnd['soft'])} | {pct(sc['hlr'])} | {pct(sc['ior'])} | {pct(sc['lrs'])} | {pct(sc['ars'])} |")
    print(f"\nfull data, hard labels: {100 * next(iter(reports.values()))['full_data_hard']['accuracy']:.1f} % "
          f"({args.seeds} seed(s); {record['wall_seconds']:.0f} s) -> {args.out}")


if __name__ == "__main__":
    main()
