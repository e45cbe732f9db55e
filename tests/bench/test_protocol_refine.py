"""The refine protocol: coarse prompt sets refined by the baselines and a defender, scored
as the refiners' own masks; the unit's stream alone decides them; missing runs are named."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest

import ppd
from ppd.agents.baselines import BASELINES
from ppd.agents.defender import BUNDLED_DEFENDER, PromptDefender
from ppd.bench.protocols import config_fields, protocol_class
from ppd.bench.protocols.base import BenchModel
from ppd.bench.protocols.refine import BASELINE_NAMES, RefineBenchConfig, RefineProtocol
from ppd.bench.schema import Unit, decode_mask
from ppd.data.scenes import ProceduralScenes
from ppd.metrics import dice, iou
from ppd.prompts import coarse_prompts

pytestmark = pytest.mark.usefixtures("one_torch_thread")

UNIT = Unit("bundled", "train", 0, "2", "refine")
METHODS = {*BASELINE_NAMES, "ppd:bundled"}


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
def protocol():
    return RefineProtocol(RefineBenchConfig(defender=["bundled"], coarse_sets=2))


@pytest.fixture(scope="module")
def resources(protocol, model):
    return protocol.prepare(model)


@pytest.fixture(scope="module")
def result(protocol, model, resources, scene):
    return protocol.run(model, resources, scene, UNIT, UNIT.seed(0))


def values(result) -> dict[tuple[str, int, str], float]:
    return {(r.method, r.object, r.metric): r.value for r in result.rows}


def test_registry_and_flags():
    assert protocol_class("refine") is RefineProtocol
    assert [f.name for f in config_fields(RefineBenchConfig)] == ["defender", "coarse_sets", "baselines", "generators", "corrupted",
                                                                  "attacked", "iterations", "eps_linf", "alpha_linf",
                                                                  "eps_l2", "alpha_l2", "attacker", "without_filter",
                                                                  "defender_options"]
    assert RefineBenchConfig().defender == [] and RefineBenchConfig().coarse_sets == 1
    with pytest.raises(ValueError, match="coarse_sets must be >= 1"):
        RefineBenchConfig(coarse_sets=0)


def test_rows_for_every_object_refiner_and_metric(result, scene):
    got = values(result)
    metrics = ("iou", "dice", "refine_ms", "kept")
    assert {(m, o, k) for m in METHODS for o in range(scene.num_objects) for k in metrics} == set(got)
    assert all(r.condition == "clean" for r in result.rows)
    for (m, o, k), v in got.items():
        assert (v > 0) if k == "refine_ms" else (0.0 <= v <= 1.0), (m, o, k, v)
    assert all(got[m, o, "kept"] == 1.0 for m in ("no_refine",) for o in range(2))


def test_values_are_the_refiners_own_masks_averaged_over_the_coarse_sets(result, model, scene, resources):
    """Replaying the unit's stream: every row is the mean over the two coarse sets of
    iou / dice / kept of ``refiner.refine(...)`` called directly."""
    seg = model.segmenter
    defender = resources["defenders"]["ppd:bundled"]
    assert isinstance(defender, PromptDefender) and defender.segmenter is seg
    rng = UNIT.seed(0)
    want: dict[tuple[str, int, str], list[float]] = {}
    for obj, gt in enumerate(scene.masks):
        for _ in range(2):
            coarse = coarse_prompts(gt, rng).prompts
            drop_seed = int(rng.integers(2**63))
            refiners = {n: BASELINES[n](seg, seed=drop_seed) if n == "random_drop" else BASELINES[n](seg)
                        for n in BASELINE_NAMES}
            refiners["ppd:bundled"] = defender
            for name, refiner in refiners.items():
                res = refiner.refine(scene.image, coarse.point_coords, coarse.point_labels)
                want.setdefault((name, obj, "iou"), []).append(float(iou(res.mask, gt)))
                want.setdefault((name, obj, "dice"), []).append(float(dice(res.mask, gt)))
                want.setdefault((name, obj, "kept"), []).append(float(res.kept.mean()))
    got = values(result)
    for key, v in want.items():
        assert got[key] == pytest.approx(np.mean(v), abs=1e-12), key
    assert len({got[m, 0, "iou"] for m in METHODS}) > 1  # the refiners do differ here


def test_examples_are_the_defenders_refinements(result, scene):
    assert [(e.method, e.object, e.metric) for e in result.examples] == [("ppd:bundled", 0, "iou"), ("ppd:bundled", 1, "iou")]
    for e in result.examples:
        mask = decode_mask(e.mask)
        assert mask.shape == scene.masks.shape[1:]
        assert e.value == pytest.approx(float(iou(mask, scene.masks[e.object])))
        assert 1 <= len(e.points) <= 8 and all(p[2] in (0, 1) for p in e.points)
        # the input set is shown beside the output: every kept point is one of the input's
        assert len(e.input_points) == 8 and {tuple(p[:2]) for p in e.points} <= {tuple(p[:2]) for p in e.input_points}


def test_same_stream_same_rows_other_stream_other_prompts(protocol, model, resources, scene, result):
    again = protocol.run(model, resources, scene, UNIT, UNIT.seed(0))
    strip = lambda res: [(r.method, r.object, r.metric, r.value) for r in res.rows if r.metric != "refine_ms"]  # noqa: E731
    assert strip(again) == strip(result)
    assert [e.points for e in again.examples] == [e.points for e in result.examples]
    other = protocol.run(model, resources, scene, UNIT, UNIT.seed(1))
    assert [e.points for e in other.examples] != [e.points for e in result.examples]


def test_void_pixels_count_neither_way(model, scene):
    """A void region over part of the object: the masks and the metrics leave it out."""
    void = np.zeros(scene.masks.shape[1:], bool)
    ys, xs = np.nonzero(scene.masks[0])
    void[: int(np.median(ys))] = True
    voided = type(scene)(scene.image, scene.masks[:1], scene.domain, scene.seed, {"void": void})
    res = RefineProtocol().run(model, None, voided, UNIT, UNIT.seed(0))
    assert {r.method for r in res.rows} == set(BASELINE_NAMES)
    (example,) = res.examples
    assert example.method == "no_refine" and not (decode_mask(example.mask) & void).any()
    assert example.value == pytest.approx(float(iou(decode_mask(example.mask), scene.masks[0] & ~void)))


def test_validate_names_a_missing_run(tmp_path):
    RefineProtocol(RefineBenchConfig(defender=["bundled"])).validate({})
    missing = tmp_path / "no_such_run"
    with pytest.raises(FileNotFoundError, match=f"--defender {missing}: no such run folder"):
        RefineProtocol(RefineBenchConfig(defender=[str(missing)])).validate({})
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no defender.zip"):
        RefineProtocol(RefineBenchConfig(defender=[str(empty)])).validate({})
    for name in ("a", "b"):
        (tmp_path / name / "run").mkdir(parents=True)
        shutil.copy(BUNDLED_DEFENDER / "defender.zip", tmp_path / name / "run")
    with pytest.raises(ValueError, match="both give the method name 'ppd:run'"):
        RefineProtocol(RefineBenchConfig(defender=[str(tmp_path / "a" / "run"), str(tmp_path / "b" / "run")])).validate({})


def test_a_defender_of_another_segmenter_is_skipped_with_a_warning(tmp_path, model, caplog):
    run = tmp_path / "other"
    run.mkdir()
    shutil.copy(BUNDLED_DEFENDER / "defender.zip", run)
    config = (BUNDLED_DEFENDER / "config.yaml").read_text()
    (run / "config.yaml").write_text(config.replace("segmenter: sam2-tiny-synthetic", "segmenter: sam2.1_hiera_l"))
    protocol = RefineProtocol(RefineBenchConfig(defender=[str(run)]))
    protocol.validate({})
    with caplog.at_level(logging.WARNING, logger="ppd.bench.protocols.refine"):
        assert protocol.prepare(model) == {"defenders": {}}
    assert "skipping defender" in caplog.text and "sam2.1_hiera_l" in caplog.text


def test_generators_are_conditions(model, scene):
    from ppd.bench.generators import generator_prompts

    from ppd.bench.protocols.refine import generator_stream

    proto = RefineProtocol(RefineBenchConfig(generators=["clean", "flips"]))
    res = proto.run(model, proto.prepare(model), scene, UNIT, UNIT.seed(0))
    assert {r.condition for r in res.rows} == {"clean", "flips"}
    # each generator draws from its own stream of the unit: no_refine scores its sets as drawn
    for generator in ("clean", "flips"):
        first = generator_prompts(generator, scene.masks[0], generator_stream(UNIT.seed(0), generator))
        mask = model.segmenter.predict(scene.image, first.point_coords, first.point_labels).masks[0]
        got = {(r.method, r.object, r.condition, r.metric): r.value for r in res.rows}
        assert got[("no_refine", 0, generator, "iou")] == pytest.approx(float(iou(mask, scene.masks[0])))
    # so a generator's sets do not depend on which other generators the run lists
    other = RefineProtocol(RefineBenchConfig(generators=["default", "few", "flips"]))

    def flips(rows):
        return {(r.object, r.metric): r.value for r in rows
                if r.condition == "flips" and r.method == "no_refine" and r.metric != "refine_ms"}

    assert flips(other.run(model, other.prepare(model), scene, UNIT, UNIT.seed(0)).rows) == flips(res.rows)
    with pytest.raises(ValueError, match="unknown prompt generator 'nope'"):
        RefineProtocol(RefineBenchConfig(generators=["nope"])).validate({})


def test_coarse_sets_do_not_depend_on_the_baselines_listed(model, scene):
    def inputs(baselines):
        proto = RefineProtocol(RefineBenchConfig(baselines=baselines, coarse_sets=2))
        rows = proto.run(model, proto.prepare(model), scene, UNIT, UNIT.seed(0)).rows
        return {(r.object, r.metric): r.value for r in rows if r.method == "no_refine" and r.metric != "refine_ms"}

    # random_drop's seeds come from the stream the coarse sets are drawn from: listing it
    # or not must not change the sets after the first
    alone, with_drop = inputs(["no_refine"]), inputs(["no_refine", "random_drop"])
    assert {metric for _, metric in alone} == {"iou", "dice", "kept"} and alone == with_drop


def test_corrupted_images_are_conditions_with_the_same_prompts(model, scene):
    proto = RefineProtocol(RefineBenchConfig(baselines=["no_refine"], corrupted=["gaussian_noise/3"]))
    res = proto.run(model, proto.prepare(model), scene, UNIT, UNIT.seed(0))
    got = {(r.method, r.object, r.condition, r.metric): r.value for r in res.rows}
    assert {r.condition for r in res.rows} == {"clean", "gaussian_noise/3"}
    plain = RefineProtocol(RefineBenchConfig(baselines=["no_refine"]))
    clean = {(r.method, r.object, r.condition, r.metric): r.value
             for r in plain.run(model, plain.prepare(model), scene, UNIT, UNIT.seed(0)).rows}
    for key, value in clean.items():  # the clean rows are those of a run without corruptions
        if key[3] != "refine_ms":
            assert got[key] == value
    # the corrupted condition scores the same coarse set on the corrupted image
    assert any(got[("no_refine", o, "gaussian_noise/3", "iou")] != got[("no_refine", o, "clean", "iou")]
               for o in range(scene.num_objects))
    with pytest.raises(ValueError, match="not NAME/SEVERITY"):
        RefineBenchConfig(corrupted=["gaussian_noise"])
