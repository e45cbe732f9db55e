"""RUAC evaluation (``ppd.ruac.evaluation``): the 3-click protocol's clicks and the
segmentation + uncertainty metrics of a method, on scenes of one or of several sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest

import ppd
from ppd.data.scenes import TRAIN_DOMAIN, make_scene
from ppd.data.types import Scene
from ppd.metrics import aurc, e_aurc, ece, iou, j_and_f, pavpu, uncertainty_auroc, uncertainty_error_pearson
from ppd.ruac import BayesianMaskDecoder
from ppd.ruac.evaluation import (
    METRIC_KEYS,
    evaluate_method,
    pixel_metrics,
    predict_maps,
    protocol_click,
    three_click_protocol,
)


@pytest.fixture(scope="module")
def bundled():
    return ppd.load_segmenter(device="cpu", cache_size=0)


def _same(a: dict, b: dict) -> bool:
    """Equal metric dicts, nan equal to nan."""
    return set(a) == set(b) and all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def assert_close(got: dict, want: dict, rel: float) -> None:
    """Every metric key within ``rel`` (nan only where nan is wanted)."""
    for k in METRIC_KEYS:
        if math.isnan(want[k]):
            assert math.isnan(got[k]), k
        else:
            assert got[k] == pytest.approx(want[k], rel=rel, abs=1e-12), k


def stacked_metrics(prob: np.ndarray, unc: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """The metrics of (B, H, W) maps of one size, computed on the stacked arrays."""
    pred = prob > 0.5
    error = pred != gt
    informative = error.any() and not error.all()
    return {
        "j_and_f": float(np.mean(j_and_f(pred, gt))),
        "iou": float(np.mean(iou(pred, gt))),
        "pavpu": pavpu(prob, unc, gt),
        "aurc": aurc(1.0 - unc, ~error),
        "e_aurc": e_aurc(1.0 - unc, ~error),
        "ece": ece(prob, gt),
        "auroc": uncertainty_auroc(unc, error) if informative else float("nan"),
        "pearson": uncertainty_error_pearson(unc, error.astype(np.float32)) if informative else float("nan"),
        "error_rate": float(np.mean(error)),
    }


def pooled_metrics(probs: list, uncs: list, gts: list) -> dict[str, float]:
    """The metrics of per-image (B_i, H_i, W_i) maps of any sizes: J&F and IoU averaged
    over objects, every per-pixel metric over all pixels of all images."""
    jf = [float(j_and_f(p > 0.5, g)) for pi, gi in zip(probs, gts) for p, g in zip(pi, gi)]
    ious = [float(iou(p > 0.5, g)) for pi, gi in zip(probs, gts) for p, g in zip(pi, gi)]
    prob, unc, gt = (np.concatenate([a.ravel() for a in maps]) for maps in (probs, uncs, gts))
    flat = stacked_metrics(prob[None, None], unc[None, None], gt[None, None])  # (1, 1, N)
    return {**flat, "j_and_f": float(np.mean(jf)), "iou": float(np.mean(ious))}


def cropped(scene: Scene, h: int, w: int) -> Scene:
    """The top-left (h, w) part of a scene, its objects that remain visible."""
    masks = scene.masks[:, :h, :w]
    return Scene(np.ascontiguousarray(scene.image[:h, :w]), masks[masks.any((1, 2))], scene.domain, scene.seed)


# ----------------------------------------------------------------------------- protocol
def test_protocol_click_takes_the_larger_error_region_and_keeps_its_distance():
    gt = np.zeros((20, 20), bool)
    gt[2:12, 2:12] = True  # 100 px object
    pred = np.zeros_like(gt)
    pred[2:12, 2:7] = True  # FN: 50 px
    pred[14:18, 14:18] = True  # FP: 16 px
    xy, label = protocol_click(pred, gt)
    assert label == 1 and gt[int(xy[1]), int(xy[0])] and not pred[int(xy[1]), int(xy[0])]
    xy2, label2 = protocol_click(pred, gt, previous=xy[None], min_separation=8)
    assert label2 == 0 and pred[int(xy2[1]), int(xy2[0])] and not gt[int(xy2[1]), int(xy2[0])]
    assert protocol_click(gt, gt) is None


# ----------------------------------------------------------------------------- metrics
def test_pixel_metrics_of_a_perfect_uncertainty():
    gt = np.zeros((2, 8, 8), bool)
    gt[:, 2:6, 2:6] = True
    prob = gt.astype(np.float32) * 0.9 + 0.05
    prob[0, 0, 0] = 0.8  # one confident error
    unc = np.zeros_like(prob)
    unc[0, 0, 0] = 1.0
    m = pixel_metrics(prob, unc, gt)
    assert m["auroc"] == 1.0 and m["e_aurc"] == pytest.approx(0.0, abs=1e-12) and m["pavpu"] == 1.0


def random_maps(rng: np.random.Generator, b: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gt = np.zeros((b, h, w), bool)
    gt[:, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = True
    prob = np.clip(gt * 0.4 + rng.uniform(0.05, 0.6, (b, h, w)), 0.0, 1.0).astype(np.float32)  # ~15% errors
    unc = rng.uniform(0.0, 1.0, (b, h, w)).astype(np.float32)
    return prob, unc, gt


def test_pixel_metrics_pool_pixels_of_maps_of_any_sizes():
    rng = np.random.default_rng(0)
    a, b = random_maps(rng, 2, 24, 24), random_maps(rng, 3, 16, 40)
    got = pixel_metrics([a[0], b[0]], [a[1], b[1]], [a[2], b[2]])
    want = pooled_metrics([a[0], b[0]], [a[1], b[1]], [a[2], b[2]])
    assert set(got) == set(METRIC_KEYS) and not any(math.isnan(v) for v in got.values())
    assert_close(got, want, rel=1e-12)
    # the second image's pixels count: the pooled numbers are neither image's own
    alone = pixel_metrics(*a)
    assert got["error_rate"] != alone["error_rate"] and got["ece"] != alone["ece"]
    # one size: a list of per-image maps scores exactly as the stacked maps do
    c = random_maps(rng, 1, 24, 24)
    split = pixel_metrics([a[0], c[0]], [a[1], c[1]], [a[2], c[2]])
    stacked = [np.concatenate([x, y]) for x, y in zip(a, c)]
    assert _same(split, pixel_metrics(*stacked))
    assert _same(split, stacked_metrics(*stacked))
    with pytest.raises(ValueError, match="differ in shape"):
        pixel_metrics([a[0], b[0]], [a[1], b[1]], [a[2], b[2][:, :, :20]])


# ----------------------------------------------------------------------------- methods
@pytest.mark.parametrize("mode", ["base", "analytic"])
def test_evaluate_method_scores_scenes_of_different_sizes(bundled, mode):
    """Real datasets mix image sizes: the maps of all scenes are pooled, not stacked."""
    head = BayesianMaskDecoder(bundled.model.sam_mask_decoder).eval() if mode != "base" else None
    scenes = [
        make_scene(21, TRAIN_DOMAIN, 256),
        cropped(make_scene(22, TRAIN_DOMAIN, 256), 200, 256),
        make_scene(23, TRAIN_DOMAIN, 160),
    ]
    assert len({s.image.shape for s in scenes}) == 3 and all(s.num_objects for s in scenes)
    embs = [bundled.encode(s.image) for s in scenes]
    clicks = three_click_protocol(bundled, scenes, max_objects=2, seed=0, embeddings=embs)
    res, maps = evaluate_method(bundled, head, scenes, clicks, mode, embeddings=embs, return_maps=True)

    probs, uncs, gts = [], [], []
    for i, scene in enumerate(scenes):
        cs = [c for c in clicks if c.scene == i]
        k = max(len(c.point_labels) for c in cs)
        coords = np.zeros((len(cs), k, 2), np.float32)
        labels = -np.ones((len(cs), k), np.int64)
        for r, c in enumerate(cs):
            coords[r, : len(c.point_labels)], labels[r, : len(c.point_labels)] = c.point_coords, c.point_labels
        p, u = predict_maps(bundled, head, embs[i], coords, labels, mode)
        probs.append(p)
        uncs.append(u)
        gts.append(scene.masks[[c.obj for c in cs]])
    want = pooled_metrics(probs, uncs, gts)
    assert res["objects"] == len(clicks) == sum(len(p) for p in probs)
    assert_close(res, want, rel=1e-12)
    assert 0.0 < res["error_rate"] < 1.0
    # one map per object, each at its scene's size
    assert [m.shape for m in maps["prob"]] == [g.shape for gs in gts for g in gs]
    assert all(np.array_equal(m, g) for m, g in zip(maps["gt"], [g for gs in gts for g in gs]))


def test_evaluate_method_on_scenes_of_one_size_matches_the_stacked_maps(bundled):
    scenes = [make_scene(31, TRAIN_DOMAIN, 192), make_scene(32, TRAIN_DOMAIN, 192)]
    embs = [bundled.encode(s.image) for s in scenes]
    clicks = three_click_protocol(bundled, scenes, max_objects=2, seed=1, embeddings=embs)
    res, maps = evaluate_method(bundled, None, scenes, clicks, "base", embeddings=embs, return_maps=True)
    assert all(isinstance(maps[k], np.ndarray) and maps[k].shape == (len(clicks), 192, 192) for k in maps)
    want = stacked_metrics(maps["prob"], maps["uncertainty"], maps["gt"])
    assert _same({k: res[k] for k in METRIC_KEYS}, want)
