"""ppd.viz: captions keep the tile size and touch only their box."""

from __future__ import annotations

import numpy as np

from ppd.viz import caption, grid


def test_caption_draws_a_box_at_the_top_left_only():
    img = np.full((64, 96, 3), 200, np.uint8)
    out = caption(img, "coarse: 8 pts")
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (img == 200).all()  # input untouched
    changed = (out != img).any(axis=2)
    ys, xs = np.nonzero(changed)
    assert changed[0, 0] and ys.max() < 20 and xs.max() < 96  # a one-line box at the top
    assert not changed[32:, :].any()
    two = (caption(img, "coarse: 8 pts\nIoU 0.51") != img).any(axis=2)
    assert np.nonzero(two)[0].max() > ys.max()  # a second line makes the box taller
    box = out[changed]
    assert (box == 20).all(axis=1).any() and (box >= 240).all(axis=1).any()  # light text on a dark box


def test_captioned_tiles_still_tile():
    tiles = [caption(np.zeros((10, 12, 3), np.uint8), str(i)) for i in range(4)]
    assert grid(tiles, cols=2, pad=2).shape == (2 * 12 + 2, 2 * 14 + 2, 3)


def test_refine_tile_marks_ground_truth_dropped_and_relabelled_points():
    from ppd.viz import DROPPED, GROUND_TRUTH, RELABELED, refine_tile

    img = np.full((64, 64, 3), 128, np.uint8)
    gt = np.zeros((64, 64), bool)
    gt[10:40, 10:40] = True
    mask = np.zeros((64, 64), bool)
    mask[20:50, 20:50] = True
    coords = np.array([[15.0, 15.0], [50.0, 10.0], [30.0, 55.0]], np.float32)
    labels = np.array([1, 0, 1])
    out = refine_tile(img, gt, mask, coords, labels, dropped=np.array([False, True, False]),
                      relabeled=np.array([False, False, True]))
    assert out.shape == img.shape and (img == 128).all()
    assert (out[10, 25] == GROUND_TRUTH).all() and (out[39, 25] == GROUND_TRUTH).all()  # gt outline
    assert (out[45, 45] != 128).any() and (out[45, 45] != GROUND_TRUTH).any()  # mask fill, not gt colour
    near = lambda x, y, color: (np.abs(out[y - 6:y + 7, x - 6:x + 7].astype(int) - color).sum(axis=2) == 0).any()
    assert near(50, 10, DROPPED) and (out[10, 50] == 0).all()  # grey disc crossed in black
    assert near(30, 55, RELABELED) and not near(15, 15, RELABELED)
    assert not near(50, 10, RELABELED)


def test_refine_tile_without_marks_draws_no_grey_or_magenta():
    from ppd.viz import DROPPED, RELABELED, refine_tile

    img = np.full((48, 48, 3), 128, np.uint8)
    gt = np.zeros((48, 48), bool)
    gt[5:20, 5:20] = True
    out = refine_tile(img, gt, gt, np.array([[10.0, 10.0]]), np.array([1]))
    flat = out.reshape(-1, 3).astype(int)
    assert not (np.abs(flat - DROPPED).sum(axis=1) == 0).any()
    assert not (np.abs(flat - RELABELED).sum(axis=1) == 0).any()
