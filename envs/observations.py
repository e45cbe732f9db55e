"""Observations of the point-prompt environment: the per-node encoding of a prompt state
(:func:`build_observation`), the label targets, the removal-probe encoding, and which
optional parts an observation space has.

The keys and their encodings are specified in
:class:`~ppd.envs.point_prompt_env.PointPromptEnv` (Observation Space); the environment and
:class:`~ppd.agents.defender.PromptDefender` both build observations here, so a greedy
rollout sees exactly what the agent saw in training.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ppd.envs.world import INACTIVE, POSITIVE, ImageRecord, Outcome


def build_observation(
    rec: ImageRecord,
    node_state: np.ndarray,
    node_points: np.ndarray,
    outcome: Outcome,
    t: int,
    max_steps: int,
    node_uncertainty: bool = False,
    probe: bool = False,
    label_target: bool = False,
    gt_mask: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The observation of a prompt state (see :class:`PointPromptEnv`, Observation Space).

    Shared by the environment and by :class:`ppd.agents.defender.PromptDefender`, whose
    greedy rollouts must see exactly what the agent saw in training.

    Args:
        rec: the image's record (graph id, grid, patch centres).
        node_state: (N,) uint8 prompt state (0 inactive, 1 positive, 2 negative).
        node_points: (N, 2) prompt points (x, y) in pixels.
        outcome: the decoded state (coverage (N,), SAM's predicted IoU).
        t: steps taken so far; ``max_steps``: the episode's step budget.
        node_uncertainty: add the ``uncertainty`` key (per-node mean pixel uncertainty
            of the current mask, from ``outcome.uncertainty``).
        probe: add the removal-probe keys ``probe_score`` and ``probe_change`` (from an
            outcome of ``PromptWorld.evaluate(..., probe=True)``).
        label_target: add the ``label_target`` key (training target of the auxiliary
            label head, never a network input): :func:`label_targets` of ``gt_mask``,
            or all :data:`UNKNOWN_LABEL` without it (inference has no ground truth).

    Raises:
        ValueError: ``node_uncertainty`` with an outcome that has no uncertainty (the
            segmenter gives none), or ``probe`` with an outcome that was not probed.
    """
    patch = np.array([rec.hw[1], rec.hw[0]], np.float32) / rec.grid
    off = (node_points - rec.centres) / patch
    off = np.where((node_state != INACTIVE)[:, None], off, 0.0)
    obs = {
        "state": node_state.copy(),
        "coverage": _unit_to_u8(outcome.coverage),
        # flat (2N,), node i at [2i, 2i + 1]: SB3 expects 1-D (or image) Boxes
        "offset": np.round((np.clip(off, -0.5, 0.5) + 0.5) * 255).astype(np.uint8).reshape(-1),
        "step_frac": np.array([t / max_steps], np.float32),
        "score": np.array([np.clip(outcome.score, 0.0, 1.5)], np.float32),
        "image_id": np.array([rec.graph_id], np.float32),
    }
    if node_uncertainty:
        if outcome.uncertainty is None:
            raise ValueError(
                "node_uncertainty needs the per-node uncertainty of the decoded mask, but this outcome "
                "has none: the segmenter gives no uncertainty (use the RUAC decoder)"
            )
        obs["uncertainty"] = _unit_to_u8(outcome.uncertainty)
    if probe:
        if outcome.probe_score is None or outcome.probe_change is None:
            raise ValueError("probe=True needs an outcome decoded with PromptWorld.evaluate(..., probe=True)")
        obs["probe_score"] = encode_probe_score(outcome.probe_score)
        obs["probe_change"] = _unit_to_u8(outcome.probe_change)
    if label_target:
        obs["label_target"] = (
            np.full(len(node_state), UNKNOWN_LABEL, np.uint8) if gt_mask is None
            else label_targets(node_state, node_points, gt_mask)
        )
    return obs


#: ``label_target`` values: the prompt's label is right (0) or wrong (1) by the ground
#: truth at its point; UNKNOWN_LABEL at inactive nodes and without ground truth.
RIGHT_LABEL, WRONG_LABEL, UNKNOWN_LABEL = 0, 1, 2


def label_targets(node_state: np.ndarray, node_points: np.ndarray, gt_mask: np.ndarray) -> np.ndarray:
    """(N,) uint8: for each active node, whether its label disagrees with the ground
    truth at its point (:data:`WRONG_LABEL`: a positive outside the object or a negative
    inside it; :data:`RIGHT_LABEL` otherwise); :data:`UNKNOWN_LABEL` at inactive nodes."""
    out = np.full(len(node_state), UNKNOWN_LABEL, np.uint8)
    active = np.flatnonzero(node_state != INACTIVE)
    if len(active):
        h, w = gt_mask.shape
        xy = np.round(node_points[active]).astype(np.int64)
        inside = gt_mask[np.clip(xy[:, 1], 0, h - 1), np.clip(xy[:, 0], 0, w - 1)].astype(bool)
        out[active] = np.where((node_state[active] == POSITIVE) != inside, WRONG_LABEL, RIGHT_LABEL)
    return out


def _unit_to_u8(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped) -> uint8 x 255, the per-node observation encoding."""
    return np.round(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)


def observation_options(observation_space: Any) -> dict[str, bool]:
    """The optional observation parts an agent's observation space has, as
    :class:`PointPromptEnv` / :func:`build_observation` arguments: ``node_uncertainty``,
    ``probe`` and ``label_target``. A saved agent is rolled out with what it was trained on."""
    keys = getattr(observation_space, "spaces", None) or {}
    return {"node_uncertainty": "uncertainty" in keys, "probe": "probe_score" in keys, "label_target": "label_target" in keys}


#: Score differences of removal probes are stored as ``0.5 + PROBE_SCORE_GAIN * d``, x 255:
#: differences of +-0.125 span the uint8 range (0.001 per level); larger ones saturate.
PROBE_SCORE_GAIN = 4.0


def encode_probe_score(delta: np.ndarray) -> np.ndarray:
    """Removal-probe score differences (N,) -> the uint8 ``probe_score`` observation."""
    return _unit_to_u8(0.5 + PROBE_SCORE_GAIN * np.asarray(delta, np.float32))


def decode_probe_score(obs: Any) -> Any:
    """Inverse of :func:`encode_probe_score` (up to its rounding and clipping): the
    ``probe_score`` observation (uint8 values, numpy or float torch) -> score differences."""
    return (obs / 255.0 - 0.5) / PROBE_SCORE_GAIN
