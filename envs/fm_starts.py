"""Feature-matching start states of the defender: each training object's one-shot FM set, on its graph.

The one-shot pipeline gives the defender prompt sets from feature matching
(:func:`ppd.prompts.feature_matching`): positives where the target looks like a
reference object, negatives where it looks like the reference's background. Their
errors (positives on look-alikes, negatives on the object's unusual parts) are not the
errors of :func:`ppd.prompts.coarse_prompts`, so a defender trained only on coarse and
attacked sets does not learn them. :class:`FeatureMatchStarts` gives an environment the
FM set of any object of its world, from a reference of the object's class
(:class:`ppd.data.references.ReferencePicker`), mapped onto the image's graph nodes as
every start state is (:func:`~ppd.envs.world.state_from_prompts`).

A set depends only on the image, the object, the reference (drawn by seed) and the
segmenter, so it is computed the first time it is drawn and kept: the cost is one
encoder pass of the reference per object of the training set (about 0.15 s per object
with the bundled model on one CPU core).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ppd.envs.world import ImageRecord, PromptWorld, state_from_prompts

logger = logging.getLogger(__name__)

__all__ = ["FeatureMatchStarts"]


class FeatureMatchStarts:
    """FM node states of a world's objects, computed once each.

    Args:
        world: the world whose scenes the environments draw.
        picker: ``picker(index, obj) -> (ref_image, ref_mask) | None``
            (:class:`~ppd.data.references.ReferencePicker`).
        n_pos, n_neg: :func:`~ppd.prompts.feature_matching`'s most positives and
            negatives (its defaults, as ``ppd bench --protocol oneshot`` uses them).
    """

    def __init__(self, world: PromptWorld, picker: Any, n_pos: int = 5, n_neg: int = 5) -> None:
        self.world, self.picker, self.n_pos, self.n_neg = world, picker, int(n_pos), int(n_neg)
        self._states: dict[tuple[int, int], tuple[np.ndarray, np.ndarray] | None] = {}

    def prompts(self, rec: ImageRecord, obj: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The FM prompt set ``(coords (K, 2), labels (K,))`` of object ``obj`` of
        ``rec`` (None when its object has no reference)."""
        found = self.reference_prompts(rec, obj)
        return None if found is None else found[2:]

    def reference_prompts(self, rec: ImageRecord, obj: int) -> tuple[np.ndarray, ...] | None:
        """``(reference image, reference mask, coords, labels)``: the reference drawn for
        object ``obj`` of ``rec`` and its FM prompt set (None when it has no reference)."""
        from ppd.oneshot import feature_matching, patch_features

        ref = self.picker(rec.index, obj)
        if ref is None:
            return None
        coords, labels = feature_matching(self.world.segmenter, ref[0], ref[1], None, self.n_pos, self.n_neg,
                                          target_features=patch_features(None, rec.embedding), target_hw=rec.hw)
        return ref[0], ref[1], coords, labels

    def state(self, rec: ImageRecord, obj: int) -> tuple[np.ndarray, np.ndarray] | None:
        """``(node_state, node_points)`` of the FM set of object ``obj`` of ``rec``
        (copies; None when the object has no reference)."""
        key = (rec.index, int(obj))
        if key not in self._states:
            ps = self.prompts(rec, obj)
            self._states[key] = None if ps is None else state_from_prompts(*ps, rec.grid, rec.hw, rec.centres)[:2]
            if ps is None:
                logger.debug("image %d object %d: no one-shot reference; a coarse start instead", rec.index, obj)
        found = self._states[key]
        return None if found is None else (found[0].copy(), found[1].copy())
