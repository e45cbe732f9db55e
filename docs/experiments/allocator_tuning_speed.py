"""How much faster is the mask decoder with ppd's glibc allocator tuning (:mod:`ppd.runtime`)
than with glibc's defaults, and how many page faults does the tuning remove?

    python docs/experiments/allocator_tuning_speed.py [--batches 1,9,72] [--rounds 3] [--threads 2]

Each side is a fresh worker process (``PPD_MALLOC_TUNING=0`` for the glibc defaults,
``1`` for the tuning), started in alternation over ``--rounds`` so that a changing
machine load hits both alike. A worker loads the segmenter, encodes one procedural
scene and times ``Segmenter.predict`` on B prompt sets of 8 points (the image already
encoded) for each B in ``--batches``. Reported: the median over rounds of the ms per
prompt set, the speed-up, and the minor page faults per call (what the tuning removes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

from ppd.cli.common import add_threads_argument, apply_threads
from ppd.runtime import ENV_VAR


def worker(batches: list[int], reps: int, model: str | None, checkpoint: str | None) -> dict[int, tuple[float, float]]:
    """(ms per prompt set, minor page faults per call) of ``Segmenter.predict`` for each
    batch size, in this process."""
    import resource

    from ppd.data.scenes import ProceduralScenes
    from ppd.models import BUNDLED_NAME
    from ppd.segmenter import load_segmenter

    seg = load_segmenter(model or BUNDLED_NAME, checkpoint=checkpoint, device="cpu")
    scene = ProceduralScenes("train", 1, seed=5)[0]
    emb = seg.encode(scene.image)
    h, w = emb.orig_hw
    out = {}
    for b in batches:
        rng = np.random.default_rng(b)
        coords = (rng.uniform(0, 1, (b, 8, 2)) * [w, h]).astype(np.float32)
        labels = rng.integers(0, 2, (b, 8))
        for _ in range(3):
            seg.predict(emb, coords, labels)
        n = max(reps, 64 // b)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = time.perf_counter()
        for _ in range(n):
            seg.predict(emb, coords, labels)
        dt = time.perf_counter() - t
        out[b] = (dt / n / b * 1000, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / n)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="1,9,72", help="prompt sets per decoder call, comma separated (default 1,9,72)")
    p.add_argument("--rounds", type=int, default=3, help="worker pairs, alternating (default 3)")
    p.add_argument("--reps", type=int, default=5, help="timed calls per batch size and worker, at least (default 5)")
    p.add_argument("--model", default=None, help="segmenter name (default: the bundled model)")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: the bundled model's)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    add_threads_argument(p)
    args = p.parse_args(argv)
    apply_threads(p, args)
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        p.error(f"--batches must be comma-separated integers, got {args.batches!r}")
    if not batches or min(batches) < 1 or args.rounds < 1 or args.reps < 1:
        p.error("--batches, --rounds and --reps must be >= 1")
    if args.worker:
        print(json.dumps(worker(batches, args.reps, args.model, args.checkpoint)))
        return 0
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--batches", args.batches,
           "--reps", str(args.reps), "--threads", str(args.threads)]
    cmd += ["--model", args.model] if args.model else []
    cmd += ["--checkpoint", args.checkpoint] if args.checkpoint else []
    sides = {"glibc default": "0", "tuned": "1"}
    times: dict[str, list[dict[str, list[float]]]] = {side: [] for side in sides}
    for r in range(args.rounds):
        for side, flag in sides.items():
            res = subprocess.run(cmd, env={**os.environ, ENV_VAR: flag}, capture_output=True, text=True)
            if res.returncode != 0:
                sys.stderr.write(res.stderr)
                return res.returncode
            times[side].append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds} {side}: done", file=sys.stderr)
    import torch

    print(f"Segmenter.predict, ms per prompt set (8 points), median of {args.rounds} rounds; "
          f"{args.threads or torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}")
    print(f"{'sets/call':>9s} {'glibc default':>14s} {'tuned':>8s} {'speed-up':>8s}   page faults per call, default -> tuned")
    for b in batches:
        d, fd = np.median([t[str(b)] for t in times["glibc default"]], axis=0)
        t, ft = np.median([t[str(b)] for t in times["tuned"]], axis=0)
        print(f"{b:9d} {d:14.2f} {t:8.2f} {d / t:7.2f}x   {fd:.0f} -> {ft:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
