"""Adversarial image attacks: the per-pixel weights against hand computations, the threat
model's bounds, eps = 0, seeding, the differentiable path against the segmenter's own
prediction, and on the bundled model every attack raising the loss it maximises."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ppd
from ppd.data.scenes import ProceduralScenes
from ppd.metrics import iou
from ppd.prompts import farthest_click, ideal_prompts, stack_prompts
from ppd.robustness.attacks import (
    ATTACKS,
    Attack,
    PromptGroup,
    _Forward,
    cospgd_weights,
    named_attack,
    pixel_weights,
    project,
    random_start,
    run_attack,
    segmentation_loss,
    segpgd_weights,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def groups_for(gts: np.ndarray) -> list[PromptGroup]:
    """The first click (multimask) and the 6 + 6 ideal set of every object."""
    first = PromptGroup(*stack_prompts([farthest_click(g) for g in gts]), gts, multimask=True)
    ideal = PromptGroup(*stack_prompts([ideal_prompts(g, n_pos=6, n_neg=6) for g in gts]), gts)
    return [first, ideal]


@pytest.fixture(scope="module")
def tiny_case(tiny_segmenter):
    """The random-weight tiny model on a (96, 128) image with two rectangle objects."""
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    gts = np.zeros((2, 96, 128), bool)
    gts[0, 10:50, 20:70] = True
    gts[1, 55:90, 80:120] = True
    return tiny_segmenter, image, gts, groups_for(gts)


@pytest.fixture(scope="module")
def bundled_case():
    """The bundled model on a procedural scene it segments well (IoU > 0.9)."""
    seg = ppd.load_segmenter(device="cpu")
    scene = ProceduralScenes("train", 1, seed=2)[0]
    gts = np.asarray(scene.masks, bool)
    return seg, scene.image, gts, groups_for(gts)


def first_click_ious(seg, image, gts, group) -> np.ndarray:
    masks = seg.predict(image, group.point_coords, group.point_labels, multimask=True).masks
    return np.array([iou(m, g) for m, g in zip(masks, gts)])


# -- weights, by hand ----------------------------------------------------------------
def test_segpgd_weights_follow_the_schedule():
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    target = torch.tensor([True, True, False, False])  # right, wrong, wrong, right
    assert segpgd_weights(logits, target, 0, 20).tolist() == [1.0, 0.0, 0.0, 1.0]
    assert segpgd_weights(logits, target, 10, 20).tolist() == [0.75, 0.25, 0.25, 0.75]
    assert segpgd_weights(logits, target, 19, 20).tolist() == pytest.approx([1 - 19 / 40, 19 / 40, 19 / 40, 1 - 19 / 40])


def test_cospgd_weights_are_the_cosine_to_the_one_hot_label():
    logits = torch.tensor([0.0, 0.0, math.log(3.0), math.log(3.0), 40.0])
    target = torch.tensor([True, False, True, False, False])
    # s = sigmoid(logit); (1 - s, s) against the one-hot label
    s = 0.75
    want = [0.5 / math.sqrt(0.5), 0.5 / math.sqrt(0.5), s / math.hypot(s, 1 - s), (1 - s) / math.hypot(s, 1 - s), 0.0]
    assert cospgd_weights(logits, target).tolist() == pytest.approx(want, abs=1e-6)
    assert pixel_weights("pgd", logits, target, 3, 20).tolist() == [1.0] * 5
    with pytest.raises(ValueError, match="attack method must be one of"):
        pixel_weights("fgsm", logits, target, 0, 1)


# -- the threat model ------------------------------------------------------------------
def test_projection_keeps_ball_and_range():
    clean = torch.tensor([[0.0, 100.0, 250.0, 255.0]])
    delta = torch.tensor([[-20.0, 30.0, 20.0, -3.0]])
    assert project(delta, clean, "linf", 8.0).tolist() == [[0.0, 8.0, 5.0, -3.0]]
    # L2: scaled to norm 10 first (norm of delta is sqrt(400 + 900 + 400 + 9) = sqrt(1709)), then clipped to range
    scaled = delta * (10.0 / math.sqrt(1709.0))
    want = (clean + scaled).clamp(0, 255) - clean
    got = project(delta, clean, "l2", 10.0)
    assert got[0].tolist() == pytest.approx(want[0].tolist(), abs=1e-5)
    assert float(torch.linalg.vector_norm(got)) <= 10.0 + 1e-5
    short = torch.tensor([[0.0, 1.0, -1.0, 0.0]])
    assert project(short, clean, "l2", 10.0).tolist() == short.tolist()  # inside the ball: unchanged


@pytest.mark.parametrize("norm, eps", [("linf", 8.0), ("l2", 64.0)])
def test_random_start_is_inside_the_ball_and_seeded(norm, eps):
    clean = torch.rand((1, 3, 20, 30), generator=torch.Generator().manual_seed(0)) * 255
    a = random_start(clean, norm, eps, torch.Generator().manual_seed(5))
    b = random_start(clean, norm, eps, torch.Generator().manual_seed(5))
    c = random_start(clean, norm, eps, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    size = float(a.abs().max()) if norm == "linf" else float(torch.linalg.vector_norm(a))
    assert 0.5 * eps < size <= eps * (1 + 1e-5)
    assert float((clean + a).min()) >= 0 and float((clean + a).max()) <= 255


def test_attack_settings_are_checked():
    a = named_attack("segpgd_l2")
    assert (a.method, a.norm, a.eps, a.alpha, a.iterations) == ("segpgd", "l2", 64.0, pytest.approx(25.5), 20)
    assert named_attack("pgd_linf").eps == 8.0 and named_attack("pgd_linf").alpha == pytest.approx(2.55)
    with pytest.raises(ValueError, match="unknown attack 'pgd_l1'"):
        named_attack("pgd_l1")
    with pytest.raises(ValueError, match="eps must be"):
        Attack("pgd", "linf", -1.0, 1.0)
    with pytest.raises(ValueError, match="alpha must be"):
        Attack("pgd", "linf", 8.0, 0.0)


# -- through the tiny model ----------------------------------------------------------
def test_the_differentiable_path_reproduces_predict(tiny_case):
    seg, image, gts, groups = tiny_case
    fwd = _Forward(seg, gts.shape[1:], groups, None)
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        logits = fwd.logits(x)
    for group, z in zip(groups, logits):
        pred = seg.predict(image, group.point_coords, group.point_labels, multimask=group.multimask)
        up = F.interpolate(torch.from_numpy(pred.logits)[:, None], gts.shape[1:], mode="bilinear", align_corners=False)
        assert torch.allclose(z.clamp(-32, 32), up[:, 0], atol=1e-3)


def test_a_ruac_head_is_attacked_too(tiny_case, monkeypatch):
    """With a RUAC head the path decodes with the head's mean logits, as predict does."""
    import ppd.robustness.attacks as attacks_module
    from ppd.ruac import BayesianMaskDecoder
    from ppd.segmenter import Segmenter

    calls = []
    real = attacks_module.decode_bayesian
    monkeypatch.setattr(attacks_module, "decode_bayesian", lambda *a, **k: calls.append(a[9]) or real(*a, **k))

    base, image, gts, groups = tiny_case
    torch.manual_seed(0)
    seg = Segmenter(base.model, base.name, device="cpu", ruac_head=BayesianMaskDecoder(base.model.sam_mask_decoder))
    fwd = _Forward(seg, gts.shape[1:], groups[1:], None)
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        (z,) = fwd.logits(x)
    pred = seg.predict(image, groups[1].point_coords, groups[1].point_labels)
    up = F.interpolate(torch.from_numpy(pred.logits)[:, None], gts.shape[1:], mode="bilinear", align_corners=False)
    assert torch.allclose(z.clamp(-32, 32), up[:, 0], atol=1e-3)
    assert calls == ["analytic"]  # the head decoded, in the segmenter's uncertainty mode
    res = run_attack(seg, image, groups, named_attack("pgd_linf", iterations=1), seed=0)
    assert np.abs(res.perturbation).max() <= 8.0 + 1e-4 and res.losses[-1] > 0


@pytest.mark.parametrize("name", ATTACKS)
def test_perturbation_stays_in_its_ball_and_in_range(tiny_case, name):
    seg, image, gts, groups = tiny_case
    attack = named_attack(name, iterations=2)
    res = run_attack(seg, image, groups, attack, seed=3)
    assert res.image.shape == image.shape and res.image.dtype == np.float32
    assert res.image.min() >= 0.0 and res.image.max() <= 255.0
    assert np.allclose(res.image - image.astype(np.float32), res.perturbation, atol=1e-3)
    if attack.norm == "linf":
        assert np.abs(res.perturbation).max() <= attack.eps + 1e-4
        assert np.abs(res.perturbation).max() > 0.5 * attack.eps
    else:
        assert np.linalg.norm(res.perturbation.astype(np.float64)) <= attack.eps * (1 + 1e-5)
    assert len(res.losses) == 3 and all(np.isfinite(res.losses))
    out = res.as_float()
    assert out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0


@pytest.mark.parametrize("name", ["pgd_linf", "cospgd_l2"])
def test_zero_eps_changes_nothing(tiny_case, name):
    seg, image, gts, groups = tiny_case
    attack = named_attack(name, iterations=2, eps_linf=0.0, eps_l2=0.0)
    res = run_attack(seg, image, groups, attack, seed=3)
    assert not res.perturbation.any()
    assert np.array_equal(res.as_float(), image.astype(np.float32) / 255.0)
    for group in groups:
        clean = seg.predict(image, group.point_coords, group.point_labels, multimask=group.multimask)
        adv = seg.predict(res.as_float(), group.point_coords, group.point_labels, multimask=group.multimask)
        assert np.array_equal(clean.masks, adv.masks) and np.array_equal(clean.logits, adv.logits)


def test_the_seed_decides_the_perturbation(tiny_case):
    seg, image, gts, groups = tiny_case
    attack = named_attack("segpgd_linf", iterations=1)
    a = run_attack(seg, image, groups, attack, seed=11)
    b = run_attack(seg, image, groups, attack, seed=11)
    c = run_attack(seg, image, groups, attack, seed=12)
    assert np.array_equal(a.perturbation, b.perturbation) and a.losses == b.losses
    assert not np.array_equal(a.perturbation, c.perturbation)


def test_void_pixels_weigh_nothing(tiny_case):
    seg, image, gts, groups = tiny_case
    full = segmentation_loss(seg, image, groups)
    care = np.ones(gts.shape[1:], bool)
    care[:, :64] = False
    left_out = segmentation_loss(seg, image, groups, care)
    assert segmentation_loss(seg, image, groups, np.zeros_like(care)) == 0.0
    assert 0.0 < left_out < full
    # the attack ignores them too: with no pixel that counts, the gradient is zero and PGD L2 never moves
    res = run_attack(seg, image, groups, Attack("pgd", "l2", 64.0, 25.5, 2, random_start=False), care=np.zeros_like(care))
    assert not res.perturbation.any()


# -- on the bundled model: the attacks do what they are for ------------------------------
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_every_attack_raises_the_loss_and_lowers_iou(bundled_case, norm):
    seg, image, gts, groups = bundled_case
    clean_loss = segmentation_loss(seg, image, groups)
    clean_iou = first_click_ious(seg, image, gts, groups[0])
    assert clean_iou.min() > 0.9
    for method in ("pgd", "segpgd", "cospgd"):
        res = run_attack(seg, image, groups, named_attack(f"{method}_{norm}", iterations=8), seed=0)
        adv_loss = segmentation_loss(seg, res.as_float(), groups)
        assert adv_loss == pytest.approx(res.losses[-1], rel=1e-3)
        assert adv_loss > clean_loss, method
        adv_iou = first_click_ious(seg, res.as_float(), gts, groups[0])
        assert (adv_iou <= clean_iou + 1e-9).all(), (method, adv_iou, clean_iou)
        if norm == "linf":  # eps 8/255 breaks this small model
            assert adv_iou.max() < 0.5 * clean_iou.min(), (method, adv_iou)


@pytest.mark.slow
@pytest.mark.parametrize("name", ATTACKS)
def test_full_strength_attacks_on_the_bundled_model(bundled_case, name):
    """SemSegBench's settings (20 iterations): the final loss is the highest of the run
    within rounding for PGD (it only climbs here) and above the clean loss for all."""
    seg, image, gts, groups = bundled_case
    res = run_attack(seg, image, groups, named_attack(name), seed=0)
    assert len(res.losses) == 21
    assert res.losses[-1] > segmentation_loss(seg, image, groups)
    if name.startswith("pgd"):
        assert res.losses[-1] >= 0.9 * max(res.losses)


def test_runs_under_inference_mode(tiny_case):
    seg, image, gts, groups = tiny_case
    attack = named_attack("pgd_l2", iterations=1)
    want = run_attack(seg, image, groups, attack, seed=4)
    with torch.inference_mode():
        got = run_attack(seg, image, groups, attack, seed=4)
    assert np.array_equal(got.perturbation, want.perturbation) and got.perturbation.any()
