"""The wrong-label filter's rule on one prompt state: flag the prompts whose wrong-label
probability exceeds a threshold, remove or relabel them, and gate the relabels of the
defender's rollout that follows; the candidates training selects among, and the
run-folder files of a filter. See :mod:`ppd.agents.label_filter` for the whole stage.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

from ppd.envs.world import INACTIVE, NEGATIVE, POSITIVE

__all__ = [
    "FILTER_ACTIONS",
    "FILTER_FILE",
    "FILTER_META",
    "RELABEL_GATES",
    "THRESHOLDS",
    "LabelFilter",
    "apply_filter",
    "candidate_name",
    "filter_candidates",
    "relabel_gate_mask",
]

#: Files of a run's filter: the network (an SB3 DQN file) and its settings and selection.
FILTER_FILE = "label_filter.zip"
FILTER_META = "label_filter.json"
#: Candidate thresholds; 1.0 changes nothing (the filter off). 0.9 was a candidate in
#: four measured runs and never selected (each candidate costs selection rollouts).
THRESHOLDS = (0.5, 0.7, 1.0)
#: What the filter does to a prompt above the threshold.
FILTER_ACTIONS = ("remove", "relabel")


#: Relabel gates the selection can try (``ppd train --filter-relabel-gates 0,0.5``; the
#: default tries 0.0 only, which lets the defender's rollout relabel any prompt).
RELABEL_GATES = (0.0, 0.5)


class LabelFilter(NamedTuple):
    """A run's filter as refinement applies it: the network, its threshold and action,
    and the relabel gate: after the filter, the defender's rollout may relabel only the
    prompts whose wrong-label probability (on the input set) exceeds it (0.0: any).

    Why the gate: on attacked sets the rollout relabelled right-label
    prompts, adding wrong labels after the filter had removed most of them (in-domain,
    two runs: 1.5 -> 2.1 wrong-label prompts per set); after removal with the gate at
    0.5, 1.3 were left and IoU rose 0.658 -> 0.708 and 0.778 -> 0.828. On coarse sets,
    whose noise includes flipped labels, the rollout's relabels help, so training
    selects no gate by default (``TrainConfig.filter_relabel_gates``;
    docs/decisions/0003-wrong-label-filter.md).
    """

    network: Any
    threshold: float
    action: str = "remove"
    relabel_gate: float = 0.0

    def apply(self, node_state: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """One prompt state after the filter (:func:`apply_filter`) and the nodes the
        rollout that follows may relabel (:func:`relabel_gate_mask`), from the state's
        wrong-label probabilities ``prob`` (N,)."""
        return apply_filter(node_state, prob, self.threshold, self.action), relabel_gate_mask(prob, self.relabel_gate)


def apply_filter(node_state: np.ndarray, prob: np.ndarray, threshold: float, action: str = "remove") -> np.ndarray:
    """``node_state`` after the filter acted on the prompts whose probability exceeds
    ``threshold`` (a new array): ``action="remove"`` deactivates them (when that would
    remove every prompt, the least suspect one stays: no prompt, no mask);
    ``"relabel"`` flips their labels (when that would leave no positive, the least
    suspect positive keeps its label: with negatives alone SAM has no object to segment;
    relabelling at 0.5 did that to 3-8% of coarse sets, measured).

    Raises:
        ValueError: an action not in :data:`FILTER_ACTIONS`.
    """
    if action not in FILTER_ACTIONS:
        raise ValueError(f"filter action must be one of {FILTER_ACTIONS}, got {action!r}")
    active = node_state != INACTIVE
    flag = active & (prob > threshold)
    out = node_state.copy()
    if action == "relabel":
        out[flag] = np.where(node_state[flag] == POSITIVE, NEGATIVE, POSITIVE)
        pos = node_state == POSITIVE
        if pos.any() and not (out == POSITIVE).any():
            out[np.flatnonzero(pos)[np.argmin(prob[pos])]] = POSITIVE
        return out
    if flag.any() and not (active & ~flag).any():
        flag[np.flatnonzero(active)[np.argmin(prob[active])]] = False
    out[flag] = INACTIVE
    return out


def filter_candidates(
    actions: Sequence[str] = FILTER_ACTIONS, thresholds: Sequence[float] = THRESHOLDS,
    gates: Sequence[float] = (0.0,),
) -> list[tuple[str, float, float]]:
    """The ``(action, threshold, relabel_gate)`` triples the selection compares: every
    one of ``actions`` at every one of ``thresholds`` below 1.0, and ``("remove", 1.0)``,
    the filter off; each with every one of ``gates``."""
    ts = sorted({float(t) for t in thresholds if t < 1.0})
    gs = sorted({float(g) for g in gates})
    return [(a, t, g) for g in gs for a in actions for t in ts] + [("remove", 1.0, g) for g in gs]


def relabel_gate_mask(prob: np.ndarray, relabel_gate: float) -> np.ndarray | None:
    """(N,) bool: the nodes a rollout may relabel under ``relabel_gate`` (wrong-label
    probability above it), or None when the gate is 0 (no restriction)."""
    return None if relabel_gate <= 0.0 else np.asarray(prob) > relabel_gate


def candidate_name(action: str, threshold: float, relabel_gate: float = 0.0) -> str:
    """Key of a candidate in the selection table: ``"remove@0.7"``, ``"off"``,
    ``"relabel@0.5+gate0.5"``."""
    name = "off" if threshold >= 1.0 else f"{action}@{threshold:g}"
    return name if relabel_gate <= 0.0 else f"{name}+gate{relabel_gate:g}"
