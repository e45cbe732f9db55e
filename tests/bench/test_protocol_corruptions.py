"""The corruptions protocol: rows and conditions, the clean rows against direct
predictions, determinism and independence of the conditions, RUAC's AUROC, GAM."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from ppd.bench.protocols.base import BenchModel, config_fields
from ppd.bench.protocols.corruptions import (
    CORRUPTION_NAMES, METHOD, CorruptionsConfig, CorruptionsProtocol, condition_name, gam, parse_condition,
)
from ppd.bench.schema import Unit, decode_mask
from ppd.data.scenes import ProceduralScenes
from ppd.metrics import iou
from ppd.prompts import farthest_click, ideal_prompts
from ppd.robustness.corruptions import CORRUPTIONS, corrupt

pytestmark = pytest.mark.usefixtures("one_torch_thread")

UNIT = Unit("tiny", "train", 0, "2", "corruptions")
CONFIG = CorruptionsConfig(corruptions=["gaussian_noise", "fog"], severities=[1, 3])


@pytest.fixture(scope="module")
def scene():
    s = ProceduralScenes("train", 1, seed=6, size=128)[0]
    assert s.num_objects >= 2
    return s


@pytest.fixture(scope="module")
def model(tiny_segmenter):
    return BenchModel("tiny", tiny_segmenter, tiny_segmenter, {})


@pytest.fixture(scope="module")
def result(model, scene):
    return CorruptionsProtocol(CONFIG).run(model, None, scene, UNIT, UNIT.seed(0))


def table(res) -> dict[tuple[int, str, str], float]:
    return {(r.object, r.condition, r.metric): r.value for r in res.rows}


def test_flags_names_and_validation():
    assert CORRUPTION_NAMES == CORRUPTIONS
    fields = {f.name: f.default_factory() for f in config_fields(CorruptionsConfig)}
    assert fields == {"corruptions": list(CORRUPTIONS), "severities": [1, 2, 3, 4, 5]}
    assert CorruptionsProtocol.table_metrics == ("iou", "iou_ideal")
    CorruptionsConfig(**CorruptionsProtocol.quick)  # the quick options are a valid config
    assert CorruptionsProtocol.quick["severities"] == [3]
    for bad in ({"severities": [0]}, {"severities": [6]}, {"severities": []}, {"corruptions": ["rain"]},
                {"corruptions": ["fog", "fog"]}):
        with pytest.raises(ValueError):
            CorruptionsConfig(**bad)
    assert condition_name("jpeg_compression", 5) == "jpeg_compression/5"
    assert parse_condition("gaussian_noise/3") == ("gaussian_noise", 3)
    assert parse_condition("clean") is None and parse_condition("rain/3") is None


def test_rows_conditions_and_metrics(result, scene):
    rows = table(result)
    objs = range(scene.num_objects)
    conditions = {"clean", "gaussian_noise/1", "gaussian_noise/3", "fog/1", "fog/3"}
    assert set(rows) == {(o, c, m) for o in objs for c in conditions for m in ("iou", "iou_ideal")}
    assert len(result.rows) == len(rows) and {r.method for r in result.rows} == {METHOD}
    assert all(0.0 <= v <= 1.0 for v in rows.values())
    # examples: the worst corrupted first-click mask of each of the first objects
    assert 1 <= len(result.examples) <= 3
    for ex in result.examples:
        assert ex.condition in conditions - {"clean"} and ex.metric == "iou"
        assert ex.value == pytest.approx(rows[(ex.object, ex.condition, "iou")])
        assert ex.value == min(rows[(ex.object, c, "iou")] for c in conditions - {"clean"})
        assert decode_mask(ex.mask).shape == scene.image.shape[:2]


def test_rows_are_the_predictions_of_the_fixed_prompts(result, model, scene, tiny_segmenter):
    rows = table(result)
    seed = int(UNIT.seed(0).integers(2**63))  # the protocol's first draw
    fog3 = corrupt(scene.image, "fog", 3, np.random.default_rng([seed, CORRUPTIONS.index("fog"), 3]))
    for condition, image in (("clean", scene.image), ("fog/3", fog3)):
        for obj, gt in enumerate(scene.masks):
            click = farthest_click(gt)
            pred = tiny_segmenter.predict(image, click.point_coords, click.point_labels, multimask=True)
            assert rows[(obj, condition, "iou")] == pytest.approx(float(iou(pred.masks[0], gt)), abs=2e-3)
            ideal = ideal_prompts(gt, n_pos=6, n_neg=6)
            pred = tiny_segmenter.predict(image, ideal.point_coords, ideal.point_labels)
            assert rows[(obj, condition, "iou_ideal")] == pytest.approx(float(iou(pred.masks[0], gt)), abs=2e-3)


def test_deterministic_and_conditions_independent(result, model, scene):
    again = CorruptionsProtocol(CONFIG).run(model, None, scene, UNIT, UNIT.seed(0))
    assert table(again) == table(result)
    # a condition's image does not depend on which other conditions run
    alone = CorruptionsProtocol(CorruptionsConfig(corruptions=["fog"], severities=[3])).run(
        model, None, scene, UNIT, UNIT.seed(0))
    full = table(result)
    for key, v in table(alone).items():
        assert v == pytest.approx(full[key], abs=1e-6)
    other = CorruptionsProtocol(CONFIG).run(model, None, scene, UNIT, UNIT.seed(1))
    t = table(other)
    assert all(t[k] == full[k] for k in full if k[1] == "clean")  # no draw in the clean condition


def test_ruac_head_adds_auroc(tiny_segmenter, scene):
    from ppd.ruac import BayesianMaskDecoder
    from ppd.segmenter import Segmenter

    head = BayesianMaskDecoder(tiny_segmenter.model.sam_mask_decoder)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in head.head_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    headed = BenchModel("headed", Segmenter(tiny_segmenter.model, tiny_segmenter.name, device="cpu", ruac_head=head),
                        tiny_segmenter, {})
    res = CorruptionsProtocol(CorruptionsConfig(corruptions=["contrast"], severities=[5])).run(
        headed, None, scene, UNIT, UNIT.seed(0))
    au = [r.value for r in res.rows if r.metric == "auroc"]
    assert len(au) == 2 * scene.num_objects  # clean and contrast/5
    assert all(math.isnan(v) or 0.0 <= v <= 1.0 for v in au) and not all(math.isnan(v) for v in au)


def test_gam_on_a_hand_made_table():
    rows = []
    for model in ("a", "b"):
        for obj, (clean, noise3, fog3, fog1) in enumerate([(0.9, 0.5, 0.7, 0.8), (0.8, 0.3, 0.9, 0.6)]):
            if model == "b":
                noise3, fog3 = noise3 + 0.5, fog3 - 0.5  # b: fog is the worst
            for cond, v in (("clean", clean), ("gaussian_noise/3", noise3), ("fog/3", fog3), ("fog/1", fog1)):
                rows.append(dict(model=model, domain="d", protocol="corruptions", method=METHOD, image="0", object=obj,
                                 condition=cond, metric="iou", value=v))
                rows.append(dict(model=model, domain="d", protocol="corruptions", method=METHOD, image="0", object=obj,
                                 condition=cond, metric="iou_ideal", value=0.0))
    rows.append(dict(model="a", domain="d", protocol="clicks", method="clicks", image="0", object=0,
                     condition="fog/3", metric="iou", value=0.0))  # another protocol's row is ignored
    got = gam(pd.DataFrame(rows))
    a, b = got["a"]["d"], got["b"]["d"]
    assert a["gam"] == pytest.approx(0.4) and a["gam_corruption"] == "gaussian_noise"  # mean(0.5, 0.3)
    assert a["mean"] == pytest.approx((0.4 + 0.8) / 2) and a["clean"] == pytest.approx(0.85) and a["corruptions"] == 2
    assert b["gam"] == pytest.approx(0.3) and b["gam_corruption"] == "fog"  # mean(0.2, 0.4)
    assert b["mean"] == pytest.approx((0.9 + 0.3) / 2)
    assert gam(pd.DataFrame(rows), severity=5) == {}
    assert gam(pd.DataFrame(rows), metric="iou_ideal")["a"]["d"]["gam"] == 0.0


def test_figures(tmp_path, scene):
    from ppd.bench.protocols.corruptions_figures import corruption_grid, severity_figure

    rows = [dict(model=m, domain="d", protocol="corruptions", method=METHOD, image="0", object=0, condition=c,
                 metric="iou", value=v)
            for m in ("a", "b") for c, v in (("clean", 0.9), ("fog/1", 0.8), ("fog/3", 0.5), ("contrast/3", 0.4))]
    path = severity_figure(pd.DataFrame(rows), tmp_path / "sev.png")
    assert path is not None and path.stat().st_size > 1000
    assert severity_figure(pd.DataFrame(rows), tmp_path / "none.png", metric="iou_ideal") is None
    grid = corruption_grid(scene.image, tmp_path / "grid.png", corruptions=("fog", "pixelate"))
    assert grid.stat().st_size > 1000
