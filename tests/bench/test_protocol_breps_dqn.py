"""The breps protocol's DQN attacker rows: a learned attack beside BREPS's, from the same ideal sets.

The attacker is a randomly initialised DQN saved to a temporary run folder, its stop
Q-value biased far down so that it acts until its budget (as tests/agents does): what is
checked is the wiring (start sets, trajectory, scoring, names, grid check), not its skill.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from stable_baselines3.common.vec_env import DummyVecEnv

from ppd.agents.dqn import make_dqn
from ppd.agents.train import TrainConfig
from ppd.bench.protocols import BenchModel
from ppd.bench.protocols.breps import (
    DQN_METHOD, DQN_METRICS, BrepsConfig, BrepsProtocol, point_attack_comparison,
)
from ppd.bench.protocols.breps_figures import breps_figures, points_min_figure
from ppd.bench.schema import CLEAN, Unit, decode_mask
from ppd.data.scenes import ProceduralScenes, make_scene
from ppd.envs.point_prompt_env import PointPromptEnv
from ppd.envs.world import INACTIVE, PromptWorld, state_from_prompts
from ppd.models import BUNDLED_NAME
from ppd.prompts import ideal_prompts
from ppd.robustness.breps import point_attack
from ppd.robustness.dqn_attack import AttackerError, check_attacker, dqn_point_attack, load_attacker, model_grid

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 3  # the run's attacker_max_steps


def _attacker(world: PromptWorld):
    env = DummyVecEnv([lambda: PointPromptEnv("attacker", world=world)])
    model = make_dqn(env, "attacker", relabel=True, hidden_dim=16, n_layers=1, seed=0, device="cpu", buffer_size=64)
    with torch.no_grad():  # a random net that always acts (stop is the last Q-value)
        model.policy.q_net.stop_head[-1].bias.fill_(-1e3)
    return model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_segmenter, tiny_checkpoint):
    """A run folder with a random-weight attacker.zip and the config.yaml ppd train writes."""
    folder = tmp_path_factory.mktemp("run")
    _attacker(PromptWorld(tiny_segmenter, ProceduralScenes("train", 1, seed=0))).save(folder / "attacker.zip")
    cfg = TrainConfig(segmenter=BUNDLED_NAME, checkpoint=tiny_checkpoint, grid=16, attacker_max_steps=STEPS,
                      k_physical=6)
    (folder / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    return folder


@pytest.fixture(scope="module")
def scene():
    s = make_scene(7, "clutter", size=96)
    s.masks = s.masks[np.argsort(-s.masks.sum((1, 2)))[:3]]
    return s


def _run(seg, scene, **cfg):
    proto = BrepsProtocol(BrepsConfig(**{"steps": 2, "point_sets": ["ideal"], **cfg}))
    model = BenchModel("m", seg, seg, {})
    unit = Unit("m", "d", 0, "x", "breps")
    return proto, proto.run(model, proto.prepare(model), scene, unit, unit.seed(0))


def _table(res):
    return {(r.method, r.object, r.metric): r.value for r in res.rows}


def test_load_attacker_reads_the_runs_settings(run_dir, tiny_segmenter):
    att = load_attacker(run_dir, device="cpu")
    assert (att.grid, att.num_nodes, att.max_steps, att.k_physical, att.k_semantic) == (16, 256, STEPS, 6, 8)
    assert att.node_feature_dim == tiny_segmenter.embed_dim
    assert load_attacker(run_dir / "attacker.zip", device="cpu").grid == 16
    assert model_grid(tiny_segmenter) == 16
    check_attacker(att, tiny_segmenter)  # fits
    with pytest.raises(AttackerError, match="not found"):
        load_attacker(run_dir / "missing", device="cpu")
    (run_dir / "defender_only").mkdir(exist_ok=True)
    with pytest.raises(AttackerError, match="attacker.zip"):
        load_attacker(run_dir / "defender_only", device="cpu")


def test_rows_start_from_breps_ideal_sets_and_keep_the_trajectory_minimum(run_dir, tiny_segmenter, scene):
    proto, res = _run(tiny_segmenter, scene, attacker=str(run_dir))
    got = _table(res)
    n = len(scene.masks)
    assert {k for k in got if k[0] == DQN_METHOD} == {(DQN_METHOD, i, m) for i in range(n) for m in DQN_METRICS}
    assert all(r.condition == CLEAN for r in res.rows)
    for i in range(n):
        base, lo, delta = (got[(DQN_METHOD, i, m)] for m in DQN_METRICS)
        assert 0.0 <= lo <= base <= 1.0
        assert delta == pytest.approx(base - lo)
    # the same objects and starts as BREPS's point attack: where the ideal set maps onto
    # the graph without merging, both start from the very same set and IoU
    rec = PromptWorld(tiny_segmenter, [scene], grid=16).image(0)
    for i, gt in enumerate(scene.masks):
        ideal = ideal_prompts(gt, n_pos=6, n_neg=6)
        st, _, _ = state_from_prompts(ideal.point_coords, ideal.point_labels, rec.grid, rec.hw, rec.centres)
        if (st != INACTIVE).sum() == len(ideal):
            assert got[(DQN_METHOD, i, "iou_base_points")] == pytest.approx(got[("breps", i, "iou_base_points")], abs=1e-6)
    # an example per object: its worst set, scored as the row says
    exs = {e.object: e for e in res.examples if e.method == DQN_METHOD}
    assert set(exs) == set(range(n))
    for i, e in exs.items():
        assert e.metric == "iou_min_points" and e.value == pytest.approx(got[(DQN_METHOD, i, "iou_min_points")])
        assert decode_mask(e.mask).shape == scene.masks.shape[1:]
    assert "dqn_attacker" in proto.descriptions["iou_min_points"] and "--attacker" not in proto.descriptions["iou_min_points"]


def test_library_attack_scores_every_visited_set(run_dir, tiny_segmenter, scene):
    """Each visited set re-scored on its own gives the trajectory minimum; the attacker
    acts its whole budget, one node per step, at the node's patch centre."""
    att = load_attacker(run_dir, device="cpu")
    sets = [ideal_prompts(g, n_pos=6, n_neg=6) for g in scene.masks]
    res = dqn_point_attack(tiny_segmenter, att, scene.image, scene.masks, [s.point_coords for s in sets],
                           [s.point_labels for s in sets])
    rec = PromptWorld(tiny_segmenter, [scene], grid=16).image(0)
    for i, traj in enumerate(res.trajectories):
        assert len(traj) == STEPS + 1 and res.steps[i] == STEPS
        start = state_from_prompts(sets[i].point_coords, sets[i].point_labels, rec.grid, rec.hw, rec.centres)
        np.testing.assert_array_equal(traj[0][1], (start[0][start[0] != INACTIVE] == 1).astype(np.int64))
        for (c0, l0), (c1, l1) in zip(traj, traj[1:]):  # one new point per step, on a patch centre
            assert len(l1) in (len(l0), len(l0) + 1)
            new = {tuple(p) for p in c1.tolist()} - {tuple(p) for p in c0.tolist()}
            assert all(np.isclose(rec.centres, p).all(1).any() for p in new)
        ious = [point_attack(tiny_segmenter, scene.image, scene.masks[i:i + 1], [c], [lab], steps=0).iou_base[0]
                for c, lab in traj]
        assert res.iou_base[i] == pytest.approx(ious[0], abs=1e-6)
        assert res.iou_min[i] == pytest.approx(min(ious), abs=1e-6)
        assert res.worst_step[i] == int(np.argmin(ious))
        np.testing.assert_array_equal(res.worst_labels[i], traj[res.worst_step[i]][1])
    np.testing.assert_allclose(res.iou_delta, res.iou_base - res.iou_min)


def test_deterministic_and_void_pixels(run_dir, tiny_segmenter, scene):
    a = _table(_run(tiny_segmenter, scene, attacker=str(run_dir))[1])
    assert a == _table(_run(tiny_segmenter, scene, attacker=str(run_dir))[1])
    void = np.zeros(scene.masks.shape[1:], bool)
    void[:, :20] = True
    s = dataclasses.replace(scene, meta={"void": void})
    _, res = _run(tiny_segmenter, s, attacker=str(run_dir), prompts=["box"])  # dqn rows without point rows
    assert {r.method for r in res.rows} == {"breps", DQN_METHOD}
    for e in res.examples:
        if e.method == DQN_METHOD:
            assert not (decode_mask(e.mask) & void).any()


def test_attacker_on_another_grid_or_missing_is_a_clear_error(tmp_path, run_dir, tiny_segmenter, scene):
    small = tmp_path / "small"
    small.mkdir()
    _attacker(PromptWorld(tiny_segmenter, ProceduralScenes("train", 1, seed=0), grid=8)).save(small / "attacker.zip")
    proto = BrepsProtocol(BrepsConfig(attacker=str(small)))
    proto.validate({})  # readable: the grid is checked against each model
    with pytest.raises(AttackerError, match=r"64 graph nodes.*16 x 16"):
        proto.prepare(BenchModel("m", tiny_segmenter, tiny_segmenter, {}))
    with pytest.raises(AttackerError, match="not found"):
        BrepsProtocol(BrepsConfig(attacker=str(tmp_path / "nothing"))).validate({})


def test_without_attacker_the_report_says_how_to_add_it(tiny_segmenter, scene):
    proto, res = _run(tiny_segmenter, scene)
    assert DQN_METHOD not in {r.method for r in res.rows}
    assert proto.prepare(BenchModel("m", tiny_segmenter, tiny_segmenter, {})) == {}
    assert "--attacker RUN" in proto.descriptions["iou_min_points"]
    assert BrepsConfig().attacker == ""


def _frame(rows):
    return pd.DataFrame([dict(model="m", domain=d, protocol="breps", method=me, image="x", object=o, condition=CLEAN,
                              metric=mt, value=v) for d, me, o, mt, v in rows])


def test_comparison_aggregates_by_hand():
    rows = []
    for d, vals in (("a", [(0.9, 0.8, 0.9, 0.2), (0.7, 0.6, 0.7, 0.7)]), ("b", [(1.0, 0.5, 1.0, 0.0)])):
        for o, (bb, bm, db, dm) in enumerate(vals):
            rows += [(d, "breps", o, "iou_base_points", bb), (d, "breps", o, "iou_min_points", bm),
                     (d, DQN_METHOD, o, "iou_base_points", db), (d, DQN_METHOD, o, "iou_min_points", dm),
                     (d, "breps_coarse", o, "iou_min_points", 0.0)]
    agg = point_attack_comparison(_frame(rows))
    assert set(agg) == {"m/a", "m/b", "m/all"}
    a = agg["m/a"]
    assert a["objects"] == 2
    assert a["iou_min_points_breps"] == pytest.approx(0.7) and a["iou_min_points_dqn_attacker"] == pytest.approx(0.45)
    assert a["drop_breps"] == pytest.approx(0.1) and a["drop_dqn_attacker"] == pytest.approx(0.35)
    assert agg["m/all"]["iou_min_points_breps"] == pytest.approx((0.8 + 0.6 + 0.5) / 3)
    assert agg["m/b"]["drop_dqn_attacker"] == pytest.approx(1.0)
    only = point_attack_comparison(_frame([r for r in rows if r[1] != DQN_METHOD]))
    assert only["m/a"]["iou_min_points_dqn_attacker"] is None and only["m/a"]["drop_dqn_attacker"] is None


def test_points_min_figure(tmp_path):
    rows = [(d, me, o, mt, v) for d in ("a", "b") for me in ("breps", DQN_METHOD) for o in range(3)
            for mt, v in (("iou_base_points", 0.9), ("iou_min_points", 0.5 + 0.1 * o))]
    df = _frame(rows)
    path = points_min_figure(df, tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert points_min_figure(df[df["method"] != DQN_METHOD], tmp_path / "none.png") is None
    assert "points_min" in breps_figures(tmp_path, df, [], lambda d, i: None)


def test_refine_protocol_refines_the_attackers_sets(run_dir, tiny_segmenter, scene):
    """refine --attacker RUN: condition dqn_attacker holds each method's refinement of the
    attacker's final set from the run's ideal set; the other rows are those of a run
    without it."""
    from ppd.agents.baselines import GreedyScoreFilter
    from ppd.bench.protocols.refine import DQN_CONDITION, RefineBenchConfig, RefineProtocol
    from ppd.metrics import iou
    from ppd.oneshot import remove_wrong_points

    model = BenchModel("m", tiny_segmenter, tiny_segmenter, {})
    unit = Unit("m", "d", 0, "x", "refine")
    runs = {}
    for attacker in ("", str(run_dir)):
        proto = RefineProtocol(RefineBenchConfig(baselines=["no_refine", "greedy_score"], attacker=attacker))
        proto.validate({})
        runs[attacker] = proto.run(model, proto.prepare(model), scene, unit, unit.seed(0))
    plain, attacked = (_table_cond(runs[k]) for k in ("", str(run_dir)))
    assert {k: v for k, v in attacked.items() if k[3] != DQN_CONDITION and k[2] != "refine_ms"} == \
        {k: v for k, v in plain.items() if k[2] != "refine_ms"}
    n_ideal = TrainConfig().max_ideal_points  # the run's config keeps the default
    starts = [ideal_prompts(gt, n_pos=n_ideal, n_neg=n_ideal) for gt in scene.masks]
    direct = dqn_point_attack(tiny_segmenter, load_attacker(run_dir, device="cpu"), scene.image, scene.masks,
                              [p.point_coords for p in starts], [p.point_labels for p in starts])
    for obj, gt in enumerate(scene.masks):
        coords, labels = direct.trajectories[obj][-1]
        assert len(direct.trajectories[obj]) == STEPS + 1  # it acted until its budget
        mask = tiny_segmenter.predict(tiny_segmenter.encode(scene.image), coords, labels).masks[0]
        assert attacked["no_refine", obj, "iou", DQN_CONDITION] == pytest.approx(iou(mask, gt), abs=1e-6)
        greedy = GreedyScoreFilter(tiny_segmenter).refine(scene.image, coords, labels)
        assert attacked["greedy_score", obj, "iou", DQN_CONDITION] == pytest.approx(iou(greedy.mask, gt), abs=1e-6)
        assert attacked["no_refine", obj, "kept", DQN_CONDITION] == 1.0
        emb = tiny_segmenter.encode(scene.image)
        ideal = tiny_segmenter.predict(emb, *direct.trajectories[obj][0]).masks[0]
        assert attacked["ideal", obj, "iou", DQN_CONDITION] == pytest.approx(direct.iou_base[obj], abs=1e-6)
        assert attacked["ideal", obj, "iou", DQN_CONDITION] == pytest.approx(iou(ideal, gt), abs=1e-6)
        oracle = tiny_segmenter.predict(emb, *remove_wrong_points(coords, labels, gt)).masks[0]
        assert attacked["attacked_oracle", obj, "iou", DQN_CONDITION] == pytest.approx(iou(oracle, gt), abs=1e-6)
    assert {m for m, _, _, c in attacked if c == DQN_CONDITION} == {"no_refine", "greedy_score", "ideal", "attacked_oracle"}


def test_refine_protocol_attacker_errors(tmp_path):
    from ppd.bench.protocols.refine import RefineBenchConfig, RefineProtocol

    with pytest.raises(AttackerError, match="attacker.zip"):
        RefineProtocol(RefineBenchConfig(attacker=str(tmp_path))).validate({})


def _table_cond(res):
    return {(r.method, r.object, r.metric, r.condition): r.value for r in res.rows}
