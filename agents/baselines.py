"""Simple prompt refiners to compare the defender against, honestly.

All share :class:`~ppd.agents.defender.PromptDefender`'s interface
(:class:`~ppd.agents.refiner.PromptRefiner`: ``refine(image, point_coords, point_labels,
max_steps=None) -> RefineResult`` and ``refine_many``) and use no ground truth:

* :class:`NoRefine`: the input prompts as they are (the "coarse" row of a table).
* :class:`RandomDrop`: drops each point with probability ``p`` (seeded), keeps >= 1.
* :class:`GreedyScoreFilter`: drops, one at a time, the point whose removal raises SAM's
  own predicted IoU the most, while a removal raises it.
* :class:`ConsistencyFilter`: drops, one at a time, the point whose label disagrees most
  with how its image feature compares to the other points', while one disagrees
  (the signal of the defender's ``consistency`` prior, with no learning).
* :class:`MaskConsensusFilter`: RANSAC over SAM's own one-click masks: the mask that
  agrees with the most points wins, and the points that disagree with it are dropped.

Unlike the defender, the baselines give SAM every input point (no patch merging), and
run without the defender's guards; :class:`~ppd.agents.guards.Guarded` adds them.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ppd.agents.refiner import PromptRefiner, RefineResult, check_budget, check_prompts, make_result
from ppd.agents.qnet import label_disagreement
from ppd.envs.world import INACTIVE, NEGATIVE, POSITIVE
from ppd.segmenter import Segmenter

__all__ = ["BASELINES", "ConsistencyFilter", "GreedyScoreFilter", "MaskConsensusFilter", "NoRefine", "RandomDrop"]


def _decode(segmenter: Segmenter, emb_or_image: Any, coords: np.ndarray, labels: np.ndarray, kept: np.ndarray):
    """SAM's mask and predicted IoU for the kept points (one decoder call); the image or
    its embedding when the caller has it already."""
    pred = segmenter.predict(emb_or_image, coords[kept], labels[kept])
    return pred.masks[0], float(pred.scores[0]), None if pred.uncertainty is None else pred.uncertainty[0]


class NoRefine(PromptRefiner):
    """Returns the input prompts unchanged, with SAM's mask for them.

    Args:
        segmenter: the SAM2 segmenter.
    """

    def __init__(self, segmenter: Segmenter) -> None:
        self.segmenter = segmenter

    def refine(self, image, point_coords, point_labels, max_steps=None) -> RefineResult:
        coords, labels = check_prompts(point_coords, point_labels)
        check_budget(max_steps)
        kept = np.ones(len(coords), bool)
        mask, score, unc = _decode(self.segmenter, image, coords, labels, kept)
        return make_result(coords, labels, kept, mask, score, 0, uncertainty=unc, trace=("no refinement: the input",))


class RandomDrop(PromptRefiner):
    """Drops each point independently with probability ``p``; keeps at least one.

    If every point is drawn for dropping, one of them (uniform) is kept. With a budget
    ``max_steps``, only the first ``max_steps`` drawn drops (in input order) happen.

    Args:
        segmenter: the SAM2 segmenter.
        p: drop probability per point, in [0, 1].
        seed: seed of the refiner's generator; two refiners with the same seed give the
            same results for the same sequence of calls.
    """

    def __init__(self, segmenter: Segmenter, p: float = 0.25, seed: int = 0) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.segmenter = segmenter
        self.p = float(p)
        self.rng = np.random.default_rng(seed)

    def refine(self, image, point_coords, point_labels, max_steps=None) -> RefineResult:
        coords, labels = check_prompts(point_coords, point_labels)
        budget = check_budget(max_steps)
        drop = self.rng.random(len(coords)) < self.p
        if drop.all():
            drop[self.rng.integers(len(coords))] = False
        if budget is not None:
            drop[np.flatnonzero(drop)[budget:]] = False
        kept = ~drop
        mask, score, unc = _decode(self.segmenter, image, coords, labels, kept)
        return make_result(coords, labels, kept, mask, score, int(drop.sum()), uncertainty=unc,
                           trace=(f"random drop: dropped {int(drop.sum())} of {len(coords)} prompts",))


class GreedyScoreFilter(PromptRefiner):
    """Greedy backward selection on SAM's own predicted IoU (no ground truth).

    One decoder call scores the input set; then each round decodes all leave-one-out
    sets of the current set in ONE batched ``segmenter.predict`` call and drops the point
    whose removal gives the highest predicted IoU, if that is strictly higher than the
    current one (by more than ``min_gain``). Stops when no removal raises the score,
    when one point is left (never drops the last point) or after ``max_steps`` drops.
    So the returned score is never below the input set's score.

    Args:
        segmenter: the SAM2 segmenter.
        min_gain: least raise of the predicted IoU that a drop must bring.
    """

    def __init__(self, segmenter: Segmenter, min_gain: float = 0.0) -> None:
        self.segmenter = segmenter
        self.min_gain = float(min_gain)

    def refine(self, image, point_coords, point_labels, max_steps=None) -> RefineResult:
        coords, labels = check_prompts(point_coords, point_labels)
        budget = check_budget(max_steps)
        emb = self.segmenter.encode(image)
        cur = np.arange(len(coords))
        pred = self.segmenter.predict(emb, coords, labels)
        mask, score = pred.masks[0], float(pred.scores[0])
        unc = None if pred.uncertainty is None else pred.uncertainty[0]
        steps = 0
        while len(cur) > 1 and (budget is None or steps < budget):
            # Row j: the current set without its j-th point (all rows have len(cur) - 1
            # points, so no padding is needed).
            rows = np.stack([np.delete(cur, j) for j in range(len(cur))])
            pred = self.segmenter.predict(emb, coords[rows], labels[rows])
            scores = np.asarray(pred.scores, np.float64)
            best = int(np.argmax(scores))
            if not scores[best] > score + self.min_gain:
                break
            cur, mask, score = rows[best], pred.masks[best], float(scores[best])
            unc = None if pred.uncertainty is None else pred.uncertainty[best]
            steps += 1
        kept = np.zeros(len(coords), bool)
        kept[cur] = True
        return make_result(coords, labels, kept, mask, score, steps, uncertainty=unc,
                           trace=(f"greedy score filter: dropped {steps} prompts while that raised the predicted IoU",))


def point_features(emb, coords: np.ndarray) -> torch.Tensor:
    """(K, C) image features at K points (x, y) in image pixels: SAM2's image embedding
    (its lowest-resolution map, what the decoder attends to) interpolated bilinearly at
    each point (SAM2 resizes the whole image to its input square, so a point's position
    relative to the image size is its position on the embedding grid)."""
    h, w = emb.orig_hw
    xy = torch.as_tensor(np.asarray(coords, np.float32) / np.array([w, h], np.float32) * 2.0 - 1.0)
    feats = F.grid_sample(emb.image_embed.float(), xy.to(emb.image_embed.device)[None, None], align_corners=False)
    return feats[0, :, 0].T.cpu()  # (1, C, 1, K) -> (K, C)


class ConsistencyFilter(PromptRefiner):
    """Drops the points whose label disagrees with the image's other points (no decoder
    call until the end, no ground truth, no learning).

    Each point's feature is SAM2's image embedding at the point
    (:func:`point_features`). Its disagreement is
    :func:`~ppd.agents.qnet.label_disagreement`: the cosine similarity of its feature to
    the mean of the other label's points minus that to the mean of its own label's other
    points, so a positive point on background (it looks like the negatives) scores > 0.
    Each round drops the point with the highest disagreement, if it is above
    ``min_disagreement``, and recomputes; it stops when none is, when one point is left
    or after ``max_steps`` drops. One decoder call gives the final mask.

    Args:
        segmenter: the SAM2 segmenter.
        min_disagreement: least disagreement a dropped point has.
    """

    def __init__(self, segmenter: Segmenter, min_disagreement: float = 0.0) -> None:
        self.segmenter = segmenter
        self.min_disagreement = float(min_disagreement)

    def refine(self, image, point_coords, point_labels, max_steps=None) -> RefineResult:
        coords, labels = check_prompts(point_coords, point_labels)
        budget = check_budget(max_steps)
        emb = self.segmenter.encode(image)
        feats = point_features(emb, coords)[None]
        state = torch.as_tensor(np.where(labels == 1, POSITIVE, NEGATIVE))[None]
        kept = np.ones(len(coords), bool)
        steps = 0
        while kept.sum() > 1 and (budget is None or steps < budget):
            d = label_disagreement(feats, state)[0].numpy()  # dropped points are inactive: 0
            d[~kept] = -np.inf
            best = int(np.argmax(d))
            if not d[best] > self.min_disagreement:
                break
            kept[best] = False
            state[0, best] = INACTIVE
            steps += 1
        mask, score, unc = _decode(self.segmenter, emb, coords, labels, kept)
        return make_result(coords, labels, kept, mask, score, steps, uncertainty=unc,
                           trace=(f"consistency filter: dropped {steps} prompts that look like the other label",))


def mask_agreement(masks: np.ndarray, coords: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(M, K) bool: whether point k's label agrees with mask m (a positive inside it, a
    negative outside it), for masks (M, H, W) and points (x, y) in their pixels (rounded
    and clipped to the image)."""
    h, w = masks.shape[-2:]
    xy = np.clip(np.round(np.asarray(coords)).astype(np.int64), 0, [w - 1, h - 1])
    return masks[:, xy[:, 1], xy[:, 0]] == (np.asarray(labels) == 1)[None]


class MaskConsensusFilter(PromptRefiner):
    """RANSAC over SAM's own one-click masks (no ground truth, no learning).

    Hypotheses: the three multimask outputs of each positive point alone (one decoder
    call with one row per positive). A point agrees with a hypothesis when it is a
    positive inside the mask or a negative outside it (:func:`mask_agreement`). The
    hypothesis with the most agreeing points wins (ties: SAM's predicted IoU, then input
    order), and the points that disagree with it are dropped; with ``max_steps``, at
    most that many, those that disagree with the most of the near-best hypotheses
    (agreeing with at least the winner's count minus one) first. One more decoder call
    gives the final mask; the last point is never dropped, and a set without positives
    is returned unchanged.

    It assumes most points are right: against an attacker that adds a few wrong-label
    points to a good set it recovers nearly all of the ideal IoU, while on sets where
    most labels are wrong (the defense bench's coarse sets) it has no majority to find.

    Args:
        segmenter: the SAM2 segmenter.
    """

    def __init__(self, segmenter: Segmenter) -> None:
        self.segmenter = segmenter

    def vote(self, emb: Any, coords: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, int]:
        """The winning hypothesis for checked prompts on an encoded image: ``(order,
        count)``, the input indices of the points that disagree with it, most-disagreed
        first (class docstring), and how many points agree with it. No hypothesis (no
        positive, or fewer than two points): no point to drop, and all agree."""
        return self.votes([emb], [coords], [labels])[0]

    def votes(
        self, embs: Sequence[Any], coords_list: Sequence[np.ndarray], labels_list: Sequence[np.ndarray],
        with_masks: bool = False,
    ) -> list[tuple]:
        """:meth:`vote` for several prompt sets, with one decoder call for all their
        one-click hypotheses (``Segmenter.predict_at``: each hypothesis is read at the
        set's clicks, no image-size masks). ``with_masks``: each tuple also holds the
        winning mask ((H, W) bool; None for a set without a hypothesis), decoded at image
        size (``predict`` when every set is on the same embedding, else ``predict_batch``)."""
        out: list[tuple] = [(np.zeros(0, np.int64), len(c)) + ((None,) if with_masks else ()) for c in coords_list]
        rows = [(i, k) for i, (c, l) in enumerate(zip(coords_list, labels_list)) if len(c) >= 2
                for k in np.flatnonzero(l == 1)]
        if not rows:
            return out
        clicks, ones = np.stack([coords_list[i][k] for i, k in rows])[:, None], np.ones((len(rows), 1), np.int64)
        row_embs = [embs[i] for i, _ in rows]
        if with_masks:
            if all(e is embs[0] for e in embs):
                pred = self.segmenter.predict(embs[0], clicks, ones, multimask=True, return_all=True)
            else:
                pred = self.segmenter.predict_batch(row_embs, clicks, ones, multimask=True, return_all=True)
            row_scores = pred.scores
        else:  # the masks at the clicks only (Segmenter.predict_at: no image-size masks)
            query = np.zeros((len(rows), max(len(coords_list[i]) for i, _ in rows), 2))
            for j, (i, _) in enumerate(rows):
                query[j, : len(coords_list[i])] = coords_list[i]
            inside, row_scores = self.segmenter.predict_at(row_embs, clicks, ones, query, multimask=True, return_all=True)
        owner = np.array([i for i, _ in rows])
        for i in np.unique(owner):
            mine = np.flatnonzero(owner == i)
            if with_masks:
                masks = np.concatenate([np.asarray(pred.masks[r]) for r in mine])  # (3P, H, W)
                agree = mask_agreement(masks, coords_list[i], labels_list[i])
            else:
                k = len(coords_list[i])
                agree = np.concatenate([inside[r][:, :k] for r in mine]) == (np.asarray(labels_list[i]) == 1)[None]
            count = agree.sum(1)
            scores = np.concatenate([np.asarray(row_scores[r], np.float64) for r in mine])
            best = max(range(len(count)), key=lambda j: (count[j], scores[j], -j))
            drop = np.flatnonzero(~agree[best])
            near = agree[count >= count[best] - 1]
            out[i] = (drop[np.argsort(near[:, drop].sum(0), kind="stable")].astype(np.int64), int(count[best])) + (
                (masks[best],) if with_masks else ())
        return out

    def keep(self, emb: Any, coords: np.ndarray, labels: np.ndarray, max_steps: int | None = None) -> np.ndarray:
        """(K,) bool: the points the filter keeps (checked prompts, an encoded image)."""
        kept = np.ones(len(coords), bool)
        if max_steps == 0:
            return kept
        order, _ = self.vote(emb, coords, labels)
        kept[order if max_steps is None else order[:max_steps]] = False
        if not kept.any():  # every point disagrees with the winner: keep the first positive
            kept[np.flatnonzero(labels == 1)[0]] = True
        return kept

    def refine(self, image, point_coords, point_labels, max_steps=None) -> RefineResult:
        coords, labels = check_prompts(point_coords, point_labels)
        budget = check_budget(max_steps)
        emb = self.segmenter.encode(image)
        kept = self.keep(emb, coords, labels, budget)
        mask, score, unc = _decode(self.segmenter, emb, coords, labels, kept)
        return make_result(coords, labels, kept, mask, score, int((~kept).sum()), uncertainty=unc,
                           trace=(f"mask consensus: dropped {int((~kept).sum())} prompts that disagree with the majority mask",))


#: name -> class, for benchmarks.
BASELINES = {
    "no_refine": NoRefine, "random_drop": RandomDrop, "greedy_score": GreedyScoreFilter, "consistency": ConsistencyFilter,
    "mask_consensus": MaskConsensusFilter,
}
