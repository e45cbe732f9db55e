"""The refiner interface: a prompt set in, a :class:`RefineResult` out.

Every refiner (:class:`~ppd.agents.defender.PromptDefender` and the baselines of
:mod:`ppd.agents.baselines`) is a :class:`PromptRefiner`: ``refine`` one prompt set,
``refine_many`` several. The refine stages (:mod:`ppd.agents.guards`) pass each set
between them as a :class:`RefineSet`, and a refiner takes part in them through three
hooks with working defaults: :meth:`PromptRefiner.prepare` (the input checks),
:meth:`PromptRefiner.restrict` (a subset of a prepared set) and
:meth:`PromptRefiner.refine_sets` (its own refinement of prepared sets).
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:  # annotations only
    from ppd.segmenter import Prediction, Segmenter

__all__ = ["PromptRefiner", "RefineResult", "RefineSet", "check_budget", "check_prompts", "make_result", "per_set_budgets"]


@dataclass
class RefineResult:
    """A refined prompt set and SAM's mask for it.

    Attributes:
        point_coords: (M, 2) float32 points (x, y) in pixels, a subset of the input
            points, in input order.
        point_labels: (M,) int64 labels (1 foreground, 0 background), possibly relabelled.
        kept: (K,) bool over the input points: True where the point survives (for the
            defender: its node is still active, merged points included).
        mask: (H, W) bool mask SAM decodes from the output points.
        score: SAM's predicted IoU of ``mask``.
        steps: prompt changes made (removals and relabels; a stop is not counted); 0
            when the input came back unchanged.
        relabeled: (K,) bool, True where a kept point's label was flipped (for the
            defender: its node was relabelled; an output point's label is then its input
            label flipped).
        index: (M,) int64 input index of each output point.
        uncertainty: (H, W) float32 pixel uncertainty in [0, 1] of ``mask`` when the
            segmenter gives one (RUAC decoder), else None.
        trace: short notes, in order, of the stages that shaped the output and why (for
            example ``"rollout: 3 steps, select=score"``, ``"kept the input: consistent"``,
            ``"reverted by the score guard: ..."``); for reading, not parsing.
    """

    point_coords: np.ndarray
    point_labels: np.ndarray
    kept: np.ndarray
    mask: np.ndarray = field(repr=False)
    score: float
    steps: int
    relabeled: np.ndarray = None  # type: ignore[assignment]
    index: np.ndarray = None  # type: ignore[assignment]
    uncertainty: np.ndarray | None = field(default=None, repr=False)
    trace: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.relabeled is None:
            self.relabeled = np.zeros(len(self.kept), bool)
        if self.index is None:
            self.index = np.flatnonzero(self.kept).astype(np.int64)
        self.trace = tuple(self.trace)

    @property
    def dropped(self) -> np.ndarray:
        """(K,) bool: input points removed."""
        return ~self.kept

    def noted(self, *notes: str) -> RefineResult:
        """This result with ``notes`` appended to its :attr:`trace` (a copy)."""
        return dataclasses.replace(self, trace=self.trace + tuple(notes))


@dataclass
class RefineSet:
    """One checked prompt set on its way through the refine stages.

    Attributes:
        coords: (K, 2) float32 input points (x, y) in pixels, K >= 1.
        labels: (K,) int64 input labels in {0, 1}.
        budget: the step budget (None: the refiner's own default, for refiners without
            one; the defender always resolves it to a number).
        embedding: the image's embedding (``Segmenter.encode``; for the defender, its
            graph record's).
        image: the image, for refiners that take one (None where a stage made the set).
        nodes: the refiner's own form of the set (the defender's: a
            :class:`~ppd.agents.defender.NodeMap`), else None.
        vote: :meth:`~ppd.agents.baselines.MaskConsensusFilter.votes`'s ``(order, count)``
            once the guards took it (None: not taken, or budget 0).
        input_pred: SAM's prediction for the input set, once a stage decoded it (the
            consistency check's decode, reused by the score guard).
    """

    coords: np.ndarray
    labels: np.ndarray
    budget: int | None
    embedding: Any
    image: np.ndarray | None = field(default=None, repr=False)
    nodes: Any = field(default=None, repr=False)
    vote: tuple[np.ndarray, int] | None = None
    input_pred: Prediction | None = field(default=None, repr=False)

    @property
    def live(self) -> bool:
        """Whether the set may change at all (a budget of 0 decodes it unchanged)."""
        return self.budget is None or self.budget > 0


def check_prompts(point_coords: Any, point_labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate one prompt set: ``(K, 2)`` coords and ``(K,)`` labels in {0, 1}, K >= 1.

    Returns:
        ``(coords float32 (K, 2), labels int64 (K,))``.

    Raises:
        ValueError: empty set, wrong shapes, labels other than 0 / 1, non-finite points.
        (Points outside the image are rejected where the image size is known.)
    """
    coords = np.asarray(point_coords, dtype=np.float32)
    labels = np.asarray(point_labels)
    if coords.size == 0 or labels.size == 0:
        raise ValueError("the prompt set is empty: give at least one point (point_coords (K, 2), K >= 1)")
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"point_coords must have shape (K, 2) (x, y) in pixels, got {coords.shape}")
    if labels.shape != (len(coords),):
        raise ValueError(f"point_labels must have shape ({len(coords)},) to match point_coords, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.number) or not np.isin(labels, (0, 1)).all():
        raise ValueError("point_labels must be 1 (foreground) or 0 (background)")
    if not np.isfinite(coords).all():
        raise ValueError("point_coords contain NaN or infinite values")
    return coords, labels.astype(np.int64)


def check_budget(max_steps: int | None) -> int | None:
    """A ``max_steps`` argument: None, or an int >= 0; else ValueError."""
    if max_steps is not None and int(max_steps) < 0:
        raise ValueError(f"max_steps must be >= 0, got {max_steps}")
    return None if max_steps is None else int(max_steps)


def make_result(
    coords: np.ndarray,
    labels: np.ndarray,
    kept: np.ndarray,
    mask: np.ndarray,
    score: float,
    steps: int,
    relabeled: np.ndarray | None = None,
    index: np.ndarray | None = None,
    uncertainty: np.ndarray | None = None,
    trace: Sequence[str] = (),
) -> RefineResult:
    """Build a :class:`RefineResult` from the input points and what survived.

    Args:
        coords, labels: the K input points.
        kept: (K,) bool surviving input points.
        mask, score, steps: SAM's mask and predicted IoU for the output, prompt changes.
        relabeled: (K,) bool, flipped labels (default none).
        index: input indices of the output points (default: every kept point).
        uncertainty: (H, W) pixel uncertainty of ``mask`` (RUAC decoder), or None.
        trace: the result's :attr:`RefineResult.trace`.
    """
    kept = np.asarray(kept, bool)
    relabeled = np.zeros(len(kept), bool) if relabeled is None else np.asarray(relabeled, bool) & kept
    index = np.flatnonzero(kept) if index is None else np.sort(np.asarray(index, np.int64))
    out_labels = np.where(relabeled[index], 1 - labels[index], labels[index]).astype(np.int64)
    return RefineResult(
        point_coords=np.asarray(coords[index], np.float32).reshape(-1, 2),
        point_labels=out_labels,
        kept=kept,
        mask=np.asarray(mask, bool),
        score=float(score),
        steps=int(steps),
        relabeled=relabeled,
        index=index.astype(np.int64),
        uncertainty=None if uncertainty is None else np.asarray(uncertainty, np.float32),
        trace=tuple(trace),
    )


def unchanged_result(s: RefineSet, pred: Any, *trace: str) -> RefineResult:
    """The input of ``s`` as the result (``steps`` 0), with ``pred``, SAM's prediction for it."""
    return make_result(s.coords, s.labels, np.ones(len(s.coords), bool), pred.masks[0], float(pred.scores[0]), 0,
                       uncertainty=None if pred.uncertainty is None else pred.uncertainty[0], trace=trace)


def per_set_budgets(
    images: Sequence[Any], coords_list: Sequence[Any], labels_list: Sequence[Any], max_steps: Any = None
) -> list[int | None]:
    """``refine_many``'s lists must be parallel; returns each set's ``max_steps`` (one
    value for all sets, or a sequence of one per set)."""
    if not len(images) == len(coords_list) == len(labels_list):
        raise ValueError(
            f"images, coords_list and labels_list must have the same length, got "
            f"{len(images)}, {len(coords_list)}, {len(labels_list)}"
        )
    if max_steps is None or isinstance(max_steps, (int, np.integer)):
        return [max_steps] * len(images)
    if isinstance(max_steps, (str, bytes)) or not hasattr(max_steps, "__len__"):
        raise TypeError(f"max_steps must be an int, None or a sequence of them (one per set), got {max_steps!r}")
    budgets = list(max_steps)
    if len(budgets) != len(images):
        raise ValueError(f"max_steps has {len(budgets)} budgets for {len(images)} prompt sets (give one per set, or one int)")
    return budgets


class PromptRefiner(abc.ABC):
    """Interface shared by :class:`~ppd.agents.defender.PromptDefender` and the baselines
    of :mod:`ppd.agents.baselines`: ``refine`` one prompt set, ``refine_many`` several.

    The hooks :meth:`prepare`, :meth:`restrict` and :meth:`refine_sets` let the input
    checks and output guards of :mod:`ppd.agents.guards` run around any refiner; their
    defaults need only ``refine`` and ``segmenter``.
    """

    segmenter: Segmenter

    @abc.abstractmethod
    def refine(
        self, image: np.ndarray, point_coords: np.ndarray, point_labels: np.ndarray, max_steps: int | None = None
    ) -> RefineResult:
        """Refine one prompt set (see :meth:`~ppd.agents.defender.PromptDefender.refine`)."""

    def refine_many(
        self,
        images: Sequence[np.ndarray],
        coords_list: Sequence[np.ndarray],
        labels_list: Sequence[np.ndarray],
        max_steps: int | None | Sequence[int | None] = None,
    ) -> list[RefineResult]:
        """:meth:`refine` for several images, in order (each image is encoded once: the
        segmenter caches embeddings by image content). ``max_steps``: one budget for
        every set, or one per set (None: that set's default)."""
        budgets = per_set_budgets(images, coords_list, labels_list, max_steps)
        return [self.refine(im, c, l, b) for im, c, l, b in zip(images, coords_list, labels_list, budgets)]

    # -- the refine stages' hooks -------------------------------------------------------
    def prepare(self, image: np.ndarray, point_coords: Any, point_labels: Any, max_steps: int | None) -> RefineSet:
        """The input checks of one set (:func:`check_prompts`, a budget >= 0) and its
        image's embedding."""
        coords, labels = check_prompts(point_coords, point_labels)
        budget = check_budget(max_steps)
        return RefineSet(coords, labels, budget, self.segmenter.encode(image), image=image)

    def restrict(self, s: RefineSet, keep: np.ndarray) -> RefineSet:
        """The prepared set ``s`` with only its points ``keep`` (input indices), same budget."""
        return RefineSet(s.coords[keep], s.labels[keep], s.budget, s.embedding, image=s.image)

    def refine_sets(self, sets: Sequence[RefineSet]) -> list[RefineResult]:
        """This refiner's own refinement of prepared sets (no guards): :meth:`refine` of each."""
        return [self.refine(s.image, s.coords, s.labels, s.budget) for s in sets]
