"""Paired-bootstrap confidence intervals of the benchmark's tables (``summary.json``).

A *system* is one ``(model, method, condition)`` of a protocol; an *item* is one measured
object, ``(image, object)`` within a domain and ``(domain, image, object)`` over all
domains (then resampled within each domain, so every domain keeps its size). Every system
is resampled with the same item indices (paired), so the interval of a difference between
two systems measured on the same objects is much narrower than the two intervals suggest.
Intervals are percentile intervals; everything is seeded and vectorised: the resamples of
a block of bootstrap replicates are one integer array, their statistics one matrix product.
"""

from __future__ import annotations

import json
import logging
import warnings
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

SYSTEM = ("model", "method", "condition")
ALL = "all"  # the key of the all-domains aggregate in the summary
STATS = ("mean", "sum")
_BLOCK_CELLS = 4_000_000  # replicates x items per block of resampling weights (32 MB of float64)


def system_key(model: str, method: str, condition: str) -> str:
    """The summary's name of a system: ``"model/method/condition"``."""
    return f"{model}/{method}/{condition}"


def split_system_key(key: str) -> tuple[str, str, str]:
    """``(model, method, condition)`` of :func:`system_key` (a model name may hold ``/``)."""
    model, method, condition = key.rsplit("/", 2)
    return model, method, condition


def condition_references(conditions: Sequence[str]) -> list[int]:
    """Per system (given by its condition, in the summary's order), the index of the
    system its difference is taken to: the first system of the same condition."""
    first: dict[str, int] = {}
    return [first.setdefault(c, i) for i, c in enumerate(conditions)]


def histogram_prefixes(protocol: Any) -> tuple[str, ...]:
    """Metric prefixes of a protocol's histogram rows (reliability, risk-coverage)."""
    return tuple(p for p in (getattr(protocol, "reliability", None), getattr(protocol, "risk_coverage", None)) if p)


def resample_weights(strata: Sequence[int], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, sum(strata)) float64: how often each item is drawn in each replicate.

    Items are laid out stratum after stratum; each replicate draws ``strata[i]`` items
    with replacement from stratum ``i`` (one stratum: the ordinary bootstrap).
    """
    sizes = np.asarray(strata, dtype=np.int64)
    n = int(sizes.sum())
    if n == 0:
        return np.zeros((n_boot, 0))
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    idx = np.concatenate([o + rng.integers(0, s, (n_boot, s)) for o, s in zip(offsets, sizes) if s > 0], axis=1)
    flat = idx + (np.arange(n_boot, dtype=np.int64) * n)[:, None]
    return np.bincount(flat.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def _boot_sums(values: np.ndarray, present: np.ndarray, strata: Sequence[int], n_boot: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per replicate and column the resampled sum of the present values and their count:
    two (n_boot, k) arrays. Replicates are drawn in blocks to bound memory."""
    n = values.shape[0]
    block = max(1, min(n_boot, _BLOCK_CELLS // max(n, 1)))
    sums, counts = [], []
    for start in range(0, n_boot, block):
        w = resample_weights(strata, min(block, n_boot - start), rng)
        sums.append(w @ values)
        counts.append(w @ present)
    return np.concatenate(sums), np.concatenate(counts)


def _check(stat: str, level: float) -> None:
    if stat not in STATS:
        raise ValueError(f"stat must be one of {STATS}, got {stat!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _interval(boot: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    q = [(1 - level) / 2, (1 + level) / 2]
    if not np.isnan(boot).any():
        return tuple(np.quantile(boot, q, axis=0))
    with warnings.catch_warnings():  # an all-missing column has no interval: NaN, no warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return tuple(np.nanquantile(boot, q, axis=0))


def _paired(x: np.ndarray, is_sum: np.ndarray, strata: Sequence[int], n_boot: int, rng: np.random.Generator,
            level: float, reference: int | Sequence[int] = 0) -> dict[str, np.ndarray]:
    """The paired bootstrap of ``x`` (items, metrics, systems), NaN = not measured.

    Returns (metrics, systems) arrays: value, ci_low, ci_high, n, delta, delta_low,
    delta_high (the difference to system ``reference`` on the items both have;
    ``reference`` may give each system its own).
    """
    n, m, s = x.shape
    refs = np.full(s, reference) if np.ndim(reference) == 0 else np.asarray(reference, np.int64)
    d = x - x[:, :, refs]
    both = np.concatenate([x.reshape(n, -1), d.reshape(n, -1)], axis=1)
    present = ~np.isnan(both)
    filled = np.where(present, both, 0.0)
    present = present.astype(np.float64)
    summed = np.tile(np.repeat(np.asarray(is_sum, bool), s), 2)
    boot_sum, boot_n = _boot_sums(filled, present, strata, n_boot, rng)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = np.where(summed, boot_sum, boot_sum / boot_n)
        count = present.sum(0)
        point = np.where(summed, filled.sum(0), filled.sum(0) / count)
    point = np.where(count > 0, point, np.nan)
    boot[:, count == 0] = np.nan
    lo, hi = _interval(boot, level)
    k = m * s

    def shape(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return a[:k].reshape(m, s), a[k:].reshape(m, s)

    (value, delta), (low, d_low), (high, d_high), (cnt, _) = shape(point), shape(lo), shape(hi), shape(count)
    return {"value": value, "ci_low": low, "ci_high": high, "n": cnt.astype(np.int64),
            "delta": delta, "delta_low": d_low, "delta_high": d_high}


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                 stat: str = "mean") -> tuple[float, float, float]:
    """``(estimate, low, high)``: the ``stat`` (mean or sum) of ``values`` (NaN left out)
    and its percentile bootstrap interval at ``level``."""
    r = paired_bootstrap(np.asarray(values, np.float64)[:, None], n_boot=n_boot, seed=seed, level=level, stat=stat)
    return float(r["value"][0]), float(r["ci_low"][0]), float(r["ci_high"][0])


def paired_bootstrap(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                     stat: str = "mean", reference: int = 0, strata: Sequence[int] | None = None,
                     ) -> dict[str, np.ndarray]:
    """The paired bootstrap of several systems measured on the same items.

    Args:
        values: (items, systems); NaN where a system has no value for an item.
        strata: sizes of consecutive item groups resampled separately (default: one).
        reference: the column differences are taken to.

    Returns:
        (systems,) arrays ``value, ci_low, ci_high, n`` (the stat of each system and its
        interval, n its items) and ``delta, delta_low, delta_high`` (the stat of
        ``system - reference`` on the items both have; 0 for the reference itself).
    """
    _check(stat, level)
    x = np.asarray(values, np.float64)
    if x.ndim != 2:
        raise ValueError(f"values must be (items, systems), got shape {x.shape}")
    strata = [x.shape[0]] if strata is None else list(strata)
    if sum(strata) != x.shape[0]:
        raise ValueError(f"strata sizes sum to {sum(strata)}, values have {x.shape[0]} items")
    rng = np.random.default_rng(seed)
    r = _paired(x[:, None, :], np.array([stat == "sum"]), strata, n_boot, rng, level, reference)
    return {k: v[0] for k, v in r.items()}


def _metric_order(metrics: list[str], protocol: Any) -> list[str]:
    """Table metrics first, then the curve by its x, then the rest as they appear."""
    table = [m for m in getattr(protocol, "table_metrics", ()) if m in metrics]
    curve = getattr(protocol, "curve", None)
    on_curve = []
    if curve:
        on_curve = sorted((m for m in metrics if m.startswith(curve[0]) and m[len(curve[0]):].isdigit()),
                          key=lambda m: int(m[len(curve[0]):]))
    seen = set(table)
    ordered = table + [m for m in on_curve if m not in seen]
    seen.update(ordered)
    return ordered + [m for m in metrics if m not in seen]


def _block_rng(seed: int, protocol: str, domain: str) -> np.random.Generator:
    """A stream per protocol and domain: a table's intervals do not depend on which
    other protocols or domains the run had."""
    return np.random.default_rng([seed, zlib.crc32(protocol.encode()), zlib.crc32(domain.encode())])


def _cube(df: pd.DataFrame, item_cols: list[str], metrics: list[str], systems: list[tuple]) -> tuple[np.ndarray, list[int]]:
    """(items, metrics, systems) values of ``df`` (duplicate rows averaged) and the strata
    sizes (items sorted, so grouped by domain when ``item_cols`` starts with it)."""
    items = df.groupby(item_cols, sort=True).ngroup().to_numpy()
    n_items = int(items.max()) + 1 if len(items) else 0
    m_code = pd.Categorical(df["metric"], categories=metrics).codes.astype(np.int64)
    s_index = pd.MultiIndex.from_tuples(systems, names=SYSTEM)
    s_code = s_index.get_indexer(pd.MultiIndex.from_frame(df[list(SYSTEM)])).astype(np.int64)
    v = df["value"].to_numpy(np.float64)
    ok = ~np.isnan(v)
    flat = ((items * len(metrics) + m_code) * len(systems) + s_code)[ok]
    size = n_items * len(metrics) * len(systems)
    total = np.bincount(flat, weights=v[ok], minlength=size)
    count = np.bincount(flat, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        cube = np.where(count > 0, total / count, np.nan).reshape(n_items, len(metrics), len(systems))
    if item_cols[0] == "domain":
        strata = df.drop_duplicates(item_cols).groupby("domain", sort=True).size().tolist()
    else:
        strata = [n_items]
    return cube, strata


def _json_float(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def summarize(results: pd.DataFrame, protocols: dict[str, Any], n_boot: int = 1000, seed: int = 0,
              level: float = 0.95) -> dict[str, Any]:
    """The content of ``summary.json``.

    ``{protocol: {domain or "all": {system_key: {metric: {value, ci_low, ci_high, n,
    delta, delta_low, delta_high}}}}}``: ``value`` is the mean over objects (the sum for
    a protocol's ``sums`` metrics), exactly ``results.groupby(...).value.mean()``;
    ``delta`` is the difference to the protocol's first system (in order of appearance)
    of the same condition, on the objects both have (so a method under an attack is
    compared with the first method under that attack, not with clean prompts). Histogram metrics (reliability, risk-coverage) are left
    out. Domains, systems and the "all" aggregate keep their order of appearance; NaN
    becomes None so the result is strict JSON.
    """
    _check("mean", level)
    out: dict[str, Any] = {}
    for pname in pd.unique(results["protocol"]):
        protocol = protocols.get(pname)
        df = results[results["protocol"] == pname]
        hist = histogram_prefixes(protocol)
        if hist:
            df = df[~df["metric"].str.startswith(hist)]
        if df.empty:
            continue
        sums = frozenset(getattr(protocol, "sums", ()))
        metrics = _metric_order(list(pd.unique(df["metric"])), protocol)
        is_sum = np.array([m in sums for m in metrics])
        systems = list(dict.fromkeys(zip(*(df[c] for c in SYSTEM))))
        keys = [system_key(*s) for s in systems]
        refs = condition_references([s[2] for s in systems])
        domains = list(pd.unique(df["domain"]))
        out[pname] = {}
        for domain in domains + [ALL]:
            part = df if domain == ALL else df[df["domain"] == domain]
            by = list(SYSTEM) + ["metric"]
            g = part.groupby(by, sort=False)["value"]
            mean, total, count = g.mean(), g.sum(), g.count()
            item_cols = ["domain", "image", "object"] if domain == ALL else ["image", "object"]
            cube, strata = _cube(part, item_cols, metrics, systems)
            boot = _paired(cube, is_sum, strata, n_boot, _block_rng(seed, pname, domain), level, refs)
            table: dict[str, Any] = {}
            for si, (system, key) in enumerate(zip(systems, keys)):
                cells = {}
                for mi, metric in enumerate(metrics):
                    idx = (*system, metric)
                    if idx not in count.index:
                        continue
                    n = int(count[idx])
                    value = (total[idx] if is_sum[mi] else mean[idx]) if n else np.nan
                    cells[metric] = {
                        "value": _json_float(value),
                        "ci_low": _json_float(boot["ci_low"][mi, si]),
                        "ci_high": _json_float(boot["ci_high"][mi, si]),
                        "n": n,
                        "delta": _json_float(boot["delta"][mi, si]),
                        "delta_low": _json_float(boot["delta_low"][mi, si]),
                        "delta_high": _json_float(boot["delta_high"][mi, si]),
                    }
                if cells:
                    table[key] = cells
            out[pname][domain] = table
        log.debug("summarised %s: %d systems x %d metrics over %d domains", pname, len(systems), len(metrics), len(domains))
    return out


def write_summary(path: str | Path, summary: dict[str, Any]) -> Path:
    """Write ``summary`` as strict JSON (no NaN) and return the path."""
    path = Path(path)
    path.write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    return path
