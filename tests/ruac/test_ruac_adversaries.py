"""RUAC adversaries and losses: identity at init, bounds, shared warp field, object graph,
calibration-loss stop-gradients, curriculum boundaries."""

from __future__ import annotations

import math

import pytest
import torch

from ppd.ruac.adversaries import (
    DeformationAttacker,
    StyleAttacker,
    build_object_graph,
    grad_reverse,
    masked_average_pool,
    region_style_stats,
)
from ppd.ruac.losses import CurriculumSchedule, calibration_loss, dice_loss, focal_loss, segmentation_loss

S = 64  # image side (a power of two: the zero warp is then exact)
C = 16  # feature channels
H = 8  # feature map side


def _box(y0, y1, x0, x1, s=S):
    m = torch.zeros(s, s, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def _three_objects():
    """A and B overlap; C is far from both."""
    return torch.stack([_box(8, 28, 8, 28), _box(20, 36, 20, 36), _box(52, 60, 52, 60)])


def _separate_objects():
    """Two disjoint objects, so each keeps its own pixels after compositing."""
    return torch.stack([_box(6, 26, 6, 26), _box(36, 60, 30, 58)])


def _inputs(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, S, S, generator=g)
    feats = torch.randn(n, C, H, H, generator=g)
    return images, feats


@pytest.fixture(autouse=True)
def _seed():
    """Module initialisation draws from the global RNG: make every test order-independent."""
    torch.manual_seed(0)


def _perturb(module, std, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


# ----------------------------------------------------------------------------- GRL
def test_grad_reverse_identity_forward_and_scaled_negated_gradient():
    x = torch.randn(5, 3, requires_grad=True)
    w = torch.randn(5, 3)
    for scale in (1.0, 2.5):
        y = grad_reverse(x, scale)
        assert torch.equal(y, x)
        (g,) = torch.autograd.grad((y * w).sum(), x)
        assert torch.allclose(g, -scale * w)


def test_attacker_gradients_are_reversed():
    images, feats = _inputs(1)
    masks = [_separate_objects()]
    grads = []
    for grl in (None, 1.0):
        torch.manual_seed(0)
        att = StyleAttacker(feature_dim=C, grl_scale=grl)
        out, _ = att(images, masks, feats)
        (g,) = torch.autograd.grad(out.pow(2).sum(), att.mlp[-1].bias)
        grads.append(g)
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[1], -grads[0])


# ----------------------------------------------------------------------------- identity at init
@pytest.mark.parametrize("layout", ["list", "padded"])
def test_attackers_are_identity_at_init(layout):
    torch.manual_seed(0)
    images, feats = _inputs(2)
    if layout == "list":
        masks, valid = [_three_objects(), torch.zeros(0, S, S, dtype=torch.bool)], None
    else:
        masks = torch.stack([_three_objects(), torch.stack([_box(10, 40, 10, 40)] * 3)])
        valid = torch.tensor([[True, True, True], [True, False, False]])
    style = StyleAttacker(feature_dim=C)
    out, diag = style(images, masks, feats, valid)
    assert out.shape == images.shape
    assert (out - images).abs().max() <= 1e-6
    assert diag["max_abs_shift"] == 0 and diag["max_abs_scale_delta"] == 0

    deform = DeformationAttacker(feature_dim=C)
    warped, wmasks, ddiag = deform(images, masks, feats, valid)
    assert (warped - images).abs().max() <= 1e-6
    assert ddiag["max_displacement_px"] == 0
    if layout == "list":
        assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(wmasks, masks))
    else:
        assert wmasks.dtype == torch.bool and torch.equal(wmasks, masks)


# ----------------------------------------------------------------------------- style bounds
def test_style_attacker_stays_within_bounds_after_perturbation():
    images, feats = _inputs(2)
    masks = [_separate_objects(), _separate_objects().flip(-1)]
    att = StyleAttacker(feature_dim=C)
    _perturb(att, std=3.0)
    with torch.no_grad():
        p = att.style_params(images, masks, feats)
        out, diag = att(images, masks, feats)
    eps, r = att.eps, att.r
    assert p.shift.abs().max() <= eps + 1e-6
    assert (p.scale >= 1 - r - 1e-6).all() and (p.scale <= 1 + r + 1e-6).all()
    assert p.shift.abs().max() > 0.1 * eps  # the perturbation did change the style
    assert diag["max_abs_shift"] <= eps + 1e-6 and diag["max_abs_scale_delta"] <= r + 1e-6

    start = 0
    for i, nm in enumerate(p.node_masks):
        for j in range(nm.shape[0]):  # objects and background own disjoint pixels here
            sel = nm[j] > 0.5
            x_in, x_out = images[i][:, sel], out[i][:, sel]
            mean_in, mean_out = x_in.mean(1), x_out.mean(1)
            std_in, std_out = x_in.std(1, unbiased=False), x_out.std(1, unbiased=False)
            k = start + j
            assert torch.allclose(mean_out - mean_in, p.shift[k], atol=1e-4)
            assert torch.allclose(std_out / std_in, p.scale[k], atol=1e-4)
            assert ((mean_out - mean_in).abs() <= eps + 1e-4).all()
            ratio = std_out / std_in
            assert ((ratio >= 1 - r - 1e-4) & (ratio <= 1 + r + 1e-4)).all()
        start += nm.shape[0]


def test_style_composite_background_first_later_objects_win():
    images, feats = _inputs(1)
    masks = [_three_objects()]  # A and B overlap: B (later) must win there
    att = StyleAttacker(feature_dim=C)
    _perturb(att, std=0.3)
    with torch.no_grad():
        p = att.style_params(images, masks, feats)
        out, _ = att(images, masks, feats)
    x, nm = images[0], p.node_masks[0]
    ref = x.clone()
    for j in [3, 0, 1, 2]:  # background, then objects in order
        xj = x + (p.scale[j] - 1).view(3, 1, 1) * (x - p.mu[j].view(3, 1, 1)) + p.shift[j].view(3, 1, 1)
        ref = torch.where(nm[j][None] > 0.5, xj, ref)
    assert torch.allclose(out[0], ref, atol=1e-6)
    overlap = masks[0][0] & masks[0][1]
    assert (p.shift[0] - p.shift[1]).abs().max() > 1e-3  # so the check below can tell A from B
    b_only = x + (p.scale[1] - 1).view(3, 1, 1) * (x - p.mu[1].view(3, 1, 1)) + p.shift[1].view(3, 1, 1)
    assert torch.allclose(out[0][:, overlap], b_only[:, overlap], atol=1e-6)


def test_region_stats_fall_back_to_global_for_tiny_regions():
    img = torch.randn(3, S, S)
    tiny = _box(0, 2, 0, 2).float()  # 4 px < 16
    big = _box(0, 32, 0, 32).float()
    mu, sigma = region_style_stats(img, torch.stack([tiny, big]), min_area=16)
    assert torch.allclose(mu[0], img.flatten(1).mean(1), atol=1e-5)
    assert torch.allclose(sigma[0], img.flatten(1).std(1, unbiased=False), atol=1e-4)
    assert torch.allclose(mu[1], img[:, :32, :32].flatten(1).mean(1), atol=1e-5)


# ----------------------------------------------------------------------------- object graph
def _graph_features():
    """Feature map where A and B share channel 0 and C has channel 1 only (cosine 0)."""
    f = torch.zeros(C, H, H)
    f[0, 1:5, 1:5] = 1.0  # cells of A (px 8-27) and B (px 20-35)
    f[1, 6:8, 6:8] = 1.0  # cells of C (px 52-59)
    return f


def test_object_graph_edges_on_three_object_layout():
    objs = _three_objects().float()
    bg = 1 - objs.amax(0, keepdim=True)
    pooled = masked_average_pool(_graph_features(), torch.cat([objs, bg]))
    g = build_object_graph(objs, pooled)
    a, b, c, bgn = 0, 1, 2, 3
    assert g.num_nodes == 4
    assert g.overlap[a, b] and g.overlap[b, a]
    assert not g.overlap[a, c] and not g.overlap[b, c]
    # the far object has no object-object edge of any kind
    for other in (a, b):
        assert not g.adjacency[c, other] and not g.adjacency[other, c]
    # background joined to every object, self-loops everywhere
    assert g.adjacency[bgn].all() and g.adjacency[:, bgn].all()
    assert g.adjacency.diagonal().all()
    # edge_index lists exactly the adjacency
    dense = torch.zeros(4, 4, dtype=torch.bool)
    dense[g.edge_index[0], g.edge_index[1]] = True
    assert torch.equal(dense, g.adjacency)


def test_object_graph_proximity_and_semantic_edges():
    # two disjoint boxes 2 px apart: proximity edge, no overlap
    objs = torch.stack([_box(10, 30, 10, 30), _box(10, 30, 32, 50), _box(56, 62, 0, 6)]).float()
    f = torch.zeros(3 + 1, C)
    f[0, 0] = f[1, 1] = 1.0  # A, B dissimilar
    f[2, 0] = 1.0  # far C looks like A
    g = build_object_graph(objs, f)
    assert g.proximity[0, 1] and not g.overlap[0, 1] and not g.semantic[0, 1]
    assert g.semantic[0, 2] and not g.proximity[0, 2] and g.adjacency[0, 2]
    assert not g.adjacency[1, 2]


# ----------------------------------------------------------------------------- deformation
def test_deformation_bounded_and_zero_mean_after_perturbation():
    images, feats = _inputs(2)
    masks = [_separate_objects(), _box(16, 48, 12, 40)]
    att = DeformationAttacker(feature_dim=C, max_displacement=0.05)
    _perturb(att, std=1.0)
    with torch.no_grad():
        flow = att.predict_flow(images, masks, feats)
        _, _, diag = att(images, masks, feats)
    eps_px = att.eps_px(S)
    assert eps_px == pytest.approx(0.05 * S)
    norm = flow.norm(dim=1)
    assert norm.max() <= eps_px + 1e-4
    assert norm.max() > 0.1 * eps_px  # not trivially zero
    assert diag["max_displacement_px"] <= eps_px + 1e-4
    for i, m in enumerate(masks):
        region = (m if m.dim() == 2 else m.amax(0)).bool()
        assert flow[i][:, region].mean(1).abs().max() < 1e-5


def test_default_bound_is_proportional_to_image_size():
    att = DeformationAttacker(feature_dim=C)
    assert att.eps_px(1024) == pytest.approx(2.4)
    assert att.eps_px(256) == pytest.approx(0.6)


def test_image_and_masks_are_warped_by_the_same_field():
    images, feats = _inputs(1)
    mask = torch.zeros(S, S, dtype=torch.bool)
    yy, xx = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    mask |= (yy - 30) ** 2 + (xx - 34) ** 2 < 15**2  # a disc, away from the border
    images[0, 1] = mask.float()  # draw the mask into the image
    att = DeformationAttacker(feature_dim=C, max_displacement=0.06)
    _perturb(att, std=2.0, seed=3)
    with torch.no_grad():
        warped, wmasks, _ = att(images, mask[None, None], feats)
    assert wmasks.shape == (1, 1, S, S) and wmasks.dtype == torch.bool
    assert (wmasks[0, 0] != mask).sum() > 5  # the mask did move
    assert torch.equal(warped[0, 1] > 0.5, wmasks[0, 0])


# ----------------------------------------------------------------------------- losses
def _calibration_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (2, 8, 8)
    p = torch.rand(shape, generator=g).requires_grad_()
    y = (torch.rand(shape, generator=g) > 0.5).float()
    us = torch.rand(shape, generator=g).requires_grad_()
    ua = torch.rand(shape, generator=g).requires_grad_()
    return p, y, us, ua


def test_calibration_loss_value():
    p, y, us, ua = _calibration_inputs()
    e = (p - y).abs()
    expect = (e * torch.exp(-us) + (1 - e) * torch.exp(us) + e * torch.exp(-ua) + (1 - e) * torch.exp(ua)).mean()
    assert torch.allclose(calibration_loss(p, y, us, ua), expect)


def test_calibration_loss_stop_gradients():
    p, y, us, ua = _calibration_inputs()
    n = p.numel()
    e = (p - y).abs().detach()

    (g_us,) = torch.autograd.grad(calibration_loss(p, y, us, ua), us, allow_unused=True)
    assert g_us is None or torch.count_nonzero(g_us) == 0

    (g_p,) = torch.autograd.grad(calibration_loss(p, y, us, ua), p)
    # L1 only: d/dp [e exp(-u_s) + (1 - e) exp(u_s)] = sign(p - y) (exp(-u_s) - exp(u_s))
    expect_p = torch.sign(p - y) * (torch.exp(-us) - torch.exp(us)) / n
    assert torch.allclose(g_p, expect_p.detach(), atol=1e-7)

    (g_ua,) = torch.autograd.grad(calibration_loss(p, y, us, ua), ua)
    # L2 only: d/du_a [e exp(-u_a) + (1 - e) exp(u_a)] = -e exp(-u_a) + (1 - e) exp(u_a)
    expect_ua = (-e * torch.exp(-ua) + (1 - e) * torch.exp(ua)) / n
    assert torch.allclose(g_ua, expect_ua.detach(), atol=1e-7)


def test_segmentation_loss_matches_hand_formula():
    logits = torch.tensor([[[2.0, -1.0], [0.5, -3.0]]])
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    p = torch.sigmoid(logits)
    pt = torch.where(target > 0, p, 1 - p)
    at = torch.where(target > 0, torch.tensor(0.25), torch.tensor(0.75))
    focal = (-at * (1 - pt) ** 2 * torch.log(pt)).mean()
    dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    assert torch.allclose(focal_loss(logits, target), focal.view(1), atol=1e-6)
    assert torch.allclose(dice_loss(logits, target), dice.view(1), atol=1e-6)
    assert torch.allclose(segmentation_loss(logits, target), 20 * focal + dice, atol=1e-5)
    perfect = segmentation_loss(torch.where(target > 0, 20.0, -20.0), target)
    assert perfect < 1e-3
    with pytest.raises(ValueError, match="same shape"):
        segmentation_loss(logits, target[:, :1])


def test_curriculum_weights_at_phase_boundaries():
    sch = CurriculumSchedule()
    seg_only = {"seg": 1.0, "kl": 0.0, "adv": 0.0, "cal": 0.0}
    with_kl = {"seg": 1.0, "kl": 0.05, "adv": 0.0, "cal": 0.0}
    full = {"seg": 0.8, "kl": 0.05, "adv": 0.2, "cal": 0.1}
    # the authors' 20 epochs: 0-4 seg only, 5-6 + KL, >= 7 + AUE
    assert [sch.phase(e, 20) for e in range(20)] == [1] * 5 + [2] * 2 + [3] * 13
    for step, expect in [(0, seg_only), (249, seg_only), (250, with_kl), (349, with_kl), (350, full), (999, full)]:
        assert sch.weights(step, 1000) == pytest.approx(expect), step
    with pytest.raises(ValueError):
        sch.weights(0, 0)
    with pytest.raises(ValueError):
        CurriculumSchedule(kl_start=0.5, adv_start=0.4)
