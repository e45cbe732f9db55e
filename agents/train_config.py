"""The configuration of ``ppd train`` (:class:`TrainConfig`): its fields, whose docstrings
are the command's ``--help``, their checks, the arguments it gives the environments and
the DQN agents, and :meth:`TrainConfig.from_run`, which reads a run folder's
``config.yaml`` back.

Importing this module loads neither torch nor Stable-Baselines3 (``ppd train --help``
builds its flags from it); the checks that compare values with the network's, the
environments' and the label filter's options import those modules when a configuration
is built.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ppd.config import config_from_dict, load_config_file

logger = logging.getLogger(__name__)

__all__ = ["ABSENT_MEANS", "RUN_CONFIG_FILES", "TrainConfig"]

#: Files a run folder's configuration is read from, in order (``ppd train`` writes
#: ``config.yaml``).
RUN_CONFIG_FILES = ("config.yaml", "config.yml", "config.json")
#: The value a field takes when a run's saved configuration lacks it (the run was
#: written before the field existed, and trained as this value does), where that is
#: not the field's default: a run resumed or read back is not changed by a later
#: default.
ABSENT_MEANS = {"fm_starts": 0.0}
#: The bundled segmenter's name (:data:`ppd.models.BUNDLED_NAME`, spelled here so that
#: importing this module does not import torch; a test checks that the two agree).
BUNDLED_SEGMENTER = "sam2-tiny-synthetic"


@lru_cache(maxsize=None)
def _choices() -> dict[str, tuple]:
    """The allowed values of the fields that name another module's options."""
    from ppd.agents.graph_qnet import NODE_FEATURES, NODE_NORMS, Q_PRIORS, STOP_QS
    from ppd.agents.label_filter_apply import FILTER_ACTIONS
    from ppd.envs.point_prompt_env import COARSE_NOISE, DEFAULT_START_MIX
    from ppd.segmenter import PRECISIONS

    return dict(node_norm=NODE_NORMS, stop_q=STOP_QS, node_features=NODE_FEATURES, q_prior=(*Q_PRIORS, "auto"),
                coarse_noise=COARSE_NOISE, precision=("auto", *PRECISIONS), filter_actions=FILTER_ACTIONS,
                start_mix=tuple(DEFAULT_START_MIX))  # "fm" is set by fm_starts


def _default_start_mix() -> dict[str, float]:
    """The environments' default start mix (:data:`ppd.envs.point_prompt_env.DEFAULT_START_MIX`)."""
    from ppd.envs.point_prompt_env import DEFAULT_START_MIX

    return dict(DEFAULT_START_MIX)


def _prior_terms(q_prior: str) -> set[str]:
    """:func:`ppd.agents.graph_qnet.prior_terms` (the priors a ``q_prior`` value adds)."""
    from ppd.agents.graph_qnet import prior_terms

    return prior_terms(q_prior)


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
    threads: int = 0
    """torch CPU threads (0: torch's default, one per core; on a busy machine 1 or 2 can be
    much faster). Saved with the run (its metrics.json records the count used): a seed
    reruns bit-identically only with the same thread count on the same machine type.
    --resume may change it"""
    precision: str = "auto"
    """segmenter precision: auto (bf16 autocast on CUDA for official SAM2 models, else fp32), bf16 (CUDA only), fp32"""
    segmenter: str = BUNDLED_SEGMENTER
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
    data: list = field(default_factory=list)
    """training data, repeatable: SOURCE or NAME=SOURCE, where SOURCE is a folder holding
    images/ and masks/ (binary or instance-id PNG masks paired by file stem), a COCO
    .json (images in an images/ folder beside it or beside the file), or
    procedural:DOMAIN, as ppd bench --data takes them; several are mixed. Default: the
    procedural training domain"""
    eval_data: list = field(default_factory=list)
    """held-out evaluation data, in the same forms (default: eval_scenes images held out
    of the --data folders and COCO files by the seed, never trained on; a procedural
    source evaluates on held-out scene seeds)"""
    min_area: int = 0
    """least object area in pixels in folder and COCO data: smaller objects are neither
    trained nor evaluated on"""
    max_objects: int = 0
    """most objects per image in folder and COCO data, the largest first (0: all)"""
    embedding_cache: str = ""
    """folder that keeps the images' embeddings across runs: a second run on the same
    images (and the one-shot references) does not encode them again (empty: none)"""
    scenes: int = 200
    """training scenes of each procedural source (the default data: the training domain)"""
    fm_starts: float = 0.2
    """share of the defender's start states that are one-shot feature-matching sets
    (ppd.prompts.feature_matching from a reference of the object's class; see
    ppd.data.references), so that the defender learns the errors FM makes (0: none; the
    rest of the starts follow start_mix)"""
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
    start_mix: dict = field(default_factory=_default_start_mix)
    """defender start-state distribution: weights of 'attacked', 'coarse', 'ideal' (file only)"""
    coarse_kwargs: dict = field(default_factory=dict)
    """arguments of ppd.prompts.coarse_prompts for coarse start states and evaluation (file only)"""
    coarse_noise: str = "fixed"
    """noise of the defender's coarse start sets: fixed (coarse_kwargs, the evaluation's
    generator) or random (each set's settings drawn: 3-16 points, flip 0-0.4, boundary
    0-0.3, outlier 0-0.2, a quarter of the sets clean; beyond the paper: prompt
    generators differ). Measured on two seeds: recovery from attacked sets up, refined
    coarse sets down, clean clicks no better kept (docs/training.md, "Options measured and left off")"""
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
    runs (docs/training.md, "Options measured and left off")"""
    label_aux: float = 0.0
    """weight of the defender's auxiliary wrong-label loss (beyond the paper; 0: off): a
    head on the Q-network's node features predicts, for every prompt of every replayed
    state, whether its label is wrong by the ground truth (binary cross-entropy, added to
    the TD loss). Training only: the Q-values never read the target, refine needs no
    ground truth. Measured at 0.3 over 4 seeds: refined coarse prompts 0.768 -> 0.800
    in-domain, recovery from attacked ones 0.725 -> 0.684 (docs/training.md, "Options measured and left off"); the head's ROC AUC
    for wrong labels 0.74-0.92 (PromptDefender.wrong_label_probability)"""
    chooser_pairs: int = 200
    """training objects the run's one-shot edit chooser is fitted on, after the label
    filter (with fm_starts > 0; 0: none, and one-shot refinement uses the bundled chooser):
    a mask-quality score learned with the ground truth that picks the one-shot output
    among the FM points, their single edits and the defender's output (ppd bench
    --protocol oneshot; ppd.oneshot_quality). About 0.5 s per object with the bundled
    model on one core. See ppd.agents.train_chooser"""
    filter_scenes: int = 400
    """scenes of the wrong-label filter, the last stage of training (beyond the paper;
    0: none): a network of the defender's architecture trained by supervision to flag
    prompts whose label is wrong; refine removes or relabels the flagged ones before the
    defender acts, with a threshold and action selected on held-out scenes (a selected
    threshold of 1.0 turns it off). See ppd.agents.label_filter"""
    filter_actions: str = "remove,relabel"
    """the filter actions the selection may pick, comma-separated (remove, relabel).
    Relabelling keeps refined coarse prompts as good as without the filter, but the
    defender then acts on more prompts: refine took 1.4-1.9x as long where it was picked
    (measured); "remove" alone is the faster choice"""
    filter_thresholds: str = "0.5,0.7"
    """the filter thresholds the selection may pick, comma-separated, each in (0, 1); the
    filter off (1.0) is always a candidate"""
    filter_relabel_gates: str = "0"
    """relabel gates the selection may pick, comma-separated, each in [0, 1): after the
    filter, the defender's rollout may relabel only prompts whose wrong-label
    probability exceeds the gate (0: any prompt; "0,0.5" lets the selection choose).
    Measured: the gate raised recovery from attacked prompts (two runs, 40 in-domain
    scenes: 0.658 -> 0.708, 0.778 -> 0.828), but with it the selection of seed 2 switched
    to removal and its refined coarse prompts fell 0.847 -> 0.689 in-domain on the
    defense bench (recovery rose on all six domains): off by default
    (docs/training.md, "Options measured and left off")"""
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
        for name in ("data", "eval_data"):  # one source may be written without a list
            if isinstance(getattr(self, name), str):
                setattr(self, name, [getattr(self, name)])
        choices = _choices()
        checks = {
            "threads": self.threads >= 0,
            "n_envs": self.n_envs >= 1,
            "rounds": self.rounds >= 1,
            "attacker_steps": self.attacker_steps >= 0,
            "defender_steps": self.defender_steps >= 1,
            "scenes": self.scenes >= 1,
            "min_area": self.min_area >= 0,
            "max_objects": self.max_objects >= 0,
            "fm_starts": 0.0 <= self.fm_starts <= 1.0,
            "data": isinstance(self.data, list) and all(isinstance(d, str) and d for d in self.data),
            "eval_data": isinstance(self.eval_data, list) and all(isinstance(d, str) and d for d in self.eval_data),
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
            "precision": self.precision in choices["precision"],
            "node_norm": self.node_norm in choices["node_norm"],
            "stop_q": self.stop_q in choices["stop_q"],
            "node_features": self.node_features in choices["node_features"],
            "q_prior": self.q_prior in choices["q_prior"],
            "label_aux": self.label_aux >= 0,
            "filter_scenes": self.filter_scenes >= 0,
            "chooser_pairs": self.chooser_pairs >= 0,
            "filter_walk": self.filter_walk >= 0,
            "filter_epochs": self.filter_epochs >= 1,
            "coarse_noise": self.coarse_noise in choices["coarse_noise"],
            "filter_actions": bool(self.filter_action_list)
            and set(self.filter_action_list) <= set(choices["filter_actions"]),
            "filter_thresholds": _valid_thresholds(self.filter_thresholds),
            "filter_relabel_gates": _valid_thresholds(self.filter_relabel_gates, allow_zero=True),
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError("invalid TrainConfig value(s): " + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad))
        if "probe" in _prior_terms(self.q_prior) and not self.probe:
            raise ValueError(
                f"q_prior={self.q_prior!r} reads the removal probes: use it with probe on, or q_prior none/consistency/auto"
            )
        unknown = set(self.start_mix) - set(choices["start_mix"])
        if unknown:
            raise ValueError(f"start_mix keys must be among {sorted(choices['start_mix'])}, got {sorted(unknown)}")

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
            kw["start_mix"] = self.defender_start_mix
            kw["step_cost"] = self.defender_step_cost
            kw["probe"] = self.probe
            kw["label_target"] = self.label_aux > 0
        return kw

    @property
    def defender_start_mix(self) -> dict[str, float]:
        """The defender's start distribution: ``start_mix`` scaled to ``1 - fm_starts``,
        and ``fm`` with weight ``fm_starts`` (when above 0)."""
        mix = {k: float(v) for k, v in self.start_mix.items()}
        if self.fm_starts <= 0:
            return mix
        total = sum(mix.values())
        mix = {k: v * (1.0 - self.fm_starts) / total for k, v in mix.items()} if total > 0 else {}
        return {**mix, "fm": float(self.fm_starts)}

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

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (what ``config.yaml`` holds)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config", unknown: str = "error") -> TrainConfig:
        """A configuration from field values (missing fields take their defaults).

        ``unknown``: what a key that is not a field does: ``"error"`` (ValueError naming
        it: a file the user wrote, where it is a typo) or ``"ignore"`` (left out, with a
        warning that names it: a run folder written by another version of ppd).
        """
        return config_from_dict(cls, data, source, unknown)

    @classmethod
    def from_run(cls, folder: str | Path) -> TrainConfig:
        """The configuration a run was trained with, read from its folder's
        ``config.yaml`` (or the first of :data:`RUN_CONFIG_FILES` it has; ``folder`` may
        also be the file itself) through this dataclass, with its checks.

        Every run folder ``ppd train`` wrote loads:

        * a field the file lacks (a run written before the field existed) takes its
          default. For fields added since, that is today's default, which is not always
          what such a run did (``q_prior``, ``probe``, ``filter_scenes``: an older
          defender may have no prior, no probes, no label filter); the saved networks
          and filter files carry what they were built with, and
          :meth:`~ppd.agents.defender.PromptDefender.load` reads those (it reads the
          config as :class:`~ppd.agents.run_files.RunConfig`, which also records the
          fields the run saved, so that a missing one means "as trained");
        * a key that is not a field (a run written by a newer version of ppd) is left
          out with a warning that names it: reading a run never fails on a setting this
          version does not know, and never applies one either.

        Raises:
            FileNotFoundError: no configuration file in ``folder``.
            ValueError: a file that cannot be parsed or holds no mapping, or a value
                the checks reject.
        """
        path = Path(folder)
        if path.is_dir():
            found = [path / name for name in RUN_CONFIG_FILES if (path / name).is_file()]
            if not found:
                raise FileNotFoundError(f"no run configuration in {path} (none of {', '.join(RUN_CONFIG_FILES)})")
            path = found[0]
        data = load_config_file(path)
        return cls.from_dict({**{k: v for k, v in ABSENT_MEANS.items() if k not in data}, **data}, str(path),
                             unknown="ignore")
