"""Running a benchmark: check everything, plan the work units, run the missing ones
(here or on Ray), then write the results table, the summary and the report.

Units are grouped by model and image (every protocol of one image runs in one task), so
an image is encoded once per model, and in order (model, domain, image, protocol), so a
run's output never depends on how many processes computed it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ppd.bench.config import CONFIG_FILE, BenchConfig
from ppd.bench.data import Domain, open_domain
from ppd.bench.models import load_bench_model
from ppd.bench.protocols import BenchModel, Protocol, protocol_class
from ppd.bench.schema import Unit, UnitResult
from ppd.bench.store import UnitStore, collect, write_results

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"


class Worker:
    """Runs units in one process: loads each model once, each protocol's resources once
    per model, and the scene of an image once for all its protocols."""

    def __init__(self, cfg: BenchConfig, domains: dict[str, Domain] | None = None) -> None:
        self.cfg = cfg
        sel = cfg.selection()
        self.domains = domains or {s.name: open_domain(s, sel, check=False) for s in cfg.data_specs()}
        self.specs = {s.label: s for s in cfg.model_specs()}
        self.protocols: dict[str, Protocol] = {n: protocol_class(n)(c) for n, c in cfg.protocol_configs().items()}
        for protocol in self.protocols.values():
            protocol.bind_domains(self.domains)
        self.models: dict[str, BenchModel] = {}
        self.resources: dict[tuple[str, str], Any] = {}
        self._scene: tuple[tuple[str, int], Any] | None = None

    def model(self, label: str) -> BenchModel:
        if label not in self.models:
            self.models.clear()  # one model in memory at a time: units come grouped by model
            self.resources.clear()
            self.models[label] = load_bench_model(self.specs[label], self.cfg.device, self.cfg.precision,
                                                  self.cfg.embedding_cache)
        return self.models[label]

    def scene(self, domain: str, index: int):
        if self._scene is None or self._scene[0] != (domain, index):
            self._scene = ((domain, index), self.domains[domain].scene(index))
        return self._scene[1]

    def run(self, unit: Unit) -> UnitResult:
        t0 = time.perf_counter()
        try:
            scene = self.scene(unit.domain, unit.index)
        except (OSError, ValueError) as e:  # a bad file found late: skipped and counted, never fatal
            logger.warning("skipping %s/%s: %s", unit.domain, unit.image, e)
            return UnitResult(skipped=f"{type(e).__name__}: {e}")
        if scene.num_objects == 0:
            return UnitResult()
        model = self.model(unit.model)
        protocol = self.protocols[unit.protocol]
        key = (unit.protocol, unit.model)
        if key not in self.resources:
            self.resources[key] = protocol.prepare(model)
        rng = unit.seed(self.cfg.seed, per_model=self.cfg.streams == "model_image")
        result = protocol.run(model, self.resources[key], scene, unit, rng)
        result.seconds = time.perf_counter() - t0
        return result

    def run_group(self, units: list[Unit]) -> list[UnitResult]:
        return [self.run(u) for u in units]


@dataclass
class BenchOutcome:
    out: Path
    units: int
    ran: int
    skipped: list[dict[str, str]] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0


def prepare_run(cfg: BenchConfig) -> tuple[dict[str, Domain], list[Unit]]:
    """Check everything that can be checked before work starts and return the domains
    and the planned units. Raises ``ValueError`` / ``FileNotFoundError`` with a message
    naming the problem; nothing is written."""
    domains = {s.name: open_domain(s, cfg.selection(), check=True) for s in cfg.data_specs()}
    for name, domain in domains.items():
        if len(domain) == 0:
            raise ValueError(f"--data {name}: no image to benchmark")
    specs = cfg.model_specs()
    for spec in specs:
        spec.check_files()
    model_dicts = {s.label: s.to_dict() for s in specs}
    for name, pcfg in cfg.protocol_configs().items():
        protocol_class(name)(pcfg).validate(model_dicts)
    units = [Unit(s.label, d.name, i, d.ids[i], p) for s in specs for d in domains.values() for i in range(len(d))
             for p in cfg.protocols]
    return domains, units


def check_out(cfg: BenchConfig) -> None:
    """Refuse an ``--out`` folder that holds a benchmark with other settings."""
    path = Path(cfg.out) / CONFIG_FILE
    if not path.is_file():
        return
    old = BenchConfig.load(path)
    diff = cfg.differences(old)
    if diff:
        raise ValueError(f"{cfg.out} holds a benchmark with other settings ({', '.join(diff)} differ): "
                         "pass another --out, or rerun it with --config " + str(path))


def groups(units: Iterable[Unit]) -> list[list[Unit]]:
    """Units of one model and image together, order kept."""
    out: list[list[Unit]] = []
    for u in units:
        if out and (out[-1][0].model, out[-1][0].domain, out[-1][0].index) == (u.model, u.domain, u.index):
            out[-1].append(u)
        else:
            out.append([u])
    return out


def run_bench(cfg: BenchConfig, progress: Callable[[int, int], Callable[[Unit, UnitResult], None]] | None = None,
              command: str = "", load_check: bool = True) -> BenchOutcome:
    """Run (or continue) the benchmark ``cfg`` and write its outputs to ``cfg.out``.

    Args:
        progress: ``progress(total, done) -> tick(unit, result)``; the CLI passes a bar.
        command: the command line, recorded in the report.
        load_check: build every model once before any work, so a checkpoint that does
            not fit its config fails first (serial runs reuse the built models).
    """
    t0 = time.perf_counter()
    domains, units = prepare_run(cfg)
    check_out(cfg)
    worker = None if cfg.ray else Worker(cfg, domains)
    if load_check:
        for i, spec in enumerate(cfg.model_specs()):
            model = load_bench_model(spec, cfg.device, cfg.precision, cfg.embedding_cache)
            if worker is not None and i == 0:
                worker.models[spec.label] = model  # the run starts with it
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out)
    store = UnitStore(out)
    todo = [u for u in units if not store.done(u)]
    logger.info("%d units planned, %d already done, %d to run", len(units), len(units) - len(todo), len(todo))
    tick = progress(len(units), len(units) - len(todo)) if progress else None

    def finish(unit: Unit, result: UnitResult) -> None:
        store.save(unit, result)
        if tick:
            tick(unit, result)

    if cfg.ray:
        from ppd.bench.ray_runner import run_on_ray

        run_on_ray(cfg, groups(todo), finish)
    else:
        for group in groups(todo):
            for unit, result in zip(group, worker.run_group(group)):
                finish(unit, result)
    outcome = BenchOutcome(out, len(units), len(todo))
    outcome.files = write_outputs(cfg, units, domains, command, outcome, time.perf_counter() - t0)
    outcome.seconds = time.perf_counter() - t0
    return outcome


def write_outputs(cfg: BenchConfig, units: list[Unit], domains: dict[str, Domain], command: str,
                  outcome: BenchOutcome, seconds: float) -> dict[str, Path]:
    """results.parquet, summary.json and the report, from the stored units."""
    import platform

    import torch

    from ppd import io
    from ppd.bench.report import write_report
    from ppd.bench.stats import summarize

    out = Path(cfg.out)
    store = UnitStore(out)
    df, examples, skipped = collect(store, units)
    outcome.skipped = skipped
    files = {"results": write_results(df, out)}
    protocols = {n: protocol_class(n)(c) for n, c in cfg.protocol_configs().items()}
    for protocol in protocols.values():  # figures redraw what the units drew (one-shot references)
        protocol.bind_domains(domains)
    summary = summarize(df, protocols, n_boot=cfg.bootstrap, seed=cfg.seed)
    aggregates = {name: p.aggregates(df[df.protocol == name]) for name, p in protocols.items()}
    aggregates = {name: a for name, a in aggregates.items() if a}
    record = {"protocols": summary, "aggregates": aggregates, "units": len(units), "skipped": skipped,
              "bootstrap": cfg.bootstrap, "level": 0.95, "system_key": "model/method/condition"}
    files["summary"] = io.save_json(io.json_safe(record), out / SUMMARY_FILE)
    meta = {
        "title": "ppd bench", "command": command, "config": cfg.to_dict(), "seconds": seconds, "skipped": skipped,
        "aggregates": aggregates,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
                   f"device {cfg.device or ('cuda' if torch.cuda.is_available() else 'cpu')}",
    }
    files.update(write_report(out, df, summary, protocols, examples,
                              lambda domain, image: domains[domain].scene(domains[domain].ids.index(image)), meta))
    return files

