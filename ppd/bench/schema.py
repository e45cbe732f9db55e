"""What a benchmark measures: the tidy row layout, one work unit and its result.

A work unit is one model on one image under one protocol. Its result is a list of
:class:`Row` values (one per measured number) and a few :class:`Example` overlays; the
runner adds the unit's model, domain, protocol and image to every row, so a protocol only
says what it measured.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: Columns of ``results.parquet``, in order. ``method`` names what a protocol compares
#: within one model (a refiner, an uncertainty estimate, the click rule), ``condition``
#: what it perturbs (``clean`` when nothing).
COLUMNS = ("model", "domain", "protocol", "method", "image", "object", "condition", "metric", "value")
CLEAN = "clean"


@dataclass(frozen=True)
class Unit:
    """One model x image x protocol: the grain at which work is stored and resumed."""

    model: str
    domain: str
    index: int  # position of the image in its domain's item list
    image: str  # the image's id within its domain (file stem, COCO file name, scene seed)
    protocol: str

    def _digest(self, per_model: bool = True) -> str:
        """16 hex digits of the unit's names (the model's only with ``per_model``)."""
        names = [self.model] * per_model + [self.domain, self.image, self.protocol]
        return hashlib.sha1("\0".join(names).encode()).hexdigest()[:16]

    @property
    def key(self) -> str:
        """A file-safe, stable name of the unit."""
        return f"{self.protocol}-{self._digest()}"

    def seed(self, seed: int, per_model: bool = False) -> np.random.Generator:
        """The unit's own random stream: the same whatever order or process runs it, and
        the same for every model of a run (it depends on the image and the protocol, not
        on the model), so models are compared on the same random prompts: the same
        coarse sets, clicks, corruption noise and attack starts. ``per_model``: the
        model's name too (``ppd bench`` runs saved without ``streams``)."""
        return np.random.default_rng([seed, int(self._digest(per_model), 16)])


@dataclass
class Row:
    """One measured value of a unit."""

    method: str
    object: int
    metric: str
    value: float
    condition: str = CLEAN


@dataclass
class Example:
    """A prediction to draw in the report's overlay grid: the prompts, the mask (COCO
    RLE, see :func:`encode_mask`) and the value it is ranked by (worst first); for a
    refiner, also the prompts it was given (``input_points``)."""

    method: str
    object: int
    metric: str
    value: float
    points: list[list[float]]  # [x, y, label] per prompt point
    mask: dict[str, Any]
    condition: str = CLEAN
    box: list[float] | None = None
    input_points: list[list[float]] | None = None  # a refiner's input set, [x, y, label] per point


@dataclass
class UnitResult:
    """What a protocol returns for one unit. ``skipped`` holds the reason when the unit
    could not be measured (a bad image found late): it is counted, not fatal."""

    rows: list[Row] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    skipped: str | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": [[r.method, r.object, r.condition, r.metric, _finite_or_none(r.value)] for r in self.rows],
            "examples": [asdict(e) for e in self.examples],
            "skipped": self.skipped,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> UnitResult:
        rows = [Row(method=m, object=int(o), condition=c, metric=k, value=float("nan") if v is None else float(v))
                for m, o, c, k, v in d["rows"]]
        return cls(rows, [Example(**e) for e in d.get("examples", [])], d.get("skipped"), float(d.get("seconds", 0.0)))


def _finite_or_none(v: float) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """A bool (H, W) mask as COCO RLE (``{"size": [H, W], "counts": str}``): a few KB
    even for large images, and readable by any COCO tool."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_mask(rle: dict[str, Any]) -> np.ndarray:
    """The bool mask of :func:`encode_mask`."""
    import warnings

    from pycocotools import mask as mask_utils

    with warnings.catch_warnings():  # pycocotools' decode predates numpy 2's copy keyword
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


def prompt_points(coords: np.ndarray, labels: np.ndarray) -> list[list[float]]:
    """``[x, y, label]`` rows of a prompt set (padding, label -1, left out)."""
    return [[float(x), float(y), int(lab)] for (x, y), lab in zip(np.asarray(coords).reshape(-1, 2), np.ravel(labels)) if lab >= 0]
