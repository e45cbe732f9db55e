"""Actions of the point-prompt environment: which actions are valid in a prompt state
(in training and in greedy rollouts) and the state a defender action leads to.

Shared by :class:`~ppd.envs.point_prompt_env.PointPromptEnv`, the vector env, the
Q-network's action masking and the defender's rollouts.
"""

from __future__ import annotations

import numpy as np

from ppd.envs.world import INACTIVE, NEGATIVE, POSITIVE


def valid_action_mask(node_state: np.ndarray, role: str, relabel: bool) -> np.ndarray:
    """(2N + 1,) bool mask of valid actions for a node state (N,).

    Attacker: kinds 0 / 1 = activate an inactive node as positive / negative.
    Defender: kind 0 = deactivate an active node, kind 1 = relabel it (if ``relabel``).
    The last action (stop) is always valid.
    """
    n = node_state.shape[-1]
    active = node_state != INACTIVE
    if role == "attacker":
        kinds = [~active, ~active]
    else:
        kinds = [active, active & relabel]
    return np.concatenate([*kinds, np.ones(node_state.shape[:-1] + (1,), bool)], axis=-1).reshape(
        *node_state.shape[:-1], 2 * n + 1
    )


def rollout_action_mask(
    node_state: np.ndarray, start_state: np.ndarray, relabel: bool, relabel_ok: np.ndarray | None = None
) -> np.ndarray:
    """(2N + 1,) bool: the defender's valid actions in a greedy rollout (refinement and
    evaluation, not training) from ``start_state``: :func:`valid_action_mask`, and also

    * a prompt is relabelled at most once: relabelling it back would only undo a step,
      and a greedy policy that does so is in a cycle until its step budget ends. Under
      this rule the relabelled prompts are exactly the active nodes whose state differs
      from ``start_state``, so no history is needed;
    * the last active prompt is never removed (no prompt gives no mask);
    * with ``relabel_ok`` ((N,) bool), only those nodes may be relabelled (the label
      filter's relabel gate, :class:`~ppd.agents.label_filter.LabelFilter`).
    """
    mask = valid_action_mask(node_state, "defender", relabel)
    n = node_state.shape[-1]
    mask[n:2 * n] &= node_state == start_state
    if relabel_ok is not None:
        mask[n:2 * n] &= relabel_ok
    if (node_state != INACTIVE).sum() <= 1:
        mask[:n] = False
    return mask


def defender_step(node_state: np.ndarray, action: int) -> np.ndarray:
    """The state after a (valid, non-stop) defender action on ``node_state`` (N,), as a
    new array: kind 0 deactivates node i, kind 1 flips its label (``action = kind * N + i``).
    The environment, refinement and the label filter's random walks all step with it."""
    kind, node = divmod(int(action), node_state.shape[-1])
    st = node_state.copy()
    st[node] = INACTIVE if kind == 0 else (NEGATIVE if st[node] == POSITIVE else POSITIVE)
    return st
