"""Does a run's wrong-label network alone, without the defender's rollout, clean up one-shot
(feature-matching) points?

    python docs/experiments/oneshot_label_filter_only.py --run RUN [--pairs 30] [--domains train,texture,clutter]
        [--thresholds 0.3,0.4,0.5,0.6,0.7,0.8,0.9] [--tune] [--threads 2]

Per pair (``make_pair(SEED + i, domain)`` as ``oneshot_refine.py``; ``--tune``: the
disjoint ``TUNE_SEED`` pairs, where a threshold is chosen), the FM points are scored by
:meth:`PromptDefender.wrong_label_probability` (the run's label filter, else its label
head; no rollout), the points above each threshold are dropped (the least suspect one
stays when all are above it), and SAM's mask of the rest is scored. Also the AUROC of the
probability for the points' wrong labels, pooled over the pairs.

Measured (CPU, 2 threads; mIoU over 30 pairs; FM 0.675 / 0.373 / 0.229 on train / texture /
clutter, FM 0.610 on the train tuning pairs):

    run      tuning pairs (train): best threshold -> mIoU   measured pairs at that threshold: train / texture / clutter   AUROC train / texture / clutter
    fm0.2    0.8 -> 0.660                                   0.717 / 0.352 / 0.213                                          0.887 / 0.807 / 0.758
    fm1      0.7 -> 0.663                                   0.679 / 0.352 / 0.182                                          0.894 / 0.791 / 0.712
    bundled  0.6 or 0.9 (tied) -> 0.640                     0.616 / 0.347 / 0.130 (at 0.9: 0.695 / 0.363 / 0.215)         0.888 / 0.810 / 0.784

(``fm0.2``: the bundled recipe with ``--fm-starts 0.2``; ``fm1``: ``--fm-starts 1.0
--attacker-steps 0``; commands in docs/benchmarks.md.) In-domain the networks rank wrong
FM points well (AUROC ~0.89), and the filter alone of ``fm0.2`` is above every baseline
there (greedy 0.699, mask consensus 0.704); on the shifted domains it costs IoU.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from ppd.agents.defender import PromptDefender
from ppd.data.oneshot_pairs import make_pair
from ppd.metrics import iou
from ppd.metrics.uncertainty import uncertainty_auroc
from ppd.prompts import feature_matching

SEED, TUNE_SEED = 20_000_000, 21_000_000  # as oneshot_refine.py


def measure(defender: PromptDefender, domain: str, n: int, seed: int, thresholds: list[float]) -> dict:
    seg = defender.segmenter
    scores = {t: [] for t in thresholds}
    fm, wrong, prob = [], [], []
    for i in range(n):
        p = make_pair(seed + i, domain)
        img, gt = p.target.image, p.target_mask
        coords, labels = feature_matching(seg, p.reference.image, p.ref_mask, img)
        x, y = np.round(coords[:, 0]).astype(int), np.round(coords[:, 1]).astype(int)
        wrong += list(gt[y, x] != (labels == 1))
        pr = defender.wrong_label_probability(img, coords, labels)
        prob += list(pr)
        emb = seg.encode(img)
        fm.append(iou(seg.predict(emb, coords, labels).masks[0], gt))
        for t in thresholds:
            keep = pr <= t
            if not keep.any():
                keep[np.argmin(pr)] = True
            scores[t].append(iou(seg.predict(emb, coords[keep], labels[keep]).masks[0], gt))
    return {"fm": float(np.mean(fm)), "auroc": uncertainty_auroc(np.array(prob), np.array(wrong)),
            **{t: float(np.mean(v)) for t, v in scores.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a ppd train run folder, or bundled")
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--domains", default="train,texture,clutter")
    ap.add_argument("--thresholds", default="0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    ap.add_argument("--tune", action="store_true", help="the tuning pairs instead of the measured ones")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    defender = PromptDefender.load(None if a.run == "bundled" else a.run, device="cpu")
    thresholds = [float(t) for t in a.thresholds.split(",")]
    for domain in a.domains.split(","):
        row = measure(defender, domain, a.pairs, TUNE_SEED if a.tune else SEED, thresholds)
        cells = "  ".join(f"{t:.1f}: {row[t]:.3f}" for t in thresholds)
        print(f"{domain:12s} fm {row['fm']:.3f}  auroc {row['auroc']:.3f}  dropped above  {cells}")


if __name__ == "__main__":
    main()
