"""Benchmarks: ``ppd bench`` (data, models, protocols, store, runner, report) and its views.

``ppd bench`` is the harness (docs/bench.md). ``python -m ppd.bench.generators`` and
``python -m ppd.bench.defense`` are views of it (:mod:`ppd.bench.views`): each runs one
``ppd bench`` refine run and prints its own table from the results. Neither is a test.
"""

from __future__ import annotations

import copy
from typing import Any

from ppd.agents.run_config import RunConfig, RunConfigLike
from ppd.cli.common import add_threads_argument, apply_threads  # the benches' --threads, as every command's

__all__ = ["add_threads_argument", "apply_threads", "defender_variant", "run_max_ideal_points"]


def defender_variant(defender: Any, **attrs: Any) -> Any:
    """A shallow copy of a ``PromptDefender`` with ``attrs`` changed (``select``,
    ``label_filter``). It shares the network, segmenter and world, so the rollout states
    the main defender decoded are cache hits: a second output rule costs Q-network
    calls only."""
    out = copy.copy(defender)
    for k, v in attrs.items():
        setattr(out, k, v)
    return out


def run_max_ideal_points(cfg: RunConfigLike) -> int:
    """The run's ``max_ideal_points`` (ideal prompts per label; 6 if its config has none):
    ``cfg`` a defender's ``run_config`` or ``train_config``, or a config's mapping."""
    return RunConfig.of(cfg).max_ideal_points

