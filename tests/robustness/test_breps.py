"""The BREPS attacks against hand computations and their invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ppd.data.scenes import make_scene
from ppd.prompts import box_from_mask, ideal_prompts
from ppd.robustness.breps import (
    GAMMA_SCALE,
    GAMMA_SHAPE,
    _DiceFromLogits,
    _Upsample,
    box_attack,
    box_prior_nll,
    ciou_loss,
    gamma_log_density,
    learning_rate,
    point_attack,
    point_prior_nll,
    soft_dice_loss,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bundled():
    import ppd

    return ppd.load_segmenter(device="cpu")


@pytest.fixture(scope="module")
def scene():
    s = make_scene(3, "clutter", size=128)
    keep = np.argsort(-s.masks.sum((1, 2)))[:3]
    s.masks = s.masks[keep]
    return s


def _t(*v):
    return torch.tensor(v, dtype=torch.float64)


# -- loss terms ---------------------------------------------------------------------------

def test_ciou_loss_by_hand():
    # same aspect: 1 - IoU + rho^2 / c^2 only
    got = ciou_loss(_t(0, 0, 2, 2), _t(1, 1, 3, 3))
    assert float(got) == pytest.approx(1 - 1 / 7 + 2 / 18, abs=1e-6)
    # other aspect: + alpha v, v = 4/pi^2 (atan(1) - atan(2))^2, alpha = v / (1 - IoU + v)
    v = 4 / math.pi**2 * (math.atan(1.0) - math.atan(2.0)) ** 2
    got = ciou_loss(_t(0, 0, 4, 2), _t(0, 0, 2, 2))
    assert float(got) == pytest.approx(1 - 0.5 + 1 / 20 + v / (0.5 + v) * v, abs=1e-6)
    # disjoint boxes: IoU 0, still informative through the centre distance
    got = ciou_loss(_t(0, 0, 1, 1), _t(3, 0, 4, 1))
    assert float(got) == pytest.approx(1 + 9 / 17, abs=1e-6)
    assert float(ciou_loss(_t(5, 6, 20, 30), _t(5, 6, 20, 30))) == pytest.approx(0.0, abs=1e-6)


def test_ciou_alpha_is_held_constant_in_the_gradient():
    box = _t(0, 0, 4, 2).requires_grad_(True)
    ref = _t(0, 0, 2, 2)
    (g,) = torch.autograd.grad(ciou_loss(box, ref), box)
    v0 = 4 / math.pi**2 * (math.atan(1.0) - math.atan(2.0)) ** 2
    alpha = v0 / (0.5 + v0)

    def by_hand(b):  # alpha fixed at its value at the point of evaluation
        x0, y0, x1, y1 = b
        inter = max(0.0, min(x1, 2) - max(x0, 0)) * max(0.0, min(y1, 2) - max(y0, 0))
        iou = inter / ((x1 - x0) * (y1 - y0) + 4 - inter)
        c2 = (max(x1, 2) - min(x0, 0)) ** 2 + (max(y1, 2) - min(y0, 0)) ** 2
        rho2 = ((x0 + x1) / 2 - 1) ** 2 + ((y0 + y1) / 2 - 1) ** 2
        v = 4 / math.pi**2 * (math.atan(1.0) - math.atan((x1 - x0) / (y1 - y0))) ** 2
        return 1 - iou + rho2 / c2 + alpha * v

    h = 1e-6
    num = [(by_hand([c + h * (i == j) for j, c in enumerate((0, 0, 4, 2))])
            - by_hand([c - h * (i == j) for j, c in enumerate((0, 0, 4, 2))])) / (2 * h) for i in range(4)]
    np.testing.assert_allclose(g.numpy(), num, atol=1e-5)


def test_gamma_log_density_by_hand_and_scipy():
    from scipy import stats

    k, theta = GAMMA_SHAPE, GAMMA_SCALE
    assert (k, theta) == (1.7891955953866256, 0.12104836378138935)
    for c in (0.01, 0.1, 0.5, 2.0):
        hand = (k - 1) * math.log(c) - c / theta - math.lgamma(k) - k * math.log(theta)
        got = float(gamma_log_density(torch.tensor(c, dtype=torch.float64)))
        assert got == pytest.approx(hand, abs=1e-10)
        assert got == pytest.approx(stats.gamma.logpdf(c, a=k, scale=theta), abs=1e-10)
    # the mode (k - 1) theta: the prior's pull vanishes there
    c = torch.tensor((k - 1) * theta, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(gamma_log_density(c), c)
    assert abs(float(g)) < 1e-9


def test_box_prior_is_skipped_at_the_start_and_the_gamma_nll_elsewhere():
    start = torch.tensor([[10.0, 10.0, 50.0, 40.0], [0.0, 0.0, 8.0, 8.0]])
    moved = start + torch.tensor([[2.0, -1.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    got = box_prior_nll(moved, start)
    assert float(got[1]) == 0.0
    assert float(got[0]) == pytest.approx(float(-gamma_log_density(ciou_loss(moved[0], start[0]))), rel=1e-6)
    x = moved.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(box_prior_nll(x, start).sum(), x)
    assert torch.isfinite(g).all() and (g[1] == 0).all()


def test_point_prior_by_hand():
    start = torch.zeros(2, 3, 2)
    coords = torch.tensor([[[3.0, 4.0], [1.0, 0.0], [9.0, 9.0]], [[0.0, 2.0], [0.0, 0.0], [0.0, 0.0]]])
    real = torch.tensor([[True, True, False], [True, True, True]])
    got = point_prior_nll(coords, start, torch.tensor([2.0, 1.0]), real)
    np.testing.assert_allclose(got.numpy(), [(25 + 1) / (2 * 4), 4 / 2])


def test_soft_dice_by_hand():
    prob = torch.tensor([[[1.0, 0.5], [0.0, 0.25]]])
    gt = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    assert float(soft_dice_loss(prob, gt)[0]) == pytest.approx(1 - 2 * 1.5 / (1.75 + 2))
    valid = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # only the left column counts
    assert float(soft_dice_loss(prob, gt, valid)[0]) == pytest.approx(0.0)
    assert float(soft_dice_loss(gt, gt)[0]) == pytest.approx(0.0)
    assert float(soft_dice_loss(1 - gt, gt)[0]) == pytest.approx(1.0)


def test_written_out_dice_gradient_equals_autograds():
    torch.manual_seed(0)
    z = torch.randn(3, 50, dtype=torch.float64, requires_grad=True)
    gt = (torch.rand(3, 50, dtype=torch.float64) > 0.5).double()
    w = torch.randn(3, dtype=torch.float64)
    for keep in (None, (torch.rand(50, dtype=torch.float64) > 0.3).double()):
        g = gt if keep is None else gt * keep
        fast = _DiceFromLogits.apply(z, g, g.sum(1), keep)
        plain = soft_dice_loss(torch.sigmoid(z), g, keep)
        np.testing.assert_allclose(fast.detach().numpy(), plain.detach().numpy(), atol=1e-12)
        (a,) = torch.autograd.grad((fast * w).sum(), z)
        (b,) = torch.autograd.grad((plain * w).sum(), z)
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-12)


def test_learning_rate_scales_with_the_diagonal():
    assert learning_rate(1024, 1024) == pytest.approx(9.0)
    assert learning_rate(256, 256) == pytest.approx(2.25)
    assert learning_rate(300, 400, mult=1.0) == pytest.approx(500 / (1024 * math.sqrt(2)))


def test_upsampling_matrices_equal_bilinear_interpolation():
    low = torch.randn(3, 16, 16)
    for size in ((96, 128), (37, 53), (16, 16)):
        ref = F.interpolate(low[:, None], size, mode="bilinear", align_corners=False)[:, 0]
        np.testing.assert_allclose(_Upsample(16, size, torch.device("cpu"))(low).reshape(3, *size).numpy(),
                                   ref.numpy(), atol=1e-5)


# -- the attacks ---------------------------------------------------------------------------

def _iou(a, b):
    return np.count_nonzero(a & b) / max(1, np.count_nonzero(a | b))


def test_box_attack_moves_iou_both_ways_and_keeps_the_extremes(bundled, scene):
    res = box_attack(bundled, scene.image, scene.masks, steps=12)
    # the start is the tight box, scored as Segmenter.predict scores it
    np.testing.assert_array_equal(res.start, np.stack([box_from_mask(g) for g in scene.masks]))
    pred = bundled.predict(scene.image, boxes=res.start, multimask=True).masks
    np.testing.assert_allclose(res.iou_base, [_iou(p, g) for p, g in zip(pred, scene.masks)], atol=2e-3)
    assert (res.iou_min <= res.iou_base).all() and (res.iou_base <= res.iou_max).all()
    assert (res.iou_min < res.iou_base - 0.01).sum() >= 2  # the worst-case attack finds worse boxes
    assert (res.iou_max > res.iou_base).any()  # and the best-case one a better box somewhere
    np.testing.assert_allclose(res.iou_delta, res.iou_max - res.iou_min)
    # the masks are those of the reported prompts and IoUs
    for masks, ious in ((res.worst_mask, res.iou_min), (res.best_mask, res.iou_max), (res.base_mask, res.iou_base)):
        np.testing.assert_allclose([_iou(m, g) for m, g in zip(masks, scene.masks)], ious, atol=1e-9)
    h, w = scene.image.shape[:2]
    for boxes in (res.worst, res.best):
        assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= w - 1).all() and (boxes[:, [1, 3]] <= h - 1).all()
    assert ((res.min_step >= 0) & (res.min_step <= 12)).all()
    moved = res.min_step > 0
    assert (np.abs(res.worst - res.start).max(1)[moved] > 0).all()


def test_zero_steps_is_the_start(tiny_segmenter, scene):
    res = box_attack(tiny_segmenter, scene.image, scene.masks, steps=0)
    np.testing.assert_array_equal(res.iou_min, res.iou_base)
    np.testing.assert_array_equal(res.iou_max, res.iou_base)
    np.testing.assert_array_equal(res.worst, res.start)
    assert (res.min_step == 0).all() and (res.max_step == 0).all()


def test_attacks_are_deterministic_and_batching_changes_nothing(tiny_segmenter, scene):
    a = box_attack(tiny_segmenter, scene.image, scene.masks, steps=6)
    b = box_attack(tiny_segmenter, scene.image, scene.masks, steps=6)
    for name in ("iou_min", "iou_max", "iou_base", "worst", "best"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    c = box_attack(tiny_segmenter, scene.image, scene.masks, steps=6, batch=False)
    for name in ("iou_min", "iou_max", "iou_base"):
        np.testing.assert_allclose(getattr(a, name), getattr(c, name), atol=1e-3)
    np.testing.assert_allclose(a.worst, c.worst, atol=0.05)
    np.testing.assert_allclose(a.best, c.best, atol=0.05)


def test_point_attack_keeps_labels_and_the_prior_holds_points_near(bundled, scene):
    sets = [ideal_prompts(g, n_pos=3, n_neg=2) for g in scene.masks]
    coords, labels = [s.point_coords for s in sets], [s.point_labels for s in sets]
    free = point_attack(bundled, scene.image, scene.masks, coords, labels, steps=10, lam=0.0)
    held = point_attack(bundled, scene.image, scene.masks, coords, labels, steps=10, lam=100.0)
    for res in (free, held):
        assert (res.iou_min <= res.iou_base).all() and (res.iou_base <= res.iou_max).all()
        for i, s in enumerate(sets):
            k = len(s)
            np.testing.assert_array_equal(res.labels[i, :k], s.point_labels)
            assert (res.labels[i, k:] == -1).all()
            np.testing.assert_array_equal(res.start[i, :k], s.point_coords)
        h, w = scene.image.shape[:2]
        assert (res.worst >= 0).all() and (res.worst[..., 0] <= w - 1).all() and (res.worst[..., 1] <= h - 1).all()
    assert (free.iou_min < free.iou_base).any()

    def moved(res):
        real = res.labels >= 0
        return np.linalg.norm(res.worst - res.start, axis=-1)[real & (res.min_step[:, None] > 0)].mean()

    assert moved(held) < moved(free)


def test_void_pixels_count_neither_way(tiny_segmenter, scene):
    valid = np.ones(scene.masks.shape[1:], bool)
    valid[:, :40] = False
    gts = scene.masks & valid
    gts = gts[gts.any((1, 2))]
    res = box_attack(tiny_segmenter, scene.image, gts, steps=3, valid=valid)
    assert not (res.worst_mask & ~valid).any()
    np.testing.assert_allclose([_iou(m, g) for m, g in zip(res.worst_mask, gts)], res.iou_min, atol=1e-9)


def test_bad_inputs_are_refused(tiny_segmenter, scene):
    empty = np.zeros_like(scene.masks)
    with pytest.raises(ValueError, match="at least one pixel"):
        box_attack(tiny_segmenter, scene.image, empty)
    with pytest.raises(ValueError, match="do not match"):
        box_attack(tiny_segmenter, scene.image, np.pad(scene.masks, ((0, 0), (0, 2), (0, 0))))
    with pytest.raises(ValueError, match="steps"):
        box_attack(tiny_segmenter, scene.image, scene.masks, steps=-1)
    with pytest.raises(ValueError, match="one point set per object"):
        point_attack(tiny_segmenter, scene.image, scene.masks, [np.zeros((1, 2))], [np.ones(1)])
    with pytest.raises(ValueError, match="sigma"):
        point_attack(tiny_segmenter, scene.image, scene.masks[:1], [np.zeros((1, 2))], [np.ones(1)], sigma=0)


@pytest.mark.parametrize("mode", ["analytic", "mc"])
def test_a_ruac_head_is_attacked_through_its_own_masks(tiny_segmenter, scene, mode):
    from ppd.ruac import BayesianMaskDecoder
    from ppd.segmenter import Segmenter

    head = BayesianMaskDecoder(tiny_segmenter.model.sam_mask_decoder)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in head.head_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    seg = Segmenter(tiny_segmenter.model, tiny_segmenter.name, device="cpu", ruac_head=head, uncertainty=mode, mc_samples=4)
    res = box_attack(seg, scene.image, scene.masks, steps=2)
    pred = seg.predict(scene.image, boxes=res.start, multimask=True).masks
    np.testing.assert_allclose(res.iou_base, [_iou(p, g) for p, g in zip(pred, scene.masks)], atol=2e-3)
    plain = box_attack(tiny_segmenter, scene.image, scene.masks, steps=0)
    assert not np.allclose(res.iou_base, plain.iou_base)  # the head's masks, not SAM2's decoder's
    assert (res.iou_min <= res.iou_base).all() and (res.iou_base <= res.iou_max).all()
