"""Evaluation of a ``ppd train`` run on held-out scenes: both agents' greedy rollouts
(:func:`evaluate_agents`, the numbers of each round), ``PromptDefender.refine`` as a user
loads it from the run folder (:func:`refine_metrics`), the defender selection's measure
(:func:`defended_coarse_iou`) and the ``examples.png`` picture (:func:`examples_image`).

The held-out scenes are procedural training-domain scenes from :data:`EVAL_SEED` on, one
object each, with ideal and coarse prompt sets fixed by the run's seed
(:func:`eval_items`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ppd.agents.defender import DEFAULT_POLISH, PromptDefender
from ppd.agents.dqn import MaskedDQN
from ppd.agents.label_filter import LabelFilter, node_probabilities
from ppd.agents.train_config import TrainConfig
from ppd.envs.world import INACTIVE, ImageRecord, PromptWorld, prompts_from_state, state_from_prompts
from ppd.prompts import coarse_prompts, ideal_prompts
from ppd.viz import caption, grid, overlay, shrink
from ppd.agents.rollout import _polish_rollouts, greedy_rollout

__all__ = [
    "EVAL_KEYS",
    "EVAL_SEED",
    "defended_coarse_iou",
    "eval_items",
    "evaluate_agents",
    "examples_image",
    "refine_metrics",
]

#: First seed of the held-out evaluation scenes (far from every training seed).
EVAL_SEED = 10_000_000 + 5000
#: Longest side of an image in ``examples.png`` (larger images are scaled down).
EXAMPLE_SIDE = 384
#: Evaluation metrics (mean IoU over the held-out scenes), in table order.
EVAL_KEYS = (
    "ideal_iou", "attacked_iou", "defended_attacked_iou", "coarse_iou", "defended_coarse_iou",
    "defended_attacked_iou_last", "defended_coarse_iou_last",
)


def eval_items(world: PromptWorld, cfg: TrainConfig) -> list[tuple[ImageRecord, int, Any, Any]]:
    """Fixed (image, object, ideal state, coarse state) per held-out scene."""
    items = []
    for i in range(len(world.dataset)):
        rec = world.image(i)
        rng = np.random.default_rng([EVAL_SEED, cfg.seed, i])
        obj = int(rng.integers(rec.scene.num_objects))
        gt = rec.scene.masks[obj]
        ideal = ideal_prompts(gt, n_pos=cfg.max_ideal_points, n_neg=cfg.max_ideal_points)
        coarse = coarse_prompts(gt, rng, **cfg.coarse_kwargs).prompts
        states = [state_from_prompts(p.point_coords, p.point_labels, rec.grid, rec.hw, rec.centres)[:2] for p in (ideal, coarse)]
        items.append((rec, obj, states[0], states[1]))
    return items


def evaluate_agents(
    attacker: MaskedDQN,
    defender: MaskedDQN,
    world: PromptWorld,
    cfg: TrainConfig,
    return_rollouts: bool = False,
    label_filter: LabelFilter | None = None,
    polish: bool = DEFAULT_POLISH,
) -> dict[str, float] | tuple[dict[str, float], dict[str, list]]:
    """Mean IoU (or the world's quality) on ``world``'s scenes; see :data:`EVAL_KEYS`.

    ``attacked``: the greedy attacker's final set from the ideal prompts;
    ``fm`` (where ``world.fm_starts`` is set, as in a run with one-shot starts): the
    objects' one-shot feature-matching sets (those with a reference);
    ``defended_*``: the greedy defender's output from the attacked / coarse / fm set, picked
    as ``PromptDefender.refine`` does by default (``select="score"``: the visited set with
    SAM's highest predicted IoU), then with ``polish`` polished as ``refine`` does
    (:func:`~ppd.agents.defender.polish_states`); ``defended_*_last``: where the
    defender stopped (not polished).

    With ``label_filter`` (:class:`~ppd.agents.label_filter.LabelFilter`), the
    defender starts from the filtered sets, as ``refine`` does; ``defended_*_nofilter``
    are then its outputs from the unfiltered ones.
    """

    items = eval_items(world, cfg)
    ideal = [(rec, obj, *s_ideal) for rec, obj, s_ideal, _ in items]
    coarse = [(rec, obj, *s_coarse) for rec, obj, _, s_coarse in items]
    att = greedy_rollout(attacker, world, "attacker", ideal, cfg.attacker_max_steps, cfg.relabel)
    attacked = [(rec, obj, r["state"], r["points"]) for (rec, obj, _, _), r in zip(items, att)]
    def_starts = {"attacked": attacked, "coarse": coarse}
    fm = getattr(world, "fm_starts", None)  # one-shot sets, where the run trains on them
    if fm is not None:
        fm_sets = [(rec, obj, *found) for rec, obj, _, _ in items if (found := fm.state(rec, obj)) is not None]
        if fm_sets:
            def_starts["fm"] = fm_sets
    unfiltered: dict[str, list[dict[str, Any]]] = {}
    gates: dict[str, list[np.ndarray | None]] = {}
    if label_filter is not None:
        for name, starts in def_starts.items():
            unfiltered[name] = greedy_rollout(defender, world, "defender", starts, cfg.defender_max_steps, cfg.relabel)
        lf = LabelFilter(*label_filter)
        for name, starts in list(def_starts.items()):
            prob = node_probabilities(lf.network, world, starts, cfg.defender_max_steps)
            applied = [lf.apply(st, p) for (_, _, st, _), p in zip(starts, prob)]
            gates[name] = [ok for _, ok in applied]
            def_starts[name] = [(rec, obj, fs, pts) for (rec, obj, _, pts), (fs, _) in zip(starts, applied)]
    def_att = greedy_rollout(defender, world, "defender", def_starts["attacked"], cfg.defender_max_steps, cfg.relabel,
                             relabel_ok=gates.get("attacked"))
    def_coarse = greedy_rollout(defender, world, "defender", def_starts["coarse"], cfg.defender_max_steps, cfg.relabel,
                                relabel_ok=gates.get("coarse"))
    def_fm = []
    if "fm" in def_starts:
        def_fm = greedy_rollout(defender, world, "defender", def_starts["fm"], cfg.defender_max_steps, cfg.relabel,
                                relabel_ok=gates.get("fm"))
    if polish:
        _polish_rollouts(world, def_starts["attacked"], def_att, cfg)
        _polish_rollouts(world, def_starts["coarse"], def_coarse, cfg)
        if def_fm:
            _polish_rollouts(world, def_starts["fm"], def_fm, cfg)
    metrics = {
        "ideal_iou": float(np.mean([r["start_quality"] for r in att])),
        "attacked_iou": float(np.mean([r["quality"] for r in att])),
        "defended_attacked_iou": float(np.mean([r["score_quality"] for r in def_att])),
        "coarse_iou": float(np.mean([r["start_quality"] for r in unfiltered.get("coarse", def_coarse)])),
        "defended_coarse_iou": float(np.mean([r["score_quality"] for r in def_coarse])),
        "defended_attacked_iou_last": float(np.mean([r["quality"] for r in def_att])),
        "defended_coarse_iou_last": float(np.mean([r["quality"] for r in def_coarse])),
        "attacker_steps": float(np.mean([r["steps"] for r in att])),
        "defender_coarse_steps": float(np.mean([r["steps"] for r in def_coarse])),
    }
    if def_fm:
        metrics.update({
            "fm_iou": float(np.mean([r["start_quality"] for r in unfiltered.get("fm", def_fm)])),
            "defended_fm_iou": float(np.mean([r["score_quality"] for r in def_fm])),
            "defended_fm_iou_last": float(np.mean([r["quality"] for r in def_fm])),
        })
    for name, res in unfiltered.items():
        metrics[f"defended_{name}_iou_nofilter"] = float(np.mean([r["score_quality"] for r in res]))
    if return_rollouts:
        return metrics, {"items": items, "coarse": coarse, "defended_coarse": def_coarse, "attacked": attacked}
    return metrics


def refine_metrics(run_dir: str | os.PathLike, segmenter: Any, world: PromptWorld, rollouts: dict[str, list],
                   device: str | None = None) -> dict[str, float]:
    """Mean quality (the world's: IoU by default) of ``PromptDefender.refine`` with its
    defaults, the defender a user loads from ``run_dir`` (its label filter, the consensus
    check and ``keep_consistent`` included), on :func:`evaluate_agents`'s attacked and
    coarse sets (``rollouts``). ``evaluate_agents`` runs the rollouts alone, on node
    states: these are the numbers ``ppd refine`` and the Python API give.

    Returns:
        ``{"refine_attacked_iou", "refine_coarse_iou"}`` (the key names say IoU for
        either measure, as :data:`EVAL_KEYS` do).
    """
    defender = PromptDefender.load(run_dir, segmenter=segmenter, device=device)
    out = {}
    for name in ("attacked", "coarse"):
        sets = rollouts[name]  # (record, object, node_state, node_points)
        coords, labels = zip(*(prompts_from_state(st, pts) for _, _, st, pts in sets))
        results = defender.refine_many([rec.scene.image for rec, *_ in sets], coords, labels)
        out[f"refine_{name}_iou"] = float(np.mean(
            [world.quality_fn(r.mask, rec.scene.masks[obj]) for (rec, obj, *_), r in zip(sets, results)]))
    return out


def examples_image(world: PromptWorld, rollouts: dict[str, list], n: int) -> np.ndarray:
    """Rows: ground truth | coarse prompts + mask | defender-refined prompts + mask, each
    tile captioned: prompt count, the refinement's removals / relabels, and the mask's
    quality against the ground truth (the world's measure, IoU by default)."""
    measure = {"iou": "IoU", "dice": "Dice"}.get(world.quality_name, world.quality_name)
    tiles = []
    for (rec, obj, st, pts), res in list(zip(rollouts["coarse"], rollouts["defended_coarse"]))[:n]:
        img, gt, _ = shrink(rec.scene.image, EXAMPLE_SIDE, rec.scene.masks[obj])
        tiles.append(caption(overlay(img, gt, color=(40, 200, 40)), f"ground truth ({rec.scene.domain})"))
        for title, state, points in (("coarse", st, pts), ("refined", res["score_state"], res["points"])):
            out = world.evaluate([(rec, obj, state, points)], want_mask=True)[0]
            coords, labels = prompts_from_state(state, points)
            text = f"{title}: {len(labels)} pts"
            if title == "refined":
                dropped = int(((st != INACTIVE) & (state == INACTIVE)).sum())
                flipped = int(((st != INACTIVE) & (state != INACTIVE) & (state != st)).sum())
                text += f": {dropped} removed, {flipped} relabelled"
            img, mask, coords = shrink(rec.scene.image, EXAMPLE_SIDE, out.mask, coords=coords)
            tiles.append(caption(overlay(img, mask, coords, labels), f"{text}\n{measure} {out.quality:.2f}"))
    return grid(tiles, cols=3)


def defended_coarse_iou(
    defender: MaskedDQN, world: PromptWorld, cfg: TrainConfig, coarse: list, polish: bool = DEFAULT_POLISH
) -> float:
    """Mean quality of the defender's output (``score_quality``: refine's default
    output rule, then polished with ``polish``) from held-out coarse prompt states
    ``(rec, obj, node_state, node_points)``."""

    res = greedy_rollout(defender, world, "defender", coarse, cfg.defender_max_steps, cfg.relabel)
    if polish:
        _polish_rollouts(world, coarse, res, cfg)
    return float(np.mean([r["score_quality"] for r in res]))
