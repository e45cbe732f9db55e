import numpy as np
import pytest

from ppd.prompts import (
    PromptSet,
    box_from_mask,
    coarse_prompts,
    corrective_click,
    farthest_click,
    ideal_prompts,
    random_clicks,
    random_coarse_kwargs,
    stack_prompts,
)


def square(h=40, w=50, top=10, left=15, size=21):
    mask = np.zeros((h, w), bool)
    mask[top : top + size, left : left + size] = True
    return mask


def disc(h=64, w=64, cy=30, cx=25, r=12):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def values_at(mask, prompts):
    xy = prompts.point_coords.astype(int)
    return mask[xy[:, 1], xy[:, 0]]


# --- PromptSet -------------------------------------------------------------------------


def test_promptset_casts_and_appends():
    p = PromptSet([[1, 2]], [1], box=[0, 0, 5, 6])
    assert p.point_coords.dtype == np.float32 and p.point_labels.dtype == np.int64
    q = p.with_points(np.array([3.0, 4.0]), 0)
    assert len(p) == 1 and len(q) == 2
    np.testing.assert_array_equal(q.point_coords, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(q.point_labels, [1, 0])
    np.testing.assert_array_equal(q.box, [0, 0, 5, 6])
    assert len(PromptSet(box=[0, 0, 1, 1])) == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(point_coords=[1, 2], point_labels=[1]), "point_coords must have shape"),
        (dict(point_coords=[[1, 2]], point_labels=[1, 0]), "point_labels must have shape"),
        (dict(point_coords=[[1, 2]], point_labels=[2]), "point_labels must be 0 or 1"),
        (dict(point_coords=[[np.nan, 2]], point_labels=[1]), "finite"),
        (dict(box=[0, 0, 1]), "box must be a finite"),
        (dict(box=[5, 0, 1, 1]), "x0 <= x1"),
    ],
)
def test_promptset_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PromptSet(**kwargs)


def test_stack_prompts_pads_with_minus_one():
    a = PromptSet([[1, 2], [3, 4], [5, 6]], [1, 0, 1])
    b = PromptSet([[7, 8]], [0])
    coords, labels = stack_prompts([a, b, PromptSet()])
    assert coords.shape == (3, 3, 2) and coords.dtype == np.float32
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, [[1, 0, 1], [0, -1, -1], [-1, -1, -1]])
    np.testing.assert_array_equal(coords[1], [[7, 8], [0, 0], [0, 0]])
    with pytest.raises(ValueError, match="at least one"):
        stack_prompts([])


# --- deterministic clicks --------------------------------------------------------------


def test_farthest_click_is_the_centre():
    p = farthest_click(square())
    np.testing.assert_array_equal(p.point_coords, [[25, 20]])  # cols 15..35, rows 10..30
    np.testing.assert_array_equal(p.point_labels, [1])
    np.testing.assert_array_equal(farthest_click(disc()).point_coords, [[25, 30]])


def test_farthest_click_counts_the_image_border_as_boundary():
    mask = np.zeros((10, 30), bool)
    mask[:, :20] = True  # touches the top, bottom and left borders
    x, y = farthest_click(mask).point_coords[0]
    assert y in (4, 5) and x in range(4, 16)  # centred vertically, not on the border


def test_farthest_click_breaks_ties_in_raster_order():
    mask = np.zeros((6, 6), bool)
    mask[1:5, 1:5] = True  # even side: 4 pixels share the largest distance
    np.testing.assert_array_equal(farthest_click(mask).point_coords, [[2, 2]])


def test_farthest_click_rejects_empty_mask():
    with pytest.raises(ValueError, match="mask is empty"):
        farthest_click(np.zeros((5, 5), bool))


def test_corrective_click_picks_larger_error_and_label():
    gt = square(size=21)
    pred = np.zeros_like(gt)  # everything missed: positive click at the centre
    xy, label = corrective_click(pred, gt)
    assert label == 1 and tuple(xy) == (25, 20)

    pred = gt.copy()
    pred[:, 40:] = True  # false positive strip of width 10 (cols 40..49) vs a small miss
    pred[10:13, 15:18] = False
    xy, label = corrective_click(pred, gt)
    assert label == 0 and gt[int(xy[1]), int(xy[0])] == 0 and 44 <= xy[0] <= 45

    pred = gt.copy()
    pred[12:25, 20:33] = False  # large hole (FN) vs one stray FP pixel
    pred[0, 0] = True
    xy, label = corrective_click(pred, gt)
    assert label == 1 and tuple(xy) == (26, 18)


def test_corrective_click_none_when_perfect():
    gt = square()
    assert corrective_click(gt, gt.copy()) is None


def test_corrective_click_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        corrective_click(np.zeros((4, 4), bool), np.zeros((4, 5), bool))


# --- random and ideal prompts -----------------------------------------------------------


def test_random_clicks_inside_outside_with_margin():
    mask = disc()
    dist_to_mask = np.hypot(*np.mgrid[:64, :64] - np.array([30, 25])[:, None, None]) - 12
    p = random_clicks(mask, 5, 20, np.random.default_rng(0), margin=6)
    np.testing.assert_array_equal(p.point_labels, [1] * 5 + [0] * 20)
    inside = values_at(mask, p)
    assert inside[:5].all() and not inside[5:].any()
    xy = p.point_coords[5:].astype(int)
    assert (dist_to_mask[xy[:, 1], xy[:, 0]] >= 6 - 1).all()  # disc edge is within 1 px
    assert len(np.unique(p.point_coords[:5], axis=0)) == 5  # no repeated pixel


def test_random_clicks_reproducible_and_checked():
    mask = disc()
    a = random_clicks(mask, 3, 3, np.random.default_rng(7))
    b = random_clicks(mask, 3, 3, np.random.default_rng(7))
    np.testing.assert_array_equal(a.point_coords, b.point_coords)
    with pytest.raises(ValueError, match="n_pos must be in"):
        random_clicks(square(size=2), 5, 0, np.random.default_rng(0))


def test_ideal_prompts_lattice_on_square():
    mask = square()  # 21 x 21: default spacing 7, a 3 x 3 grid of positives
    p = ideal_prompts(mask)
    pos = p.point_coords[p.point_labels == 1]
    np.testing.assert_array_equal(np.unique(pos[:, 0]), [18, 25, 32])
    np.testing.assert_array_equal(np.unique(pos[:, 1]), [13, 20, 27])
    inside = values_at(mask, p)
    assert (inside == (p.point_labels == 1)).all()
    neg = p.point_coords[p.point_labels == 0]
    assert len(neg) == 16  # the ring of the 5 x 5 lattice on the grown box
    assert neg[:, 0].min() >= 15 - 7 and neg[:, 0].max() <= 35 + 7


def test_ideal_prompts_deterministic_and_subsampled():
    mask = disc()
    a, b = ideal_prompts(mask, spacing=5), ideal_prompts(mask, spacing=5)
    np.testing.assert_array_equal(a.point_coords, b.point_coords)
    assert (values_at(mask, a) == (a.point_labels == 1)).all()
    c = ideal_prompts(mask, spacing=5, n_pos=3, n_neg=2, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(c.point_labels, [1, 1, 1, 0, 0])
    assert set(map(tuple, c.point_coords)) <= set(map(tuple, a.point_coords))


def test_ideal_prompts_thin_object_falls_back_to_farthest_click():
    mask = np.zeros((20, 20), bool)
    mask[5, 2:18] = True  # one pixel thick: no point 2 px inside
    p = ideal_prompts(mask)
    pos = p.point_coords[p.point_labels == 1]
    np.testing.assert_array_equal(pos, farthest_click(mask).point_coords)
    assert not values_at(mask, p)[p.point_labels == 0].any()


# --- coarse prompts ---------------------------------------------------------------------


def label_is_wrong(mask, out):
    return values_at(mask, out.prompts) != (out.prompts.point_labels == 1)


def test_coarse_prompts_without_noise_are_correct():
    mask = disc()
    out = coarse_prompts(mask, np.random.default_rng(0), 10, 0.0, 0.0, 0.0)
    assert not out.corrupted.any() and not label_is_wrong(mask, out).any()
    np.testing.assert_array_equal(out.prompts.point_labels, [1] * 5 + [0] * 5)


def test_coarse_prompts_flip_all():
    mask = disc()
    out = coarse_prompts(mask, np.random.default_rng(0), 10, p_flip=1.0, p_boundary=0, p_outlier=0)
    assert label_is_wrong(mask, out).all() and (out.kinds == "flip").all()


@pytest.mark.parametrize("kind", ["boundary", "outlier"])
def test_coarse_prompts_moves_are_wrong(kind):
    mask = disc()
    probs = dict(p_flip=0.0, p_boundary=0.0, p_outlier=0.0)
    probs[f"p_{kind}"] = 1.0
    out = coarse_prompts(mask, np.random.default_rng(1), 12, boundary_px=3, **probs)
    assert (out.kinds == kind).all() and label_is_wrong(mask, out).all()
    xy = out.prompts.point_coords.astype(int)
    dist_to_edge = np.abs(np.hypot(xy[:, 1] - 30, xy[:, 0] - 25) - 12)
    if kind == "boundary":
        assert (dist_to_edge <= 3 + 1).all()
    else:
        assert (out.prompts.point_labels == 1).all() and (dist_to_edge > 10).all()


def test_coarse_prompts_reproducible_and_flags_match_wrongness():
    mask = disc()
    runs = [coarse_prompts(mask, np.random.default_rng(3), 40, 0.2, 0.3, 0.2) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].prompts.point_coords, runs[1].prompts.point_coords)
    np.testing.assert_array_equal(runs[0].kinds, runs[1].kinds)
    np.testing.assert_array_equal(runs[0].corrupted, label_is_wrong(mask, runs[0]))
    assert 0 < runs[0].corrupted.sum() < 40


def test_random_coarse_kwargs_ranges_clean_share_and_draws():
    draws = [random_coarse_kwargs(np.random.default_rng([5, i]), p_clean=0.25) for i in range(400)]
    for kw in draws:
        assert 3 <= kw["n_points"] <= 16 and 0.3 <= kw["pos_fraction"] <= 0.7
        assert 0 <= kw["p_flip"] <= 0.4 and 0 <= kw["p_boundary"] <= 0.3 and 0 <= kw["p_outlier"] <= 0.2
        coarse_prompts(disc(), np.random.default_rng(0), **kw)  # valid arguments
    clean = np.mean([kw["p_flip"] == kw["p_boundary"] == kw["p_outlier"] == 0 for kw in draws])
    assert 0.18 < clean < 0.32  # about a quarter
    assert all(random_coarse_kwargs(np.random.default_rng(i), p_clean=1.0)["p_flip"] == 0 for i in range(5))
    # p_clean=0 takes no extra draw: the generator's stream is what it was without the option
    a, b = np.random.default_rng(9), np.random.default_rng(9)
    random_coarse_kwargs(a)
    b.integers(3, 17), b.uniform(0, 0.4), b.uniform(0, 0.3), b.uniform(0, 0.2), b.uniform(0.3, 0.7)
    assert a.random() == b.random()
    with pytest.raises(ValueError, match="p_clean"):
        random_coarse_kwargs(np.random.default_rng(0), p_clean=1.5)


def test_coarse_prompts_checks_probabilities():
    with pytest.raises(ValueError, match="sum to at most 1"):
        coarse_prompts(disc(), np.random.default_rng(0), p_flip=0.6, p_boundary=0.6)


# --- boxes ------------------------------------------------------------------------------


def test_box_from_mask_tight_and_jittered():
    mask = square()
    np.testing.assert_array_equal(box_from_mask(mask), [15, 10, 35, 30])
    boxes = np.stack([box_from_mask(mask, np.random.default_rng(s), 0.1) for s in range(50)])
    assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
    assert boxes.min() >= 0 and boxes[:, 2].max() <= 49 and boxes[:, 3].max() <= 39
    assert 1.0 < np.abs(boxes - [15, 10, 35, 30]).mean() < 4.0  # ~0.8 * 0.1 * 21 px
    with pytest.raises(ValueError, match="rng is required"):
        box_from_mask(mask, jitter=0.1)


def test_distance_cache_matches_the_transform_and_stays_bounded():
    from ppd.prompts import _DistanceCache, _inner_distance, _outer_distance

    rng = np.random.default_rng(0)
    masks = [rng.random((40, 50)) < 0.3 for _ in range(6)]
    one = 40 * 50 * 8  # float64 bytes of one map
    cache = _DistanceCache(max_bytes=3 * one)
    for m in masks:
        a, b = cache.get("inner", m), cache.get("outer", m)
        np.testing.assert_array_equal(a, _inner_distance(m))
        np.testing.assert_array_equal(b, _outer_distance(m))
        assert not a.flags.writeable
        assert cache.get("inner", m.copy()) is a  # keyed by content, not identity
        assert cache.bytes <= 3 * one
    assert cache.get("inner", masks[0]) is not a  # evicted long ago: recomputed
    # same bits, other shape: another entry
    flat = masks[1].reshape(50, 40)
    np.testing.assert_array_equal(cache.get("outer", flat), _outer_distance(flat))
