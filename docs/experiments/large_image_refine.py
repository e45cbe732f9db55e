"""How long does refine take on large images, and does the reduced mask size of the
per-node values (``PromptWorld.mask_max_side``) change its outputs?

Six in-domain scenes (seeds 100-105) and one coarse set each (``coarse_prompts`` with its defaults, seeds 0-5), blown up 1x, 4x and
12x by pixel repetition (256, 1024 and 3072 px a side; the points moved with them);
``PromptDefender.refine`` of the bundled defender, the image encoded first, 2 threads.
Each size runs with ``PromptWorld.mask_max_side`` at its default and off (None: the
per-node values from image-size masks); the outputs of the two
are compared (kept points, labels and the mask's IoU against the blown-up ground truth).

    python docs/experiments/large_image_refine.py
"""
import time

import numpy as np
import torch

from ppd.agents.defender import PromptDefender
from ppd.data.scenes import make_scene
from ppd.envs.world import MASK_MAX_SIDE
from ppd.metrics import iou
from ppd.prompts import coarse_prompts

torch.set_num_threads(2)
d = PromptDefender.load()
for f in (1, 4, 12):
    outputs = {}
    for cap in (MASK_MAX_SIDE, None):
        d.world.mask_max_side = cap
        d.world._outcomes.clear()
        times, outs = [], []
        for k in range(6):
            scene = make_scene(100 + k, "train")
            image = np.repeat(np.repeat(scene.image, f, 0), f, 1)
            gt = np.repeat(np.repeat(scene.masks[0], f, 0), f, 1)
            cp = coarse_prompts(scene.masks[0], np.random.default_rng(k)).prompts
            d.record(image)
            t = time.perf_counter()
            res = d.refine(image, cp.point_coords * f + (f - 1) / 2, cp.point_labels)
            times.append(time.perf_counter() - t)
            outs.append((res.kept.tolist(), res.point_labels.tolist(), round(float(iou(res.mask, gt)), 4)))
        outputs[cap] = outs
        print(f"{image.shape[0]} x {image.shape[1]}, mask_max_side {cap}: refine median {1000 * np.median(times):.0f} ms, "
              f"mean IoU {np.mean([o[2] for o in outs]):.3f}", flush=True)
    print(f"  same outputs: {sum(a == b for a, b in zip(*outputs.values()))} of 6")
