"""A prompt set on an image's graph nodes and back: the defender acts on node states,
users give and get points."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ppd.agents.refiner import RefineResult, make_result
from ppd.envs.world import INACTIVE, POSITIVE, ImageRecord, state_from_prompts

__all__ = ["NodeMap"]


@dataclass
class NodeMap:
    """A prompt set mapped onto an image's graph nodes
    (:func:`~ppd.envs.world.state_from_prompts`): each point goes to the node (image
    patch) that contains it; when several points fall into one patch, the node takes
    the point nearest to the patch centre (its position and label) and the others are
    merged into the node (kept, dropped or relabelled with it).

    Attributes:
        rec: the image's graph record.
        state: (N,) uint8 node state of the input (0 inactive, 1 positive, 2 negative).
        points: (N, 2) float32 node points: each active node's input point.
        point_node: (K,) int64 node of each input point.
        rep: (N,) int64 input point standing for each node (-1 for inactive nodes): the
            one :func:`~ppd.envs.world.state_from_prompts` wrote last.
    """

    rec: ImageRecord
    state: np.ndarray
    points: np.ndarray
    point_node: np.ndarray
    rep: np.ndarray

    @classmethod
    def build(cls, rec: ImageRecord, coords: np.ndarray, labels: np.ndarray) -> NodeMap:
        """Map checked prompts onto ``rec``'s nodes."""
        st0, pts, point_node = state_from_prompts(coords, labels, rec.grid, rec.hw, rec.centres)
        rep = np.full(rec.num_nodes, -1, np.int64)
        dist = np.linalg.norm(coords - rec.centres[point_node], axis=1)
        for k in np.argsort(-dist, kind="stable"):
            rep[point_node[k]] = k
        return cls(rec, st0, pts, point_node, rep)

    def result(self, coords: np.ndarray, labels: np.ndarray, st: np.ndarray, steps: int, segmenter: Any,
               trace: Sequence[str] = ()) -> RefineResult:
        """The :class:`RefineResult` of output node state ``st`` for the mapped input
        points ``coords``, ``labels``: the surviving nodes' points (one per active node:
        its input point, with its node's final label), ``kept`` for every input point
        (merged points follow their node), and SAM's mask of the output points (one
        decoder call, no padding: the mask a user gets; the world pads prompts as in
        training)."""
        active = st != INACTIVE
        kept = active[self.point_node]
        flipped = active & (st != self.state)
        index = self.rep[active]
        out_labels = (st[self.point_node[np.sort(index)]] == POSITIVE).astype(np.int64)
        pred = segmenter.predict(self.rec.embedding, coords[np.sort(index)], out_labels)
        return make_result(
            coords, labels, kept, pred.masks[0], float(pred.scores[0]), steps, relabeled=flipped[self.point_node],
            index=index, uncertainty=None if pred.uncertainty is None else pred.uncertainty[0], trace=trace,
        )
