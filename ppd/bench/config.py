"""``BenchConfig``: everything ``ppd bench`` was asked to do, saved as ``config.yaml``.

``ppd bench --config DIR/config.yaml`` reruns a benchmark exactly; the same command
with the same ``--out`` continues an interrupted one. A run folder refuses a config
that would measure something else (other data, models, protocols or settings), so the
results in one folder always belong together.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ppd import io
from ppd.bench.data import DataSpec, Selection
from ppd.bench.models import ModelSpec
from ppd.bench.protocols import protocol_class, protocol_names

CONFIG_FILE = "config.yaml"

#: What a unit's random stream may depend on besides the image and the protocol
#: (:attr:`BenchConfig.streams`, :meth:`ppd.bench.schema.Unit.seed`).
STREAMS = ("image", "model_image")
#: Fields that only say how to compute, not what: they may change when a run resumes.
HOW_FIELDS = ("out", "device", "threads", "ray", "ray_address", "workers", "embedding_cache", "quick")


@dataclass
class BenchConfig:
    data: list[str] = field(default_factory=list)  # NAME=SOURCE
    models: list[str] = field(default_factory=lambda: ["bundled"])  # [LABEL=]NAME[:CHECKPOINT][+ruac=HEAD]
    protocols: list[str] = field(default_factory=lambda: ["clicks"])
    out: str = "bench_out"
    sample: int | None = None
    seed: int = 0
    min_area: int = 0
    max_objects: int | None = None
    device: str | None = None
    precision: str | None = None
    embedding_cache: str | None = None
    threads: int = 0
    ray: bool = False
    ray_address: str | None = None
    workers: int = 2
    bootstrap: int = 1000
    quick: bool = False
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # protocol -> its config fields
    # what a unit's random stream depends on (Unit.seed): "image" (every model of the run
    # faces the same random prompts) or "model_image" (the model too, as runs saved before
    # this setting existed did: their config.yaml lacks it, and reruns stay exact)
    streams: str = "image"

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("no data: give at least one --data NAME=SOURCE (or --quick for the procedural domains)")
        for name, minimum in (("sample", 1), ("max_objects", 1)):
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {value}")
        if self.min_area < 0 or self.workers < 1 or self.bootstrap < 1:
            raise ValueError(f"min_area must be >= 0, workers and bootstrap >= 1; got {self.min_area}, "
                             f"{self.workers}, {self.bootstrap}")
        if self.streams not in STREAMS:
            raise ValueError(f"streams must be one of {', '.join(STREAMS)}, got {self.streams!r}")
        unknown = [p for p in self.protocols if p not in protocol_names()]
        if unknown:
            raise ValueError(f"unknown protocol {unknown[0]!r}; known protocols: {', '.join(protocol_names())}")
        names = [DataSpec.parse(d).name for d in self.data]
        labels = [ModelSpec.parse(m).label for m in self.models]
        for what, values in (("--data name", names), ("--model label", labels)):
            dup = sorted({v for v in values if values.count(v) > 1})
            if dup:
                raise ValueError(f"two datasets or models share the {what} {dup[0]!r}: give each its own (LABEL=...)")
        self.protocol_configs()  # an option a protocol does not know fails here

    # -- parts --------------------------------------------------------------------
    def data_specs(self) -> list[DataSpec]:
        return [DataSpec.parse(d) for d in self.data]

    def model_specs(self) -> list[ModelSpec]:
        return [ModelSpec.parse(m) for m in self.models]

    def selection(self) -> Selection:
        return Selection(self.sample, self.seed, self.min_area, self.max_objects)

    def protocol_configs(self) -> dict[str, Any]:
        """protocol name -> its config dataclass built from ``options``."""
        out = {}
        for name in self.protocols:
            cls = protocol_class(name).Config
            opts = dict(self.options.get(name) or {})
            known = {f.name for f in dataclasses.fields(cls)}
            bad = sorted(set(opts) - known)
            if bad:
                raise ValueError(f"protocol {name} has no option {bad[0]!r}; its options: {', '.join(sorted(known))}")
            out[name] = cls(**opts)
        return out

    # -- files --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["options"] = {name: dataclasses.asdict(cfg) for name, cfg in self.protocol_configs().items()}
        return d

    def save(self, folder: str | Path) -> Path:
        return io.save_text(yaml.safe_dump(self.to_dict(), sort_keys=False), Path(folder) / CONFIG_FILE)

    @classmethod
    def load(cls, path: str | Path) -> BenchConfig:
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"bench config {path} not found")
        d = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{path}: unknown setting {unknown[0]!r}")
        return cls(**{"streams": "model_image", **d})  # saved before streams existed: as it ran

    def differences(self, other: BenchConfig) -> list[str]:
        """Settings that change what is measured (not :data:`HOW_FIELDS`) and differ."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in HOW_FIELDS and a[k] != b[k]]
