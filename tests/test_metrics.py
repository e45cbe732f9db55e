import numpy as np
import pytest
import torch

from ppd.metrics import dice, iou


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
