"""Point and box prompts, and the generators that derive them from ground-truth masks.

Coordinate convention (SAM / SAM2): a point is (x, y) in pixels of the original image,
x along columns and y along rows, with 0 at the left / top edge. Generated points sit on
pixel indices, so the point (x, y) refers to ``mask[y, x]`` and the coordinates are
integer-valued floats. Boxes are XYXY in the same frame; a box taken from a mask holds the
inclusive extremes (x0, y0) = (min col, min row), (x1, y1) = (max col, max row), as SAM's
``batched_mask_to_box``. Labels: 1 = foreground (positive), 0 = background (negative);
-1 marks padding in batched arrays (SAM's "not a point").

All randomness comes from an explicit ``np.random.Generator``. The masks' distance maps
come from :mod:`ppd.mask_distances`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from ppd.mask_distances import GT_DISTANCES, inner_distance
from ppd.mask_distances import (  # noqa: F401  (re-exported under the names they had in this module)
    DistanceCache as _DistanceCache, inner_distance as _inner_distance, outer_distance as _outer_distance,
)


@dataclass
class PromptSet:
    """The prompts for one object: points and an optional box.

    Attributes:
        point_coords: (K, 2) float32 point coordinates (x, y) in pixels; K may be 0.
        point_labels: (K,) int64 labels, 1 foreground / 0 background.
        box: (4,) float32 box (x0, y0, x1, y1) in pixels, or None.
    """

    point_coords: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    point_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    box: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        self.point_coords = np.asarray(self.point_coords, dtype=np.float32)
        self.point_labels = np.asarray(self.point_labels, dtype=np.int64)
        coords, labels = self.point_coords, self.point_labels
        if coords.ndim != 2 or coords.shape[1] != 2:
            raise ValueError(f"point_coords must have shape (K, 2), got {coords.shape}")
        if labels.shape != (len(coords),):
            raise ValueError(
                f"point_labels must have shape ({len(coords)},) to match point_coords, "
                f"got {labels.shape}"
            )
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"point_labels must be 0 or 1, got {np.unique(labels).tolist()}")
        if not np.isfinite(coords).all():
            raise ValueError("point_coords must be finite")
        if self.box is not None:
            self.box = np.asarray(self.box, dtype=np.float32)
            b = self.box
            if b.shape != (4,) or not np.isfinite(b).all():
                raise ValueError(f"box must be a finite (4,) XYXY array, got {b.tolist()}")
            if b[0] > b[2] or b[1] > b[3]:
                raise ValueError(f"box must satisfy x0 <= x1 and y0 <= y1, got {b.tolist()}")

    def __len__(self) -> int:
        """Number of points."""
        return len(self.point_labels)

    def with_points(self, coords: np.ndarray, labels: np.ndarray | int) -> PromptSet:
        """A new set with points appended (this one is unchanged).

        Args:
            coords: (M, 2) or (2,) point coordinates (x, y) in pixels.
            labels: (M,) labels, or a single label for a single point.

        Returns:
            A PromptSet with K + M points and the same box.
        """
        return PromptSet(
            np.concatenate([self.point_coords, np.atleast_2d(coords)]),
            np.concatenate([self.point_labels, np.atleast_1d(labels)]),
            self.box,
        )


@dataclass
class CoarsePrompts:
    """A noisy prompt set and the ground truth about its noise.

    Attributes:
        prompts: the K points.
        kinds: (K,) str array, what happened to each point: "clean", "flip", "boundary"
            or "outlier".
        corrupted: (K,) bool, True where the point's label disagrees with the mask
            (``kinds != "clean"``).
    """

    prompts: PromptSet
    kinds: np.ndarray

    @property
    def corrupted(self) -> np.ndarray:
        return self.kinds != "clean"


def stack_prompts(prompts: Sequence[PromptSet]) -> tuple[np.ndarray, np.ndarray]:
    """Pad the points of several prompt sets into batch arrays (boxes are not stacked).

    Args:
        prompts: B prompt sets with K_b points each.

    Returns:
        coords: (B, Kmax, 2) float32, padding points at (0, 0).
        labels: (B, Kmax) int64, padding labelled -1.
    """
    if len(prompts) == 0:
        raise ValueError("prompts must hold at least one PromptSet")
    k_max = max(len(p) for p in prompts)
    coords = np.zeros((len(prompts), k_max, 2), np.float32)
    labels = np.full((len(prompts), k_max), -1, np.int64)
    for i, p in enumerate(prompts):
        coords[i, : len(p)] = p.point_coords
        labels[i, : len(p)] = p.point_labels
    return coords, labels


def farthest_click(mask: np.ndarray) -> PromptSet:
    """One positive click at the object pixel farthest from the object boundary.

    The image border counts as boundary. Ties go to the first pixel in raster order.

    Args:
        mask: (H, W) bool ground-truth mask.

    Returns:
        A PromptSet with one positive point.

    Raises:
        ValueError: if the mask is empty.
    """
    mask = _check_mask(mask, "mask", nonempty=True)
    xy = _argmax_xy(GT_DISTANCES.get("inner", mask))
    return PromptSet(xy[None], [1])


def corrective_click(pred: np.ndarray, gt: np.ndarray) -> Optional[tuple[np.ndarray, int]]:
    """The next click of the RITM / SAM interactive protocol.

    False negatives FN = gt & ~pred and false positives FP = pred & ~gt; the click goes to
    the pixel deepest inside either error region (distance transform, the image border
    counting as boundary): positive if that pixel is in FN, negative if in FP. On a tie
    between the two regions the click is negative, as in RITM (``fn_max > fp_max``).

    Args:
        pred: (H, W) bool predicted mask.
        gt: (H, W) bool ground-truth mask.

    Returns:
        ``(xy, label)``: (2,) float32 point (x, y) in pixels and label 1 or 0; None when
        the prediction equals the ground truth.
    """
    pred, gt = _check_mask(pred, "pred"), _check_mask(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
    fn_dist = inner_distance(gt & ~pred)
    fp_dist = inner_distance(pred & ~gt)
    if fn_dist.max() == 0 and fp_dist.max() == 0:
        return None
    positive = fn_dist.max() > fp_dist.max()
    return _argmax_xy(fn_dist if positive else fp_dist), int(positive)


def random_clicks(
    mask: np.ndarray, n_pos: int, n_neg: int, rng: np.random.Generator, margin: float = 0
) -> PromptSet:
    """Points drawn uniformly without replacement, positives inside, negatives outside.

    Args:
        mask: (H, W) bool ground-truth mask, not empty.
        n_pos: number of positive points (inside the mask).
        n_neg: number of negative points (outside the mask).
        rng: random generator.
        margin: negatives lie at least this many pixels (Euclidean) from the mask.

    Returns:
        A PromptSet with the n_pos positives first, then the n_neg negatives.

    Raises:
        ValueError: if the mask is empty or has fewer candidate pixels than requested.
    """
    mask = _check_mask(mask, "mask", nonempty=True)
    pos = _sample_pixels(mask, n_pos, rng, "n_pos")
    neg = _sample_pixels(GT_DISTANCES.get("outer", mask) >= max(margin, 1), n_neg, rng, "n_neg")
    return PromptSet(np.concatenate([pos, neg]), [1] * n_pos + [0] * n_neg)


def ideal_prompts(
    mask: np.ndarray,
    spacing: Optional[int] = None,
    n_pos: Optional[int] = None,
    n_neg: Optional[int] = None,
    rng: Optional[np.random.Generator] = None,
) -> PromptSet:
    """Clean, evenly spread prompts: the points a careful annotator would give.

    Rule: a square lattice of step ``spacing`` is centred on the mask's bounding box.
    Positives are the lattice points at least ``max(2, spacing / 4)`` pixels inside the
    object (distance to the nearest background pixel or the image border, so an edge
    pixel is at 1 and never gets a point); if there is none, the single
    :func:`farthest_click`. Negatives are the lattice points inside the bounding
    box grown by ``spacing`` on every side (clipped to the image) that lie at least
    ``max(2, spacing / 4)`` pixels away from the object. Points are in raster order.

    Args:
        mask: (H, W) bool ground-truth mask, not empty.
        spacing: lattice step in pixels; default ``max(2, round(sqrt(area) / 3))``, about
            a 3 x 3 grid of positives on a compact object.
        n_pos: keep at most this many positives (all if None).
        n_neg: keep at most this many negatives (all if None). May be 0 points when the
            object fills the image.
        rng: picks the kept subset at random; without it the subset is evenly spaced
            along the raster order, so the result depends on the mask only.

    Returns:
        A PromptSet, positives first.
    """
    mask = _check_mask(mask, "mask", nonempty=True)
    if spacing is None:
        spacing = max(2, round(float(np.sqrt(mask.sum())) / 3))
    if spacing < 1:
        raise ValueError(f"spacing must be a positive number of pixels, got {spacing}")
    gap = max(2.0, spacing / 4)
    rows, cols = np.nonzero(mask)
    h, w = mask.shape

    def lattice(lo: int, hi: int, limit: int) -> np.ndarray:
        """Coordinates in [0, limit) of the lattice centred on the range [lo, hi]."""
        n = (hi - lo) // spacing + 1
        start = lo + ((hi - lo) - (n - 1) * spacing) // 2
        return np.arange(start % spacing, limit, spacing)

    ys = lattice(rows.min(), rows.max(), h)
    xs = lattice(cols.min(), cols.max(), w)
    grid = np.zeros_like(mask)
    grid[np.ix_(ys, xs)] = True

    pos = _pixels(grid & (GT_DISTANCES.get("inner", mask) >= gap))
    if len(pos) == 0:
        pos = farthest_click(mask).point_coords
    band = np.zeros_like(mask)
    band[
        max(rows.min() - spacing, 0) : rows.max() + spacing + 1,
        max(cols.min() - spacing, 0) : cols.max() + spacing + 1,
    ] = True
    neg = _pixels(grid & band & (GT_DISTANCES.get("outer", mask) >= gap))

    pos, neg = _subsample(pos, n_pos, rng), _subsample(neg, n_neg, rng)
    return PromptSet(np.concatenate([pos, neg]), [1] * len(pos) + [0] * len(neg))


def coarse_prompts(
    mask: np.ndarray,
    rng: np.random.Generator,
    n_points: int = 8,
    p_flip: float = 0.2,
    p_boundary: float = 0.2,
    p_outlier: float = 0.1,
    pos_fraction: float = 0.5,
    boundary_px: int = 3,
    outlier_min_dist: Optional[float] = None,
) -> CoarsePrompts:
    """Noisy prompts, as from a sloppy annotator or a feature-matching prompt generator.

    Starts from :func:`random_clicks` (``round(n_points * pos_fraction)`` positives inside
    the mask, the rest negatives outside), then corrupts each point independently with one
    of three mutually exclusive kinds of noise (probabilities summing to at most 1):

    * ``p_flip``: its label is flipped.
    * ``p_boundary``: it moves just across the boundary, keeping its label: to the pixel on
      the other side nearest to it at a depth of d pixels, d uniform in 1..boundary_px
      (depth = distance to the boundary, rounded up).
    * ``p_outlier``: it is replaced by a positive point drawn uniformly among the
      pixels at least ``outlier_min_dist`` from the object.

    A boundary or outlier move that has no candidate pixel (an object filling the image)
    leaves the point clean, so ``corrupted`` is exactly "the label disagrees with the mask".

    Args:
        mask: (H, W) bool ground-truth mask, not empty.
        rng: random generator; the result is a function of the mask and its state.
        n_points: total number of points.
        p_flip: probability that a point's label is flipped.
        p_boundary: probability that a point moves just across the boundary.
        p_outlier: probability that a point is replaced by a far positive outlier.
        pos_fraction: fraction of the clean points that are positive.
        boundary_px: largest depth, in pixels, of a boundary move.
        outlier_min_dist: least distance of an outlier to the object, in pixels; default
            half the largest distance of any pixel to the object.

    Returns:
        The prompts with the kind of noise applied to each point.
    """
    mask = _check_mask(mask, "mask", nonempty=True)
    probs = np.array([p_flip, p_boundary, p_outlier])
    if (probs < 0).any() or probs.sum() > 1 + 1e-9:
        raise ValueError(
            "p_flip, p_boundary and p_outlier must be >= 0 and sum to at most 1, "
            f"got {probs.tolist()}"
        )
    if not 0 <= pos_fraction <= 1:
        raise ValueError(f"pos_fraction must be in [0, 1], got {pos_fraction}")
    if boundary_px < 1:
        raise ValueError(f"boundary_px must be >= 1, got {boundary_px}")
    n_pos = round(n_points * pos_fraction)
    clean = random_clicks(mask, n_pos, n_points - n_pos, rng)
    coords, labels = clean.point_coords.copy(), clean.point_labels.copy()

    outer = GT_DISTANCES.get("outer", mask)
    # Depth of each pixel on the side a point of this label moves to (label 1: outside).
    depth_across = {1: np.ceil(outer), 0: np.ceil(GT_DISTANCES.get("inner", mask))}
    if outlier_min_dist is None:
        outlier_min_dist = outer.max() / 2
    far = _pixels(outer >= max(outlier_min_dist, 1))

    # u < p_flip -> flip, u < p_flip + p_boundary -> boundary, ..., otherwise clean.
    kinds = np.array(["flip", "boundary", "outlier", "clean"])
    drawn = kinds[np.searchsorted(np.cumsum(probs), rng.random(n_points), side="right")]
    for i, kind in enumerate(drawn):
        if kind == "flip":
            labels[i] = 1 - labels[i]
        elif kind == "boundary":
            depth = depth_across[int(labels[i])]
            band = _pixels(depth == rng.integers(1, boundary_px + 1))
            if len(band) == 0:
                band = _pixels((depth >= 1) & (depth <= boundary_px))
            if len(band) == 0:
                drawn[i] = "clean"
            else:
                coords[i] = band[np.argmin(((band - coords[i]) ** 2).sum(axis=1))]
        elif kind == "outlier":
            if len(far) == 0:
                drawn[i] = "clean"
            else:
                coords[i], labels[i] = far[rng.integers(len(far))], 1
    return CoarsePrompts(PromptSet(coords, labels), drawn)


def box_from_mask(
    mask: np.ndarray, rng: Optional[np.random.Generator] = None, jitter: float = 0.0
) -> np.ndarray:
    """The tight XYXY box of a mask, optionally jittered.

    Args:
        mask: (H, W) bool mask, not empty.
        rng: random generator, required when ``jitter > 0``.
        jitter: standard deviation of the Gaussian noise added to each coordinate, as a
            fraction of the box width (x coordinates) or height (y coordinates), where
            width = x1 - x0 + 1. The result is clipped to the image and kept ordered.

    Returns:
        (4,) float32 box (x0, y0, x1, y1) in pixels, inclusive extremes.
    """
    mask = _check_mask(mask, "mask", nonempty=True)
    rows, cols = np.nonzero(mask)
    box = np.array([cols.min(), rows.min(), cols.max(), rows.max()], dtype=np.float64)
    if jitter < 0:
        raise ValueError(f"jitter must be >= 0, got {jitter}")
    if jitter > 0:
        if rng is None:
            raise ValueError("rng is required when jitter > 0")
        w, h = box[2] - box[0] + 1, box[3] - box[1] + 1
        box += rng.normal(0.0, jitter, 4) * np.array([w, h, w, h])
        limit = np.array([mask.shape[1], mask.shape[0]]) - 1
        x, y = np.sort(box[0::2]).clip(0, limit[0]), np.sort(box[1::2]).clip(0, limit[1])
        box = np.array([x[0], y[0], x[1], y[1]])
    return box.astype(np.float32)


def _check_mask(mask: np.ndarray, name: str, nonempty: bool = False) -> np.ndarray:
    """Validate an (H, W) binary mask and return it as bool."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be an (H, W) mask, got shape {mask.shape}")
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(f"{name} must be a bool mask or contain only 0 and 1")
        mask = mask.astype(bool)
    if nonempty and not mask.any():
        raise ValueError(f"{name} is empty: no object pixel to prompt on")
    return mask


def random_coarse_kwargs(rng: np.random.Generator, p_clean: float = 0.0) -> dict[str, Any]:
    """Keyword arguments of :func:`coarse_prompts` drawn at random, for training data that
    is not one generator's (prompt generators differ): 3-16 points, flip 0-0.4,
    boundary 0-0.3, outlier 0-0.2, 30-70% positive.

    Args:
        rng: random generator.
        p_clean: probability that the set is clean (all three noise rates 0): an agent
            should learn to leave good clicks alone. With 0 (the default) no extra draw
            is taken from ``rng``.
    """
    if not 0.0 <= p_clean <= 1.0:
        raise ValueError(f"p_clean must be in [0, 1], got {p_clean}")
    kw = dict(
        n_points=int(rng.integers(3, 17)),
        p_flip=float(rng.uniform(0.0, 0.4)),
        p_boundary=float(rng.uniform(0.0, 0.3)),
        p_outlier=float(rng.uniform(0.0, 0.2)),
        pos_fraction=float(rng.uniform(0.3, 0.7)),
    )
    if p_clean > 0 and rng.random() < p_clean:
        kw.update(p_flip=0.0, p_boundary=0.0, p_outlier=0.0)
    return kw


def _argmax_xy(values: np.ndarray) -> np.ndarray:
    """(2,) float32 (x, y) of the largest value, first in raster order on ties."""
    y, x = np.unravel_index(np.argmax(values), values.shape)
    return np.array([x, y], np.float32)


def _pixels(region: np.ndarray) -> np.ndarray:
    """(N, 2) float32 (x, y) of the True pixels of a region, in raster order."""
    rows, cols = np.nonzero(region)
    return np.stack([cols, rows], axis=1).astype(np.float32)


def _sample_pixels(region: np.ndarray, n: int, rng: np.random.Generator, name: str) -> np.ndarray:
    """(n, 2) float32 (x, y) of distinct pixels drawn uniformly from a region."""
    candidates = _pixels(region)
    if not 0 <= n <= len(candidates):
        raise ValueError(f"{name} must be in [0, {len(candidates)}] (candidate pixels), got {n}")
    return candidates[rng.choice(len(candidates), n, replace=False)]


def _subsample(
    points: np.ndarray, n: Optional[int], rng: Optional[np.random.Generator]
) -> np.ndarray:
    """At most n of the points, in their original order."""
    if n is None or n >= len(points):
        return points
    if n < 0:
        raise ValueError(f"n_pos and n_neg must be >= 0, got {n}")
    if rng is None:
        keep = np.linspace(0, len(points) - 1, n).round().astype(int)
    else:
        keep = np.sort(rng.choice(len(points), n, replace=False))
    return points[keep]


def __getattr__(name: str):
    """``feature_matching`` lives in :mod:`ppd.oneshot` (which imports this module), so it
    is loaded on first access here instead of imported at the top."""
    if name == "feature_matching":
        from ppd.oneshot import feature_matching

        return feature_matching
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
