"""The trained defender as a plug-and-play prompt refiner.

:class:`PromptDefender` loads the defender DQN of a training run and refines any point
prompt set for SAM2, with no ground truth::

    defender = PromptDefender.load("runs/demo")       # run folder or defender.zip
    res = defender.refine(image, point_coords, point_labels)
    res.point_coords, res.point_labels, res.kept, res.mask, res.score, res.steps, res.trace

``refine`` is a pipeline of named stages (:mod:`ppd.agents.guards`): the input checks, the
consistency check, the defender's own refinement, the consensus check and the score
guard. The defender's own refinement (:meth:`PromptDefender.refine_sets`):

1. **map**: each point goes to the graph node (image patch) that contains it
   (:func:`ppd.envs.world.state_from_prompts`). When several points fall into one patch,
   the node takes the point nearest to the patch centre (its position and label) and the
   others are merged into the node: they are kept, dropped or relabelled with it, and
   only the node's own point is given to SAM.
2. **label filter** (runs trained with it, ``ppd train``'s default; ``label_filter.zip``):
   the prompts its wrong-label network flags above the threshold are removed or
   relabelled (the action selected in training; :mod:`ppd.agents.label_filter`;
   ``use_filter=False`` / ``ppd refine --no-filter`` turn it off).
3. **rollout** (:mod:`ppd.agents.rollout`): the defender acts greedily, removing (or, if
   trained with relabelling, relabelling) one prompt per step, until it picks stop, no
   valid action remains, or the step budget is spent. It never removes the last prompt.
   The output is the visited state with SAM's highest predicted IoU (``select="score"``,
   the default; ``select="last"``: where the defender stopped). Every visited state is
   decoded for the observations anyway, so the choice costs nothing and uses no ground
   truth. With ``polish``, a greedy removal on SAM's predicted IoU follows.
4. **decode**: SAM's mask of the output points (no padding: the mask a user gets).

With the RUAC decoder (``ppd.load_segmenter(..., decoder="ruac", ruac_checkpoint=...)``
passed as ``segmenter``), masks come from the Bayesian decoder and
:attr:`RefineResult.uncertainty` holds its pixel uncertainty map of the final mask. A
defender trained with ``node_uncertainty`` (its observation has the ``uncertainty`` key)
needs such a segmenter; :meth:`PromptDefender.load` loads the run's RUAC head by itself
when the run's config names one (``ruac_checkpoint``).

The result type and the refiner interface (:mod:`~ppd.agents.refiner`), the refine
options (:mod:`~ppd.agents.refine_config`), the stages around the refiner
(:mod:`~ppd.agents.guards`), the label filter stage and the wrong-label probability
(:mod:`~ppd.agents.defender_labels`), the rollout (:mod:`~ppd.agents.rollout`), the node
mapping (:mod:`~ppd.agents.node_map`), run-folder reading (:mod:`~ppd.agents.run_files`)
and the run's configuration (:mod:`~ppd.agents.run_config`) live in their own modules; the
names this module re-exports stay importable from here.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np

from ppd.agents.guards import prepare_sets, refine_guarded
from ppd.agents.defender_labels import WrongLabelStage
from ppd.agents.node_map import NodeMap
from ppd.agents.refine_config import (  # noqa: F401  (DEFAULT_* and the flag helpers re-exported)
    DEFAULT_CONSENSUS, DEFAULT_CONSENSUS_QUORUM, DEFAULT_KEEP_CONSISTENT, DEFAULT_MIN_SCORE_GAIN, DEFAULT_POLISH,
    DEFAULT_SELECT, SELECT_RULES, RefineConfig, add_consensus_argument, add_keep_consistent_argument, inference_options,
)
from ppd.agents.refiner import PromptRefiner, RefineResult, RefineSet, check_prompts, make_result
from ppd.agents.rollout import RefineEpisode, greedy_action, polish_states, run_episodes
from ppd.agents.run_files import (  # noqa: F401  (load_agent, read_run_config, role_max_steps re-exported)
    BUNDLED_DEFENDER, RunConfig, RunConfigLike, defender_arguments, load_agent, read_run_config, role_max_steps,
)
from ppd.agents.train_config import TrainConfig
from ppd.data.types import Scene
from ppd.envs.point_prompt_env import DEFAULT_MAX_STEPS, build_observation, observation_options
from ppd.envs.world import ImageRecord, PromptWorld, segmenter_gives_uncertainty
from ppd.segmenter import Segmenter, image_key

logger = logging.getLogger(__name__)

__all__ = [
    "BUNDLED_DEFENDER",
    "NodeMap",
    "PromptDefender",
    "PromptRefiner",
    "RefineConfig",
    "RefineResult",
    "RunConfig",
    "DEFAULT_SELECT",
    "SELECT_RULES",
    "check_prompts",
    "greedy_action",
    "load_agent",
    "make_result",
    "read_run_config",
    "role_max_steps",
]

class PromptDefender(WrongLabelStage, PromptRefiner):
    """A trained defender DQN that refines point prompts for SAM2 (no ground truth).

    Build it with :meth:`load`. Args of the constructor:
        model: the defender's SB3 model (``predict`` + ``policy.q_net``).
        segmenter: the SAM2 segmenter the defender was trained with.
        grid: nodes per side of the graph (must be the training grid).
        k_physical, k_semantic: k-NN sizes of the dual-space graph (training values).
        relabel: whether relabel actions are allowed (default: what the policy was
            trained with).
        max_steps: the training env's defender step budget (feeds ``step_frac`` of the
            observation and is the default refinement budget); None: unknown, then the
            default budget is ``max(K, 12)``.
        cache_size: images whose graph records are kept (LRU).
        config: the run's configuration: a :class:`~ppd.agents.run_config.RunConfig`, a
            :class:`~ppd.agents.train_config.TrainConfig` or a config file's mapping
            (kept as :attr:`run_config`, typed; :attr:`train_config` and :attr:`config`
            read it). The arguments above are what the network is built with; this is
            for reference (the benches read the attacker's settings from it).
        select: which visited state :meth:`refine` returns (:data:`SELECT_RULES`):
            ``"last"``, where the defender stopped; ``"score"``, the state with SAM's
            highest predicted IoU along the rollout (the input state included; the
            earliest on ties).
        patience: with ``select="score"``, end the rollout once this many steps in a
            row have not raised SAM's predicted IoU above the best so far (None: run
            until the defender stops or the budget ends). The output is the same
            whenever the best-scored state comes before such a run of steps; each step
            saved is one decoder call of K + 1 prompt sets (with probes) and one
            Q-network pass.
        label_filter: a :class:`~ppd.agents.label_filter.LabelFilter` ``(network,
            threshold, action, relabel_gate)`` (a 2-tuple means ``action="remove"``, no
            gate), the run's wrong-label filter (None: none). :meth:`refine` first
            removes (``action="remove"``; the least suspect prompt stays) or relabels
            (``"relabel"``) every prompt whose wrong-label probability exceeds the
            threshold, then the defender acts on the result, relabelling only prompts
            whose probability exceeds ``relabel_gate`` (0.0: any). A threshold of 1.0
            changes nothing; the stage and its cost: :mod:`~ppd.agents.defender_labels`.
        min_score_gain, polish, consensus, consensus_quorum, keep_consistent: the
            stages around the rollout (:class:`~ppd.agents.refine_config.RefineConfig`
            says what each does and its default; :mod:`ppd.agents.guards` why and at what
            cost): the score guard (None: off), a greedy removal after the rollout, the
            consensus check and its quorum, and the consistency check.
        refine_max_steps: the budget of :meth:`refine` calls that give none (None:
            :meth:`default_steps`).

    ``select``, ``patience``, ``min_score_gain``, ``polish``, ``consensus``,
    ``consensus_quorum``, ``keep_consistent`` and ``label_filter`` stay attributes of
    the same names, read at each call; :attr:`refine_config` gathers them.

    Whether the observation has the per-node ``uncertainty`` (``node_uncertainty``) is
    read from the model's observation space: it is what the network was trained on.

    Raises:
        ValueError: a grid that does not match the model, a model trained with
            ``node_uncertainty`` and a segmenter that gives no uncertainty, or an option
            out of its range (:class:`~ppd.agents.refine_config.RefineConfig`).
    """

    def __init__(
        self,
        model: Any,
        segmenter: Segmenter,
        grid: int,
        k_physical: int = 8,
        k_semantic: int = 8,
        relabel: bool | None = None,
        max_steps: int | None = None,
        cache_size: int = 64,
        config: RunConfigLike = None,
        select: str = DEFAULT_SELECT,
        patience: int | None = None,
        label_filter: tuple[Any, float] | tuple[Any, float, str] | None = None,
        min_score_gain: float | None = DEFAULT_MIN_SCORE_GAIN,
        polish: bool = DEFAULT_POLISH,
        consensus: bool = DEFAULT_CONSENSUS,
        consensus_quorum: float = DEFAULT_CONSENSUS_QUORUM,
        keep_consistent: bool = DEFAULT_KEEP_CONSISTENT,
        refine_max_steps: int | None = None,
    ) -> None:
        if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer))
                                      or max_steps < 1):
            raise ValueError("max_steps (the training environment's defender step budget) must be an integer >= 1, "
                             f"or None when unknown; got {max_steps!r}")
        opts = RefineConfig(select=select, patience=patience, min_score_gain=min_score_gain, polish=polish,
                            consensus=consensus, consensus_quorum=consensus_quorum, keep_consistent=keep_consistent,
                            max_steps=refine_max_steps)
        self.polish, self.consensus, self.keep_consistent = opts.polish, opts.consensus, opts.keep_consistent
        self.consensus_quorum, self.min_score_gain = opts.consensus_quorum, opts.min_score_gain
        self.select, self.patience, self.refine_max_steps = opts.select, opts.patience, opts.max_steps
        self.model = model
        self.segmenter = segmenter
        self.num_nodes = int(model.observation_space["state"].shape[0])
        if grid * grid != self.num_nodes:
            raise ValueError(f"grid {grid} gives {grid * grid} nodes, the defender was trained on {self.num_nodes}")
        policy_relabel = bool(getattr(model.policy, "relabel", True))
        self.relabel = policy_relabel if relabel is None else bool(relabel) and policy_relabel
        self.train_max_steps = int(max_steps) if max_steps else None
        self.run_config = RunConfig.of(config)
        # per-node uncertainty and removal probes: whatever the network was trained on
        opts_obs = observation_options(model.observation_space)
        self.node_uncertainty, self.probe = opts_obs["node_uncertainty"], opts_obs["probe"]
        # a defender trained with the auxiliary label loss has the (target-only) key:
        # filled with "unknown", no ground truth here, and never read by the Q-values
        self.label_target = opts_obs["label_target"]
        if self.node_uncertainty and not segmenter_gives_uncertainty(segmenter):
            raise ValueError(
                "this defender was trained with node_uncertainty=True (its observation has per-node "
                f"uncertainty), but the segmenter {getattr(segmenter, 'name', type(segmenter).__name__)!r} "
                f"uses decoder {getattr(segmenter, 'decoder', 'sam2')!r} and gives no uncertainty: pass "
                'segmenter=ppd.load_segmenter(..., decoder="ruac", ruac_checkpoint=DIR_OR_FILE) '
                "(ppd refine: --ruac-checkpoint DIR_OR_FILE)"
            )
        placeholder = [Scene(np.zeros((1, 1, 3), np.uint8), np.zeros((0, 1, 1), bool), domain="user")]
        self.world = PromptWorld(segmenter, placeholder, grid=grid, k_physical=k_physical, k_semantic=k_semantic)
        self.cache_size = cache_size
        self._records: OrderedDict[str, ImageRecord] = OrderedDict()
        self.label_filter = self._check_label_filter(label_filter)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | os.PathLike | None = None,
        segmenter: Segmenter | None = None,
        device: str | None = None,
        select: str = DEFAULT_SELECT,
        patience: int | None = None,
        use_filter: bool = True,
        filter_threshold: float | None = None,
        filter_action: str | None = None,
        min_score_gain: float | None = DEFAULT_MIN_SCORE_GAIN,
        precision: str | None = None,
        filter_relabel_gate: float | None = None,
        polish: bool = DEFAULT_POLISH,
        consensus: bool = DEFAULT_CONSENSUS,
        consensus_quorum: float = DEFAULT_CONSENSUS_QUORUM,
        keep_consistent: bool = DEFAULT_KEEP_CONSISTENT,
        embedding_cache: str | os.PathLike | None = None,
        config: RefineConfig | None = None,
    ) -> PromptDefender:
        """Load the defender of a training run.

        Args:
            path: a run folder holding ``defender.zip`` (and the ``config.yaml`` training
                wrote), or the ``.zip`` itself; None: the bundled defender.
            segmenter: the segmenter to refine for (default: the one named in the run's
                config, with its RUAC head if the config names one, else the bundled
                model). Its embedding must match the one the defender was trained on
                (same node features); a defender trained with ``node_uncertainty``
                needs one that gives uncertainty (RUAC decoder).
            device: torch device of the Q-network (default: SB3's "auto"); also the
                segmenter's device when it is loaded here.
            select: output rule, see the class docstring (:data:`SELECT_RULES`).
            patience: early end of ``select="score"`` rollouts, see the class docstring.
            use_filter: apply the run's wrong-label filter (``label_filter.zip``, from
                ``ppd train``'s last stage) when it has one; False: the defender alone.
            filter_threshold: the filter's threshold instead of the selected one (in
                (0, 1]; 1.0 changes nothing).
            filter_action: ``"remove"`` or ``"relabel"`` instead of the selected action.
            filter_relabel_gate: the relabel gate instead of the selected one (in [0, 1);
                0 lets the rollout relabel any prompt). Any filter override on a run
                without a filter, or with ``use_filter=False``, is an error (it would do
                nothing).
            min_score_gain: the score guard, see the class docstring (None: off).
            polish: drop prompts from the output while that raises SAM's predicted IoU,
                see the class docstring.
            consensus: check the output against the input's majority, see the class
                docstring.
            consensus_quorum: the share of input prompts that majority needs, see the
                class docstring.
            keep_consistent: return a self-consistent input unchanged, see the class
                docstring.
            precision: the precision of the segmenter loaded here (see
                :func:`ppd.segmenter.resolve_precision`; default fp32 for the bundled model).
            embedding_cache: a folder for the image embeddings of the segmenter loaded
                here (``cache_dir`` of :func:`ppd.load_segmenter`: kept across processes).
            config: every refine option at once (:class:`RefineConfig`, its ``max_steps``
                included), instead of the keyword arguments above (which must then stay
                at their defaults).

        Raises:
            FileNotFoundError: missing folder or ``defender.zip``.
            ValueError: corrupt run folder, a model that is not a defender, a
                ``node_uncertainty`` defender with a segmenter that gives no uncertainty,
                an option out of its range, both ``config`` and option keywords, or
                ``precision`` / ``embedding_cache`` together with ``segmenter`` (set them
                on that segmenter).
        """
        options = dict(select=select, patience=patience, use_filter=use_filter, filter_threshold=filter_threshold,
                       filter_action=filter_action, filter_relabel_gate=filter_relabel_gate,
                       min_score_gain=min_score_gain, polish=polish, consensus=consensus,
                       consensus_quorum=consensus_quorum, keep_consistent=keep_consistent)
        if config is None:
            config = RefineConfig(**options)
        else:
            defaults = RefineConfig()
            given = [k for k, v in options.items() if v is not getattr(defaults, k) and v != getattr(defaults, k)]
            if given:
                raise ValueError(f"pass the refine options either as config= or as keyword arguments, not both "
                                 f"(got config= and {', '.join(given)})")
        return cls(**defender_arguments(path, config, segmenter, device, precision, embedding_cache))

    @property
    def train_config(self) -> TrainConfig | None:
        """The settings the run was trained with (None: it saved none, e.g. a bare
        ``defender.zip``); :attr:`run_config` says which fields it saved."""
        return self.run_config.train

    @property
    def config(self) -> dict[str, Any]:
        """The run's config file as a mapping (a copy; {} if it has none).
        :attr:`train_config` is the typed view."""
        return dict(self.run_config.raw)

    @property
    def refine_config(self) -> RefineConfig:
        """The refine options this defender runs with now, as a :class:`RefineConfig`
        (the label filter's settings as applied; ``use_filter`` False when it has none)."""
        lf = self.label_filter
        return RefineConfig(
            select=self.select, patience=self.patience, max_steps=self.refine_max_steps, polish=self.polish,
            consensus=self.consensus, consensus_quorum=self.consensus_quorum, keep_consistent=self.keep_consistent,
            min_score_gain=self.min_score_gain, use_filter=lf is not None,
            filter_threshold=None if lf is None else lf.threshold, filter_action=None if lf is None else lf.action,
            filter_relabel_gate=None if lf is None else lf.relabel_gate,
        )

    # -- images -------------------------------------------------------------------------
    def record(self, image: np.ndarray) -> ImageRecord:
        """Encode ``image`` (segmenter cache) and register its graph (kept, LRU)."""
        # Looked up by content first: a record holds its embedding, so an image the
        # segmenter's (smaller) cache has dropped is not encoded again.
        key = image_key(np.asarray(image))
        rec = self._records.get(key)
        if rec is None:
            rec = self.world.register_image(image)
            self._records[key] = rec
            while len(self._records) > self.cache_size:
                self._records.popitem(last=False)
        else:
            self._records.move_to_end(key)
        return rec

    def default_steps(self, num_points: int) -> int:
        """Default step budget: ``refine_max_steps`` when set, else the training env's
        defender budget, else max(K, 12)."""
        if self.refine_max_steps is not None:
            return self.refine_max_steps
        return self.train_max_steps or max(num_points, DEFAULT_MAX_STEPS["defender"])

    # -- the rollout ----------------------------------------------------------------------
    def refine_state(
        self, rec: ImageRecord, node_state: np.ndarray, node_points: np.ndarray, max_steps: int
    ) -> tuple[np.ndarray, Any, int]:
        """:meth:`refine_states` for one prompt state."""
        return self.refine_states([(rec, node_state, node_points, max_steps)])[0]

    def refine_states(
        self, items: Sequence[tuple[ImageRecord, np.ndarray, np.ndarray, int]],
        relabel_ok: Sequence[np.ndarray | None] | None = None,
    ) -> list[tuple[np.ndarray, Any, int]]:
        """Greedy defender rollouts on prompt states ``(image record, node_state,
        node_points, step budget)`` (no ground truth), advanced together
        (:func:`~ppd.agents.rollout.run_episodes`: each step decodes the states of every
        running rollout in one ``world.evaluate`` call and runs the Q-network once on
        their observations).

        States are decoded by ``self.world`` exactly as in training (same prompt padding,
        see :class:`~ppd.envs.world.PromptWorld`), so the observations match the ones the
        agent learned on. Actions follow :func:`~ppd.envs.point_prompt_env.rollout_action_mask`
        (a prompt is relabelled at most once; the last prompt stays; with ``relabel_ok``,
        per item an (N,) bool or None, only those nodes may be relabelled: the label
        filter's relabel gate). A rollout ends when the defender picks stop, no valid
        action remains, its budget is spent, or (with ``patience``) its score has not
        improved for that many steps. The output state is picked among the visited ones
        by ``self.select``, then polished when ``self.polish`` (class docstring).

        Returns:
            Per item: ``(output node_state (N,), its Outcome (no mask), prompt changes
            from the input to it)``.
        """
        episodes = [RefineEpisode(self, rec, st, pts, budget, None if relabel_ok is None else relabel_ok[i])
                    for i, (rec, st, pts, budget) in enumerate(items)]
        run_episodes(self.model, self.world, episodes, self.probe)
        # Each step changes one prompt, so the i-th visited state is i changes away.
        picks = [len(e.visited) - 1 if self.select == "last" else e.best for e in episodes]
        picked = [(e.visited[p][0], e.visited[p][1], p) for e, p in zip(episodes, picks)]
        if not self.polish:
            return picked
        return polish_states(self.world, [(rec, -1, st, pts) for (st, _, _), (rec, _, pts, _) in zip(picked, items)],
                             [c for _, _, c in picked], [b for _, _, _, b in items])

    def _observation(
        self, rec: ImageRecord, st: np.ndarray, pts: np.ndarray, out: Any, t: int, env_steps: int
    ) -> dict[str, np.ndarray]:
        """:func:`build_observation` with the parts this defender's network was trained
        on (no ground truth: a ``label_target`` key is all unknown)."""
        return build_observation(rec, st, pts, out, t, env_steps, self.node_uncertainty, self.probe, self.label_target)

    # -- refinement -------------------------------------------------------------------------
    def refine(
        self,
        image: np.ndarray,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        max_steps: int | None = None,
    ) -> RefineResult:
        """Refine one prompt set on one image.

        Args:
            image: (H, W, 3) uint8 RGB image (any format the segmenter accepts).
            point_coords: (K, 2) points (x, y) in pixels, K >= 1.
            point_labels: (K,) labels, 1 foreground / 0 background.
            max_steps: step budget of the defender (default: :meth:`default_steps`),
                after the label filter's changes (if it has one); 0 decodes the mapped
                prompts unchanged (no filter either).

        Returns:
            :class:`RefineResult`: the surviving nodes' points (one per active node:
            its input point, with its possibly relabelled label) in input order, ``kept``
            for every input point (merged points follow their node), and
            ``segmenter.predict`` of the output points: mask and predicted IoU (and,
            with the RUAC decoder, its pixel ``uncertainty``); ``trace`` names the
            stages that decided it.

        Raises:
            ValueError: empty prompt set, bad shapes / labels, points outside the image,
                negative ``max_steps``.
        """
        return self.refine_many([image], [point_coords], [point_labels], max_steps)[0]

    def refine_many(
        self,
        images: Sequence[np.ndarray],
        coords_list: Sequence[np.ndarray],
        labels_list: Sequence[np.ndarray],
        max_steps: int | None | Sequence[int | None] = None,
    ) -> list[RefineResult]:
        """:meth:`refine` for several prompt sets (on several images, or the same one),
        batched: the vote is one decoder call, the label filter reads all of them in one
        pass, and the rollouts advance together (:meth:`refine_states`: one decoder call
        and one Q-network pass per step for all of them; a set whose rollout ended leaves
        the batch). Each result is what :meth:`refine` gives for its set, up to the last
        bits of the decoder's batched arithmetic. ``max_steps``: one budget for every
        set, or a sequence of one per set (None: that set's default, as :meth:`refine`).

        Raises:
            ValueError: lists of different lengths (``max_steps`` included), or a bad
                prompt set or budget (as :meth:`refine`); nothing is decoded then.
            TypeError: ``max_steps`` neither an int, None nor a sequence.
        """
        return refine_guarded(self, prepare_sets(self, images, coords_list, labels_list, max_steps), self.refine_config)

    # -- the refine stages' hooks (ppd.agents.guards) -----------------------------------------
    def prepare(self, image: np.ndarray, point_coords: Any, point_labels: Any, max_steps: int | None) -> RefineSet:
        """The checked prompts of one :meth:`refine` call, with their budget and their
        image's graph record, mapped onto its nodes (:class:`NodeMap`)."""
        coords, labels = check_prompts(point_coords, point_labels)
        budget = self.default_steps(len(coords)) if max_steps is None else int(max_steps)
        if budget < 0:
            raise ValueError(f"max_steps (the refine step budget) must be >= 0, got {budget}")
        rec = self.record(image)
        return RefineSet(coords, labels, budget, rec.embedding, image=image, nodes=NodeMap.build(rec, coords, labels))

    def restrict(self, s: RefineSet, keep: np.ndarray) -> RefineSet:
        """The prepared set ``s`` with only its points ``keep``, mapped anew."""
        coords, labels = s.coords[keep], s.labels[keep]
        return RefineSet(coords, labels, s.budget, s.embedding, image=s.image,
                         nodes=NodeMap.build(s.nodes.rec, coords, labels))

    def refine_sets(self, sets: Sequence[RefineSet]) -> list[RefineResult]:
        """The defender's own refinement of prepared sets: the label filter, the rollouts
        and the output masks (stages 2-4 of the module docstring)."""
        starts, gates = self._filter_starts(sets)
        rolled = self.refine_states([(s.nodes.rec, st, s.nodes.points, s.budget) for s, st in zip(sets, starts)], gates)
        out = []
        for s, start, (st, _, steps) in zip(sets, starts, rolled):
            filtered_changes = int((s.nodes.state != start).sum())
            trace = self._filter_trace(filtered_changes)
            if s.budget == 0:
                trace.append("budget 0: the input decoded unchanged")
            else:
                trace.append(f"rollout: {steps} steps, select={self.select}" + (", then polish" if self.polish else ""))
            out.append(s.nodes.result(s.coords, s.labels, st, steps + filtered_changes, self.segmenter, trace))
        return out
