"""DQN with action masking for the point-prompt environments.

Stable-Baselines3's DQN knows nothing of invalid actions: its epsilon-greedy
exploration and its warm-up draw from the whole action space, and its TD target takes
the max over all actions. :class:`MaskedDQN` fixes all three:

* the TD target: :class:`~ppd.agents.qnet.GraphQNetwork` sets invalid Q-values to
  :data:`~ppd.agents.qnet.MASKED_Q` inside ``forward``, so the target's max (or, with
  Double DQN, the online argmax) runs over valid actions only;
* the greedy action: the argmax of the same masked Q-values;
* exploration and warm-up: uniform over the valid actions of each observation, with the
  mask computed from the observation by :func:`~ppd.agents.qnet.obs_action_mask` (the
  rule the network uses), drawn from the algorithm's own generator (seeded by ``seed``).

Two additions to SB3's DQN:

* ``double_q`` (default True): the Double DQN target (van Hasselt et al., 2016), the
  target network's value of the ONLINE network's greedy (valid) action, instead of the
  target network's own max. With hundreds of actions the plain max over noisy estimates
  is biased upwards: in a measured run, plain-DQN defenders valued removals above
  stopping (whose value is 0) and kept acting to the step budget (mean episode length
  10 of 12, negative return), Double DQN ones learned to stop (length ~3, positive
  return). ``double_q=False`` gives SB3's target.
* ``exploration_horizon``: SB3 anneals epsilon over each ``learn`` call, which restarts
  with every adversarial round; with it set, epsilon follows
  ``num_timesteps / exploration_horizon`` across all calls.
* ``label_aux_weight`` (default 0, off): with a network that has the auxiliary label head
  (``label_aux``) and observations that carry ``label_target``, each gradient step adds
  this weight times the binary cross-entropy of the head's logits against the
  ground-truth wrong-label targets of the sampled observations' active prompts. Every
  active prompt of every sampled transition is a labelled example (the TD loss has one
  action per transition), so the shared node features learn to tell wrong clicks from
  right ones; the Q-values never read the targets.

The graph store whose graphs the observations name reaches the Q-networks through
``policy_kwargs["graph_store"]`` (:func:`make_dqn` passes the env's). It is left out of
saved files (graph ids belong to one process); :meth:`MaskedDQN.load` takes one again
(default: :data:`~ppd.graphs.store.GRAPH_STORE`), and
:meth:`MaskedDQN.load_replay_buffer` maps a saved buffer's ids onto this process's.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from stable_baselines3 import DQN
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import VecEnv

from ppd.agents.archive_check import RECREATED_ENTRIES, check_archive, check_replay_buffer
from ppd.agents.qnet import GraphDQNPolicy, obs_action_mask
from ppd.envs.point_prompt_env import UNKNOWN_LABEL, WRONG_LABEL
from ppd.graphs.store import GRAPH_STORE, GraphStore

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_DQN_KWARGS", "MaskedDQN", "graph_store_of", "make_dqn", "sample_valid_actions"]


def _existing(path: str | os.PathLike, suffix: str) -> str:
    """``path``, or ``path`` + ``suffix`` when only that exists (SB3's rule for files
    named without their extension)."""
    name = os.fspath(path)
    if not os.path.exists(name) and os.path.exists(name + suffix):
        return name + suffix
    return name


def sample_valid_actions(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One action per row, uniform among the row's valid (True) entries.

    Args:
        masks: (B, A) bool; every row must have a valid action.
        rng: random generator.

    Returns:
        (B,) int64 actions.
    """
    masks = np.asarray(masks, bool)
    counts = masks.sum(axis=1)
    if (counts == 0).any():
        raise ValueError("a row of the action mask has no valid action")
    # k-th valid action of each row, k uniform in [0, count)
    k = (rng.random(len(masks)) * counts).astype(np.int64)
    k = np.minimum(k, counts - 1)
    return np.argmax(np.cumsum(masks, axis=1) > k[:, None], axis=1).astype(np.int64)


class MaskedDQN(DQN):
    """SB3 DQN whose exploration, warm-up and greedy actions are all valid actions.

    Use with :class:`~ppd.agents.qnet.GraphDQNPolicy` (policy ``role`` / ``relabel``
    decide validity). Extra arguments: ``exploration_horizon`` (env steps over which the
    exploration schedule runs across ``learn`` calls; None = SB3's per-call schedule) and
    ``double_q`` (Double DQN target, default True; see the module docstring).
    Random actions come from ``np.random.default_rng(seed)``, not numpy's global state.
    """

    policy: GraphDQNPolicy

    def __init__(
        self, *args: Any, exploration_horizon: int | None = None, double_q: bool = True,
        label_aux_weight: float = 0.0, **kwargs: Any,
    ) -> None:
        if not (np.isfinite(label_aux_weight) and label_aux_weight >= 0):
            raise ValueError(f"label_aux_weight must be a finite number >= 0, got {label_aux_weight!r}")
        self.exploration_horizon = exploration_horizon
        self.double_q = double_q
        self.label_aux_weight = float(label_aux_weight)
        super().__init__(*args, **kwargs)

    def _setup_model(self) -> None:
        store = self.__dict__.pop("_load_graph_store", None)  # set by load()
        if store is not None:
            self.policy_kwargs = {**self.policy_kwargs, "graph_store": store}
        super()._setup_model()
        self._mask_rng = np.random.default_rng(self.seed)
        if self.label_aux_weight > 0:
            if not getattr(self.q_net, "label_aux", False):
                raise ValueError("label_aux_weight > 0 needs a network with the label head (policy_kwargs label_aux=True)")
            if "label_target" not in getattr(self.observation_space, "spaces", {}):
                raise ValueError("label_aux_weight > 0 needs observations with 'label_target' (env label_target=True)")

    # -- files ------------------------------------------------------------------------
    def save(self, path: Any, exclude: Any = None, include: Any = None) -> None:
        """SB3's ``save``, without the graph store in the saved ``policy_kwargs`` (it holds
        this process's graphs; a loaded model is given a store by :meth:`load`)."""
        kwargs = self.policy_kwargs
        self.policy_kwargs = {k: v for k, v in kwargs.items() if k != "graph_store"}
        try:
            super().save(path, exclude=exclude, include=include)
        finally:
            self.policy_kwargs = kwargs

    @classmethod
    def load(  # type: ignore[override]
        cls, path: Any, env: Any = None, device: Any = "auto", custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False, force_reset: bool = True, graph_store: GraphStore | None = None,
        **kwargs: Any,
    ) -> "MaskedDQN":
        """SB3's ``load``, after :func:`~ppd.agents.archive_check.check_archive`: SB3
        unpickles the archive's serialized entries, which would run any code a crafted
        file names, so the file is refused unless every global they reference is one
        ppd's archives hold. The schedules SB3 rebuilds anyway are never unpickled
        (:data:`~ppd.agents.archive_check.RECREATED_ENTRIES`). The checked bytes are the
        loaded ones: SB3 reads the same open file. ``graph_store``: the store whose graphs
        the observations name, given to the Q-networks through ``policy_kwargs`` (None:
        the networks use :data:`~ppd.graphs.store.GRAPH_STORE`).

        Raises:
            ~ppd.agents.archive_check.UnsafeArchiveError: (a ValueError) the archive
                references something outside the allow-list.
        """
        if graph_store is not None:
            kwargs["_load_graph_store"] = graph_store  # read (and dropped) by _setup_model
        custom_objects = {**{key: None for key in RECREATED_ENTRIES}, **(custom_objects or {})}
        if not isinstance(path, (str, os.PathLike)):  # an open file: check it where it stands
            check_archive(path, skip=custom_objects)
            return super().load(path, env=env, device=device, custom_objects=custom_objects,
                                print_system_info=print_system_info, force_reset=force_reset, **kwargs)
        with open(_existing(path, ".zip"), "rb") as fh:
            check_archive(fh, label=os.fspath(path), skip=custom_objects)
            return super().load(fh, env=env, device=device, custom_objects=custom_objects,
                                print_system_info=print_system_info, force_reset=force_reset, **kwargs)

    def load_replay_buffer(self, path: Any, truncate_last_traj: bool = True,
                           graph_ids: dict[int, int] | None = None) -> None:
        """SB3's ``load_replay_buffer`` (a pickle), after
        :func:`~ppd.agents.archive_check.check_replay_buffer` refused any global a ppd
        replay buffer never holds; ``graph_ids``: saved graph id -> this process's
        (:func:`ppd.agents.train_resume.restore_graph_ids`), applied to the stored
        transitions' ``image_id`` (the ids of the process that saved them name other
        graphs here, or none).

        Raises:
            ~ppd.agents.archive_check.UnsafeArchiveError: (a ValueError) the file
                references something outside the allow-list.
            ValueError: a stored transition names a graph id that ``graph_ids`` lacks.
        """
        if isinstance(path, (str, os.PathLike)):
            with open(_existing(path, ".pkl"), "rb") as fh:
                check_replay_buffer(fh, label=os.fspath(path))
                super().load_replay_buffer(fh, truncate_last_traj)
        else:
            check_replay_buffer(path)
            super().load_replay_buffer(path, truncate_last_traj)
        if graph_ids is not None:
            from ppd.agents.train_resume import remap_graph_ids

            rb = self.replay_buffer
            used = rb.buffer_size if rb.full else rb.pos
            for obs in (rb.observations, rb.next_observations):
                remap_graph_ids(obs, graph_ids, used)

    # -- masks ------------------------------------------------------------------------
    def action_masks(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        """(B, 2N + 1) bool valid-action masks of a (batched or single) observation."""
        state = np.asarray(observation["state"])
        return np.atleast_2d(obs_action_mask(state, self.policy.role, self.policy.relabel))

    def _random_valid(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        if not hasattr(self, "_mask_rng"):
            self._mask_rng = np.random.default_rng(self.seed)
        return sample_valid_actions(self.action_masks(observation), self._mask_rng)

    # -- acting -----------------------------------------------------------------------
    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Epsilon-greedy over valid actions (greedy when ``deterministic``).

        Unlike SB3 (one coin for the whole batch), each row explores independently.
        """
        if deterministic or self.exploration_rate <= 0:
            return self.policy.predict(observation, state, episode_start, deterministic)
        random = self._random_valid(observation)
        explore = self._mask_rng.random(len(random)) < self.exploration_rate
        if explore.all():  # skip the forward pass
            action = random if np.ndim(observation["state"]) == 2 else np.array(random[0])
            return action, state
        action, state = self.policy.predict(observation, state, episode_start, deterministic)
        if np.ndim(observation["state"]) == 2:
            action = np.where(explore, random, action)
        elif explore[0]:
            action = np.array(random[0])
        return action, state

    def _sample_action(self, learning_starts: int, action_noise=None, n_envs: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Warm-up (before ``learning_starts``): uniform valid actions; then :meth:`predict`."""
        assert self._last_obs is not None, "self._last_obs was not set"
        if self.num_timesteps < learning_starts:
            action = self._random_valid(self._last_obs)  # type: ignore[arg-type]
        else:
            action, _ = self.predict(self._last_obs, deterministic=False)  # type: ignore[arg-type]
        return action, action

    def _on_step(self) -> None:
        super()._on_step()
        if self.exploration_horizon:
            progress = max(0.0, 1.0 - self.num_timesteps / float(self.exploration_horizon))
            self.exploration_rate = self.exploration_schedule(progress)
            self.logger.record("rollout/exploration_rate", self.exploration_rate)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_mask_rng", "_quiet_logger"]

    def _setup_learn(self, *args: Any, **kwargs: Any):
        # With no TensorBoard folder and verbose=0, SB3's learn() builds a logger that
        # writes nothing but still creates an empty /tmp/SB3-<time> folder, one per call
        # (hundreds per test run). A logger without outputs creates none; it is replaced
        # by SB3's own again once tensorboard_log or verbose is set.
        quiet = self.tensorboard_log is None and self.verbose == 0
        if quiet and not self._custom_logger:
            self.set_logger(Logger(folder=None, output_formats=[]))
            self._quiet_logger = True
        elif not quiet and getattr(self, "_quiet_logger", False):
            self._custom_logger = self._quiet_logger = False
        return super()._setup_learn(*args, **kwargs)

    # -- learning ---------------------------------------------------------------------
    def td_target(self, rewards: torch.Tensor, next_observations: Any, dones: torch.Tensor, discounts: Any) -> torch.Tensor:
        """(B, 1) TD target ``r + (1 - done) * gamma * Q_target(s', a')``.

        ``a'`` is the online network's greedy action (``double_q``) or the target
        network's; both networks mask invalid actions, so ``a'`` is always valid.
        """
        with torch.no_grad():
            next_q = self.q_net_target(next_observations)
            if self.double_q:
                best = self.q_net(next_observations).argmax(dim=1, keepdim=True)
                next_q = next_q.gather(1, best)
            else:
                next_q = next_q.max(dim=1, keepdim=True).values
            return rewards + (1 - dones) * discounts * next_q

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        """SB3 2.9's ``DQN.train`` with the target of :meth:`td_target`."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        losses, label_losses, label_accs = [], [], []
        for _ in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            discounts = data.discounts if data.discounts is not None else self.gamma
            target = self.td_target(data.rewards, data.next_observations, data.dones, discounts)
            if self.label_aux_weight > 0:
                q, logits = self.q_net.q_and_label_logits(data.observations)
            else:
                q, logits = self.q_net(data.observations), None
            current = torch.gather(q, dim=1, index=data.actions.long())
            loss = F.smooth_l1_loss(current, target)
            losses.append(loss.item())
            if logits is not None:
                label_loss, acc = label_aux_loss(logits, data.observations["label_target"])
                if label_loss is not None:
                    loss = loss + self.label_aux_weight * label_loss
                    label_losses.append(label_loss.item())
                    label_accs.append(acc)
            self.policy.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()
        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", np.mean(losses))
        if label_losses:
            self.logger.record("train/label_loss", np.mean(label_losses))
            self.logger.record("train/label_accuracy", np.mean(label_accs))


def label_aux_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor | None, float]:
    """Mean binary cross-entropy of (B, N) wrong-label logits against ``label_target``
    (B, N) (0 right, 1 wrong, 2 unknown: left out), and the accuracy of ``logit > 0``;
    ``(None, nan)`` when no target is known."""
    targets = targets.to(logits.device).round().long()
    known = targets != UNKNOWN_LABEL
    if not bool(known.any()):
        return None, float("nan")
    y = (targets[known] == WRONG_LABEL).float()
    z = logits[known]
    acc = float(((z > 0).float() == y).float().mean())
    return F.binary_cross_entropy_with_logits(z, y), acc


#: Defaults of :func:`make_dqn`: sized for short episodes (4-12 steps) on a CPU. Small,
#: frequent updates (hidden 32, batch 32, 2 updates per vector step) learned faster per
#: CPU second than hidden 64 / batch 64 / 1 update in defender-only runs (measured).
DEFAULT_DQN_KWARGS: dict[str, Any] = dict(
    learning_rate=5e-4,
    buffer_size=30_000,
    learning_starts=500,
    batch_size=32,
    tau=1.0,
    gamma=0.9,
    train_freq=1,
    gradient_steps=2,
    target_update_interval=500,
    exploration_fraction=0.4,
    exploration_initial_eps=1.0,
    exploration_final_eps=0.05,
    max_grad_norm=10.0,
    # The step budget is part of the MDP (the observation carries step_frac), so an
    # episode cut by it ends like any other: no bootstrapping from the state after the
    # last step. Bootstrapping there (SB3's default time-limit handling) lets an agent
    # value undoing its own fix at the last step as nearly free (it would "redo" it).
    replay_buffer_kwargs=dict(handle_timeout_termination=False),
)


def _env_world(env: VecEnv) -> Any:
    """The env's :class:`~ppd.envs.world.PromptWorld` (of its first env), or None."""
    world = getattr(env, "world", None)
    if world is None:
        try:
            world = env.get_attr("world", [0])[0]
        except AttributeError:
            world = None
    return world


def graph_store_of(env: VecEnv) -> GraphStore:
    """The graph store the env's observations name graphs in: its world's
    ``graph_store`` when it has one, else :data:`~ppd.graphs.store.GRAPH_STORE` (where
    :class:`~ppd.envs.world.PromptWorld` registers)."""
    store = getattr(_env_world(env), "graph_store", None)
    return store if isinstance(store, GraphStore) else GRAPH_STORE


def _node_feature_dim(env: VecEnv) -> int:
    """Channels of the node features of the env's graphs (read through its PromptWorld)."""
    world = _env_world(env)
    if world is None:
        raise ValueError("cannot infer node_feature_dim from this env (it has no PromptWorld); pass node_feature_dim=")
    return int(graph_store_of(env).get(world.image(0).graph_id).x.shape[1])


def make_dqn(
    env: VecEnv,
    role: str,
    relabel: bool = True,
    node_feature_dim: int | None = None,
    hidden_dim: int = 32,
    n_layers: int = 2,
    node_norm: str = "none",
    stop_q: str = "learned",
    node_features: str = "embedding",
    q_prior: str = "none",
    seed: int | None = None,
    device: str = "auto",
    tensorboard_log: str | None = None,
    verbose: int = 0,
    exploration_horizon: int | None = None,
    double_q: bool = True,
    label_aux: float = 0.0,
    graph_store: GraphStore | None = None,
    **hyper: Any,
) -> MaskedDQN:
    """A :class:`MaskedDQN` with a :class:`GraphDQNPolicy` for a point-prompt env.

    Args:
        env: an SB3 VecEnv of :class:`~ppd.envs.point_prompt_env.PointPromptEnv` s
            (e.g. :class:`~ppd.envs.vec_env.PromptVecEnv`) of the given role.
        role: ``"attacker"`` or ``"defender"``.
        relabel: whether the defender may relabel prompts (must match the env).
        node_feature_dim: channels of the graphs' node features (default: read from the
            env's world).
        hidden_dim, n_layers: GNN width and depth.
        node_norm, stop_q, node_features, q_prior: node-feature normalisation, stop
            Q-value, node-feature inputs and removal Q-value prior of the network
            (see :class:`~ppd.agents.qnet.GraphQNetwork`).
        seed, device, tensorboard_log, verbose: as in SB3.
        exploration_horizon: env steps over which epsilon anneals across ``learn`` calls.
        double_q: Double DQN target (see :class:`MaskedDQN`).
        label_aux: weight of the auxiliary wrong-label loss (0: off); > 0 builds the
            network's label head (defender; the env needs ``label_target=True``).
        graph_store: the store of the env's graphs (default: :func:`graph_store_of` the
            env), given to the Q-networks through ``policy_kwargs``.
        **hyper: DQN hyperparameters overriding :data:`DEFAULT_DQN_KWARGS`.
    """
    if node_feature_dim is None:
        node_feature_dim = _node_feature_dim(env)
    kwargs = {**DEFAULT_DQN_KWARGS, **hyper}
    policy_kwargs = dict(
        role=role, relabel=relabel, node_feature_dim=node_feature_dim, hidden_dim=hidden_dim, n_layers=n_layers,
        node_norm=node_norm, stop_q=stop_q, node_features=node_features, q_prior=q_prior,
        label_aux=label_aux > 0, graph_store=graph_store if graph_store is not None else graph_store_of(env),
    )
    policy_kwargs.update(kwargs.pop("policy_kwargs", None) or {})
    return MaskedDQN(
        GraphDQNPolicy,
        env,
        policy_kwargs=policy_kwargs,
        seed=seed,
        device=device,
        tensorboard_log=tensorboard_log,
        verbose=verbose,
        exploration_horizon=exploration_horizon,
        double_q=double_q,
        label_aux_weight=label_aux,
        **kwargs,
    )
