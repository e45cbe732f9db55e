"""The point-prompt environment: attacker and defender roles on a dual-space graph.

The action masks and state transitions it uses are in :mod:`ppd.envs.actions`, the
observation encoding in :mod:`ppd.envs.observations`; both are re-exported here.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ppd.data.types import Scene
from ppd.envs.actions import defender_step, rollout_action_mask, valid_action_mask  # noqa: F401  (re-exported)
from ppd.envs.observations import (  # noqa: F401  (re-exported)
    PROBE_SCORE_GAIN,
    RIGHT_LABEL,
    UNKNOWN_LABEL,
    WRONG_LABEL,
    build_observation,
    decode_probe_score,
    encode_probe_score,
    label_targets,
    observation_options,
)
from ppd.envs.world import (
    INACTIVE,
    NEGATIVE,
    POSITIVE,
    ImageRecord,
    Outcome,
    PromptWorld,
    prompts_from_state,
    state_from_prompts,
)
from ppd.graphs.store import MAX_ID
from ppd.prompts import coarse_prompts, ideal_prompts, random_coarse_kwargs
from ppd.segmenter import Segmenter
from ppd.viz import overlay

logger = logging.getLogger(__name__)

ROLES = ("attacker", "defender")
DEFAULT_MAX_STEPS = {"attacker": 4, "defender": 12}
DEFAULT_START_MIX = {"attacked": 0.4, "coarse": 0.4, "ideal": 0.2}
#: Defender start kinds ``start_mix`` may weigh: those of :data:`DEFAULT_START_MIX` and
#: ``fm``, one-shot feature-matching sets (the world's ``fm_starts``).
START_KINDS = (*DEFAULT_START_MIX, "fm")
#: How coarse start sets get their noise settings (see ``PointPromptEnv``'s arguments).
COARSE_NOISE = ("fixed", "random")
#: Share of clean coarse starts with ``coarse_noise="random"``.
RANDOM_NOISE_P_CLEAN = 0.25


class PointPromptEnv(gym.Env):
    """Attack or defend the point prompts of a SAM2 segmentation.

    ## Description
    An image is a graph of patches over SAM2's own image embedding (``ppd.graphs``):
    G x G nodes (16 x 16 = 256 with the bundled model), edges by physical and by
    semantic distance. Each node can hold one point prompt: inactive, positive or
    negative. Each step the agent changes one node's prompt; SAM2 decodes the active
    prompts and the reward is the change of the mask's quality against the ground truth.

    * ``role="attacker"`` starts from ideal prompts (positives on a lattice inside the
      object, negatives around it) and activates prompts that hurt the mask most.
    * ``role="defender"`` starts from a degraded prompt set (the attacker's final sets,
      coarse noisy sets, or ideal sets) and removes (or relabels) harmful prompts.

    ## Action Space
    ``Discrete(2 N + 1)``; action ``a = kind * N + node`` for ``a < 2 N``, ``a = 2 N`` is stop.

    | role     | kind 0                       | kind 1                         | 2N   |
    |----------|------------------------------|--------------------------------|------|
    | attacker | activate node as positive    | activate node as negative      | stop |
    | defender | deactivate an active node    | relabel an active node         | stop |

    Invalid actions (activating an active node, touching an inactive node as the
    defender, relabelling with ``relabel=False``) are masked: ``info["action_mask"]``
    from ``reset``/``step`` and :meth:`action_masks`. Taken anyway, they change nothing
    and give reward 0 (``info["invalid_action"] = True``).

    ## Observation Space
    A ``Dict`` of fixed-shape ``Box`` es. Static graph data (node features, edges) is
    NOT in the observation: ``image_id`` names the image's graph in
    ``ppd.graphs.store.GRAPH_STORE``.

    | key         | shape  | dtype   | meaning                                                    |
    |-------------|--------|---------|------------------------------------------------------------|
    | state       | (N,)   | uint8   | 0 inactive, 1 positive, 2 negative                         |
    | coverage    | (N,)   | uint8   | fraction of the patch inside the current mask, x 255       |
    | offset      | (2N,)  | uint8   | prompt point - patch centre, in patch sizes, (o + 0.5) x 255; |
    |             |        |         | node i's (x, y) at [2i, 2i + 1] (``reshape(N, 2)``)          |
    | step_frac   | (1,)   | float32 | step / max_steps                                           |
    | score       | (1,)   | float32 | SAM's predicted IoU of the current mask                    |
    | image_id    | (1,)   | float32 | graph id (an integer < 2**24)                              |
    | uncertainty | (N,)   | uint8   | only with ``node_uncertainty=True``: mean of the           |
    |             |        |         | segmenter's pixel uncertainty over the patch for the       |
    |             |        |         | current mask (0 with no prompt), x 255                     |
    | probe_score | (N,)   | uint8   | only with ``probe=True``: SAM's predicted IoU without the  |
    |             |        |         | node's prompt minus with it, d, as (0.5 + 4 d) x 255       |
    |             |        |         | (clipped; 0.5 x 255 at inactive nodes)                     |
    | probe_change| (N,)   | uint8   | only with ``probe=True``: how much the mask changes without|
    |             |        |         | the node's prompt (1 - IoU of the patch coverages), x 255  |
    | label_target| (N,)   | uint8   | only with ``label_target=True``: 1 where the prompt's label|
    |             |        |         | is wrong by the ground truth at its point, 0 where right,  |
    |             |        |         | 2 at inactive nodes. A training target of the auxiliary    |
    |             |        |         | label head (``ppd train --label-aux``), never read by the  |
    |             |        |         | Q-network; all 2 at inference (no ground truth)            |

    ``coverage`` and ``uncertainty`` describe the mask of the current prompt set: both
    are patch means (:func:`ppd.graphs.dual_space.patch_mean`) of what the one decoder
    call of the step returns, so they change with every step and cost no extra decode.
    The removal probes (beyond the paper) tell the agent, without ground truth, what
    removing each prompt would do to the mask and to SAM's own quality estimate: the K
    leave-one-out prompt sets of a state with K prompts are decoded in the same decoder
    call as the state (K + 1 prompt sets per environment and step instead of 1); they
    are what :class:`~ppd.agents.baselines.GreedyScoreFilter` ranks by, given to the
    network as inputs it may weigh against everything else it sees.

    ## Rewards
    ``r_t = s * (Q(M_t) - Q(M_{t-1}))`` with Q the IoU (or Dice) of SAM2's mask
    against the ground truth, s = -1 for the attacker and +1 for the defender. No
    prompt at all gives an empty mask (Q = 0). Stop and invalid actions give 0.
    With ``step_cost`` c > 0 every valid non-stop action earns ``r_t - c`` (beyond the
    paper): a change must raise the quality by more than c to pay, which teaches the
    agent to stop instead of making changes whose value is within its estimation noise.

    ## Starting State
    A random scene of the dataset and a random object in it. Attacker: ideal prompts.
    Defender: drawn by ``start_mix`` from the attacked pool (falls back to coarse while
    the pool is empty), coarse prompts (``ppd.prompts.coarse_prompts``), ideal ones and
    one-shot feature-matching sets (``fm``: the world's ``fm_starts``, a
    :class:`~ppd.envs.fm_starts.FeatureMatchStarts`; coarse for an object without a
    reference or a world without them).

    ## Episode End
    Terminated: stop action, or no node action is valid (nothing left to activate /
    remove). Truncated: ``max_steps`` steps (4 attacker, 12 defender by default).

    ## Arguments
    ``role``, ``segmenter`` (default: bundled model), ``dataset`` (Scenes; default: 64
    procedural training scenes), ``world`` (a shared :class:`PromptWorld`, overrides
    the previous two), ``grid``, ``k_physical``, ``k_semantic``, ``max_steps``,
    ``quality`` ("iou" | "dice"), ``relabel`` (defender may relabel, default True),
    ``start_mix`` (defender start distribution), ``coarse_kwargs`` (passed to
    ``coarse_prompts``), ``coarse_noise`` ("fixed": every coarse start with
    ``coarse_kwargs``; "random": each with noise settings drawn by
    ``ppd.prompts.random_coarse_kwargs``, a quarter of them clean), ``max_ideal_points`` (per label, attacker start),
    ``node_uncertainty`` (default False: add the ``uncertainty`` observation key; needs a
    segmenter that gives uncertainty, i.e. the RUAC decoder
    ``ppd.load_segmenter(..., decoder="ruac", ruac_checkpoint=...)``, else ValueError),
    ``step_cost`` (default 0: the paper's reward; see Rewards), ``probe`` (default
    False: add the removal-probe keys; defender only), ``label_target`` (default False:
    add the ``label_target`` key; defender only).

    ## Version History
    * v0: initial version.
    * v0 (same id): optional ``node_uncertainty`` argument adding the ``uncertainty``
      key; off by default, and the observation without it is unchanged.
    * v0 (same id): optional ``step_cost`` (default 0, the reward is unchanged).
    * v0 (same id): optional ``probe`` (default False, the observation is unchanged).
    * v0 (same id): optional ``label_target`` (default False, the observation is unchanged).
    * v0 (same id): optional ``coarse_noise`` (default "fixed", the starts are unchanged).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 2}

    def __init__(
        self,
        role: str = "defender",
        segmenter: Segmenter | None = None,
        dataset: Sequence[Scene] | None = None,
        world: PromptWorld | None = None,
        grid: int | None = None,
        k_physical: int = 8,
        k_semantic: int = 8,
        max_steps: int | None = None,
        quality: str = "iou",
        relabel: bool = True,
        start_mix: dict[str, float] | None = None,
        coarse_kwargs: dict[str, Any] | None = None,
        coarse_noise: str = "fixed",
        max_ideal_points: int = 6,
        render_mode: str | None = None,
        node_uncertainty: bool = False,
        step_cost: float = 0.0,
        probe: bool = False,
        label_target: bool = False,
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be 'attacker' or 'defender', got {role!r}")
        self.role = role
        self.world = world or PromptWorld(segmenter, dataset, grid, k_physical, k_semantic, quality)
        self.max_steps = int(max_steps or DEFAULT_MAX_STEPS[role])
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        self.relabel = bool(relabel)
        mix = dict(start_mix or DEFAULT_START_MIX)
        unknown = set(mix) - set(START_KINDS)
        if unknown or any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
            raise ValueError(f"start_mix must map some of {sorted(START_KINDS)} to non-negative weights, got {mix}")
        self.start_mix = mix
        self.coarse_kwargs = dict(coarse_kwargs or {})
        if coarse_noise not in COARSE_NOISE:
            raise ValueError(f"coarse_noise must be one of {COARSE_NOISE}, got {coarse_noise!r}")
        self.coarse_noise = coarse_noise
        self.max_ideal_points = max_ideal_points
        self.render_mode = render_mode
        self.node_uncertainty = bool(node_uncertainty)
        if not (np.isfinite(step_cost) and step_cost >= 0):
            raise ValueError(f"step_cost must be a finite number >= 0, got {step_cost!r}")
        self.step_cost = float(step_cost)
        if probe and role != "defender":
            raise ValueError("probe=True (removal probes) is for the defender role only")
        self.probe = bool(probe)
        if label_target and role != "defender":
            raise ValueError("label_target=True (the auxiliary label target) is for the defender role only")
        self.label_target = bool(label_target)
        if self.node_uncertainty and not self.world.gives_uncertainty:
            seg = self.world.segmenter
            raise ValueError(
                f"node_uncertainty=True needs a segmenter that gives pixel uncertainty, but "
                f"{getattr(seg, 'name', type(seg).__name__)!r} uses decoder {getattr(seg, 'decoder', 'sam2')!r}: "
                'load it with ppd.load_segmenter(..., decoder="ruac", ruac_checkpoint=DIR_OR_FILE) '
                "or pass node_uncertainty=False"
            )
        n = self.world.num_nodes
        self.num_nodes = n
        self.action_space = spaces.Discrete(2 * n + 1)
        obs_spaces = {
            "state": spaces.Box(0, 2, (n,), np.uint8),
            "coverage": spaces.Box(0, 255, (n,), np.uint8),
            "offset": spaces.Box(0, 255, (2 * n,), np.uint8),
            "step_frac": spaces.Box(0.0, 1.0, (1,), np.float32),
            "score": spaces.Box(0.0, 1.5, (1,), np.float32),
            "image_id": spaces.Box(0.0, float(MAX_ID), (1,), np.float32),
        }
        if self.node_uncertainty:
            obs_spaces["uncertainty"] = spaces.Box(0, 255, (n,), np.uint8)
        if self.probe:
            obs_spaces["probe_score"] = spaces.Box(0, 255, (n,), np.uint8)
            obs_spaces["probe_change"] = spaces.Box(0, 255, (n,), np.uint8)
        if self.label_target:
            obs_spaces["label_target"] = spaces.Box(0, UNKNOWN_LABEL, (n,), np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)
        self._rec: ImageRecord | None = None
        self._obj = 0
        self._state = np.zeros(n, np.uint8)
        self._points = np.zeros((n, 2), np.float32)
        self._t = 0
        self._outcome: Outcome | None = None
        self._start_kind = ""
        self._pending: tuple | None = None

    # -- start states ------------------------------------------------------------------
    def _draw_start(self) -> tuple[ImageRecord, int, np.ndarray, np.ndarray, str]:
        rng = self.np_random
        if self.role == "defender":
            kinds = list(self.start_mix)
            p = np.array([self.start_mix[k] for k in kinds], float)
            kind = kinds[rng.choice(len(kinds), p=p / p.sum())]
            if kind == "attacked" and self.world.attack_pool:
                idx, obj, st, pts = self.world.attack_pool[int(rng.integers(len(self.world.attack_pool)))]
                return self.world.image(idx), obj, st.copy(), pts.copy(), "attacked"
            if kind == "attacked":
                kind = "coarse"
        else:
            kind = "ideal"
        rec = self.world.image(int(rng.integers(len(self.world.dataset))))
        obj = int(rng.integers(rec.scene.num_objects))
        gt = rec.scene.masks[obj]
        if kind == "fm":
            fm = getattr(self.world, "fm_starts", None)
            found = None if fm is None else fm.state(rec, obj)
            if found is not None:
                return rec, obj, found[0], found[1], "fm"
            kind = "coarse"
        if kind == "coarse":
            kw = self.coarse_kwargs
            if self.coarse_noise == "random":  # the run's other settings (boundary_px, ...) stay
                kw = {**kw, **random_coarse_kwargs(rng, p_clean=RANDOM_NOISE_P_CLEAN)}
            ps = coarse_prompts(gt, rng, **kw).prompts
        else:
            ps = ideal_prompts(gt, n_pos=self.max_ideal_points, n_neg=self.max_ideal_points)
        st, pts, _ = state_from_prompts(ps.point_coords, ps.point_labels, rec.grid, rec.hw, rec.centres)
        return rec, obj, st, pts, kind

    # -- split step / reset (the vector env batches the evaluate() between the halves) --
    def prepare_reset(self, seed: int | None = None) -> tuple:
        super().reset(seed=seed)
        rec, obj, st, pts, kind = self._draw_start()
        self._rec, self._obj, self._state, self._points, self._start_kind = rec, obj, st, pts, kind
        self._t = 0
        return (rec, obj, st, pts)

    def complete_reset(self, outcome: Outcome) -> tuple[dict, dict]:
        self._outcome = outcome
        self._start_quality = outcome.quality
        return self._obs(), self._info(invalid=False)

    def prepare_step(self, action: int) -> tuple:
        if self._rec is None:
            raise RuntimeError("call reset() before step()")
        a = int(action)
        n = self.num_nodes
        if not 0 <= a <= 2 * n:
            raise ValueError(f"action {a} outside Discrete({2 * n + 1})")
        self._t += 1
        self._invalid = not bool(self.action_masks()[a])
        self._stopped = a == 2 * n
        if not self._invalid and not self._stopped:
            pts = self._points
            if self.role == "attacker":
                kind, node = divmod(a, n)
                st = self._state.copy()
                st[node] = POSITIVE if kind == 0 else NEGATIVE
                pts = pts.copy()
                pts[node] = self._rec.centres[node]
            else:
                st = defender_step(self._state, a)
            self._state, self._points = st, pts
        return (self._rec, self._obj, self._state, self._points)

    def complete_step(self, outcome: Outcome) -> tuple[dict, float, bool, bool, dict]:
        prev = self._outcome.quality
        self._outcome = outcome
        delta = outcome.quality - prev
        reward = 0.0 if (self._invalid or self._stopped) else float(delta if self.role == "defender" else -delta) - self.step_cost
        no_action = not self.action_masks()[:-1].any()
        terminated = bool(self._stopped or no_action)
        truncated = bool(not terminated and self._t >= self.max_steps)
        if (terminated or truncated) and self.role == "attacker":
            self.world.add_attacked(self._rec.index, self._obj, self._state, self._points)
        return self._obs(), reward, terminated, truncated, self._info(self._invalid)

    # -- gymnasium API -----------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        req = self.prepare_reset(seed)
        return self.complete_reset(self.world.evaluate([req], probe=self.probe)[0])

    def step(self, action):
        req = self.prepare_step(action)
        return self.complete_step(self.world.evaluate([req], probe=self.probe)[0])

    def action_masks(self) -> np.ndarray:
        """(2N + 1,) bool: which actions are valid now."""
        return valid_action_mask(self._state, self.role, self.relabel)

    def _obs(self) -> dict[str, np.ndarray]:
        return build_observation(
            self._rec, self._state, self._points, self._outcome, self._t, self.max_steps, self.node_uncertainty,
            self.probe, self.label_target, self._rec.scene.masks[self._obj] if self.label_target else None,
        )

    def _info(self, invalid: bool) -> dict[str, Any]:
        return {
            "action_mask": self.action_masks(),
            "quality": self._outcome.quality,
            "start_quality": self._start_quality,
            "start_kind": self._start_kind,
            "num_prompts": int((self._state != INACTIVE).sum()),
            "scene_index": self._rec.index,
            "object_index": self._obj,
            "invalid_action": invalid,
        }

    @property
    def prompt_state(self) -> tuple[np.ndarray, np.ndarray]:
        """(node_state (N,), node_points (N, 2)) of the current episode (copies)."""
        return self._state.copy(), self._points.copy()

    def render(self):
        if self.render_mode != "rgb_array" or self._rec is None:
            return None
        out = self.world.evaluate([(self._rec, self._obj, self._state, self._points)], want_mask=True)[0]
        coords, labels = prompts_from_state(self._state, self._points)
        return overlay(self._rec.scene.image, out.mask, coords, labels)
