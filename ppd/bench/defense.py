"""Defense bench: what a trained attacker breaks and the defender repairs, as a ``ppd bench`` view.

    python -m ppd.bench.defense [--run DIR] [--attacker RUN] [--domains train texture ...]
        [--scenes 20] [--max-objects N] [--select score|last] [--out DIR]

runs (or continues, or only reads) the equivalent

    ppd bench --protocol refine --data D=procedural:D ... --sample N --defender RUN
              --attacker ATT --without-filter --out DIR

(printed first; ``ppd bench --config DIR/config.yaml`` reruns it) and prints, from its
``results.parquet``, the mean IoU of SAM2's mask per domain (every object of the
held-out scenes) for:

* ``ideal``: the attacker's start, ideal prompts (``ideal_prompts``, the run's
  ``max_ideal_points`` per label);
* ``attacked``: after the DQN attacker acted greedily on them (the run's own
  ``attacker.zip``, or ``--attacker RUN``: defenders of two runs compare fairly only
  against the same attacker, as a run's own attacker is a random draw of strength);
* ``defended``: the attacked set refined by the defender (no ground truth);
  ``defended[no filter]``: by the defender without its wrong-label filter (runs with one);
* ``attacked+oracle``: the attacked set without its wrong-label points by the ground
  truth: what a defender that removes exactly those reaches, a reference, not a method;
* ``attacked+greedy_score``, ``attacked+consistency``, ``attacked+mask_consensus``: the
  attacked set refined by a baseline of :mod:`ppd.agents.baselines` instead;
* ``coarse``: ``coarse_prompts`` with their default noise; ``coarse+ppd`` (and ``[no
  filter]``): refined by the defender; ``random_drop``, ``greedy_score``, ``consistency``,
  ``mask_consensus``: refined by the baselines;

then ``recovery`` (``defended / ideal``) and the defender's median refine time per call
(image encoded). These are the refine protocol's methods (``no_refine``, ``ppd:<run>``,
``ideal``, ``attacked_oracle`` ...) under its conditions ``clean`` (coarse sets) and
``dqn_attacker`` (attacked sets); its report holds the paired-bootstrap intervals.
``--run`` defaults to the bundled defender, which ships without an attacker: without
``--attacker`` its attacked columns stay empty. Env steps/s: ``docs/experiments/env_step_speed.py``.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

#: Table columns: ``(condition, method role)``; the role is :func:`column_methods`' key.
COLUMNS: dict[str, tuple[str, str]] = {
    "ideal": ("dqn_attacker", "ideal"),
    "attacked": ("dqn_attacker", "no_refine"),
    "defended": ("dqn_attacker", "ppd"),
    "defended[no filter]": ("dqn_attacker", "ppd[no filter]"),
    "attacked+oracle": ("dqn_attacker", "attacked_oracle"),
    "attacked+greedy_score": ("dqn_attacker", "greedy_score"),
    "attacked+consistency": ("dqn_attacker", "consistency"),
    "attacked+mask_consensus": ("dqn_attacker", "mask_consensus"),
    "coarse": ("clean", "no_refine"),
    "coarse+ppd": ("clean", "ppd"),
    "coarse+ppd[no filter]": ("clean", "ppd[no filter]"),
    "random_drop": ("clean", "random_drop"),
    "greedy_score": ("clean", "greedy_score"),
    "consistency": ("clean", "consistency"),
    "mask_consensus": ("clean", "mask_consensus"),
}
#: Where the command writes its ``ppd bench`` folder unless ``--out`` says otherwise.
DEFAULT_OUT = "bench_out/defense"
#: Baselines the bench runs (every one of ``ppd.agents.baselines``).
BASELINES = ("no_refine", "random_drop", "greedy_score", "consistency", "mask_consensus")


def column_methods(run: str) -> dict[str, str]:
    """Method role -> the refine protocol's method name, for defender ``run``."""
    from ppd.bench.protocols.refine import DQN_IDEAL, DQN_ORACLE, defender_method

    ppd_method = defender_method(run)
    return {"ideal": DQN_IDEAL, "attacked_oracle": DQN_ORACLE, "ppd": ppd_method,
            "ppd[no filter]": f"{ppd_method}[no filter]", **{b: b for b in BASELINES}}


def own_attacker(run: str) -> str | None:
    """``run``'s own attacker (its folder, when it holds ``attacker.zip``), else None."""
    from ppd.bench.protocols.refine import defender_folder

    folder = defender_folder(run)
    return str(folder) if (folder / "attacker.zip").is_file() else None


def bench_arguments(args: argparse.Namespace) -> list[str]:
    """The ``ppd bench`` arguments (after ``ppd bench``) that measure what ``args`` asks for
    (``args.attacker``: the attacker already resolved, None for none)."""
    from ppd.agents.refine_config import inference_options
    from ppd.bench.views import changed_refine_options, device_arguments, scene_arguments

    options = {"select": args.select, "patience": args.patience, **inference_options(args)}
    argv = ["--protocol", "refine"]
    argv += scene_arguments(args)
    argv += ["--defender", args.run, "--baselines", *BASELINES]
    if args.attacker:
        argv += ["--attacker", args.attacker]
    argv.append("--without-filter")
    changed = changed_refine_options(options)
    if changed:
        argv += ["--defender-options", *changed]
    return argv + device_arguments(args) + ["--out", args.out]


def defense_table(results: Any, run: str, domains: list[str]) -> dict[str, dict[str, float | None]]:
    """``{domain: {column: mean IoU or None}}`` from a refine run's results table, plus
    ``recovery`` (``defended / ideal``) and ``refine_ms`` (the defender's median refine time
    on the coarse sets). A column whose method has no rows (no attacker, a run without a
    filter) is None.

    Raises:
        ValueError: a domain without refine results.
    """
    refine = results[results.protocol == "refine"]
    means = refine[refine.metric == "iou"].groupby(["domain", "condition", "method"])["value"].mean()
    methods = column_methods(run)
    out: dict[str, dict[str, float | None]] = {}
    for domain in domains:
        row: dict[str, float | None] = {}
        for column, (condition, role) in COLUMNS.items():
            key = (domain, condition, methods[role])
            row[column] = float(means[key]) if key in means.index else None
        if row["coarse"] is None:
            raise ValueError(f"no refine results for domain {domain!r}")
        ideal, defended = row["ideal"], row["defended"]
        row["recovery"] = defended / ideal if ideal and defended is not None else None
        ms = refine[(refine.domain == domain) & (refine.condition == "clean") & (refine.method == methods["ppd"])
                    & (refine.metric == "refine_ms")]["value"]
        row["refine_ms"] = float(np.median(ms)) if len(ms) else None
        out[domain] = row
    return out


def format_table(table: dict[str, dict[str, float | None]]) -> str:
    """The table as aligned text: a row per domain, the attacked and the coarse columns
    in two blocks (a column empty everywhere is left out)."""
    blocks = ([c for c in COLUMNS if COLUMNS[c][0] == "dqn_attacker"] + ["recovery"],
              [c for c in COLUMNS if COLUMNS[c][0] == "clean"] + ["refine_ms"])
    lines = []
    for cols in blocks:
        cols = [c for c in cols if any(r.get(c) is not None for r in table.values())]
        if not cols:
            continue
        widths = [max(7, len(c)) for c in cols]
        lines.append(f"{'domain':12s} " + " ".join(f"{c:>{w}s}" for c, w in zip(cols, widths)))
        for domain, r in table.items():
            cells = [f"{'-':>{w}s}" if r.get(c) is None else
                     f"{r[c]:{w}.1f}" if c == "refine_ms" else f"{r[c]:{w}.3f}" for c, w in zip(cols, widths)]
            lines.append(f"{domain:12s} " + " ".join(cells))
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    from ppd.agents.refine_config import DEFAULT_SELECT, SELECT_RULES, add_inference_arguments
    from ppd.bench.protocols.refine import BUNDLED
    from ppd.cli.common import add_device_arguments, add_threads_argument
    from ppd.data.scenes import DOMAINS

    p = argparse.ArgumentParser(prog="python -m ppd.bench.defense", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=BUNDLED, help="training run folder with defender.zip (and attacker.zip) "
                   "(default: the bundled defender)")
    p.add_argument("--attacker", default=None, help="another run folder (or its attacker.zip) whose attacker makes "
                   "the attacked sets (default: the run's own, if it has one)")
    p.add_argument("--model", default="bundled", help="ppd bench --model spec of the segmenter the run was trained on "
                   "(default: bundled)")
    p.add_argument("--domains", nargs="+", default=list(DOMAINS), help=f"domains (default: {' '.join(DOMAINS)})")
    p.add_argument("--scenes", type=int, default=20, help="held-out scenes per domain, every object (default 20)")
    p.add_argument("--max-objects", type=int, default=None, help="at most N objects per scene, the largest (default all)")
    p.add_argument("--seed", type=int, default=0, help="prompt seed (default 0)")
    add_device_arguments(p)
    p.add_argument("--select", choices=SELECT_RULES, default=DEFAULT_SELECT,
                   help=f"the defender's output rule (default: {DEFAULT_SELECT}; see PromptDefender)")
    p.add_argument("--patience", type=int, default=None,
                   help="with --select score: end a rollout after this many steps without a better predicted IoU")
    add_inference_arguments(p)
    p.add_argument("--out", default=DEFAULT_OUT, help=f"the ppd bench folder (default {DEFAULT_OUT}); a finished one "
                   "is only read")
    add_threads_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from ppd.bench.views import check_scene_arguments, objects_per_domain, run_view
    from ppd.cli.common import apply_threads

    p = parser()
    args = p.parse_args(argv)
    apply_threads(p, args)
    check_scene_arguments(p, args)
    if args.patience is not None and (args.patience < 1 or args.select != "score"):
        p.error(f"--patience must be >= 1 and goes with --select score, got {args.patience} with --select {args.select}")
    try:
        args.attacker = args.attacker or own_attacker(args.run)
    except FileNotFoundError as exc:
        p.error(str(exc))
    cfg, outcome, results = run_view(p, bench_arguments(args))
    objects = objects_per_domain(results, "refine")
    print(f"defender: {args.run}; attacker: {args.attacker or 'none (attacked columns empty)'}; "
          f"{args.scenes} held-out scenes per domain, objects "
          + ", ".join(f"{d} {objects.get(d, 0)}" for d in args.domains) + "; mean IoU of SAM2's mask")
    print(format_table(defense_table(results, args.run, args.domains)))
    print(f"report (with 95% intervals): {outcome.files.get('report.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
