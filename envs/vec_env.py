"""A Stable-Baselines3 vector env that advances M point-prompt envs with ONE decoder call.

:class:`PromptVecEnv` holds M :class:`~ppd.envs.point_prompt_env.PointPromptEnv` sharing
one :class:`~ppd.envs.world.PromptWorld`. A vector step runs every env's
``prepare_step`` (pure numpy), decodes all the new prompt states in one
``PromptWorld.evaluate`` call (one ``Segmenter.predict_batch``), then every env's
``complete_step``. Envs whose episode ends are reset in the same call: whether an
episode ends (stop, nothing valid left, step budget) depends on the prompt state only,
not on the mask, so it is known before decoding, and the next episode's start state is
drawn ahead and decoded together with the step states. (One call as long as no prompt
state has more than ``PromptWorld.prompt_pad`` points; see there why states are padded
to a fixed width.)

SB3 semantics (as ``DummyVecEnv``): ``reset()`` returns the observations only and uses
the seeds of :meth:`seed` once; ``step`` returns ``(obs, rewards, dones, infos)`` and
auto-resets ended envs, their last observation in ``infos[i]["terminal_observation"]``
and ``infos[i]["TimeLimit.truncated"] = truncated and not terminated``.
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from stable_baselines3.common.env_util import is_wrapped
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from ppd.envs.point_prompt_env import PointPromptEnv, valid_action_mask
from ppd.envs.world import PromptWorld

logger = logging.getLogger(__name__)

#: ``PointPromptEnv`` arguments that configure the shared world rather than one env.
WORLD_KWARGS = ("segmenter", "dataset", "grid", "k_physical", "k_semantic", "quality")

_MISSING = object()


class PromptVecEnv(VecEnv):
    """M point-prompt envs of one role on one shared world, decoded in one batch.

    Args:
        n_envs: number of environments M (>= 1).
        role: ``"attacker"`` or ``"defender"``.
        world: the shared :class:`PromptWorld`; default: one built from the world
            arguments in ``env_kwargs`` (``segmenter``, ``dataset``, ``grid``,
            ``k_physical``, ``k_semantic``, ``quality``).
        seed: if given, env i is seeded with ``seed + i`` at the first :meth:`reset`.
        **env_kwargs: the other :class:`PointPromptEnv` arguments (``max_steps``,
            ``relabel``, ``start_mix``, ``coarse_kwargs``, ``max_ideal_points``,
            ``render_mode``, ``node_uncertainty``).

    Observations are dicts of arrays with a leading M axis; :meth:`action_masks` gives
    the (M, 2N + 1) valid-action masks.
    """

    def __init__(
        self,
        n_envs: int,
        role: str = "defender",
        world: PromptWorld | None = None,
        seed: int | None = None,
        **env_kwargs: Any,
    ) -> None:
        if int(n_envs) < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        world_kwargs = {k: env_kwargs.pop(k) for k in WORLD_KWARGS if k in env_kwargs}
        if world is None:
            world = PromptWorld(**world_kwargs)
        elif world_kwargs:
            raise ValueError(f"pass either world= or the world arguments {sorted(world_kwargs)}, not both")
        self.world = world
        self.role = role
        self.envs = [PointPromptEnv(role, world=world, **env_kwargs) for _ in range(int(n_envs))]
        env = self.envs[0]
        self.probe = env.probe
        super().__init__(len(self.envs), env.observation_space, env.action_space)
        self.num_nodes = env.num_nodes
        self._stop = 2 * env.num_nodes
        self._buf = {k: np.zeros((self.num_envs, *s.shape), s.dtype) for k, s in env.observation_space.spaces.items()}
        self._actions: np.ndarray | None = None
        if seed is not None:
            self.seed(seed)

    # -- reset / step ------------------------------------------------------------------
    def reset(self) -> VecEnvObs:
        """Reset every env (seeded once by :meth:`seed`); one decoder call for all."""
        requests = [env.prepare_reset(seed) for env, seed in zip(self.envs, self._seeds)]
        outcomes = self.world.evaluate(requests, probe=self.probe)
        for i, (env, out) in enumerate(zip(self.envs, outcomes)):
            obs, self.reset_infos[i] = env.complete_reset(out)
            self._save_obs(i, obs)
        self._reset_seeds()
        self._reset_options()  # PointPromptEnv takes no reset options
        return self._obs_copy()

    def step_async(self, actions: np.ndarray) -> None:
        actions = np.asarray(actions).reshape(-1)
        if actions.shape[0] != self.num_envs:
            raise ValueError(f"expected {self.num_envs} actions (one per env), got {actions.shape[0]}")
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("call step_async(actions) before step_wait()")
        actions, self._actions = self._actions, None
        n = self.num_envs
        requests = [env.prepare_step(a) for env, a in zip(self.envs, actions)]
        # Draw the next episode of every env whose episode ends now, so that its start
        # state is decoded in the same call as the step states.
        ahead = {i: self._draw_reset_ahead(self.envs[i]) for i in range(n) if self._ends(i, actions[i], requests[i][2])}
        order = list(ahead)
        outcomes = self.world.evaluate(requests + [ahead[i][0] for i in order], probe=self.probe)
        reset_outcome = {i: outcomes[n + j] for j, i in enumerate(order)}

        rewards = np.zeros(n, np.float32)
        dones = np.zeros(n, bool)
        infos: list[dict[str, Any]] = [{}] * n
        late: list[int] = []
        for i, env in enumerate(self.envs):
            obs, rewards[i], terminated, truncated, info = env.complete_step(outcomes[i])
            dones[i] = terminated or truncated
            info["TimeLimit.truncated"] = truncated and not terminated
            infos[i] = info
            if dones[i]:
                info["terminal_observation"] = obs
                if i in ahead:
                    env.__dict__.update(ahead[i][1])
                    obs, self.reset_infos[i] = env.complete_reset(reset_outcome[i])
                else:
                    late.append(i)
            elif i in ahead:
                logger.debug("env %d: predicted an episode end that did not happen (draw discarded)", i)
            self._save_obs(i, obs)
        if late:  # only if PointPromptEnv's episode-end rule and _ends() disagree
            logger.debug("envs %s ended unpredicted: resetting them in a second decoder call", late)
            outs = self.world.evaluate([self.envs[i].prepare_reset() for i in late], probe=self.probe)
            for i, out in zip(late, outs):
                obs, self.reset_infos[i] = self.envs[i].complete_reset(out)
                self._save_obs(i, obs)
        return self._obs_copy(), rewards, dones, infos

    def _ends(self, i: int, action: int, node_state: np.ndarray) -> bool:
        """Whether env i's step with ``action`` (already prepared) ends its episode.

        Mirrors ``PointPromptEnv.complete_step``: stop, no valid node action left
        (terminated), or the step budget used up (truncated).
        """
        env = self.envs[i]
        if int(action) == self._stop or env._t >= env.max_steps:
            return True
        return not valid_action_mask(node_state, env.role, env.relabel)[:-1].any()

    @staticmethod
    def _draw_reset_ahead(env: PointPromptEnv) -> tuple[tuple, dict[str, Any]]:
        """Run ``env.prepare_reset()`` on a shallow copy of ``env``.

        The env itself keeps its current episode until ``complete_step`` has run.
        ``prepare_reset`` only rebinds attributes (and draws from the generator, which
        the copy gets its own copy of), so the attributes it changed are the new
        episode: apply them with ``env.__dict__.update(changes)``. Discarding them leaves
        ``env`` exactly as it was.

        Returns:
            ``(request for PromptWorld.evaluate, changed attributes)``.
        """
        ahead = copy.copy(env)
        ahead._np_random = copy.deepcopy(env.np_random)
        before = dict(ahead.__dict__)
        request = ahead.prepare_reset()
        changes = {k: v for k, v in ahead.__dict__.items() if before.get(k, _MISSING) is not v}
        changes["_np_random"] = ahead._np_random
        return request, changes

    def action_masks(self) -> np.ndarray:
        """(M, 2N + 1) bool: the valid actions of every env."""
        return np.stack([env.action_masks() for env in self.envs])

    def _save_obs(self, i: int, obs: dict[str, np.ndarray]) -> None:
        for key, buf in self._buf.items():
            buf[i] = obs[key]

    def _obs_copy(self) -> dict[str, np.ndarray]:
        return {key: buf.copy() for key, buf in self._buf.items()}

    # -- SB3 VecEnv plumbing -----------------------------------------------------------
    def close(self) -> None:
        for env in self.envs:
            env.close()

    def get_images(self) -> Sequence[np.ndarray | None]:
        if self.render_mode != "rgb_array":
            warnings.warn(f"render_mode is {self.render_mode!r}; get_images needs 'rgb_array'", stacklevel=2)
            return [None for _ in self.envs]
        return [env.render() for env in self.envs]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self.envs[i], attr_name) for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        for i in self._get_indices(indices):
            setattr(self.envs[i], attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        return [getattr(self.envs[i], method_name)(*method_args, **method_kwargs) for i in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [is_wrapped(self.envs[i], wrapper_class) for i in self._get_indices(indices)]
