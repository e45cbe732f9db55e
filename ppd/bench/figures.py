"""The report's figures: curves, bars with intervals, reliability, risk-coverage, overlays.

Every function draws one PNG with matplotlib's object-oriented API on the Agg canvas (no
pyplot, no global backend switch, nothing shown) and returns its path, or None when the
data hold nothing to draw. Colours follow the order of the systems in the summary, so a
system has the same colour in every figure of a protocol.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ppd.bench.schema import decode_mask
from ppd.bench.stats import ALL, SYSTEM, split_system_key, system_key
from ppd.viz import outline

log = logging.getLogger(__name__)

DPI = 100
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
FALSE_POSITIVE = np.array([230, 40, 40], np.float32)
FALSE_NEGATIVE = np.array([40, 90, 235], np.float32)
MASK = np.array([190, 40, 255], np.float32)  # violet: rare in photos, unlike the FP red and FN blue
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _suptitle(fig: Figure, text: str) -> None:
    """A figure title wrapped to the figure's width (a one-panel figure is narrow)."""
    import textwrap

    fig.suptitle(textwrap.fill(text, width=max(20, int(fig.get_figwidth() * 11))))


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    log.debug("wrote %s", path)
    return path


def _label(key: str) -> str:
    """A system's legend label: ``model · method`` (and the condition unless clean)."""
    model, method, condition = split_system_key(key)
    return f"{model} · {method}" + ("" if condition == "clean" else f" · {condition}")


def _domains(summary_p: dict[str, Any]) -> list[str]:
    """The domain panels: every domain, plus "all" when there are several."""
    domains = [d for d in summary_p if d != ALL]
    return domains + [ALL] if len(domains) > 1 else domains


def _systems(summary_p: dict[str, Any]) -> list[str]:
    return list(summary_p.get(ALL, {}))


def _panels(n: int, width: float = 4.2, height: float = 3.3, cols: int = 3) -> tuple[Figure, list]:
    cols = min(cols, n)
    rows = -(-n // cols)
    fig = _figure(width * cols, height * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _legend_below(fig: Figure, ax: Any, n: int) -> None:
    """One legend for all panels, under them (it never hides a bar or a line)."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(n, 4), fontsize=9, frameon=False)


def _nan(v: float | None) -> float:
    return np.nan if v is None else float(v)


def curve_figure(summary_p: dict[str, Any], protocol: Any, path: Path) -> Path | None:
    """Metric versus x (IoU versus clicks): one panel per domain, one line per system
    with its 95% interval as a band."""
    if not getattr(protocol, "curve", None):
        return None
    prefix, xlabel = protocol.curve
    domains, systems = _domains(summary_p), _systems(summary_p)
    fig, axes = _panels(len(domains))
    drawn = False
    for ax, domain in zip(axes, domains):
        for ci, key in enumerate(systems):
            cells = summary_p[domain].get(key, {})
            ks = sorted(int(m[len(prefix):]) for m in cells if m.startswith(prefix) and m[len(prefix):].isdigit())
            if not ks:
                continue
            get = lambda f: np.array([_nan(cells[f"{prefix}{k}"][f]) for k in ks])  # noqa: E731
            color = COLORS[ci % len(COLORS)]
            ax.plot(ks, get("value"), "-o", ms=3, color=color, label=_label(key))
            ax.fill_between(ks, get("ci_low"), get("ci_high"), color=color, alpha=0.2, lw=0)
            drawn = True
        ax.set_title(domain)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(prefix.rstrip("@_"))
        ax.grid(alpha=0.3)
    if not drawn:
        return None
    _legend_below(fig, axes[0], len(systems))
    _suptitle(fig, f"{protocol.title or protocol.name}: {prefix.rstrip('@_')} versus {xlabel} (band: 95% CI)")
    return _save(fig, path)


def bar_metrics(protocol: Any, metrics_present: set[str]) -> list[str]:
    """The bar chart's metrics: the first table metric and, when there is one, the first
    later one that runs the other way (lower versus higher is better), else the second."""
    table = [m for m in getattr(protocol, "table_metrics", ()) if m in metrics_present]
    if not table:
        return []
    lower = getattr(protocol, "lower_is_better", frozenset())
    other = [m for m in table[1:] if (m in lower) != (table[0] in lower)]
    return [table[0]] + (other[:1] or table[1:2])


def bar_figure(summary_p: dict[str, Any], protocol: Any, path: Path) -> Path | None:
    """Per-domain bars of one or two table metrics, one bar per system, 95% CI whiskers."""
    domains, systems = _domains(summary_p), _systems(summary_p)
    present = {m for d in summary_p.values() for cells in d.values() for m in cells}
    metrics = bar_metrics(protocol, present)
    if not metrics or not systems:
        return None
    fig, axes = _panels(len(metrics), width=max(4.5, 1.0 + 0.5 * len(domains) * len(systems)), height=3.6, cols=2)
    width = 0.8 / len(systems)
    x = np.arange(len(domains))
    lower = getattr(protocol, "lower_is_better", frozenset())
    for ax, metric in zip(axes, metrics):
        for ci, key in enumerate(systems):
            cells = [summary_p[d].get(key, {}).get(metric) for d in domains]
            v, lo, hi = (np.array([_nan(c[f]) if c else np.nan for c in cells]) for f in ("value", "ci_low", "ci_high"))
            err = np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)])
            ax.bar(x + (ci - (len(systems) - 1) / 2) * width, v, width, yerr=np.nan_to_num(err), capsize=3,
                   color=COLORS[ci % len(COLORS)], label=_label(key))
        ax.set_xticks(x, domains, rotation=30, ha="right")
        ax.set_title(f"{metric} ({'lower' if metric in lower else 'higher'} is better)")
        ax.grid(axis="y", alpha=0.3)
    _legend_below(fig, axes[0], len(systems))
    _suptitle(fig, f"{protocol.title or protocol.name}: per domain (whiskers: 95% CI)")
    return _save(fig, path)


def histograms(results_p: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """Histogram rows ``prefix + kind@bin`` summed over objects: one row per domain,
    system and bin, one column per kind (count, conf, hit), bins 0..B-1 in order."""
    rows = results_p[results_p["metric"].str.startswith(prefix)]
    if rows.empty:
        return pd.DataFrame()
    kind_bin = rows["metric"].str[len(prefix):].str.split("@", n=1, expand=True)
    rows = rows.assign(kind=kind_bin[0], bin=pd.to_numeric(kind_bin[1], errors="coerce"))
    rows = rows.dropna(subset=["bin"]).astype({"bin": int})
    table = rows.pivot_table(index=["domain", *SYSTEM, "bin"], columns="kind", values="value", aggfunc="sum",
                             sort=False).reset_index()
    return table.sort_values(["domain", *SYSTEM, "bin"], kind="stable")


def _systems_of(hist: pd.DataFrame, order: list[str]) -> list[str]:
    keys = list(dict.fromkeys(system_key(*s) for s in zip(*(hist[c] for c in SYSTEM))))
    return sorted(keys, key=lambda k: order.index(k) if k in order else len(order))


def _pooled(hist: pd.DataFrame, key: str, domain: str | None = None) -> pd.DataFrame:
    model, method, condition = split_system_key(key)
    sel = (hist["model"] == model) & (hist["method"] == method) & (hist["condition"] == condition)
    if domain is not None:
        sel &= hist["domain"] == domain
    return hist[sel].groupby("bin").sum(numeric_only=True).sort_index()


def reliability_figure(results_p: pd.DataFrame, protocol: Any, path: Path, order: list[str]) -> Path | None:
    """Reliability diagrams: one panel per system, all domains pooled (bars: the fraction
    of foreground pixels per confidence bin; the gap to the diagonal is miscalibration),
    one thin line per domain when there are several. ECE in each panel's title."""
    prefix = getattr(protocol, "reliability", None)
    hist = histograms(results_p, prefix) if prefix else pd.DataFrame()
    if hist.empty or not {"count", "conf", "hit"} <= set(hist.columns):
        return None
    keys = _systems_of(hist, order)
    domains = list(pd.unique(hist["domain"]))
    fig, axes = _panels(len(keys), width=3.6, height=3.6)
    for ax, key in zip(axes, keys):
        h = _pooled(hist, key)
        n_bins = int(h.index.max()) + 1
        edges = np.linspace(0, 1, n_bins + 1)
        centres = (edges[:-1] + edges[1:]) / 2
        count = h["count"].reindex(range(n_bins), fill_value=0).to_numpy(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = h["hit"].reindex(range(n_bins), fill_value=0).to_numpy(float) / count
            conf = h["conf"].reindex(range(n_bins), fill_value=0).to_numpy(float) / count
        ok = count > 0
        ece = float(np.sum(count[ok] / count.sum() * np.abs(acc[ok] - conf[ok]))) if ok.any() else np.nan
        ax.bar(centres[ok], acc[ok], 1 / n_bins, color=COLORS[order.index(key) % len(COLORS)] if key in order else "C0",
               edgecolor="white", label="all domains")
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
        if len(domains) > 1:
            for di, domain in enumerate(domains):
                hd = _pooled(hist, key, domain)
                with np.errstate(invalid="ignore", divide="ignore"):
                    acc_d = (hd["hit"] / hd["count"]).where(hd["count"] > 0)
                ax.plot(centres[hd.index.to_numpy()], acc_d.to_numpy(), "-", lw=1, marker=".",
                        color=str(0.15 + 0.6 * di / max(1, len(domains) - 1)), label=domain)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("foreground probability")
        ax.set_ylabel("fraction foreground")
        ax.set_title(f"{_label(key)}\nECE {ece:.3f}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    _suptitle(fig, f"{protocol.title or protocol.name}: reliability")
    return _save(fig, path)


def risk_coverage(count: np.ndarray, hit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and risk when keeping the most confident bins first (bin 0 is the least
    confident): accumulated from the last bin down, empty bins left out."""
    count, hit = np.asarray(count, float)[::-1], np.asarray(hit, float)[::-1]
    keep = count > 0
    cum_n, cum_hit = np.cumsum(count)[keep], np.cumsum(hit)[keep]
    if not cum_n.size:
        return np.zeros(0), np.zeros(0)
    return cum_n / cum_n[-1], 1 - cum_hit / cum_n


def risk_coverage_figure(results_p: pd.DataFrame, protocol: Any, path: Path, order: list[str]) -> Path | None:
    """Risk (error rate of the kept pixels) versus coverage (fraction kept, most
    confident first): one panel per domain (and all), one line per system, AURC in the
    legend (lower is better)."""
    prefix = getattr(protocol, "risk_coverage", None)
    hist = histograms(results_p, prefix) if prefix else pd.DataFrame()
    if hist.empty or not {"count", "hit"} <= set(hist.columns):
        return None
    keys = _systems_of(hist, order)
    domains = list(pd.unique(hist["domain"]))
    panels = domains + [ALL] if len(domains) > 1 else domains
    fig, axes = _panels(len(panels))
    for ax, domain in zip(axes, panels):
        for key in keys:
            h = _pooled(hist, key, None if domain == ALL else domain)
            if h.empty:
                continue
            n_bins = int(h.index.max()) + 1
            cov, risk = risk_coverage(h["count"].reindex(range(n_bins), fill_value=0),
                                      h["hit"].reindex(range(n_bins), fill_value=0))
            if not cov.size:
                continue
            aurc = float(_trapezoid(np.r_[risk[0], risk], np.r_[0.0, cov]))
            color = COLORS[order.index(key) % len(COLORS)] if key in order else None
            ax.plot(cov, risk, "-o", ms=2, color=color, label=f"{_label(key)} (AURC {aurc:.3f})")
        ax.set_title(domain)
        ax.set_xlabel("coverage")
        ax.set_ylabel("risk")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _suptitle(fig, f"{protocol.title or protocol.name}: risk versus coverage")
    return _save(fig, path)


def pick_examples(examples: list[tuple[Any, Any]], protocol: Any, n_worst: int = 4, n_median: int = 2,
                  name: str | None = None) -> list[tuple[str, Any, Any]]:
    """``(tag, unit, example)`` rows of the overlay grid: of the examples of protocol
    ``name`` (default ``protocol.name``), the ``n_worst`` worst by the protocol's example
    metric (lowest, or highest when lower is better) and ``n_median`` around the median,
    ties broken by model, domain, image, method, object (deterministic)."""
    metric = getattr(protocol, "example_metric", None)
    name = name or protocol.name
    pool = [(u, e) for u, e in examples if u.protocol == name and np.isfinite(e.value)]
    if any(e.metric == metric for _, e in pool):
        pool = [(u, e) for u, e in pool if e.metric == metric]
    sign = -1.0 if metric in getattr(protocol, "lower_is_better", frozenset()) else 1.0
    pool.sort(key=lambda ue: (sign * ue[1].value, ue[0].model, ue[0].domain, ue[0].image, ue[1].method, ue[1].object))
    worst = pool[:n_worst]
    rest = pool[n_worst:]
    mid = max(0, len(rest) // 2 - n_median // 2)
    return [("worst", u, e) for u, e in worst] + [("median", u, e) for u, e in rest[mid:mid + n_median]]


def _tint(image: np.ndarray, mask: np.ndarray, color: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    out = image.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * color
    return out


def examples_figure(examples: list[tuple[Any, Any]], protocol: Any, load_scene: Callable[[str, str], Any],
                    path: Path, n_worst: int = 4, n_median: int = 2, name: str | None = None) -> Path | None:
    """The overlay grid: per example the image, the prompts (green + positive, red x
    negative, the box if any; a refiner's input set), the predicted mask with the prompts
    it came from (a refiner's output set) and its error (false positives red, false
    negatives blue), titled with model, domain, image, object and the value."""
    picked = pick_examples(examples, protocol, n_worst, n_median, name)
    scenes: dict[tuple[str, str], Any] = {}
    rows = []
    for tag, unit, ex in picked:
        key = (unit.domain, unit.image)
        if key not in scenes:
            scenes[key] = load_scene(*key)
        scene = scenes[key]
        pred = decode_mask(ex.mask)
        if pred.shape != scene.image.shape[:2] or not 0 <= ex.object < scene.masks.shape[0]:
            log.warning("example %s/%s object %d does not fit its scene; left out", unit.domain, unit.image, ex.object)
            continue
        rows.append((tag, unit, ex, scene.image, pred, scene.masks[ex.object]))
    if not rows:
        return None
    fig = _figure(11.0, 2.9 * len(rows))
    axes = fig.subplots(len(rows), 4, squeeze=False)
    heads = ("image", "prompts", "prediction", "error: FP red, FN blue")
    for r, (tag, unit, ex, image, pred, gt) in enumerate(rows):
        dim = image.astype(np.float32) * 0.55 + 255 * 0.45 * 0.5
        shown = _tint(image, pred, MASK, 0.45)
        shown[outline(pred)] = MASK
        panels = (image, image, shown,
                  _tint(_tint(dim, pred & ~gt, FALSE_POSITIVE, 0.85), gt & ~pred, FALSE_NEGATIVE, 0.85))
        for c, (ax, panel) in enumerate(zip(axes[r], panels)):
            ax.imshow(np.clip(panel, 0, 255).astype(np.uint8), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 1:
                _draw_prompts(ax, ex.points if ex.input_points is None else ex.input_points, ex.box, image.shape[:2])
            elif c == 2:
                _draw_prompts(ax, ex.points, ex.box, image.shape[:2])
            if r == 0:
                ax.set_title(heads[c], fontsize=9, fontweight="bold", pad=14)
        axes[r][0].set_ylabel(f"{tag}\n{unit.model}\n{unit.domain}", fontsize=8)
        method = ex.method if ex.condition == "clean" else f"{ex.method} · {ex.condition}"
        if ex.input_points is None:
            axes[r][1].set_xlabel(f"image {unit.image}, object {ex.object}", fontsize=8)
            axes[r][2].set_xlabel(method, fontsize=8)
        else:  # a refiner: its input set, then what it kept
            axes[r][1].set_xlabel(f"image {unit.image}, object {ex.object}: {len(ex.input_points)} given", fontsize=8)
            axes[r][2].set_xlabel(f"{method}: {len(ex.points)} kept", fontsize=8)
        axes[r][3].set_xlabel(f"{ex.metric} = {ex.value:.3f}", fontsize=8)
    _suptitle(fig, f"{protocol.title or protocol.name}: worst and median examples")
    return _save(fig, path)


def _draw_prompts(ax: Any, points: list, box: list | None, hw: tuple[int, int]) -> None:
    """Prompt points (``[x, y, label]`` rows: white-edged green + / red x) and the box,
    axes kept to the image."""
    size = 11.0  # points: the same on every tile, whatever the image size
    pts = np.asarray(points, float).reshape(-1, 3)
    for label, marker, color in ((1, "+", "#22dd44"), (0, "x", "#ff2222")):
        p = pts[pts[:, 2] == label]
        if p.size:
            ax.plot(p[:, 0], p[:, 1], marker, ms=size, mew=3.5, color="white", ls="none")
            ax.plot(p[:, 0], p[:, 1], marker, ms=size, mew=2.0, color=color, ls="none")
    if box is not None:
        x0, y0, x1, y1 = box
        ax.plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], "-", color="#22dd44", lw=1.5)
    ax.set_xlim(-0.5, hw[1] - 0.5)
    ax.set_ylim(hw[0] - 0.5, -0.5)


def protocol_figures(fig_dir: Path, name: str, protocol: Any, results_p: pd.DataFrame, summary_p: dict[str, Any],
                     examples: list[tuple[Any, Any]], load_scene: Callable[[str, str], Any]) -> dict[str, Path]:
    """Every figure of one protocol that its data allow, as ``{kind: path}`` with kinds
    curve, bars, reliability, risk_coverage and examples (in that order)."""
    order = _systems(summary_p)
    made = {
        "curve": curve_figure(summary_p, protocol, fig_dir / f"{name}_curve.png"),
        "bars": bar_figure(summary_p, protocol, fig_dir / f"{name}_bars.png"),
        "reliability": reliability_figure(results_p, protocol, fig_dir / f"{name}_reliability.png", order),
        "risk_coverage": risk_coverage_figure(results_p, protocol, fig_dir / f"{name}_risk_coverage.png", order),
        "examples": examples_figure(examples, protocol, load_scene, fig_dir / f"{name}_examples.png", name=name),
    }
    return {k: p for k, p in made.items() if p is not None}
