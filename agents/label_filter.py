"""Wrong-label filter (beyond the paper): the defender's network, trained by supervision.

Removing exactly the prompts whose label is wrong by the ground truth (a positive
outside the object, a negative inside it) recovers the ideal prompts' IoU from attacked
sets (the defense bench's ``attacked+oracle`` column), so recovery is a detection
problem. The DQN defender learns detection from a reward on the few hundred scenes of
its training; its auxiliary label head (``label_aux``) reaches a ROC AUC of about 0.88
there and overfits beyond. The same network trained by plain binary cross-entropy on
more scenes generalises better (held-out AUC 0.90 with 800 scenes, against 0.88 for the
RL-trained head of the same run; docs/ppd_experiments.md).

:func:`train_label_filter` (the last stage of ``ppd train``) builds it:

1. **Data.** ``filter_scenes`` new training-domain scenes, one object each. Starts per
   scene: the ideal prompts, the trained attacker's greedy result on them, a coarse set
   with the run's ``coarse_kwargs`` and one with randomly drawn noise (point count, flip,
   boundary and outlier rates: prompt generators differ), each followed by
   ``filter_walk`` random valid defender steps (removals, relabels). Every visited state
   is an example; its target is :func:`~ppd.envs.point_prompt_env.label_targets`.
2. **Fit.** A fresh network of the defender's architecture (``label_aux`` head) trains
   on the label loss alone, ``filter_epochs`` passes (Adam 1e-3, batch 64).
3. **Threshold and action.** On as many further held-out scenes as training evaluates
   on (``eval_scenes``; other scenes than those, never trained on), the defender's
   greedy output (``select="score"``) after the filter acted on every prompt whose
   wrong-label probability exceeds t, for t in :data:`THRESHOLDS`, either removing it or
   relabelling it (:data:`FILTER_ACTIONS`), each with every relabel gate g of the
   config (:data:`RELABEL_GATES` by default: the rollout that follows may relabel only
   prompts with probability above g; 0: any), from coarse sets (the run's
   ``coarse_kwargs``) and from attacked sets; the triple with the best mean quality is
   kept. ``1.0`` changes nothing, so a filter that does not help is switched off by its
   own selection. The wrong-label ROC AUC on these scenes is reported, and that of the
   defender's own label head when it has one (``label_aux``).

   Why relabelling is a candidate: a wrong-label prompt with its label flipped is a
   right-label prompt at the same place, so it keeps the click's information; on coarse
   sets (half of their points corrupted) of three of four seeds, removing the prompts
   above 0.5 cost the defender's output 0.07-0.14 IoU against no filter, relabelling
   them at most 0.014 (README, session 13).
   Which of the two serves a run best differed between seeds, so it is selected.

:meth:`ppd.agents.defender.PromptDefender.refine` applies it before the defender's
rollout (one extra Q-network pass, and one extra decoder call when it changes a prompt). The run folder gets ``label_filter.zip`` (an SB3 DQN file: the network) and
``label_filter.json`` (threshold, action, selection table, held-out AUC; files
written before the action existed remove).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from ppd import io
from ppd.envs.point_prompt_env import (
    UNKNOWN_LABEL,
    WRONG_LABEL,
    build_observation,
    defender_step,
    observation_options,
    rollout_action_mask,
)
from ppd.envs.world import INACTIVE, NEGATIVE, POSITIVE, ImageRecord, PromptWorld, state_from_prompts
from ppd.prompts import coarse_prompts, ideal_prompts, random_coarse_kwargs

logger = logging.getLogger(__name__)

__all__ = [
    "FILTER_ACTIONS",
    "FILTER_FILE",
    "FILTER_META",
    "RELABEL_GATES",
    "THRESHOLDS",
    "LabelFilter",
    "apply_filter",
    "filter_candidates",
    "relabel_gate_mask",
    "collect_examples",
    "load_label_filter",
    "node_probabilities",
    "stacked_observations",
    "filter_probabilities",
    "fit_label_head",
    "label_auc",
    "train_label_filter",
]

FILTER_FILE = "label_filter.zip"
FILTER_META = "label_filter.json"
#: Candidate thresholds; 1.0 changes nothing (the filter off). 0.9 was a candidate in
#: session 13's four runs and never selected (each candidate costs selection rollouts).
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

    Why the gate (session 16): on attacked sets the rollout relabelled right-label
    prompts, adding wrong labels after the filter had removed most of them (in-domain,
    two runs: 1.5 -> 2.1 wrong-label prompts per set); after removal with the gate at
    0.5, 1.3 were left and IoU rose 0.658 -> 0.708 and 0.778 -> 0.828. On coarse sets,
    whose noise includes flipped labels, the rollout's relabels help, so training
    selects no gate by default (``TrainConfig.filter_relabel_gates``;
    docs/ppd_experiments.md, session 16).
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
    from ppd.agents.train import greedy_rollout

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


def fit_label_head(
    model: Any, data: dict[str, np.ndarray], epochs: int, seed: int, tick: Callable[[], Any] | None = None
) -> list[float]:
    """Supervised passes of ``model``'s network over ``data`` (the label loss alone,
    Adam 1e-3, batch 64, shuffled by ``seed``); mean loss per epoch. The target network
    is synchronised at the end (the file is one network)."""
    import torch

    from ppd.agents.dqn import label_aux_loss

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


def filter_probabilities(model: Any, obs: dict[str, np.ndarray]) -> np.ndarray:
    """(B, N) wrong-label probabilities of ``model``'s label head for stacked
    observations (meaningful at active nodes only)."""
    import torch

    net = model.policy.q_net
    out = []
    with torch.no_grad():
        for i in range(0, len(obs["state"]), 256):
            batch, _ = model.policy.obs_to_tensor({k: v[i : i + 256] for k, v in obs.items()})
            out.append(torch.sigmoid(net.label_logits(batch).float()).cpu().numpy())
    return np.concatenate(out)


def label_auc(prob: np.ndarray, targets: np.ndarray) -> float:
    """ROC AUC of probabilities (B, N) for wrong labels, over the nodes whose
    ``label_target`` (B, N) is known."""
    from ppd.metrics import uncertainty_auroc

    y = np.asarray(targets).round().astype(np.int64)
    known = y != UNKNOWN_LABEL
    return float(uncertainty_auroc(np.asarray(prob)[known], y[known] == WRONG_LABEL))


def apply_filter(node_state: np.ndarray, prob: np.ndarray, threshold: float, action: str = "remove") -> np.ndarray:
    """``node_state`` after the filter acted on the prompts whose probability exceeds
    ``threshold`` (a new array): ``action="remove"`` deactivates them (when that would
    remove every prompt, the least suspect one stays: no prompt, no mask);
    ``"relabel"`` flips their labels (when that would leave no positive, the least
    suspect positive keeps its label: with negatives alone SAM has no object to segment;
    relabelling at 0.5 did that to 3-8% of coarse sets, session 15).

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


def node_probabilities(
    model: Any, world: PromptWorld, states: Sequence[tuple[ImageRecord, int, np.ndarray, np.ndarray]], max_steps: int
) -> np.ndarray:
    """(B, N) wrong-label probabilities of ``model``'s label head for prompt states,
    without ground truth (:func:`stacked_observations`, then :func:`filter_probabilities`)."""
    opts = observation_options(model.observation_space)
    return filter_probabilities(model, stacked_observations(world, states, opts, max_steps))


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
    from ppd.agents.train import greedy_rollout

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
) -> tuple[Any, dict[str, Any]]:
    """Build, fit and select the filter (module docstring); writes ``out/label_filter.zip``
    and ``out/label_filter.json`` (atomically, the network first) and returns the network
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
    from ppd.agents.dqn import make_dqn
    from ppd.data.scenes import TRAIN_DOMAIN, ProceduralScenes
    from ppd.envs.vec_env import PromptVecEnv

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
    io.atomic_write(out / FILTER_FILE, lambda tmp: model.save(tmp))
    io.save_json(meta, out / FILTER_META)
    venv.close()
    logger.info("label filter: %s above %s (relabel gate %s), held-out AUC %.3f, %d examples, %.0f s",
                meta["action"], meta["threshold"], meta["relabel_gate"], meta["selection_auc"], meta["examples"], meta["time_s"])
    return model, meta


def _unit_number(value: Any) -> float:
    """``value`` as a float, nan when it is not a number (bools are not)."""
    if isinstance(value, bool):
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def check_threshold(value: Any, name: str = "threshold") -> float:
    """A wrong-label filter threshold: a number in (0, 1] (1.0 changes nothing), as a
    float; else ValueError naming ``name``. The one range check for the saved metadata,
    ``PromptDefender`` and ``ppd refine --filter-threshold``."""
    v = _unit_number(value)
    if not 0.0 < v <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return v


def check_relabel_gate(value: Any, name: str = "relabel_gate") -> float:
    """A relabel gate: a number in [0, 1) (0: any prompt may be relabelled), as a float;
    else ValueError naming ``name`` (as :func:`check_threshold`)."""
    v = _unit_number(value)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return v


def load_label_filter(folder: str | Path, device: str | None = None) -> tuple[Any, dict[str, Any]] | None:
    """The filter network and its ``label_filter.json`` from a run folder, or None when
    the run has none (trained before the filter existed, or with ``filter_scenes=0``).

    Raises:
        ValueError: one of the two files without the other, or an unreadable one.
    """
    from ppd.agents.dqn import MaskedDQN

    folder = Path(folder)
    net, meta = folder / FILTER_FILE, folder / FILTER_META
    if not net.is_file() and not meta.is_file():
        return None
    if not (net.is_file() and meta.is_file()):
        raise ValueError(f"{folder}: {FILTER_FILE} and {FILTER_META} go together, found only "
                         f"{(net if net.is_file() else meta).name}")
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        threshold = info["threshold"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{meta}: unreadable label filter metadata ({exc})") from None
    check_threshold(threshold, f"{meta}: threshold")
    info.setdefault("action", "remove")  # written before relabelling was a candidate
    if info["action"] not in FILTER_ACTIONS:
        raise ValueError(f"{meta}: action must be one of {FILTER_ACTIONS}, got {info['action']!r}")
    info.setdefault("relabel_gate", 0.0)  # written before the gate existed: no gate
    check_relabel_gate(info["relabel_gate"], f"{meta}: relabel_gate")
    model = MaskedDQN.load(str(net), device=device or "auto")
    if not getattr(model.policy.q_net, "label_aux", False):
        raise ValueError(f"{net}: this network has no label head")
    return model, info
