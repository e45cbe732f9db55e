"""Fitting the wrong-label filter and selecting its threshold, action and relabel gate
on held-out scenes: :func:`train_label_filter`, the last stage of ``ppd train`` (see
:mod:`ppd.agents.label_filter` for the method and the measurements behind it).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ppd import io
from ppd.agents.dqn import label_aux_loss, make_dqn
from ppd.agents.label_filter_apply import FILTER_FILE, FILTER_META, LabelFilter, candidate_name, filter_candidates
from ppd.agents.label_filter_data import (
    DATA_SEED_OFFSET,
    SELECT_SEED_OFFSET,
    collect_examples,
    filter_probabilities,
    random_walk,
    scene_starts,
)
from ppd.data.scenes import TRAIN_DOMAIN, ProceduralScenes
from ppd.envs.point_prompt_env import UNKNOWN_LABEL, WRONG_LABEL, observation_options
from ppd.envs.vec_env import PromptVecEnv
from ppd.envs.world import ImageRecord, PromptWorld
from ppd.metrics import uncertainty_auroc
from ppd.agents.rollout import greedy_rollout

logger = logging.getLogger(__name__)

__all__ = ["fit_label_head", "label_auc", "select_threshold", "train_label_filter"]


def fit_label_head(
    model: Any, data: dict[str, np.ndarray], epochs: int, seed: int, tick: Callable[[], Any] | None = None
) -> list[float]:
    """Supervised passes of ``model``'s network over ``data`` (the label loss alone,
    Adam 1e-3, batch 64, shuffled by ``seed``); mean loss per epoch. The target network
    is synchronised at the end (the file is one network)."""
    net = model.policy.q_net
    device = next(net.parameters()).device
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    n, history = len(data["state"]), []
    net.train()
    for _ in range(epochs):
        losses = []
        perm = rng.permutation(n)
        for i in range(0, n, 64):
            idx = perm[i : i + 64]
            batch = {k: torch.as_tensor(v[idx], device=device) for k, v in data.items()}
            loss, _ = label_aux_loss(net.label_logits(batch), batch["label_target"])
            if loss is None:
                continue
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        history.append(float(np.mean(losses)) if losses else float("nan"))
        if tick:
            tick()
    net.eval()
    model.policy.q_net_target.load_state_dict(net.state_dict())
    return history


def label_auc(prob: np.ndarray, targets: np.ndarray) -> float:
    """ROC AUC of probabilities (B, N) for wrong labels, over the nodes whose
    ``label_target`` (B, N) is known."""
    y = np.asarray(targets).round().astype(np.int64)
    known = y != UNKNOWN_LABEL
    return float(uncertainty_auroc(np.asarray(prob)[known], y[known] == WRONG_LABEL))


def select_threshold(
    defender: Any,
    model: Any,
    world: PromptWorld,
    starts: Sequence[tuple[ImageRecord, int, np.ndarray, np.ndarray]],
    kinds: Sequence[str],
    cfg: Any,
    progress: Callable[[str, int], Callable[..., Any]] | None = None,
) -> dict[str, Any]:
    """Mean quality of the defender's greedy output (``score_quality``: refine's default
    rule) after :func:`apply_filter` with each of :func:`filter_candidates` (of the
    config's ``filter_actions``, ``filter_thresholds`` and ``filter_relabel_gates``),
    per start kind (``coarse``, ``attacked``); the chosen ``(action, threshold,
    relabel_gate)`` maximises the mean of the two kinds (ties: the larger threshold,
    which changes less, then removal, then the smaller gate). Also the held-out ROC
    AUC. ``progress`` as in :func:`train_label_filter`."""

    opts = observation_options(model.observation_space)
    tick = progress("label filter: selection, observations", len(starts)) if progress else None
    data = collect_examples(world, starts, opts, cfg.defender_max_steps, tick)
    prob = filter_probabilities(model, data)
    cands = filter_candidates(cfg.filter_action_list, cfg.filter_threshold_list, cfg.filter_relabel_gate_list)
    runs, gates, index = [], [], {}
    for i, (rec, obj, st, pts) in enumerate(starts):
        for c in cands:
            fs, ok = LabelFilter(model, c[1], c[0], c[2]).apply(st, prob[i])
            # a filtered state reached twice (under the same gate) is rolled out once
            key = (i, fs.tobytes(), None if ok is None else ok.tobytes())
            index[(i, c)] = index.setdefault(key, len(runs))
            if index[(i, c)] == len(runs):
                runs.append((rec, obj, fs, pts))
                gates.append(ok)
    tick = progress("label filter: selection, rollout steps", cfg.defender_max_steps) if progress else None
    res = greedy_rollout(defender, world, "defender", runs, cfg.defender_max_steps, cfg.relabel, tick=tick, relabel_ok=gates)
    table: dict[str, dict[str, float]] = {}
    for kind in ("coarse", "attacked"):
        rows = [i for i, k in enumerate(kinds) if k == kind]
        table[kind] = {candidate_name(*c): float(np.mean([res[index[(i, c)]]["score_quality"] for i in rows])) for c in cands}
    mean = {c: (table["coarse"][candidate_name(*c)] + table["attacked"][candidate_name(*c)]) / 2 for c in cands}
    action, best, gate = max(cands, key=lambda c: (round(mean[c], 6), c[1], c[0] == "remove", -c[2]))
    res = {"threshold": float(best), "action": action, "relabel_gate": float(gate), "quality": table,
           "auc": label_auc(prob, data["label_target"])}
    if getattr(defender.policy.q_net, "label_aux", False):  # the defender's own (RL-trained) head, for comparison
        res["defender_head_auc"] = label_auc(filter_probabilities(defender, data), data["label_target"])
    return res


def train_label_filter(
    cfg: Any,
    out: str | Path,
    segmenter: Any,
    attacker: Any,
    defender: Any,
    progress: Callable[[str, int], Callable[..., Any]] | None = None,
    write: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Build, fit and select the filter (module docstring); writes ``out/label_filter.zip``
    and ``out/label_filter.json`` (atomically, the network first; ``write=False``: the
    caller saves them, as ``ppd train`` does with its run state) and returns the network
    and the latter's contents.

    Args:
        cfg: the run's :class:`~ppd.agents.train.TrainConfig` (``filter_scenes``,
            ``filter_walk``, ``filter_epochs``, graph and env settings).
        out: run folder.
        segmenter: the run's segmenter.
        attacker, defender: the trained agents (the attacker makes attacked starts; the
            defender's observation and architecture are the filter's, and its rollouts
            select the threshold).
        progress: ``progress(description, total) -> tick(n=1)`` (the CLI passes tqdm bars).
    """
    t0 = time.time()
    out = Path(out)
    graph_kw = dict(grid=cfg.grid or None, k_physical=cfg.k_physical, k_semantic=cfg.k_semantic)
    base = cfg.seed * 1_000_000
    world = PromptWorld(segmenter, ProceduralScenes(TRAIN_DOMAIN, cfg.filter_scenes, seed=base + DATA_SEED_OFFSET), **graph_kw)
    sel_world = PromptWorld(segmenter, ProceduralScenes(TRAIN_DOMAIN, cfg.eval_scenes, seed=base + SELECT_SEED_OFFSET), **graph_kw)
    rng = np.random.default_rng([cfg.seed, DATA_SEED_OFFSET])
    starts, _ = scene_starts(world, attacker, cfg, rng)
    states = random_walk(starts, cfg.filter_walk, cfg.relabel, rng)
    opts = observation_options(defender.observation_space)
    tick = progress("label filter: examples", len(states)) if progress else None
    data = collect_examples(world, states, opts, cfg.defender_max_steps, tick)
    t_data = time.time()
    venv = PromptVecEnv(1, "defender", world=world, seed=cfg.seed, **{**cfg.env_kwargs("defender"), "label_target": True})
    kw = {**cfg.dqn_kwargs("defender"), "label_aux": 1.0}
    model = make_dqn(venv, "defender", relabel=cfg.relabel, seed=cfg.seed + 2, device=defender.device, **kw)
    tick = progress("label filter: epochs", cfg.filter_epochs) if progress else None
    losses = fit_label_head(model, data, cfg.filter_epochs, cfg.seed, tick)
    t_fit = time.time()
    sel_starts, sel_kinds = scene_starts(sel_world, attacker, cfg, np.random.default_rng([cfg.seed, SELECT_SEED_OFFSET]))
    keep = [i for i, k in enumerate(sel_kinds) if k in ("attacked", "coarse")]
    sel = select_threshold(
        defender, model, sel_world, [sel_starts[i] for i in keep], [sel_kinds[i] for i in keep], cfg, progress
    )
    meta = {
        "threshold": sel["threshold"],
        "action": sel["action"],
        "relabel_gate": sel["relabel_gate"],
        "selection_quality": sel["quality"],
        "selection_auc": round(sel["auc"], 4),
        "defender_head_auc": round(sel["defender_head_auc"], 4) if "defender_head_auc" in sel else None,
        "selection_scenes": cfg.eval_scenes,
        "scenes": cfg.filter_scenes,
        "examples": int(len(data["state"])),
        "wrong_label_fraction": float(np.mean(data["label_target"][data["label_target"] != UNKNOWN_LABEL] == WRONG_LABEL)),
        "epochs": cfg.filter_epochs,
        "loss": [round(x, 5) for x in losses],
        "time_s": round(time.time() - t0, 1),
        "time_split_s": {"examples": round(t_data - t0, 1), "fit": round(t_fit - t_data, 1),
                         "selection": round(time.time() - t_fit, 1)},
    }
    if write:
        io.atomic_write(out / FILTER_FILE, lambda tmp: model.save(tmp))
        io.save_json(meta, out / FILTER_META)
    venv.close()
    # ppd train logs the stage's summary with its round (ppd.agents.train_progress)
    logger.debug("label filter: %s above %s (relabel gate %s), held-out AUC %.3f, %d examples, %.0f s",
                meta["action"], meta["threshold"], meta["relabel_gate"], meta["selection_auc"], meta["examples"], meta["time_s"])
    return model, meta
