"""Can a learned mask-quality score choose a better edit of the FM points than SAM's own score?

    python docs/experiments/oneshot_learned_selection.py [--fit-pairs 500] [--pairs 150]
        [--domains train,clutter,texture] [--without colour,shape,edges] [--defender bundled]
        [--save FILE] [--threads 1]

The ground truth's search over removals and flips of FM's points reaches far above FM
(``oneshot_refiner_ceiling.py``), while every refiner without the ground truth stays near
FM. This measures :mod:`ppd.oneshot_quality`'s :class:`EditChooser`, the score that says
which edit helps: fitted on ``--fit-pairs`` procedural ``train`` pairs of their own seed
range (``FIT_SEED``), it picks among FM, FM without each point and FM with each label
flipped (with ``--defender``, also the defender's output: what
``ppd bench --protocol oneshot`` runs as ``fm+ppd:...``) on ``--pairs`` fresh pairs per
domain (``EVAL_SEED``, disjoint from the fitting, tuning and measured pairs). Printed:
mIoU of FM, of the chosen candidate (with the 95% bootstrap interval of chosen - FM over
the pairs), of the defender alone, and of the ground truth's pick among the same
candidates. ``--without`` zeroes groups of features (``colour``: the colour_* ones,
``shape``: area ratio, solidity, circularity; ``edges``: boundary gradient) in fitting
and choosing. ``--save`` writes the fitted chooser (the bundled
``ppd/assets/defender/edit_chooser.json`` is ``--fit-pairs 500 --pairs 0 --save ...``).

Measured (bundled model, CPU, 1 thread, 14 min; fitted on 500 pairs, 150 pairs per
domain; ``--defender bundled --save ppd/assets/defender/edit_chooser.json``):

    domain         fm chosen     [chosen - fm] defender   best  picks
    train       0.617  0.766 [+0.109, +0.196]    0.585  0.785  {'fm': 72, 'defender': 7, 'edit': 71}
    clutter     0.275  0.391 [+0.084, +0.152]    0.234  0.429  {'fm': 41, 'defender': 7, 'edit': 102}
    texture     0.398  0.615 [+0.169, +0.268]    0.388  0.649  {'fm': 50, 'defender': 12, 'edit': 88}

``--without colour,shape,edges`` (9 min): train 0.675 [+0.024, +0.098], clutter 0.297
[-0.007, +0.052], texture 0.466 [+0.038, +0.103]: the reference's pixel colour, at full
resolution where the patch maps are 16 x 16, carries most of the gain.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from tqdm import tqdm

import ppd
from ppd.agents.defender import PromptDefender
from ppd.data.oneshot_pairs import make_pair
from ppd.oneshot import feature_matching
from ppd.oneshot_quality import FEATURES, EditChooser, candidate_table

FIT_SEED, EVAL_SEED = 23_000_000, 24_000_000  # disjoint from oneshot_refine.py's 20M / 21M
GROUPS = {"colour": [f for f in FEATURES if f.startswith("colour")],
          "shape": ["log_area_ratio", "solidity_diff", "circularity_diff", "solidity_gap", "circularity_gap",
                    "log_area_ratio_per_part"],
          "edges": ["boundary_gradient"]}


def table(seg, seed: int, domain: str, defender=None) -> tuple[np.ndarray, np.ndarray]:
    """Features and IoUs of FM's single edits on pair ``seed`` (the defender's output last)."""
    p = make_pair(seed, domain)
    coords, labels = feature_matching(seg, p.reference.image, p.ref_mask, p.target.image)
    extra = []
    if defender is not None:
        res = defender.refine(p.target.image, coords, labels)
        extra = [(res.point_coords, res.point_labels)]
    return candidate_table(seg, p.reference.image, p.ref_mask, p.target.image, p.target_mask, coords, labels, extra)


def interval(d: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    means = np.random.default_rng(seed).choice(d, (n, len(d))).mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fit-pairs", type=int, default=500)
    ap.add_argument("--pairs", type=int, default=150)
    ap.add_argument("--domains", default="train,clutter,texture")
    ap.add_argument("--without", default="", help="feature groups to leave out: " + ",".join(GROUPS))
    ap.add_argument("--defender", help="add its output as a candidate ('bundled' or a run folder)")
    ap.add_argument("--save", help="write the fitted chooser here (JSON)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    seg = ppd.load_segmenter(device="cpu")
    off = [FEATURES.index(f) for g in filter(None, a.without.split(",")) for f in GROUPS[g]]

    def masked(t):
        x = t[0].copy()
        x[:, off] = 0.0
        return x, t[1]

    fit = [masked(table(seg, FIT_SEED + i, "train")) for i in tqdm(range(a.fit_pairs), desc="fit pairs")]
    chooser = EditChooser.fit(fit, meta={"fit_pairs": f"make_pair({FIT_SEED} + i, 'train'), i < {a.fit_pairs}",
                                         "segmenter": seg.name, "without": a.without})
    if a.save:
        print(f"saved {chooser.save(a.save)}")
    defender = None
    if a.defender:
        defender = PromptDefender.load(None if a.defender == "bundled" else a.defender, segmenter=seg, device="cpu")
    if not a.pairs:
        return
    print(f"{'domain':10s} {'fm':>6s} {'chosen':>6s} {'[chosen - fm]':>17s} {'defender':>8s} {'best':>6s}  picks")
    for domain in a.domains.split(","):
        tabs = [masked(table(seg, EVAL_SEED + i, domain, defender)) for i in tqdm(range(a.pairs), desc=domain)]
        fm = np.array([y[0] for _, y in tabs])
        picks = [chooser.pick(x) for x, _ in tabs]
        chosen = np.array([y[j] for (_, y), j in zip(tabs, picks)])
        lo, hi = interval(chosen - fm)
        own = f"{np.mean([y[-1] for _, y in tabs]):8.3f}" if defender else f"{'-':>8s}"
        kinds = {"fm": sum(j == 0 for j in picks)}
        if defender:
            kinds["defender"] = sum(j == len(x) - 1 for (x, _), j in zip(tabs, picks))
        kinds["edit"] = len(picks) - sum(kinds.values())
        print(f"{domain:10s} {fm.mean():6.3f} {chosen.mean():6.3f} [{lo:+.3f}, {hi:+.3f}] {own} "
              f"{np.mean([y.max() for _, y in tabs]):6.3f}  {kinds}", flush=True)


if __name__ == "__main__":
    main()
