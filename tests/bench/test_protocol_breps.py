"""The breps protocol: its rows, names, options, determinism and figures."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from ppd.bench.protocols import BenchModel, config_fields
from ppd.bench.protocols.breps import METRICS, BrepsConfig, BrepsProtocol
from ppd.bench.protocols.breps_figures import box_attack_figure, box_triplets, breps_figures, delta_figure
from ppd.bench.schema import CLEAN, Unit, decode_mask
from ppd.data.scenes import make_scene
from ppd.robustness.breps import box_attack

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BOX = ("iou_base_bbox", "iou_min_bbox", "iou_max_bbox", "iou_delta_bbox")
POINTS = ("iou_base_points", "iou_min_points", "iou_max_points", "iou_delta_points")


@pytest.fixture(scope="module")
def scene():
    s = make_scene(7, "clutter", size=96)
    s.masks = s.masks[np.argsort(-s.masks.sum((1, 2)))[:3]]
    return s


def _run(seg, scene, **cfg):
    proto = BrepsProtocol(BrepsConfig(**{"steps": 3, **cfg}))
    unit = Unit("m", "d", 0, "x", "breps")
    return proto, proto.run(BenchModel("m", seg, seg, {}), None, scene, unit, unit.seed(0))


def _table(res):
    return {(r.method, r.object, r.metric): r.value for r in res.rows}


def test_rows_names_and_bounds(tiny_segmenter, scene):
    proto, res = _run(tiny_segmenter, scene)
    n = len(scene.masks)
    got = _table(res)
    expected = {("breps", i, m) for i in range(n) for m in BOX + POINTS} | {("breps_coarse", i, m) for i in range(n) for m in POINTS}
    assert set(got) == expected
    assert all(r.condition == CLEAN for r in res.rows)
    for (method, obj, metric), v in got.items():
        assert 0.0 <= v <= 1.0
        if metric.startswith("iou_base"):
            kind = metric.split("_")[-1]
            lo, hi = got[(method, obj, f"iou_min_{kind}")], got[(method, obj, f"iou_max_{kind}")]
            assert lo <= v <= hi
            assert got[(method, obj, f"iou_delta_{kind}")] == pytest.approx(hi - lo)
    assert proto.table_metrics == BOX + POINTS
    assert proto.lower_is_better == frozenset({"iou_delta_bbox", "iou_delta_points"})
    assert proto.example_metric == "iou_min_bbox"
    # the box rows are the library's box attack on the same objects
    lib = box_attack(tiny_segmenter, scene.image, scene.masks, steps=3)
    np.testing.assert_allclose([got[("breps", i, "iou_min_bbox")] for i in range(n)], lib.iou_min)
    np.testing.assert_allclose([got[("breps", i, "iou_base_bbox")] for i in range(n)], lib.iou_base)
    # examples: start, worst and best box per object, the worst point set per object and set
    kinds = {(e.method, e.object, e.metric) for e in res.examples}
    assert {("breps", i, m) for i in range(n) for m in BOX[:3]} <= kinds
    assert {(m, i, "iou_min_points") for i in range(n) for m in ("breps", "breps_coarse")} <= kinds
    for e in res.examples:
        assert e.value == pytest.approx(got[(e.method, e.object, e.metric)])
        assert decode_mask(e.mask).shape == scene.masks.shape[1:]
        assert (e.box is not None) == e.metric.endswith("bbox")


def test_deterministic_given_the_units_stream(tiny_segmenter, scene):
    a = _table(_run(tiny_segmenter, scene)[1])
    b = _table(_run(tiny_segmenter, scene)[1])
    assert a == b


def test_prompt_kinds_and_point_sets(tiny_segmenter, scene):
    proto, res = _run(tiny_segmenter, scene, prompts=["points"], point_sets=["coarse"])
    assert {(r.method, r.metric) for r in res.rows} == {("breps_coarse", m) for m in POINTS}
    assert proto.table_metrics == POINTS and proto.example_metric == "iou_min_points"
    proto, res = _run(tiny_segmenter, scene, prompts=["box"])
    assert {(r.method, r.metric) for r in res.rows} == {("breps", m) for m in BOX}


def test_void_pixels_and_void_objects(tiny_segmenter, scene):
    void = np.zeros(scene.masks.shape[1:], bool)
    void[:, :30] = True
    masks = scene.masks.copy()
    masks[0] = False
    masks[0, 5:20, 5:20] = True  # an object entirely in the void: skipped
    s = dataclasses.replace(scene, masks=masks, meta={"void": void})
    _, res = _run(tiny_segmenter, s, prompts=["box"])
    objects = {r.object for r in res.rows}
    assert 0 not in objects and objects == {i for i in range(1, len(masks)) if (masks[i] & ~void).any()}
    for e in res.examples:
        assert not (decode_mask(e.mask) & void).any()


def test_config_checks_flags_and_quick():
    for bad in ({"steps": -1}, {"lam": -0.1}, {"prompts": []}, {"prompts": ["boxes"]}, {"point_sets": ["ideal", "ideal"]},
                {"point_sigma": 0.0}, {"lr_mult": 0.0}):
        with pytest.raises(ValueError):
            BrepsConfig(**bad)
    names = [f.name for f in config_fields(BrepsConfig)]
    assert names == ["steps", "lam", "prompts", "point_sets", "point_sigma", "lr_mult", "batch", "attacker"]
    cfg = BrepsConfig()
    assert (cfg.steps, cfg.lam, cfg.prompts, cfg.point_sets, cfg.batch) == (50, 0.1, ["box", "points"], ["ideal", "coarse"], True)
    quick = BrepsConfig(**BrepsProtocol.quick)
    assert quick.steps < cfg.steps
    assert METRICS["box"] == BOX and METRICS["points"] == POINTS


def test_figures(tiny_segmenter, scene, tmp_path):
    _, res = _run(tiny_segmenter, scene)
    units = [Unit("m", dom, 0, "x", "breps") for dom in ("d1", "d2")]
    examples = [(u, e) for u in units for e in res.examples]
    rows = pd.DataFrame([dict(model="m", domain=u.domain, protocol="breps", method=r.method, image="x", object=r.object,
                              condition=r.condition, metric=r.metric, value=r.value) for u in units for r in res.rows])
    triplets = box_triplets(examples)
    assert len(triplets) == 2 * len(scene.masks)
    deltas = [t[2]["iou_max_bbox"].value - t[2]["iou_min_bbox"].value for t in triplets]
    assert deltas == sorted(deltas, reverse=True)
    made = breps_figures(tmp_path, rows, examples, lambda d, i: scene)
    assert set(made) == {"box_attack", "delta"}
    for p in made.values():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert delta_figure(rows[rows["protocol"] == "other"], tmp_path / "none.png") is None
    assert box_attack_figure([], lambda d, i: scene, tmp_path / "none.png") is None
