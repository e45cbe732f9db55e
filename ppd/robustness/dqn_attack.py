"""The learned point attack: a trained DQN attacker's worst case from a given prompt set.

A ``ppd train`` run's attacker (``attacker.zip``) acts on a dual-space graph of the image
(:class:`~ppd.envs.world.PromptWorld`): each step it activates one graph node as a
positive or a negative prompt (at the node's patch centre), or stops, up to its training
budget ``attacker_max_steps`` (4 by default). :func:`dqn_point_attack` runs it greedily,
as in training and in the fixed defense sets (:mod:`ppd.bench.defense_sets`), from each
object's start set mapped onto the graph (:func:`~ppd.envs.world.state_from_prompts`:
points sharing a patch merge into one node, the one nearest the patch centre), all
objects of an image batched (one decoder call per attacker step,
:func:`~ppd.agents.rollout.greedy_rollout`).

Every prompt set the attacker visits, the start included, is then scored as the BREPS
point attack scores its sets (:func:`ppd.robustness.breps.point_attack` with no step:
one mask per set, void pixels excluded), and the lowest IoU along the trajectory is kept,
as BREPS keeps the extreme along its Adam trajectory. So ``iou_min <= iou_base`` always,
and the numbers sit beside BREPS's gradient attack from the same start.

The attacker must act on the graph the model gives (:func:`check_attacker`): its node
count is ``grid * grid`` with ``grid`` the model's default graph grid (its embedding
grid, at most 32: 16 for the bundled model), and its network reads node features of the
model's embedding width. Otherwise :class:`AttackerError`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: Largest default graph grid (``build_dual_space_graph``'s ``max_grid``).
MAX_GRID = 32


class AttackerError(ValueError):
    """An attacker that cannot be read, or cannot attack for the given model or defender."""


@dataclass
class Attacker:
    """A trained attacker with what its world needs.

    Attributes:
        model: the SB3 model (:class:`~ppd.agents.dqn.MaskedDQN`).
        grid: nodes per side of its graph (``sqrt`` of its node count).
        k_physical, k_semantic: its graph's k-NN sizes (the run's, else 8).
        max_steps: its step budget (the run's ``attacker_max_steps``, else 4).
        source: the run folder or file it was read from.
        max_ideal_points: ideal prompts per label of its training start states (the
            run's, else 6).
    """

    model: Any
    grid: int
    k_physical: int = 8
    k_semantic: int = 8
    max_steps: int = 4
    source: str = ""
    max_ideal_points: int = 6

    @property
    def num_nodes(self) -> int:
        return self.grid * self.grid

    @property
    def node_feature_dim(self) -> int | None:
        """Channels of the node features its network reads (None: not recorded)."""
        dim = getattr(getattr(self.model.policy, "q_net", None), "node_feature_dim", None)
        return None if dim is None else int(dim)


def attacker_steps(cfg: Any) -> int:
    """The attacker's step budget of a run config (anything
    :meth:`~ppd.agents.run_config.RunConfig.of` takes; 4 when it saved none)."""
    from ppd.agents.run_config import RunConfig
    from ppd.envs.point_prompt_env import DEFAULT_MAX_STEPS

    return RunConfig.of(cfg).max_steps("attacker") or DEFAULT_MAX_STEPS["attacker"]


def load_attacker(path: str | Path, device: str | None = None) -> Attacker:
    """The attacker of a ``ppd train`` run folder (its ``attacker.zip``) or of the
    ``.zip`` itself, with its run's graph sizes and step budget.

    Raises:
        AttackerError: no such folder or file, a folder without ``attacker.zip``, an
            unreadable archive or config, or a model whose nodes form no square grid.
    """
    from ppd.agents.run_config import RunConfig
    from ppd.agents.run_files import load_agent

    try:
        model, raw, folder = load_agent(path, "attacker.zip", device=device)
        cfg = RunConfig.from_mapping(raw, str(folder))
    except (FileNotFoundError, ValueError) as exc:
        raise AttackerError(str(exc)) from exc
    role = getattr(model.policy, "role", None) or cfg.role
    if role is not None and role != "attacker":
        raise AttackerError(f"{path}: the model's role is {role!r}, expected 'attacker'")
    n = int(model.observation_space["state"].shape[0])
    grid = int(round(math.sqrt(n)))
    if grid * grid != n:
        raise AttackerError(f"{path}: the attacker acts on {n} graph nodes, which is no square grid")
    k_phys, k_sem = cfg.saved_value("k_physical"), cfg.saved_value("k_semantic")
    return Attacker(model, grid, int(k_phys) if isinstance(k_phys, int) else 8,
                    int(k_sem) if isinstance(k_sem, int) else 8, attacker_steps(cfg), str(path), cfg.max_ideal_points)


def check_attacker_option(path: str) -> None:
    """That a protocol's ``--attacker`` value is a readable attacker, before any work
    (its grid is checked against each model when the model is loaded).

    Raises:
        AttackerError: as :func:`load_attacker`, the message led by ``--attacker PATH``.
    """
    try:
        load_attacker(path, device="cpu")
    except AttackerError as exc:
        raise AttackerError(f"--attacker {path}: {exc}") from None


def model_grid(seg: Any) -> int:
    """The graph grid a :class:`~ppd.envs.world.PromptWorld` builds by default for ``seg``:
    its embedding grid (``image_size / 16`` for SAM2), at most :data:`MAX_GRID`."""
    side = getattr(seg.model, "sam_image_embedding_size", None) or seg.image_size // 16
    return min(int(side), MAX_GRID)


def check_attacker(attacker: Attacker, seg: Any, name: str = "the model") -> None:
    """Raise :class:`AttackerError` unless ``attacker`` acts on ``seg``'s graph: as many
    nodes as :func:`model_grid` gives, and node features of ``seg``'s embedding width."""
    grid = model_grid(seg)
    if attacker.grid != grid:
        raise AttackerError(
            f"the attacker of {attacker.source} acts on {attacker.num_nodes} graph nodes ({attacker.grid} x "
            f"{attacker.grid}), {name} ({seg.name}) gives a {grid} x {grid} graph ({grid * grid} nodes): "
            "use an attacker trained on this model's grid")
    dim = attacker.node_feature_dim
    if dim is not None and dim != seg.embed_dim:
        raise AttackerError(
            f"the attacker of {attacker.source} reads {dim}-channel node features, {name} ({seg.name}) gives "
            f"{seg.embed_dim}: use an attacker trained on this model")


def greedy_attack(model: Any, world: Any, starts: Sequence[tuple], max_steps: int) -> list[dict[str, Any]]:
    """The attacker ``model`` acting greedily from ``starts`` ``(image record, object,
    node_state, node_points)`` for up to ``max_steps`` steps, all starts at once (one
    decoder call per step): :func:`~ppd.agents.rollout.greedy_rollout`'s results."""
    from ppd.agents.rollout import greedy_rollout

    return greedy_rollout(model, world, "attacker", starts, max_steps)


def _trajectory_world(seg: Any, scenes: Sequence[Any], attacker: Attacker) -> Any:
    """A :class:`PromptWorld` over ``scenes`` built as ``attacker``'s, recording each
    prompt state it is asked to decode per ``(image, object)``, in order."""
    from ppd.envs.world import PromptWorld

    class TrajectoryWorld(PromptWorld):
        # A rollout decodes each episode's start and the state after each of its steps
        # through evaluate() (removal probes go through _evaluate()), so the states asked
        # for here are exactly the states an episode visits: greedy_rollout returns only
        # its last one.
        def __init__(self) -> None:
            super().__init__(seg, scenes, grid=attacker.grid, k_physical=attacker.k_physical,
                             k_semantic=attacker.k_semantic)
            self.visited: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray]]] = {}

        def evaluate(self, requests, want_mask=False, probe=False):
            for rec, obj, st, pts in requests:
                self.visited.setdefault((rec.index, obj), []).append((st.copy(), pts.copy()))
            return super().evaluate(requests, want_mask=want_mask, probe=probe)

    return TrajectoryWorld()


@dataclass
class DqnAttackResult:
    """The attacker's worst case per object of one image.

    Attributes:
        iou_base: (N,) IoU of the start set on the graph.
        iou_min: (N,) lowest IoU along the attacker's trajectory, the start included.
        worst_coords, worst_labels: per object the prompt set of ``iou_min``.
        worst_mask: (N, H, W) its mask (void pixels off).
        worst_step: (N,) the step that reached it (0: the start).
        steps: (N,) steps the attacker took (a stop counts, as in its environment).
        trajectories: per object the visited ``(coords, labels)``, start first.
        seconds: wall time of the rollout and the scoring.
    """

    iou_base: np.ndarray
    iou_min: np.ndarray
    worst_coords: list[np.ndarray]
    worst_labels: list[np.ndarray]
    worst_mask: np.ndarray
    worst_step: np.ndarray
    steps: np.ndarray
    trajectories: list[list[tuple[np.ndarray, np.ndarray]]]
    seconds: float = 0.0

    @property
    def iou_delta(self) -> np.ndarray:
        """(N,) how far the attacker pushed IoU down: base - min (>= 0)."""
        return self.iou_base - self.iou_min


def dqn_point_attack(seg: Any, attacker: Attacker, image: np.ndarray, gts: np.ndarray,
                     coords: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                     valid: np.ndarray | None = None) -> DqnAttackResult:
    """The attacker's greedy attack on every object of one image (module docstring).

    Args:
        seg: the :class:`~ppd.segmenter.Segmenter` attacked (:func:`check_attacker` first).
        attacker: from :func:`load_attacker`.
        image: (H, W, 3) uint8 RGB image.
        gts: (N, H, W) bool object masks (void pixels already off), none empty.
        coords, labels: per object its start set, (K_i, 2) points (x, y) and (K_i,) labels.
        valid: (H, W) bool pixels that count (None: all), as in
            :func:`~ppd.robustness.breps.point_attack`.
    """
    from ppd.data.types import Scene
    from ppd.envs.world import prompts_from_state, state_from_prompts
    from ppd.robustness.breps import point_attack

    t0 = time.perf_counter()
    check_attacker(attacker, seg)
    gts = np.asarray(gts, bool)
    if gts.ndim != 3 or len(gts) == 0 or not gts.reshape(len(gts), -1).any(1).all():
        raise ValueError(f"gts must be (N, H, W) non-empty masks with N >= 1, got shape {gts.shape}")
    if len(coords) != len(gts) or len(labels) != len(gts):
        raise ValueError(f"need one start set per object: {len(gts)} objects, {len(coords)} coords, {len(labels)} labels")
    world = _trajectory_world(seg, [Scene(np.asarray(image), gts)], attacker)
    rec = world.image(0)
    starts = []
    for obj, (c, lab) in enumerate(zip(coords, labels)):
        st, pts, _ = state_from_prompts(c, lab, rec.grid, rec.hw, rec.centres)
        if not (st != 0).any():
            raise ValueError(f"object {obj}: the start set has no point")
        starts.append((rec, obj, st, pts))
    rolled = greedy_attack(attacker.model, world, starts, attacker.max_steps)
    trajectories = []
    for obj, r in enumerate(rolled):
        states = world.visited.get((rec.index, obj), [])
        if not states or not np.array_equal(states[-1][0], r["state"]):
            raise RuntimeError(f"object {obj}: the recorded trajectory does not end where the rollout did")
        trajectories.append([prompts_from_state(st, pts) for st, pts in states])
    # Score every visited set as BREPS scores its sets. Sets of equal length share a
    # call, unpadded: a padding point is a token the decoder attends to.
    flat = [(obj, t, c, lab) for obj, traj in enumerate(trajectories) for t, (c, lab) in enumerate(traj)]
    ious: dict[tuple[int, int], float] = {}
    masks: dict[tuple[int, int], np.ndarray] = {}
    for k in sorted({len(f[3]) for f in flat}):
        group = [f for f in flat if len(f[3]) == k]
        res = point_attack(seg, rec.embedding, gts[[f[0] for f in group]], [f[2] for f in group],
                           [f[3] for f in group], steps=0, valid=valid)
        for j, (obj, t, _, _) in enumerate(group):
            ious[obj, t] = float(res.iou_base[j])
            masks[obj, t] = res.base_mask[j]
    n = len(gts)
    base = np.array([ious[i, 0] for i in range(n)])
    worst = [min(range(len(trajectories[i])), key=lambda t: (ious[i, t], t)) for i in range(n)]
    out = DqnAttackResult(
        base, np.array([ious[i, w] for i, w in enumerate(worst)]),
        [trajectories[i][w][0] for i, w in enumerate(worst)], [trajectories[i][w][1] for i, w in enumerate(worst)],
        np.stack([masks[i, w] for i, w in enumerate(worst)]), np.array(worst), np.array([r["steps"] for r in rolled]),
        trajectories, time.perf_counter() - t0)
    logger.debug("DQN attack on %d objects: %.2f s", n, out.seconds)
    return out
