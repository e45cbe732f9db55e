"""Segmentation metrics on binary masks, batched, for numpy arrays and torch tensors.

Every metric takes a predicted and a ground-truth mask of shape (..., H, W). The leading
dimensions broadcast (e.g. (B, H, W) against (H, W)); (H, W) must match exactly. Masks are
bool arrays or numeric arrays holding only 0 and 1 (anything else is rejected rather than
thresholded, so a probability map passed by mistake fails loudly).

Return types:
    * numpy inputs -> ``np.ndarray`` of dtype float64 and shape (...), the broadcast
      leading shape; a 0-d array for a single pair of (H, W) masks (use ``float(x)``).
    * torch inputs (either argument a tensor) -> ``torch.Tensor`` of the default float
      dtype and shape (...), on the tensor's device. Not differentiable (masks are binary).

Convention: when both masks are empty the prediction is perfect, so IoU = Dice = 1.0.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

Mask = Union[np.ndarray, torch.Tensor]


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
    pred, gt = _binary_pair(pred, gt)
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
    pred, gt = _binary_pair(pred, gt)
    return _ratio(2 * _count(pred & gt), _count(pred) + _count(gt))


def _binary_pair(pred: Mask, gt: Mask) -> tuple[Mask, Mask]:
    """Check shapes and convert both masks to bool, as tensors if either one is."""
    if isinstance(pred, torch.Tensor) or isinstance(gt, torch.Tensor):
        device = pred.device if isinstance(pred, torch.Tensor) else gt.device
        pred, gt = torch.as_tensor(pred, device=device), torch.as_tensor(gt, device=device)
    else:
        pred, gt = np.asarray(pred), np.asarray(gt)
    for name, m in (("pred", pred), ("gt", gt)):
        if m.ndim < 2:
            raise ValueError(f"{name} must have shape (..., H, W), got {tuple(m.shape)}")
    if pred.shape[-2:] != gt.shape[-2:] or not _broadcastable(pred.shape, gt.shape):
        raise ValueError(
            "pred and gt must have the same (H, W) and broadcastable leading dimensions, "
            f"got {tuple(pred.shape)} and {tuple(gt.shape)}"
        )
    return _as_bool(pred, "pred"), _as_bool(gt, "gt")


def _broadcastable(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    try:
        np.broadcast_shapes(tuple(a), tuple(b))
    except ValueError:
        return False
    return True


def _as_bool(m: Mask, name: str) -> Mask:
    if m.dtype in (np.bool_, torch.bool):
        return m
    if not ((m == 0) | (m == 1)).all():
        raise ValueError(f"{name} must be a bool mask or contain only 0 and 1")
    return m != 0


def _count(m: Mask) -> Mask:
    """Number of True pixels over the last two axes, (..., H, W) -> (...)."""
    return m.sum(axis=(-2, -1))


def _ratio(num: Mask, den: Mask) -> Mask:
    """num / den with 1.0 where den == 0 (both masks empty)."""
    if isinstance(num, torch.Tensor):
        return torch.where(den == 0, 1.0, num / den.clamp(min=1))
    return np.where(den == 0, 1.0, num / np.maximum(den, 1))
