"""The attacks protocol: rows and names per object and condition, clean rows as the
segmenter's own masks, attacks seeded per name from the unit's stream, void, and ReM."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import ppd
from ppd.bench.protocols import config_fields
from ppd.bench.protocols.attacks import ATTACK_NAMES, AttacksConfig, AttacksProtocol, rem
from ppd.bench.protocols.base import BenchModel
from ppd.bench.schema import COLUMNS, Unit, decode_mask
from ppd.data.scenes import ProceduralScenes
from ppd.metrics import iou
from ppd.prompts import farthest_click, ideal_prompts
from ppd.robustness.attacks import ATTACKS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

UNIT = Unit("bundled", "train", 0, "2", "attacks")
CONFIG = AttacksConfig(attacks=["pgd_linf", "cospgd_l2"], iterations=3)


@pytest.fixture(scope="module")
def model():
    seg = ppd.load_segmenter(device="cpu")
    return BenchModel("bundled", seg, seg, {})


@pytest.fixture(scope="module")
def scene():
    s = ProceduralScenes("train", 1, seed=2)[0]
    assert s.num_objects == 2
    return s


@pytest.fixture(scope="module")
def result(model, scene):
    return AttacksProtocol(CONFIG).run(model, None, scene, UNIT, UNIT.seed(0))


def values(result) -> dict[tuple[str, int, str, str], float]:
    return {(r.method, r.object, r.condition, r.metric): r.value for r in result.rows}


def test_names_flags_and_defaults():
    assert ATTACK_NAMES == ATTACKS  # written out in the protocol module so that it imports no torch
    assert AttacksProtocol.name == "attacks" and AttacksProtocol.table_metrics == ("iou", "iou_ideal")
    assert [f.name for f in config_fields(AttacksConfig)] == ["attacks", "iterations", "eps_linf", "alpha_linf",
                                                               "eps_l2", "alpha_l2"]
    cfg = AttacksConfig()
    assert cfg.attacks == ["pgd_linf", "pgd_l2", "segpgd_linf", "segpgd_l2", "cospgd_linf", "cospgd_l2"]
    assert (cfg.iterations, cfg.eps_linf, cfg.eps_l2) == (20, 8.0, 64.0)
    assert cfg.alpha_linf == pytest.approx(0.01 * 255) and cfg.alpha_l2 == pytest.approx(0.1 * 255)
    quick = AttacksConfig(**AttacksProtocol.quick)
    assert len(quick.attacks) == 2 and quick.iterations < cfg.iterations
    with pytest.raises(ValueError, match="unknown attack 'fgsm'"):
        AttacksConfig(attacks=["fgsm"])
    with pytest.raises(ValueError, match="distinct"):
        AttacksConfig(attacks=["pgd_l2", "pgd_l2"])
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        AttacksConfig(iterations=0)
    with pytest.raises(ValueError, match="eps_l2 must be"):
        AttacksConfig(eps_l2=-1.0)


def test_rows_for_every_object_condition_and_metric(result, scene):
    got = values(result)
    conditions = ("clean", "pgd_linf", "cospgd_l2")
    assert set(got) == {("fixed_prompts", o, c, m) for o in range(2) for c in conditions for m in ("iou", "iou_ideal")}
    assert all(0.0 <= v <= 1.0 for v in got.values())
    for o in range(2):
        for m in ("iou", "iou_ideal"):
            assert got["fixed_prompts", o, "pgd_linf", m] < got["fixed_prompts", o, "clean", m]
            assert got["fixed_prompts", o, "cospgd_l2", m] <= got["fixed_prompts", o, "clean", m] + 1e-9


def test_clean_rows_are_the_segmenters_own_masks(result, model, scene):
    seg, got = model.segmenter, values(result)
    for o, gt in enumerate(scene.masks):
        first, ideal = farthest_click(gt), ideal_prompts(gt, n_pos=6, n_neg=6)
        assert (ideal.point_labels == 1).sum() <= 6 and (ideal.point_labels == 0).sum() <= 6
        m1 = seg.predict(scene.image, first.point_coords, first.point_labels, multimask=True).masks[0]
        m2 = seg.predict(scene.image, ideal.point_coords, ideal.point_labels).masks[0]
        assert got["fixed_prompts", o, "clean", "iou"] == pytest.approx(float(iou(m1, gt)))
        assert got["fixed_prompts", o, "clean", "iou_ideal"] == pytest.approx(float(iou(m2, gt)))


def test_examples_are_the_first_attacks_first_click_masks(result, scene):
    assert [(e.method, e.object, e.condition, e.metric) for e in result.examples] == [
        ("fixed_prompts", 0, "pgd_linf", "iou"), ("fixed_prompts", 1, "pgd_linf", "iou")]
    got = values(result)
    for e in result.examples:
        assert e.value == got["fixed_prompts", e.object, "pgd_linf", "iou"]
        assert e.value == pytest.approx(float(iou(decode_mask(e.mask), scene.masks[e.object])))
        assert e.points == [[*farthest_click(scene.masks[e.object]).point_coords[0].tolist(), 1]]


def test_each_attack_is_seeded_by_its_name_from_the_unit_stream(result, model, scene):
    strip = lambda res: {k: v for k, v in values(res).items() if k[2] == "cospgd_l2"}  # noqa: E731
    alone = AttacksProtocol(AttacksConfig(attacks=["cospgd_l2"], iterations=3)).run(model, None, scene, UNIT, UNIT.seed(0))
    assert strip(alone) == strip(result)
    other = AttacksProtocol(AttacksConfig(attacks=["cospgd_l2"], iterations=3)).run(model, None, scene, UNIT, UNIT.seed(1))
    assert strip(other) != strip(result)  # another random start


def test_void_pixels_count_neither_way(model, scene):
    void = np.zeros(scene.masks.shape[1:], bool)
    ys, _ = np.nonzero(scene.masks[0])
    void[: int(np.median(ys))] = True
    voided = type(scene)(scene.image, scene.masks[:1], scene.domain, scene.seed, {"void": void})
    res = AttacksProtocol(AttacksConfig(attacks=["pgd_linf"], iterations=1)).run(model, None, voided, UNIT, UNIT.seed(0))
    (example,) = res.examples
    mask = decode_mask(example.mask)
    assert not (mask & void).any()
    assert example.value == pytest.approx(float(iou(mask, scene.masks[0] & ~void)))
    # the click is the farthest pixel of the object's part that counts
    assert example.points[0][:2] == farthest_click(scene.masks[0] & ~void).point_coords[0].tolist()


def frame(rows) -> pd.DataFrame:
    return pd.DataFrame([dict(zip(COLUMNS, r)) for r in rows], columns=list(COLUMNS))


def test_rem_is_the_worst_attack_and_the_mean_beside_it():
    rows = []
    # model a, domain d1: objects 0 and 1; pgd_linf mean 0.2, cospgd_l2 mean 0.6, clean 0.9
    for obj, (clean, pgd, cos) in enumerate([(0.8, 0.1, 0.5), (1.0, 0.3, 0.7)]):
        rows += [("a", "d1", "attacks", "fixed_prompts", "i1", obj, "clean", "iou", clean),
                 ("a", "d1", "attacks", "fixed_prompts", "i1", obj, "pgd_linf", "iou", pgd),
                 ("a", "d1", "attacks", "fixed_prompts", "i1", obj, "cospgd_l2", "iou", cos),
                 ("a", "d1", "attacks", "fixed_prompts", "i1", obj, "pgd_linf", "iou_ideal", 0.9)]
    # model a, domain d2: one object, cospgd_l2 is the worst there
    rows += [("a", "d2", "attacks", "fixed_prompts", "j", 0, "pgd_linf", "iou", 0.5),
             ("a", "d2", "attacks", "fixed_prompts", "j", 0, "cospgd_l2", "iou", 0.4)]
    # another protocol's rows and a model without attacked rows are ignored
    rows += [("a", "d1", "corruptions", "fixed_prompts", "i1", 0, "fog/3", "iou", 0.0),
             ("b", "d1", "attacks", "fixed_prompts", "i1", 0, "clean", "iou", 0.7)]
    got = rem(frame(rows))
    assert set(got) == {"a"} and set(got["a"]) == {"d1", "d2", "all"}
    d1 = got["a"]["d1"]
    assert (d1["worst"], d1["rem"], d1["mean"], d1["clean"]) == ("pgd_linf", pytest.approx(0.2), pytest.approx(0.4),
                                                                  pytest.approx(0.9))
    assert d1["attacks"] == {"pgd_linf": pytest.approx(0.2), "cospgd_l2": pytest.approx(0.6)}
    d2 = got["a"]["d2"]
    assert (d2["worst"], d2["rem"], d2["mean"]) == ("cospgd_l2", pytest.approx(0.4), pytest.approx(0.45))
    assert math.isnan(d2["clean"])
    # all domains pooled: pgd_linf (0.1 + 0.3 + 0.5) / 3 = 0.3, cospgd_l2 (0.5 + 0.7 + 0.4) / 3 = 0.5333
    every = got["a"]["all"]
    assert (every["worst"], every["rem"], every["mean"]) == ("pgd_linf", pytest.approx(0.3), pytest.approx(0.41666667))
    ideal = rem(frame(rows), metric="iou_ideal")["a"]["d1"]
    assert (ideal["worst"], ideal["rem"], ideal["mean"]) == ("pgd_linf", pytest.approx(0.9), pytest.approx(0.9))
