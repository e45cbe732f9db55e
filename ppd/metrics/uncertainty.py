"""Uncertainty metrics: PAvPU, AURC, E-AURC, ECE, error AUROC and Pearson correlation.

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

References:
    * Mukhoti & Gal, "Evaluating Bayesian Deep Learning Methods for Semantic
      Segmentation", arXiv:1811.12709, 2018 (PAvPU).
    * Geifman, Uziel & El-Yaniv, "Bias-Reduced Uncertainty Estimation for Deep Neural
      Classifiers", ICLR 2019 (AURC, E-AURC).
    * Guo et al., "On Calibration of Modern Neural Networks", ICML 2017 (ECE).
    * RUAC (seed paper 004): PAvPU over thresholds {0.01, 0.05, 0.1}, AURC, ECE, pixel
      AUROC and Pearson of uncertainty vs error.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
from scipy import stats

from ppd.metrics.checks import Array, confidence_inputs, finite, pixel_inputs, predicted_mask, same_shape

logger = logging.getLogger(__name__)


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
    prob, uncertainty, gt = pixel_inputs(prob=prob, uncertainty=uncertainty, gt=gt)
    if prob.ndim < 2:
        raise ValueError(f"prob must have shape (..., H, W), got {prob.shape}")
    thr = np.asarray(list(thresholds), dtype=np.float64)
    if thr.size == 0 or not np.all(np.isfinite(thr)):
        raise ValueError(f"thresholds must be a non-empty sequence of numbers, got {thresholds}")
    h, w = prob.shape[-2:]
    if int(window) != window or window < 1 or window > min(h, w):
        raise ValueError(f"window must be an integer in [1, min(H, W) = {min(h, w)}], got {window}")
    window = int(window)
    correct = predicted_mask(prob) == gt
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
    confidence, correct = confidence_inputs(confidence, correct)
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
    confidence, correct = confidence_inputs(confidence, correct)
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
    prob, gt = pixel_inputs(prob=prob, gt=gt)
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
    uncertainty, error = confidence_inputs(uncertainty, error, names=("uncertainty", "error"))
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
        Correlation in [-1, 1], computed in float64 whatever the input dtype, or ``nan``
        (with a logged warning) when either input is constant.

    Raises:
        ValueError: on shape mismatch, empty or non-finite input.

    Reference: RUAC Appendix H.2 (uncertainty-accuracy PCC).
    """
    u = finite(uncertainty, "uncertainty")
    e = finite(error, "error")
    same_shape(("uncertainty", u), ("error", e))
    u, e = u.ravel().astype(np.float64), e.ravel().astype(np.float64)  # float32 sums drift over many pixels
    u, e = u - u.mean(), e - e.mean()
    den = math.sqrt(float(np.dot(u, u)) * float(np.dot(e, e)))
    if den == 0.0:
        logger.warning("uncertainty_error_pearson: an input is constant; returning nan")
        return float("nan")
    return float(np.clip(np.dot(u, e) / den, -1.0, 1.0))


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
