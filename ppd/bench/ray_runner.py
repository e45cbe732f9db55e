"""Running work units as Ray tasks: on a local Ray started for the run, or on a cluster.

Per model, ``workers`` actors each build the model once (and each protocol's resources
once) and run groups of units (one model x image each); results come back to the driver,
which alone writes the store. Every unit's result depends only on the unit, so the
results equal a serial run's (with the same torch thread count per process).

Ray is an optional extra: ``pip install ppd[ray]``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from ppd.bench.config import BenchConfig
from ppd.bench.schema import Unit, UnitResult

logger = logging.getLogger(__name__)


def _ray():
    try:
        import ray
    except ImportError as e:
        raise RuntimeError("--ray needs Ray: pip install 'ppd[ray]' (or pip install ray)") from e
    return ray


class _BenchActor:
    """One worker process: a :class:`ppd.bench.runner.Worker` with its own threads."""

    def __init__(self, config: dict[str, Any], threads: int) -> None:
        import torch

        from ppd.bench.runner import Worker

        torch.set_num_threads(max(threads, 1))
        self.worker = Worker(BenchConfig(**config))

    def run_group(self, units: list[Unit]) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.worker.run_group(units)]


def run_on_ray(cfg: BenchConfig, groups: list[list[Unit]], finish: Callable[[Unit, UnitResult], None]) -> None:
    """Run ``groups`` on Ray and call ``finish(unit, result)`` in the driver for each."""
    ray = _ray()
    started = not ray.is_initialized()
    if started:
        if cfg.ray_address:
            ray.init(address=cfg.ray_address, log_to_driver=False)
        else:
            ray.init(num_cpus=cfg.workers, include_dashboard=False, log_to_driver=False)
    config = {k: v for k, v in cfg.__dict__.items()}
    threads = cfg.threads or 1
    gpu = 1 if (cfg.device or "").startswith("cuda") else 0
    actor_cls = ray.remote(num_cpus=threads, num_gpus=gpu)(_BenchActor)
    try:
        for label in dict.fromkeys(g[0].model for g in groups):
            mine = [g for g in groups if g[0].model == label]
            actors = [actor_cls.remote(config, threads) for _ in range(min(cfg.workers, len(mine)))]
            pending = {}
            queue = list(mine)
            for actor in actors:  # one group in flight per actor; the next when it returns
                if queue:
                    g = queue.pop(0)
                    pending[actor.run_group.remote(g)] = (actor, g)
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                actor, group = pending.pop(done[0])
                for unit, record in zip(group, ray.get(done[0])):
                    finish(unit, UnitResult.from_json(record))
                if queue:
                    g = queue.pop(0)
                    pending[actor.run_group.remote(g)] = (actor, g)
            for actor in actors:
                ray.kill(actor)
    finally:
        if started:
            ray.shutdown()
