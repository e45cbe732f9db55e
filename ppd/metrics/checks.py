"""Input checks shared by the metrics: binary masks, finite arrays, matching shapes.

Each check converts its input (numpy array or torch tensor) and raises a ValueError that
names the argument when it does not hold.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

Mask = Union[np.ndarray, torch.Tensor]
Array = Union[np.ndarray, torch.Tensor]


def binary_pair(pred: Mask, gt: Mask) -> tuple[Mask, Mask]:
    """Check shapes and convert both masks to bool, as tensors if either one is."""
    if isinstance(pred, torch.Tensor) or isinstance(gt, torch.Tensor):
        device = pred.device if isinstance(pred, torch.Tensor) else gt.device
        pred, gt = torch.as_tensor(pred, device=device), torch.as_tensor(gt, device=device)
    else:
        pred, gt = np.asarray(pred), np.asarray(gt)
    for name, m in (("pred", pred), ("gt", gt)):
        if m.ndim < 2:
            raise ValueError(f"{name} must have shape (..., H, W), got {tuple(m.shape)}")
    if pred.shape[-2:] != gt.shape[-2:] or not broadcastable(pred.shape, gt.shape):
        raise ValueError(
            "pred and gt must have the same (H, W) and broadcastable leading dimensions, "
            f"got {tuple(pred.shape)} and {tuple(gt.shape)}"
        )
    return as_bool(pred, "pred"), as_bool(gt, "gt")


def broadcastable(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    try:
        np.broadcast_shapes(tuple(a), tuple(b))
    except ValueError:
        return False
    return True


def as_bool(m: Mask, name: str) -> Mask:
    if m.dtype in (np.bool_, torch.bool):
        return m
    if not ((m == 0) | (m == 1)).all():
        raise ValueError(f"{name} must be a bool mask or contain only 0 and 1")
    return m != 0


def to_numpy(x: Array) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def finite(x: Array, name: str) -> np.ndarray:
    """As a real numpy array; rejects empty, non-numeric and non-finite input."""
    a = to_numpy(x)
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if a.dtype == np.bool_:
        return a
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def unit_interval(x: Array, name: str) -> np.ndarray:
    a = finite(x, name)
    if a.dtype != np.bool_ and (a.min() < 0 or a.max() > 1):
        raise ValueError(
            f"{name} must lie in [0, 1], got values in [{float(a.min())}, {float(a.max())}]"
        )
    return a.astype(np.float64) if a.dtype == np.bool_ else a


def same_shape(*named: tuple[str, np.ndarray]) -> None:
    shapes = {tuple(a.shape) for _, a in named}
    if len(shapes) > 1:
        desc = ", ".join(f"{n} {tuple(a.shape)}" for n, a in named)
        raise ValueError(f"inputs must have the same shape, got {desc}")


def pixel_inputs(**arrays: Array) -> list[np.ndarray]:
    """Validate keyword inputs named prob / uncertainty (in [0, 1]) and gt (binary)."""
    out = []
    for name, x in arrays.items():
        if name == "gt":
            a = to_numpy(x)
            if a.size == 0:
                raise ValueError("gt is empty")
            out.append(as_bool(a, "gt"))
        else:
            out.append(unit_interval(x, name))
    same_shape(*zip(arrays.keys(), out))
    return out


def confidence_inputs(
    score: Array, label: Array, names: tuple[str, str] = ("confidence", "correct")
) -> tuple[np.ndarray, np.ndarray]:
    """A real score and a binary label of one shape, flattened."""
    s = finite(score, names[0])
    lab = to_numpy(label)
    if lab.size == 0:
        raise ValueError(f"{names[1]} is empty")
    lab = as_bool(lab, names[1])
    same_shape((names[0], s), (names[1], lab))
    return s.ravel().astype(np.float64), lab.ravel()


def predicted_mask(prob: np.ndarray) -> np.ndarray:
    """Predicted mask of a probability map (SAM2's ``logits > 0``)."""
    return prob > 0.5
