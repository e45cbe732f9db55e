"""Prompt generators from clean to very noisy, and their table from a ``ppd bench`` run.

:data:`GENERATORS` names the prompt sets the refine protocol's ``--generators`` draws
(:func:`generator_prompts`): users' clicks come from careful annotators, feature matching
or a coarse model, not only from ``coarse_prompts``' default noise. Does refinement help
whatever made the clicks, and leave good clicks alone?

    python -m ppd.bench.generators [--run DIR] [--domains train texture] [--scenes 10] [--out DIR]

is a view of ``ppd bench``: it runs (or continues, or only reads) the equivalent

    ppd bench --protocol refine --data D=procedural:D ... --sample N --defender RUN
              --baselines no_refine greedy_score --generators default clean ... --out DIR

(printed first; ``ppd bench --config DIR/config.yaml`` reruns it) and prints, from its
``results.parquet``, the mean IoU of SAM2's mask per domain, generator and refiner
(every object of every held-out scene), the defender's gain over the input and each
refiner's mean gain over the generators, with its 95% paired-bootstrap interval over the
objects (and that of the defender's gain minus ``greedy_score``'s):

* ``input``: the generator's set as given (``no_refine``);
* ``ppd``: refined by the run's defender (its label filter included, as ``refine``);
* ``ppd[no filter]``: the defender alone (``--without-filter``; runs with a filter only);
* ``greedy_score``: the ``GreedyScoreFilter`` baseline.

On the clean generators (``clean``, ``ideal``) a refiner can only lose; the table shows
how much it does. ``--run`` defaults to the bundled defender.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from ppd.prompts import PromptSet, coarse_prompts, ideal_prompts

#: Seed of the first scene of every domain in the sets of docs/experiments' record
#: scripts (``common.generator_sets``); ``ppd bench`` draws its own held-out scenes.
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
#: Table columns: the refiner each stands for is :func:`column_methods`'.
COLUMNS = ("input", "ppd", "ppd[no filter]", "greedy_score")
#: Where the command writes its ``ppd bench`` folder unless ``--out`` says otherwise.
DEFAULT_OUT = "bench_out/generators"


def generator_prompts(name: str, mask: np.ndarray, rng: np.random.Generator, max_ideal: int = 6) -> PromptSet:
    """The prompt set generator ``name`` (:data:`GENERATORS`) gives for ``mask``."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; known: {', '.join(GENERATORS)}")
    kw = GENERATORS[name]
    if kw is None:
        return ideal_prompts(mask, n_pos=max_ideal, n_neg=max_ideal)
    return coarse_prompts(mask, rng, **kw).prompts


def column_methods(run: str) -> dict[str, str]:
    """Table column -> the refine protocol's method name, for defender ``run``."""
    from ppd.bench.protocols.refine import defender_method

    ppd_method = defender_method(run)
    return {"input": "no_refine", "ppd": ppd_method, "ppd[no filter]": f"{ppd_method}[no filter]",
            "greedy_score": "greedy_score"}


def bench_arguments(args: argparse.Namespace) -> list[str]:
    """The ``ppd bench`` arguments (after ``ppd bench``) that measure what ``args`` asks for."""
    from ppd.agents.refine_config import inference_options
    from ppd.bench.views import changed_refine_options, device_arguments, scene_arguments

    changed = changed_refine_options({"select": args.select, **inference_options(args)})
    argv = ["--protocol", "refine"]
    argv += scene_arguments(args)
    argv += ["--defender", args.run, "--baselines", "no_refine", "greedy_score", "--generators", *args.generators]
    if args.without_filter:
        argv.append("--without-filter")
    if changed:
        argv += ["--defender-options", *changed]
    return argv + device_arguments(args) + ["--out", args.out]


def generator_table(results, run: str, domains: list[str], generators: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """``{domain: {generator: {column: mean IoU}}}`` from a refine run's results table
    (``results.parquet`` as a DataFrame): the mean over the measured objects. A column
    whose method has no rows (no ``--without-filter``, a run without a filter) is left out."""
    from ppd.bench.schema import CLEAN

    iou = results[(results.protocol == "refine") & (results.metric == "iou")]
    means = iou.groupby(["domain", "condition", "method"])["value"].mean()
    # the refine protocol names a lone default generator's condition "clean" (nothing else perturbed)
    condition = {g: CLEAN if generators == ["default"] else g for g in generators}
    methods = column_methods(run)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for domain in domains:
        out[domain] = {}
        for g in generators:
            row = {c: float(means[(domain, condition[g], m)]) for c, m in methods.items()
                   if (domain, condition[g], m) in means.index}
            if "input" not in row:
                raise ValueError(f"no refine results for domain {domain!r}, generator {g!r}")
            out[domain][g] = row
    return out


def mean_gains(rows: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per refiner column, its mean over the generators of (column - input)."""
    cols = [c for c in COLUMNS if c != "input" and all(c in r for r in rows.values())]
    return {c: float(np.mean([r[c] - r["input"] for r in rows.values()])) for c in cols}


def gain_intervals(results, run: str, domain: str, generators: list[str], n_boot: int = 1000,
                   seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Per refiner column, ``(estimate, low, high)``: its mean gain over the input,
    averaged over the generators per object, with the 95% paired-bootstrap interval over
    the domain's objects (:func:`ppd.bench.stats.paired_bootstrap`, as the report's);
    with both, also ``"ppd - greedy_score"``, the difference of the two gains."""
    from ppd.bench.schema import CLEAN
    from ppd.bench.stats import paired_bootstrap

    conditions = [CLEAN] if generators == ["default"] else generators
    iou = results[(results.protocol == "refine") & (results.metric == "iou") & (results.domain == domain)
                  & results.condition.isin(conditions)]
    per = iou.pivot_table(index=["image", "object"], columns=["method", "condition"], values="value")
    methods = column_methods(run)
    gains = {c: (per[m] - per[methods["input"]]).mean(axis=1) for c, m in methods.items()
             if c != "input" and m in per.columns.get_level_values(0)}
    if not gains:
        return {}
    names = list(gains)
    values = np.stack([gains[c].to_numpy() for c in names], axis=1)
    ref = names.index("greedy_score") if "greedy_score" in names else 0
    r = paired_bootstrap(values, n_boot=n_boot, seed=seed, reference=ref)
    out = {c: (float(r["value"][i]), float(r["ci_low"][i]), float(r["ci_high"][i])) for i, c in enumerate(names)}
    if "ppd" in names and "greedy_score" in names:
        i = names.index("ppd")
        out["ppd - greedy_score"] = (float(r["delta"][i]), float(r["delta_low"][i]), float(r["delta_high"][i]))
    return out


def format_table(table: dict[str, dict[str, dict[str, float]]],
                 intervals: dict[str, dict[str, tuple[float, float, float]]] | None = None) -> str:
    """One block per domain: a row per generator, a column per refiner, the defender's
    gain over the input, and a last row of each refiner's mean gain over the generators;
    with ``intervals`` (:func:`gain_intervals` per domain) those gains with their
    intervals below it."""
    lines = []
    for domain, rows in table.items():
        cols = [c for c in COLUMNS if all(c in r for r in rows.values())]
        lines.append(f"{domain:12s} " + " ".join(f"{c:>15s}" for c in cols) + f" {'ppd - input':>12s}")
        for g, r in rows.items():
            gain = f"{r['ppd'] - r['input']:+12.3f}" if "ppd" in r else f"{'':>12s}"
            lines.append(f"  {g:10s} " + " ".join(f"{r[c]:15.3f}" for c in cols) + f" {gain}")
        gains = mean_gains(rows)
        lines.append(f"  {'mean gain':10s} " + " ".join(f"{gains[c]:+15.3f}" if c in gains else f"{'':>15s}"
                                                       for c in cols))
        if intervals and intervals.get(domain):
            lines.append("  mean gain, 95% interval over objects: " + "; ".join(
                f"{c} {v:+.3f} [{lo:+.3f}, {hi:+.3f}]" for c, (v, lo, hi) in intervals[domain].items()))
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    from ppd.agents.refine_config import DEFAULT_SELECT, SELECT_RULES, add_inference_arguments
    from ppd.bench.protocols.refine import BUNDLED
    from ppd.cli.common import add_device_arguments, add_threads_argument
    from ppd.data.scenes import DOMAINS

    p = argparse.ArgumentParser(prog="python -m ppd.bench.generators", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=BUNDLED, help="training run folder (default: the bundled defender)")
    p.add_argument("--model", default="bundled", help="ppd bench --model spec of the segmenter the run was trained on "
                   "(default: bundled)")
    p.add_argument("--domains", nargs="+", default=["train", "texture"], help=f"domains (default: train texture; known: {' '.join(DOMAINS)})")
    p.add_argument("--generators", nargs="+", default=list(GENERATORS), help=f"generators (default: all: {' '.join(GENERATORS)})")
    p.add_argument("--scenes", type=int, default=10, help="held-out scenes per domain, every object (default 10)")
    p.add_argument("--max-objects", type=int, default=None, help="at most N objects per scene, the largest (default all)")
    p.add_argument("--seed", type=int, default=0, help="prompt seed (default 0)")
    p.add_argument("--without-filter", action="store_true", help="also the defender without its label filter (ppd[no filter])")
    add_device_arguments(p)
    p.add_argument("--select", choices=SELECT_RULES, default=DEFAULT_SELECT,
                   help=f"the defender's output rule (default: {DEFAULT_SELECT}; see PromptDefender)")
    add_inference_arguments(p)
    p.add_argument("--out", default=DEFAULT_OUT, help=f"the ppd bench folder (default {DEFAULT_OUT}); a finished one is only read")
    add_threads_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from ppd.bench.views import check_scene_arguments, objects_per_domain, run_view
    from ppd.cli.common import apply_threads

    p = parser()
    args = p.parse_args(argv)
    apply_threads(p, args)
    check_scene_arguments(p, args, generators=tuple(GENERATORS))

    cfg, outcome, results = run_view(p, bench_arguments(args))
    objects = objects_per_domain(results, "refine")
    print(f"defender: {args.run}; {args.scenes} held-out scenes per domain, objects "
          + ", ".join(f"{d} {objects.get(d, 0)}" for d in args.domains) + "; mean IoU of SAM2's mask")
    table = generator_table(results, args.run, args.domains, args.generators)
    intervals = {d: gain_intervals(results, args.run, d, args.generators, cfg.bootstrap, cfg.seed) for d in args.domains}
    print(format_table(table, intervals))
    print(f"report: {outcome.files.get('report.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
