"""The one-shot figure: reference with its mask, target with FM points, target with refined points.

One row per pair: the reference image with its object outlined; the target with the
ground truth outlined and the FM points (positives green, negatives red; a wrong point
drawn as a cross); the target with the refined points and the refined mask tinted.
Drawn with matplotlib's object-oriented API on the Agg canvas, as the report's figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from pathlib import Path

import numpy as np

from ppd.bench.figures import MASK, _figure, _save, _tint
from ppd.viz import outline

POSITIVE, NEGATIVE = "#2ca02c", "#d62728"


@dataclass
class OneShotPanel:
    """What one row of the figure shows."""

    ref_image: np.ndarray
    ref_mask: np.ndarray
    target_image: np.ndarray
    target_mask: np.ndarray
    fm_points: tuple[np.ndarray, np.ndarray]
    refined_points: tuple[np.ndarray, np.ndarray]
    refined_mask: np.ndarray
    refined_name: str = "refined"
    title: str = ""  # over the reference: where the pair comes from (model / domain)
    target_name: str = ""  # the target image's name


def _points(ax, coords: np.ndarray, labels: np.ndarray, gt: np.ndarray) -> None:
    coords, labels = np.asarray(coords).reshape(-1, 2), np.asarray(labels)
    for (x, y), lab in zip(coords, labels):
        right = gt[int(round(y)), int(round(x))] == (lab == 1)
        ax.scatter([x], [y], s=46, marker="o" if right else "X", c=POSITIVE if lab == 1 else NEGATIVE,
                   edgecolors="white", linewidths=0.8)


def _outlined(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = np.asarray(image, np.uint8).copy()
    out[outline(np.asarray(mask, bool))] = (255, 255, 0)
    return out


def oneshot_figure(panels: list[OneShotPanel], path: str | Path) -> Path | None:
    """Draw ``panels`` (one row each) to ``path`` (PNG); None when there is none."""
    if not panels:
        return None
    fig = _figure(9.6, 3.3 * len(panels))
    axes = fig.subplots(len(panels), 3, squeeze=False)
    for row, p in zip(axes, panels):
        gt = np.asarray(p.target_mask, bool)
        row[0].imshow(_outlined(p.ref_image, p.ref_mask))
        row[0].set_title(f"reference\n{p.title}" if p.title else "reference", fontsize=8)
        row[1].imshow(_outlined(p.target_image, gt))
        _points(row[1], *p.fm_points, gt)
        row[1].set_title(f"target {p.target_name}".rstrip() + f"\nFM points ({len(p.fm_points[1])})", fontsize=8)
        row[2].imshow(_outlined(_tint(p.target_image, np.asarray(p.refined_mask, bool), MASK, 0.45), gt))
        _points(row[2], *p.refined_points, gt)
        row[2].set_title(f"{p.refined_name}\n{len(p.refined_points[1])} points", fontsize=8)
        for ax in row:
            ax.set_axis_off()
    return _save(fig, Path(path))


def report_panels(references, examples: list, load_scene, n: int = 4, protocol: str = "oneshot") -> list[OneShotPanel]:
    """The report's panels: up to ``n`` groups, one per domain first (in the run's
    order), each the reference (redrawn by ``references(scene, unit)``, the protocol's own
    rule, so the figure shows the pair that was measured), the FM points and the points of
    the first defender (``fm+ppd:...``; the FM points again when the run has none).

    Args:
        references: :meth:`OneShotProtocol.references`.
        examples: the run's ``(Unit, Example)`` pairs.
        load_scene: ``load_scene(domain, image)`` gives the unit's scene.
    """
    from ppd.bench.schema import decode_mask

    by_group: dict[tuple, dict[str, Any]] = {}
    for unit, ex in examples:
        if unit.protocol == protocol and (ex.method == "fm" or ex.method.startswith("fm+ppd:")):
            by_group.setdefault((unit.model, unit.domain, unit.image, ex.object), {"unit": unit})[ex.method] = ex
    picked, seen = [], set()
    for first_of_domain in (True, False):
        for key, exs in by_group.items():
            if len(picked) < n and "fm" in exs and key not in picked and (key[1] not in seen or not first_of_domain):
                picked.append(key)
                seen.add(key[1])
    panels = []
    for key in picked:
        exs = by_group[key]
        unit, obj = exs["unit"], key[3]
        scene = load_scene(unit.domain, unit.image)
        ref = next(((g, img, m) for g, img, m in references(scene, unit) if min(g) == obj and img is not None), None)
        if ref is None:
            continue
        group, ref_image, ref_mask = ref
        target = np.asarray(scene.masks[group], bool).any(axis=0)
        refined = next((exs[m] for m in exs if m.startswith("fm+ppd:")), exs["fm"])
        pts = [np.asarray(e.points, np.float32).reshape(-1, 3) for e in (exs["fm"], refined)]
        mask = decode_mask(refined.mask)
        if mask.shape != target.shape:
            continue
        panels.append(OneShotPanel(
            ref_image, ref_mask, scene.image, target, (pts[0][:, :2], pts[0][:, 2].astype(np.int64)),
            (pts[1][:, :2], pts[1][:, 2].astype(np.int64)), mask,
            refined_name=f"{refined.method}: IoU {refined.value:.3f} (FM {exs['fm'].value:.3f})",
            title=f"{unit.model} / {unit.domain}", target_name=unit.image))
    return panels
