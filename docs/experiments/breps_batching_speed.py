"""How much faster is the BREPS box attack with all objects and both directions of an
image in one decoder forward / backward per step than with one object and direction at a
time?

    python docs/experiments/breps_batching_speed.py [--threads 1] [--images 2] [--repeats 3]
        [--steps 50] [--size 512] [--device cpu]

Images of 16 objects: four held-out ``clutter`` scenes (256 px) tiled into a 512 x 512
image, the four largest objects of each (``--size`` resamples it), as
``click_batching_speed.py``. On each image both loops run the whole box attack
(:func:`ppd.robustness.breps.box_attack`, ``batch`` on and off: 32 rows per step, or 32
optimisations of one row), alternating, ``--repeats`` times. Printed: the median wall and
CPU seconds per image of each, their ratio, the seconds per object, and the largest
difference of IoU-Min / IoU-Max between the loops (Adam is elementwise and the decoder's
rows independent, so they differ only by the decoder's float rounding, which differs
with the batch size). CPU seconds are the process's, less disturbed by other processes
on a shared machine than wall time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import ppd
from ppd.robustness.breps import box_attack
from click_batching_speed import tiled_images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--size", type=int, default=512, help="image side in pixels (the tiles are resampled)")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    seg = ppd.load_segmenter(device=a.device)
    images = tiled_images(a.images, a.size)
    wall: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}
    diff = []
    n_obj = []
    for img, masks in images:
        emb = seg.encode(img)
        n_obj.append(len(masks))
        box_attack(seg, emb, masks, steps=2)  # warm-up (allocator, kernels)
        got = {}
        for _ in range(a.repeats):
            for batched in (True, False):
                if a.device != "cpu":
                    torch.cuda.synchronize()
                t, c = time.perf_counter(), time.process_time()
                got[batched] = box_attack(seg, emb, masks, steps=a.steps, batch=batched)
                if a.device != "cpu":
                    torch.cuda.synchronize()
                wall[batched].append(time.perf_counter() - t)
                cpu[batched].append(time.process_time() - c)
            diff.append(max(np.abs(got[True].iou_min - got[False].iou_min).max(),
                            np.abs(got[True].iou_max - got[False].iou_max).max()))
    n = statistics.mean(n_obj)
    print(f"{len(images)} images of {a.size} x {a.size} px, {n:.0f} objects each (x 2 directions), "
          f"{a.steps} steps, device {a.device}, {a.threads} torch threads")
    for batched, name in ((True, "batched   "), (False, "one by one")):
        w, c = statistics.median(wall[batched]), statistics.median(cpu[batched])
        print(f"{name} {w:.2f} s wall ({w / n:.3f} s per object), {c:.2f} s CPU per image")
    print(f"speed-up   {statistics.median(wall[False]) / statistics.median(wall[True]):.2f}x wall, "
          f"{statistics.median(cpu[False]) / statistics.median(cpu[True]):.2f}x CPU")
    print(f"largest difference of IoU-Min / IoU-Max between the loops: {max(diff):.4f}")


if __name__ == "__main__":
    main()
