"""How much can a refiner that only removes or relabels the given feature-matching points gain?

    python docs/experiments/oneshot_refiner_ceiling.py [--pairs 30] [--domains train,texture,clutter] [--tune]
        [--threads 2]

On the one-shot pairs of ``oneshot_refine.py`` (``make_pair(SEED + i, domain)``;
``--tune``: the disjoint ``TUNE_SEED`` pairs), SAM's mIoU from the FM points, and from three
ground-truth oracles on them: ``remove`` (the wrong-label points dropped, the oracle of
``ppd bench --protocol oneshot``), ``relabel`` (their labels flipped) and ``search`` (the
ground truth's greedy search over removals and label flips of any point, right or wrong,
:func:`ppd.oneshot.search_edit_oracle`). A refiner of the given points (the defender, every baseline of
:mod:`ppd.agents.baselines`) only removes or relabels, so ``search`` is what such a
refiner can reach, as far as a greedy search finds.

Measured (bundled model, CPU, 1 thread, 30 pairs per domain, mIoU):

    pairs     domain   fm     remove  relabel  search  wrong
    measured  train    0.675  0.774   0.777    0.906   0.14
    measured  texture  0.373  0.438   0.595    0.724   0.27
    measured  clutter  0.229  0.251   0.286    0.566   0.20
    tuning    train    0.610  0.706   0.688    0.816   0.13
    tuning    texture  0.444  0.570   0.676    0.794   0.27
    tuning    clutter  0.364  0.438   0.460    0.597   0.21

Fixing every wrong point gains FM + 0.08 to 0.10 in-domain, but it is not the limit:
dropping or flipping right points that SAM handles badly is worth as much again
(``search``: +0.21 to +0.23 in-domain, +0.23 to +0.35 on the shifted domains). The room of
a refiner of FM's points is large; what it lacks is a way to tell, without the ground
truth, which edit helps. Off the training domain relabelling is worth more than
removing (texture: +0.22 against +0.07).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

import ppd
from ppd.data.oneshot_pairs import make_pair
from ppd.metrics import iou
from ppd.oneshot import mask_at_points, remove_wrong_points, search_edit_oracle
from ppd.prompts import feature_matching

SEED, TUNE_SEED = 20_000_000, 21_000_000  # as oneshot_refine.py


def right_labels(coords: np.ndarray, labels: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per point: does its label agree with the ground truth at its pixel?"""
    return mask_at_points(gt, coords) == (labels == 1)


def measure(seg, domain: str, n: int, seed: int) -> dict[str, float]:
    vals: dict[str, list[float]] = {"fm": [], "remove": [], "relabel": [], "search": [], "wrong": []}
    for i in range(n):
        p = make_pair(seed + i, domain)
        img, gt = p.target.image, p.target_mask
        coords, labels = feature_matching(seg, p.reference.image, p.ref_mask, img)
        right = right_labels(coords, labels, gt)
        emb = seg.encode(img)

        def score(c: np.ndarray, lab: np.ndarray) -> float:
            return float(iou(seg.predict(emb, c, lab).masks[0], gt))

        vals["fm"].append(score(coords, labels))
        vals["remove"].append(score(*remove_wrong_points(coords, labels, gt)))
        vals["relabel"].append(score(coords, np.where(right, labels, 1 - labels)))
        vals["search"].append(float(iou(search_edit_oracle(seg, emb, coords, labels, gt)[2], gt)))
        vals["wrong"].append(float(1 - right.mean()))
    return {k: float(np.mean(v)) for k, v in vals.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--domains", default="train,texture,clutter")
    ap.add_argument("--tune", action="store_true", help="the tuning pairs instead of the measured ones")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    seg = ppd.load_segmenter(device="cpu")
    print(f"{'domain':12s} {'fm':>7s} {'remove':>7s} {'relabel':>7s} {'search':>7s} {'wrong':>7s}")
    for domain in a.domains.split(","):
        r = measure(seg, domain, a.pairs, TUNE_SEED if a.tune else SEED)
        print(f"{domain:12s} {r['fm']:7.3f} {r['remove']:7.3f} {r['relabel']:7.3f} {r['search']:7.3f} "
              f"{r['wrong']:7.2f}", flush=True)


if __name__ == "__main__":
    main()
