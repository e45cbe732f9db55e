"""How does refine do on large prompt sets, with more points than training drew (its
coarse sets have 3-16)? Ten in-domain scenes (seeds 300-309), one coarse set each
(``coarse_prompts`` with its default noise and N points, rng seed = scene index), for N in
16, 32, 64, 128; mean IoU of SAM2's mask for the input, the bundled defender's
``refine`` (library defaults) and ``GreedyScoreFilter``, and refine's median time
(2 threads, image encoded first).

    python docs/experiments/many_points_refine.py [--scenes 10]
"""
import argparse
import time

import numpy as np
import torch

from ppd.agents.baselines import GreedyScoreFilter
from ppd.agents.defender import PromptDefender
from ppd.data.scenes import make_scene
from ppd.metrics import iou
from ppd.prompts import coarse_prompts

ap = argparse.ArgumentParser()
ap.add_argument("--scenes", type=int, default=10)
a = ap.parse_args()
torch.set_num_threads(2)
d = PromptDefender.load()
greedy = GreedyScoreFilter(d.segmenter)
for n in (16, 32, 64, 128):
    cols, times = {"input": [], "ppd": [], "greedy": []}, []
    for k in range(a.scenes):
        scene = make_scene(300 + k, "train")
        cp = coarse_prompts(scene.masks[0], np.random.default_rng(k), n_points=n).prompts
        gt = scene.masks[0]
        d.record(scene.image)
        t = time.perf_counter()
        res = d.refine(scene.image, cp.point_coords, cp.point_labels)
        times.append(time.perf_counter() - t)
        cols["ppd"].append(iou(res.mask, gt))
        cols["input"].append(iou(d.segmenter.predict(scene.image, cp.point_coords, cp.point_labels).masks[0], gt))
        cols["greedy"].append(iou(greedy.refine(scene.image, cp.point_coords, cp.point_labels).mask, gt))
    print(f"{n:4d} points: " + ", ".join(f"{c} {np.mean(v):.3f}" for c, v in cols.items())
          + f"; refine median {1000 * np.median(times):.0f} ms", flush=True)
