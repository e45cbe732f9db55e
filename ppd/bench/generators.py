"""Prompt-generator benchmark: does refinement help whatever made the clicks, and leave
good clicks alone?

    python -m ppd.bench.generators [--run DIR] [--domains train texture] [--scenes 30] [--out FILE.json]

The defense bench (:mod:`ppd.bench.defense`) draws its coarse sets from one generator
(``coarse_prompts`` with its default noise: 8 points, about half of them corrupted).
Users' clicks come from elsewhere: careful annotators, feature matching, a coarse
model. This bench refines the sets of several generators (:data:`GENERATORS`), from
clean to very noisy, on held-out procedural scenes (``ProceduralScenes(domain, n,
seed=GENERATOR_SEED)``, one object per scene, drawn with the prompts from
``default_rng([GENERATOR_SEED, seed, i])``), and reports the mean IoU of SAM2's mask
for each generator and column:

* ``input``: the generator's set as given (``NoRefine``);
* ``ppd``: refined by the run's defender (its label filter included, as ``refine``);
* ``ppd[no filter]``: the defender alone (runs with a filter only);
* ``greedy_score``: the ``GreedyScoreFilter`` baseline.

On the clean generators (``clean``, ``ideal``) a refiner can only lose; the bench shows
how much it does. ``--run`` defaults to the bundled defender.
"""

from __future__ import annotations

import argparse
import platform
from typing import Any, Callable

import numpy as np

from ppd.agents.baselines import GreedyScoreFilter, NoRefine
from ppd.agents.defender import PromptDefender
from ppd.agents.refine_config import (
    DEFAULT_SELECT, SELECT_RULES, RefineConfig, add_inference_arguments, inference_options,
)
from ppd.cli.common import add_device_arguments
from ppd.bench import add_threads_argument, apply_threads, defender_variant, run_max_ideal_points
from ppd.data.scenes import DOMAINS, ProceduralScenes
from ppd.metrics import iou
from ppd.prompts import PromptSet, coarse_prompts, ideal_prompts

#: Seed of the first benchmark scene of every domain (other scenes than the defense bench's).
GENERATOR_SEED = 10_000_000 + 9500

#: Generators: ``coarse_prompts`` keyword arguments, or None for ``ideal_prompts`` (the
#: attacker's start: a lattice inside and around the object, max_ideal_points per label).
GENERATORS: dict[str, dict[str, Any] | None] = {
    "default": {},  # the defense bench's: 8 points, flip 0.2, boundary 0.2, outlier 0.1
    "clean": dict(p_flip=0.0, p_boundary=0.0, p_outlier=0.0),  # 8 random clicks, all right
    "ideal": None,
    "few": dict(n_points=4),
    "many": dict(n_points=16),
    "flips": dict(p_flip=0.4, p_boundary=0.0, p_outlier=0.0),
    "boundary": dict(p_flip=0.0, p_boundary=0.5, p_outlier=0.0),  # right labels moved just across the edge
    "outliers": dict(p_flip=0.0, p_boundary=0.0, p_outlier=0.3),
    "positives": dict(pos_fraction=0.8),
}
COLUMNS = ("input", "ppd", "ppd[no filter]", "greedy_score")


def generator_prompts(name: str, mask: np.ndarray, rng: np.random.Generator, max_ideal: int = 6) -> PromptSet:
    """The prompt set generator ``name`` (:data:`GENERATORS`) gives for ``mask``."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; known: {', '.join(GENERATORS)}")
    kw = GENERATORS[name]
    if kw is None:
        return ideal_prompts(mask, n_pos=max_ideal, n_neg=max_ideal)
    return coarse_prompts(mask, rng, **kw).prompts


def run_benchmark(
    defender: PromptDefender,
    domains: tuple[str, ...] = ("train",),
    n_scenes: int = 30,
    generators: tuple[str, ...] = tuple(GENERATORS),
    seed: int = 0,
    tick: Callable[[], Any] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{domain: {generator: {column: mean IoU}}}`` (see the module docstring)."""
    plain = None if defender.label_filter is None else defender_variant(defender, label_filter=None)
    seg = defender.segmenter
    refiners: dict[str, Any] = {"input": NoRefine(seg), "ppd": defender, "ppd[no filter]": plain,
                                "greedy_score": GreedyScoreFilter(seg)}
    max_ideal = run_max_ideal_points(defender.config)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for domain in domains:
        scenes = ProceduralScenes(domain, n_scenes, seed=GENERATOR_SEED)
        vals = {g: {c: [] for c in COLUMNS if refiners[c] is not None} for g in generators}
        for i in range(n_scenes):
            scene = scenes[i]
            gts, sets = [], []
            for g in generators:
                rng = np.random.default_rng([GENERATOR_SEED, seed, i])
                obj = int(rng.integers(scene.num_objects))
                gts.append(scene.masks[obj])
                sets.append(generator_prompts(g, gts[-1], rng, max_ideal))
            for c, r in refiners.items():
                if r is None:
                    continue
                # every generator's set of this scene in one call: the defender's rollouts
                # advance together (one decoder call per step for all of them)
                res = r.refine_many([scene.image] * len(sets), [ps.point_coords for ps in sets],
                                    [ps.point_labels for ps in sets])
                for g, gt, rr in zip(generators, gts, res):
                    vals[g][c].append(float(iou(rr.mask, gt)))
            if tick is not None:
                tick()
        out[domain] = {g: {c: float(np.mean(v)) for c, v in cols.items()} for g, cols in vals.items()}
    return out


def format_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """One block per domain: a row per generator, a column per refiner."""
    lines = []
    for domain, rows in results.items():
        cols = [c for c in COLUMNS if c in next(iter(rows.values()))]
        lines.append(f"{domain:12s} " + " ".join(f"{c:>15s}" for c in cols) + f" {'ppd - input':>12s}")
        for g, r in rows.items():
            lines.append(f"  {g:10s} " + " ".join(f"{r[c]:15.3f}" for c in cols) + f" {r['ppd'] - r['input']:+12.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=None, help="training run folder (default: the bundled defender)")
    p.add_argument("--domains", nargs="+", default=["train", "texture"], help=f"domains (default: train texture; known: {' '.join(DOMAINS)})")
    p.add_argument("--generators", nargs="+", default=list(GENERATORS), help=f"generators (default: all: {' '.join(GENERATORS)})")
    p.add_argument("--scenes", type=int, default=30, help="held-out scenes per domain (default 30)")
    p.add_argument("--seed", type=int, default=0, help="object and prompt seed (default 0)")
    add_device_arguments(p)
    p.add_argument("--select", choices=SELECT_RULES, default=DEFAULT_SELECT,
                   help=f"the defender's output rule (default: {DEFAULT_SELECT}; see PromptDefender)")
    add_inference_arguments(p)
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    add_threads_argument(p)
    args = p.parse_args(argv)
    apply_threads(p, args)
    domains = [d for part in args.domains for d in part.split(",") if d]
    gens = [g for part in args.generators for g in part.split(",") if g]
    for kind, names, known in (("domains", domains, DOMAINS), ("generators", gens, tuple(GENERATORS))):
        unknown = sorted(set(names) - set(known))
        if unknown:
            p.error(f"unknown {kind} {unknown}; known: {', '.join(known)}")
    if args.scenes < 1:
        p.error(f"--scenes must be >= 1, got {args.scenes}")
    import torch
    from tqdm import tqdm

    config = RefineConfig(select=args.select, **inference_options(args))
    defender = PromptDefender.load(args.run, device=args.device, precision=args.precision,
                                   embedding_cache=args.embedding_cache, config=config)
    with tqdm(total=args.scenes * len(domains), desc="scenes", unit="scene", dynamic_ncols=True) as bar:
        results = run_benchmark(defender, tuple(domains), args.scenes, tuple(gens), args.seed, lambda: bar.update(1))
    print(f"defender: {args.run or 'bundled'} (select {args.select}, min_score_gain {args.min_score_gain}, polish {'on' if args.polish else 'off'}, consensus {f'on (quorum {args.consensus_quorum:.3g})' if args.consensus else 'off'}, keep_consistent {'on' if args.keep_consistent else 'off'}); {args.scenes} scenes per domain; mean IoU of SAM2's mask")
    print(format_table(results))
    seg = defender.segmenter
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"device {seg.device} ({seg.precision})")
    if args.out:
        from ppd.io import save_json

        save_json({"run": args.run or "bundled", "select": args.select, **inference_options(args), "scenes_per_domain": args.scenes, "seed": args.seed,
                   "scene_seed": GENERATOR_SEED, "domains": results}, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
