"""The store of finished work units, and the results table assembled from it.

Each finished unit is one small JSON file under ``OUT/units/<model>/<domain>/``, written
atomically the moment it finishes: a killed run loses at most the units in flight, and
the same command continues from the files. Only the driver process writes here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable

from ppd import io
from ppd.bench.schema import COLUMNS, Example, Unit, UnitResult

logger = logging.getLogger(__name__)

RESULTS_PARQUET = "results.parquet"
RESULTS_CSV = "results.csv"


class UnitStore:
    def __init__(self, out: str | Path) -> None:
        self.root = Path(out) / "units"

    def path(self, unit: Unit) -> Path:
        return self.root / unit.model / unit.domain / f"{unit.key}.json"

    def done(self, unit: Unit) -> bool:
        return self.path(unit).is_file()

    def save(self, unit: Unit, result: UnitResult) -> None:
        record = {"unit": {"model": unit.model, "domain": unit.domain, "index": unit.index, "image": unit.image,
                           "protocol": unit.protocol}, **result.to_json()}
        io.save_text(json.dumps(record, separators=(",", ":"), allow_nan=False), self.path(unit))

    def load(self, unit: Unit) -> UnitResult:
        return UnitResult.from_json(json.loads(self.path(unit).read_text(encoding="utf-8")))


def collect(store: UnitStore, units: Iterable[Unit]):
    """``(results, examples, skipped)`` of ``units`` (in their order): the tidy results
    table (``COLUMNS``), ``(Unit, Example)`` pairs and the skipped units with reasons."""
    import pandas as pd

    columns: dict[str, list] = {c: [] for c in COLUMNS}
    examples: list[tuple[Unit, Example]] = []
    skipped: list[dict[str, str]] = []
    for unit in units:
        res = store.load(unit)
        if res.skipped:
            skipped.append({"model": unit.model, "domain": unit.domain, "image": unit.image, "protocol": unit.protocol,
                            "reason": res.skipped})
        for r in res.rows:
            for c, v in zip(COLUMNS, (unit.model, unit.domain, unit.protocol, r.method, unit.image, r.object,
                                      r.condition, r.metric, r.value)):
                columns[c].append(v)
        examples += [(unit, e) for e in res.examples]
    df = pd.DataFrame(columns)
    df["object"] = df["object"].astype("int64")
    df["value"] = df["value"].astype("float64")
    return df, examples, skipped


def write_results(df, out: str | Path) -> Path:
    """``OUT/results.parquet`` (``results.csv`` when pyarrow is missing), atomically."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        logger.warning("pyarrow is not installed: writing %s instead of %s", RESULTS_CSV, RESULTS_PARQUET)
        return io.atomic_write(Path(out) / RESULTS_CSV, lambda tmp: df.to_csv(tmp, index=False))
    return io.atomic_write(Path(out) / RESULTS_PARQUET, lambda tmp: df.to_parquet(tmp, index=False))


def read_results(out: str | Path):
    """The results table of a bench folder (``results.parquet`` or ``results.csv``)."""
    import pandas as pd

    out = Path(out)
    if (out / RESULTS_PARQUET).is_file():
        return pd.read_parquet(out / RESULTS_PARQUET)
    if (out / RESULTS_CSV).is_file():
        return pd.read_csv(out / RESULTS_CSV, dtype={"image": str})
    raise FileNotFoundError(f"no {RESULTS_PARQUET} or {RESULTS_CSV} in {out}")
