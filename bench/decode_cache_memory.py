"""Resident memory of the decode cache (infer_fast.data.sets.decoded_cache) at ImageNet's val
size: writing N decoded 224^2 images into the cache file, then one pass over it in
evaluation's batches with a tiny model (the pages the pass touches are what counts, not the
model), each way the code can do it.

    python bench/decode_cache_memory.py                  # 50,000 images (7.5 GB on disk), a minute
    python bench/decode_cache_memory.py --n 5000 --dir /tmp

Ways: ``written`` (sets.write_raw_images: the file written batch by batch) against ``mapped``
(the file mapped and filled through the mapping, as the cache was written before); ``released``
(sets.MappedImageSet: in-order batches give their pages back) against ``held`` (the whole file
mapped as one tensor, as the cache was read before). Each way runs in a process of its own,
which samples its resident memory (anonymous and file-backed, /proc/self/status) every 0.1 s.
The images are random bytes: decoding is not measured here (bench_decode.py does that). Linux
only. JSON under bench/results/.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPE = (3, 224, 224)
BATCH = 256  # decoded_cache's batch
EVAL_BATCH = 1000  # an evaluation's (EVAL_MAX_PIXELS caps it at 224^2)


def resident_gib() -> dict:
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {k: int(fields[k].split()[0]) / 2**20 for k in ("VmRSS", "RssAnon", "RssFile")}


class PeakSampler:
    def __init__(self):
        self.peak = {"VmRSS": 0.0, "RssAnon": 0.0, "RssFile": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for k, v in resident_gib().items():
                self.peak[k] = max(self.peak[k], v)
            time.sleep(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        for k, v in resident_gib().items():
            self.peak[k] = max(self.peak[k], v)


def one_way(way: str, path: str, n: int) -> dict:
    """Run one way in this process; its peaks and seconds."""
    import numpy as np
    import torch

    from infer_fast.data.registry import get_spec
    from infer_fast.data.sets import ImageSet, MappedImageSet, write_raw_images
    from infer_fast.teacher import evaluate

    shape = (n,) + SHAPE
    started = time.perf_counter()
    with PeakSampler() as sampler:
        if way in ("written", "mapped"):
            block = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (BATCH,) + SHAPE, dtype=np.uint8))
            batches = (block[: min(BATCH, n - s)] for s in range(0, n, BATCH))
            if way == "written":
                write_raw_images(path, batches, n * int(np.prod(SHAPE)))
            else:
                out = np.memmap(path, dtype=np.uint8, mode="w+", shape=shape)
                for s, images in zip(range(0, n, BATCH), batches):
                    out[s:s + images.shape[0]] = images.numpy()
                out.flush()
                del out
        else:
            spec, labels = get_spec("imagenet"), torch.zeros(n, dtype=torch.int64)
            split = (MappedImageSet(spec, path, shape, labels, "val") if way == "released" else
                     ImageSet(spec, torch.from_numpy(np.memmap(path, dtype=np.uint8, mode="c", shape=shape)), labels, "val"))
            model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 1000))
            evaluate(model, split, EVAL_BATCH, "cpu")
    return {"way": way, "images": n, "seconds": round(time.perf_counter() - started, 1),
            "peak_gib": {k: round(v, 2) for k, v in sampler.peak.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000, help="images (default: ImageNet's val split, 50,000)")
    parser.add_argument("--dir", help="where the cache file goes (default: a temporary folder; needs n x 150 KB)")
    parser.add_argument("--json", help="output (default bench/results/decode-cache-memory-<date>.json)")
    parser.add_argument("--way", help=argparse.SUPPRESS)  # (a child process: one way)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.way:
        print(json.dumps(one_way(args.way, args.path, args.n)))
        return 0
    from bench_ops import environment  # noqa: E402 (bench/ is on the path when run as a script)
    import torch

    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        path = os.path.join(work, "cache.u8")
        for way in ("mapped", "written", "held", "released"):  # (each read way reads the file "written" left)
            child = subprocess.run([sys.executable, __file__, "--way", way, "--path", path, "--n", str(args.n)],
                                   capture_output=True, text=True, check=True)
            rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(f"{way:>9}: {rows[-1]['seconds']:6.1f} s, peak resident {rows[-1]['peak_gib']['VmRSS']:.2f} GiB "
                  f"(anonymous {rows[-1]['peak_gib']['RssAnon']:.2f}, file-backed {rows[-1]['peak_gib']['RssFile']:.2f})",
                  flush=True)
    record = {"benchmark": "decode-cache-memory", "environment": environment(torch.device("cpu"), torch.get_num_threads()),
              "shape": list(SHAPE), "write_batch": BATCH, "eval_batch": EVAL_BATCH, "results": rows}
    out = args.json or os.path.join(HERE, "results", f"decode-cache-memory-{datetime.date.today().isoformat()}.json")
    with open(out, "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
