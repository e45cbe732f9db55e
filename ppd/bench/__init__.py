"""Benchmarks: scripts that print tables (python -m ppd.bench.NAME), not tests."""

from __future__ import annotations

import argparse
import copy
from typing import Any

from ppd.agents.run_files import find_setting


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    """The benches' shared ``--threads`` option (torch CPU threads)."""
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def defender_variant(defender: Any, **attrs: Any) -> Any:
    """A shallow copy of a ``PromptDefender`` with ``attrs`` changed (``select``,
    ``label_filter``). It shares the network, segmenter and world, so the rollout states
    the main defender decoded are cache hits: a second output rule costs Q-network
    calls only."""
    out = copy.copy(defender)
    for k, v in attrs.items():
        setattr(out, k, v)
    return out


def run_max_ideal_points(cfg: dict[str, Any]) -> int:
    """The run's ``max_ideal_points`` (ideal prompts per label; 6 if its config has none)."""
    value = find_setting(cfg, "max_ideal_points")
    return int(value) if isinstance(value, int) else 6


def apply_threads(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Set torch's CPU threads from ``args.threads`` (0 keeps torch's default); a negative
    value is a usage error."""
    if args.threads < 0:
        p.error(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
