"""Uncertainty-guided mask post-processing: RUAC's UncCorr connected-component filter."""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from ppd.metrics.checks import Array, as_bool, same_shape, to_numpy, unit_interval

logger = logging.getLogger(__name__)

#: UncCorr defaults. RUAC (Appendix N) uses "the p-th percentile of the predicted
#: foreground uncertainty with a floor"; the values did not survive in our copy of the
#: paper, so these are our choice: conservative (only components more uncertain on average
#: than 90% of the foreground pixels go, and never below a normalised entropy of 0.5,
#: i.e. a pixel probability of about 0.89 / 0.11).
UNCCORR_PERCENTILE = 90.0
UNCCORR_FLOOR = 0.5


def unc_corr(
    mask: Array,
    uncertainty: Array,
    percentile: float = UNCCORR_PERCENTILE,
    floor: float = UNCCORR_FLOOR,
    connectivity: int = 8,
) -> np.ndarray:
    """UncCorr: remove mask fragments whose mean uncertainty is high.

    Per image: split the mask into connected components; the threshold is
    ``max(percentile-th percentile of uncertainty over the mask's pixels, floor)``; every
    component whose mean uncertainty exceeds the threshold (strictly) is removed, except
    the largest component (by pixel count, first in scan order on ties), which is always
    kept. An empty mask is returned unchanged.

    Args:
        mask: (H, W) or (B, H, W) predicted mask, bool or 0/1.
        uncertainty: same shape as ``mask``, per-pixel uncertainty in [0, 1].
        percentile: percentile in [0, 100] of the foreground uncertainty (default 90).
        floor: lower bound on the threshold, in [0, 1] (default 0.5), so that confident
            masks lose nothing.
        connectivity: 8 (default, diagonal neighbours connect) or 4.

    Returns:
        Filtered bool mask, same shape as ``mask`` (a new array).

    Raises:
        ValueError: on shape mismatch, a non-binary mask, uncertainty outside [0, 1] or
            not finite, or a bad ``percentile`` / ``floor`` / ``connectivity``.

    Reference: RUAC Appendix N (after SeCoV2).
    """
    m = to_numpy(mask)
    if m.ndim not in (2, 3):
        raise ValueError(f"mask must have shape (H, W) or (B, H, W), got {m.shape}")
    m = as_bool(m, "mask")
    u = unit_interval(uncertainty, "uncertainty")
    same_shape(("mask", m), ("uncertainty", u))
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1], got {floor}")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    structure = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    hw = m.shape[-2:]
    out = [
        _unc_corr_single(mi, ui, percentile, floor, structure)
        for mi, ui in zip(m.reshape(-1, *hw), u.reshape(-1, *hw))
    ]
    return np.stack(out).reshape(m.shape)


def _unc_corr_single(
    mask: np.ndarray, unc: np.ndarray, percentile: float, floor: float, structure: np.ndarray
) -> np.ndarray:
    labels, n = ndimage.label(mask, structure=structure)
    if n <= 1:
        return mask.copy()
    threshold = max(float(np.percentile(unc[mask], percentile)), floor)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    mean_unc = np.bincount(labels.ravel(), weights=unc.ravel(), minlength=n + 1)[1:] / sizes
    keep = mean_unc <= threshold
    keep[int(np.argmax(sizes))] = True
    removed = int(n - np.count_nonzero(keep))
    if removed:
        logger.debug("unc_corr: removed %d of %d components (threshold %.3f)", removed, n,
                     threshold)
    return np.concatenate(([False], keep))[labels]
