"""Does `ppd train --data FOLDER` train as well as the same scenes drawn in memory?

    python docs/experiments/train_on_folder_vs_memory.py --work DIR [--scenes 200] [--seed 0]
        [--rounds 1] [--attacker-steps 2500] [--defender-steps 7500] [--fm-starts 0.2] [--bench-images 40]

Writes the ``--scenes`` procedural training scenes a default run draws (the training
domain, the run's seed) to ``DIR/scenes/images/NNNN.png`` and ``masks/NNNN.png``
(8-bit instance ids), trains one run on them with ``--data DIR/scenes --eval-data
procedural:train`` (all of them trained on, the same held-out scenes as the default)
and one with the default data, both with one torch thread side by side, then measures
both defenders with ``ppd bench --protocol refine`` on held-out procedural scenes of the
training domain. Prints each run's held-out numbers (its metrics.json) and the bench's
mean IoU with intervals.

The scenes' pixels and masks are the same in both runs; what differs is the one-shot
references of the FM start states: a procedural scene's reference is an instance of its
object's class, a folder has no classes, so its reference is another image's largest
object (``ppd.data.references``). With ``--fm-starts 0`` the two runs train
identically (``tests/agents/test_train_data.py`` checks this on a small folder).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ppd.data.scenes import TRAIN_DOMAIN, ProceduralScenes


def write_scenes(root: Path, n: int, seed: int) -> Path:
    """The training scenes of seed ``seed`` as an images/ + masks/ folder."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    for i, scene in enumerate(ProceduralScenes(TRAIN_DOMAIN, n, seed=seed * 1_000_000 + 500_000)):
        ids = np.zeros(scene.image.shape[:2], np.uint8)
        for k, m in enumerate(scene.masks):
            ids[m] = k + 1
        Image.fromarray(scene.image).save(root / "images" / f"{i:04d}.png")
        Image.fromarray(ids).save(root / "masks" / f"{i:04d}.png")
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", required=True, help="folder for the scenes, the two runs and the bench")
    p.add_argument("--scenes", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--attacker-steps", type=int, default=2500)
    p.add_argument("--defender-steps", type=int, default=7500)
    p.add_argument("--fm-starts", type=float, default=0.2)
    p.add_argument("--bench-images", type=int, default=40)
    args = p.parse_args()
    work = Path(args.work)
    folder = write_scenes(work / "scenes", args.scenes, args.seed)
    common = ["--seed", str(args.seed), "--rounds", str(args.rounds), "--attacker-steps", str(args.attacker_steps),
              "--defender-steps", str(args.defender_steps), "--scenes", str(args.scenes), "--filter-scenes", "0",
              "--threads", "1", "--fm-starts", str(args.fm_starts)]
    ppd = [sys.executable, "-c", "import sys; from ppd.cli import main; sys.exit(main())"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {"memory": work / "memory", "folder": work / "folder"}
    procs = [subprocess.Popen([*ppd, "train", "--out", str(runs["memory"]), *common], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             subprocess.Popen([*ppd, "train", "--out", str(runs["folder"]), "--data", str(folder),
                               "--eval-data", "procedural:train", *common], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    if any(proc.wait() for proc in procs):
        sys.exit("a training run failed: rerun it by hand to see why")
    keys = ("coarse_iou", "defended_coarse_iou", "attacked_iou", "defended_attacked_iou", "refine_coarse_iou")
    print("held-out training-domain scenes (each run's metrics.json):")
    print("  run     " + " ".join(f"{k:>22s}" for k in keys) + "   wall s")
    for name, run in runs.items():
        m = json.loads((run / "metrics.json").read_text())
        print(f"  {name:7s} " + " ".join(f"{m['final'][k]:22.3f}" for k in keys) + f"   {m['wall_time_s']:.0f}")
    bench = work / "bench"
    subprocess.run([*ppd, "bench", "--data", "train=procedural:train", "--protocol", "refine", "--sample",
                    str(args.bench_images), "--defender", str(runs["memory"]), str(runs["folder"]),
                    "--baselines", "no_refine", "--threads", "2", "--out", str(bench)], env={**os.environ},
                   check=True, stdout=subprocess.DEVNULL)
    import pandas as pd

    rows = pd.read_parquet(bench / "results.parquet")
    iou = rows[rows.metric == "iou"].groupby("method").value.agg(["mean", "count"])
    print("ppd bench --protocol refine, held-out procedural training-domain scenes:")
    print(iou.to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
