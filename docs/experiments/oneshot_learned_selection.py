"""Can a learned mask-quality score choose a better edit of the FM points than SAM's own score?

    python docs/experiments/oneshot_learned_selection.py [--fit-pairs 200] [--pairs 150]
        [--domains train,clutter,texture] [--steps 1] [--defender bundled] [--threads 1]

The ground truth's search over removals and flips of FM's points reaches far above FM
(``oneshot_refiner_ceiling.py``), while every refiner without the ground truth stays near
FM. This asks whether the missing piece is the score that says which edit helps.

Per pair, a few candidate edits of FM's set (:func:`candidates`): FM itself, FM without
each point, FM with each label flipped, its positives only, its first positive alone
(with and without the negatives), and the outputs of ``greedy_score`` and
``consistency``. Each is decoded once and described by :func:`features`: SAM's predicted
IoU, the mask's stability, its agreement with FM's similarity maps (how much of the matched
region it covers, how much of it is matched, the mean margin in and out), its area and
number of parts, and how many of FM's points it agrees with. A ridge regression, fitted on
in-domain pairs of their own seed range (``FIT_SEED``), predicts each candidate's IoU gain
over FM from its features and their differences to FM's; the candidate with the largest
predicted gain is chosen when that gain is above ``TAU``, else FM. ``RIDGE`` and ``TAU``
were set before measuring (the result hardly moves with either). One decision, not a
search: a wrong choice costs once.

Measured (bundled model, CPU, 1 thread, 6 min; fitted on 200 ``train`` pairs; 150 pairs per
domain from ``EVAL_SEED``, disjoint from the fitting, tuning and measured pairs; mIoU, with
the 95% bootstrap interval of learned - FM over the pairs):

    domain   fm     greedy  consist  learned  [learned - fm]    best candidate
    train    0.617  0.577   0.611    0.650    [-0.007, +0.079]  0.788
    clutter  0.275  0.299   0.279    0.313    [-0.000, +0.080]  0.448
    texture  0.398  0.391   0.379    0.441    [+0.005, +0.080]  0.632

The learned score gains +0.03 to +0.04 over FM in every domain, the shifted ones included,
and more than SAM's rating does through ``greedy_score`` (below FM in-domain); it most
often chooses a label flip (half of the pairs). Far from what one well-chosen edit
gives (``best candidate``, the ground truth's pick among the same candidates: +0.17 in-domain):
a better quality score, not a better search, is what a refiner of FM's points needs.
``--steps 4`` repeats the choice from the edited set (edits of the current set, the same
predictor): mIoU after 0-4 steps train 0.617 / 0.653 / 0.662 / 0.660 / 0.658, clutter
0.275 / 0.314 / 0.312 / 0.312 / 0.312: a second step adds 0.01 in-domain, later ones nothing.
``--defender bundled`` adds the bundled defender's wrong-label probability of the points
each edit changes: train 0.649, clutter 0.310, texture 0.449 (without: 0.650, 0.313,
0.441), no better: the mask features already carry what it knows. ``--fit-pairs 1000
--domains train,texture``: train 0.665 [+0.009, +0.093], texture 0.456 [+0.021, +0.097]:
more fitting pairs help a little (+0.015), still far from ``best candidate``.
"""
from __future__ import annotations

import argparse

import cv2
import numpy as np
import torch

import ppd
from ppd.agents.baselines import BASELINES
from ppd.agents.defender import PromptDefender
from ppd.data.oneshot_pairs import make_pair
from ppd.metrics import iou
from ppd.oneshot import feature_matching, mask_at_points, mask_cover, scores_for

FIT_SEED, EVAL_SEED = 23_000_000, 24_000_000  # disjoint from oneshot_refine.py's 20M / 21M
RIDGE, TAU = 10.0, 0.02
REFINERS = ("greedy_score", "consistency")


def candidates(coords: np.ndarray, labels: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, kept points, labels)`` of each single edit of the FM set (FM first)."""
    k = len(labels)
    out = [("fm", np.ones(k, bool), labels)]
    for i in range(k):
        if k > 1:
            out.append(("remove", np.arange(k) != i, labels))
        flipped = labels.copy()
        flipped[i] = 1 - flipped[i]
        out.append(("flip", np.ones(k, bool), flipped))
    pos = labels == 1
    if pos.any():  # FM's sets always have one; an edited set may not
        if (~pos).any():
            out.append(("positives", pos, labels))
        first = np.arange(k) == np.flatnonzero(pos)[0]
        out += [("first positive", first, labels), ("first positive + negatives", first | ~pos, labels)]
    return out


def features(mask, score, logits, match, labels, fm_coords, fm_labels) -> np.ndarray:
    """What a candidate's mask looks like without the ground truth (see the docstring)."""
    cover = mask_cover(mask, match.fg.shape)
    margin = match.margin
    matched = (margin > 0).astype(np.float32)
    inside, outside = cover.sum() + 1e-6, (1 - cover).sum() + 1e-6
    hit = mask_at_points(mask, fm_coords)
    parts = cv2.connectedComponents(mask.astype(np.uint8))[0] - 1
    return np.array([
        score,
        (logits > 2).sum() / max(1, (logits > -2).sum()),  # stability
        (cover * matched).sum() / inside, (cover * matched).sum() / (matched.sum() + 1e-6),
        (cover * margin).sum() / inside, ((1 - cover) * margin).sum() / outside,
        (cover * match.proto).sum() / inside - ((1 - cover) * match.proto).sum() / outside,
        np.log(mask.mean() + 1e-4), np.log1p(parts),
        hit[fm_labels == 1].mean(), (~hit[fm_labels == 0]).mean() if (fm_labels == 0).any() else 1.0,
        len(labels), (labels == 1).sum(),
    ], np.float64)


def changed(coords: np.ndarray, labels: np.ndarray, c: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """Per FM point: is it removed or relabelled in the set ``(c, lab)`` (which only
    removes or relabels FM's points)?"""
    out = np.ones(len(labels), bool)
    for i, (q, label) in enumerate(zip(coords, labels)):
        same = np.flatnonzero((c == q).all(1))
        out[i] = not (len(same) and lab[same[0]] == label)
    return out


def pair_table(seg, seed: int, domain: str, defender=None) -> dict:
    """Candidates of one pair: names, features (F, D), true IoUs (F,), FM first. With
    ``defender``, three more features per candidate from its wrong-label probability
    of FM's points: the sum and the largest over the points the edit changes, and how
    many it changes."""
    p = make_pair(seed, domain)
    image, gt = p.target.image, p.target_mask
    coords, labels = feature_matching(seg, p.reference.image, p.ref_mask, image)
    match = scores_for(seg, p.reference.image, p.ref_mask, image)
    emb = seg.encode(image)
    sets = [(name, coords[keep], lab[keep]) for name, keep, lab in candidates(coords, labels)]
    for name in REFINERS:
        res = BASELINES[name](seg).refine(image, coords, labels)
        sets.append((name, res.point_coords, res.point_labels))
    wrong = None if defender is None else defender.wrong_label_probability(image, coords, labels)
    rows, ious = [], []
    for _, c, lab in sets:
        pred = seg.predict(emb, c, lab)
        mask = np.asarray(pred.masks[0], bool)
        x = features(mask, float(pred.scores[0]), pred.logits[0], match, lab, coords, labels)
        if wrong is not None:
            edit = changed(coords, labels, c, lab)
            x = np.append(x, [wrong[edit].sum(), wrong[edit].max(initial=0.0), edit.sum()])
        rows.append(x)
        ious.append(float(iou(mask, gt)))
    return {"names": [s[0] for s in sets], "x": np.stack(rows), "iou": np.array(ious)}


def design(x: np.ndarray) -> np.ndarray:
    """Each candidate's features, their differences to FM's, and a constant."""
    return np.hstack([x - x[0], x, np.ones((len(x), 1))])


def fit(tables: list[dict]):
    """Ridge regression of the IoU gain over FM (standardised features); returns the
    predictor of a table's gains."""
    a = np.vstack([design(t["x"]) for t in tables])
    b = np.concatenate([t["iou"] - t["iou"][0] for t in tables])
    mu, sd = a.mean(0), a.std(0) + 1e-9
    mu[-1], sd[-1] = 0.0, 1.0
    z = (a - mu) / sd
    w = np.linalg.solve(z.T @ z + RIDGE * np.eye(z.shape[1]), z.T @ b)
    return lambda t: ((design(t["x"]) - mu) / sd) @ w


def choose(predict, t: dict) -> int:
    gain = predict(t)
    gain[0] = 0.0
    j = int(np.argmax(gain))
    return j if gain[j] > TAU else 0


def iterate(seg, predict, seed: int, domain: str, steps: int) -> list[float]:
    """True IoU after 0..``steps`` choices, each among the single edits of the current set
    (as :func:`choose`, the gain predicted over the current set); the set stays once no
    edit is predicted to gain more than ``TAU``."""
    p = make_pair(seed, domain)
    image, gt = p.target.image, p.target_mask
    fm_coords, fm_labels = feature_matching(seg, p.reference.image, p.ref_mask, image)
    match = scores_for(seg, p.reference.image, p.ref_mask, image)
    emb = seg.encode(image)

    def decoded(c, lab):
        pred = seg.predict(emb, c, lab)
        mask = np.asarray(pred.masks[0], bool)
        return features(mask, float(pred.scores[0]), pred.logits[0], match, lab, fm_coords, fm_labels), mask

    coords, labels = fm_coords, fm_labels
    x, mask = decoded(coords, labels)
    out = [float(iou(mask, gt))]
    for _ in range(steps):
        edits = [(coords[keep], edited[keep]) for _, keep, edited in candidates(coords, labels)[1:]]
        tried = [decoded(c, lab) for c, lab in edits]
        j = choose(predict, {"x": np.stack([x] + [t[0] for t in tried])})
        if j:
            (coords, labels), (x, mask) = edits[j - 1], tried[j - 1]
        out.append(float(iou(mask, gt)))
    return out


def interval(d: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    means = np.random.default_rng(seed).choice(d, (n, len(d))).mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fit-pairs", type=int, default=200)
    ap.add_argument("--pairs", type=int, default=150)
    ap.add_argument("--domains", default="train,clutter,texture")
    ap.add_argument("--steps", type=int, default=1, help="choices in a row (> 1: mIoU after each step)")
    ap.add_argument("--defender", help="add its wrong-label probability as features ('bundled' or a run folder)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    seg = ppd.load_segmenter(device="cpu")
    defender = None
    if a.defender:
        if a.steps > 1:
            ap.error("--defender works with one step only")
        defender = PromptDefender.load(None if a.defender == "bundled" else a.defender, segmenter=seg, device="cpu")
    predict = fit([pair_table(seg, FIT_SEED + i, "train", defender) for i in range(a.fit_pairs)])
    if a.steps > 1:
        for domain in a.domains.split(","):
            runs = np.array([iterate(seg, predict, EVAL_SEED + i, domain, a.steps) for i in range(a.pairs)])
            print(f"{domain:10s} mIoU after 0..{a.steps} steps: {' / '.join(f'{v:.3f}' for v in runs.mean(0))}",
                  flush=True)
        return
    print(f"{'domain':10s} {'fm':>6s} {'greedy':>6s} {'consist':>7s} {'learned':>7s} {'[learned - fm]':>17s} "
          f"{'best':>6s}  chosen")
    for domain in a.domains.split(","):
        tables = [pair_table(seg, EVAL_SEED + i, domain, defender) for i in range(a.pairs)]
        fm = np.array([t["iou"][0] for t in tables])
        picks = [choose(predict, t) for t in tables]
        learned = np.array([t["iou"][j] for t, j in zip(tables, picks)])
        named = {name: np.mean([t["iou"][t["names"].index(name)] for t in tables]) for name in REFINERS}
        lo, hi = interval(learned - fm)
        chosen: dict[str, int] = {}
        for t, j in zip(tables, picks):
            chosen[t["names"][j]] = chosen.get(t["names"][j], 0) + 1
        print(f"{domain:10s} {fm.mean():6.3f} {named['greedy_score']:6.3f} {named['consistency']:7.3f} "
              f"{learned.mean():7.3f} [{lo:+.3f}, {hi:+.3f}] {np.mean([t['iou'].max() for t in tables]):6.3f}  "
              f"{chosen}", flush=True)


if __name__ == "__main__":
    main()
