"""The edit chooser of one-shot prompt sets: features, candidates, fitting, the pick."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ppd.agents.baselines import BASELINES
from ppd.data.oneshot_pairs import make_pair
from ppd.oneshot import feature_matching
from ppd.oneshot_quality import (
    FEATURES, EditChooser, candidate_table, choose_edit, colour_likelihood, evidence_for, fit_chooser, load_chooser,
    mask_features, refine_with_reference, single_edits,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def two_colour_image(h=40, w=60):
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (30, 90, 200)  # blue background
    img[10:30, 10:30] = (220, 40, 40)  # a red square
    mask = np.zeros((h, w), bool)
    mask[10:30, 10:30] = True
    return img, mask


def test_colour_likelihood_favours_the_reference_objects_colour():
    img, mask = two_colour_image()
    target = np.zeros((50, 50, 3), np.uint8)
    target[:] = (30, 90, 200)
    target[:, 25:] = (220, 40, 40)  # another size, the object's colour on the right
    target[0, 0] = (0, 255, 0)  # a colour neither side has: no evidence either way
    llr = colour_likelihood(img, mask, target)
    assert llr.shape == (50, 50) and llr.dtype == np.float32
    assert (llr[:, 25:] > 3).all() and (llr[1:, :25] < -3).all()
    assert abs(llr[0, 0]) < 0.5


def test_single_edits_are_every_removal_and_every_flip():
    coords = np.array([[1, 2], [3, 4], [5, 6]], np.float32)
    labels = np.array([1, 1, 0])
    sets = single_edits(coords, labels)
    assert len(sets) == 1 + 3 + 3
    assert np.array_equal(sets[0][0], coords) and sets[0][1].tolist() == [1, 1, 0]
    assert sets[2][0].tolist() == [[1, 2], [5, 6]] and sets[2][1].tolist() == [1, 0]  # point 1 removed
    assert sets[6][1].tolist() == [1, 1, 1] and np.array_equal(sets[6][0], coords)  # point 2 flipped
    one = single_edits(coords[:1], labels[:1])  # a single point is never removed
    assert len(one) == 2 and one[1][1].tolist() == [0]


def synthetic_tables(n=60, seed=0):
    """Tables where the gain over the first candidate is the first feature's gain."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.normal(size=(6, len(FEATURES)))
        out.append((x, 0.5 + 0.1 * (x[:, 0] - x[0, 0])))
    return out


def test_fit_recovers_a_linear_gain_and_tau_keeps_the_input(tmp_path):
    tables = synthetic_tables()
    chooser = EditChooser.fit(tables, ridge=1e-3, tau=0.0)
    x, y = synthetic_tables(1, seed=9)[0]
    np.testing.assert_allclose(chooser.gains(x)[1:], (y - y[0])[1:], atol=1e-3)
    assert chooser.gains(x)[0] == 0.0
    assert chooser.pick(x) == (int(np.argmax(y)) if y.max() > y[0] else 0)
    worse = x.copy()
    worse[1:, 0] = x[0, 0] - 1.0  # every edit predicted to lose
    assert chooser.pick(worse) == 0
    strict = EditChooser(chooser.mean, chooser.scale, chooser.weights, tau=10.0)
    assert strict.pick(x) == 0  # no gain clears tau
    path = chooser.save(tmp_path / "c.json")
    back = EditChooser.load(path)
    np.testing.assert_allclose(back.gains(x), chooser.gains(x))
    doc = json.loads(path.read_text())
    doc["features"] = doc["features"][:-1]
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="fitted on other features"):
        EditChooser.load(path)
    with pytest.raises(ValueError, match=f"features must be \\(F, {len(FEATURES)}\\)"):
        chooser.gains(x[:, :3])
    with pytest.raises(ValueError, match="no candidate tables"):
        EditChooser.fit([])


@pytest.fixture(scope="module")
def pair():
    return make_pair(3, "train")


def test_features_of_real_masks(tiny_segmenter, pair):
    img, ref_img, ref_mask = pair.target.image, pair.reference.image, pair.ref_mask
    coords, labels = feature_matching(tiny_segmenter, ref_img, ref_mask, img)
    ev = evidence_for(tiny_segmenter, ref_img, ref_mask, img, coords, labels)
    gt = pair.target_mask
    x_gt = mask_features(gt, 0.9, np.where(gt, 5.0, -5.0), ev, labels)
    x_empty = mask_features(np.zeros_like(gt), 0.1, np.full(gt.shape, -5.0), ev, labels)
    assert x_gt.shape == (len(FEATURES),) and np.isfinite(x_gt).all() and np.isfinite(x_empty).all()
    f = dict(zip(FEATURES, x_gt))
    assert f["sam_score"] == pytest.approx(0.9) and f["stability"] == pytest.approx(1.0)
    # the true object is coloured like the reference object, more than the rest of the image
    assert f["colour_contrast"] > 1.0 > dict(zip(FEATURES, x_empty))["colour_contrast"]
    assert abs(f["log_area_ratio"]) < np.log(4)  # an instance of the reference's class: similar size
    table, ious = candidate_table(tiny_segmenter, ref_img, ref_mask, img, gt, coords, labels)
    assert table.shape == (len(single_edits(coords, labels)), len(FEATURES)) and ious.shape == (len(table),)
    assert ((0 <= ious) & (ious <= 1)).all()


def test_refine_with_reference_returns_the_chosen_candidate(tiny_segmenter, pair):
    img, ref_img, ref_mask = pair.target.image, pair.reference.image, pair.ref_mask
    coords, labels = feature_matching(tiny_segmenter, ref_img, ref_mask, img)
    refiner = BASELINES["no_refine"](tiny_segmenter)
    k = len(labels)
    for target in (0, 2, 1 + k + 1):  # the input, removing point 1, flipping point 1
        x = np.zeros((len(single_edits(coords, labels)) + 1, len(FEATURES)))
        x[target, 0] = 1.0
        gains = np.zeros(2 * len(FEATURES) + 1)
        gains[0] = 1.0  # the first feature's difference to the input
        chooser = EditChooser(np.zeros_like(gains), np.ones_like(gains), gains, tau=0.5)
        chooser.gains = lambda feats, t=target: np.eye(len(feats))[t]  # the pick is rigged, the rest is real
        res = refine_with_reference(refiner, img, coords, labels, ref_img, ref_mask, chooser)
        c, lab, mask, j = choose_edit(tiny_segmenter, chooser, ref_img, ref_mask, img, coords, labels)
        assert j == target
        assert np.array_equal(res.point_coords, c) and np.array_equal(res.point_labels, lab)
        assert np.array_equal(res.mask, np.asarray(tiny_segmenter.predict(img, c, lab).masks[0], bool))
        assert res.kept.sum() == len(c) and res.steps == int(target > 0)
        assert res.relabeled.sum() == int(target > k) and "reference choice" in res.trace[-1]


def test_the_bundled_chooser_loads_and_refitting_works(tiny_segmenter):
    chooser = load_chooser()
    assert chooser.weights.shape == (2 * len(FEATURES) + 1,) and chooser.meta["pairs"] >= 100
    refit = fit_chooser(tiny_segmenter, [make_pair(s, "train") for s in (11, 12)], tau=0.0)
    assert refit.meta["pairs"] == 2 and np.isfinite(refit.weights).all()


@pytest.mark.parametrize("text, message", [
    ("{\"features\": [", "not an edit chooser file \\(JSONDecodeError"),
    ("[1, 2]", "not an edit chooser file \\(AttributeError"),
    ("{}", "not an edit chooser file \\(KeyError"),
])
def test_a_damaged_chooser_file_is_one_clear_error(tmp_path, text, message):
    path = tmp_path / "edit_chooser.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_chooser(tmp_path)  # a run folder holding it


def test_a_chooser_with_misshapen_weights_is_refused(tmp_path):
    chooser = EditChooser.fit(synthetic_tables(10))
    path = chooser.save(tmp_path / "c.json")
    doc = json.loads(path.read_text())
    doc["weights"] = doc["weights"][:-1]
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=f"must be {2 * len(FEATURES) + 1} finite numbers"):
        EditChooser.load(path)
    with pytest.raises(FileNotFoundError):
        EditChooser.load(tmp_path / "none.json")
