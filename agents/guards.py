"""The refine stages around a refiner: input checks before it, output guards after it.

:func:`refine_guarded` runs any :class:`~ppd.agents.refiner.PromptRefiner` (the
defender, :class:`~ppd.agents.baselines.GreedyScoreFilter`, ...) as a pipeline of named
stages, each set carried as a :class:`~ppd.agents.refiner.RefineSet`:

1. **check** (:meth:`PromptRefiner.prepare`): the prompts (:func:`check_prompts`), the
   budget, the image encoded. A bad set fails the call before anything is decoded.
2. **vote** (:func:`take_votes`, when ``consensus`` or ``keep_consistent``):
   :class:`~ppd.agents.baselines.MaskConsensusFilter`'s one-click hypotheses of every set
   in one decoder call; the winner is the mask that agrees with the most input prompts
   (a positive inside, a negative outside).
3. **keep consistent** (:func:`keep_if_consistent`, ``keep_consistent``): a set whose
   winning mask agrees with all its prompts, and whose own SAM mask does too, comes back
   unchanged without being refined. Why: on good clicks, and on images unlike the
   training scenes, a refiner's changes cost more than they gain, while a set with a
   wrong click rarely passes both tests (an attacker's set that SAM's mask honours in
   full still fails the vote). Sets of one point or without a positive have no vote.
4. **refine** (:meth:`PromptRefiner.refine_sets`): the refiner itself.
5. **consensus** (:func:`check_consensus`, ``consensus``): where the winning mask agrees
   with at least ``consensus_quorum`` of the input prompts and the refined mask with
   fewer, the set is refined again without the prompts that disagree with the winner,
   and that output is kept when its mask agrees with more input prompts. Why: an
   attacker that adds a few wrong-label prompts can make SAM segment another object, and
   a refiner then follows it; the input's majority tells the two apart without ground
   truth. The quorum, because a weak majority is often a wrong one: on the defense
   bench's coarse sets (8 clicks, about half wrong) the winner agrees with 5 or 6 of 8
   as often when it is the wrong region as when it is the right one.
6. **score guard** (:func:`score_guard`, ``min_score_gain``): a changed set comes back
   only if SAM's predicted IoU for it is at least the input's plus ``min_score_gain``,
   or its mask agrees with more input prompts than the input's mask; else the input
   comes back unchanged. Why: a refiner drops good clicks on images unlike its training
   scenes, and SAM's own rating catches most of those; the agreement test, because
   wrong clicks can make SAM confidently segment the wrong object, and the recovered set
   then scores below it.

Each stage that decides an output says so in :attr:`RefineResult.trace`.
:class:`Guarded` wraps a refiner with these stages under a
:class:`~ppd.agents.refine_config.RefineConfig`; the defender's own ``refine`` is this
pipeline around its rollout.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ppd.agents.baselines import MaskConsensusFilter, mask_agreement
from ppd.agents.refine_config import RefineConfig
from ppd.agents.refiner import PromptRefiner, RefineResult, RefineSet, make_result, per_set_budgets, unchanged_result

__all__ = [
    "Guarded", "agreement", "check_consensus", "keep_if_consistent", "prepare_sets", "refine_guarded", "score_guard",
    "take_votes",
]


def _hook(refiner: Any, name: str) -> Any:
    """``refiner``'s stage hook ``name``: its own, or :class:`PromptRefiner`'s default
    (for refiners that only have ``refine`` and ``segmenter``)."""
    if isinstance(refiner, PromptRefiner):
        return getattr(refiner, name)
    return getattr(PromptRefiner, name).__get__(refiner)


def prepare_sets(refiner: Any, images: Sequence[np.ndarray], coords_list: Sequence[Any], labels_list: Sequence[Any],
                 max_steps: Any = None) -> list[RefineSet]:
    """Stage 1, check: every set checked and prepared by ``refiner`` (module docstring);
    ``max_steps`` as ``refine_many``'s."""
    budgets = per_set_budgets(images, coords_list, labels_list, max_steps)
    prepare = _hook(refiner, "prepare")
    return [prepare(im, c, l, b) for im, c, l, b in zip(images, coords_list, labels_list, budgets)]


def agreement(s: RefineSet, *masks: np.ndarray) -> np.ndarray:
    """Per mask, how many of the set's input prompts agree with it (a positive inside, a
    negative outside; :func:`~ppd.agents.baselines.mask_agreement`)."""
    return mask_agreement(np.stack(masks), s.coords, s.labels).sum(axis=1)


def take_votes(segmenter: Any, sets: Sequence[RefineSet]) -> None:
    """Stage 2, vote: sets each live set's :attr:`RefineSet.vote` (one decoder call for
    every set's one-click hypotheses); sets with a budget of 0 get none (they are
    decoded unchanged)."""
    live = [s for s in sets if s.live]
    if live:
        got = MaskConsensusFilter(segmenter).votes([s.embedding for s in live], [s.coords for s in live],
                                                   [s.labels for s in live])
        for s, v in zip(live, got):
            s.vote = v


def keep_if_consistent(segmenter: Any, s: RefineSet) -> RefineResult | None:
    """Stage 3, keep consistent: the input unchanged when it is self-consistent (module
    docstring), else None. Decodes the input (kept as :attr:`RefineSet.input_pred`)
    only when the vote passes."""
    # no vote (budget 0), or a vote without hypothesis (one point, no positive): no evidence
    if s.vote is None or len(s.coords) < 2 or not (s.labels == 1).any():
        return None
    order, count = s.vote
    if len(order) or count < len(s.coords):
        return None
    pred = s.input_pred = segmenter.predict(s.embedding, s.coords, s.labels)
    if agreement(s, pred.masks[0])[0] < len(s.coords):
        return None
    return unchanged_result(s, pred, f"kept the input: consistent (the vote and SAM's mask of the input agree with "
                                     f"all {len(s.coords)} prompts)")


def check_consensus(refiner: Any, sets: Sequence[RefineSet], results: Sequence[RefineResult],
                    quorum: float) -> list[RefineResult]:
    """Stage 5, consensus: ``results`` (of ``sets``, refined by ``refiner``), each
    replaced by the refinement of its input without the prompts that disagree with the
    vote's winning mask where that mask agrees with at least ``quorum`` of them and with
    more than the output, and the second output's mask agrees with more input prompts
    (module docstring)."""
    live = [i for i, s in enumerate(sets) if s.vote is not None]
    if not live:
        return list(results)
    agree = {i: int(agreement(sets[i], results[i].mask)[0]) for i in live}
    redo, keeps = [], []
    for i in live:
        order, count = sets[i].vote  # type: ignore[misc]
        n = len(sets[i].coords)
        # a float product can round a share of exactly 2/3 of n up past count
        if len(order) == 0 or agree[i] >= count or len(order) == n or count < quorum * n - 1e-9:
            continue
        keep = np.ones(n, bool)
        keep[order] = False
        redo.append(i)
        keeps.append(np.flatnonzero(keep))
    if not redo:
        return list(results)
    restrict = _hook(refiner, "restrict")
    subs = [restrict(sets[i], k) for i, k in zip(redo, keeps)]
    out = list(results)
    for i, k, r in zip(redo, keeps, _hook(refiner, "refine_sets")(subs)):
        s, dropped = sets[i], len(sets[i].coords) - len(k)
        second = int(agreement(s, r.mask)[0])
        if second <= agree[i]:
            out[i] = results[i].noted(f"consensus: refined again without the {dropped} prompts that disagree with the "
                                      f"input's majority; agrees with {second} <= {agree[i]} input prompts, not kept")
            continue
        kept, relabeled = np.zeros(len(s.coords), bool), np.zeros(len(s.coords), bool)
        kept[k[r.kept]], relabeled[k] = True, r.relabeled
        note = (f"consensus: refined again without the {dropped} prompts that disagree with the input's majority "
                f"({sets[i].vote[1]} of {len(s.coords)} agree); agrees with {second} > {agree[i]} input prompts, kept")
        out[i] = make_result(s.coords, s.labels, kept, r.mask, r.score, dropped + r.steps, relabeled=relabeled,
                             index=k[r.index], uncertainty=r.uncertainty, trace=(note, *r.trace))
    return out


def score_guard(segmenter: Any, s: RefineSet, result: RefineResult, min_score_gain: float) -> RefineResult:
    """Stage 6, score guard: ``result``, or the input of ``s`` unchanged when ``result``'s
    predicted IoU is not at least ``min_score_gain`` above the input's and its mask
    agrees with no more input prompts than the input's own mask does (module docstring).
    A result without changes passes; the input is decoded once (none when stage 3
    decoded it already)."""
    if result.steps == 0:
        return result
    pred = s.input_pred
    if pred is None:
        pred = segmenter.predict(s.embedding, s.coords, s.labels)
    base = float(pred.scores[0])
    if result.score >= base + min_score_gain:
        return result
    agree = agreement(s, result.mask, pred.masks[0])
    if agree[0] > agree[1]:  # the refined mask follows more of the input's clicks: keep it
        return result.noted(f"score guard: predicted IoU {result.score:.3f} < the input's {base:.3f} "
                            f"{min_score_gain:+.3f}, kept: its mask agrees with {agree[0]} > {agree[1]} input prompts")
    return unchanged_result(s, pred, *result.trace,
                            f"reverted by the score guard: predicted IoU {result.score:.3f} < the input's {base:.3f} "
                            f"{min_score_gain:+.3f}, and its mask agrees with {agree[0]} <= {agree[1]} input prompts")


def refine_guarded(refiner: Any, sets: Sequence[RefineSet], config: RefineConfig) -> list[RefineResult]:
    """Stages 2-6 on prepared ``sets`` (module docstring), with ``config``'s
    ``keep_consistent``, ``consensus``, ``consensus_quorum`` and ``min_score_gain``;
    stage 4 is ``refiner``'s :meth:`~PromptRefiner.refine_sets`, run once for all the
    sets the earlier stages did not settle."""
    segmenter = refiner.segmenter
    if config.consensus or config.keep_consistent:
        take_votes(segmenter, sets)
    out: list[RefineResult | None] = [None] * len(sets)
    if config.keep_consistent:
        out = [keep_if_consistent(segmenter, s) for s in sets]
    todo = [i for i, r in enumerate(out) if r is None]
    if not todo:
        return out  # type: ignore[return-value]
    results = _hook(refiner, "refine_sets")([sets[i] for i in todo])
    if config.consensus:
        results = check_consensus(refiner, [sets[i] for i in todo], results, config.consensus_quorum)
    if config.min_score_gain is not None:
        results = [score_guard(segmenter, sets[i], r, config.min_score_gain) for i, r in zip(todo, results)]
    for i, r in zip(todo, results):
        out[i] = r
    return out  # type: ignore[return-value]


class Guarded(PromptRefiner):
    """Any refiner with the input checks and output guards around it (module docstring).

    Args:
        refiner: a :class:`PromptRefiner` (or any object with ``refine`` and
            ``segmenter``).
        config: which guards run (``keep_consistent``, ``consensus``,
            ``consensus_quorum``, ``min_score_gain``; its other fields are the defender's
            and are not read here). Default: :class:`RefineConfig`'s defaults, the
            defender's.
    """

    def __init__(self, refiner: Any, config: RefineConfig | None = None) -> None:
        self.refiner = refiner
        self.config = RefineConfig() if config is None else config
        self.segmenter = refiner.segmenter

    def refine(self, image: np.ndarray, point_coords: Any, point_labels: Any, max_steps: int | None = None) -> RefineResult:
        """The guarded refinement of one prompt set (as the wrapped refiner's ``refine``)."""
        return self.refine_many([image], [point_coords], [point_labels], max_steps)[0]

    def refine_many(self, images: Sequence[np.ndarray], coords_list: Sequence[Any], labels_list: Sequence[Any],
                    max_steps: Any = None) -> list[RefineResult]:
        """:meth:`refine` for several prompt sets; the vote is one decoder call for all."""
        return refine_guarded(self.refiner, prepare_sets(self.refiner, images, coords_list, labels_list, max_steps),
                              self.config)

    def prepare(self, image: np.ndarray, point_coords: Any, point_labels: Any, max_steps: int | None) -> RefineSet:
        return _hook(self.refiner, "prepare")(image, point_coords, point_labels, max_steps)

    def restrict(self, s: RefineSet, keep: np.ndarray) -> RefineSet:
        return _hook(self.refiner, "restrict")(s, keep)

    def refine_sets(self, sets: Sequence[RefineSet]) -> list[RefineResult]:
        return refine_guarded(self.refiner, sets, self.config)
