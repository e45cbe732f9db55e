"""One-shot prompts on procedural pairs: mIoU of feature matching (FM), FM refined, the baselines, the oracle.

    python docs/experiments/oneshot_refine.py [--pairs 30] [--domains train,texture,lowcontrast]
        [--defender bundled] [--defender-options KEY=VALUE ...] [--tuning-pairs] [--out OUT.json] [--figure OUT.png]
    python docs/experiments/oneshot_refine.py --tune [--pairs 20]

Pairs: ``make_pair(SEED + i, domain)`` (:mod:`ppd.data.oneshot_pairs`), i < ``--pairs``,
scored against the union of the target's instances of the class. Columns: ``fm``
(:func:`ppd.prompts.feature_matching` with its defaults), ``fm+ppd`` (the defender's
refinement of the FM points), ``fm+NAME`` (each refiner of :mod:`ppd.agents.baselines`),
``persam`` (with its cascaded post-refinement), ``persam_points`` (its two points alone),
``gbmseg``, ``fm_oracle`` (FM without its wrong points by the ground truth), ``wrong``
(the fraction of FM points with a wrong label), and with an edit chooser
(:mod:`ppd.oneshot_quality`, the bundled one by default) ``fm+choice`` (its pick among FM
and FM's single edits) and ``fm+ppd+choice`` (its pick among those and the defender's
output: ``ppd bench --protocol oneshot``'s ``fm+ppd:...``).

``--tune`` picks the counts and spacings of FM and GBMSeg on other pairs
(``TUNE_SEED``, disjoint from the measured ones): a small grid per rule, mIoU of SAM on
the points over the three domains, best first.

Measured (bundled model and defender, CPU, 1 thread, 30 pairs per domain; mIoU):

    domain       fm     fm+ppd  random greedy consist mask_cons persam gbmseg oracle  wrong
    train        0.675  0.663   0.661  0.699  0.677   0.704     0.595  0.604  0.774   0.14
    texture      0.373  0.322   0.346  0.343  0.337   0.359     0.308  0.380  0.438   0.27
    clutter      0.229  0.209   0.237  0.269  0.228   0.238     0.192  0.237  0.251   0.20
    lowcontrast  0.097  0.074   0.101  0.131  0.094   0.118     0.086  0.094  0.145   0.38

With ``--defender runs/fm0.2`` (the bundled recipe trained with ``--fm-starts 0.2``),
fm+ppd is 0.619 / 0.338 / 0.196 on train / texture / clutter.

FM takes ~2 ms per pair (images encoded), the defender's refinement 17-330 ms. The
bundled defender was trained on ideal-then-attacked and synthetic coarse sets, not on
FM sets: on FM points it removes about as much good as bad and does not beat FM.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
import torch

import ppd
from ppd.agents.baselines import BASELINES
from ppd.agents.defender import PromptDefender
from ppd.data.oneshot_pairs import make_pair
from ppd.metrics import iou
from ppd.oneshot import remove_wrong_points
from ppd.oneshot_baselines import gbmseg, persam, persam_mask
from ppd.oneshot_quality import choose_edit, load_chooser, refine_with_reference
from ppd.prompts import feature_matching

SEED, TUNE_SEED = 20_000_000, 21_000_000
REFINERS = ("random_drop", "greedy_score", "consistency", "mask_consensus")


def wrong(coords, labels, gt) -> float:
    x, y = np.round(coords[:, 0]).astype(int), np.round(coords[:, 1]).astype(int)
    return float(np.mean(gt[y, x] != (labels == 1)))


def measure(seg, defender, domain: str, n: int, panels: list | None = None, seed: int = SEED,
            chooser=None) -> dict[str, float]:
    vals: dict[str, list[float]] = {}
    refiners = {f"fm+{r}": BASELINES[r](seg) for r in REFINERS}
    if defender is not None:
        refiners["fm+ppd"] = defender
    t_fm, t_ppd, t_choice = [], [], []
    for i in range(n):
        p = make_pair(seed + i, domain)
        img, gt = p.target.image, p.target_mask
        seg.encode(p.reference.image), seg.encode(img)
        if defender is not None:
            defender.record(img)
        t = time.perf_counter()
        coords, labels = feature_matching(seg, p.reference.image, p.ref_mask, img)
        t_fm.append(time.perf_counter() - t)
        out = {"fm": iou(seg.predict(img, coords, labels).masks[0], gt), "wrong": wrong(coords, labels, gt)}
        for name, r in refiners.items():
            t = time.perf_counter()
            res = r.refine(img, coords, labels)
            if name == "fm+ppd":
                t_ppd.append(time.perf_counter() - t)
                if panels is not None and i < 2:
                    from ppd.bench.protocols.oneshot_figures import OneShotPanel

                    panels.append(OneShotPanel(p.reference.image, p.ref_mask, img, gt, (coords, labels),
                                               (res.point_coords, res.point_labels), res.mask, "FM + ppd", domain))
            out[name] = iou(res.mask, gt)
        if chooser is not None:  # the reference choice: FM, its single edits, the refiner's output
            out["fm+choice"] = iou(choose_edit(seg, chooser, p.reference.image, p.ref_mask, img, coords, labels)[2], gt)
            if defender is not None:
                t = time.perf_counter()
                res = refine_with_reference(defender, img, coords, labels, p.reference.image, p.ref_mask, chooser)
                t_choice.append(time.perf_counter() - t)
                out["fm+ppd+choice"] = iou(res.mask, gt)
        c, lab = remove_wrong_points(coords, labels, gt)
        out["fm_oracle"] = iou(seg.predict(img, c, lab).masks[0], gt)
        out["persam"] = iou(persam_mask(seg, p.reference.image, p.ref_mask, img)[0], gt)
        c, lab = persam(seg, p.reference.image, p.ref_mask, img)
        out["persam_points"] = iou(seg.predict(img, c, lab).masks[0], gt)
        c, lab = gbmseg(seg, p.reference.image, p.ref_mask, img)
        out["gbmseg"] = iou(seg.predict(img, c, lab).masks[0], gt)
        for k, v in out.items():
            vals.setdefault(k, []).append(float(v))
    row = {k: float(np.mean(v)) for k, v in vals.items()}
    row["fm_ms"] = 1000 * float(np.median(t_fm))
    if t_ppd:
        row["ppd_ms"] = 1000 * float(np.median(t_ppd))
    if t_choice:
        row["ppd_choice_ms"] = 1000 * float(np.median(t_choice))
    return row


def tune(seg, domains: list[str], n: int) -> dict[str, list]:
    pairs = [make_pair(TUNE_SEED + i, d) for d in domains for i in range(n)]
    out = {}
    for rule, fn, grid in (("fm", feature_matching, dict(n_pos=(1, 3, 5, 8), n_neg=(0, 1, 3, 5), spacing=(0.0625, 0.125, 0.1875))),
                           ("gbmseg", gbmseg, dict(n_pos=(1, 2, 4, 6), n_neg=(0, 1, 3), spacing=(0.125, 0.1875, 0.25)))):
        scores = []
        for combo in itertools.product(*grid.values()):
            kw = dict(zip(grid, combo))
            ious = [iou(seg.predict(p.target.image, *fn(seg, p.reference.image, p.ref_mask, p.target.image, **kw)).masks[0],
                        p.target_mask) for p in pairs]
            scores.append((float(np.mean(ious)), kw))
        scores.sort(key=lambda s: -s[0])
        out[rule] = scores
        print(rule, *(f"  {s:.3f} {kw}" for s, kw in scores[:8]), sep="\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--domains", default="train,texture,lowcontrast")
    ap.add_argument("--defender", default="bundled", help="a ppd train run folder, or bundled")
    ap.add_argument("--defender-options", nargs="*", default=[],
                    help="refine options KEY=VALUE of the defender, as ppd bench's (e.g. max_steps=0)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tune", action="store_true", help="tune FM's and GBMSeg's counts and spacings on the tuning pairs")
    ap.add_argument("--tuning-pairs", action="store_true",
                    help="measure the methods on the tuning pairs (TUNE_SEED) instead of the measured ones")
    ap.add_argument("--chooser", default="bundled",
                    help="edit chooser of the fm+choice and fm+ppd+choice columns (a file or run folder; 'none': "
                    "no such columns)")
    ap.add_argument("--out")
    ap.add_argument("--figure")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    domains = a.domains.split(",")
    if a.tune:
        seg = ppd.load_segmenter(device="cpu")
        res = tune(seg, domains, a.pairs)
    else:
        from ppd.bench.protocols.refine import defender_config

        defender = PromptDefender.load(None if a.defender == "bundled" else a.defender, device="cpu",
                                       config=defender_config(a.defender_options))
        seg = defender.segmenter
        panels: list = []
        res = {}
        for d in domains:
            t = time.time()
            chooser = None if a.chooser == "none" else load_chooser(None if a.chooser == "bundled" else a.chooser)
            res[d] = measure(seg, defender, d, a.pairs, panels, TUNE_SEED if a.tuning_pairs else SEED, chooser)
            print(d, json.dumps({k: round(v, 3) for k, v in res[d].items()}), f"({time.time() - t:.0f} s)", flush=True)
        if a.figure:
            from ppd.bench.protocols.oneshot_figures import oneshot_figure

            oneshot_figure(panels, a.figure)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1, default=str)


if __name__ == "__main__":
    main()
