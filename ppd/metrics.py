"""Segmentation and uncertainty metrics, and uncertainty-guided mask post-processing.

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

Uncertainty metrics
-------------------
:func:`pavpu`, :func:`aurc`, :func:`e_aurc`, :func:`ece`, :func:`uncertainty_auroc`,
:func:`uncertainty_error_pearson`: pixel-level metrics of a probability map and/or an
uncertainty map against the ground truth (or against a per-pixel error map). Inputs are
numpy arrays or torch tensors (converted with ``.detach().cpu().numpy()``) of one common
shape, typically (H, W) or (B, H, W); every pixel of every image is pooled into one
number, returned as a Python ``float``. Call the metric once per image (or per dataset)
to get per-image (or per-dataset) values. Conventions shared by all of them:

    * ``prob`` is the predicted foreground probability in [0, 1]; the predicted mask is
      ``prob > 0.5`` (SAM2's ``logits > 0``); a binary mask is a valid ``prob``.
    * ``uncertainty`` is in [0, 1] where a threshold is applied to it (PAvPU, UncCorr),
      e.g. the binary entropy of the prediction divided by ln 2; elsewhere only its
      ordering matters.
    * A pixel is an error where the predicted mask differs from the ground truth.

Post-processing: :func:`unc_corr` (RUAC's UncCorr connected-component filter).
Everything at once for one mask: :func:`uncertainty_report`.

References:
    * Perazzi et al., "A Benchmark Dataset and Evaluation Methodology for Video Object
      Segmentation", CVPR 2016 (DAVIS J and F).
    * Mukhoti & Gal, "Evaluating Bayesian Deep Learning Methods for Semantic
      Segmentation", arXiv:1811.12709, 2018 (PAvPU).
    * Geifman, Uziel & El-Yaniv, "Bias-Reduced Uncertainty Estimation for Deep Neural
      Classifiers", ICLR 2019 (AURC, E-AURC).
    * Guo et al., "On Calibration of Modern Neural Networks", ICML 2017 (ECE).
    * RUAC (seed paper 004): J&F, PAvPU over thresholds {0.01, 0.05, 0.1}, AURC, ECE,
      pixel AUROC and Pearson of uncertainty vs error, UncCorr (its Appendix N).
"""

from __future__ import annotations

import logging
import math
from typing import Sequence, Union

import numpy as np
import torch
from scipy import ndimage, stats

Mask = Union[np.ndarray, torch.Tensor]
Array = Union[np.ndarray, torch.Tensor]

logger = logging.getLogger(__name__)


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


# --------------------------------------------------------------------------------------
# DAVIS J&F
# --------------------------------------------------------------------------------------

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
    pred, gt = _binary_pair(_to_numpy(pred), _to_numpy(gt))
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
    pred, gt = _to_numpy(pred), _to_numpy(gt)
    return (np.asarray(iou(pred, gt), dtype=np.float64) + boundary_f(pred, gt)) / 2


# --------------------------------------------------------------------------------------
# Uncertainty metrics (pixels pooled, see the module docstring)
# --------------------------------------------------------------------------------------


def pavpu(
    prob: Array,
    uncertainty: Array,
    gt: Array,
    thresholds: Sequence[float] = (0.01, 0.05, 0.1),
    window: int = 1,
) -> float:
    """Patch Accuracy vs Patch Uncertainty, averaged over uncertainty thresholds.

    Each image is cut into non-overlapping ``window x window`` patches (trailing rows and
    columns that do not fill a whole patch are left out, as in Mukhoti & Gal). A patch is
    *accurate* if its pixel accuracy (predicted mask ``prob > 0.5`` equals ``gt``) is
    >= 0.5, and *certain* at threshold t if its mean uncertainty is < t (uncertain if
    >= t). With n_ac accurate-certain and n_iu inaccurate-uncertain patches out of N,
    PAvPU(t) = (n_ac + n_iu) / N; the result is the mean of PAvPU(t) over ``thresholds``.
    ``window=1`` is the pixel-level version. Patches of every image are pooled.

    Perfect uncertainty (1 exactly on errors, 0 elsewhere) gives 1. Uncertainty that is
    independent of the errors gives P(certain) * acc + P(uncertain) * (1 - acc), which is
    0.5 when either factor is 0.5 (RUAC's "a random uncertainty scores 50").

    Args:
        prob: (..., H, W) predicted foreground probability in [0, 1] (or a binary mask).
        uncertainty: (..., H, W) per-pixel uncertainty in [0, 1], same shape as ``prob``.
        gt: (..., H, W) ground-truth mask, bool or 0/1, same shape as ``prob``.
        thresholds: uncertainty thresholds in (0, 1]; default RUAC/BNDL's
            (0.01, 0.05, 0.1).
        window: patch side in pixels (>= 1, at most min(H, W)); Mukhoti & Gal use 4.

    Returns:
        PAvPU in [0, 1] (RUAC reports x100).

    Raises:
        ValueError: on shape mismatch, ``prob`` or ``uncertainty`` outside [0, 1] or not
            finite, a non-binary ``gt``, empty ``thresholds`` or a bad ``window``.

    Reference: Mukhoti & Gal, arXiv:1811.12709 (2018); thresholds from BNDL/RUAC.
    """
    prob, uncertainty, gt = _pixel_inputs(prob=prob, uncertainty=uncertainty, gt=gt)
    if prob.ndim < 2:
        raise ValueError(f"prob must have shape (..., H, W), got {prob.shape}")
    thr = np.asarray(list(thresholds), dtype=np.float64)
    if thr.size == 0 or not np.all(np.isfinite(thr)):
        raise ValueError(f"thresholds must be a non-empty sequence of numbers, got {thresholds}")
    h, w = prob.shape[-2:]
    if int(window) != window or window < 1 or window > min(h, w):
        raise ValueError(f"window must be an integer in [1, min(H, W) = {min(h, w)}], got {window}")
    window = int(window)
    correct = _predict(prob) == gt
    acc = _window_mean(correct.astype(np.float64), window)
    unc = _window_mean(uncertainty.astype(np.float64), window)
    accurate = (acc >= 0.5).ravel()
    unc = unc.ravel()
    n = accurate.size
    scores = []
    for t in thr:
        certain = unc < t
        n_ac = np.count_nonzero(accurate & certain)
        n_iu = np.count_nonzero(~accurate & ~certain)
        scores.append((n_ac + n_iu) / n)
    return float(np.mean(scores))


def aurc(confidence: Array, correct: Array) -> float:
    """Area under the risk-coverage curve (lower is better).

    Samples (pixels) are sorted by ``confidence`` in descending order; keeping the k most
    confident (coverage k / N) has risk = errors among them / k. AURC is the mean of that
    risk over k = 1..N. Ties in ``confidence`` are resolved by their expected value over
    random orderings (errors spread evenly inside a group of equal confidence), so the
    result does not depend on the input order; without ties it is the plain definition.
    O(N log N) (one sort and cumulative sums), fine for millions of pixels.

    To score an uncertainty map pass ``confidence = 1 - uncertainty`` (or
    ``-uncertainty``): only the ordering matters.

    Args:
        confidence: any shape, finite real values, e.g. (H, W) or (B, H, W).
        correct: same shape as ``confidence``, bool or 0/1: True where the prediction is
            right (``(prob > 0.5) == gt``).

    Returns:
        AURC in [0, 1]; equals the error rate for uninformative (all-equal) confidence.

    Raises:
        ValueError: on shape mismatch, empty input, non-finite confidence or non-binary
            ``correct``.

    Reference: Geifman, Uziel & El-Yaniv, ICLR 2019.
    """
    confidence, correct = _confidence_inputs(confidence, correct)
    return float(_aurc(confidence, correct))


def e_aurc(confidence: Array, correct: Array) -> float:
    """Excess AURC: :func:`aurc` minus the AURC of the oracle ordering (all correct first).

    The oracle AURC depends only on the error rate, so E-AURC isolates the ranking quality
    of ``confidence`` from the accuracy of the predictions: 0 for a perfect ranking.

    Args:
        confidence: any shape, finite real values (e.g. ``1 - uncertainty``).
        correct: same shape, bool or 0/1, True where the prediction is right.

    Returns:
        E-AURC >= 0 (up to rounding).

    Raises:
        ValueError: as :func:`aurc`.

    Reference: Geifman, Uziel & El-Yaniv, ICLR 2019.
    """
    confidence, correct = _confidence_inputs(confidence, correct)
    n = correct.size
    n_err = n - int(np.count_nonzero(correct))
    k = np.arange(n - n_err + 1, n + 1, dtype=np.float64)  # coverages that include errors
    oracle = float(np.sum((k - (n - n_err)) / k) / n)
    return float(_aurc(confidence, correct) - oracle)


def ece(prob: Array, gt: Array, n_bins: int = 15) -> float:
    """Binary pixel Expected Calibration Error.

    Each pixel has confidence ``max(p, 1 - p)`` in the predicted label ``p > 0.5`` and is
    accurate if that label equals ``gt``. Confidences fall into ``n_bins`` equal-width bins
    over [0, 1] (bin i is (i/n, (i+1)/n], as in Guo et al.; with binary confidences only
    the bins above 0.5 are used). ECE = sum over bins of (n_bin / N) * |acc_bin - conf_bin|.

    Args:
        prob: any shape, predicted foreground probability in [0, 1], e.g. (H, W) or
            (B, H, W).
        gt: same shape, ground-truth mask, bool or 0/1.
        n_bins: number of bins (>= 1); RUAC uses 15.

    Returns:
        ECE in [0, 1] (lower is better).

    Raises:
        ValueError: on shape mismatch, empty input, ``prob`` outside [0, 1] or not finite,
            non-binary ``gt``, or ``n_bins`` < 1.

    Reference: Guo et al., ICML 2017; Naeini et al., AAAI 2015.
    """
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins}")
    n_bins = int(n_bins)
    prob, gt = _pixel_inputs(prob=prob, gt=gt)
    prob = prob.ravel().astype(np.float64)
    gt = gt.ravel()
    conf = np.maximum(prob, 1.0 - prob)
    accurate = (prob > 0.5) == gt
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=accurate.astype(np.float64), minlength=n_bins)
    return float(np.sum(np.abs(acc_sum - conf_sum)) / prob.size)


def uncertainty_auroc(uncertainty: Array, error: Array) -> float:
    """Pixel AUROC of uncertainty as a detector of prediction errors.

    The probability that a random erroneous pixel has higher uncertainty than a random
    correct one, ties counting 1/2 (Mann-Whitney U with average ranks). 1 = perfect
    separation, 0.5 = uninformative.

    Args:
        uncertainty: any shape, finite real values, e.g. (H, W) or (B, H, W).
        error: same shape, bool or 0/1, True where the prediction is wrong.

    Returns:
        AUROC in [0, 1], or ``nan`` (with a logged warning) when ``error`` holds only one
        class (no errors, or no correct pixels).

    Raises:
        ValueError: on shape mismatch, empty input, non-finite uncertainty or non-binary
            ``error``.

    Reference: RUAC Appendix H.1 (failure-detection AUROC at pixel granularity).
    """
    uncertainty, error = _confidence_inputs(uncertainty, error, names=("uncertainty", "error"))
    n_pos = int(np.count_nonzero(error))
    n_neg = error.size - n_pos
    if n_pos == 0 or n_neg == 0:
        logger.warning(
            "uncertainty_auroc: error has only one class (%d errors, %d correct pixels); "
            "AUROC is undefined, returning nan",
            n_pos,
            n_neg,
        )
        return float("nan")
    ranks = stats.rankdata(uncertainty)
    u_stat = ranks[error].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u_stat / (n_pos * n_neg))


def uncertainty_error_pearson(uncertainty: Array, error: Array) -> float:
    """Pearson correlation between per-pixel uncertainty and per-pixel error.

    Args:
        uncertainty: any shape, finite real values, e.g. (H, W) or (B, H, W).
        error: same shape, finite real values: a bool/0-1 error map or a continuous error
            such as ``|prob - gt|``.

    Returns:
        Correlation in [-1, 1], or ``nan`` (with a logged warning) when either input is
        constant.

    Raises:
        ValueError: on shape mismatch, empty or non-finite input.

    Reference: RUAC Appendix H.2 (uncertainty-accuracy PCC).
    """
    u = _finite(uncertainty, "uncertainty")
    e = _finite(error, "error")
    _same_shape(("uncertainty", u), ("error", e))
    u, e = u.ravel(), e.ravel()
    u, e = u - u.mean(), e - e.mean()
    den = math.sqrt(float(np.dot(u, u)) * float(np.dot(e, e)))
    if den == 0.0:
        logger.warning("uncertainty_error_pearson: an input is constant; returning nan")
        return float("nan")
    return float(np.clip(np.dot(u, e) / den, -1.0, 1.0))


# --------------------------------------------------------------------------------------
# Post-processing
# --------------------------------------------------------------------------------------

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
    m = _to_numpy(mask)
    if m.ndim not in (2, 3):
        raise ValueError(f"mask must have shape (H, W) or (B, H, W), got {m.shape}")
    m = _as_bool(m, "mask")
    u = _unit_interval(uncertainty, "uncertainty")
    _same_shape(("mask", m), ("uncertainty", u))
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


def uncertainty_report(
    prob: Array, uncertainty: Array, gt: Array, pavpu_window: int = 1
) -> dict[str, float]:
    """Every metric of this module for one prediction with its uncertainty map.

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
    prob, uncertainty, gt = _pixel_inputs(prob=prob, uncertainty=uncertainty, gt=gt)
    if prob.ndim not in (2, 3):
        raise ValueError(f"prob must have shape (H, W) or (B, H, W), got {prob.shape}")
    pred = _predict(prob)
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


# --------------------------------------------------------------------------------------
# Helpers of the DAVIS and uncertainty metrics (numpy only)
# --------------------------------------------------------------------------------------


def _to_numpy(x: Array) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _finite(x: Array, name: str) -> np.ndarray:
    """As a real numpy array; rejects empty, non-numeric and non-finite input."""
    a = _to_numpy(x)
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if a.dtype == np.bool_:
        return a
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def _unit_interval(x: Array, name: str) -> np.ndarray:
    a = _finite(x, name)
    if a.dtype != np.bool_ and (a.min() < 0 or a.max() > 1):
        raise ValueError(
            f"{name} must lie in [0, 1], got values in [{float(a.min())}, {float(a.max())}]"
        )
    return a.astype(np.float64) if a.dtype == np.bool_ else a


def _same_shape(*named: tuple[str, np.ndarray]) -> None:
    shapes = {tuple(a.shape) for _, a in named}
    if len(shapes) > 1:
        desc = ", ".join(f"{n} {tuple(a.shape)}" for n, a in named)
        raise ValueError(f"inputs must have the same shape, got {desc}")


def _pixel_inputs(**arrays: Array) -> list[np.ndarray]:
    """Validate keyword inputs named prob / uncertainty (in [0, 1]) and gt (binary)."""
    out = []
    for name, x in arrays.items():
        if name == "gt":
            a = _to_numpy(x)
            if a.size == 0:
                raise ValueError("gt is empty")
            out.append(_as_bool(a, "gt"))
        else:
            out.append(_unit_interval(x, name))
    _same_shape(*zip(arrays.keys(), out))
    return out


def _confidence_inputs(
    score: Array, label: Array, names: tuple[str, str] = ("confidence", "correct")
) -> tuple[np.ndarray, np.ndarray]:
    """A real score and a binary label of one shape, flattened."""
    s = _finite(score, names[0])
    lab = _to_numpy(label)
    if lab.size == 0:
        raise ValueError(f"{names[1]} is empty")
    lab = _as_bool(lab, names[1])
    _same_shape((names[0], s), (names[1], lab))
    return s.ravel().astype(np.float64), lab.ravel()


def _predict(prob: np.ndarray) -> np.ndarray:
    """Predicted mask of a probability map (SAM2's ``logits > 0``)."""
    return prob > 0.5


def _window_mean(x: np.ndarray, window: int) -> np.ndarray:
    """(..., H, W) -> (..., H // window, W // window) means over non-overlapping windows."""
    if window == 1:
        return x
    h, w = x.shape[-2:]
    hh, ww = h // window, w // window
    x = x[..., : hh * window, : ww * window]
    x = x.reshape(*x.shape[:-2], hh, window, ww, window)
    return x.mean(axis=(-3, -1))


def _aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """AURC of flat arrays, ties resolved by their expectation (see :func:`aurc`)."""
    n = confidence.size
    order = np.argsort(-confidence, kind="stable")
    conf = confidence[order]
    err = (~correct[order]).astype(np.float64)
    # Group boundaries of equal confidence: [starts[g], ends[g]) in sorted order.
    new_group = np.empty(n, bool)
    new_group[0] = True
    np.not_equal(conf[1:], conf[:-1], out=new_group[1:])
    starts = np.flatnonzero(new_group)
    ends = np.append(starts[1:], n)
    cum_err = np.concatenate(([0.0], np.cumsum(err)))
    size = (ends - starts).astype(np.float64)
    rate = (cum_err[ends] - cum_err[starts]) / size  # error rate inside each group
    group = np.repeat(np.arange(starts.size), ends - starts)
    k = np.arange(1, n + 1, dtype=np.float64)
    # Expected errors among the first k: all errors of earlier groups + a share of this one.
    errors_k = cum_err[starts][group] + (k - starts[group]) * rate[group]
    return float(np.mean(errors_k / k))


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
