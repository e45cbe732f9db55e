"""Uncertainty metrics, UncCorr and the uncertainty report on hand-made cases
(ppd.metrics.uncertainty, .postprocess, .report)."""

import logging
import math

import numpy as np
import pytest
import torch

from ppd.metrics import (
    aurc,
    boundary_f,
    e_aurc,
    ece,
    iou,
    j_and_f,
    pavpu,
    unc_corr,
    uncertainty_auroc,
    uncertainty_error_pearson,
    uncertainty_report,
)


def _prediction(seed: int = 0, hw: tuple[int, int] = (200, 200), error_rate: float = 0.3):
    """A probability map, a ground truth and the error map of prob > 0.5 against it."""
    rng = np.random.default_rng(seed)
    gt = rng.random(hw) < 0.4
    error = rng.random(hw) < error_rate
    pred = gt ^ error
    prob = np.where(pred, 0.8, 0.2)
    return prob, gt, error


def _square(hw=(64, 64), top=20, left=20, size=20):
    m = np.zeros(hw, bool)
    m[top : top + size, left : left + size] = True
    return m


# ----------------------------------------------------------------------------- AUROC


def test_auroc_perfect_vs_random_uncertainty():
    prob, gt, error = _prediction()
    perfect = error.astype(float)  # u = 1 exactly on errors
    random = np.random.default_rng(1).random(error.shape)
    assert uncertainty_auroc(perfect, error) == 1.0
    assert uncertainty_auroc(1.0 - perfect, error) == 0.0
    assert uncertainty_auroc(random, error) == pytest.approx(0.5, abs=0.02)


def test_auroc_ties_count_half():
    # Two errors with u = 0.5, 0.9; two correct pixels with u = 0.5, 0.1.
    # Pairs (err, ok): (0.5,0.5) tie 1/2, (0.5,0.1) 1, (0.9,0.5) 1, (0.9,0.1) 1 -> 3.5/4.
    u = np.array([0.5, 0.9, 0.5, 0.1])
    err = np.array([True, True, False, False])
    assert uncertainty_auroc(u, err) == pytest.approx(3.5 / 4)


def test_auroc_one_class_is_nan_with_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="ppd.metrics"):
        out = uncertainty_auroc(np.random.rand(8, 8), np.zeros((8, 8), bool))
    assert math.isnan(out)
    assert "one class" in caplog.text


# ----------------------------------------------------------------------------- PAvPU


def test_pavpu_perfect_vs_random_uncertainty():
    prob, gt, error = _prediction()
    assert pavpu(prob, error.astype(float), gt) == 1.0
    # Uncertainty independent of the errors and certain half of the time (0 or 1, so the
    # same at every threshold): PAvPU = 0.5 acc + 0.5 (1 - acc) = 0.5.
    random = (np.random.default_rng(2).random(error.shape) < 0.5).astype(float)
    assert pavpu(prob, random, gt) == pytest.approx(0.5, abs=0.02)
    # All certain: PAvPU is the accuracy.
    assert pavpu(prob, np.zeros_like(prob), gt) == pytest.approx(1 - error.mean())


def test_pavpu_threshold_is_strict_and_averaged():
    prob = np.array([[0.9, 0.9]])
    gt = np.array([[1, 1]])  # both pixels accurate
    u = np.array([[0.05, 0.05]])
    # Certain iff u < t: uncertain at 0.01 and 0.05, certain at 0.1 -> mean(0, 0, 1).
    assert pavpu(prob, u, gt) == pytest.approx(1 / 3)
    assert pavpu(prob, u, gt, thresholds=(0.1,)) == 1.0


def test_pavpu_windows():
    gt = np.zeros((5, 5), bool)
    pred = gt.copy()
    pred[0, 0] = pred[0, 1] = pred[1, 0] = True  # patch (0,0): 3 of 4 wrong, inaccurate
    pred[0, 2] = True  # patch (0,1): 1 of 4 wrong, still accurate (0.75 >= 0.5)
    u = np.zeros((5, 5))
    u[:2, :2] = 0.5  # inaccurate patch is uncertain: good
    u[:2, 2:4] = 0.2  # accurate patch is uncertain: bad
    # Row 4 and column 4 do not fill a 2x2 window and are left out: make them all wrong.
    pred[4, :] = pred[:, 4] = True
    # 4 patches: accurate-certain x2, inaccurate-uncertain x1, accurate-uncertain x1.
    assert pavpu(pred.astype(float), u, gt, window=2) == pytest.approx(0.75)
    # Pixel level on the same data differs.
    assert pavpu(pred.astype(float), u, gt, window=1) != pytest.approx(0.75)


def test_pavpu_batched_pools_pixels():
    prob, gt, error = _prediction(hw=(3, 20, 20))
    u = np.random.default_rng(3).random(prob.shape)
    parts = [pavpu(p, v, g) for p, v, g in zip(prob, u, gt)]
    assert pavpu(prob, u, gt) == pytest.approx(np.mean(parts))  # equal-size images


# ----------------------------------------------------------------------------- AURC


def _aurc_brute_force(confidence, correct):
    """Mean over coverages k of the error rate of the k most confident (no ties)."""
    n = len(confidence)
    total = 0.0
    for c in confidence:
        selected = [j for j in range(n) if confidence[j] >= c]
        total += sum(not correct[j] for j in selected) / len(selected)
    return total / n


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aurc_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    confidence = rng.random(60)
    correct = rng.random(60) < confidence  # informative but imperfect
    assert aurc(confidence, correct) == pytest.approx(_aurc_brute_force(confidence, correct))
    # Shape does not matter, pixels are pooled.
    assert aurc(confidence.reshape(6, 10), correct.reshape(6, 10)) == pytest.approx(
        aurc(confidence, correct)
    )


def test_e_aurc_zero_for_oracle_ordering_positive_for_random():
    prob, gt, error = _prediction()
    correct = ~error
    assert e_aurc(correct.astype(float), correct) == pytest.approx(0.0, abs=1e-12)
    assert e_aurc(1.0 - error, correct) == pytest.approx(0.0, abs=1e-12)
    # The oracle's AURC is E-AURC's offset: AURC(oracle) = AURC(conf) - E-AURC(conf).
    random = np.random.default_rng(4).random(error.shape)
    assert e_aurc(random, correct) > 0.1
    assert aurc(random, correct) == pytest.approx(error.mean(), abs=0.01)


def test_aurc_ties_are_order_independent():
    correct = np.array([True, False, True, True, False, True])
    flat = np.full(correct.shape, 0.7)
    # All confidences equal: every coverage has the expected risk, the error rate.
    assert aurc(flat, correct) == pytest.approx(2 / 6)
    assert aurc(flat, correct[::-1]) == pytest.approx(2 / 6)


def test_aurc_large_input_is_fast_enough():
    rng = np.random.default_rng(5)
    conf = rng.random(1_000_000)
    correct = rng.random(1_000_000) < conf
    assert 0.0 < aurc(conf, correct) < 0.5  # vectorised: runs in well under a second


# ----------------------------------------------------------------------------- ECE


def test_ece_calibrated_vs_overconfident():
    rng = np.random.default_rng(6)
    p = rng.random((400, 500))
    gt = rng.random(p.shape) < p  # labels ~ Bernoulli(p): calibrated by construction
    assert ece(p, gt) < 0.01
    overconfident = np.where(p > 0.5, 0.99, 0.01)
    # Confidence 0.99, accuracy E[max(p, 1-p)] = 0.75.
    assert ece(overconfident, gt) == pytest.approx(0.24, abs=0.01)


def test_ece_hand_computed():
    prob = np.array([0.9, 0.9, 0.2, 0.6])
    gt = np.array([1, 0, 0, 1])
    # conf 0.9 (2 px, acc 1/2), 0.8 (acc 1), 0.6 (acc 1), each in its own bin.
    assert ece(prob, gt) == pytest.approx((2 * 0.4 + 0.2 + 0.4) / 4)
    assert ece(prob, gt, n_bins=1) == pytest.approx(abs(0.75 - np.mean([0.9, 0.9, 0.8, 0.6])))


# ----------------------------------------------------------------------------- Pearson


def test_pearson_perfect_and_constant(caplog):
    prob, gt, error = _prediction()
    assert uncertainty_error_pearson(error.astype(float), error) == pytest.approx(1.0)
    random = np.random.default_rng(7).random(error.shape)
    assert abs(uncertainty_error_pearson(random, error)) < 0.03
    with caplog.at_level(logging.WARNING, logger="ppd.metrics"):
        assert math.isnan(uncertainty_error_pearson(np.ones((4, 4)), error[:4, :4]))
    assert "constant" in caplog.text


def test_pearson_of_float32_maps_is_computed_in_float64():
    # a 1024 x 768 image: float32 sums over 786k pixels lose about 5e-5 of the correlation
    rng = np.random.default_rng(3)
    uncertainty = rng.random((768, 1024), dtype=np.float32)
    error = (0.6 * uncertainty + rng.random((768, 1024), dtype=np.float32) + 10.0).astype(np.float32)
    want = np.corrcoef(uncertainty.astype(np.float64).ravel(), error.astype(np.float64).ravel())[0, 1]
    assert uncertainty_error_pearson(uncertainty, error) == pytest.approx(want, abs=1e-12, rel=0)
    assert uncertainty_error_pearson(torch.from_numpy(uncertainty), torch.from_numpy(error)) == pytest.approx(want, abs=1e-12, rel=0)


# ----------------------------------------------------------------------------- UncCorr


def _blobs():
    mask = np.zeros((40, 40), bool)
    u = np.zeros((40, 40))
    mask[5:15, 5:15] = True  # largest component, 100 px
    u[5:15, 5:15] = 0.05
    mask[30:33, 30:33] = True  # spurious blob, very uncertain
    u[30:33, 30:33] = 0.9
    mask[30:32, 5:7] = True  # small but confident fragment
    u[30:32, 5:7] = 0.05
    return mask, u


def test_unc_corr_removes_uncertain_blob_only():
    mask, u = _blobs()
    out = unc_corr(mask, u)
    expected = mask.copy()
    expected[30:33, 30:33] = False
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == bool and mask[30, 30]  # input untouched


def test_unc_corr_keeps_largest_component_even_if_uncertain():
    mask, u = _blobs()
    u[5:15, 5:15] = 0.95  # the largest component is now the most uncertain
    u[30:33, 30:33] = 0.6
    # percentile 0 -> threshold = max(min fg uncertainty 0.05, floor 0.2) = 0.2.
    out = unc_corr(mask, u, percentile=0, floor=0.2)
    assert out[5:15, 5:15].all()  # largest kept although 0.95 > 0.2
    assert not out[30:33, 30:33].any()  # 0.6 > 0.2: removed
    assert out[30:32, 5:7].all()  # 0.05: kept


def test_unc_corr_floor_protects_confident_masks_and_batches():
    mask, u = _blobs()
    u[30:33, 30:33] = 0.3  # above the 90th percentile, but below the floor 0.5
    np.testing.assert_array_equal(unc_corr(mask, u), mask)
    both = unc_corr(np.stack([mask, mask]), np.stack([u, _blobs()[1]]))
    assert both.shape == (2, 40, 40)
    assert both[0, 31, 31] and not both[1, 31, 31]
    empty = np.zeros((8, 8), bool)
    np.testing.assert_array_equal(unc_corr(empty, np.ones((8, 8))), empty)


def test_unc_corr_connectivity():
    mask = np.zeros((10, 10), bool)
    u = np.zeros((10, 10))
    mask[:4, :4] = True
    mask[4, 4] = True  # touches the square only diagonally
    u[4, 4] = 1.0
    assert unc_corr(mask, u, connectivity=8)[4, 4]  # same component as the square
    assert not unc_corr(mask, u, connectivity=4)[4, 4]  # own component, removed


# ----------------------------------------------------------------------------- report


def test_uncertainty_report_perfect_uncertainty():
    prob, gt, error = _prediction(hw=(64, 64))
    rep = uncertainty_report(prob, error.astype(float), gt)
    assert set(rep) == {
        "j", "f", "j_and_f", "unccorr_j_and_f", "pavpu", "aurc", "e_aurc", "ece",
        "auroc", "pearson", "error_rate",
    }
    assert rep["auroc"] == 1.0 and rep["pavpu"] == 1.0 and rep["pearson"] == pytest.approx(1)
    assert rep["e_aurc"] == pytest.approx(0.0, abs=1e-12)
    assert rep["error_rate"] == pytest.approx(error.mean())
    assert rep["j"] == pytest.approx(float(iou(prob > 0.5, gt)))
    assert all(isinstance(v, float) for v in rep.values())
    # every entry is its metric's value
    pred, u = prob > 0.5, error.astype(float)
    assert rep["f"] == float(boundary_f(pred, gt)) and rep["j_and_f"] == float(j_and_f(pred, gt))
    assert rep["unccorr_j_and_f"] == float(j_and_f(unc_corr(pred, u), gt))
    assert rep["aurc"] == aurc(1.0 - u, ~error) and rep["ece"] == ece(prob, gt)
    assert rep["f"] != rep["j_and_f"] and rep["aurc"] > 0 and rep["ece"] > 0  # values a mix-up would change


def test_uncertainty_report_unccorr_removes_an_uncertain_fragment():
    gt = _square((40, 40), 5, 5, 12)
    prob = np.where(gt, 0.9, 0.1)
    prob[30:33, 30:33] = 0.6  # a false fragment
    u = np.zeros((40, 40))
    u[30:33, 30:33] = 1.0
    rep = uncertainty_report(prob, u, gt)
    assert rep["j"] < 1.0 and rep["unccorr_j_and_f"] == 1.0 > rep["j_and_f"]


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
    prob, gt, error = _prediction(hw=(8, 8))
    u = np.zeros((8, 8))
    with pytest.raises(ValueError, match="same shape"):
        pavpu(prob, u[:4], gt)
    with pytest.raises(ValueError, match=r"prob must lie in \[0, 1\]"):
        pavpu(prob * 2, u, gt)
    with pytest.raises(ValueError, match=r"prob must lie in \[0, 1\]"):
        ece(prob - 1, gt)
    with pytest.raises(ValueError, match="uncertainty must lie in"):
        unc_corr(gt, u + 2)
    with pytest.raises(ValueError, match="NaN"):
        aurc(np.full(4, np.nan), np.ones(4, bool))
    with pytest.raises(ValueError, match="gt must be a bool mask"):
        ece(prob, prob)
    with pytest.raises(ValueError, match="same shape"):
        uncertainty_auroc(u, error[:, :4])
    with pytest.raises(ValueError, match="same shape"):
        e_aurc(u.ravel(), error)
    with pytest.raises(ValueError, match="window"):
        pavpu(prob, u, gt, window=9)
    with pytest.raises(ValueError, match="n_bins"):
        ece(prob, gt, n_bins=0)
    with pytest.raises(ValueError, match="tolerance"):
        boundary_f(gt, gt, tolerance=-1)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        j_and_f(gt, gt[:4])
    with pytest.raises(ValueError, match="empty"):
        aurc(np.array([]), np.array([], bool))


def test_torch_inputs_accepted():
    prob, gt, error = _prediction(hw=(16, 16))
    t = torch.from_numpy
    assert pavpu(t(prob), t(error.astype(float)), t(gt)) == 1.0
    assert uncertainty_auroc(t(error.astype(float)), t(error)) == 1.0
    assert ece(t(prob).float(), t(gt)) == pytest.approx(ece(prob, gt), abs=1e-6)
