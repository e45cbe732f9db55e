"""One-shot prompts: feature matching and its baselines, procedural and dataset pairs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import ppd
import ppd.prompts
from ppd.data.oneshot_datasets import ClassFolderPairs, CocoPairs
from ppd.data.oneshot_pairs import domain_families, make_pair, object_classes, reference_scene
from ppd.data.scenes import DOMAINS, make_scene
from ppd.oneshot import feature_matching, grid_points, match_scores, remove_wrong_points, search_edit_oracle
from ppd.oneshot_baselines import gbmseg, persam, persam_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def block_features(hw, box, dim=4, seed=0):
    """(h, w, dim) features: background near e1, a block (i0, j0, i1, j1) near e0."""
    rng = np.random.default_rng(seed)
    f = np.zeros((*hw, dim), np.float32)
    f[..., 1] = 1.0
    i0, j0, i1, j1 = box
    f[i0:i1, j0:j1] = 0.0
    f[i0:i1, j0:j1, 0] = 1.0
    return f + rng.normal(0, 0.05, f.shape).astype(np.float32)


def check_set(coords, labels, hw):
    assert coords.dtype == np.float32 and coords.ndim == 2 and coords.shape[1] == 2
    assert labels.dtype == np.int64 and labels.shape == (len(coords),) and len(coords) >= 1
    assert set(labels.tolist()) <= {0, 1} and labels[0] == 1
    assert (np.diff(labels) <= 0).all()  # positives first
    assert (coords >= 0).all() and (coords[:, 0] <= hw[1] - 1).all() and (coords[:, 1] <= hw[0] - 1).all()
    assert (coords == np.round(coords)).all()


def test_feature_maps_given_positives_on_the_matching_block_negatives_off():
    ref = block_features((8, 8), (2, 2, 6, 6))
    ref_mask = np.zeros((64, 64), bool)
    ref_mask[16:48, 16:48] = True  # exactly patches 2..5 of an 8 x 8 grid
    tgt = block_features((10, 12), (5, 6, 9, 11), seed=1)  # a grid unlike the reference's
    hw = (100, 120)  # 10 px patches
    coords, labels = feature_matching(None, None, ref_mask, None, n_pos=4, n_neg=2, spacing=0.1,
                                      ref_features=ref, target_features=tgt, target_hw=hw)
    check_set(coords, labels, hw)
    assert labels.tolist() == [1, 1, 1, 1, 0, 0]
    inside = (coords[:, 1] >= 50) & (coords[:, 1] < 90) & (coords[:, 0] >= 60) & (coords[:, 0] < 110)
    assert inside[labels == 1].all() and not inside[labels == 0].any()
    pos = coords[labels == 1]
    d = np.abs(pos[:, None] - pos[None]).max(-1) + np.eye(len(pos)) * 1e9
    assert d.min() >= 10  # spacing 0.1 of a 12-patch side: at least one patch (10 px) apart


def test_no_match_gives_one_positive_at_the_best_margin():
    ref = block_features((8, 8), (2, 2, 6, 6))
    ref_mask = np.zeros((64, 64), bool)
    ref_mask[16:48, 16:48] = True
    tgt = np.tile(np.array([0.0, 1.0, 0.0, 0.0], np.float32), (6, 6, 1))  # all background
    tgt[3, 4, 0] = 0.5  # the least background-like patch
    coords, labels = feature_matching(None, None, ref_mask, None, ref_features=ref, target_features=tgt, target_hw=(60, 60))
    assert labels[0] == 1 and (labels == 1).sum() == 1
    assert coords[0].tolist() == [45.0, 35.0]  # patch (3, 4)'s centre pixel


def test_grid_points_and_match_scores_by_hand():
    assert grid_points((2, 4), (10, 20)).tolist() == [[[2, 2], [7, 2], [12, 2], [17, 2]], [[2, 7], [7, 7], [12, 7], [17, 7]]]
    ref = np.array([[[1, 0]], [[0, 1]]], np.float32)  # 2 x 1 grid: object on top
    mask = np.array([[1], [0]], bool)
    tgt = np.array([[[1, 0], [1, 1]]], np.float32)  # 1 x 2 grid
    s = match_scores(ref, mask, tgt, (4, 8), top_k=1)
    np.testing.assert_allclose(s.fg, [[1.0, np.sqrt(0.5)]], atol=1e-6)
    np.testing.assert_allclose(s.bg, [[0.0, np.sqrt(0.5)]], atol=1e-6)
    assert s.forward.tolist() == [[1, 0]] and s.nn_fg.tolist() == [[True, True]]


def test_errors():
    with pytest.raises(ValueError, match="empty"):
        feature_matching(None, None, np.zeros((8, 8), bool), None, ref_features=np.ones((2, 2, 3)),
                         target_features=np.ones((2, 2, 3)), target_hw=(8, 8))
    with pytest.raises(ValueError, match="same C"):
        feature_matching(None, None, np.ones((8, 8), bool), None, ref_features=np.ones((2, 2, 3)),
                         target_features=np.ones((2, 2, 4)), target_hw=(8, 8))
    with pytest.raises(ValueError, match="n_pos"):
        feature_matching(None, None, np.ones((8, 8), bool), None, n_pos=0, ref_features=np.ones((2, 2, 3)),
                         target_features=np.ones((2, 2, 3)), target_hw=(8, 8))


def test_images_of_different_sizes(tiny_segmenter):
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (96, 128, 3), np.uint8)
    tgt = rng.integers(0, 256, (150, 70, 3), np.uint8)
    mask = np.zeros((96, 128), bool)
    mask[20:60, 30:90] = True
    for fn in (feature_matching, gbmseg, persam):
        coords, labels = fn(tiny_segmenter, ref, mask, tgt)
        check_set(coords, labels, (150, 70))
    c, lab = feature_matching(tiny_segmenter, ref, mask, tgt, n_pos=2, n_neg=1)
    assert (lab == 1).sum() <= 2 and (lab == 0).sum() <= 1
    c, lab = persam(tiny_segmenter, ref, mask, tgt)
    assert lab.tolist() == [1, 0]
    m, c2, lab2 = persam_mask(tiny_segmenter, ref, mask, tgt)
    assert m.shape == (150, 70) and m.dtype == bool and lab2.tolist() == [1, 0]


def test_the_public_name_and_no_import_cycle():
    assert ppd.prompts.feature_matching is feature_matching
    code = "import sys, ppd.prompts; assert 'ppd.oneshot' not in sys.modules; ppd.prompts.feature_matching; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"
    with pytest.raises(AttributeError):
        ppd.prompts.no_such_name  # noqa: B018


@pytest.fixture(scope="module")
def bundled():
    return ppd.load_segmenter(device="cpu")


@pytest.mark.parametrize("shift", [0, 24])
def test_positives_land_on_the_object_of_a_copy(bundled, shift):
    scene = make_scene(5, "train")
    obj = int(np.argmax(scene.masks.reshape(scene.num_objects, -1).sum(1)))
    target = np.roll(scene.image, (shift, shift), axis=(0, 1))
    gt = np.roll(scene.masks[obj], (shift, shift), axis=(0, 1))
    coords, labels = feature_matching(bundled, scene.image, scene.masks[obj], target)
    x, y = coords[:, 0].astype(int), coords[:, 1].astype(int)
    assert gt[y, x][labels == 1].mean() >= 0.6
    assert not gt[y, x][labels == 0].any()


def test_oracle_removes_exactly_the_wrong_points():
    gt = np.zeros((10, 10), bool)
    gt[2:5, 2:5] = True
    coords = np.array([[3, 3], [8, 8], [3, 4], [9, 0]], np.float32)
    labels = np.array([1, 1, 0, 0])
    c, lab = remove_wrong_points(coords, labels, gt)
    assert c.tolist() == [[3, 3], [9, 0]] and lab.tolist() == [1, 0]
    c, lab = remove_wrong_points(coords[1:3], labels[1:3], gt)  # all wrong: the first stays
    assert c.tolist() == [[8, 8]] and lab.tolist() == [1]


def test_search_oracle_edits_until_no_edit_helps(bundled):
    from ppd.metrics import iou

    gains = []
    for seed in range(3):
        p = make_pair(30_000_000 + seed, "train")
        image, gt = p.target.image, p.target_mask
        care = np.ones(gt.shape, bool)
        care[:, :8] = False  # pixels that do not count
        coords, labels = feature_matching(bundled, p.reference.image, p.ref_mask, image)
        c, lab, mask = search_edit_oracle(bundled, image, coords, labels, gt, care)
        assert 1 <= len(lab) <= len(labels) and set(lab.tolist()) <= {0, 1}
        # every returned point is one of the given points, and the mask is the set's own
        assert all(any(np.array_equal(q, r) for r in coords) for q in c)
        own = np.asarray(bundled.predict(image, c, lab).masks[0], bool) & care
        assert np.array_equal(mask, own)
        start = iou(np.asarray(bundled.predict(image, coords, labels).masks[0], bool) & care, gt & care)
        end = iou(mask, gt & care)
        # a local optimum: no single flip or removal of the result raises the IoU
        for i in range(len(lab)):
            flipped = np.where(np.arange(len(lab)) == i, 1 - lab, lab)
            assert iou(np.asarray(bundled.predict(image, c, flipped).masks[0], bool) & care, gt & care) <= end
        gains.append(end - start)
    assert min(gains) >= 0.0 and max(gains) > 0.0


# -- pairs ------------------------------------------------------------------------
@pytest.mark.parametrize("domain", DOMAINS)
def test_pairs_share_a_class_in_every_domain(domain):
    p = make_pair(11, domain)
    assert p.reference.meta["object_class"] == p.target.meta["object_class"]
    assert p.label.shape in [n for n, _, _ in domain_families(domain)]
    assert 1 <= len(p.target_objects) <= 2 and p.ref_mask.sum() >= 48 and p.target_mask.sum() >= 48
    again = make_pair(11, domain)
    assert np.array_equal(again.reference.image, p.reference.image) and np.array_equal(again.target.image, p.target.image)
    assert not np.array_equal(make_pair(12, domain).target.image, p.target.image)
    colour = np.asarray(p.label.colour) * 255
    for scene, objs in ((p.reference, [p.ref_object]), (p.target, p.target_objects)):
        for o in objs:  # the class's appearance: its colour, up to jitter, shading, texture and noise
            assert np.abs(np.median(scene.image[scene.masks[o]], axis=0) - colour).max() < 0.25 * 255


def test_object_classes_of_generator_scenes():
    scene = make_scene(3, "thin")
    classes = object_classes(scene, 3, "thin")
    assert len(classes) == scene.num_objects
    assert {c.shape for c in classes} <= {"bar", "arc", "needle"}
    for c, m in zip(classes, scene.masks):
        np.testing.assert_allclose(np.asarray(c.colour) * 255, np.median(scene.image[m], axis=0), atol=20)
    ref, obj = reference_scene(classes[0], "thin", seed=1)
    assert ref.meta["object_class"]["shape"] == classes[0].shape and ref.masks[obj].sum() >= 48
    other = make_scene(3, "thin")
    other.image[0, 0] ^= 1
    assert object_classes(other, 3, "thin") is None  # not the generator's pixels


def _write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_coco_pairs_share_a_category(tmp_path):
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(3):
        _write_png(tmp_path / "images" / f"{i}.png", rng.integers(0, 256, (40, 50, 3), np.uint8))
        images.append({"id": i, "file_name": f"{i}.png", "height": 40, "width": 50})
        for k, (cat, x) in enumerate(((1, 2), (2, 25))):
            if i == 2 and cat == 2:
                continue  # category 2 in images 0 and 1 only
            poly = [x, 5, x + 15, 5, x + 15, 30, x, 30]
            anns.append({"id": 10 * i + k, "image_id": i, "category_id": cat, "segmentation": [poly], "area": 375,
                         "iscrowd": 0, "bbox": [x, 5, 15, 25]})
    (tmp_path / "ann.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                   "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    pairs = CocoPairs(tmp_path / "ann.json", tmp_path / "images", n=12, seed=3)
    labels = set()
    for p in pairs:
        assert p.reference.meta["image_id"] != p.target.meta["image_id"]
        assert p.reference.meta["category_ids"][p.ref_object] == p.label
        assert [p.target.meta["category_ids"][k] for k in p.target_objects] == [p.label]
        labels.add(p.label)
    assert labels == {1, 2}
    assert pairs[4].target.meta["image_id"] == CocoPairs(tmp_path / "ann.json", tmp_path / "images", 12, 3)[4].target.meta["image_id"]


@pytest.mark.parametrize("layout", ["fss", "folders"])
def test_class_folder_pairs(tmp_path, layout):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        for i in range(2):
            img = rng.integers(0, 256, (30, 20, 3), np.uint8)
            mask = np.zeros((30, 20), np.uint8)
            mask[5:15, 3 + 5 * i:12 + 5 * i] = 255
            if layout == "fss":
                _write_png(tmp_path / cls / f"{i}.png", mask)
                Image.fromarray(img).save(tmp_path / cls / f"{i}.jpg")
            else:
                _write_png(tmp_path / cls / "images" / f"{i}.png", img)
                _write_png(tmp_path / cls / "masks" / f"{i}.png", mask)
    pairs = ClassFolderPairs(tmp_path, n=8, seed=0)
    seen = set()
    for p in pairs:
        assert p.reference.meta["image_file"] != p.target.meta["image_file"]
        assert p.label in p.reference.meta["image_file"] and p.label in p.target.meta["image_file"]
        assert p.ref_mask.sum() == 90 and p.target_mask.sum() == 90
        seen.add(p.label)
    assert seen == {"cat", "dog"}
    (tmp_path / "lonely").mkdir()
    with pytest.raises(FileNotFoundError):
        ClassFolderPairs(tmp_path / "missing")
