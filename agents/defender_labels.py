"""The defender's wrong-label network in refinement: the run's label filter, checked
against the defender's network and applied to the prompt states its rollouts start from,
and each prompt's wrong-label probability, read from the filter or from the defender's
auxiliary label head.

:class:`WrongLabelStage` is a base class of :class:`~ppd.agents.defender.PromptDefender`
(stage 2 of its refinement, see :mod:`ppd.agents.defender`). The filter's cost in
refinement: one Q-network pass, and one decoder call when it changes something. Its rule
on one prompt state is :class:`~ppd.agents.label_filter.LabelFilter`'s; how it is trained
and selected, :mod:`ppd.agents.label_filter`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ppd.agents.label_filter import FILTER_ACTIONS, LabelFilter, check_relabel_gate, check_threshold, node_probabilities
from ppd.agents.refiner import RefineSet, check_prompts
from ppd.envs.world import ImageRecord, PromptWorld, state_from_prompts

__all__ = ["WrongLabelStage"]


class WrongLabelStage:
    """The wrong-label parts of :class:`~ppd.agents.defender.PromptDefender`. They read the
    defender's ``model`` (its SB3 DQN), ``world``, ``train_max_steps`` and
    ``label_filter``, and its :meth:`~ppd.agents.defender.PromptDefender.record`."""

    model: Any
    world: PromptWorld
    train_max_steps: int | None
    label_filter: LabelFilter | None

    def _check_label_filter(
        self, label_filter: tuple[Any, float] | tuple[Any, float, str] | None
    ) -> LabelFilter | None:
        """The constructor's ``label_filter`` as a :class:`LabelFilter` (None: none), its
        settings checked and its graph size against the defender's network."""
        if label_filter is None:
            return None
        net, threshold, action, gate = LabelFilter(*label_filter)
        threshold = check_threshold(threshold, "the label filter's threshold")
        if action not in FILTER_ACTIONS:
            raise ValueError(f"the label filter's action must be one of {FILTER_ACTIONS}, got {action!r}")
        gate = check_relabel_gate(gate, "the label filter's relabel gate")
        if net.observation_space["state"].shape != self.model.observation_space["state"].shape:
            raise ValueError("the label filter was built for another graph size than the defender")
        return LabelFilter(net, threshold, str(action), gate)

    @property
    def has_label_head(self) -> bool:
        """Whether :meth:`wrong_label_probability` has a network to read: the run's
        label filter, or the defender's auxiliary head (``ppd train --label-aux``)."""
        return self.label_filter is not None or bool(getattr(self.model.policy.q_net, "label_aux", False))

    def _node_probabilities(self, states: Sequence[tuple[ImageRecord, np.ndarray, np.ndarray]]) -> np.ndarray:
        """(B, N) wrong-label probability of each node's prompt in ``states`` ``(record,
        node_state, node_points)``, all in one pass: the label filter's network if there
        is one, else the defender's own label head."""
        net = self.label_filter.network if self.label_filter is not None else self.model
        return node_probabilities(net, self.world, [(rec, -1, st, pts) for rec, st, pts in states], self.train_max_steps or 1)

    def wrong_label_probability(self, image: np.ndarray, point_coords: np.ndarray, point_labels: np.ndarray) -> np.ndarray:
        """Per input point, the probability that its label is wrong (no ground truth;
        one decoder call for the observation, no refinement step): from the run's label
        filter (:mod:`ppd.agents.label_filter`) when it has one, else from the
        defender's auxiliary label head.

        Points merged into one node (see ``state_from_prompts``) share its value.

        Raises:
            ValueError: a defender with neither, or bad prompts (as :meth:`refine`).
        """
        if not self.has_label_head:
            raise ValueError("this defender has no wrong-label network: train one with `ppd train` "
                             "(its label filter stage, --filter-scenes) or `--label-aux WEIGHT`")
        coords, labels = check_prompts(point_coords, point_labels)
        rec = self.record(image)  # type: ignore[attr-defined]
        st, pts, point_node = state_from_prompts(coords, labels, rec.grid, rec.hw, rec.centres)
        return self._node_probabilities([(rec, st, pts)])[0][point_node].astype(np.float32)

    def _filter_starts(self, sets: Sequence[RefineSet]) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
        """The state each prepared set's rollout starts from, after the label filter (one
        network pass for all sets; a set with budget 0 is left as it is), and the nodes
        that rollout may relabel (None: any)."""
        starts = [s.nodes.state for s in sets]
        gates: list[np.ndarray | None] = [None] * len(sets)
        filtered = [i for i, s in enumerate(sets) if s.budget > 0]
        if self.label_filter is not None and filtered:
            prob = self._node_probabilities([(sets[i].nodes.rec, sets[i].nodes.state, sets[i].nodes.points)
                                             for i in filtered])
            for i, p in zip(filtered, prob):
                starts[i], gates[i] = self.label_filter.apply(sets[i].nodes.state, p)
        return starts, gates

    def _filter_trace(self, filtered_changes: int) -> list[str]:
        """The trace line of the label filter's changes to one set (none when it changed
        nothing)."""
        if not filtered_changes:
            return []
        verb = "relabelled" if self.label_filter.action == "relabel" else "removed"  # type: ignore[union-attr]
        return [f"label filter: {verb} {filtered_changes} prompts (wrong-label probability above "
                f"{self.label_filter.threshold:g})"]  # type: ignore[union-attr]
