"""How fast is the segmenter: encode time per image, one prompt set, 64 prompt sets in one
batched call against 64 calls?

    python docs/experiments/segmenter_speed.py [--model NAME --checkpoint FILE] [--threads 2] [--repeats 20]

Medians over ``--repeats`` held-out ``train`` scenes (encode, the in-memory cache cleared
before each) and over repeated decodes of random 3-click sets on one image.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from ppd import load_segmenter
from ppd.data.scenes import ProceduralScenes
from ppd.pretrain import EVAL_SEED
from ppd.prompts import random_clicks


def timings(seg, repeats: int = 20) -> dict:
    scenes = ProceduralScenes("train", repeats + 2, seed=EVAL_SEED + 777)
    rng = np.random.default_rng(0)
    enc = []
    for s in scenes:
        seg.clear_cache()
        t = time.perf_counter()
        seg.encode(s.image)
        enc.append(time.perf_counter() - t)
    enc = enc[2:]  # warm-up
    s = scenes[0]
    emb = seg.encode(s.image)
    sets = [random_clicks(s.masks[0], 2, 1, rng) for _ in range(64)]
    coords = np.stack([p.point_coords for p in sets])
    labels = np.stack([p.point_labels for p in sets])
    one, batched, per_call = [], [], []
    for _ in range(3):
        seg.predict(emb, coords, labels)  # warm-up
    for r in range(max(5, repeats // 2)):
        t = time.perf_counter()
        seg.predict(emb, coords[0], labels[0])
        one.append(time.perf_counter() - t)
        t = time.perf_counter()
        seg.predict(emb, coords, labels)
        batched.append(time.perf_counter() - t)
        if r < 5:
            t = time.perf_counter()
            for i in range(64):
                seg.predict(emb, coords[i], labels[i])
            per_call.append(time.perf_counter() - t)
    ms = lambda v: round(1000 * statistics.median(v), 1)  # noqa: E731
    return {"encode_ms": ms(enc), "decode_1_ms": ms(one), "decode_64_batched_ms": ms(batched),
            "decode_64_per_call_ms": ms(per_call)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="sam2-tiny-synthetic")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    seg = load_segmenter(a.model, checkpoint=a.checkpoint, device=a.device)
    t = timings(seg, a.repeats)
    print(f"encode {t['encode_ms']} ms/image; decode 1 set {t['decode_1_ms']} ms; 64 sets: batched "
          f"{t['decode_64_batched_ms']} ms vs per-call {t['decode_64_per_call_ms']} ms "
          f"({t['decode_64_per_call_ms'] / t['decode_64_batched_ms']:.2f}x); {a.threads} torch threads, {seg.device}")


if __name__ == "__main__":
    main()
