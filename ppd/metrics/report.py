"""Every metric at once for one prediction with its uncertainty map."""

from __future__ import annotations

import numpy as np

from ppd.metrics.checks import Array, pixel_inputs, predicted_mask
from ppd.metrics.postprocess import unc_corr
from ppd.metrics.segmentation import boundary_f, iou, j_and_f
from ppd.metrics.uncertainty import aurc, e_aurc, ece, pavpu, uncertainty_auroc, uncertainty_error_pearson


def uncertainty_report(
    prob: Array, uncertainty: Array, gt: Array, pavpu_window: int = 1
) -> dict[str, float]:
    """Every metric of :mod:`ppd.metrics` for one prediction with its uncertainty map.

    The predicted mask is ``prob > 0.5``; errors are where it differs from ``gt``;
    AURC/E-AURC rank pixels by ``1 - uncertainty``.

    Args:
        prob: (H, W) or (B, H, W) predicted foreground probability in [0, 1].
        uncertainty: same shape, per-pixel uncertainty in [0, 1].
        gt: same shape, ground-truth mask, bool or 0/1.
        pavpu_window: ``window`` for :func:`pavpu`.

    Returns:
        dict of floats: ``j``, ``f``, ``j_and_f`` (mean over the batch, in [0, 1]),
        ``unccorr_j_and_f`` (J&F after :func:`unc_corr` with its defaults), ``pavpu``,
        ``aurc``, ``e_aurc``, ``ece``, ``auroc`` (nan if there are no errors or no correct
        pixels), ``pearson`` (against the binary error map; nan if constant) and
        ``error_rate``; pixel metrics pool the whole batch.

    Raises:
        ValueError: as the individual metrics.
    """
    prob, uncertainty, gt = pixel_inputs(prob=prob, uncertainty=uncertainty, gt=gt)
    if prob.ndim not in (2, 3):
        raise ValueError(f"prob must have shape (H, W) or (B, H, W), got {prob.shape}")
    pred = predicted_mask(prob)
    error = pred != gt
    cleaned = unc_corr(pred, uncertainty)
    return {
        "j": float(np.mean(iou(pred, gt))),
        "f": float(np.mean(boundary_f(pred, gt))),
        "j_and_f": float(np.mean(j_and_f(pred, gt))),
        "unccorr_j_and_f": float(np.mean(j_and_f(cleaned, gt))),
        "pavpu": pavpu(prob, uncertainty, gt, window=pavpu_window),
        "aurc": aurc(1.0 - uncertainty, ~error),
        "e_aurc": e_aurc(1.0 - uncertainty, ~error),
        "ece": ece(prob, gt),
        "auroc": uncertainty_auroc(uncertainty, error),
        "pearson": uncertainty_error_pearson(uncertainty, error.astype(np.float64)),
        "error_rate": float(np.mean(error)),
    }
