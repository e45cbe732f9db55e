"""Session-14 experiment script (not part of the package; docs/ppd_experiments.md).

Choosing ``PromptDefender(min_score_gain=...)`` offline. For every scene and prompt
generator of ``ppd.bench.generators``, record the input's and the refined set's IoU and
SAM predicted IoU (unpadded), then score the guard for several margins without
refining again:

    python docs/scripts/s14_score_gain.py collect RUN DOMAIN SCENE_SEED N OUT.json
    python docs/scripts/s14_score_gain.py table OUT.json

RUN: a run folder or ``bundled``. With SCENE_SEED = ppd.bench.generators.GENERATOR_SEED
(10009500) the rows are the generator bench's scenes; session 14 chose the margin on
40 other training-domain scenes (SCENE_SEED 3300000).
"""

import json
import sys

import numpy as np


def collect(run: str, domain: str, seed0: int, n: int, out: str) -> None:
    import torch

    from ppd import NoRefine, PromptDefender
    from ppd.bench.generators import GENERATORS, generator_prompts
    from ppd.data.scenes import ProceduralScenes
    from ppd.metrics import iou

    torch.set_num_threads(1)
    d = PromptDefender.load(None if run == "bundled" else run)
    n0 = NoRefine(d.segmenter)
    scenes = ProceduralScenes(domain, n, seed=seed0)
    rows = []
    for i in range(n):
        s = scenes[i]
        for g in GENERATORS:
            rng = np.random.default_rng([seed0, 0, i])
            gt = s.masks[int(rng.integers(s.num_objects))]
            ps = generator_prompts(g, gt, rng)
            a = n0.refine(s.image, ps.point_coords, ps.point_labels)
            b = d.refine(s.image, ps.point_coords, ps.point_labels)
            rows.append((g, float(iou(a.mask, gt)), float(iou(b.mask, gt)), a.score, b.score))
    with open(out, "w") as f:
        json.dump(rows, f)


def table(path: str) -> None:
    with open(path) as f:
        rows = json.load(f)
    for delta in (None, 0.0, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15):
        gains: dict[str, list[float]] = {}
        for g, iou_in, iou_out, score_in, score_out in rows:
            v = iou_out if delta is None or score_out >= score_in + delta else iou_in
            gains.setdefault(g, []).append(v - iou_in)
        per = {g: round(float(np.mean(v)), 3) for g, v in gains.items()}
        print(f"margin {delta}: mean gain over generators {np.mean(list(per.values())):.4f}", per)


if __name__ == "__main__":
    if sys.argv[1] == "collect":
        collect(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        table(sys.argv[2])
