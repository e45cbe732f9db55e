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
