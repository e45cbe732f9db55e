"""The refine protocol's defender settings: refine options for every defender
(``defender_options``) and each defender without its wrong-label filter
(``without_filter``), scored as the same defender loaded with those options."""

from __future__ import annotations

import numpy as np
import pytest

import ppd
from ppd.agents.defender import PromptDefender
from ppd.bench.protocols.base import BenchModel
from ppd.bench.protocols.refine import RefineBenchConfig, RefineProtocol, defender_config
from ppd.bench.schema import Unit
from ppd.data.scenes import ProceduralScenes
from ppd.metrics import iou
from ppd.prompts import coarse_prompts

pytestmark = pytest.mark.usefixtures("one_torch_thread")

UNIT = Unit("bundled", "train", 0, "6", "refine")


def test_options_are_refine_config_fields_with_yaml_values():
    cfg = defender_config(["select=last", "min_score_gain=off", "keep_consistent=false", "polish=off",
                           "consensus_quorum=0.5", "max_steps=4"])
    assert (cfg.select, cfg.min_score_gain, cfg.keep_consistent, cfg.polish, cfg.consensus_quorum, cfg.max_steps) == (
        "last", None, False, False, 0.5, 4)
    assert defender_config(["min_score_gain=null"]).min_score_gain is None
    assert defender_config([]) == defender_config(["select=score"])  # the defaults
    with pytest.raises(ValueError, match="'select' is not KEY=VALUE"):
        defender_config(["select"])
    with pytest.raises(ValueError, match="unknown refine option 'nope'"):
        defender_config(["nope=1"])
    with pytest.raises(ValueError, match="select must be one of"):
        defender_config(["select=first"])
    with pytest.raises(ValueError, match="defender_options: unknown refine option"):  # at config time
        RefineBenchConfig(defender_options=["nope=1"])


@pytest.fixture(scope="module")
def model():
    seg = ppd.load_segmenter(device="cpu")
    return BenchModel("bundled", seg, seg, {})


def test_without_filter_and_options_score_the_defender_loaded_that_way(model):
    scene = ProceduralScenes("train", 1, seed=6)[0]
    proto = RefineProtocol(RefineBenchConfig(defender=["bundled"], baselines=["no_refine"], without_filter=True,
                                             defender_options=["select=last"]))
    resources = proto.prepare(model)
    defenders = resources["defenders"]
    assert list(defenders) == ["ppd:bundled", "ppd:bundled[no filter]"]
    assert defenders["ppd:bundled"].label_filter is not None and defenders["ppd:bundled[no filter]"].label_filter is None
    assert all(d.select == "last" for d in defenders.values())
    res = proto.run(model, resources, scene, UNIT, UNIT.seed(0))
    got = {(r.method, r.object, r.metric): r.value for r in res.rows}
    seg = model.segmenter
    direct = {"ppd:bundled": PromptDefender.load(segmenter=seg, device="cpu", select="last"),
              "ppd:bundled[no filter]": PromptDefender.load(segmenter=seg, device="cpu", select="last", use_filter=False)}
    rng = UNIT.seed(0)
    filter_matters, rule_matters = [], []
    for obj, gt in enumerate(scene.masks):
        coarse = coarse_prompts(gt, rng).prompts  # the unit's stream: one set per object
        for method, d in direct.items():
            mask = d.refine(scene.image, coarse.point_coords, coarse.point_labels).mask
            assert got[method, obj, "iou"] == pytest.approx(float(iou(mask, gt)), abs=1e-12), (method, obj)
        filter_matters.append(got["ppd:bundled", obj, "kept"] != got["ppd:bundled[no filter]", obj, "kept"])
        default = PromptDefender.load(segmenter=seg, device="cpu").refine(scene.image, coarse.point_coords,
                                                                         coarse.point_labels).mask
        rule_matters.append(abs(float(iou(default, gt)) - got["ppd:bundled", obj, "iou"]) > 0.01)
    assert any(filter_matters) and any(rule_matters)  # on this scene the filter and the output rule each count
    # a run without a filter gets no [no filter] method: use_filter=false leaves nothing to drop
    plain = RefineProtocol(RefineBenchConfig(defender=["bundled"], without_filter=True,
                                             defender_options=["use_filter=false"]))
    assert list(plain.prepare(model)["defenders"]) == ["ppd:bundled"]
    assert np.isfinite(list(got.values())).all()
