"""``ppd train``: adversarial attacker / defender training (PPD Algorithm 1).

One :class:`~ppd.envs.world.PromptWorld` (segmenter, scenes, graphs, decode cache) is
shared by an attacker and a defender :class:`~ppd.envs.vec_env.PromptVecEnv`. Each round:

1. the attacker learns for ``attacker_steps`` env steps, starting from ideal prompts;
   every attacker episode's final prompt set goes into ``world.attack_pool``;
2. the defender learns for ``defender_steps`` env steps, starting from attacked sets
   (the pool), coarse noisy sets and ideal ones (``start_mix``);
3. every ``eval_every`` rounds (and after the last) both agents are evaluated greedily
   on held-out scenes: mean IoU of ideal prompts, ideal after the attack, the attacked
   set after the defence, coarse prompts, and coarse after the defence.

With ``defender_evals`` > 0 (default 0) the defender's phase is split into that many
parts, each followed by a greedy evaluation of the defender on the held-out coarse
prompt sets; ``defender.zip`` is the best defender seen (model selection on held-out
in-domain scenes: DQN's greedy policy can get worse between evaluations) and
``defender_last.zip`` the latest, which training (and ``--resume``) continues from. The
final metrics describe ``defender.zip``.

A run folder holds ``config.yaml`` (written before training starts), ``attacker.zip`` / ``defender.zip``
and ``state.json`` (after every round, atomically: ``--resume`` continues from the last
completed round), ``metrics.json`` and ``examples.png`` (at the end), and TensorBoard
logs under ``tb/`` (``eval/*`` keys with the defender's env steps as x axis).

With ``ruac_checkpoint`` the segmenter decodes with the RUAC Bayesian decoder, and
``node_uncertainty`` adds each patch's mean pixel uncertainty of the current mask to both
agents' observations (the ``uncertainty`` key of
:class:`~ppd.envs.point_prompt_env.PointPromptEnv`). Both are saved in ``config.yaml``, so
:meth:`ppd.agents.defender.PromptDefender.load` rebuilds the same segmenter and
observation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecMonitor

from ppd import io
from ppd.agents.dqn import MaskedDQN, make_dqn
from ppd.agents.label_filter import (
    FILTER_ACTIONS,
    FILTER_FILE,
    FILTER_META,
    LabelFilter,
    load_label_filter,
    node_probabilities,
    train_label_filter,
)
from ppd.agents.qnet import NODE_FEATURES, NODE_NORMS, Q_PRIORS, STOP_QS, prior_terms
from ppd.data.scenes import TRAIN_DOMAIN, JitteredScenes, ProceduralScenes
from ppd.agents.refine_config import DEFAULT_POLISH
from ppd.agents.rollout import _polish_rollouts, greedy_rollout  # re-exported: greedy_rollout
from ppd.envs.point_prompt_env import COARSE_NOISE, DEFAULT_START_MIX
from ppd.envs.vec_env import PromptVecEnv
from ppd.envs.world import INACTIVE, ImageRecord, PromptWorld, prompts_from_state, segmenter_gives_uncertainty, state_from_prompts
from ppd.models import BUNDLED_NAME
from ppd.prompts import coarse_prompts, ideal_prompts
from ppd.segmenter import PRECISIONS, Segmenter

logger = logging.getLogger(__name__)

__all__ = [
    "EVAL_SEED",
    "EVAL_KEYS",
    "TrainConfig",
    "evaluate_agents",
    "greedy_rollout",
    "train",
]

#: First seed of the held-out evaluation scenes (far from every training seed).
EVAL_SEED = 10_000_000 + 5000
#: Evaluation metrics (mean IoU over the held-out scenes), in table order.
EVAL_KEYS = (
    "ideal_iou", "attacked_iou", "defended_attacked_iou", "coarse_iou", "defended_coarse_iou",
    "defended_attacked_iou_last", "defended_coarse_iou_last",
)


def _thresholds(text: str) -> tuple[float, ...]:
    """A comma-separated list of numbers (``filter_thresholds``) as floats."""
    return tuple(float(t) for t in str(text).split(",") if t.strip())


def _valid_thresholds(text: str, allow_zero: bool = False) -> bool:
    """Whether ``text`` is a comma-separated list of at least one number in (0, 1)
    (``[0, 1)`` with ``allow_zero``)."""
    try:
        values = _thresholds(text)
    except ValueError:
        return False
    return bool(values) and all((0.0 <= v if allow_zero else 0.0 < v) and v < 1.0 for v in values)


@dataclass
class TrainConfig:
    """Configuration of ``ppd train`` (field docs are the CLI help)."""

    seed: int = 0
    """random seed (scenes, networks, exploration)"""
    device: str = "auto"
    """torch device of the Q-networks and the segmenter: auto, cpu, cuda"""
    precision: str = "auto"
    """segmenter precision: auto (bf16 autocast on CUDA for official SAM2 models, else fp32), bf16 (CUDA only), fp32"""
    segmenter: str = BUNDLED_NAME
    """segmenter name (the bundled sam2-tiny-synthetic or an official SAM2 config)"""
    checkpoint: str = ""
    """segmenter checkpoint file (empty: the bundled model's own)"""
    ruac_checkpoint: str = ""
    """RUAC head (a ppd train-ruac run folder or its ruac_head.pt): decode with the RUAC Bayesian decoder (empty: SAM2's decoder)"""
    ruac_uncertainty: str = "analytic"
    """RUAC uncertainty mode: analytic (one pass) or mc (sampled); used with --ruac-checkpoint"""
    node_uncertainty: bool = False
    """add each patch's mean pixel uncertainty of the current mask to the node inputs (needs --ruac-checkpoint)"""
    probe: bool = True
    """defender observes removal probes (beyond the paper): for each prompt, SAM's
    predicted IoU and the mask without it, decoded in the same call (K + 1 prompt sets per
    step); --no-probe gives the paper's observation"""
    defender_step_cost: float = 0.02
    """reward subtracted per defender change (beyond the paper): a removal or relabel
    must raise IoU by more than this to pay, so the defender learns to stop"""
    n_envs: int = 8
    """parallel environments per agent (decoded in one batch)"""
    rounds: int = 2
    """adversarial rounds (attacker phase + defender phase)"""
    attacker_steps: int = 2500
    """attacker env steps per round"""
    defender_steps: int = 7500
    """defender env steps per round"""
    scenes: int = 200
    """training scenes (procedural, training domain)"""
    jitter: float = 0.0
    """photometric jitter of half of the training scenes (contrast, colour, blur,
    noise; see ppd.data.scenes.photometric_jitter): its strength, 0 for none"""
    eval_scenes: int = 48
    """held-out evaluation scenes"""
    eval_every: int = 1
    """evaluate every N rounds (and always after the last; 0: only after the last)"""
    defender_evals: int = 0
    """evaluations of the defender per round on the held-out coarse prompt sets (its
    phase is split into as many parts); defender.zip is then the best defender seen
    (mean IoU of its output, refine's default rule) and defender_last.zip the latest,
    which --resume continues; 0 (default): no selection, defender.zip is the latest.
    Measured: with 48 eval scenes the selection picked worse defenders than the latest"""
    attacker_max_steps: int = 4
    """step budget of an attacker episode (prompts it may add)"""
    defender_max_steps: int = 12
    """step budget of a defender episode"""
    relabel: bool = True
    """the defender may relabel a prompt as well as remove it (beyond the paper)"""
    start_mix: dict = field(default_factory=lambda: dict(DEFAULT_START_MIX))
    """defender start-state distribution: weights of 'attacked', 'coarse', 'ideal' (file only)"""
    coarse_kwargs: dict = field(default_factory=dict)
    """arguments of ppd.prompts.coarse_prompts for coarse start states and evaluation (file only)"""
    coarse_noise: str = "fixed"
    """noise of the defender's coarse start sets: fixed (coarse_kwargs, the evaluation's
    generator) or random (each set's settings drawn: 3-16 points, flip 0-0.4, boundary
    0-0.3, outlier 0-0.2, a quarter of the sets clean; beyond the paper: prompt
    generators differ). Measured on two seeds: recovery from attacked sets up, refined
    coarse sets down, clean clicks no better kept (docs/ppd_experiments.md, session 14)"""
    max_ideal_points: int = 6
    """ideal prompts per label (attacker start states)"""
    grid: int = 0
    """graph nodes per side (0: the segmenter's embedding grid, at most 32)"""
    k_physical: int = 8
    """physical k-NN edges per node"""
    k_semantic: int = 8
    """semantic k-NN edges per node"""
    hidden_dim: int = 32
    """GNN width"""
    n_layers: int = 2
    """GNN message-passing layers"""
    node_norm: str = "none"
    """node-feature normalisation in the Q-networks: instance (standardise each image's
    node features over its nodes; beyond the paper) or none"""
    node_features: str = "embedding"
    """image features of the Q-networks' nodes: embedding (pooled SAM2 embedding),
    relative (only each node's similarity to the mask, background, positive and negative
    prompt prototypes; beyond the paper) or both"""
    stop_q: str = "learned"
    """stop-action Q-value: zero (its exact value: stop ends the episode with reward 0;
    an agent acts only when it expects a gain) or learned (a head over pooled graph
    features)"""
    q_prior: str = "auto"
    """defender Q-value prior (beyond the paper): probe (add a learned multiple,
    initially 1, of SAM's predicted-IoU gain of each removal, so that training starts
    from a GreedyScoreFilter-like policy; needs probes), consistency (add learned
    multiples, initially 0.5, of the positive part of each prompt's label disagreement
    with the image's other prompts to its removal and relabel Q-values), probe+consistency,
    none, or auto (default: probe with probes, none without). probe, measured over 4
    seeds: mean recovery from attacked prompts 0.646 -> 0.725 in-domain, refined coarse
    prompts better on 5 of 6 domains. consistency: its weights trained to ~0 in 2 of 2
    runs (docs/ppd_experiments.md)"""
    label_aux: float = 0.0
    """weight of the defender's auxiliary wrong-label loss (beyond the paper; 0: off): a
    head on the Q-network's node features predicts, for every prompt of every replayed
    state, whether its label is wrong by the ground truth (binary cross-entropy, added to
    the TD loss). Training only: the Q-values never read the target, refine needs no
    ground truth. Measured at 0.3 over 4 seeds: refined coarse prompts 0.768 -> 0.800
    in-domain, recovery from attacked ones 0.725 -> 0.684 (docs/ppd_experiments.md); the head's ROC AUC
    for wrong labels 0.74-0.92 (PromptDefender.wrong_label_probability)"""
    filter_scenes: int = 400
    """scenes of the wrong-label filter, the last stage of training (beyond the paper;
    0: none): a network of the defender's architecture trained by supervision to flag
    prompts whose label is wrong; refine removes or relabels the flagged ones before the
    defender acts, with a threshold and action selected on held-out scenes (1.0: off).
    See ppd.agents.label_filter"""
    filter_actions: str = "remove,relabel"
    """the filter actions the selection may pick, comma-separated (remove, relabel).
    Relabelling keeps refined coarse prompts as good as without the filter, but the
    defender then acts on more prompts: refine took 1.4-1.9x as long where it was picked
    (README, session 13); "remove" alone is the faster choice"""
    filter_thresholds: str = "0.5,0.7"
    """the filter thresholds the selection may pick, comma-separated, each in (0, 1); the
    filter off (1.0) is always a candidate"""
    filter_relabel_gates: str = "0"
    """relabel gates the selection may pick, comma-separated, each in [0, 1): after the
    filter, the defender's rollout may relabel only prompts whose wrong-label
    probability exceeds the gate (0: any prompt; "0,0.5" lets the selection choose).
    Session 16: the gate raised recovery from attacked prompts (two runs, 40 in-domain
    scenes: 0.658 -> 0.708, 0.778 -> 0.828), but with it the selection of seed 2 switched
    to removal and its refined coarse prompts fell 0.847 -> 0.689 in-domain on the
    defense bench (recovery rose on all six domains): off by default
    (docs/ppd_experiments.md)"""
    filter_walk: int = 1
    """random defender steps recorded after each of the filter's start states"""
    filter_epochs: int = 10
    """supervised passes over the filter's examples"""
    learning_rate: float = 5e-4
    """Adam learning rate"""
    buffer_size: int = 30_000
    """replay buffer transitions per agent"""
    learning_starts: int = 500
    """env steps of uniform valid actions before learning starts"""
    batch_size: int = 32
    """replay batch size"""
    gamma: float = 0.9
    """discount factor"""
    train_freq: int = 1
    """gradient updates every N vector steps (one vector step = n_envs env steps)"""
    gradient_steps: int = 2
    """gradient updates each time"""
    target_update_interval: int = 500
    """env steps between target-network updates"""
    exploration_fraction: float = 0.4
    """fraction of all of an agent's training steps over which epsilon anneals"""
    exploration_final_eps: float = 0.05
    """final epsilon"""
    double_q: bool = True
    """Double DQN targets (the online net picks the next action, the target net values it)"""
    save_replay_buffer: bool = False
    """also save the replay buffers each round (bigger files; exact --resume)"""
    n_examples: int = 6
    """held-out scenes drawn in examples.png"""

    def __post_init__(self) -> None:
        checks = {
            "n_envs": self.n_envs >= 1,
            "rounds": self.rounds >= 1,
            "attacker_steps": self.attacker_steps >= 0,
            "defender_steps": self.defender_steps >= 1,
            "scenes": self.scenes >= 1,
            "jitter": self.jitter >= 0,
            "eval_scenes": self.eval_scenes >= 1,
            "eval_every": self.eval_every >= 0,
            "defender_evals": 0 <= self.defender_evals <= self.defender_steps,
            "attacker_max_steps": self.attacker_max_steps >= 1,
            "defender_max_steps": self.defender_max_steps >= 1,
            "defender_step_cost": self.defender_step_cost >= 0,
            "grid": self.grid >= 0,
            "batch_size": self.batch_size >= 1,
            "buffer_size": self.buffer_size >= self.n_envs,
            "gamma": 0.0 <= self.gamma <= 1.0,
            "exploration_fraction": 0.0 < self.exploration_fraction <= 1.0,
            "ruac_uncertainty": self.ruac_uncertainty in ("analytic", "mc"),
            "precision": self.precision in ("auto", *PRECISIONS),
            "node_norm": self.node_norm in NODE_NORMS,
            "stop_q": self.stop_q in STOP_QS,
            "node_features": self.node_features in NODE_FEATURES,
            "q_prior": self.q_prior in (*Q_PRIORS, "auto"),
            "label_aux": self.label_aux >= 0,
            "filter_scenes": self.filter_scenes >= 0,
            "filter_walk": self.filter_walk >= 0,
            "filter_epochs": self.filter_epochs >= 1,
            "coarse_noise": self.coarse_noise in COARSE_NOISE,
            "filter_actions": bool(self.filter_action_list)
            and set(self.filter_action_list) <= set(FILTER_ACTIONS),
            "filter_thresholds": _valid_thresholds(self.filter_thresholds),
            "filter_relabel_gates": _valid_thresholds(self.filter_relabel_gates, allow_zero=True),
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError("invalid TrainConfig value(s): " + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad))
        if "probe" in prior_terms(self.q_prior) and not self.probe:
            raise ValueError(
                f"q_prior={self.q_prior!r} reads the removal probes: use it with probe on, or q_prior none/consistency/auto"
            )
        unknown = set(self.start_mix) - set(DEFAULT_START_MIX)
        if unknown:
            raise ValueError(f"start_mix keys must be among {sorted(DEFAULT_START_MIX)}, got {sorted(unknown)}")

    @property
    def filter_threshold_list(self) -> tuple[float, ...]:
        """``filter_thresholds`` as a tuple of floats."""
        return _thresholds(self.filter_thresholds)

    @property
    def filter_relabel_gate_list(self) -> tuple[float, ...]:
        """``filter_relabel_gates`` as a tuple of floats."""
        return _thresholds(self.filter_relabel_gates)

    @property
    def filter_action_list(self) -> tuple[str, ...]:
        """``filter_actions`` as a tuple of action names."""
        return tuple(a.strip() for a in str(self.filter_actions).split(",") if a.strip())

    def env_kwargs(self, role: str) -> dict[str, Any]:
        kw: dict[str, Any] = dict(
            max_steps=self.attacker_max_steps if role == "attacker" else self.defender_max_steps,
            relabel=self.relabel,
            coarse_kwargs=dict(self.coarse_kwargs),
            coarse_noise=self.coarse_noise,
            max_ideal_points=self.max_ideal_points,
            node_uncertainty=self.node_uncertainty,
        )
        if role == "defender":
            kw["start_mix"] = dict(self.start_mix)
            kw["step_cost"] = self.defender_step_cost
            kw["probe"] = self.probe
            kw["label_target"] = self.label_aux > 0
        return kw

    def dqn_kwargs(self, role: str = "defender") -> dict[str, Any]:
        """:func:`make_dqn` keyword arguments of one agent (the removal prior reads the
        defender's probes, so the attacker never has one)."""
        return dict(
            learning_rate=self.learning_rate,
            buffer_size=self.buffer_size,
            learning_starts=self.learning_starts,
            batch_size=self.batch_size,
            gamma=self.gamma,
            train_freq=self.train_freq,
            gradient_steps=self.gradient_steps,
            target_update_interval=self.target_update_interval,
            exploration_fraction=self.exploration_fraction,
            exploration_final_eps=self.exploration_final_eps,
            double_q=self.double_q,
            hidden_dim=self.hidden_dim,
            n_layers=self.n_layers,
            node_norm=self.node_norm,
            stop_q=self.stop_q,
            node_features=self.node_features,
            q_prior=self.resolved_q_prior if role == "defender" else "none",
            label_aux=self.label_aux if role == "defender" else 0.0,
        )

    @property
    def resolved_q_prior(self) -> str:
        """``q_prior`` with ``"auto"`` resolved: ``"probe"`` with probes, else ``"none"``."""
        if self.q_prior == "auto":
            return "probe" if self.probe else "none"
        return self.q_prior

    @property
    def total_steps(self) -> int:
        """Env steps of the whole run (both agents)."""
        return self.rounds * (self.attacker_steps + self.defender_steps)


# ----------------------------------------------------------------------------- rollouts
def _eval_items(world: PromptWorld, cfg: TrainConfig) -> list[tuple[ImageRecord, int, Any, Any]]:
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
    ``defended_*``: the greedy defender's output from the attacked / coarse set, picked
    as ``PromptDefender.refine`` does by default (``select="score"``: the visited set with
    SAM's highest predicted IoU), then with ``polish`` polished as ``refine`` does
    (:func:`~ppd.agents.defender.polish_states`); ``defended_*_last``: where the
    defender stopped (not polished).

    With ``label_filter`` (:class:`~ppd.agents.label_filter.LabelFilter`), the
    defender starts from the filtered sets, as ``refine`` does; ``defended_*_nofilter``
    are then its outputs from the unfiltered ones.
    """
    items = _eval_items(world, cfg)
    ideal = [(rec, obj, *s_ideal) for rec, obj, s_ideal, _ in items]
    coarse = [(rec, obj, *s_coarse) for rec, obj, _, s_coarse in items]
    att = greedy_rollout(attacker, world, "attacker", ideal, cfg.attacker_max_steps, cfg.relabel)
    attacked = [(rec, obj, r["state"], r["points"]) for (rec, obj, _, _), r in zip(items, att)]
    def_starts = {"attacked": attacked, "coarse": coarse}
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
    if polish:
        _polish_rollouts(world, def_starts["attacked"], def_att, cfg)
        _polish_rollouts(world, def_starts["coarse"], def_coarse, cfg)
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
    from ppd.agents.defender import PromptDefender

    defender = PromptDefender.load(run_dir, segmenter=segmenter, device=device)
    out = {}
    for name in ("attacked", "coarse"):
        sets = rollouts[name]  # (record, object, node_state, node_points)
        coords, labels = zip(*(prompts_from_state(st, pts) for _, _, st, pts in sets))
        results = defender.refine_many([rec.scene.image for rec, *_ in sets], coords, labels)
        out[f"refine_{name}_iou"] = float(np.mean(
            [world.quality_fn(r.mask, rec.scene.masks[obj]) for (rec, obj, *_), r in zip(sets, results)]))
    return out


def _examples_image(world: PromptWorld, rollouts: dict[str, list], n: int) -> np.ndarray:
    """Rows: ground truth | coarse prompts + mask | defender-refined prompts + mask, each
    tile captioned: prompt count, the refinement's removals / relabels, and the mask's
    quality against the ground truth (the world's measure, IoU by default)."""
    from ppd.viz import caption, grid, overlay

    measure = {"iou": "IoU", "dice": "Dice"}.get(world.quality_name, world.quality_name)
    tiles = []
    for (rec, obj, st, pts), res in list(zip(rollouts["coarse"], rollouts["defended_coarse"]))[:n]:
        img = rec.scene.image
        tiles.append(caption(overlay(img, rec.scene.masks[obj], color=(40, 200, 40)), f"ground truth ({rec.scene.domain})"))
        for title, state, points in (("coarse", st, pts), ("refined", res["score_state"], res["points"])):
            out = world.evaluate([(rec, obj, state, points)], want_mask=True)[0]
            coords, labels = prompts_from_state(state, points)
            text = f"{title}: {len(labels)} pts"
            if title == "refined":
                dropped = int(((st != INACTIVE) & (state == INACTIVE)).sum())
                flipped = int(((st != INACTIVE) & (state != INACTIVE) & (state != st)).sum())
                text += f": {dropped} removed, {flipped} relabelled"
            tiles.append(caption(overlay(img, out.mask, coords, labels), f"{text}\n{measure} {out.quality:.2f}"))
    return grid(tiles, cols=3)


# ----------------------------------------------------------------------------- training
def _save_model(model: MaskedDQN, path: Path, replay: bool) -> None:
    """``model.save`` to a temp file renamed onto ``path`` (and the replay buffer)."""
    io.atomic_write(path, lambda tmp: model.save(tmp))
    if replay:
        rb = path.with_name(path.stem + "_replay.pkl")
        io.atomic_write(rb, lambda tmp: model.save_replay_buffer(tmp))


def _load_model(path: Path, env, cfg: TrainConfig, device: str) -> MaskedDQN:
    model = MaskedDQN.load(str(path), env=env, device=device)
    model.tensorboard_log = str(path.parent / "tb")  # the run folder may have moved
    rb = path.with_name(path.stem + "_replay.pkl")
    if cfg.save_replay_buffer and rb.is_file():
        model.load_replay_buffer(str(rb))
    else:
        # Empty buffer: collect learning_starts fresh transitions before updating again.
        model.learning_starts = model.num_timesteps + cfg.learning_starts
    return model


def _ruac_kwargs(ruac_checkpoint: str | None, ruac_uncertainty: str | None) -> dict[str, Any]:
    """``load_segmenter`` arguments for a RUAC head (none without one)."""
    if not ruac_checkpoint:
        return {}
    return dict(decoder="ruac", ruac_checkpoint=ruac_checkpoint, uncertainty=ruac_uncertainty or "analytic")


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


def latest_defender_file(cfg: TrainConfig) -> str:
    """Run-folder file of the latest defender (the one training and ``--resume``
    continue): ``defender_last.zip`` with ``defender_evals`` (``defender.zip`` is then the
    selected one), else ``defender.zip``."""
    return "defender_last.zip" if cfg.defender_evals else "defender.zip"


def _parts(total: int, n: int) -> list[int]:
    """``total`` steps in ``max(n, 1)`` near-equal parts."""
    n = max(n, 1)
    return [total // n + (i < total % n) for i in range(n)]


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def train(
    cfg: TrainConfig,
    out: str | Path,
    resume: bool = False,
    callback: BaseCallback | None = None,
    segmenter: Segmenter | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Adversarial training; writes the run folder ``out`` (see the module docstring).

    Args:
        cfg: the configuration.
        out: run folder.
        resume: continue from ``out/state.json`` (the last completed round).
        callback: an SB3 callback passed to every ``learn`` call (e.g. a progress bar).
        segmenter: use this segmenter instead of loading ``cfg.segmenter`` /
            ``cfg.checkpoint``.
        progress: ``progress(description, total) -> tick(n=1)`` for the label filter's
            stage (the CLI passes tqdm bars).

    Returns:
        ``{"final": {eval metrics}, "history": [...], "rounds": int, "env_steps": int,
        "wall_time_s": float, "steps_per_s": float}`` (also written to ``metrics.json``).

    Torch runs in deterministic mode meanwhile (restored after): with more than one CPU
    thread, two runs of one seed drifted apart in the defender phase (session 22); some
    CPU kernels sum in thread order by default (``index_put_`` with ``accumulate=True``,
    which indexing backward passes use, is one), and this mode picks their ordered ones.
    """
    import torch

    was = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _train(cfg, out, resume, callback, segmenter, progress)
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])


def _train(cfg: TrainConfig, out: str | Path, resume: bool, callback: BaseCallback | None,
           segmenter: Segmenter | None, progress: Any) -> dict[str, Any]:
    """:func:`train`'s body."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state_file = out / "state.json"
    state: dict[str, Any] = {"round": 0, "history": [], "wall_time_s": 0.0}
    if resume:
        if not state_file.is_file():
            raise FileNotFoundError(f"cannot resume: {state_file} not found (no completed round in {out})")
        try:
            state = json.loads(state_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"corrupt run folder {out}: cannot parse state.json: {exc}") from None
        for name in ("attacker.zip", latest_defender_file(cfg)):
            if not (out / name).is_file():
                raise ValueError(f"corrupt run folder {out}: state.json says round {state.get('round')} but {name} is missing")

    device = cfg.device
    if segmenter is None:
        from ppd.segmenter import load_segmenter

        segmenter = load_segmenter(
            cfg.segmenter,
            checkpoint=cfg.checkpoint or None,
            device=None if device == "auto" else device,
            precision=None if cfg.precision == "auto" else cfg.precision,
            **_ruac_kwargs(cfg.ruac_checkpoint, cfg.ruac_uncertainty),
        )
    elif segmenter_gives_uncertainty(segmenter) and not cfg.ruac_checkpoint:
        # record the given RUAC head so that the run (and its defender) can be reloaded
        head = segmenter.info.get("ruac_checkpoint")
        if head:
            cfg = dataclasses.replace(cfg, ruac_checkpoint=str(head), ruac_uncertainty=segmenter.uncertainty_mode)
    if cfg.node_uncertainty and not segmenter_gives_uncertainty(segmenter):
        raise ValueError(
            "node_uncertainty needs a segmenter that gives pixel uncertainty: set ruac_checkpoint "
            "(--ruac-checkpoint DIR_OR_FILE, a head from `ppd train-ruac`) or pass a RUAC segmenter"
        )
    graph_kw = dict(grid=cfg.grid or None, k_physical=cfg.k_physical, k_semantic=cfg.k_semantic)
    scenes = ProceduralScenes(TRAIN_DOMAIN, cfg.scenes, seed=cfg.seed * 1_000_000 + 500_000)
    if cfg.jitter > 0:
        scenes = JitteredScenes(scenes, strength=cfg.jitter, seed=cfg.seed)
    world = PromptWorld(segmenter, scenes, **graph_kw)
    eval_world = PromptWorld(segmenter, ProceduralScenes(TRAIN_DOMAIN, cfg.eval_scenes, seed=EVAL_SEED), **graph_kw)
    cfg = dataclasses.replace(cfg, grid=world.image(0).grid)  # save the resolved grid

    start_round = int(state["round"])
    if start_round < cfg.rounds:  # a filter fitted to an earlier defender would be stale
        for name in (FILTER_FILE, FILTER_META):
            (out / name).unlink(missing_ok=True)
    env_seed = cfg.seed * 10_000 + start_round * 100
    att_env = VecMonitor(PromptVecEnv(cfg.n_envs, "attacker", world=world, seed=env_seed, **cfg.env_kwargs("attacker")))
    def_env = VecMonitor(PromptVecEnv(cfg.n_envs, "defender", world=world, seed=env_seed + 50, **cfg.env_kwargs("defender")))
    tb = str(out / "tb")
    if resume:
        attacker = _load_model(out / "attacker.zip", att_env, cfg, device)
        defender = _load_model(out / latest_defender_file(cfg), def_env, cfg, device)
        saved_prior = defender.q_net.q_prior
        if saved_prior != cfg.resolved_q_prior:  # e.g. a run from before q_prior existed
            logger.warning("resuming a defender built with q_prior=%r (config: %r): the saved network's is kept",
                           saved_prior, cfg.q_prior)
            cfg = dataclasses.replace(cfg, q_prior=saved_prior)
    else:
        attacker = make_dqn(
            att_env, "attacker", relabel=cfg.relabel, seed=cfg.seed, device=device, tensorboard_log=tb,
            **cfg.dqn_kwargs("attacker"),
        )
        defender = make_dqn(
            def_env, "defender", relabel=cfg.relabel, seed=cfg.seed + 1, device=device, tensorboard_log=tb,
            **cfg.dqn_kwargs("defender"),
        )
    # written before any training, and again on --resume: it describes the run as last
    # continued (more rounds, the saved networks' settings)
    io.save_text(yaml.safe_dump(_config_dict(cfg), sort_keys=False), out / "config.yaml")
    attacker.exploration_horizon = max(cfg.rounds * cfg.attacker_steps, 1)
    defender.exploration_horizon = cfg.rounds * cfg.defender_steps

    history: list[dict[str, Any]] = list(state.get("history", []))
    t0 = time.time() - float(state.get("wall_time_s", 0.0))
    steps_before = start_round * (cfg.attacker_steps + cfg.defender_steps)
    t_start = time.time()
    last_eval: dict[str, float] | None = None
    rollouts: dict[str, list] | None = None
    coarse_items = []  # held-out coarse starts of the defender selection
    if cfg.defender_evals:
        coarse_items = [(rec, obj, *s_coarse) for rec, obj, _, s_coarse in _eval_items(eval_world, cfg)]
    best = dict(state.get("best_defender") or {"defended_coarse_iou": -1.0})
    for rnd in range(start_round, cfg.rounds):
        if cfg.attacker_steps:
            attacker.learn(cfg.attacker_steps, callback=callback, reset_num_timesteps=False, tb_log_name="attacker")
        selection = []
        for part in _parts(cfg.defender_steps, cfg.defender_evals):
            defender.learn(part, callback=callback, reset_num_timesteps=False, tb_log_name="defender")
            if cfg.defender_evals:
                value = defended_coarse_iou(defender, eval_world, cfg, coarse_items)
                point = {"defender_timesteps": int(defender.num_timesteps), "defended_coarse_iou": value}
                selection.append(point)
                defender.logger.record("eval/selection_defended_coarse_iou", value)
                if value > best["defended_coarse_iou"]:
                    best = point
                    _save_model(defender, out / "defender.zip", False)
        entry: dict[str, Any] = {
            "round": rnd + 1,
            "attacker_timesteps": int(attacker.num_timesteps),
            "defender_timesteps": int(defender.num_timesteps),
            "time_s": round(time.time() - t0, 1),
        }
        if selection:
            entry["defender_selection"] = selection
        last = rnd + 1 == cfg.rounds
        if last or (cfg.eval_every and (rnd + 1) % cfg.eval_every == 0):
            last_eval, rollouts = evaluate_agents(attacker, defender, eval_world, cfg, return_rollouts=True)  # type: ignore[misc]
            entry["eval"] = last_eval
            for k, v in last_eval.items():
                defender.logger.record(f"eval/{k}", v)
            defender.logger.dump(defender.num_timesteps)
            logger.info("round %d/%d eval: %s", rnd + 1, cfg.rounds, ", ".join(f"{k} {v:.3f}" for k, v in last_eval.items()))
        history.append(entry)
        _save_model(attacker, out / "attacker.zip", cfg.save_replay_buffer)
        _save_model(defender, out / latest_defender_file(cfg), cfg.save_replay_buffer)
        saved = {"round": rnd + 1, "history": history, "wall_time_s": time.time() - t0}
        if cfg.defender_evals:
            saved["best_defender"] = best
        io.save_json(saved, state_file)

    t_rounds = time.time()
    # the final metrics describe defender.zip (the selected one with defender_evals)
    final_defender = MaskedDQN.load(str(out / "defender.zip"), device=device) if cfg.defender_evals else defender
    filter_meta = None
    if cfg.filter_scenes:
        loaded = load_label_filter(out, device)  # present only if this run's rounds were all done before
        if loaded is None:
            loaded = train_label_filter(cfg, out, segmenter, attacker, final_defender, progress=progress)
        filter_model, filter_meta = loaded
    wall = time.time() - t0
    steps_now = cfg.total_steps - steps_before
    if filter_meta is not None:
        last_eval, rollouts = evaluate_agents(  # type: ignore[misc]
            attacker, final_defender, eval_world, cfg, return_rollouts=True, label_filter=LabelFilter(
                filter_model, filter_meta["threshold"], filter_meta["action"], filter_meta["relabel_gate"])
        )
    elif cfg.defender_evals:
        last_eval, rollouts = evaluate_agents(attacker, final_defender, eval_world, cfg, return_rollouts=True)  # type: ignore[misc]
        logger.info("selected defender: %s", best)
    elif last_eval is None or rollouts is None:  # resumed a run whose rounds were all done
        last_eval, rollouts = evaluate_agents(attacker, defender, eval_world, cfg, return_rollouts=True)  # type: ignore[misc]
    from PIL import Image

    last_eval = {**last_eval, **refine_metrics(out, segmenter, eval_world, rollouts, device)}
    img = _examples_image(eval_world, rollouts, cfg.n_examples)
    io.atomic_write(out / "examples.png", lambda tmp: Image.fromarray(img).save(tmp, format="PNG"))
    metrics = {
        "final": last_eval,
        "selected_defender": best if cfg.defender_evals else None,
        "history": history,
        "rounds": cfg.rounds,
        "env_steps": cfg.total_steps,
        "wall_time_s": round(wall, 1),
        "steps_per_s": round(steps_now / max(t_rounds - t_start, 1e-9), 1),
        "decode_calls": world.decode_calls,
        "label_filter": filter_meta,
    }
    io.save_json(metrics, out / "metrics.json")
    att_env.close()
    def_env.close()
    return metrics
