"""What the wrong-label filter learns from and reads: start states on scenes (ideal,
attacked, coarse), random defender walks from them, their stacked observations (with
ground-truth targets for training), and the filter network's probabilities on them.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from ppd.envs.point_prompt_env import build_observation, defender_step, observation_options, rollout_action_mask
from ppd.envs.world import ImageRecord, PromptWorld, state_from_prompts
from ppd.prompts import coarse_prompts, ideal_prompts, random_coarse_kwargs
from ppd.agents.rollout import greedy_rollout

__all__ = [
    "CHUNK",
    "DATA_SEED_OFFSET",
    "SELECT_SEED_OFFSET",
    "collect_examples",
    "filter_probabilities",
    "node_probabilities",
    "random_walk",
    "scene_starts",
    "stacked_observations",
]

#: Offsets of the filter's scene seeds from ``seed * 1_000_000`` (training scenes use +500_000).
DATA_SEED_OFFSET, SELECT_SEED_OFFSET = 700_000, 800_000
#: States decoded per ``PromptWorld.evaluate`` call while collecting.
CHUNK = 64


def scene_starts(
    world: PromptWorld, attacker: Any, cfg: Any, rng: np.random.Generator
) -> tuple[list[tuple[ImageRecord, int, np.ndarray, np.ndarray]], list[str]]:
    """Starts on every scene of ``world`` (object drawn from ``rng``): ideal, attacked
    (the attacker's greedy rollout from the ideal set, all scenes batched), coarse with
    ``cfg.coarse_kwargs`` and coarse with :func:`random_coarse_kwargs`; and their kinds
    (``ideal``, ``attacked``, ``coarse``, ``coarse_random``)."""

    ideal, coarse = [], []
    for i in range(len(world.dataset)):
        rec = world.image(i)
        obj = int(rng.integers(rec.scene.num_objects))
        gt = rec.scene.masks[obj]
        sets = [ideal_prompts(gt, n_pos=cfg.max_ideal_points, n_neg=cfg.max_ideal_points)]
        sets += [coarse_prompts(gt, rng, **cfg.coarse_kwargs).prompts, coarse_prompts(gt, rng, **random_coarse_kwargs(rng)).prompts]
        st = [state_from_prompts(p.point_coords, p.point_labels, rec.grid, rec.hw, rec.centres)[:2] for p in sets]
        ideal.append((rec, obj, *st[0]))
        coarse += [(rec, obj, *st[1]), (rec, obj, *st[2])]
    attacked = []
    for i in range(0, len(ideal), CHUNK):
        part = ideal[i : i + CHUNK]
        res = greedy_rollout(attacker, world, "attacker", part, cfg.attacker_max_steps, cfg.relabel)
        attacked += [(rec, obj, r["state"], r["points"]) for (rec, obj, _, _), r in zip(part, res)]
    starts = ideal + attacked + coarse
    kinds = ["ideal"] * len(ideal) + ["attacked"] * len(attacked) + ["coarse", "coarse_random"] * len(ideal)
    return starts, kinds


def random_walk(
    starts: Sequence[tuple[ImageRecord, int, np.ndarray, np.ndarray]], steps: int, relabel: bool, rng: np.random.Generator
) -> list[tuple[ImageRecord, int, np.ndarray, np.ndarray]]:
    """Every start and the states of ``steps`` random valid defender steps from it
    (:func:`rollout_action_mask`, stop excluded; a walk ends when nothing is valid)."""
    out = []
    for rec, obj, st0, pts in starts:
        st = st0
        out.append((rec, obj, st, pts))
        for _ in range(steps):
            mask = rollout_action_mask(st, st0, relabel)[:-1]
            if not mask.any():
                break
            st = defender_step(st, int(rng.choice(np.flatnonzero(mask))))
            out.append((rec, obj, st, pts))
    return out


def stacked_observations(
    world: PromptWorld,
    states: Sequence[tuple[ImageRecord, int, np.ndarray, np.ndarray]],
    opts: dict[str, bool],
    max_steps: int,
    ground_truth: bool = False,
    tick: Callable[[int], Any] | None = None,
) -> dict[str, np.ndarray]:
    """Stacked observations at step 0 of ``states`` ``(rec, obj, node_state,
    node_points)`` (``opts``: :func:`observation_options` of the network), decoded
    :data:`CHUNK` states per ``world.evaluate`` call. ``ground_truth``: fill
    ``label_target`` from object ``obj``'s mask (training examples); otherwise a
    ``label_target`` key, if the network has one, is all unknown and ``obj`` only picks
    the world's decode cache entry (the observation has no quality)."""
    out: list[dict[str, np.ndarray]] = []
    target = ground_truth or opts["label_target"]
    for i in range(0, len(states), CHUNK):
        part = states[i : i + CHUNK]
        outcomes = world.evaluate(list(part), probe=opts["probe"])
        for (rec, obj, st, pts), o in zip(part, outcomes):
            gt = rec.scene.masks[obj] if ground_truth else None
            out.append(build_observation(rec, st, pts, o, 0, max_steps, opts["node_uncertainty"], opts["probe"], target, gt))
        if tick:
            tick(len(part))
    return {k: np.stack([o[k] for o in out]) for k in out[0]}


def collect_examples(
    world: PromptWorld,
    states: Sequence[tuple[ImageRecord, int, np.ndarray, np.ndarray]],
    opts: dict[str, bool],
    max_steps: int,
    tick: Callable[[int], Any] | None = None,
) -> dict[str, np.ndarray]:
    """Training examples: :func:`stacked_observations` of ``states`` with their
    ``label_target`` from the ground truth."""
    return stacked_observations(world, states, opts, max_steps, ground_truth=True, tick=tick)


def filter_probabilities(model: Any, obs: dict[str, np.ndarray]) -> np.ndarray:
    """(B, N) wrong-label probabilities of ``model``'s label head for stacked
    observations (meaningful at active nodes only)."""
    net = model.policy.q_net
    out = []
    with torch.no_grad():
        for i in range(0, len(obs["state"]), 256):
            batch, _ = model.policy.obs_to_tensor({k: v[i : i + 256] for k, v in obs.items()})
            out.append(torch.sigmoid(net.label_logits(batch).float()).cpu().numpy())
    return np.concatenate(out)


def node_probabilities(
    model: Any, world: PromptWorld, states: Sequence[tuple[ImageRecord, int, np.ndarray, np.ndarray]], max_steps: int
) -> np.ndarray:
    """(B, N) wrong-label probabilities of ``model``'s label head for prompt states,
    without ground truth (:func:`stacked_observations`, then :func:`filter_probabilities`)."""
    opts = observation_options(model.observation_space)
    return filter_probabilities(model, stacked_observations(world, states, opts, max_steps))
