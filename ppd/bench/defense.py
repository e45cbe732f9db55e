"""Defense benchmark: what the trained attacker breaks and the defender repairs.

    python -m ppd.bench.defense --run DIR [--scenes 50] [--domains train,texture,...] [--attacker RUN] [--out FILE.json]

On held-out procedural scenes (``ProceduralScenes(domain, n, seed=10_000_000 + 9000)``,
one object per scene), in-domain (``train``) and per shifted domain, mean IoU of
SAM2's mask for:

* ``ideal``: ideal prompts (the attacker's start: ``ideal_prompts`` with the training's
  ``max_ideal_points`` per label);
* ``attacked``: after the run's attacker (``attacker.zip``) acted greedily on them in
  attacker envs whose world holds the eval scenes (:func:`ppd.agents.rollout.greedy_rollout`,
  all scenes batched); ``--attacker RUN`` uses another run's attacker instead
  (cross-play: a run's own attacker is a random draw of strength, so defenders of two
  runs compare fairly only against the same attacker);
* ``defended``: the attacked set refined by the defender (no ground truth);
* ``attacked+oracle``: the attacked set without its wrong-label prompts, by the ground
  truth at each point (a positive outside the object, a negative inside it; one prompt
  stays when all are wrong): what a defender that removes exactly those could reach, a
  reference for ``defended``, not a method;
* ``attacked+greedy_score``, ``attacked+consistency``, ``attacked+mask_consensus``: the
  attacked set refined by the ``GreedyScoreFilter``, ``ConsistencyFilter`` or
  ``MaskConsensusFilter`` baseline instead (what recovery is to be compared with);
* ``coarse``: ``coarse_prompts`` with their default noise (seeded per scene);
* ``coarse+ppd``: the coarse set refined by the defender;
* ``defended[R]``, ``coarse+ppd[R]``: the same with the defender's other output rule R
  (``PromptDefender(select=...)``: ``last``, where it stopped, or ``score``, the visited
  state with SAM's highest predicted IoU); ``--select`` picks the main one;
* ``defended[no filter]``, ``coarse+ppd[no filter]``: the defender alone, without the
  run's wrong-label filter (``label_filter.zip``; empty for runs without one), so the
  filter's share shows;
* ``random_drop``, ``greedy_score``, ``consistency``, ``mask_consensus``: the baselines of
  :mod:`ppd.agents.baselines` on the coarse set.

Every IoU is that of ``segmenter.predict`` on the column's final points (no padding: the
mask a user of the refined points gets), against the scene's object mask.

Also: the defender's refinement time per image (median ms, image already encoded),
env steps/s batched vs sequential (:mod:`ppd.envs.throughput`) and the
replay-buffer bytes per transition of the saved defender's observation space.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import time
from typing import Any, Callable

import numpy as np

from ppd.bench import add_threads_argument, apply_threads, defender_variant, run_max_ideal_points
from ppd.agents.baselines import ConsistencyFilter, GreedyScoreFilter, MaskConsensusFilter, NoRefine, RandomDrop
from ppd.agents.defender import PromptDefender
from ppd.agents.refine_config import (
    DEFAULT_SELECT, INFERENCE_OPTIONS, SELECT_RULES, RefineConfig, add_inference_arguments, inference_options,
)
from ppd.agents.run_config import RunConfig, RunConfigLike
from ppd.agents.run_files import load_agent
from ppd.cli.common import add_device_arguments
from ppd.data.scenes import DOMAINS, ProceduralScenes
from ppd.envs.point_prompt_env import WRONG_LABEL, label_targets
from ppd.envs.world import INACTIVE, PromptWorld, prompts_from_state, state_from_prompts
from ppd.metrics import iou
from ppd.prompts import coarse_prompts, ideal_prompts
from ppd.robustness.dqn_attack import AttackerError, attacker_steps, greedy_attack  # noqa: F401  (AttackerError re-exported)

logger = logging.getLogger(__name__)

#: Seed of the first held-out benchmark scene of every domain.
DEFENSE_SEED = 10_000_000 + 9000

#: Columns of the IoU table, in order (``[other]``: the defender's other output rule).
COLUMNS = (
    "ideal", "attacked", "defended", "defended[other]", "defended[no filter]", "attacked+oracle", "attacked+greedy_score",
    "attacked+consistency", "attacked+mask_consensus", "coarse", "coarse+ppd", "coarse+ppd[other]", "coarse+ppd[no filter]",
    "random_drop", "greedy_score", "consistency", "mask_consensus",
)


def other_rule(select: str) -> str:
    """The output rule of :data:`SELECT_RULES` that is not ``select``."""
    return next(r for r in SELECT_RULES if r != select)


def column_name(column: str, select: str) -> str:
    """A column's name in results: ``[other]`` spelled out as the other rule."""
    return column.replace("[other]", f"[{other_rule(select)}]")


def replay_bytes_per_transition(observation_space: Any) -> dict[str, int]:
    """Bytes one transition takes in SB3's ``DictReplayBuffer`` for this observation space:
    observation and next observation in their own dtypes, plus the action (int64), reward,
    done and timeout (float32 each)."""
    obs = sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in observation_space.spaces.values())
    return {"observation_bytes": obs, "transition_bytes": 2 * obs + 8 + 3 * 4}


def env_throughput(seg: Any, n_envs: int = 16, steps: int = 50, probe: bool = False) -> dict[str, Any]:
    """Defender env steps/s, ``n_envs`` batched envs vs as many stepped one by one
    (:func:`ppd.envs.throughput.step_throughput`, random valid actions; ``probe``: with
    removal probes, as the benchmarked defender was trained)."""
    if steps <= 0:
        return {"skipped": "not measured (--env-steps 0)"}
    from ppd.envs.throughput import step_throughput

    stats = step_throughput(seg, n_envs=n_envs, steps=steps, role="defender", n_scenes=16, rounds=2, probe=probe)
    out: dict[str, Any] = {"n_envs": n_envs, "vector_steps": steps, "probe": probe}
    for side, st in stats.items():
        out[f"{side}_steps_per_s"] = round(float(st.steps_per_s), 1)
    if out.get("sequential_steps_per_s"):
        out["batched_speedup"] = round(out["batched_steps_per_s"] / out["sequential_steps_per_s"], 2)
    return out


def bench_attacker(run: str, attacker: str | None, defender: PromptDefender, device: str | None) -> Any | None:
    """The attacker that makes the attacked sets: ``attacker`` (another run folder or its
    ``attacker.zip``; :class:`AttackerError` if unreadable or on another graph size than
    ``defender``), else the run's own (None when the run has none)."""
    if attacker is None:
        try:
            return load_agent(run, "attacker.zip", device=device)[0]
        except FileNotFoundError:
            return None
    try:
        model = load_agent(attacker, "attacker.zip", device=device)[0]
    except (FileNotFoundError, ValueError) as exc:
        raise AttackerError(str(exc)) from exc
    nodes = model.observation_space["state"].shape[0], defender.model.observation_space["state"].shape[0]
    if nodes[0] != nodes[1]:
        raise AttackerError(
            f"the attacker of {attacker} acts on {nodes[0]} graph nodes, the defender of {run} on {nodes[1]}: "
            "cross-play needs runs with the same grid"
        )
    return model


def state_iou(seg: Any, rec: Any, node_state: np.ndarray, node_points: np.ndarray, gt: np.ndarray) -> float:
    """IoU of ``segmenter.predict`` on a prompt state's points (no padding; the mask a
    user gets, as for every other column)."""
    coords, labels = prompts_from_state(node_state, node_points)
    return float(iou(seg.predict(rec.embedding, coords, labels).masks[0], gt))


def oracle_state(node_state: np.ndarray, node_points: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``node_state`` without its wrong-label prompts (:func:`label_targets`), keeping
    one (the first active node) when all are wrong, as refiners never return none."""
    out = node_state.copy()
    out[label_targets(node_state, node_points, gt) == WRONG_LABEL] = INACTIVE
    if not (out != INACTIVE).any():
        first = int(np.flatnonzero(node_state != INACTIVE)[0])
        out[first] = node_state[first]
    return out


def defender_world(defender: PromptDefender, scenes: Any) -> PromptWorld:
    """A :class:`PromptWorld` over ``scenes`` whose graphs are built as the defender's
    (grid, k-NN sizes), so that its agents see the observations they were trained on."""
    w = defender.world
    return PromptWorld(defender.segmenter, scenes, grid=w.grid, k_physical=w.k_physical, k_semantic=w.k_semantic)


def ideal_start(rec: Any, obj: int, cfg: RunConfigLike) -> tuple[np.ndarray, np.ndarray]:
    """The attacker's start on object ``obj`` of ``rec``: ``ideal_prompts`` with the
    run's ``max_ideal_points`` per label (6 if unset), as ``(node_state, node_points)``.
    ``cfg``: the run's config (``PromptDefender.run_config``, a ``TrainConfig`` or a
    config's mapping)."""
    max_ideal = run_max_ideal_points(cfg)
    ideal = ideal_prompts(rec.scene.masks[obj], n_pos=max_ideal, n_neg=max_ideal)
    st, pts, _ = state_from_prompts(ideal.point_coords, ideal.point_labels, rec.grid, rec.hw, rec.centres)
    return st, pts


def bench_items(world: PromptWorld, cfg: RunConfigLike, n_scenes: int, seed: int = 0) -> list[tuple]:
    """The bench's sets on ``world``'s first ``n_scenes`` scenes: per scene ``(record,
    object, ideal node_state, node_points, coarse PromptSet)``, scene i's object and
    coarse prompts from ``default_rng([DEFENSE_SEED, seed, i])`` (the object uniformly,
    as the environments draw it)."""
    cfg = RunConfig.of(cfg)
    items = []
    for i in range(n_scenes):
        rec = world.image(i)
        rng = np.random.default_rng([DEFENSE_SEED, seed, i])
        obj = int(rng.integers(rec.scene.num_objects))
        st, pts = ideal_start(rec, obj, cfg)
        items.append((rec, obj, st, pts, coarse_prompts(rec.scene.masks[obj], rng).prompts))
    return items


def attack(attacker: Any, world: PromptWorld, cfg: RunConfigLike, starts: list) -> list[dict[str, Any]]:
    """The run's attacker acting greedily from ``starts`` ``(rec, obj, node_state,
    node_points)`` with its training step budget, all starts at once (one decoder call
    per attacker step, in a world that decodes as in training)."""
    return greedy_attack(attacker, world, starts, attacker_steps(cfg))


def bench_sets(
    defender: PromptDefender, run: str, domain: str, n_scenes: int, attackers: tuple[str | None, ...] = (None,),
    seed: int = 0,
) -> dict[str, list[tuple]]:
    """The bench's prompt sets on ``domain`` as ``(record, object, coords, labels)``, for
    scripts that compare refiners on them: ``"coarse"``, and on the training domain
    ``"att:NAME"`` per attacker (a run folder or ``.zip``; None: ``run``'s own, named
    ``own``; skipped when the run has none), its greedy result from each scene's ideal
    start (:func:`bench_items`)."""
    world = defender_world(defender, ProceduralScenes(domain, n_scenes, seed=DEFENSE_SEED))
    items = bench_items(world, defender.run_config, n_scenes, seed)
    sets = {"coarse": [(it[0], it[1], it[4].point_coords, it[4].point_labels) for it in items]}
    if domain == "train":
        for att in attackers:
            model = bench_attacker(run, att, defender, None)
            if model is None:
                continue
            rolled = attack(model, world, defender.run_config, [it[:4] for it in items])
            name = "own" if att is None else str(att).rstrip("/").split("/")[-1]
            sets[f"att:{name}"] = [(it[0], it[1], *prompts_from_state(r["state"], r["points"])) for it, r in zip(items, rolled)]
    return sets


def bench_domain(
    defender: PromptDefender,
    attacker: Any | None,
    cfg: RunConfigLike,
    domain: str,
    n_scenes: int,
    seed: int = 0,
    progress: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """One row of the table: mean IoUs on ``n_scenes`` held-out scenes of ``domain``.

    Scenes, objects and prompt sets: :func:`bench_items`.
    """
    seg, cfg = defender.segmenter, RunConfig.of(cfg)
    world = defender_world(defender, ProceduralScenes(domain, n_scenes, seed=DEFENSE_SEED))
    items = bench_items(world, cfg, n_scenes, seed)

    other = defender_variant(defender, select=other_rule(defender.select))
    plain = None if defender.label_filter is None else defender_variant(defender, label_filter=None)  # without its filter
    vals: dict[str, list[float]] = {c: [] for c in COLUMNS}
    vals["ideal"] = [state_iou(seg, rec, st, pts, rec.scene.masks[obj]) for rec, obj, st, pts, _ in items]
    attacked: list[dict[str, Any] | None] = [None] * n_scenes
    if attacker is not None:
        attacked = attack(attacker, world, cfg, [it[:4] for it in items])
        vals["attacked"] = [
            state_iou(seg, rec, r["state"], r["points"], rec.scene.masks[obj]) for (rec, obj, *_), r in zip(items, attacked)
        ]
    baselines = {
        "random_drop": RandomDrop(seg, seed=seed), "greedy_score": GreedyScoreFilter(seg), "consistency": ConsistencyFilter(seg),
        "mask_consensus": MaskConsensusFilter(seg),
    }
    no_refine = NoRefine(seg)
    kept, steps_taken, times = [], [], []
    for (rec, obj, _, _, cp), att in zip(items, attacked):
        gt, image = rec.scene.masks[obj], rec.scene.image
        if att is not None:
            coords, labels = prompts_from_state(att["state"], att["points"])
            vals["defended"].append(float(iou(defender.refine(image, coords, labels).mask, gt)))
            vals["defended[other]"].append(float(iou(other.refine(image, coords, labels).mask, gt)))
            if plain is not None:
                vals["defended[no filter]"].append(float(iou(plain.refine(image, coords, labels).mask, gt)))
            vals["attacked+oracle"].append(state_iou(seg, rec, oracle_state(att["state"], att["points"], gt), att["points"], gt))
            for name in ("greedy_score", "consistency", "mask_consensus"):
                vals[f"attacked+{name}"].append(float(iou(baselines[name].refine(image, coords, labels).mask, gt)))
        defender.record(image)  # encoded and registered before timing
        vals["coarse"].append(float(iou(no_refine.refine(image, cp.point_coords, cp.point_labels).mask, gt)))
        t = time.perf_counter()
        res = defender.refine(image, cp.point_coords, cp.point_labels)
        times.append(time.perf_counter() - t)
        vals["coarse+ppd"].append(float(iou(res.mask, gt)))
        alt = other.refine(image, cp.point_coords, cp.point_labels)
        vals["coarse+ppd[other]"].append(float(iou(alt.mask, gt)))
        if plain is not None:
            vals["coarse+ppd[no filter]"].append(float(iou(plain.refine(image, cp.point_coords, cp.point_labels).mask, gt)))
        kept.append(float(res.kept.mean()))
        steps_taken.append(res.steps)
        for name, b in baselines.items():
            vals[name].append(float(iou(b.refine(image, cp.point_coords, cp.point_labels).mask, gt)))
        if progress is not None:
            progress()
    row: dict[str, Any] = {column_name(c, defender.select): (float(np.mean(v)) if v else None) for c, v in vals.items()}
    row.update(
        scenes=n_scenes,
        refine_ms_median=round(1000 * statistics.median(times), 2) if times else None,
        coarse_kept_fraction=float(np.mean(kept)) if kept else None,
        coarse_steps_mean=float(np.mean(steps_taken)) if steps_taken else None,
    )
    return row


def run_benchmark(
    run: str,
    n_scenes: int = 50,
    domains: tuple[str, ...] = DOMAINS,
    seed: int = 0,
    device: str | None = None,
    progress: Callable[[int], Callable] | None = None,
    env_steps: int = 50,
    select: str = DEFAULT_SELECT,
    patience: int | None = None,
    precision: str | None = None,
    attacker: str | None = None,
    embedding_cache: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The whole table as a dict (see the module docstring).

    Args:
        run: training run folder with ``defender.zip`` (and ``attacker.zip``).
        n_scenes: held-out scenes per domain.
        domains: domains to evaluate.
        seed: seed of the coarse-prompt noise and of the random baseline.
        device: torch device of the agents and the segmenter.
        progress: ``progress(total) -> tick()`` factory (the CLI passes a tqdm bar).
        env_steps: vector steps per side of the env-throughput measurement (0: skip).
        select: the defender's output rule for the main columns (:data:`SELECT_RULES`);
            the other rule fills the ``[other]`` columns.
        patience: the defender's early end of ``select="score"`` rollouts (None: none).
        precision: the segmenter's precision (None: see ``ppd.segmenter.resolve_precision``).
        attacker: another run folder or attacker ``.zip`` whose attacker makes the
            attacked sets (None: the run's own ``attacker.zip``, if any).
        embedding_cache: a folder that keeps the scenes' image embeddings across runs
            (``cache_dir`` of :func:`ppd.load_segmenter`; None: in memory only).
        options: the defender's :data:`~ppd.agents.refine_config.INFERENCE_OPTIONS`
            (``polish``, ``consensus``, ``consensus_quorum``, ``keep_consistent``,
            ``min_score_gain``; default: the library's), used by every defender column and
            recorded in the result. With ``select`` and ``patience`` they make the
            defender's :class:`~ppd.agents.refine_config.RefineConfig`.

    Raises:
        AttackerError: ``attacker`` names no readable attacker, or one whose graph has
            another node count than the defender's.
    """
    import torch

    config = RefineConfig(select=select, patience=patience, **options)
    defender = PromptDefender.load(run, device=device, precision=precision, embedding_cache=embedding_cache, config=config)
    attacker_source = attacker or run
    attacker_model = bench_attacker(run, attacker, defender, device)
    cfg = defender.run_config
    tick = progress(n_scenes * len(domains)) if progress else None
    rows = {d: bench_domain(defender, attacker_model, cfg, d, n_scenes, seed, tick) for d in domains}
    times = [r["refine_ms_median"] for r in rows.values() if r["refine_ms_median"] is not None]
    return {
        "run": str(run),
        "segmenter": defender.segmenter.name,
        "checkpoint": defender.segmenter.info.get("checkpoint"),
        "scene_seed": DEFENSE_SEED,
        "seed": seed,
        "scenes_per_domain": n_scenes,
        "attacker": attacker_model is not None,
        "attacker_source": str(attacker_source) if attacker_model is not None else None,
        "select": select,
        "patience": patience,
        **{name: getattr(defender, name) for name in INFERENCE_OPTIONS},
        "label_filter_threshold": None if defender.label_filter is None else defender.label_filter.threshold,
        "label_filter_action": None if defender.label_filter is None else defender.label_filter.action,
        "domains": rows,
        "refine_ms_median": float(statistics.median(times)) if times else None,
        "env_throughput": env_throughput(defender.segmenter, steps=env_steps, probe=defender.probe),
        "replay": replay_bytes_per_transition(defender.model.observation_space),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"device {defender.segmenter.device} ({defender.segmenter.precision})",
    }


def format_table(results: dict[str, Any]) -> str:
    """The IoU table as aligned text, one row per domain."""
    cols = [column_name(c, results.get("select", DEFAULT_SELECT)) for c in COLUMNS]
    width = max(12, *(len(c) for c in cols))
    head = f"{'domain':12s} " + " ".join(f"{c:>{width}s}" for c in cols) + f" {'refine ms':>10s}"
    lines = [head]
    for d, r in results["domains"].items():
        cells = " ".join(f"{r[c]:{width}.3f}" if r.get(c) is not None else f"{'-':>{width}s}" for c in cols)
        lines.append(f"{d:12s} {cells} {r['refine_ms_median']:10.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="training run folder (defender.zip, attacker.zip, config.yaml)")
    p.add_argument("--scenes", type=int, default=50, help="held-out scenes per domain (default 50)")
    p.add_argument("--domains", nargs="+", default=list(DOMAINS), help=f"domains (default: {' '.join(DOMAINS)})")
    p.add_argument("--seed", type=int, default=0, help="coarse-prompt noise and random-baseline seed (default 0)")
    add_device_arguments(p)
    p.add_argument(
        "--attacker",
        default=None,
        help="another run folder (or its attacker.zip) whose attacker makes the attacked sets (default: the run's own); "
        "to compare defenders of several runs against one attacker",
    )
    p.add_argument("--env-steps", type=int, default=50, help="vector steps per side for env steps/s (default 50; 0: skip)")
    p.add_argument(
        "--select",
        choices=SELECT_RULES,
        default=DEFAULT_SELECT,
        help=f"the defender's output rule in the main columns (default: {DEFAULT_SELECT}; the other rule fills "
        "the [..] columns)",
    )
    p.add_argument("--patience", type=int, default=None,
                   help="with --select score: end a rollout after this many steps without a better predicted IoU")
    add_inference_arguments(p)
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    add_threads_argument(p)
    args = p.parse_args(argv)
    apply_threads(p, args)
    if args.patience is not None and (args.patience < 1 or args.select != "score"):
        p.error(f"--patience must be >= 1 and goes with --select score, got {args.patience} with --select {args.select}")
    domains = [d for part in args.domains for d in part.split(",") if d]
    unknown = set(domains) - set(DOMAINS)
    if unknown:
        p.error(f"unknown domains {sorted(unknown)}; known: {', '.join(DOMAINS)}")
    from tqdm import tqdm

    bar: list[tqdm] = []

    def progress(total: int):
        bar.append(tqdm(total=total, desc="scenes", unit="scene", dynamic_ncols=True))
        return lambda: bar[0].update(1)

    try:
        results = run_benchmark(
            args.run, args.scenes, tuple(domains), args.seed, args.device, progress, args.env_steps, args.select,
            args.patience, args.precision, args.attacker, args.embedding_cache, **inference_options(args),
        )
    except AttackerError as exc:
        p.error(f"--attacker {args.attacker}: {exc}")
    if bar:
        bar[0].close()
    print(format_table(results))
    if not results["attacker"]:
        print("no attacker.zip in the run: attacked / defended columns left empty")
    elif args.attacker:
        print(f"attacked sets by the attacker of {results['attacker_source']}")
    print(f"refinement time per image (median, image encoded): {results['refine_ms_median']:.1f} ms")
    thr = results["env_throughput"]
    if "skipped" in thr:
        print(f"env steps/s: skipped, {thr['skipped']}")
    else:
        print(
            f"env steps/s ({thr['n_envs']} defender envs{', removal probes' if thr.get('probe') else ''}): "
            f"batched {thr['batched_steps_per_s']}, "
            f"sequential {thr['sequential_steps_per_s']} ({thr.get('batched_speedup', float('nan'))}x)"
        )
    rep = results["replay"]
    print(f"replay memory: {rep['transition_bytes']} bytes per transition ({rep['observation_bytes']} per observation)")
    print(f"machine: {results['machine']}")
    if args.out:
        from ppd.io import save_json

        save_json(results, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
