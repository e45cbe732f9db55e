"""The one-shot protocol: a reference per target object group, FM points, every method's
rows; deterministic; the oracle above FM; references from folders and COCO files."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import ppd
from ppd.bench.data import DataSpec, Selection, open_domain
from ppd.bench.protocols import config_fields
from ppd.bench.protocols.base import BenchModel
from ppd.bench.protocols.oneshot import SAME_CLASS_COLOUR, OneShotConfig, OneShotProtocol, wrong_fraction
from ppd.bench.schema import Unit, decode_mask
from ppd.data.oneshot_pairs import object_classes
from ppd.data.scenes import make_scene
from ppd.metrics import iou

pytestmark = pytest.mark.usefixtures("one_torch_thread")

METHODS = {"fm", "fm+random_drop", "fm+greedy_score", "fm+consistency", "fm+mask_consensus", "fm+ppd:bundled",
           "fm_oracle", "persam", "gbmseg"}


def values(result):
    return {(r.method, r.object, r.metric): r.value for r in result.rows}


@pytest.fixture(scope="module")
def model():
    seg = ppd.load_segmenter(device="cpu")
    return BenchModel("bundled", seg, seg, {})


@pytest.fixture(scope="module")
def protocol(model):
    p = OneShotProtocol(OneShotConfig(defender=["bundled"]))
    p.validate({})
    return p


@pytest.fixture(scope="module")
def domain():
    return open_domain(DataSpec("train", "procedural:train"), Selection(sample=3, max_objects=3))


@pytest.fixture(scope="module")
def runs(protocol, model, domain):
    res = protocol.prepare(model)
    out = []
    for i in (1, 2):
        unit = Unit("bundled", "train", i, domain.ids[i], "oneshot")
        out.append((domain.scene(i), unit, protocol.run(model, res, domain.scene(i), unit, unit.seed(0))))
    return out


def test_config_and_class():
    assert {f.name for f in config_fields(OneShotConfig)} >= {"defender", "baselines", "fm_pos", "fm_neg", "pair_seed"}
    assert OneShotProtocol.quick == {"defender": ["bundled"], "baselines": ["greedy_score"]} and OneShotProtocol.name == "oneshot"
    with pytest.raises(ValueError):
        OneShotConfig(fm_pos=0)
    with pytest.raises(ValueError, match="unknown baseline"):
        OneShotProtocol(OneShotConfig(baselines=["nope"])).validate({})
    with pytest.raises(FileNotFoundError):
        OneShotProtocol(OneShotConfig(defender=["/no/such/run"])).validate({})


def test_rows_cover_every_method_and_group(runs):
    for scene, unit, result in runs:
        v = values(result)
        groups = {o for _, o, _ in v}
        assert groups and groups <= set(range(scene.num_objects))
        assert {m for m, _, _ in v} == METHODS
        for g in groups:
            for m in METHODS:
                assert 0.0 <= v[(m, g, "iou")] <= v[(m, g, "dice")] <= 1.0
                assert 0.0 <= v[(m, g, "wrong")] <= 1.0
            assert v[("fm_oracle", g, "wrong")] == 0.0 or v[("fm", g, "wrong")] == 1.0
        assert {e.method for e in result.examples} == {"fm", "fm+ppd:bundled"}


def test_groups_are_the_scenes_classes(runs):
    for scene, unit, result in runs:
        seed = int(unit.image.split("-")[1])
        classes = object_classes(make_scene(seed, "train"), seed, "train")
        kept = [classes[k] for k in scene.meta["objects"]]
        groups = sorted({o for _, o, _ in values(result)})
        # an object starts a group unless an earlier one has its shape and (nearly) its colour
        starts = [i for i, c in enumerate(kept) if not any(
            d.shape == c.shape and np.linalg.norm(np.subtract(d.colour, c.colour)) <= SAME_CLASS_COLOUR for d in kept[:i])]
        assert groups == starts


def test_example_masks_are_the_scored_masks(runs):
    scene, _, result = runs[0]
    v = values(result)
    for e in result.examples:
        assert e.value == v[(e.method, e.object, "iou")]
        assert decode_mask(e.mask).shape == scene.masks.shape[1:]
        assert all(lab in (0, 1) for _, _, lab in e.points)


def test_deterministic(protocol, model, runs):
    scene, unit, result = runs[1]
    again = protocol.run(model, protocol.prepare(model), scene, unit, unit.seed(0))
    assert values(again) == values(result)


def test_oracle_beats_fm_on_average(runs):
    fm, oracle = [], []
    for _, _, result in runs:
        v = values(result)
        for (m, g, k), x in v.items():
            if m == "fm" and k == "iou":
                fm.append(x)
                oracle.append(v[("fm_oracle", g, "iou")])
    assert np.mean(oracle) >= np.mean(fm)


def test_search_oracle_is_at_least_fm(protocol, model, runs):
    search = OneShotProtocol(OneShotConfig(baselines=[], search_oracle=True))
    scene, unit, result = runs[0]
    got, fm = values(search.run(model, search.prepare(model), scene, unit, unit.seed(0))), values(result)
    groups = {o for m, o, _ in got if m == "fm_search_oracle"}
    assert groups == {o for m, o, _ in fm if m == "fm"}
    for g in groups:  # the same FM points, edited only where the ground truth says it helps
        assert got[("fm", g, "iou")] == fm[("fm", g, "iou")]
        assert got[("fm_search_oracle", g, "iou")] >= got[("fm", g, "iou")]
    assert "fm_search_oracle" not in {m for m, _, _ in fm}  # off by default


def test_wrong_fraction_by_hand():
    gt = np.zeros((4, 4), bool)
    gt[:2] = True
    assert wrong_fraction(np.array([[0, 0], [0, 3], [1, 1]]), np.array([1, 1, 0]), gt) == pytest.approx(2 / 3)
    assert np.isnan(wrong_fraction(np.zeros((0, 2)), np.zeros(0), gt))


def test_folder_references_come_from_other_images(tiny_segmenter, folder_data):
    dom = open_domain(DataSpec("mine", str(folder_data)), Selection())
    p = OneShotProtocol(OneShotConfig(baselines=["greedy_score"]))
    scene = dom.scene(0)
    unit = Unit("tiny", "mine", 0, dom.ids[0], "oneshot")
    refs = p.references(scene, unit)
    assert [g for g, _, _ in refs] == [[k] for k in range(scene.num_objects)]
    for _, img, mask in refs:
        assert img is not None and not (img.shape == scene.image.shape and np.array_equal(img, scene.image))
        assert mask.shape == img.shape[:2] and mask.any()
    model = BenchModel("tiny", tiny_segmenter, tiny_segmenter, {})
    result = p.run(model, p.prepare(model), scene, unit, unit.seed(0))
    assert {r.method for r in result.rows} == {"fm", "fm+greedy_score", "fm_oracle", "persam", "gbmseg"}
    bound = OneShotProtocol(OneShotConfig())
    bound.bind_domains({"mine": dom})
    assert len(bound.references(scene, unit)) == scene.num_objects


@pytest.mark.parametrize("kind", ["folder", "coco"])
def test_unreadable_reference_leaves_its_group_unmeasured_not_the_run(kind, folder_data, coco_file, caplog):
    # the domain's checks read headers only: a damaged file is found when it is drawn as a reference
    if kind == "folder":  # every other image of the folder, sampled or not, is damaged
        dom = open_domain(DataSpec("d", str(folder_data)), Selection(sample=2))
        others = [m for m in sorted((folder_data / "masks").iterdir()) if m.stem != dom.ids[0]]
        damaged = others[0]
    else:
        dom = open_domain(DataSpec("d", str(coco_file)), Selection())
        damaged = coco_file.parent / "images" / dom.ids[1]
        others = [damaged]
    scene = dom.scene(0)
    for path in others:
        path.write_bytes(path.read_bytes()[:120])
    p = OneShotProtocol()
    p.bind_domains({"d": dom})
    with caplog.at_level(logging.WARNING, logger="ppd.bench.protocols.oneshot"):
        refs = p.references(scene, Unit("tiny", "d", 0, dom.ids[0], "oneshot"))
    if kind == "folder":  # no other image to draw from
        assert refs and all(img is None and mask is None for _, img, mask in refs)
    else:  # as unbound: another instance of the category in the same image
        (group, img, _), = refs
        assert len(group) == 1 and np.array_equal(img, scene.image)
    assert any(str(damaged) in r.getMessage() and "truncated" in r.getMessage() for r in caplog.records)


def test_coco_references_same_category(coco_file):
    dom = open_domain(DataSpec("coco", str(coco_file)), Selection())
    scene = dom.scene(0)
    unit = Unit("tiny", "coco", 0, dom.ids[0], "oneshot")
    unbound = OneShotProtocol().references(scene, unit)  # one category, two instances: one is the reference
    (group, img, mask), = unbound
    assert len(group) == 1 and np.array_equal(img, scene.image)
    assert iou(mask, scene.masks[1 - group[0]]) == 1.0
    p = OneShotProtocol()
    p.bind_domains({"coco": dom})
    (group, img, mask), = p.references(scene, unit)
    assert group == [0, 1]
    other = dom.scene(1)
    assert any(iou(mask, m) == 1.0 for m in other.masks)  # an instance of the other image


def test_class_folder_references_are_other_images_of_the_class(tiny_segmenter, class_folders):
    dom = open_domain(DataSpec("pets", str(class_folders)), Selection())
    p = OneShotProtocol(OneShotConfig(baselines=["greedy_score"]))
    p.bind_domains({"pets": dom})
    model = BenchModel("tiny", tiny_segmenter, tiny_segmenter, {})
    for k, name in enumerate(dom.ids):
        scene = dom.scene(k)
        unit = Unit("tiny", "pets", k, name, "oneshot")
        (group, img, mask), = p.references(scene, unit)
        assert group == [0]
        same_class = [j for j, other in enumerate(dom.ids) if other != name and other.split("/")[0] == name.split("/")[0]]
        found = [j for j in same_class if dom.scene(j).image.shape == img.shape and np.array_equal(dom.scene(j).image, img)]
        assert len(found) == 1 and np.array_equal(mask, dom.scene(found[0]).masks[0])
    result = p.run(model, p.prepare(model), dom.scene(0), Unit("tiny", "pets", 0, dom.ids[0], "oneshot"), np.random.default_rng(0))
    assert {r.method for r in result.rows} == {"fm", "fm+greedy_score", "fm_oracle", "persam", "gbmseg"}


def test_references_come_from_the_whole_dataset_not_only_the_sample(class_folders, caplog):
    """With --sample, a target's reference may be any other image of its class (or of the
    folder), sampled or not; a class with one image is named in a warning."""
    from PIL import Image

    (class_folders / "bird").mkdir()
    Image.fromarray(np.full((30, 30, 3), 90, np.uint8)).save(class_folders / "bird" / "0.jpg")
    Image.fromarray(np.pad(np.full((10, 10), 255, np.uint8), 10)).save(class_folders / "bird" / "0.png")
    for seed in range(4):
        dom = open_domain(DataSpec("pets", str(class_folders)), Selection(sample=2, seed=seed))
        p = OneShotProtocol()
        p.bind_domains({"pets": dom})
        for k, name in enumerate(dom.ids):
            with caplog.at_level(logging.WARNING, logger="ppd.bench.protocols.oneshot"):
                caplog.clear()
                (group, img, mask), = p.references(dom.scene(k), Unit("tiny", "pets", k, name, "oneshot"))
            if name.startswith("bird/"):
                assert img is None and "no other image holds an object of category 'bird'" in caplog.text
                continue
            others = [j for j, other in enumerate(dom.dataset.pairs) if dom.dataset.image_id(j) != name
                      and dom.dataset.image_class(j) == name.split("/")[0]]
            assert any(np.array_equal(dom.scene_at(j).image, img) for j in others), (seed, name)


def test_figure_draws_reference_fm_and_refined(tmp_path):
    from ppd.bench.protocols.oneshot_figures import OneShotPanel, oneshot_figure
    from ppd.data.oneshot_pairs import make_pair

    p = make_pair(0, "train")
    pts = (np.array([[10, 10], [50, 60]], np.float32), np.array([1, 0]))
    panel = OneShotPanel(p.reference.image, p.ref_mask, p.target.image, p.target_mask, pts, (pts[0][:1], pts[1][:1]),
                         p.target_mask, "FM + ppd", "train")
    path = oneshot_figure([panel, panel], tmp_path / "f.png")
    from PIL import Image

    with Image.open(path) as im:
        assert im.size == (960, 660)  # three panels wide, two rows of 3.3 in at 100 dpi
    assert oneshot_figure([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_report_figure_shows_the_measured_pairs(tmp_path, protocol, domain, runs):
    """The protocol's figure redraws each shown group's reference by the protocol's own
    rule, with the FM points and the defender's points the run stored."""
    from ppd.bench.protocols.oneshot_figures import report_panels

    examples = [(unit, ex) for _, unit, res in runs for ex in res.examples]
    load = lambda d, image: domain.scene(domain.ids.index(image))  # noqa: E731
    panels = report_panels(protocol.references, examples, load)
    assert 1 <= len(panels) <= 4
    for panel in panels:
        scene, unit, res = next(r for r in runs if r[1].image == panel.target_name)
        assert panel.title == f"{unit.model} / {unit.domain}"  # over the reference: not the target's name
        groups = {min(g): (img, m) for g, img, m in protocol.references(scene, unit) if img is not None}
        assert any(np.array_equal(panel.ref_mask, m) for _, m in groups.values())
        fm = next(ex for ex in res.examples if ex.method == "fm" and np.array_equal(
            np.asarray(ex.points, np.float32)[:, :2], panel.fm_points[0]))
        assert panel.refined_name.startswith("fm+ppd:bundled") and f"FM {fm.value:.3f}" in panel.refined_name
    figs = protocol.figures(None, tmp_path, load, examples)
    assert set(figs) == {"pairs"} and figs["pairs"][0].is_file()
    assert protocol.figures(None, tmp_path / "none", load, []) == {}


def test_defender_options_reach_the_defenders(model, domain):
    """--defender-options works in the one-shot protocol as in refine: the defenders are
    loaded with them, and a bad option fails at config time."""
    with pytest.raises(ValueError, match="defender_options: unknown refine option 'nope'"):
        OneShotConfig(defender_options=["nope=1"])
    proto = OneShotProtocol(OneShotConfig(defender=["bundled"], baselines=[], defender_options=["max_steps=0"],
                                          reference_choice=False))
    defender = proto.prepare(model)["defenders"]["ppd:bundled"]
    assert defender.refine_config.max_steps == 0
    unit = Unit("bundled", "train", 1, domain.ids[1], "oneshot")
    got = values(proto.run(model, proto.prepare(model), domain.scene(1), unit, unit.seed(0)))
    fm = {k[1]: v for k, v in got.items() if k[0] == "fm" and k[2] == "iou"}
    assert fm and all(got["fm+ppd:bundled", obj, "iou"] == pytest.approx(v, abs=1e-9) for obj, v in fm.items())


def test_reference_choice_picks_fm_an_edit_of_it_or_the_defenders_output(model, domain, caplog):
    """With reference_choice (the default) the defender's points are FM's, FM with one
    point removed or relabelled, or the defender's own output; without it, its own."""
    on = OneShotProtocol(OneShotConfig(defender=["bundled"], baselines=[]))
    off = OneShotProtocol(OneShotConfig(defender=["bundled"], baselines=[], reference_choice=False))
    with caplog.at_level(logging.WARNING, logger="ppd.bench.protocols.oneshot"):
        assert set(on.prepare(model)["choosers"]) == {"ppd:bundled"} and "choosers" not in off.prepare(model)
    assert not caplog.records  # the bundled defender has its chooser, fitted for this segmenter
    changed = 0
    for i in (1, 2):
        unit = Unit("bundled", "train", i, domain.ids[i], "oneshot")
        got = {p: p.run(model, p.prepare(model), domain.scene(i), unit, unit.seed(0)) for p in (on, off)}
        points = {(p is on, ex.method, ex.object): {tuple(q) for q in np.asarray(ex.points).tolist()}
                  for p, r in got.items() for ex in r.examples}
        for (_, method, obj), fm in [(k, v) for k, v in points.items() if k[0] and k[1] == "fm"]:
            chosen, own = points[True, "fm+ppd:bundled", obj], points[False, "fm+ppd:bundled", obj]
            one_edit = len(fm - chosen) <= 1 and len(chosen - fm) <= 1 and len(chosen) >= len(fm) - 1
            assert chosen == own or one_edit, (chosen, fm, own)
            changed += chosen != own
    assert changed  # the choice is not the defender's output everywhere


def test_a_chooser_fitted_for_another_segmenter_is_named(model, tmp_path, caplog):
    """A run folder whose chooser was fitted for another segmenter: a warning names both."""
    import shutil

    from ppd.agents.run_files import BUNDLED_DEFENDER
    from ppd.oneshot_quality import CHOOSER_FILE, load_chooser

    run = tmp_path / "run"
    shutil.copytree(BUNDLED_DEFENDER, run)
    chooser = load_chooser(run)
    chooser.meta["segmenter"] = "sam2.1_hiera_t"
    chooser.save(run / CHOOSER_FILE)
    proto = OneShotProtocol(OneShotConfig(defender=[str(run)], baselines=[]))
    with caplog.at_level(logging.WARNING, logger="ppd.bench.protocols.oneshot"):
        choosers = proto.prepare(model)["choosers"]
    assert set(choosers) == {"ppd:run"}
    assert any("fitted for segmenter sam2.1_hiera_t, not sam2-tiny-synthetic" in r.getMessage() for r in caplog.records)
