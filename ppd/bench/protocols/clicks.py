"""The interactive click protocol: IoU after each simulated click, NoC and NoF.

Per object: the first click is positive, at the object pixel farthest from its boundary
(:func:`ppd.prompts.farthest_click`); every next click goes into the current error
(:func:`next_click`), positive in a missed region, negative in a wrongly included one.
The first prediction keeps the best of SAM2's three masks (highest predicted IoU), later
ones a single mask; ``feed_logits`` passes each prediction's low-res logits back as the
next mask input. An object whose mask is exact keeps its IoU for the remaining clicks.

All objects of an image are decoded together, one decoder call per click with one row
per object still being clicked, and their next clicks computed on a few threads
(``batch_objects``; off: the per-object loop, for timing comparisons: the clicks and IoUs
are the same up to the decoder's float rounding, which differs with the batch size).

Rows per object: ``iou@k`` for k = 1..max_clicks (mean = mIoU@k, the IoU-versus-clicks
curve), ``noc@T`` (the first k with IoU >= T/100, or max_clicks when never: RITM's
convention) and ``nof@T`` (1 when IoU never reaches T/100: summed, the number of failures)
for every T in ``targets``. Void pixels (``scene.meta["void"]``, VOC's 255 border) count
neither way and receive no click.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ppd.bench.protocols.base import BenchModel, Protocol
from ppd.bench.schema import Example, Row, Unit, UnitResult, encode_mask, prompt_points

CLICK_RULES = ("ritm", "area")


@dataclass
class ClicksConfig:
    max_clicks: int = field(default=20, metadata={"help": "clicks per object (default 20)"})
    targets: list[int] = field(
        default_factory=lambda: [85, 90], metadata={"help": "IoU targets in percent of NoC@T and NoF@T (default 85 90)"}
    )
    feed_logits: bool = field(
        default=False, metadata={"help": "pass the previous prediction's low-res logits back as the mask input (default: off)"}
    )
    click_rule: str = field(
        default="ritm",
        metadata={"help": "where the next click goes: ritm (the error pixel deepest inside its region, FN or FP, "
                  "as RITM's clicker) or area (the deepest pixel of the larger error region by area, as RUAC/SAM "
                  "evaluation scripts) (default ritm)"},
    )
    batch_objects: bool = field(
        default=True, metadata={"help": "decode all objects of an image in one call per click (off: one call per object) (default: on)"}
    )

    def __post_init__(self) -> None:
        if self.max_clicks < 1:
            raise ValueError(f"max_clicks must be >= 1, got {self.max_clicks}")
        if not self.targets or any(not 0 < t <= 100 for t in self.targets):
            raise ValueError(f"targets must be IoU percentages in (0, 100], got {self.targets}")
        if self.click_rule not in CLICK_RULES:
            raise ValueError(f"click_rule must be one of {CLICK_RULES}, got {self.click_rule!r}")


class ClicksProtocol(Protocol):
    name = "clicks"
    Config = ClicksConfig
    title = "Interactive clicks"
    table_metrics = ("iou@1", "iou@3", "iou@5", "iou@9", "noc@85", "noc@90", "nof@85", "nof@90")
    lower_is_better = frozenset({"noc@85", "noc@90", "nof@85", "nof@90"})
    sums = frozenset({"nof@85", "nof@90"})
    curve = ("iou@", "clicks")
    example_metric = "iou@3"

    def __init__(self, config: ClicksConfig | None = None) -> None:
        super().__init__(config)
        targets = [f"noc@{t}" for t in self.config.targets] + [f"nof@{t}" for t in self.config.targets]
        shown = [f"iou@{k}" for k in (1, 3, 5, 9) if k <= self.config.max_clicks]
        self.table_metrics = tuple(shown + targets)
        self.lower_is_better = frozenset(targets)
        self.sums = frozenset(f"nof@{t}" for t in self.config.targets)
        self.example_metric = f"iou@{min(3, self.config.max_clicks)}"

    def run(self, model: BenchModel, resources, scene, unit: Unit, rng: np.random.Generator) -> UnitResult:
        cfg = self.config
        void = scene.meta.get("void")
        curves, clicks, masks = click_curves(model.segmenter, scene.image, scene.masks, cfg, void)
        result = UnitResult()
        method = "clicks+logits" if cfg.feed_logits else "clicks"
        for obj, curve in enumerate(curves):
            result.rows += [Row(method, obj, f"iou@{k + 1}", float(v)) for k, v in enumerate(curve)]
            for t in cfg.targets:
                clicks_needed, failed = noc(curve, t / 100.0)
                result.rows.append(Row(method, obj, f"noc@{t}", float(clicks_needed)))
                result.rows.append(Row(method, obj, f"nof@{t}", float(failed)))
            k = min(3, cfg.max_clicks)
            coords, labels = clicks[obj]
            result.examples.append(Example(method, obj, f"iou@{k}", float(curve[k - 1]),
                                           prompt_points(coords[:k], labels[:k]), encode_mask(masks[obj])))
        return result


def noc(curve: np.ndarray, target: float) -> tuple[int, bool]:
    """``(clicks, failed)``: the number of clicks after which the IoU first reaches
    ``target`` (in [0, 1]), or ``len(curve)`` and failed when it never does (RITM's NoC
    and NoF convention: a failure counts as the whole click budget)."""
    reached = np.flatnonzero(np.asarray(curve) >= target)
    return (int(reached[0]) + 1, False) if reached.size else (len(curve), True)


def click_curves(seg, image: np.ndarray, gts: np.ndarray, cfg: ClicksConfig, void: np.ndarray | None = None):
    """Simulate the protocol on every object of one image.

    Returns:
        ``(curves, clicks, masks)``: (N, max_clicks) IoU after each click; per object its
        clicks ``(coords (K, 2), labels (K,))``; per object the mask after
        ``min(3, max_clicks)`` clicks (the report's example).
    """
    emb = seg.encode(image)
    n, k_max = len(gts), cfg.max_clicks
    care = np.ones(gts.shape[1:], bool) if void is None else ~np.asarray(void, bool)
    gts = np.asarray(gts, bool) & care
    curves = np.zeros((n, k_max))
    coords = [[_deepest(gt)] for gt in gts]
    labels = [[1] for _ in range(n)]
    logits: list[np.ndarray | None] = [None] * n
    example = [np.zeros(gts.shape[1:], bool) for _ in range(n)]
    active = list(range(n))
    # The click rule's distance transforms are per object; OpenCV and numpy release the
    # GIL, so the objects of one decoder call are scored on a few threads.
    pool = ThreadPoolExecutor(max_workers=max(1, min(n, os.cpu_count() or 1))) if cfg.batch_objects and n > 1 else None

    def score(mask: np.ndarray, i: int):
        mask = mask & care
        return mask, _iou(mask, gts[i]), next_click(mask, gts[i], cfg.click_rule)

    try:
        for k in range(k_max):
            if not active:
                break
            groups = [active] if cfg.batch_objects else [[i] for i in active]
            still = []
            for rows in groups:
                mask_input = np.stack([logits[i] for i in rows]) if cfg.feed_logits and k > 0 else None
                pred = seg.predict(emb, np.asarray([coords[i] for i in rows], np.float32),
                                   np.asarray([labels[i] for i in rows]), mask_input=mask_input, multimask=(k == 0))
                args = ([pred.masks[r] for r in range(len(rows))], rows)
                scored = list(pool.map(score, *args)) if pool else list(map(score, *args))
                for r, (i, (mask, value, nxt)) in enumerate(zip(rows, scored)):
                    curves[i, k] = value
                    logits[i] = pred.logits[r]
                    if k < min(3, k_max):
                        example[i] = mask
                    if nxt is None:  # exact: the remaining clicks keep this IoU
                        curves[i, k + 1:] = curves[i, k]
                        continue
                    if k + 1 < k_max:
                        coords[i].append(nxt[0])
                        labels[i].append(nxt[1])
                        still.append(i)
            active = still
    finally:
        if pool:
            pool.shutdown()
    clicks = [(np.asarray(c, np.float32), np.asarray(lab)) for c, lab in zip(coords, labels)]
    return curves, clicks, example


def next_click(pred: np.ndarray, gt: np.ndarray, rule: str = "ritm") -> tuple[np.ndarray, int] | None:
    """The next click into the error of ``pred``: ``(xy, label)`` or None when exact.

    ``ritm``: the pixel deepest inside the false negatives or the false positives (the
    image border counting as boundary), positive when it is a false negative; a tie goes
    to the negative, as RITM's clicker (and :func:`ppd.prompts.corrective_click`, which
    this equals). ``area``: the deepest pixel of the larger region by pixel count.
    """
    fn, fp = gt & ~pred, pred & ~gt
    if rule == "area":
        n_fn, n_fp = np.count_nonzero(fn), np.count_nonzero(fp)
        if n_fn == 0 and n_fp == 0:
            return None
        positive = n_fn > n_fp
        return _deepest_pixel(fn if positive else fp)[1], int(positive)
    # The deeper region wins; a region's depth is at most half its bounding box's shorter
    # side, so the region with the larger bound goes first and the other is skipped
    # when it cannot win (one distance transform instead of two, most clicks).
    box_fn, box_fp = _box(fn), _box(fp)
    if box_fn is None and box_fp is None:
        return None
    if _bound(box_fn) >= _bound(box_fp):
        d_fn, xy_fn = _deepest_pixel(fn, box_fn)
        if d_fn > _bound(box_fp):
            return xy_fn, 1
        d_fp, xy_fp = _deepest_pixel(fp, box_fp)
    else:
        d_fp, xy_fp = _deepest_pixel(fp, box_fp)
        if d_fp >= _bound(box_fn):
            return xy_fp, 0
        d_fn, xy_fn = _deepest_pixel(fn, box_fn)
    return (xy_fn, 1) if d_fn > d_fp else (xy_fp, 0)


def _box(region: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x, y, w, h)`` of the bounding box of the region's pixels, None when empty."""
    import cv2

    box = cv2.boundingRect(np.ascontiguousarray(region, dtype=bool).view(np.uint8))
    return None if box[2] == 0 or box[3] == 0 else box


def _bound(box: tuple[int, int, int, int] | None) -> float:
    """An upper bound of the squared depth of any pixel of a region with this box: no
    pixel is deeper than half the box's shorter side (-1 for an empty region)."""
    return -1.0 if box is None else float(((min(box[2], box[3]) + 1) // 2) ** 2)


def _deepest_pixel(region: np.ndarray, box: tuple[int, int, int, int] | None = None) -> tuple[float, np.ndarray | None]:
    """``(depth², xy)`` of the pixel of ``region`` farthest from any pixel outside it or
    the image border, the first in raster order on ties; ``(-1, None)`` for an empty one.
    ``box``: the region's :func:`_box`, when known.

    Computed on the region's bounding box padded by one pixel, which gives the same
    depths as the whole image (the nearest outside pixel of any region pixel is in that
    box), with OpenCV's exact Euclidean transform, five times faster than SciPy's: the
    click loop computes up to two per object and click. OpenCV returns float32 distances;
    squaring and rounding recovers the exact integer squared distances (below ~1400 px),
    so ties break as with SciPy's transform (raster order within the box is the image's).
    """
    import cv2

    box = _box(region) if box is None else box
    if box is None:
        return -1.0, None
    x0, y0, w, h = box
    crop = np.pad(np.ascontiguousarray(region[y0:y0 + h, x0:x0 + w], dtype=bool), 1).view(np.uint8)
    dist = cv2.distanceTransform(crop, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1].astype(np.float64)
    depth2 = np.rint(dist * dist)
    i = int(np.argmax(depth2))
    y, x = divmod(i, w)
    return float(depth2.flat[i]), np.array([x0 + x, y0 + y], np.float32)


def _deepest(region: np.ndarray) -> np.ndarray:
    return _deepest_pixel(region)[1]


def _iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.count_nonzero(pred | gt)
    return float(np.count_nonzero(pred & gt) / union) if union else 1.0
