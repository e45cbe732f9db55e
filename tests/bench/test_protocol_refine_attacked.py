"""The refine protocol under adversarial image attacks: the same coarse sets refined on an
image attacked against the objects' ideal sets, each attack a condition."""

from __future__ import annotations

import numpy as np
import pytest

import ppd
from ppd.agents.baselines import NoRefine
from ppd.bench.generators import generator_prompts
from ppd.bench.protocols.attacks import ATTACK_NAMES
from ppd.bench.protocols.base import BenchModel, measured_objects
from ppd.bench.protocols.refine import RefineBenchConfig, RefineProtocol
from ppd.bench.schema import Unit
from ppd.data.scenes import ProceduralScenes
from ppd.metrics import iou
from ppd.prompts import ideal_prompts, stack_prompts
from ppd.robustness.attacks import PromptGroup, named_attack, run_attack

pytestmark = pytest.mark.usefixtures("one_torch_thread")

UNIT = Unit("bundled", "train", 0, "2", "refine")
FAST = dict(baselines=["no_refine", "greedy_score"], iterations=1)


@pytest.fixture(scope="module")
def model():
    seg = ppd.load_segmenter(device="cpu")
    return BenchModel("bundled", seg, seg, {})


@pytest.fixture(scope="module")
def scene():
    s = ProceduralScenes("train", 1, seed=2)[0]
    assert s.num_objects == 2
    return s


def _rows(model, scene, **cfg):
    proto = RefineProtocol(RefineBenchConfig(**{**FAST, **cfg}))
    res = proto.run(model, proto.prepare(model), scene, UNIT, UNIT.seed(0))
    return {(r.method, r.object, r.condition, r.metric): r.value for r in res.rows}


@pytest.fixture(scope="module")
def attacked(model, scene):
    return _rows(model, scene, attacked=["pgd_linf", "segpgd_l2"], corrupted=["gaussian_noise/3"])


def test_every_attack_is_a_condition_named_as_in_the_attacks_protocol(attacked, scene):
    conditions = {"clean", "gaussian_noise/3", "pgd_linf", "segpgd_l2"}
    assert {k[2] for k in attacked} == conditions
    per = {c: {(m, o, me) for m, o, cc, me in attacked if cc == c} for c in conditions}
    assert per["pgd_linf"] == per["clean"] == per["segpgd_l2"]
    assert per["clean"] == {(m, o, me) for m in FAST["baselines"] for o in range(scene.num_objects)
                            for me in ("iou", "dice", "refine_ms", "kept")}
    # the attack degrades the image: some object's coarse-set IoU moves
    assert any(attacked[("no_refine", o, "pgd_linf", "iou")] != attacked[("no_refine", o, "clean", "iou")]
               for o in range(scene.num_objects))


def test_clean_and_corrupted_rows_are_those_of_a_run_without_attacks(attacked, model, scene):
    plain = _rows(model, scene, corrupted=["gaussian_noise/3"])
    assert set(plain) == {k for k in attacked if k[2] in ("clean", "gaussian_noise/3")}
    for key, value in plain.items():
        if key[3] != "refine_ms":
            assert attacked[key] == value, key


def test_the_attacked_image_is_the_attacks_protocols_attack_on_the_ideal_sets(attacked, model, scene):
    """Rebuilt by hand: seeds from the unit's second child stream, one per attack name in
    order; the ideal sets of equal length as one group; the coarse set drawn from the
    unit's stream scored by no_refine on the attacked image gives the row."""
    seg = model.segmenter
    rng = UNIT.seed(0)
    stream = rng.spawn(2)[1]
    seeds = {name: int(stream.integers(2**63)) for name in ATTACK_NAMES}
    care, gts, objs = measured_objects(scene)
    sets = [ideal_prompts(gts[i], n_pos=6, n_neg=6) for i in objs]
    groups = [PromptGroup(*stack_prompts([sets[r] for r in range(len(sets)) if len(sets[r]) == k]),
                          gts[[objs[r] for r in range(len(sets)) if len(sets[r]) == k]], False)
              for k in sorted({len(p) for p in sets})]
    adv = run_attack(seg, scene.image, groups, named_attack("pgd_linf", iterations=1), seeds["pgd_linf"], care).as_float()
    got = RefineProtocol(RefineBenchConfig(attacked=["pgd_linf"], iterations=1)).attacked_images(seg, scene, UNIT.seed(0).spawn(2)[1])
    assert [name for name, _ in got] == ["pgd_linf"]
    np.testing.assert_array_equal(got[0][1], adv)
    assert np.abs(adv * 255.0 - scene.image.astype(np.float32)).max() <= 8.0 + 1e-3  # inside the L-inf ball
    for obj in objs:  # the coarse sets come first from the unit's stream, in object order
        coarse = generator_prompts("default", gts[obj], rng)
        rng.integers(2**63)  # each set's random_drop seed, drawn whether that baseline runs or not
        mask = np.asarray(NoRefine(seg).refine(adv, coarse.point_coords, coarse.point_labels).mask, bool) & care
        assert attacked[("no_refine", obj, "pgd_linf", "iou")] == pytest.approx(float(iou(mask, gts[obj])), abs=1e-9)


def test_eps_zero_gives_the_clean_numbers(model, scene):
    got = _rows(model, scene, attacked=["pgd_linf", "cospgd_l2"], eps_linf=0.0, eps_l2=0.0, iterations=2)
    for (method, obj, cond, metric), value in got.items():
        if cond != "clean" and metric != "refine_ms":
            assert value == got[(method, obj, "clean", metric)], (method, obj, cond, metric)


def test_several_generators_name_generator_at_attack(model, scene):
    got = _rows(model, scene, baselines=["no_refine"], generators=["default", "clean"], attacked=["cospgd_linf"])
    assert {k[2] for k in got} == {"default", "clean", "default@cospgd_linf", "clean@cospgd_linf"}


def test_config_checks():
    cfg = RefineBenchConfig()
    assert (cfg.attacked, cfg.iterations, cfg.eps_linf, cfg.alpha_linf, cfg.eps_l2, cfg.alpha_l2) == ([], 20, 8.0, 2.55, 64.0, 25.5)
    for bad in ({"attacked": ["pgd"]}, {"attacked": ["pgd_linf", "pgd_linf"]}, {"iterations": 0}, {"eps_linf": -1.0},
                {"alpha_l2": 0.0}, {"eps_l2": float("inf")}):
        with pytest.raises(ValueError):
            RefineBenchConfig(**bad)
    with pytest.raises(ValueError, match="pgd_linf, pgd_l2"):
        RefineBenchConfig(attacked=["fgsm"])
