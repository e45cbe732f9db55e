"""Progress of a ``ppd train`` run: which round and phase it is in, the agents' recent
reward and each evaluation's numbers.

The training loop (:func:`ppd.agents.train.train`) announces every phase through a
:class:`TrainReporter`: when a phase ends it logs one INFO line (round, phase and the
phase's numbers), and at both ends it hands a :class:`PhaseReport` to the caller's
``report`` callback, which is how ``ppd train`` keeps its progress bar's description and
numbers current (library code logs, the command line owns the bar).

The phases (:data:`PHASES`): ``attacker`` and ``defender`` (learning, every round),
``evaluation`` (greedy rollouts on held-out scenes after the rounds ``eval_every`` picks,
and a final one at the end), ``label filter`` (after the last round, with
``filter_scenes``), ``edit chooser`` (then, with one-shot starts and
``chooser_pairs``). Within a learning phase, :class:`StepCallback` (an SB3 callback)
tells a caller about every vector step, with the model, so that it can show the steps
and :func:`mean_episode_reward` as they come.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

logger = logging.getLogger(__name__)

__all__ = ["PHASES", "PhaseReport", "StepCallback", "TrainReporter", "mean_episode_reward"]

#: The phases of a run, in the order a round goes through them.
PHASES = ("attacker", "defender", "evaluation", "label filter", "edit chooser")


def mean_episode_reward(model: Any) -> tuple[float, int] | None:
    """Mean return of an SB3 model's most recent episodes and how many there were (its
    ``ep_info_buffer``: the last 100 finished episodes, over all its ``learn`` calls);
    None before any episode has finished."""
    episodes = list(getattr(model, "ep_info_buffer", None) or ())
    if not episodes:
        return None
    return float(np.mean([ep["r"] for ep in episodes])), len(episodes)


def _number(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.3f}"
    return str(value)


@dataclass(frozen=True)
class PhaseReport:
    """One phase of a run, started (``done`` False) or ended (``done`` True).

    ``numbers`` (ended phases): ``attacker`` / ``defender``: ``env_steps`` (this phase),
    ``timesteps`` (the agent's total), ``reward`` and ``episodes`` (the mean return of
    the agent's last episodes and their count, :func:`mean_episode_reward`; absent
    before any episode ended) and ``time_s``; ``evaluation``: the metrics of
    :func:`~ppd.agents.evaluation.evaluate_agents` (and, in the final one, of
    :func:`~ppd.agents.evaluation.refine_metrics`); ``label filter``: ``action``,
    ``threshold``, ``relabel_gate``, ``selection_auc``, ``examples``, ``time_s``; ``edit
    chooser``: ``pairs``, ``eval_fm_iou``, ``eval_choice_iou``, ``time_s``.
    ``final`` marks the evaluation of the run's final agents. ``text`` is the logged line.
    """

    round: int
    rounds: int
    phase: str
    done: bool
    numbers: dict[str, Any] = field(default_factory=dict)
    final: bool = False
    text: str = ""

    @property
    def title(self) -> str:
        """``"round 1/2 defender"``, ``"round 2/2 evaluation (final)"``."""
        return f"round {self.round}/{self.rounds} {self.phase}" + (" (final)" if self.final else "")


class TrainReporter:
    """Logs the end of each phase and hands every start and end to ``report``.

    Args:
        rounds: the run's rounds.
        report: ``report(PhaseReport)``, called at the start and the end of each phase
            (None: logging only).
    """

    def __init__(self, rounds: int, report: Callable[[PhaseReport], Any] | None = None) -> None:
        self.rounds = rounds
        self.report = report

    def _send(self, rep: PhaseReport) -> None:
        if rep.done:
            logger.info("%s", rep.text)
        if self.report is not None:
            self.report(rep)

    def start(self, phase: str, rnd: int, final: bool = False) -> None:
        """Phase ``phase`` of round ``rnd`` (1-based) begins."""
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        rep = PhaseReport(rnd, self.rounds, phase, False, final=final)
        self._send(dataclasses.replace(rep, text=f"{rep.title}: started"))

    def learned(self, phase: str, rnd: int, model: Any, env_steps: int, time_s: float) -> None:
        """A learning phase (``attacker`` / ``defender``) of ``env_steps`` steps ended."""
        numbers: dict[str, Any] = {"env_steps": int(env_steps), "timesteps": int(model.num_timesteps)}
        recent = mean_episode_reward(model)
        text = f"{env_steps} env steps ({numbers['timesteps']} in all)"
        if recent is not None:
            numbers["reward"], numbers["episodes"] = recent
            text += f", mean episode reward {recent[0]:.3f} over the last {recent[1]} episodes"
        numbers["time_s"] = round(float(time_s), 1)
        self._end(phase, rnd, numbers, f"{text}, {time_s:.1f} s")

    def evaluated(self, rnd: int, metrics: dict[str, Any], final: bool = False) -> None:
        """An evaluation ended with ``metrics`` (mean IoU and the like, by name)."""
        self._end("evaluation", rnd, dict(metrics), ", ".join(f"{k} {_number(v)}" for k, v in metrics.items()), final)

    def filtered(self, rnd: int, meta: dict[str, Any], loaded: bool = False) -> None:
        """The label filter stage ended with the filter ``meta`` (its
        ``label_filter.json``; ``loaded``: read from the run folder, not trained)."""
        numbers = {k: meta.get(k) for k in ("action", "threshold", "relabel_gate", "selection_auc", "examples", "time_s")}
        state = "off (it did not help)" if float(meta["threshold"]) >= 1.0 else f"{meta['action']} above {meta['threshold']:g}"
        text = (f"{state}, relabel gate {float(meta.get('relabel_gate', 0.0)):g}, held-out wrong-label AUC "
                f"{_number(meta.get('selection_auc'))}, {meta.get('examples')} examples, {_number(meta.get('time_s'))} s")
        self._end("label filter", rnd, numbers, text + (" (loaded from the run folder)" if loaded else ""))

    def chose(self, rnd: int, meta: dict[str, Any], loaded: bool = False) -> None:
        """The edit chooser stage ended with the chooser's ``meta`` (``loaded``: read
        from the run folder, not fitted)."""
        numbers = {k: meta.get(k) for k in ("pairs", "eval_fm_iou", "eval_choice_iou", "time_s")}
        text = (f"fitted on {meta.get('pairs')} objects; held-out one-shot IoU {_number(meta.get('eval_fm_iou'))} -> "
                f"{_number(meta.get('eval_choice_iou'))} chosen, {_number(meta.get('time_s'))} s")
        self._end("edit chooser", rnd, numbers, text + (" (loaded from the run folder)" if loaded else ""))

    def _end(self, phase: str, rnd: int, numbers: dict[str, Any], text: str, final: bool = False) -> None:
        rep = PhaseReport(rnd, self.rounds, phase, True, numbers, final)
        self._send(dataclasses.replace(rep, text=f"{rep.title}: {text}"))


class StepCallback(BaseCallback):
    """SB3 callback (``train(callback=...)``) that calls ``on_steps(model, env_steps)``
    after every vector step of a ``learn`` call (``env_steps``: the env's ``num_envs``)."""

    def __init__(self, on_steps: Callable[[Any, int], Any]) -> None:
        super().__init__()
        self.on_steps = on_steps

    def _on_step(self) -> bool:
        self.on_steps(self.model, self.training_env.num_envs)
        return True
