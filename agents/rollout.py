"""Greedy rollouts of a trained agent, batched: one stepping loop for training
evaluation, the label filter, polish and :meth:`~ppd.agents.defender.PromptDefender.refine`.

:func:`run_episodes` advances many :class:`Episode` objects together: each step decodes
the prompt states of every running episode in one ``world.evaluate`` call and runs the
Q-network once on their observations. An episode says what it decodes, which actions
are valid and when it ends:

* :func:`greedy_rollout` (training evaluation, the label filter's starts and
  selection, the benches' attacks) steps :class:`~ppd.envs.point_prompt_env.PointPromptEnv`
  episodes from given start states, with the ground truth's quality;
* :meth:`~ppd.agents.defender.PromptDefender.refine_states` steps users' prompt states
  without ground truth, with its own budget, ``patience`` and output rule.

:func:`polish_states` is the greedy removal after a rollout (``polish``).
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from ppd.envs.point_prompt_env import PointPromptEnv, defender_step, observation_options, rollout_action_mask
from ppd.envs.world import INACTIVE, ImageRecord, Outcome, PromptWorld

if TYPE_CHECKING:  # annotations only: importing the DQN loads Stable-Baselines3
    from ppd.agents.dqn import MaskedDQN

__all__ = ["Episode", "RefineEpisode", "greedy_action", "greedy_actions", "greedy_rollout", "polish_states",
           "run_episodes"]

#: What :meth:`PromptWorld.evaluate` decodes: ``(image record, object index (-1: no
#: ground truth), node_state, node_points)``.
Request = tuple[ImageRecord, int, np.ndarray, np.ndarray]


def greedy_actions(model: Any, obs: dict[str, np.ndarray], masks: np.ndarray) -> np.ndarray:
    """Greedy actions of ``model`` for a batch of observations (leading axis B), each the
    argmax of the Q-values over the actions ``masks`` (B, A) allows (it may be stricter
    than the network's own role / relabel rule, see :func:`rollout_action_mask`)."""
    obs_t, _ = model.policy.obs_to_tensor(obs)
    with torch.no_grad():
        q = model.policy.q_net(obs_t).float().cpu().numpy()
    return np.argmax(np.where(np.asarray(masks, bool).reshape(q.shape), q, -np.inf), axis=1)


def greedy_action(model: Any, obs: dict[str, np.ndarray], mask: np.ndarray) -> int:
    """:func:`greedy_actions` for one (unbatched) observation."""
    return int(greedy_actions(model, obs, mask[None])[0])


class Episode(abc.ABC):
    """One rollout that :func:`run_episodes` advances: it names the states to decode,
    its valid actions, its observation, and when it ends."""

    @abc.abstractmethod
    def start(self) -> Request:
        """The start state to decode."""

    @abc.abstractmethod
    def begin(self, outcome: Outcome) -> bool:
        """Take the decoded start; whether the episode may act."""

    @abc.abstractmethod
    def action_mask(self) -> np.ndarray | None:
        """(2N + 1,) bool valid actions now, or None: the episode ends here, without a step."""

    @abc.abstractmethod
    def observation(self) -> dict[str, np.ndarray]:
        """The observation the network acts on now."""

    @abc.abstractmethod
    def act(self, action: int) -> Request | None:
        """Take ``action``; the state to decode, or None: the episode ended (no decode)."""

    @abc.abstractmethod
    def advance(self, outcome: Outcome) -> bool:
        """Take the decoded state after :meth:`act`; whether the episode goes on."""


def run_episodes(
    model: Any,
    world: PromptWorld,
    episodes: Sequence[Episode],
    probe: bool,
    masked: bool = True,
    tick: Callable[[], Any] | None = None,
) -> None:
    """Advance ``episodes`` together until each has ended, greedily.

    Each step asks every running episode for its action mask (None: it ends), runs the
    Q-network once on the observations of those that act, and decodes the states they
    lead to in one ``world.evaluate`` call (``probe``: with removal probes).

    Args:
        model: the agent; ``masked``: its actions are the argmax of the Q-values over
            each episode's mask (:func:`greedy_actions`), else ``model.predict``
            (deterministic; the policy's own action rule).
        tick: called once per batched step.
    """
    if not episodes:
        return
    outcomes = world.evaluate([e.start() for e in episodes], probe=probe)
    running = [i for i, (e, o) in enumerate(zip(episodes, outcomes)) if e.begin(o)]
    while running:
        acting, obs, masks = [], [], []
        for i in running:
            mask = episodes[i].action_mask()
            if mask is None:
                continue
            obs.append(episodes[i].observation())
            masks.append(mask)
            acting.append(i)
        if not acting:
            break
        batch = {k: np.stack([o[k] for o in obs]) for k in obs[0]}
        if masked:
            actions = greedy_actions(model, batch, np.stack(masks))
        else:
            actions, _ = model.predict(batch, deterministic=True)
        steps = []
        for i, a in zip(acting, np.asarray(actions).reshape(-1)):
            request = episodes[i].act(int(a))
            if request is not None:
                steps.append((i, request))
        if not steps:
            break
        outcomes = world.evaluate([r for _, r in steps], probe=probe)
        running = [i for (i, _), o in zip(steps, outcomes) if episodes[i].advance(o)]
        if tick is not None:
            tick()


# ----------------------------------------------------------------------------- env rollouts
class _ScriptedStartEnv(PointPromptEnv):
    """A :class:`PointPromptEnv` whose next episode starts from ``self.next_start``."""

    next_start: tuple[ImageRecord, int, np.ndarray, np.ndarray, str] | None = None

    def _draw_start(self):
        if self.next_start is None:
            return super()._draw_start()
        rec, obj, st, pts, kind = self.next_start
        return rec, obj, st.copy(), pts.copy(), kind


class _EnvEpisode(Episode):
    """An episode of a :class:`_ScriptedStartEnv` from a given start, recording what
    :func:`greedy_rollout` returns (quality by the world's ground truth)."""

    def __init__(self, env: _ScriptedStartEnv, start: np.ndarray, relabel: bool, relabel_ok: np.ndarray | None) -> None:
        self.env, self.start_state, self.relabel, self.relabel_ok = env, start, relabel, relabel_ok
        self.obs: dict[str, np.ndarray] = {}
        self.result: dict[str, Any] = {}

    def start(self) -> Request:
        return self.env.prepare_reset(seed=0)

    def begin(self, outcome: Outcome) -> bool:
        self.obs, info = self.env.complete_reset(outcome)
        self.result = {"start_quality": info["quality"], "quality": info["quality"], "steps": 0}
        self.result.update(score_quality=info["quality"], score_state=self.env.prompt_state[0].copy(), score_steps=0,
                           score=float(outcome.score))
        self.best_score = outcome.score
        return bool(self.env.action_masks()[:-1].any())

    def action_mask(self) -> np.ndarray:
        if self.env.role != "defender":
            return self.env.action_masks()  # not read: the attacker acts by model.predict
        return rollout_action_mask(self.env.prompt_state[0], self.start_state, self.relabel, self.relabel_ok)

    def observation(self) -> dict[str, np.ndarray]:
        return self.obs

    def act(self, action: int) -> Request:
        return self.env.prepare_step(action)  # a stop too: the env counts it as a step

    def advance(self, outcome: Outcome) -> bool:
        self.obs, _, terminated, truncated, info = self.env.complete_step(outcome)
        r = self.result
        r["quality"] = info["quality"]
        r["steps"] += 1
        if outcome.score > self.best_score:
            self.best_score = outcome.score
            r.update(score=float(outcome.score), score_quality=info["quality"],
                     score_state=self.env.prompt_state[0].copy(), score_steps=r["steps"])
        return not (terminated or truncated)


def greedy_rollout(
    model: MaskedDQN,
    world: PromptWorld,
    role: str,
    starts: Sequence[tuple[ImageRecord, int, np.ndarray, np.ndarray]],
    max_steps: int,
    relabel: bool = True,
    tick: Callable[[], Any] | None = None,
    relabel_ok: Sequence[np.ndarray | None] | None = None,
) -> list[dict[str, Any]]:
    """Run ``model`` greedily from given prompt states, all episodes batched
    (:func:`run_episodes`).

    Args:
        model: the agent (attacker or defender of ``role``).
        world: the world the start states' images belong to.
        role: ``"attacker"`` or ``"defender"``.
        starts: ``(image record, object index, node_state (N,), node_points (N, 2))``.
        max_steps: episode step budget.
        relabel: defender relabel actions allowed (must match the model's training).
        tick: called once per batched step (a progress bar's update; at most ``max_steps``).
        relabel_ok: per start, the (N,) bool nodes the defender may relabel, or None
            (no restriction; see :func:`~ppd.envs.point_prompt_env.rollout_action_mask`).

    The observation has the per-node ``uncertainty`` and the removal probes when the
    model was trained with them (read from its observation space). The defender's
    actions follow :func:`~ppd.envs.point_prompt_env.rollout_action_mask`, as in
    :meth:`~ppd.agents.defender.PromptDefender.refine`; the attacker's are
    ``model.predict``'s. A stop counts as a step here (the environment's count).

    Returns:
        Per start: ``{"start_quality", "quality", "state", "points", "steps"}`` of the
        state where the rollout ended, plus ``"score"`` (SAM's predicted IoU),
        ``"score_quality"``, ``"score_state"`` and ``"score_steps"`` of the visited state
        (start included, earliest on ties) with SAM's highest predicted IoU: the output of
        ``PromptDefender(select="score")``.
    """
    opts = observation_options(model.observation_space)
    episodes = []
    for i, (rec, obj, st, pts) in enumerate(starts):
        env = _ScriptedStartEnv(role, world=world, max_steps=max_steps, relabel=relabel, **opts)
        env.next_start = (rec, obj, st, pts, "scripted")
        episodes.append(_EnvEpisode(env, st, relabel, None if relabel_ok is None else relabel_ok[i]))
    run_episodes(model, world, episodes, opts["probe"], masked=role == "defender", tick=tick)
    results = []
    for e in episodes:
        res = e.result
        res["state"], res["points"] = e.env.prompt_state
        results.append(res)
    return results


# ----------------------------------------------------------------------------- polish
def polish_states(
    world: PromptWorld,
    requests: Sequence[tuple[ImageRecord, int, np.ndarray, np.ndarray]],
    changes: Sequence[int],
    budgets: Sequence[int],
) -> list[tuple[np.ndarray, Any, int]]:
    """``PromptDefender(polish=True)`` on prompt states ``(image record, object index,
    node_state, node_points)`` that ``changes`` prompt changes made, with step budgets
    ``budgets``: each round decodes the running states with their removal probes in one
    ``world.evaluate`` call (cache hits for states a rollout probed) and drops, per
    state, the prompt whose removal raises SAM's predicted IoU most, if one does, more
    than one prompt is left and the budget allows.

    Returns:
        Per request: ``(node_state, its Outcome, changes)`` after polishing.
    """
    out: list[tuple[np.ndarray, Any, int]] = [(st, None, int(c)) for (_, _, st, _), c in zip(requests, changes)]
    running = list(range(len(out)))
    while running:
        evals = world.evaluate([(requests[i][0], requests[i][1], out[i][0], requests[i][3]) for i in running], probe=True)
        moved = []
        for i, o in zip(running, evals):
            st, _, done = out[i]
            out[i] = (st, o, done)
            active = st != INACTIVE
            if done >= budgets[i] or active.sum() <= 1:
                continue
            gain = np.where(active, o.probe_score, -np.inf)
            j = int(np.argmax(gain))
            if gain[j] > 0.0:
                st = st.copy()
                st[j] = INACTIVE
                out[i] = (st, None, done + 1)
                moved.append(i)
        running = moved
    return out


def _polish_rollouts(world: PromptWorld, starts: Sequence[tuple], results: list[dict[str, Any]], cfg: Any) -> None:
    """Polish (``PromptDefender(polish=True)``, :func:`polish_states`) the ``score_*``
    output of :func:`greedy_rollout` defender ``results`` from ``starts``, in place, with
    the budget ``cfg.defender_max_steps`` (a :class:`~ppd.agents.train.TrainConfig`)."""
    done = polish_states(world, [(rec, obj, r["score_state"], pts) for (rec, obj, _, pts), r in zip(starts, results)],
                         [r["score_steps"] for r in results], [cfg.defender_max_steps] * len(results))
    for r, (st, out, steps) in zip(results, done):
        r.update(score_state=st, score_quality=out.quality, score_steps=steps)


class RefineEpisode(Episode):
    """One greedy rollout of :meth:`~ppd.agents.defender.PromptDefender.refine_states`: no
    ground truth, the defender's budget, ``patience`` and relabel rules; every visited
    state is kept."""

    def __init__(self, defender: Any, rec: ImageRecord, start: np.ndarray, pts: np.ndarray, budget: int,
                 relabel_ok: np.ndarray | None) -> None:
        self.d, self.rec, self.start_state, self.pts, self.budget, self.relabel_ok = (
            defender, rec, start, pts, budget, relabel_ok)
        self.visited: list[tuple[np.ndarray, Outcome]] = []
        self.best = 0  # index of the best-scored visited state (earliest on ties)
        self._next: np.ndarray | None = None

    def start(self) -> tuple:
        self._next = self.start_state.copy()
        return (self.rec, -1, self._next, self.pts)

    def begin(self, outcome: Outcome) -> bool:
        self.visited.append((self._next, outcome))
        return True

    def action_mask(self) -> np.ndarray | None:
        d, steps = self.d, len(self.visited) - 1
        if steps >= self.budget:
            return None
        if d.patience is not None and d.select == "score" and steps - self.best >= d.patience:
            return None
        mask = rollout_action_mask(self.visited[-1][0], self.start_state, d.relabel, self.relabel_ok)
        return mask if mask[:-1].any() else None

    def observation(self) -> dict[str, np.ndarray]:
        steps = len(self.visited) - 1
        st, out = self.visited[-1]
        env_steps = self.d.train_max_steps or self.budget or 1
        return self.d._observation(self.rec, st, self.pts, out, min(steps, env_steps), env_steps)

    def act(self, action: int) -> tuple | None:
        if action == 2 * self.d.num_nodes:  # stop
            return None
        self._next = defender_step(self.visited[-1][0], action)
        return (self.rec, -1, self._next, self.pts)

    def advance(self, outcome: Outcome) -> bool:
        self.visited.append((self._next, outcome))
        if outcome.score > self.visited[self.best][1].score:
            self.best = len(self.visited) - 1
        return True
