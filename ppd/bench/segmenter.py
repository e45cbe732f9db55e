"""Segmenter benchmark: interactive mIoU per domain and encode/decode timings.

    python -m ppd.bench.segmenter [--checkpoint FILE] [--scenes 100] [--out FILE.json]

Prints (and optionally saves as JSON) the numbers that go into the model card:

* 1-click (farthest point from the boundary, multimask, best predicted IoU) and
  3-click (+2 corrective clicks by the SAM/RITM rule) mIoU on held-out scenes of every
  domain (``train`` = in-domain, ``alt`` = drawn differently, the rest shifted);
* the negative-click check: after the first click, where the mask wrongly includes a
  region, one negative click at that region's interior is added; reported is the mean
  fraction of that wrong region removed and the share of cases with >= 50 % removed;
* encode time per image, decode time for one prompt set, and 64 prompt sets on one
  image in one batched call vs 64 separate calls (medians).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
from scipy import ndimage

from ppd import load_segmenter
from ppd.cli.common import add_device_arguments
from ppd.data.scenes import DOMAINS, ProceduralScenes
from ppd.metrics import iou
from ppd.pretrain import EVAL_SEED, evaluate_clicks
from ppd.prompts import farthest_click, random_clicks


def negative_click_check(seg, scenes, min_fp_px: int = 30) -> dict:
    removed, cases = [], 0
    for scene in scenes:
        emb = seg.encode(scene.image)
        for gt in scene.masks[:3]:
            ps = farthest_click(gt)
            pred = seg.predict(emb, ps.point_coords, ps.point_labels, multimask=True).masks[0]
            fp = pred & ~gt
            lab, n = ndimage.label(fp)
            if n == 0:
                continue
            sizes = ndimage.sum(fp, lab, range(1, n + 1))
            comp = lab == (int(np.argmax(sizes)) + 1)
            if comp.sum() < min_fp_px:
                continue
            cases += 1
            d = ndimage.distance_transform_edt(np.pad(comp, 1))[1:-1, 1:-1]
            y, x = np.unravel_index(np.argmax(d), d.shape)
            pts = np.concatenate([ps.point_coords, [[x, y]]]).astype(np.float32)
            lab2 = np.concatenate([ps.point_labels, [0]])
            new = seg.predict(emb, pts, lab2).masks[0]
            removed.append(1.0 - (new & comp).sum() / comp.sum())
    return {
        "cases": cases,
        "mean_fraction_removed": float(np.mean(removed)) if removed else float("nan"),
        "share_removed_50pct": float(np.mean(np.asarray(removed) >= 0.5)) if removed else float("nan"),
    }


def timings(seg, repeats: int = 20) -> dict:
    scenes = ProceduralScenes("train", repeats + 2, seed=EVAL_SEED + 777)
    rng = np.random.default_rng(0)
    enc = []
    for i, s in enumerate(scenes):
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
    return {
        "encode_ms": ms(enc),
        "decode_1_ms": ms(one),
        "decode_64_batched_ms": ms(batched),
        "decode_64_per_call_ms": ms(per_call),
        "batched_speedup": round(statistics.median(per_call) / statistics.median(batched), 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="sam2-tiny-synthetic")
    p.add_argument("--checkpoint", default=None)
    add_device_arguments(p, embedding_cache=False)  # it times encoding
    p.add_argument("--scenes", type=int, default=100, help="held-out scenes per domain (default 100)")
    p.add_argument("--domains", default=",".join(DOMAINS), help="comma-separated domains")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    import torch
    from tqdm import tqdm

    seg = load_segmenter(args.model, checkpoint=args.checkpoint, device=args.device, precision=args.precision)
    results: dict = {"model": seg.name, "checkpoint": seg.info.get("checkpoint"), "scenes_per_domain": args.scenes}
    results["machine"] = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, device {seg.device} ({seg.precision})"
    rows = {}
    for d in tqdm(args.domains.split(","), desc="domains"):
        scenes = ProceduralScenes(d, args.scenes, seed=EVAL_SEED + 1000)
        r = evaluate_clicks(seg, scenes, n_clicks=3)
        if d == "train":
            r["negative_click"] = negative_click_check(seg, scenes)
        rows[d] = r
    results["domains"] = rows
    results["timings"] = timings(seg)
    print(f"{'domain':12s} {'objects':>7s} {'mIoU@1':>7s} {'mIoU@2':>7s} {'mIoU@3':>7s}")
    for d, r in rows.items():
        print(f"{d:12s} {r['objects']:7d} {r['miou@1']:7.3f} {r['miou@2']:7.3f} {r['miou@3']:7.3f}")
    if "train" in rows:
        nc = rows["train"]["negative_click"]
        print(
            f"negative click on a wrongly included region ({nc['cases']} cases): "
            f"{100 * nc['mean_fraction_removed']:.1f}% of it removed on average, "
            f">=50% removed in {100 * nc['share_removed_50pct']:.1f}% of cases"
        )
    t = results["timings"]
    print(
        f"encode {t['encode_ms']} ms/image; decode 1 set {t['decode_1_ms']} ms; 64 sets: batched "
        f"{t['decode_64_batched_ms']} ms vs per-call {t['decode_64_per_call_ms']} ms ({t['batched_speedup']}x)"
    )
    print(f"machine: {results['machine']}")
    if args.out:
        from ppd.io import save_json

        save_json(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
