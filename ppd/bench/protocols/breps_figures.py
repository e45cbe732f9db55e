"""The breps protocol's figures: start, worst and best boxes with their masks; IoU-Delta per domain.

Both functions draw one PNG from what ``ppd bench`` stores (the results table and the
units' examples) and return its path, or None when the data hold nothing to draw:

* :func:`box_attack_figure`: for the objects of the largest IoU-Delta@BBox, one row each:
  the start (tight) box, the worst and the best box, each with its mask and IoU;
* :func:`delta_figure`: per series (metric and method) the distribution of IoU-Delta
  over objects, one box per domain and model;
* :func:`points_min_figure`: BREPS's point attack beside the DQN attacker from the same
  ideal sets, mean IoU-Min@Points per domain (bars) and the start's mean IoU (dots).

:func:`breps_figures` makes them, as ``{kind: path}``, for the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ppd.bench.figures import COLORS, MASK, _figure, _save, _tint
from ppd.bench.schema import decode_mask
from ppd.viz import outline

PROTOCOL = "breps"
BOX_METRICS = ("iou_base_bbox", "iou_min_bbox", "iou_max_bbox")
BOX_TITLES = ("start (tight) box", "worst box", "best box")
DELTA_METRICS = ("iou_delta_bbox", "iou_delta_points")
GROUND_TRUTH = np.array([255, 215, 0], np.float32)
#: The point attacks set side by side: (method, legend label), from the same ideal sets.
POINT_ATTACKS = (("breps", "BREPS (gradient)"), ("dqn_attacker", "DQN attacker (learned)"))
DQN_METHOD = "dqn_attacker"


def box_triplets(examples: list[tuple[Any, Any]], protocol: str = PROTOCOL) -> list[tuple[Any, int, dict[str, Any]]]:
    """``(unit, object, {metric: example})`` of every object with all three box examples,
    the largest IoU-Delta first (ties: model, domain, image, object)."""
    found: dict[tuple, dict[str, Any]] = {}
    units: dict[tuple, Any] = {}
    for unit, ex in examples:
        if unit.protocol != protocol or ex.metric not in BOX_METRICS or ex.box is None:
            continue
        key = (unit.model, unit.domain, unit.image, ex.method, ex.object)
        found.setdefault(key, {})[ex.metric] = ex
        units[key] = unit
    done = [(k, v) for k, v in found.items() if len(v) == len(BOX_METRICS)]
    done.sort(key=lambda kv: (-(kv[1]["iou_max_bbox"].value - kv[1]["iou_min_bbox"].value), kv[0]))
    return [(units[k], k[-1], v) for k, v in done]


def box_attack_figure(examples: list[tuple[Any, Any]], load_scene: Callable[[str, str], Any], path: Path,
                      n: int = 4, protocol: str = PROTOCOL) -> Path | None:
    """Rows of the ``n`` objects of the largest IoU-Delta@BBox: the start, worst and best
    box (green) with its mask (violet, outlined) and the object's outline (yellow)."""
    rows = []
    scenes: dict[tuple[str, str], Any] = {}
    for unit, obj, exs in box_triplets(examples, protocol):
        if len(rows) == n:
            break
        key = (unit.domain, unit.image)
        if key not in scenes:
            scenes[key] = load_scene(*key)
        scene = scenes[key]
        masks = [decode_mask(exs[m].mask) for m in BOX_METRICS]
        if masks[0].shape != scene.image.shape[:2] or not 0 <= obj < len(scene.masks):
            continue
        rows.append((unit, obj, exs, scene.image, masks, np.asarray(scene.masks[obj], bool)))
    if not rows:
        return None
    fig = _figure(10.5, 3.2 * len(rows))
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for r, (unit, obj, exs, image, masks, gt) in enumerate(rows):
        for c, (metric, mask) in enumerate(zip(BOX_METRICS, masks)):
            ax = axes[r][c]
            shown = _tint(image, mask, MASK, 0.45)
            shown[outline(mask)] = MASK
            shown[outline(gt)] = GROUND_TRUTH
            ax.imshow(np.clip(shown, 0, 255).astype(np.uint8), interpolation="nearest")
            x0, y0, x1, y1 = exs[metric].box
            ax.plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], "-", color="white", lw=3.0)
            ax.plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], "-", color="#22dd44", lw=1.5)
            h, w = image.shape[:2]
            ax.set_xlim(-0.5, w - 0.5)
            ax.set_ylim(h - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"IoU {exs[metric].value:.3f}", fontsize=9)
            if r == 0:
                ax.set_title(BOX_TITLES[c], fontsize=10, fontweight="bold")
        axes[r][0].set_ylabel(f"{unit.model}\n{unit.domain}\nimage {unit.image}, object {obj}", fontsize=8)
    fig.suptitle("BREPS box attack: the start, worst and best realistic box (mask violet, object yellow)")
    return _save(fig, path)


def delta_figure(results: pd.DataFrame, path: Path, protocol: str = PROTOCOL) -> Path | None:
    """Per series (IoU-Delta metric and method) a panel of IoU-Delta over objects: one
    box per domain and model (whiskers 5th-95th percentile, mean as a dot)."""
    df = results[(results["protocol"] == protocol) & results["metric"].isin(DELTA_METRICS)]
    df = df[np.isfinite(df["value"].astype(float))]
    if df.empty:
        return None
    series = sorted(df.groupby(["metric", "method"]).groups, key=lambda mm: (DELTA_METRICS.index(mm[0]), mm[1]))
    domains = sorted(df["domain"].unique())
    models = list(dict.fromkeys(df["model"]))
    fig = _figure(max(4.0, 1.1 * len(domains) * max(1, len(models)) + 1.5) * min(len(series), 3) / 1.4,
                  3.6 * -(-len(series) // 3))
    axes = fig.subplots(-(-len(series) // 3), min(len(series), 3), squeeze=False).ravel()
    for ax in axes[len(series):]:
        ax.set_visible(False)
    width = 0.8 / max(1, len(models))
    for ax, (metric, method) in zip(axes, series):
        part = df[(df["metric"] == metric) & (df["method"] == method)]
        for m, model in enumerate(models):
            data, pos = [], []
            for d, domain in enumerate(domains):
                v = part[(part["model"] == model) & (part["domain"] == domain)]["value"].to_numpy(float)
                if v.size:
                    data.append(v)
                    pos.append(d + (m - (len(models) - 1) / 2) * width)
            if not data:
                continue
            color = COLORS[m % len(COLORS)]
            ax.boxplot(data, positions=pos, widths=width * 0.85, whis=(5, 95), patch_artist=True, showfliers=False,
                       boxprops={"facecolor": color, "alpha": 0.35, "edgecolor": color},
                       medianprops={"color": color}, whiskerprops={"color": color}, capprops={"color": color})
            ax.plot(pos, [v.mean() for v in data], "o", color=color, ms=4, label=model)
        ax.set_xticks(range(len(domains)))
        ax.set_xticklabels(domains, rotation=20, fontsize=8)
        ax.set_xlim(-0.6, len(domains) - 0.4)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("IoU-Delta (base - min)" if method == DQN_METHOD else "IoU-Delta (max - min)")
        ax.set_title(f"{metric} · {method}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    if len(models) > 1:
        axes[0].legend(fontsize=8, frameon=False)
    fig.suptitle("BREPS: IoU-Delta per object, by domain (box: 25-75%, whiskers: 5-95%, dot: mean)")
    return _save(fig, path)


def points_min_figure(results: pd.DataFrame, path: Path, protocol: str = PROTOCOL) -> Path | None:
    """Per model a panel: per domain the mean IoU-Min@Points of each attack of
    :data:`POINT_ATTACKS` (bars, 95% normal interval over objects) and the mean IoU of
    its start (dots); None without DQN attacker rows."""
    df = results[(results["protocol"] == protocol) & results["metric"].isin(["iou_base_points", "iou_min_points"])
                 & results["method"].isin([m for m, _ in POINT_ATTACKS])]
    if not (df["method"] == DQN_METHOD).any():
        return None
    domains = sorted(df["domain"].unique())
    models = list(dict.fromkeys(df["model"]))
    fig = _figure(max(5.5, 1.3 * len(domains) + 2.5) * len(models), 3.8)
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    width = 0.8 / len(POINT_ATTACKS)
    for ax, model in zip(axes, models):
        for a, (method, label) in enumerate(POINT_ATTACKS):
            color = COLORS[a % len(COLORS)]
            xs, lows, errs, bases = [], [], [], []
            for d, domain in enumerate(domains):
                part = df[(df["model"] == model) & (df["domain"] == domain) & (df["method"] == method)]
                v = part[part["metric"] == "iou_min_points"]["value"].to_numpy(float)
                if not v.size:
                    continue
                xs.append(d + (a - (len(POINT_ATTACKS) - 1) / 2) * width)
                lows.append(v.mean())
                errs.append(1.96 * v.std(ddof=1) / np.sqrt(v.size) if v.size > 1 else 0.0)
                bases.append(part[part["metric"] == "iou_base_points"]["value"].to_numpy(float).mean())
            if not xs:
                continue
            ax.bar(xs, lows, width * 0.9, yerr=errs, color=color, alpha=0.75, capsize=3, label=label)
            ax.plot(xs, bases, "o", color="black", ms=4, label="start" if a == 0 else None)
        ax.set_xticks(range(len(domains)))
        ax.set_xticklabels(domains, rotation=20, fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("mean IoU-Min@Points")
        ax.set_title(model, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, frameon=False, loc="lower left")
    fig.suptitle("Worst point set from the ideal set: BREPS vs the DQN attacker")
    return _save(fig, path)


def breps_figures(fig_dir: Path, results: pd.DataFrame, examples: list[tuple[Any, Any]],
                  load_scene: Callable[[str, str], Any], protocol: str = PROTOCOL) -> dict[str, Path]:
    """The figures, ``{"box_attack": path, "delta": path, "points_min": path}`` (those the data allow)."""
    made = {
        "box_attack": box_attack_figure(examples, load_scene, Path(fig_dir) / f"{protocol}_box_attack.png", protocol=protocol),
        "delta": delta_figure(results, Path(fig_dir) / f"{protocol}_delta.png", protocol=protocol),
        "points_min": points_min_figure(results, Path(fig_dir) / f"{protocol}_points_min.png", protocol=protocol),
    }
    return {k: p for k, p in made.items() if p is not None}
