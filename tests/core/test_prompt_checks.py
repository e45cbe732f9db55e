"""Boxes that are reversed or reach outside the image, and ragged prompt batches, get
one clear message from the segmenter instead of passing silently or numpy's error."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    "boxes, message",
    [
        ([90, 20, 10, 80], r"box \(90.0, 20.0, 10.0, 80.0\) \(row 0\) is reversed: boxes are XYXY with x0 <= x1 and y0 <= y1"),
        ([[10, 20, 90, 80], [10, 80, 90, 20]], r"box \(10.0, 80.0, 90.0, 20.0\) \(row 1\) is reversed"),
        ([10, 20, 129, 80], r"box \(10.0, 20.0, 129.0, 80.0\) \(row 0\) reaches outside the image of width 128 and height 96"),
        ([-1, 20, 90, 80], "reaches outside the image"),
        ([10, 20, 90, 96.5], "reaches outside the image"),
        ([[0, 0, 10, 10], [200, 150, 300, 250]], r"\(row 1\) reaches outside .*within 0..128 \(x\) and 0..96 \(y\); clip it"),
    ],
)
def test_reversed_or_outside_boxes_are_refused(tiny_segmenter, tiny_embedding, boxes, message):
    with pytest.raises(ValueError, match=message):
        tiny_segmenter.predict(tiny_embedding, boxes=boxes)


def test_boxes_on_the_border_and_degenerate_boxes_are_accepted(tiny_segmenter, tiny_embedding):
    pred = tiny_segmenter.predict(tiny_embedding, boxes=[[0, 0, 128, 96], [30, 40, 30, 40]])
    assert pred.masks.shape == (2, 96, 128)


RAGGED_COORDS = [[[10, 10], [20, 20]], [[30, 30]]]


def test_ragged_point_batch_says_how_to_pad(tiny_segmenter, tiny_embedding):
    with pytest.raises(ValueError) as err:
        tiny_segmenter.predict(tiny_embedding, RAGGED_COORDS, [[1, 1], [1]])
    msg = str(err.value)
    assert msg.startswith("point_coords is ragged (nested lists of different lengths, shape (2, [1, 2], 2))")
    assert "pad shorter sets with points of label -1" in msg and "inhomogeneous" not in msg


def test_ragged_labels_and_boxes_are_named(tiny_segmenter, tiny_embedding):
    with pytest.raises(ValueError, match=r"^point_labels is ragged"):
        tiny_segmenter.predict(tiny_embedding, [[[10, 10]], [[30, 30]]], [[1, 1], [1]])
    with pytest.raises(ValueError, match=r"^boxes is ragged"):
        tiny_segmenter.predict(tiny_embedding, boxes=[[0, 0, 10, 10], [0, 0, 10]])


def test_ragged_batch_across_images_is_named(tiny_segmenter, tiny_embedding):
    with pytest.raises(ValueError, match=r"^point_coords is ragged"):
        tiny_segmenter.predict_batch([tiny_embedding, tiny_embedding], RAGGED_COORDS, [[1, 1], [1]])
    with pytest.raises(ValueError, match=r"^query_coords is ragged"):
        tiny_segmenter.predict_at([tiny_embedding], [[[10, 10]]], [[1]], [[[1, 2], [3]]])


def test_non_numeric_points_are_named(tiny_segmenter, tiny_embedding):
    with pytest.raises(ValueError, match="point_coords must hold numbers"):
        tiny_segmenter.predict(tiny_embedding, [["a", "b"]], [1])
