"""What the ``python -m ppd.bench.*`` views share: each stands for one ``ppd bench`` run.

A view translates its flags into ``ppd bench`` arguments, prints the equivalent command,
runs it (or continues it, or only reads a finished folder) and prints its own table from
the run's ``results.parquet``; so every number a view prints, ``ppd bench`` reproduces.
"""

from __future__ import annotations

import argparse
import json
import shlex
from typing import Any


def option_text(value: Any) -> str:
    """A refine option's value as ``--defender-options`` reads it (YAML reads JSON scalars:
    null, true, 0.5)."""
    return value if isinstance(value, str) else json.dumps(value)


def changed_refine_options(options: dict[str, Any]) -> list[str]:
    """``KEY=VALUE`` items of ``--defender-options`` for the refine options that differ
    from :class:`~ppd.agents.refine_config.RefineConfig`'s defaults."""
    from ppd.agents.refine_config import RefineConfig

    default = RefineConfig()
    return [f"{k}={option_text(v)}" for k, v in options.items() if v != getattr(default, k)]


def check_scene_arguments(p: argparse.ArgumentParser, args: argparse.Namespace,
                          **lists: tuple[str, ...]) -> None:
    """Read the view's ``--domains`` (and each list flag in ``lists``, name -> known values)
    as names, comma-separated or not, and check them and ``--scenes``; a bad one is
    ``p``'s usage error."""
    from ppd.data.scenes import DOMAINS

    for kind, known in {"domains": DOMAINS, **lists}.items():
        names = [n for part in getattr(args, kind) for n in part.split(",") if n]
        setattr(args, kind, names)
        unknown = sorted(set(names) - set(known))
        if unknown:
            p.error(f"unknown {kind} {unknown}; known: {', '.join(known)}")
    if args.scenes < 1:
        p.error(f"--scenes must be >= 1, got {args.scenes}")


def scene_arguments(args: argparse.Namespace) -> list[str]:
    """``ppd bench``'s ``--data`` (one procedural source per domain), ``--model``,
    ``--sample``, ``--seed`` and ``--max-objects`` as the view was given them
    (``--domains``, ``--model``, ``--scenes``, ``--seed``, ``--max-objects``)."""
    argv: list[str] = []
    for domain in args.domains:
        argv += ["--data", f"{domain}=procedural:{domain}"]
    if args.model != "bundled":
        argv += ["--model", args.model]
    argv += ["--sample", str(args.scenes)]
    if args.seed:
        argv += ["--seed", str(args.seed)]
    if args.max_objects is not None:
        argv += ["--max-objects", str(args.max_objects)]
    return argv


def device_arguments(args: argparse.Namespace) -> list[str]:
    """``ppd bench``'s ``--device``, ``--precision``, ``--embedding-cache`` and
    ``--threads`` as the view was given them."""
    out: list[str] = []
    for flag, value in (("--device", args.device), ("--precision", args.precision),
                        ("--embedding-cache", args.embedding_cache), ("--threads", args.threads or None)):
        if value is not None:
            out += [flag, str(value)]
    return out


def run_view(p: argparse.ArgumentParser, bench_argv: list[str]) -> tuple[Any, Any, Any]:
    """Print the ``ppd bench`` command of ``bench_argv``, run it with a progress bar and
    return ``(config, outcome, results)`` (results: ``results.parquet`` as a DataFrame).
    A bad setting or an ``--out`` folder holding another benchmark is ``p``'s usage
    error."""
    from ppd.bench.runner import run_bench
    from ppd.bench.store import read_results
    from ppd.cli import bench as bench_cli

    command = "ppd bench " + shlex.join(bench_argv)
    print(command)
    bp = argparse.ArgumentParser()
    bench_cli.add_arguments(bp)
    try:
        cfg = bench_cli.build_config(bp.parse_args(bench_argv))
    except ValueError as exc:
        p.error(str(exc))
    bar = bench_cli.UnitBar()
    try:
        outcome = run_bench(cfg, bar, command=command)
    except (ValueError, FileNotFoundError) as exc:  # a bad run folder, an --out of another benchmark
        p.error(str(exc))
    finally:
        bar.close()
    return cfg, outcome, read_results(outcome.out)


def objects_per_domain(results: Any, protocol: str) -> dict[str, int]:
    """Measured objects (image, object pairs) per domain of ``protocol``'s rows."""
    rows = results[results.protocol == protocol]
    return {d: len(g[["image", "object"]].drop_duplicates()) for d, g in rows.groupby("domain")}
