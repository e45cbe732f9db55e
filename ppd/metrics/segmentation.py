"""Segmentation metrics: mask overlap (IoU, Dice) and DAVIS J&F.

Mask overlap: :func:`iou`, :func:`dice`
---------------------------------------
Each takes a predicted and a ground-truth mask of shape (..., H, W). The leading
dimensions broadcast (e.g. (B, H, W) against (H, W)); (H, W) must match exactly. Masks are
bool arrays or numeric arrays holding only 0 and 1 (anything else is rejected rather than
thresholded, so a probability map passed by mistake fails loudly).

Return types:
    * numpy inputs -> ``np.ndarray`` of dtype float64 and shape (...), the broadcast
      leading shape; a 0-d array for a single pair of (H, W) masks (use ``float(x)``).
    * torch inputs (either argument a tensor) -> ``torch.Tensor`` of the default float
      dtype and shape (...), on the tensor's device. Not differentiable (masks are binary).

Convention: when both masks are empty the prediction is perfect, so IoU = Dice = 1.0.

DAVIS: :func:`boundary_f`, :func:`j_and_f`
------------------------------------------
Same mask conventions and broadcasting as :func:`iou`, but always computed in numpy
(torch tensors are converted) and returned as a float64 ``np.ndarray`` of shape (...).
Values lie in [0, 1]; papers (DAVIS, RUAC) report them x100.

Reference: Perazzi et al., "A Benchmark Dataset and Evaluation Methodology for Video
Object Segmentation", CVPR 2016 (DAVIS J and F).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from ppd.metrics.checks import Array, Mask, binary_pair, to_numpy


def iou(pred: Mask, gt: Mask) -> Mask:
    """Intersection over union |P & G| / |P | G| of binary masks.

    Args:
        pred: (..., H, W) predicted mask, bool or 0/1.
        gt: (..., H, W) ground-truth mask, bool or 0/1, broadcastable against ``pred``.

    Returns:
        (...) IoU in [0, 1]; 1.0 where both masks are empty. See the module docstring for
        the return type.

    Raises:
        ValueError: if a mask is not at least 2-D, is not binary, or the shapes differ in
            (H, W) or do not broadcast.
    """
    pred, gt = binary_pair(pred, gt)
    inter = _count(pred & gt)
    union = _count(pred | gt)
    return _ratio(inter, union)


def dice(pred: Mask, gt: Mask) -> Mask:
    """Dice coefficient (F1) 2 |P & G| / (|P| + |G|) of binary masks.

    Args:
        pred: (..., H, W) predicted mask, bool or 0/1.
        gt: (..., H, W) ground-truth mask, bool or 0/1, broadcastable against ``pred``.

    Returns:
        (...) Dice in [0, 1]; 1.0 where both masks are empty. See the module docstring for
        the return type.

    Raises:
        ValueError: as :func:`iou`.
    """
    pred, gt = binary_pair(pred, gt)
    return _ratio(2 * _count(pred & gt), _count(pred) + _count(gt))


#: DAVIS boundary tolerance as a fraction of the image diagonal.
DAVIS_BOUNDARY_FRACTION = 0.008


def davis_tolerance(height: int, width: int) -> int:
    """DAVIS boundary tolerance in pixels, ``ceil(0.008 * sqrt(H^2 + W^2))``.

    E.g. 3 px for a 256x256 image, 12 px for 1024x1024.
    """
    return int(math.ceil(DAVIS_BOUNDARY_FRACTION * math.hypot(height, width)))


def boundary_f(pred: Array, gt: Array, tolerance: int | None = None) -> np.ndarray:
    """DAVIS boundary F-measure (contour accuracy F) of binary masks.

    Both masks are reduced to 1-pixel-wide boundary maps (the DAVIS ``seg2bmap``
    convention: a pixel is on the boundary where the mask changes between it and its right,
    lower or lower-right neighbour). A predicted boundary pixel is matched when a ground
    truth boundary pixel lies within ``tolerance`` pixels (Euclidean), and vice versa;
    this equals DAVIS's dilation by a disk of radius ``tolerance`` (computed here with a
    distance transform, which is faster for large radii). Precision P = matched predicted
    / all predicted boundary pixels, recall R = matched GT / all GT boundary pixels,
    F = 2PR / (P + R) (0 when P + R = 0).

    Empty boundaries follow the DAVIS code: both empty -> F = 1; exactly one empty ->
    F = 0.

    Args:
        pred: (..., H, W) predicted mask, bool or 0/1.
        gt: (..., H, W) ground-truth mask, bool or 0/1, broadcastable against ``pred``.
        tolerance: matching radius in pixels (>= 0). None (default) uses the DAVIS value
            :func:`davis_tolerance` ``(H, W)``, i.e. ``ceil(0.008 * image diagonal)``.
            0 requires exact boundary-pixel overlap.

    Returns:
        (...) float64 array, F in [0, 1] (papers report x100); 0-d for one pair.

    Raises:
        ValueError: as :func:`iou`, or if ``tolerance`` is negative.

    Reference: Perazzi et al., CVPR 2016 (DAVIS), evaluation code ``f_measure``.
    """
    pred, gt = binary_pair(to_numpy(pred), to_numpy(gt))
    h, w = pred.shape[-2:]
    if tolerance is None:
        tolerance = davis_tolerance(h, w)
    if not np.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be a non-negative number of pixels, got {tolerance}")
    pred, gt = np.broadcast_arrays(pred, gt)
    lead = pred.shape[:-2]
    flat_p, flat_g = pred.reshape(-1, h, w), gt.reshape(-1, h, w)
    out = np.array([_boundary_f_single(p, g, tolerance) for p, g in zip(flat_p, flat_g)])
    return out.reshape(lead).astype(np.float64)


def j_and_f(pred: Array, gt: Array) -> np.ndarray:
    """DAVIS J&F: the mean of region similarity J (IoU) and boundary F-measure.

    J = :func:`iou` (1 when both masks are empty), F = :func:`boundary_f` with the DAVIS
    tolerance ``ceil(0.008 * image diagonal)``; J&F = (J + F) / 2, per mask (object).

    Args:
        pred: (..., H, W) predicted mask, bool or 0/1.
        gt: (..., H, W) ground-truth mask, bool or 0/1, broadcastable against ``pred``.

    Returns:
        (...) float64 array, J&F in [0, 1] (DAVIS and RUAC report x100); 0-d for one pair.

    Raises:
        ValueError: as :func:`iou`.

    Reference: Perazzi et al., CVPR 2016; RUAC reports J&F per object averaged per domain.
    """
    pred, gt = to_numpy(pred), to_numpy(gt)
    return (np.asarray(iou(pred, gt), dtype=np.float64) + boundary_f(pred, gt)) / 2


def _count(m: Mask) -> Mask:
    """Number of True pixels over the last two axes, (..., H, W) -> (...)."""
    return m.sum(axis=(-2, -1))


def _ratio(num: Mask, den: Mask) -> Mask:
    """num / den with 1.0 where den == 0 (both masks empty)."""
    if isinstance(num, torch.Tensor):
        return torch.where(den == 0, 1.0, num / den.clamp(min=1))
    return np.where(den == 0, 1.0, num / np.maximum(den, 1))


def _seg2bmap(mask: np.ndarray) -> np.ndarray:
    """1-pixel boundary map of an (H, W) bool mask, as DAVIS's ``seg2bmap``."""
    e = np.zeros_like(mask)
    s = np.zeros_like(mask)
    se = np.zeros_like(mask)
    e[:, :-1] = mask[:, 1:]
    s[:-1, :] = mask[1:, :]
    se[:-1, :-1] = mask[1:, 1:]
    b = (mask ^ e) | (mask ^ s) | (mask ^ se)
    b[-1, :] = mask[-1, :] ^ e[-1, :]
    b[:, -1] = mask[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def _boundary_f_single(pred: np.ndarray, gt: np.ndarray, tolerance: float) -> float:
    pb, gb = _seg2bmap(pred), _seg2bmap(gt)
    n_p, n_g = int(np.count_nonzero(pb)), int(np.count_nonzero(gb))
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    # Pixels within `tolerance` of a boundary == the boundary dilated by a disk of that
    # radius (disk = integer offsets with dy^2 + dx^2 <= r^2, as skimage's disk).
    near_g = ndimage.distance_transform_edt(~gb) <= tolerance
    near_p = ndimage.distance_transform_edt(~pb) <= tolerance
    precision = np.count_nonzero(pb & near_g) / n_p
    recall = np.count_nonzero(gb & near_p) / n_g
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)
