"""Rehearsal of ImageNet-1k as shipped: `infer-fast run` of the ImageNet preset
(configs/imagenet.yaml) scaled to ipc 1, one teacher, one recovery iteration and one student
epoch, on a generated tree of the real layout (1000 wnid folders, JPEGs of ImageNet's sizes
and modes), with the teacher's weights where torchvision caches them (random weights: the
rehearsal times and sizes the pipeline, it does not measure accuracy).

    python bench/rehearse_imagenet.py                       # 1000 classes x 4 train + 1 val images
    python bench/rehearse_imagenet.py --classes 100 --quick # a smaller rehearsal
    python bench/rehearse_imagenet.py --device cuda         # every step on the GPU

Records, in bench/results/imagenet-rehearsal-<date>.json: every step's seconds and peak
resident memory (the run's own timing.steps: each step's peak alone, main process), the peak
of the whole process tree (main process + DataLoader workers, sampled every 0.2 s), the
run's wall time, the decodes of each split (INFER_FAST_DECODE_LOG) and the device every step
ran on (``--device``: the config's ``device``).
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_ops import environment  # noqa: E402

from infer_fast.data import DECODE_LOG_ENV  # noqa: E402
from infer_fast.data.synthetic import write_fake_imagenet  # noqa: E402
from infer_fast.models import create_model  # noqa: E402

TEACHER_FILE = "resnet18-f37072fd.pth"  # torchvision's ResNet-18 ImageNet weights, as the cache names them
CONFIG = """\
# configs/imagenet.yaml scaled to a rehearsal: ipc 1, one teacher, one iteration, one epoch;
# RDED with its ImageNet recipe (2 x 2 patches, 5 crops per candidate) on 4 candidates per
# class (ipc 1 x 4 patches: the fewest it takes) instead of 300
dataset: {dataset}
data_root: {root}
out: {out}
teachers: [{{model: resnet18-imagenet, pretrained: true}}]
ipc: [1]
methods: [infer, infer_dyn, random, sre2l, cda, rded]
accounting: ipc
selection: random
recovery: {{iterations: 1, r_bn: 0.01, augmentation: imagenet, max_shift: 32, seed: 0}}
sre2l: {{iterations: 1, r_bn: 0.01}}
method_options: {{cda: {{iterations: 1}}, rded: {{candidates_per_class: 4}}}}
student: {{model: resnet18-imagenet, epochs: 1, batch_size: 100, lr: 0.001, weight_decay: 0.01, temperature: 20.0,
          augmentation: resized_crop_flip, mix: cutmix, mixup_alpha: 1.0}}
seeds: 1
device: {device}
"""


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (Linux /proc)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return total


def run_measured(cmd: List[str], env: Dict[str, str], cwd: str, log_path: str) -> Dict:
    """Run ``cmd`` (output to ``log_path``), sampling its process tree's memory."""
    with open(log_path, "w") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        peak = [0]

        def sample():
            while proc.poll() is None:
                peak[0] = max(peak[0], tree_rss_bytes(proc.pid))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, _ = os.wait4(proc.pid, 0)  # (its ru_maxrss: since the run's last peak reset, not the run's peak)
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.join()
    return {"returncode": proc.returncode, "wall_s": round(time.perf_counter() - started, 1),
            "process_tree_peak_rss_gib": round(peak[0] / 2**30, 3)}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="the fake tree (generated there when missing; default: a temporary folder)")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--train-per-class", type=int, default=4)  # (RDED: 4 candidates per class)
    parser.add_argument("--val-per-class", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="100 classes, 4 + 1 images each (minutes)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu", help="where every step of the run computes: cpu (default) or "
                        "cuda[:N]")
    parser.add_argument("--json", help="output JSON (default bench/results/imagenet-rehearsal[-gpu]-<date>.json)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (tree, run, logs) after a run that "
                        "succeeded (a failed run's is always kept)")
    args = parser.parse_args(argv)
    if args.quick:
        args.classes, args.train_per_class, args.val_per_class = 100, 4, 1
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA GPU is available to this torch {torch.__version__}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    work = tempfile.mkdtemp(prefix="infer-fast-rehearsal-")
    root = args.root or os.path.join(work, "imagenet")
    if not os.path.isdir(os.path.join(root, "train")):
        t0 = time.perf_counter()
        counts = write_fake_imagenet(root, args.classes, args.train_per_class, args.val_per_class)
        print(f"fake tree: {counts} in {time.perf_counter() - t0:.0f} s -> {root}", flush=True)
    # the teacher's weights where torchvision caches them (random weights, torchvision's names)
    torch_home = os.path.join(work, "torch-home")
    os.makedirs(os.path.join(torch_home, "hub", "checkpoints"))
    torch.manual_seed(0)
    # (for fewer classes than ImageNet's 1000, a class subset, with a classifier of as many:
    # pretrained weights are a teacher for the classes they have)
    torch.save(create_model("resnet18-imagenet", num_classes=args.classes, in_channels=3, image_size=224).state_dict(),
               os.path.join(torch_home, "hub", "checkpoints", TEACHER_FILE))
    out = os.path.join(work, "run")
    dataset = "imagenet" if args.classes == 1000 else f"{{name: imagenet, num_classes: {args.classes}}}"
    config = os.path.join(work, "imagenet-rehearsal.yaml")
    with open(config, "w") as f:
        f.write(CONFIG.format(root=root, out=out, dataset=dataset, device=args.device))
    decode_log = os.path.join(work, "decodes.log")
    env = dict(os.environ, TORCH_HOME=torch_home, OMP_NUM_THREADS=str(args.threads), **{DECODE_LOG_ENV: decode_log})
    print(f"infer-fast run {config} (log: {work}/run.log)", flush=True)
    load_before = os.getloadavg()  # (other work on the machine slows the steps down)
    measured = run_measured([sys.executable, "-m", "infer_fast.cli", "run", config], env, work,
                            os.path.join(work, "run.log"))
    with open(os.path.join(work, "run.log")) as f:
        log_tail = f.read()[-3000:]
    if measured["returncode"] != 0:
        print(log_tail)
        print(f"the run failed (exit {measured['returncode']}); files in {work}")
        return 1
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    decoded = collections.Counter()
    with open(decode_log) as f:
        for line in f:
            decoded["train" if f"{os.sep}train{os.sep}" in line else "val"] += 1
    record = {
        "benchmark": "imagenet-rehearsal", "device": args.device,
        "environment": environment(device, args.threads),
        "tree": {"classes": args.classes, "train_per_class": args.train_per_class, "val_per_class": args.val_per_class},
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "config": CONFIG.format(root="<tree>", out="<out>", dataset=dataset, device=args.device), "run": measured,
        "steps": results["timing"]["steps"], "decoded_files": dict(decoded),
        "accuracy_note": "random teacher weights: accuracies are chance, only time and memory are measured",
    }
    gpu = "-gpu" if device.type == "cuda" else ""
    path = args.json or os.path.join(HERE, "results", f"imagenet-rehearsal{gpu}-{datetime.date.today().isoformat()}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    print(f"\n{'step':<42} {'seconds':>9} {'peak GiB':>9}")
    for name, step in record["steps"].items():
        peak = "-" if step["peak_rss_gib"] is None else f"{step['peak_rss_gib']:.2f}"
        print(f"{name:<42} {step['seconds']:>9.1f} {peak:>9}")
    main_peak = max(step["peak_rss_gib"] or 0 for step in record["steps"].values())
    print(f"\nrun: {measured['wall_s']:.0f} s wall; peak resident memory {measured['process_tree_peak_rss_gib']:.2f} GiB "
          f"(process tree; main process {main_peak:.2f} GiB); decoded {dict(decoded)} "
          f"of {args.classes * args.train_per_class} train / {args.classes * args.val_per_class} val files -> {path}")
    if args.keep:
        print(f"working folder kept: {work}")
    else:  # (the generated tree, the run's sets and students: a rehearsal left gigabytes in /tmp each time)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
