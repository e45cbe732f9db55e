"""Does a negative click remove a wrongly included region?

    python docs/experiments/negative_click_check.py [--scenes 30] [--threads 2]

On held-out ``train`` scenes (the first three objects of each): after the first click
(farthest from the boundary, multimask), where the mask wrongly includes a region of at
least 30 px, one negative click goes to that region's interior (its largest component,
the pixel farthest from its edge). Printed: the cases, the mean fraction of the region
the new mask removes, and the share of cases with at least half of it removed.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy import ndimage

from ppd import load_segmenter
from ppd.data.scenes import ProceduralScenes
from ppd.pretrain import EVAL_SEED
from ppd.prompts import farthest_click


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
            new = seg.predict(emb, pts, np.concatenate([ps.point_labels, [0]])).masks[0]
            removed.append(1.0 - (new & comp).sum() / comp.sum())
    return {"cases": cases, "mean_fraction_removed": float(np.mean(removed)) if removed else float("nan"),
            "share_removed_50pct": float(np.mean(np.asarray(removed) >= 0.5)) if removed else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    r = negative_click_check(load_segmenter(), ProceduralScenes("train", a.scenes, seed=EVAL_SEED + 1000))
    print(f"negative click on a wrongly included region ({r['cases']} cases): {100 * r['mean_fraction_removed']:.1f}% "
          f"of it removed on average, >=50% removed in {100 * r['share_removed_50pct']:.1f}% of cases")


if __name__ == "__main__":
    main()
