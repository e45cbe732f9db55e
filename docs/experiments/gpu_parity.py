"""Does the bundled defender refine the same on CUDA as on CPU, in fp32 and in bf16, and how fast?

Per setting: median refine time (image already encoded, as the defense bench times it),
mean IoU of refined coarse sets against ground truth, and agreement with CPU (mask IoU
and identical kept points). Then a cProfile of refine on CUDA (bf16), top 25 by own time.

    python docs/experiments/gpu_parity.py --out OUT_DIR
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ppd.agents.defender import PromptDefender
from ppd.data.scenes import ProceduralScenes
from ppd.metrics import iou
from ppd.prompts import coarse_prompts
from ppd.segmenter import load_segmenter


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=20)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    out = Path(args.out)
    scenes = ProceduralScenes("train", args.scenes, seed=881_000)
    rng = np.random.default_rng(0)
    sets = [(s.image, s.masks[0], coarse_prompts(s.masks[0], rng).prompts) for s in scenes]
    w = ProceduralScenes("train", 1, seed=991_000)[0]
    warm = (w.image, w.masks[0], coarse_prompts(w.masks[0], rng).prompts)
    settings = [("cpu", "fp32")] + ([("cuda", "fp32"), ("cuda", "bf16")] if torch.cuda.is_available() else [])
    results, ref = {}, None
    for device, precision in settings:
        d = PromptDefender.load(segmenter=load_segmenter(device=device, precision=precision), device=device)
        times, quality, outs = [], [], []
        w_image, _, w_ps = warm
        d.refine(w_image, w_ps.point_coords, w_ps.point_labels)  # warm-up (CUDA kernels) on another scene
        for image, gt, ps in sets:
            d.record(image)  # encode first: refine time only (as the defense bench)
            t = time.perf_counter()
            r = d.refine(image, ps.point_coords, ps.point_labels)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(1000 * (time.perf_counter() - t))
            quality.append(float(iou(r.mask, gt)))
            outs.append(r)
        row = {"refine_ms_median": statistics.median(times), "refined_iou": float(np.mean(quality))}
        if ref is None:
            ref = outs
        else:
            row["mask_iou_vs_cpu_mean"] = float(np.mean([iou(a.mask, b.mask) for a, b in zip(ref, outs)]))
            row["mask_iou_vs_cpu_min"] = float(np.min([iou(a.mask, b.mask) for a, b in zip(ref, outs)]))
            row["same_points_as_cpu"] = int(sum(np.array_equal(a.kept, b.kept) and np.array_equal(a.point_labels, b.point_labels) for a, b in zip(ref, outs)))
        results[f"{device}-{precision}"] = row
        print(f"{device}-{precision}: {row}", flush=True)
        if device == "cuda" and precision == "bf16":
            d = PromptDefender.load(segmenter=load_segmenter(device=device, precision=precision), device=device)
            d.refine(w_image, w_ps.point_coords, w_ps.point_labels)
            for image, _gt, _ps in sets:
                d.record(image)
            prof = cProfile.Profile()
            prof.enable()
            for image, _gt, ps in sets:  # a fresh defender: no decode is cached yet
                d.refine(image, ps.point_coords, ps.point_labels)
            torch.cuda.synchronize()
            prof.disable()
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
            (out / "refine_cuda_profile.txt").write_text(buf.getvalue())
    results["machine"] = f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}, {torch.get_num_threads()} torch threads"
    (out / "gpu_parity.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
