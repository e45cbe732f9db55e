"""How much faster is the click protocol with all objects of an image in one decoder call
per click than with one call per object?

    python docs/experiments/click_batching_speed.py [--threads 2] [--images 3] [--repeats 3]

Images of 16 objects: four held-out ``clutter`` scenes (256 px) tiled into a 512 x 512
image, the four largest objects of each (``--size`` resamples it). For each image both loops run the whole
20-click protocol (``ppd.bench.protocols.clicks.click_curves``, ``batch_objects`` on and
off), alternating, ``--repeats`` times; printed are the median seconds per image of each,
the ratio, and how much of the batched time is decoding (the rest is the click rule's
distance transforms and the IoUs, the same work in both loops). Both loops give the same
clicks and IoUs up to the decoder's float rounding, which differs with the batch size: at
this size a flipped boundary pixel can move a later click (the largest difference of the
mean curves is printed).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import ppd
from ppd.bench.protocols.clicks import ClicksConfig, click_curves
from ppd.data.scenes import ProceduralScenes


def tiled_images(n: int, size: int = 512) -> list[tuple[np.ndarray, np.ndarray]]:
    scenes = [s for s in ProceduralScenes("clutter", 16 * n, seed=10_000_000 + 50_000) if s.num_objects >= 4]
    out = []
    for k in range(n):
        tiles = scenes[4 * k: 4 * k + 4]
        img = np.zeros((512, 512, 3), np.uint8)
        masks = []
        for t, (y, x) in zip(tiles, [(0, 0), (0, 256), (256, 0), (256, 256)]):
            img[y:y + 256, x:x + 256] = t.image
            for i in np.argsort(-t.masks.sum((1, 2)))[:4]:
                m = np.zeros((512, 512), bool)
                m[y:y + 256, x:x + 256] = t.masks[i]
                masks.append(m)
        masks = np.array(masks)
        if size != 512:  # resampled: nearest neighbour for the masks
            from PIL import Image

            img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
            masks = np.array([np.asarray(Image.fromarray(m).resize((size, size), Image.NEAREST)) for m in masks])
        out.append((img, masks))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=512, help="image side in pixels (the tiles are resampled)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    seg = ppd.load_segmenter()
    images = tiled_images(a.images, a.size)
    times: dict[bool, list[float]] = {True: [], False: []}
    decode, decode_single, diff = [], [], []
    for img, masks in images:
        seg.encode(img)
        ref = None
        for _ in range(a.repeats):
            for batched in (True, False):
                t = time.perf_counter()
                curves, _, _ = click_curves(seg, img, masks, ClicksConfig(batch_objects=batched))
                times[batched].append(time.perf_counter() - t)
                if ref is None:
                    ref = curves
                diff.append(float(np.abs(ref.mean(0) - curves.mean(0)).max()))
        # decoder share of the batched loop: the same decoder calls without the click rule
        emb = seg.encode(img)
        coords = np.zeros((len(masks), 1, 2), np.float32) + 100
        labels = np.ones((len(masks), 1), int)
        t = time.perf_counter()
        for k in range(20):
            seg.predict(emb, coords, labels, multimask=(k == 0))
        decode.append(time.perf_counter() - t)
        t = time.perf_counter()
        for k in range(20):
            for i in range(len(masks)):
                seg.predict(emb, coords[i:i + 1], labels[i:i + 1], multimask=(k == 0))
        decode_single.append(time.perf_counter() - t)
    b, p = statistics.median(times[True]), statistics.median(times[False])
    print(f"{len(images)} images of {a.size} x {a.size} px, 16 objects, 20 clicks, {a.threads} torch threads")
    print(f"batched    {b:.3f} s per image (decoder calls alone {statistics.median(decode):.3f} s)")
    print(f"per-object {p:.3f} s per image (decoder calls alone {statistics.median(decode_single):.3f} s)")
    print(f"speed-up   {p / b:.2f}x (decoder calls alone {statistics.median(decode_single) / statistics.median(decode):.2f}x)")
    print(f"largest difference of the mean IoU curves between the loops: {max(diff):.4f} (decoder rounding "
          "differs with the batch size; a flipped pixel can move a later click)")


if __name__ == "__main__":
    main()
