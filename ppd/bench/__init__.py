"""Benchmarks: scripts that print tables (python -m ppd.bench.NAME), not tests."""

from __future__ import annotations

import argparse


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    """The benches' shared ``--threads`` option (torch CPU threads)."""
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def add_min_score_gain_argument(p: argparse.ArgumentParser) -> None:
    """The defender benches' ``--min-score-gain`` option (``PromptDefender(min_score_gain=...)``)."""
    p.add_argument("--min-score-gain", type=float, default=None,
                   help="the defender's guard for good clicks (PromptDefender min_score_gain, e.g. 0.02; default: off)")


def apply_threads(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Set torch's CPU threads from ``args.threads`` (0 keeps torch's default); a negative
    value is a usage error."""
    if args.threads < 0:
        p.error(f"--threads must be >= 0, got {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
