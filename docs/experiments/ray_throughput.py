"""Does ``ppd bench --ray`` scale: throughput of 2 Ray workers with 1 thread each versus 1?

    python docs/experiments/ray_throughput.py [--images 24] [--protocol clicks]

Runs the same benchmark (the bundled model, ``--images`` held-out ``clutter`` scenes, one
protocol) three times in fresh folders: serially with 1 torch thread, and on a local Ray
with 1 worker and with 2 workers of 1 thread each. Printed: wall time of each run (Ray's
start-up and the workers' model loading included) and the steady-state throughput, units
finished per second between the first and the last finished unit (start-up excluded), and
whether the three runs gave identical results.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from ppd.bench.config import BenchConfig
from ppd.bench.runner import run_bench
from ppd.bench.schema import COLUMNS
from ppd.bench.store import read_results


def timed_run(out: Path, images: int, protocol: str, **kw) -> tuple[float, float]:
    cfg = BenchConfig(data=["clutter=procedural:clutter"], protocols=[protocol], out=str(out), sample=images,
                      threads=1, bootstrap=10, **kw)
    stamps: list[float] = []

    def progress(total, done):
        return lambda unit, result: stamps.append(time.perf_counter())

    t = time.perf_counter()
    run_bench(cfg, progress)
    wall = time.perf_counter() - t
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return wall, steady


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--protocol", default="clicks")
    a = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="ray_throughput_"))
    runs = {"serial": {}, "ray, 1 worker": {"ray": True, "workers": 1}, "ray, 2 workers": {"ray": True, "workers": 2}}
    frames, rates = {}, {}
    for name, kw in runs.items():
        out = root / name.replace(" ", "_").replace(",", "")
        wall, steady = timed_run(out, a.images, a.protocol, **kw)
        rates[name] = steady
        frames[name] = read_results(out).sort_values(list(COLUMNS[:-1])).reset_index(drop=True)
        print(f"{name:15s} wall {wall:6.1f} s   steady {steady:.2f} units/s")
    print(f"2 workers / 1 worker (steady throughput): {rates['ray, 2 workers'] / rates['ray, 1 worker']:.2f}x")
    same = all(frames["serial"].equals(f) for f in frames.values())
    print(f"identical results: {same}")


if __name__ == "__main__":
    main()
