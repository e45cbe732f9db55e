"""The protocol interface: what a benchmark protocol declares and does on one work unit.

A protocol is a small module with a config dataclass and a :class:`Protocol` subclass,
registered in :mod:`ppd.bench.protocols`. The core (data, models, store, runner, report)
knows nothing else about it: a new protocol is a new module, nothing more.

Config fields become ``ppd bench`` flags (``max_clicks`` -> ``--max-clicks``); each field
needs ``metadata={"help": ...}``. Bool fields become on/off switches; list fields are
repeatable flags.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ppd.bench.schema import Unit, UnitResult


@dataclass
class BenchModel:
    """A model as the protocols see it.

    ``segmenter`` is the model as benchmarked (with its RUAC head, if any); ``base`` is
    the same network with SAM2's own decoder (the same object when there is no head), so
    a protocol can derive prompts with the base decoder and score both.
    """

    name: str
    segmenter: Any
    base: Any
    spec: dict[str, Any]

    @property
    def has_head(self) -> bool:
        return self.segmenter is not self.base


class Protocol:
    """Base class of the benchmark protocols.

    Class attributes (the report reads them):
        name: the protocol's name on the command line and in ``results.parquet``.
        Config: its config dataclass.
        title: a heading for the report.
        table_metrics: metrics shown, in order, in the report's table.
        lower_is_better: metrics where smaller is better (NoC, ECE ...).
        sums: metrics reported as a count over objects, not a mean (NoF).
        curve: ``(metric prefix, x label)``: metrics ``prefix + k`` form a curve over k
            (``("iou@", "clicks")``), drawn per model; None for none.
        example_metric: the metric the overlay grid ranks examples by (worst first).
        reliability: metric prefix P of a reliability diagram: per object and bin b the
            rows ``P + "count@b"`` (pixels whose foreground probability falls in bin b of
            equal-width bins over [0, 1]), ``P + "conf@b"`` (the sum of their
            probabilities) and ``P + "hit@b"`` (how many are foreground); summed over
            objects they give the diagram. None for none.
        risk_coverage: metric prefix P of a risk-coverage curve: per object and bin b of
            confidence (equal-width bins over [0, 1], b = 0 least confident) the rows
            ``P + "count@b"`` (pixels) and ``P + "hit@b"`` (correctly segmented ones);
            summed over objects, accumulated from the most confident bin down, they give
            coverage and risk. None for none.
        Metrics of these two families are histograms: tables never show them.
        quick: config options of ``ppd bench --quick`` (a small size that keeps the whole
            preset within a few minutes on 2 CPU cores); options the user gives win.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = object
    title: ClassVar[str] = ""
    table_metrics: ClassVar[tuple[str, ...]] = ()
    lower_is_better: ClassVar[frozenset[str]] = frozenset()
    sums: ClassVar[frozenset[str]] = frozenset()
    curve: ClassVar[tuple[str, str] | None] = None
    example_metric: ClassVar[str] = "iou"
    reliability: ClassVar[str | None] = None
    risk_coverage: ClassVar[str | None] = None
    quick: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: Any | None = None) -> None:
        self.config = self.Config() if config is None else config

    def bind_domains(self, domains: dict[str, Any]) -> None:
        """Receive the run's domains (name -> :class:`ppd.bench.data.Domain`) before any
        :meth:`run`, for protocols that draw from other images of a domain (one-shot
        references). Default: ignored."""

    def validate(self, models: dict[str, dict[str, Any]]) -> None:
        """Check what can be checked before any work starts (files the config names,
        models the protocol needs); raise ``ValueError`` / ``FileNotFoundError`` with a
        message that names the problem. ``models``: name -> model spec."""

    def prepare(self, model: BenchModel) -> Any:
        """Per-process resources for ``model`` (trained agents, ...), built once per
        worker and model and passed to every :meth:`run`. Default: none."""
        return None

    def aggregates(self, results: Any) -> dict[str, Any]:
        """Summary numbers beyond per-metric means (a worst case over conditions, ...),
        computed from this protocol's rows of the results table; they go into
        ``summary.json`` under ``aggregates`` and into the report. Default: none."""
        return {}

    def figures(self, results: Any, fig_dir: Any, load_scene: Any, examples: list) -> dict[str, tuple[Any, str]]:
        """The protocol's own figures for the report, beyond the standard ones: saved
        under ``fig_dir`` (a ``pathlib.Path``), returned as ``{kind: (path, caption)}``.
        ``results``: this protocol's rows; ``load_scene(domain, image)`` gives a scene;
        ``examples``: the run's ``(Unit, Example)`` pairs. Default: none."""
        return {}

    def run(self, model: BenchModel, resources: Any, scene: Any, unit: Unit, rng: np.random.Generator) -> UnitResult:
        """Measure ``model`` on ``scene`` (a :class:`ppd.data.types.Scene` whose masks
        are the objects to measure, already filtered). Must be deterministic given
        ``rng`` (the unit's own stream) so that resumed and parallel runs agree."""
        raise NotImplementedError


def measured_objects(scene: Any) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """``(care, gts, objs)`` of a scene: the pixels that count (not void,
    ``scene.meta["void"]``), the object masks restricted to them, and the indices of the
    objects left with at least one pixel (the ones a protocol measures)."""
    void = scene.meta.get("void")
    care = np.ones(scene.masks.shape[1:], bool) if void is None else ~np.asarray(void, bool)
    gts = np.asarray(scene.masks, bool) & care
    return care, gts, [i for i, gt in enumerate(gts) if gt.any()]


def config_fields(config_cls: type) -> list[dataclasses.Field]:
    """The fields of a protocol config dataclass, each with a help text."""
    fields = dataclasses.fields(config_cls)
    for f in fields:
        if "help" not in f.metadata:
            raise TypeError(f"{config_cls.__name__}.{f.name} needs metadata={{'help': ...}} (it becomes a ppd bench flag)")
    return list(fields)
