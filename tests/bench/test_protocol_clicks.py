"""The click protocol against its definitions: NoC/NoF, the click rule, batching."""

from __future__ import annotations

import numpy as np
import pytest

from ppd.bench.protocols.clicks import ClicksConfig, ClicksProtocol, click_curves, next_click, noc
from ppd.bench.schema import Unit
from ppd.data.scenes import make_scene
from ppd.prompts import corrective_click, farthest_click

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("curve, target, expected", [
    ([0.5, 0.86, 0.95], 0.85, (2, False)),
    ([0.5, 0.86, 0.95], 0.90, (3, False)),
    ([0.91, 0.2, 0.1], 0.90, (1, False)),  # reached once is enough, even if it drops later
    ([0.5, 0.6, 0.7], 0.85, (3, True)),  # never: the whole budget, and a failure
    ([0.85, 0.85], 0.85, (1, False)),  # the target itself counts as reached
])
def test_noc_on_hand_made_curves(curve, target, expected):
    assert noc(np.array(curve), target) == expected


def test_next_click_is_the_ritm_rule():
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = rng.integers(8, 80, 2)
        gt, pred = np.zeros((h, w), bool), np.zeros((h, w), bool)
        for m in (gt, pred):
            for _ in range(rng.integers(1, 4)):
                y, x = rng.integers(0, h), rng.integers(0, w)
                m[max(0, y - rng.integers(1, 20)):y + rng.integers(1, 20), max(0, x - rng.integers(1, 20)):x + rng.integers(1, 20)] ^= True
        a, b = corrective_click(pred, gt), next_click(pred, gt)
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a[0], b[0])
            assert a[1] == b[1]


def test_area_rule_clicks_the_larger_region():
    gt = np.zeros((40, 40), bool)
    gt[5:35, 5:35] = True
    pred = gt.copy()
    pred[10:16, 10:16] = False  # 36 px missed, 3 px deep
    pred[0:3, 0:40] = True  # 120 px wrongly included: larger by area, 2 px deep
    xy, label = next_click(pred, gt, "area")
    assert label == 0 and xy[1] <= 2
    xy, label = next_click(pred, gt, "ritm")  # the missed square is deeper
    assert label == 1 and 10 <= xy[0] <= 15
    assert next_click(gt, gt) is None


def test_first_click_is_the_farthest_point(tiny_segmenter):
    scene = make_scene(3, "clutter", size=128)
    _, clicks, _ = click_curves(tiny_segmenter, scene.image, scene.masks, ClicksConfig(max_clicks=2))
    for gt, (coords, labels) in zip(scene.masks, clicks):
        np.testing.assert_array_equal(coords[0], farthest_click(gt).point_coords[0])
        assert labels[0] == 1


def test_batched_equals_per_object_and_rows(tiny_segmenter):
    scene = make_scene(11, "clutter", size=128)
    assert scene.num_objects >= 3
    for feed in (False, True):
        a = click_curves(tiny_segmenter, scene.image, scene.masks, ClicksConfig(max_clicks=5, feed_logits=feed))
        b = click_curves(tiny_segmenter, scene.image, scene.masks, ClicksConfig(max_clicks=5, feed_logits=feed, batch_objects=False))
        np.testing.assert_allclose(a[0], b[0], atol=1e-6)
        for (ca, la), (cb, lb) in zip(a[1], b[1]):
            np.testing.assert_array_equal(ca, cb)
            np.testing.assert_array_equal(la, lb)
    from ppd.bench.protocols import BenchModel

    proto = ClicksProtocol(ClicksConfig(max_clicks=5, targets=[50]))
    unit = Unit("m", "d", 0, "x", "clicks")
    res = proto.run(BenchModel("m", tiny_segmenter, tiny_segmenter, {}), None, scene, unit, unit.seed(0))
    by = {(r.object, r.metric): r.value for r in res.rows}
    plain = click_curves(tiny_segmenter, scene.image, scene.masks, ClicksConfig(max_clicks=5))[0]
    for obj in range(scene.num_objects):
        curve = np.array([by[(obj, f"iou@{k}")] for k in range(1, 6)])
        np.testing.assert_allclose(curve, plain[obj])
        assert by[(obj, "noc@50")] == noc(curve, 0.5)[0] and by[(obj, "nof@50")] == float(noc(curve, 0.5)[1])
    assert len(res.examples) == scene.num_objects and proto.table_metrics == ("iou@1", "iou@3", "iou@5", "noc@50", "nof@50")


def test_void_pixels_count_neither_way(tiny_segmenter):
    scene = make_scene(5, "train", size=128)
    void = np.zeros(scene.image.shape[:2], bool)
    void[:, :64] = True
    curves, clicks, _ = click_curves(tiny_segmenter, scene.image, scene.masks, ClicksConfig(max_clicks=3), void)
    for coords, _ in clicks:
        assert (coords[:, 0] >= 64).all()  # no click in the void half
    assert np.isfinite(curves).all()
