"""Segmentation metrics on hand-made cases: IoU, Dice and DAVIS J&F (ppd.metrics.segmentation)."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from ppd.metrics import boundary_f, davis_tolerance, dice, iou, j_and_f


def _masks():
    """Two 4x4 masks: top half (8 px) and left half (8 px), overlapping in 4 px."""
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[:, :2] = True
    return a, b


def test_hand_computed_values():
    a, b = _masks()
    assert iou(a, b) == pytest.approx(4 / 12)
    assert dice(a, b) == pytest.approx(2 * 4 / 16)
    assert iou(a, a) == 1.0 and dice(a, a) == 1.0
    assert iou(a, ~a) == 0.0 and dice(a, ~a) == 0.0


def test_single_pair_returns_0d_float64_array():
    a, b = _masks()
    out = iou(a, b)
    assert isinstance(out, np.ndarray) and out.shape == () and out.dtype == np.float64


def test_batch_broadcasts_against_single_mask():
    a, b = _masks()
    empty = np.zeros_like(a)
    preds = np.stack([a, b, empty])  # (3, 4, 4)
    np.testing.assert_allclose(iou(preds, b), [4 / 12, 1.0, 0.0])
    np.testing.assert_allclose(dice(preds, b), [0.5, 1.0, 0.0])
    assert iou(preds[:, None], preds[None]).shape == (3, 3)


def test_empty_union_is_perfect():
    empty = np.zeros((5, 5), bool)
    assert iou(empty, empty) == 1.0
    assert dice(empty, empty) == 1.0


def test_accepts_zero_one_integers_and_rejects_other_values():
    a, b = _masks()
    assert iou(a.astype(np.uint8), b.astype(float)) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="pred must be a bool mask"):
        iou(a * 0.5, b)


def test_torch_matches_numpy_and_keeps_type():
    rng = np.random.default_rng(0)
    pred = rng.random((6, 8, 8)) > 0.5
    gt = rng.random((8, 8)) > 0.5
    for fn in (iou, dice):
        out = fn(torch.from_numpy(pred), torch.from_numpy(gt))
        assert isinstance(out, torch.Tensor) and out.shape == (6,)
        np.testing.assert_allclose(out.numpy(), fn(pred, gt), rtol=1e-6)
    mixed = iou(torch.from_numpy(pred), gt)  # numpy gt is moved to the tensor's device
    assert isinstance(mixed, torch.Tensor)
    assert iou(torch.zeros(3, 3), torch.zeros(3, 3)).item() == 1.0


@pytest.mark.parametrize(
    "pred_shape, gt_shape", [((4, 4), (4, 5)), ((2, 4, 4), (3, 4, 4)), ((4,), (4,))]
)
def test_shape_mismatch_raises(pred_shape, gt_shape):
    with pytest.raises(ValueError, match="pred"):
        iou(np.zeros(pred_shape, bool), np.zeros(gt_shape, bool))


def _square(hw=(64, 64), top=20, left=20, size=20):
    m = np.zeros(hw, bool)
    m[top : top + size, left : left + size] = True
    return m


# ----------------------------------------------------------------------------- J&F


def test_davis_tolerance():
    assert davis_tolerance(256, 256) == 3
    assert davis_tolerance(1024, 1024) == 12
    assert davis_tolerance(64, 64) == 1


def test_j_and_f_identical_masks_is_one():
    m = _square()
    assert boundary_f(m, m) == 1.0
    assert j_and_f(m, m) == 1.0
    empty = np.zeros_like(m)
    assert j_and_f(empty, empty) == 1.0  # empty vs empty is perfect
    assert boundary_f(empty, m) == 0.0 and j_and_f(empty, m) == 0.0


def test_one_pixel_shift_within_tolerance():
    m = _square()
    shifted = np.roll(m, 1, axis=1)
    assert davis_tolerance(*m.shape) >= 1
    assert boundary_f(shifted, m) == 1.0
    assert boundary_f(shifted, m, tolerance=0) < 0.9
    assert j_and_f(shifted, m) == pytest.approx((float(iou(shifted, m)) + 1.0) / 2)
    assert float(iou(shifted, m)) < 1.0


def test_boundary_f_matches_disk_dilation():
    """Distance-transform matching equals DAVIS's dilation by a disk of radius r."""
    rng = np.random.default_rng(8)
    noise = ndimage.gaussian_filter(rng.random((2, 48, 56)), sigma=(0, 3, 3))
    a, b = noise[0] > 0.5, noise[1] > 0.5
    ba, bb = _seg2bmap_reference(a), _seg2bmap_reference(b)
    for r in (0, 1, 2, 3):
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        disk = xx**2 + yy**2 <= r**2
        p = (ba & ndimage.binary_dilation(bb, disk)).sum() / ba.sum()
        rc = (bb & ndimage.binary_dilation(ba, disk)).sum() / bb.sum()
        assert boundary_f(a, b, tolerance=r) == pytest.approx(2 * p * rc / (p + rc))


def _seg2bmap_reference(seg):
    """DAVIS seg2bmap for same-size output, written out pixel by pixel."""
    h, w = seg.shape
    b = np.zeros_like(seg)
    for y in range(h):
        for x in range(w):
            nbrs = [(y, x + 1), (y + 1, x), (y + 1, x + 1)]
            if y == h - 1:
                nbrs = [(y, x + 1)]
            if x == w - 1:
                nbrs = [(y + 1, x)]
            if y == h - 1 and x == w - 1:
                nbrs = []
            b[y, x] = any(yy < h and xx < w and seg[yy, xx] != seg[y, x] for yy, xx in nbrs)
    return b


def test_j_and_f_batched_and_torch():
    m = _square()
    shifted = np.roll(m, 3, axis=0)
    preds = np.stack([m, shifted, np.zeros_like(m)])
    out = j_and_f(preds, m)
    assert out.shape == (3,) and out.dtype == np.float64
    assert out[0] == 1.0 and out[2] == 0.0
    assert 0 < out[1] < 1 and out[1] == pytest.approx((float(iou(shifted, m)) + float(boundary_f(shifted, m))) / 2)
    from_torch = boundary_f(torch.from_numpy(preds), torch.from_numpy(m))
    assert isinstance(from_torch, np.ndarray) and from_torch.shape == (3,)
    np.testing.assert_array_equal(from_torch, boundary_f(preds, m))
    assert float(j_and_f(m, m)) == 1.0 and j_and_f(m, m).shape == ()
