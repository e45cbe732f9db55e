"""The uncertainty protocol: per-object metrics and histograms against their definitions,
RUAC's clicks shared by a model with and without its head, determinism, void pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ppd
from ppd.bench.protocols import config_fields, protocol_class
from ppd.bench.protocols.base import BenchModel
from ppd.bench.protocols.uncertainty import (
    METRICS, RELIABILITY_BINS, RISK_COVERAGE_BINS, UncertaintyConfig, UncertaintyProtocol, object_metrics,
)
from ppd.bench.schema import Unit, decode_mask
from ppd.data.scenes import ProceduralScenes
from ppd.metrics import iou
from ppd.ruac import BayesianMaskDecoder
from ppd.ruac.evaluation import pixel_metrics, predict_maps, three_click_protocol
from ppd.segmenter import Segmenter

pytestmark = pytest.mark.usefixtures("one_torch_thread")

UNIT = Unit("m", "train", 0, "2", "uncertainty")
HIST = [f"rel_{k}@{b}" for b in range(RELIABILITY_BINS) for k in ("count", "conf", "hit")] + [
    f"rc_{k}@{b}" for b in range(RISK_COVERAGE_BINS) for k in ("count", "hit")]


@pytest.fixture(scope="module")
def base():
    return ppd.load_segmenter(device="cpu")


@pytest.fixture(scope="module")
def plain(base):
    return BenchModel("plain", base, base, {})


@pytest.fixture(scope="module")
def headed(base):
    """The same network with a RUAC head whose masks differ from the base decoder's (a
    fresh head reproduces them exactly: its weights are perturbed, seeded)."""
    head = BayesianMaskDecoder(base.model.sam_mask_decoder)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in head.head_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return BenchModel("headed", Segmenter(base.model, base.name, device="cpu", ruac_head=head), base, {})


@pytest.fixture(scope="module")
def scene():
    s = ProceduralScenes("train", 1, seed=2)[0]
    assert s.num_objects == 2
    return s


def table(result) -> dict[tuple[str, int, str], float]:
    return {(r.method, r.object, r.metric): r.value for r in result.rows}


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def test_registry_and_flags():
    p = protocol_class("uncertainty")
    assert p is UncertaintyProtocol and p.reliability == "rel_" and p.risk_coverage == "rc_"
    assert p.lower_is_better == {"aurc", "e_aurc", "ece"} and p.table_metrics == METRICS
    assert [(f.name, f.default) for f in config_fields(UncertaintyConfig)] == [("mc_samples", 0), ("clicks", 3)]
    with pytest.raises(ValueError, match="mc_samples must be >= 0"):
        UncertaintyConfig(mc_samples=-1)


def test_a_perfect_prediction():
    gt = np.zeros((20, 30), bool)
    gt[5:12, 8:20] = True
    m = object_metrics(gt.astype(np.float32), np.zeros(gt.shape, np.float32), gt)
    assert m["iou"] == 1.0 and m["j_and_f"] == 1.0 and m["ece"] == 0.0 and m["aurc"] == 0.0 and m["e_aurc"] == 0.0
    assert math.isnan(m["auroc"]) and math.isnan(m["pearson"])  # no error pixel to detect
    assert set(m) == {*METRICS, *HIST}
    fg = int(gt.sum())
    top = RELIABILITY_BINS - 1
    assert m[f"rel_count@{top}"] == m[f"rel_hit@{top}"] == m[f"rel_conf@{top}"] == fg
    assert m["rel_count@0"] == gt.size - fg and m["rel_hit@0"] == 0 and m["rel_conf@0"] == 0
    assert m[f"rc_count@{RISK_COVERAGE_BINS - 1}"] == m[f"rc_hit@{RISK_COVERAGE_BINS - 1}"] == gt.size


def test_metrics_of_one_object_are_ruacs_pixel_metrics_and_histograms_sum_to_its_pixels():
    rng = np.random.default_rng(0)
    gt = np.zeros((40, 50), bool)
    gt[10:30, 12:40] = True
    prob = (gt * 0.4 + rng.random(gt.shape) * 0.6).astype(np.float32)  # errors on both sides
    unc = rng.random(gt.shape).astype(np.float32)
    m = object_metrics(prob, unc, gt)
    want = pixel_metrics(prob[None], unc[None], gt[None])
    assert not math.isnan(want["auroc"]) and 0 < want["iou"] < 1
    for k in METRICS:
        assert m[k] == pytest.approx(want[k], rel=1e-12), k
    correct = (prob > 0.5) == gt
    assert sum(m[f"rel_count@{b}"] for b in range(RELIABILITY_BINS)) == gt.size
    assert sum(m[f"rel_hit@{b}"] for b in range(RELIABILITY_BINS)) == gt.sum()
    assert sum(m[f"rel_conf@{b}"] for b in range(RELIABILITY_BINS)) == pytest.approx(prob.sum(dtype=np.float64), rel=1e-6)
    assert sum(m[f"rc_count@{b}"] for b in range(RISK_COVERAGE_BINS)) == gt.size
    assert sum(m[f"rc_hit@{b}"] for b in range(RISK_COVERAGE_BINS)) == correct.sum()
    b = 7  # bin 7 of 20: confidence in [0.35, 0.40)
    inside = (1 - unc >= 0.35) & (1 - unc < 0.40)
    assert m[f"rc_count@{b}"] == inside.sum() and m[f"rc_hit@{b}"] == (inside & correct).sum()


def test_void_pixels_count_in_no_metric():
    gt = np.zeros((20, 30), bool)
    gt[5:12, 8:20] = True
    void = np.zeros(gt.shape, bool)
    void[:, 25:] = True
    prob = gt.astype(np.float32)
    prob[:, 25:] = 1.0  # wrong, but void
    m = object_metrics(prob, np.zeros(gt.shape, np.float32), gt, ~void)
    assert m["iou"] == 1.0 and m["ece"] == 0.0 and m["aurc"] == 0.0
    assert sum(m[f"rel_count@{b}"] for b in range(RELIABILITY_BINS)) == (~void).sum()


@pytest.fixture(scope="module")
def runs(plain, headed, scene):
    p, p_mc = UncertaintyProtocol(), UncertaintyProtocol(UncertaintyConfig(mc_samples=4))
    return {
        "plain": p.run(plain, None, scene, UNIT, UNIT.seed(0)),
        "headed": p.run(headed, None, scene, UNIT, UNIT.seed(0)),
        "mc": p_mc.run(headed, None, scene, UNIT, UNIT.seed(0)),
        "mc_again": p_mc.run(headed, None, scene, UNIT, UNIT.seed(0)),
        "other": p.run(plain, None, scene, UNIT, UNIT.seed(1)),
    }


def test_rows_of_every_method_object_and_metric(runs, scene):
    n = scene.num_objects
    metrics = {*METRICS, *HIST}
    for name, methods in (("plain", {"entropy"}), ("headed", {"entropy", "ruac"}), ("mc", {"entropy", "ruac", "ruac_mc"})):
        got = table(runs[name])
        assert set(got) == {(m, o, k) for m in methods for o in range(n) for k in metrics}, name
        for m in methods:
            for o in range(n):
                assert sum(got[m, o, f"rc_count@{b}"] for b in range(RISK_COVERAGE_BINS)) == scene.masks[o].size
                assert 0.0 <= got[m, o, "iou"] <= 1.0 and 0.0 <= got[m, o, "ece"] <= 1.0


def _points(clicks) -> list[list[list[float]]]:
    return [[[float(x), float(y), int(lab)] for (x, y), lab in zip(c.point_coords, c.point_labels)] for c in clicks]


def test_the_head_sees_the_base_decoders_clicks(runs, base, headed, scene):
    """Clicks: RUAC's three_click_protocol with the base decoder and a seed from the
    unit's stream, identical with and without the head (whose own clicks would differ);
    the entropy rows too."""
    seed = int(UNIT.seed(0).integers(2**63))
    points = _points(three_click_protocol(base, [scene], max_objects=scene.num_objects, seed=seed))
    assert _points(three_click_protocol(headed.segmenter, [scene], max_objects=scene.num_objects, seed=seed)) != points
    assert [e.points for e in runs["plain"].examples] == points
    assert [e.points for e in runs["headed"].examples] == points
    assert [e.method for e in runs["plain"].examples] == ["entropy"] * 2
    assert [e.method for e in runs["headed"].examples] == ["ruac"] * 2
    plain, with_head = table(runs["plain"]), table(runs["headed"])
    assert all(same(v, with_head[k]) for k, v in plain.items())
    assert any(with_head["ruac", o, "iou"] != plain["entropy", o, "iou"] for o in range(scene.num_objects))
    assert [e.points for e in runs["other"].examples] != points


def test_rows_are_the_maps_of_predict_maps(runs, headed, scene):
    """The ruac rows are object_metrics of predict_maps(analytic) at the shared clicks."""
    ex = runs["headed"].examples
    k = max(len(e.points) for e in ex)
    coords = np.zeros((len(ex), k, 2), np.float32)
    labels = -np.ones((len(ex), k), np.int64)
    for r, e in enumerate(ex):
        coords[r, : len(e.points)] = [p[:2] for p in e.points]
        labels[r, : len(e.points)] = [p[2] for p in e.points]
    seg = headed.segmenter
    prob, unc = predict_maps(seg, seg.ruac_head, seg.encode(scene.image), coords, labels, "analytic")
    got = table(runs["headed"])
    for o in range(len(ex)):
        want = object_metrics(prob[o], unc[o], scene.masks[o])
        assert all(same(got["ruac", o, k], v) for k, v in want.items())
        assert ex[o].value == got["ruac", o, "iou"] == pytest.approx(float(iou(decode_mask(ex[o].mask), scene.masks[o])))


def test_same_stream_same_rows_mc_included(runs):
    a, b = runs["mc"].rows, runs["mc_again"].rows
    assert [(r.method, r.object, r.metric) for r in a] == [(r.method, r.object, r.metric) for r in b]
    assert all(same(x.value, y.value) for x, y in zip(a, b))
    got = table(runs["mc"])
    assert got["ruac_mc", 0, "iou"] == got["ruac", 0, "iou"]  # one mask (mean logit > 0), two uncertainties
    assert any(got["ruac_mc", 0, k] != got["ruac", 0, k] for k in ("aurc", "ece", "pavpu"))


def test_void_pixels_get_no_click(plain, scene):
    void = np.zeros(scene.masks.shape[1:], bool)
    ys, xs = np.nonzero(scene.masks[0])
    void[int(np.median(ys)):] = True
    voided = type(scene)(scene.image, scene.masks[:1], scene.domain, scene.seed, {"void": void})
    res = UncertaintyProtocol().run(plain, None, voided, UNIT, UNIT.seed(0))
    (example,) = res.examples
    assert all(not void[int(y), int(x)] for x, y, _ in example.points)
    assert not (decode_mask(example.mask) & void).any()
    got = table(res)
    assert sum(got["entropy", 0, f"rel_count@{b}"] for b in range(RELIABILITY_BINS)) == (~void).sum()
