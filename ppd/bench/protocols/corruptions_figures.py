"""Figures of the corruptions protocol: mIoU versus severity, and one image under all 15.

:func:`severity_figure` draws, per corruption, the mean of a metric over objects against
the severity (0 = the clean image), one line per model, from a results table.
:func:`corruption_grid` shows one image clean and under every corruption at one severity.
Both save a PNG and return its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ppd.bench.protocols.corruptions import CORRUPTION_NAMES, CorruptionsProtocol, parse_condition
from ppd.bench.schema import CLEAN

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _figure(w: float, h: float):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=110)


def severity_figure(results: Any, path: str | Path, metric: str = "iou") -> Path | None:
    """``metric`` (mean over objects and domains) versus severity per corruption, one
    line per model; severity 0 is the clean condition. None when the table holds no
    corrupted rows of ``metric``."""
    df = results[results["metric"] == metric]
    if "protocol" in df.columns:
        df = df[df["protocol"] == CorruptionsProtocol.name]
    parsed = df["condition"].map(parse_condition)
    keep = parsed.notna() | (df["condition"] == CLEAN)
    df = df[keep].assign(corruption=parsed[keep].map(lambda p: p[0] if p else CLEAN),
                         severity=parsed[keep].map(lambda p: p[1] if p else 0))
    names = [n for n in CORRUPTION_NAMES if n in set(df["corruption"])]
    if not names:
        return None
    models = sorted(df["model"].unique())
    means = df.groupby(["model", "corruption", "severity"])["value"].mean()
    clean = df[df["corruption"] == CLEAN].groupby("model")["value"].mean()
    cols = min(5, len(names))
    rows = -(-len(names) // cols)
    fig = _figure(2.6 * cols, 2.3 * rows + 0.9)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)).ravel()
    for ax, name in zip(axes, names):
        for ci, model in enumerate(models):
            xs, ys = ([0], [clean[model]]) if model in clean.index else ([], [])
            if (model, name) in means.index:
                part = means.loc[(model, name)]
                xs, ys = xs + [int(s) for s in part.index], ys + [float(v) for v in part.values]
            ax.plot(xs, ys, "-o", ms=3, color=COLORS[ci % len(COLORS)], label=model)
        ax.set_title(name.replace("_", " "), fontsize=9)
        ax.set_xticks(range(6))
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    for ax in axes[(rows - 1) * cols:]:
        ax.set_xlabel("severity (0: clean)", fontsize=8)
    for ax in axes[::cols]:
        ax.set_ylabel(f"mean {metric}", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(models), 6), fontsize=8, frameon=False)
    fig.suptitle(f"Common corruptions: mean {metric} versus severity (fixed prompts)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, path)


def corruption_grid(image: np.ndarray, path: str | Path, severity: int = 3, seed: int = 0,
                    corruptions: tuple[str, ...] = CORRUPTION_NAMES) -> Path:
    """``image`` clean and under each corruption at ``severity`` (corruption i drawn from
    ``np.random.default_rng([seed, i])``), in a grid of 4 columns."""
    from ppd.robustness.corruptions import corrupt

    tiles = [("clean", np.asarray(image))]
    tiles += [(f"{n.replace('_', ' ')} / {severity}", corrupt(image, n, severity, rng=np.random.default_rng([seed, i])))
              for i, n in enumerate(corruptions)]
    cols = 4
    rows = -(-len(tiles) // cols)
    h, w = tiles[0][1].shape[:2]
    fig = _figure(cols * 2.6, rows * 2.6 * h / w + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (title, tile) in zip(axes, tiles):
        ax.imshow(tile, interpolation="nearest")
        ax.set_title(title, fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(tiles):]:
        ax.set_visible(False)
    fig.suptitle(f"The {len(corruptions)} common corruptions at severity {severity}")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
