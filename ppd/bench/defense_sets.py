"""Fixed held-out prompt sets of the defense record scripts (docs/experiments).

The record scripts compare refiners on the same sets, one object per held-out procedural
scene (``ProceduralScenes(domain, n, seed=DEFENSE_SEED)``): the scene's object drawn
uniformly and its coarse set (:func:`bench_items`), and on the training domain the sets a
trained attacker makes from each object's ideal start (:func:`bench_sets`). ``python -m
ppd.bench.defense`` measures the same columns with ``ppd bench`` on every object of its
own held-out scenes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ppd.agents.defender import PromptDefender
from ppd.agents.run_config import RunConfig, RunConfigLike
from ppd.bench import run_max_ideal_points
from ppd.data.scenes import ProceduralScenes
from ppd.envs.point_prompt_env import WRONG_LABEL, label_targets
from ppd.envs.world import INACTIVE, PromptWorld, prompts_from_state, state_from_prompts
from ppd.metrics import iou
from ppd.prompts import coarse_prompts, ideal_prompts
from ppd.robustness.dqn_attack import AttackerError, attacker_steps, greedy_attack, load_attacker

#: Seed of the first held-out scene of every domain.
DEFENSE_SEED = 10_000_000 + 9000


def bench_attacker(run: str, attacker: str | None, defender: PromptDefender, device: str | None) -> Any | None:
    """The attacker's model that makes the attacked sets: ``attacker`` (another run
    folder or its ``attacker.zip``), else the run's own (None when the run has none).

    Raises:
        AttackerError: as :func:`~ppd.robustness.dqn_attack.load_attacker`, or an
            attacker on another graph size than ``defender``.
    """
    if attacker is None and not (Path(run) / "attacker.zip").is_file():
        return None
    att = load_attacker(run if attacker is None else attacker, device=device)
    nodes = defender.model.observation_space["state"].shape[0]
    if att.num_nodes != nodes:
        raise AttackerError(f"the attacker of {att.source} acts on {att.num_nodes} graph nodes, the defender of {run} "
                            f"on {nodes}: cross-play needs runs with the same grid")
    return att.model


def state_iou(seg: Any, rec: Any, node_state: np.ndarray, node_points: np.ndarray, gt: np.ndarray) -> float:
    """IoU of ``segmenter.predict`` on a prompt state's points (no padding; the mask a
    user gets, as for every other column)."""
    coords, labels = prompts_from_state(node_state, node_points)
    return float(iou(seg.predict(rec.embedding, coords, labels).masks[0], gt))


def oracle_state(node_state: np.ndarray, node_points: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``node_state`` without its wrong-label prompts (:func:`label_targets`), keeping
    one (the first active node) when all are wrong, as refiners never return none."""
    out = node_state.copy()
    out[label_targets(node_state, node_points, gt) == WRONG_LABEL] = INACTIVE
    if not (out != INACTIVE).any():
        first = int(np.flatnonzero(node_state != INACTIVE)[0])
        out[first] = node_state[first]
    return out


def defender_world(defender: PromptDefender, scenes: Any) -> PromptWorld:
    """A :class:`PromptWorld` over ``scenes`` whose graphs are built as the defender's
    (grid, k-NN sizes), so that its agents see the observations they were trained on."""
    w = defender.world
    return PromptWorld(defender.segmenter, scenes, grid=w.grid, k_physical=w.k_physical, k_semantic=w.k_semantic)


def ideal_start(rec: Any, obj: int, cfg: RunConfigLike) -> tuple[np.ndarray, np.ndarray]:
    """The attacker's start on object ``obj`` of ``rec``: ``ideal_prompts`` with the
    run's ``max_ideal_points`` per label (6 if unset), as ``(node_state, node_points)``.
    ``cfg``: the run's config (``PromptDefender.run_config``, a ``TrainConfig`` or a
    config's mapping)."""
    max_ideal = run_max_ideal_points(cfg)
    ideal = ideal_prompts(rec.scene.masks[obj], n_pos=max_ideal, n_neg=max_ideal)
    st, pts, _ = state_from_prompts(ideal.point_coords, ideal.point_labels, rec.grid, rec.hw, rec.centres)
    return st, pts


def bench_items(world: PromptWorld, cfg: RunConfigLike, n_scenes: int, seed: int = 0) -> list[tuple]:
    """The bench's sets on ``world``'s first ``n_scenes`` scenes: per scene ``(record,
    object, ideal node_state, node_points, coarse PromptSet)``, scene i's object and
    coarse prompts from ``default_rng([DEFENSE_SEED, seed, i])`` (the object uniformly,
    as the environments draw it)."""
    cfg = RunConfig.of(cfg)
    items = []
    for i in range(n_scenes):
        rec = world.image(i)
        rng = np.random.default_rng([DEFENSE_SEED, seed, i])
        obj = int(rng.integers(rec.scene.num_objects))
        st, pts = ideal_start(rec, obj, cfg)
        items.append((rec, obj, st, pts, coarse_prompts(rec.scene.masks[obj], rng).prompts))
    return items


def attack(attacker: Any, world: PromptWorld, cfg: RunConfigLike, starts: list) -> list[dict[str, Any]]:
    """The run's attacker acting greedily from ``starts`` ``(rec, obj, node_state,
    node_points)`` with its training step budget, all starts at once (one decoder call
    per attacker step, in a world that decodes as in training)."""
    return greedy_attack(attacker, world, starts, attacker_steps(cfg))


def bench_sets(
    defender: PromptDefender, run: str, domain: str, n_scenes: int, attackers: tuple[str | None, ...] = (None,),
    seed: int = 0,
) -> dict[str, list[tuple]]:
    """The bench's prompt sets on ``domain`` as ``(record, object, coords, labels)``, for
    scripts that compare refiners on them: ``"coarse"``, and on the training domain
    ``"att:NAME"`` per attacker (a run folder or ``.zip``; None: ``run``'s own, named
    ``own``; skipped when the run has none), its greedy result from each scene's ideal
    start (:func:`bench_items`)."""
    world = defender_world(defender, ProceduralScenes(domain, n_scenes, seed=DEFENSE_SEED))
    items = bench_items(world, defender.run_config, n_scenes, seed)
    sets = {"coarse": [(it[0], it[1], it[4].point_coords, it[4].point_labels) for it in items]}
    if domain == "train":
        for att in attackers:
            model = bench_attacker(run, att, defender, None)
            if model is None:
                continue
            rolled = attack(model, world, defender.run_config, [it[:4] for it in items])
            name = "own" if att is None else str(att).rstrip("/").split("/")[-1]
            sets[f"att:{name}"] = [(it[0], it[1], *prompts_from_state(r["state"], r["points"])) for it, r in zip(items, rolled)]
    return sets


def other_rule(select: str) -> str:
    """The defender output rule of :data:`~ppd.agents.refine_config.SELECT_RULES` that is
    not ``select``."""
    from ppd.agents.refine_config import SELECT_RULES

    return next(r for r in SELECT_RULES if r != select)
