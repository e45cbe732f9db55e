"""PromptDefender (loading, greedy refinement) and the baseline refiners.

Trained models are not needed: a randomly initialised defender DQN is saved to a
temporary run folder, with its stop Q-value biased far down so that it keeps acting
until its budget; behaviour that needs specific actions uses a scripted stand-in model,
and the greedy-score baseline is checked against a fake segmenter whose predicted IoU is
a known function of the points.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv

from ppd.agents.baselines import (
    ConsistencyFilter, GreedyScoreFilter, MaskConsensusFilter, NoRefine, RandomDrop, mask_agreement, point_features,
)
from ppd.agents.defender import PromptDefender, RefineResult, greedy_action, load_agent
from ppd.agents.dqn import make_dqn
from ppd.agents.train import TrainConfig
from ppd.data.scenes import ProceduralScenes
from ppd.envs.point_prompt_env import PointPromptEnv
from ppd.envs.world import INACTIVE, NEGATIVE, POSITIVE, PromptWorld
from ppd.models import BUNDLED_NAME
from ppd.segmenter import Prediction, Segmenter

IMAGE_HW = (96, 128)  # the conftest random_image

GRID = 16  # embedding grid of the tiny model (256 px / 16)
N = GRID * GRID
TRAIN_MAX_STEPS = 6  # written into the run's config.yaml

# On the (96, 128) test image with a 16 x 16 grid, patches are 8 px wide and 6 px high.
# Node 35 (row 2, column 3) covers x in [24, 32), y in [12, 18); its centre is (28, 15).
PATCH_NODE = 2 * GRID + 3
MERGED = np.array([[25, 12], [28, 15], [100, 70]], np.float32)  # points 0 and 1 share node 35
MERGED_LABELS = np.array([0, 1, 1])

POINTS = np.array([[10, 10], [50, 40], [100, 80], [120, 5], [70, 60]], np.float32)
LABELS = np.array([1, 1, 0, 1, 0])


def _make_model(world: PromptWorld, role: str, never_stop: bool = True):
    env = DummyVecEnv([lambda: PointPromptEnv(role, world=world)])
    model = make_dqn(env, role, relabel=True, hidden_dim=16, n_layers=1, seed=0, device="cpu", buffer_size=64)
    if never_stop:  # a random net that always acts (stop is the last Q-value)
        with torch.no_grad():
            model.policy.q_net.stop_head[-1].bias.fill_(-1e3)
    return model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_segmenter, tiny_checkpoint):
    """A run folder with a random-weight defender.zip, attacker.zip and config.yaml."""
    folder = tmp_path_factory.mktemp("run")
    world = PromptWorld(tiny_segmenter, ProceduralScenes("train", 2, seed=0))
    _make_model(world, "defender").save(folder / "defender.zip")
    _make_model(world, "attacker").save(folder / "attacker.zip")
    # the config.yaml `ppd train` writes (a TrainConfig as a flat mapping)
    cfg = TrainConfig(segmenter=BUNDLED_NAME, checkpoint=tiny_checkpoint, grid=GRID, defender_max_steps=TRAIN_MAX_STEPS)
    (folder / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    return folder


@pytest.fixture(scope="module")
def defender(run_dir, tiny_segmenter) -> PromptDefender:
    """The random-weight defender, returning where it stopped, unpolished (rollout mechanics)."""
    return PromptDefender.load(run_dir, segmenter=tiny_segmenter, device="cpu", select="last", polish=False)


class ScriptedModel:
    """Stand-in for the defender DQN: ``rule(obs) -> action``. Its Q-values put the rule's
    action first and stop second, so a rollout that forbids the rule's action stops."""

    def __init__(self, rule, relabel: bool = True) -> None:
        self.observation_space = spaces.Dict({"state": spaces.Box(0, 2, (N,), np.uint8)})
        self.action_space = spaces.Discrete(2 * N + 1)
        self.rule = rule
        def q_net(obs):  # one observation, or a batch (leading axis) of them
            rows = [obs] if np.ndim(obs["state"]) == 1 else [{k: v[b] for k, v in obs.items()} for b in range(len(obs["state"]))]
            q = -torch.ones(len(rows), 2 * N + 1)
            q[:, -1] = 0.0
            for b, row in enumerate(rows):
                q[b, int(rule(row))] = 1.0
            return q

        self.policy = SimpleNamespace(
            relabel=relabel, role="defender", obs_to_tensor=lambda obs: (obs, False), q_net=q_net
        )

    def predict(self, obs, state=None, episode_start=None, deterministic=False):
        return np.array(self.rule(obs)), None


def _scripted(tiny_segmenter, rule, relabel: bool = True) -> PromptDefender:
    return PromptDefender(ScriptedModel(rule, relabel), tiny_segmenter, grid=GRID, max_steps=12, select="last", polish=False,
                          consensus=False)


def _check_result(res: RefineResult, coords: np.ndarray, labels: np.ndarray) -> None:
    K = len(coords)
    assert res.kept.shape == (K,) and res.kept.dtype == bool
    assert res.relabeled.shape == (K,) and not (res.relabeled & ~res.kept).any()
    assert res.point_coords.shape == (len(res.index), 2) and res.point_labels.shape == (len(res.index),)
    assert set(res.point_labels.tolist()) <= {0, 1}
    assert res.mask.shape == IMAGE_HW and res.mask.dtype == bool
    assert np.isfinite(res.score)
    # output points are input points, in input order, kept, with their (flipped) labels
    assert (np.diff(res.index) > 0).all() and res.kept[res.index].all()
    np.testing.assert_array_equal(res.point_coords, coords[res.index])
    expect = np.where(res.relabeled[res.index], 1 - labels[res.index], labels[res.index])
    np.testing.assert_array_equal(res.point_labels, expect)
    assert res.kept.sum() >= 1


# ----------------------------------------------------------------------------- loading
def test_load_from_folder_and_file(run_dir, tiny_segmenter, random_image, defender):
    from_file = PromptDefender.load(run_dir / "defender.zip", segmenter=tiny_segmenter, device="cpu")
    assert from_file.select == "score"  # the default output rule
    from_file.select = "last"
    for d in (defender, from_file):
        assert d.num_nodes == N and d.relabel is True
        assert d.train_max_steps == TRAIN_MAX_STEPS and d.default_steps(3) == TRAIN_MAX_STEPS
    a = defender.refine(random_image, POINTS, LABELS)
    b = from_file.refine(random_image, POINTS, LABELS)
    np.testing.assert_array_equal(a.kept, b.kept)
    np.testing.assert_array_equal(a.point_labels, b.point_labels)
    np.testing.assert_array_equal(a.mask, b.mask)


def test_load_segmenter_from_config(run_dir, tiny_segmenter, random_image):
    d = PromptDefender.load(run_dir, device="cpu")  # segmenter named in config.yaml
    assert d.segmenter.info.get("checkpoint") is not None
    pred = d.segmenter.predict(random_image, POINTS[:2], LABELS[:2])
    np.testing.assert_array_equal(pred.masks, tiny_segmenter.predict(random_image, POINTS[:2], LABELS[:2]).masks)


def test_load_errors(tmp_path, run_dir, tiny_segmenter):
    with pytest.raises(FileNotFoundError, match="not found"):
        PromptDefender.load(tmp_path / "nope", segmenter=tiny_segmenter)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="defender.zip"):
        PromptDefender.load(empty, segmenter=tiny_segmenter)
    bad = tmp_path / "bad_bytes"
    bad.mkdir()
    (bad / "defender.zip").write_bytes(b"this is not a zip archive")
    with pytest.raises(ValueError, match="corrupt"):
        PromptDefender.load(bad, segmenter=tiny_segmenter)
    bad_zip = tmp_path / "bad_zip"
    bad_zip.mkdir()
    with zipfile.ZipFile(bad_zip / "defender.zip", "w") as z:
        z.writestr("data", "{not json")
    with pytest.raises(ValueError, match="corrupt"):
        PromptDefender.load(bad_zip, segmenter=tiny_segmenter)
    bad_cfg = tmp_path / "bad_cfg"
    bad_cfg.mkdir()
    (bad_cfg / "defender.zip").write_bytes((run_dir / "defender.zip").read_bytes())
    (bad_cfg / "config.yaml").write_text("grid: [1, 2\n")
    with pytest.raises(ValueError, match="config.yaml"):
        PromptDefender.load(bad_cfg, segmenter=tiny_segmenter)
    with pytest.raises(ValueError, match="attacker"):
        PromptDefender.load(run_dir / "attacker.zip", segmenter=tiny_segmenter)
    with pytest.raises(ValueError, match="pass precision to load_segmenter"):
        PromptDefender.load(run_dir, segmenter=tiny_segmenter, precision="fp32")
    with pytest.raises(ValueError, match='precision="bf16" needs a CUDA device'):
        PromptDefender.load(run_dir, device="cpu", precision="bf16")


def test_load_agent_returns_attacker(run_dir):
    model, cfg, folder = load_agent(run_dir, "attacker.zip", device="cpu")
    assert model.policy.role == "attacker" and folder == run_dir and cfg["grid"] == GRID


# ----------------------------------------------------------------------------- refine
def test_refine_shapes_and_budget(defender, random_image):
    res = defender.refine(random_image, POINTS, LABELS)
    _check_result(res, POINTS, LABELS)
    assert res.steps == TRAIN_MAX_STEPS  # the never-stopping net spends the whole budget
    res2 = defender.refine(random_image, POINTS, LABELS, max_steps=2)
    _check_result(res2, POINTS, LABELS)
    assert res2.steps == 2
    # the mask is SAM's mask of the output points
    pred = defender.segmenter.predict(random_image, res.point_coords, res.point_labels)
    np.testing.assert_array_equal(pred.masks[0], res.mask)
    assert res.score == pytest.approx(float(pred.scores[0]), abs=1e-6)


def test_max_steps_zero_returns_input(defender, random_image):
    res = defender.refine(random_image, POINTS, LABELS, max_steps=0)
    assert res.steps == 0 and res.kept.all() and not res.relabeled.any()
    np.testing.assert_array_equal(res.point_coords, POINTS)
    np.testing.assert_array_equal(res.point_labels, LABELS)
    pred = defender.segmenter.predict(random_image, POINTS, LABELS)
    np.testing.assert_array_equal(res.mask, pred.masks[0])


def test_refine_uses_no_ground_truth(defender, random_image, monkeypatch):
    seen = []
    evaluate = defender.world.evaluate

    def spy(requests, want_mask=False, probe=False):
        seen.extend(obj for _, obj, _, _ in requests)
        return evaluate(requests, want_mask, probe)

    def no_quality(*_):
        raise AssertionError("ground truth used")

    monkeypatch.setattr(defender.world, "evaluate", spy)
    monkeypatch.setattr(defender.world, "quality_fn", no_quality)
    defender.refine(random_image, POINTS + 1, LABELS, max_steps=3)
    assert seen and all(obj == -1 for obj in seen)


def test_bad_prompts(defender, random_image):
    with pytest.raises(ValueError, match="empty"):
        defender.refine(random_image, np.zeros((0, 2)), np.zeros(0))
    with pytest.raises(ValueError, match="outside"):
        defender.refine(random_image, [[200.0, 10.0]], [1])
    with pytest.raises(ValueError, match="label"):
        defender.refine(random_image, [[20.0, 10.0]], [2])
    with pytest.raises(ValueError, match="max_steps"):
        defender.refine(random_image, [[20.0, 10.0]], [1], max_steps=-1)


def test_refine_many(defender, random_image):
    other = random_image[::-1].copy()
    # two images, the first one twice with different prompt sets
    images, coords, labels = [random_image, other, random_image], [POINTS, POINTS[:2], POINTS[1:]], [LABELS, LABELS[:2], 1 - LABELS[1:]]
    defender.world._outcomes.clear()
    calls = defender.world.decode_calls
    many = defender.refine_many(images, coords, labels, max_steps=2)
    batched_calls = defender.world.decode_calls - calls
    defender.world._outcomes.clear()
    calls = defender.world.decode_calls
    ones = [defender.refine(im, c, l, max_steps=2) for im, c, l in zip(images, coords, labels)]
    # the rollouts advance together: one decoder call per step for all sets, not one per set
    assert batched_calls < defender.world.decode_calls - calls
    assert [len(r.kept) for r in many] == [len(POINTS), 2, len(POINTS) - 1]
    for m, o in zip(many, ones):  # the same result as refine, set by set
        np.testing.assert_array_equal(m.kept, o.kept)
        np.testing.assert_array_equal(m.point_labels, o.point_labels)
        np.testing.assert_array_equal(m.mask, o.mask)
        assert m.steps == o.steps
    with pytest.raises(ValueError, match="same length"):
        defender.refine_many([random_image], [POINTS, POINTS], [LABELS])
    # one budget per set: each set as refine with its own budget (0: untouched)
    budgets = [0, 1, None]
    per_set = defender.refine_many(images, coords, labels, max_steps=budgets)
    singles = [defender.refine(im, c, l, max_steps=b) for im, c, l, b in zip(images, coords, labels, budgets)]
    assert per_set[0].steps == 0 and per_set[0].kept.all() and per_set[1].steps <= 1
    for m, o in zip(per_set, singles):
        np.testing.assert_array_equal(m.kept, o.kept)
        np.testing.assert_array_equal(m.point_labels, o.point_labels)
        assert m.steps == o.steps
    with pytest.raises(ValueError, match="3 prompt sets"):
        defender.refine_many(images, coords, labels, max_steps=[1, 2])
    with pytest.raises(ValueError, match=r"max_steps \(the refine step budget.*\) must be .*>= 0, got -1"):
        defender.refine_many(images, coords, labels, max_steps=[1, -1, 2])
    with pytest.raises(TypeError, match="one per set"):
        defender.refine_many(images, coords, labels, max_steps="2")
    with pytest.raises(ValueError, match="outside"):  # a bad set fails the call before any work
        defender.refine_many([random_image, other], [POINTS, [[500.0, 1.0]]], [LABELS, [1]])


def test_greedy_action_respects_a_stricter_mask(defender, random_image):
    rec = defender.record(random_image)
    from ppd.envs.point_prompt_env import build_observation
    from ppd.envs.world import state_from_prompts

    st, pts, _ = state_from_prompts(POINTS, LABELS, rec.grid, rec.hw, rec.centres)
    out = defender.world.evaluate([(rec, -1, st, pts)])[0]
    obs = build_observation(rec, st, pts, out, 0, TRAIN_MAX_STEPS)
    mask = np.zeros(2 * N + 1, bool)
    mask[-1] = True
    first = greedy_action(defender.model, obs, np.ones(2 * N + 1, bool))
    assert first != 2 * N  # stop is biased away
    assert greedy_action(defender.model, obs, mask) == 2 * N


# ----------------------------------------------------------------------------- merging
def test_points_in_one_patch_merge_into_their_node(tiny_segmenter, random_image):
    never = _scripted(tiny_segmenter, lambda obs: 2 * N)  # stops at once
    res = never.refine(random_image, MERGED, MERGED_LABELS)
    # node 35 keeps the point nearest its centre (point 1); point 0 is merged into it
    assert res.kept.all() and res.steps == 0
    np.testing.assert_array_equal(res.index, [1, 2])
    np.testing.assert_array_equal(res.point_coords, MERGED[[1, 2]])
    np.testing.assert_array_equal(res.point_labels, [1, 1])
    pred = tiny_segmenter.predict(random_image, MERGED[[1, 2]], [1, 1])
    np.testing.assert_array_equal(res.mask, pred.masks[0])

    drop = _scripted(tiny_segmenter, lambda obs: PATCH_NODE if obs["state"][PATCH_NODE] else 2 * N)
    res = drop.refine(random_image, MERGED, MERGED_LABELS)
    np.testing.assert_array_equal(res.kept, [False, False, True])  # the merged point goes with its node
    np.testing.assert_array_equal(res.point_coords, MERGED[[2]])
    assert res.steps == 1


def test_relabel_flips_the_node(tiny_segmenter, random_image):
    flip = _scripted(tiny_segmenter, lambda obs: N + PATCH_NODE if obs["state"][PATCH_NODE] == 1 else 2 * N)
    res = flip.refine(random_image, MERGED, MERGED_LABELS)
    assert res.steps == 1 and res.kept.all()
    np.testing.assert_array_equal(res.relabeled, [True, True, False])
    np.testing.assert_array_equal(res.point_labels, [0, 1])  # point 1 (was 1) flipped
    _check_result(res, MERGED, MERGED_LABELS)


def test_a_prompt_is_relabelled_at_most_once(tiny_segmenter, random_image):
    """A policy that keeps relabelling one node (a cycle) flips it once, then stops."""
    always = _scripted(tiny_segmenter, lambda obs: N + PATCH_NODE)
    res = always.refine(random_image, MERGED, MERGED_LABELS, max_steps=10)
    assert res.steps == 1
    np.testing.assert_array_equal(res.relabeled, [True, True, False])
    np.testing.assert_array_equal(res.point_labels, [0, 1])


def test_never_removes_the_last_prompt(tiny_segmenter, random_image):
    def remove_first(obs):
        return int(np.flatnonzero(obs["state"])[0])

    d = _scripted(tiny_segmenter, remove_first)
    res = d.refine(random_image, POINTS, LABELS, max_steps=20)
    assert res.kept.sum() == 1 and res.steps == len(POINTS) - 1
    assert res.mask.shape == IMAGE_HW
    # without relabelling, a single prompt leaves no valid action: no step at all
    d = _scripted(tiny_segmenter, remove_first, relabel=False)
    res = d.refine(random_image, POINTS[:1], LABELS[:1])
    assert res.steps == 0 and res.kept.all()


def test_select_score_returns_the_best_scored_visited_state(tiny_segmenter, random_image):
    def remove_first(obs):
        return int(np.flatnonzero(obs["state"])[0])

    last = _scripted(tiny_segmenter, remove_first)
    best = PromptDefender(last.model, tiny_segmenter, grid=GRID, max_steps=12, select="score", polish=False,
                         consensus=False)  # the rollout alone
    # the rollout removes the active nodes in ascending order: state i lacks the i first
    rec = best.record(random_image)
    from ppd.envs.world import state_from_prompts

    st0, pts, node = state_from_prompts(POINTS, LABELS, rec.grid, rec.hw, rec.centres)
    order = np.sort(node)
    assert len(set(node.tolist())) == len(POINTS)
    scores = []
    for i in range(len(POINTS)):
        st = st0.copy()
        st[order[:i]] = 0
        scores.append(best.world.evaluate([(rec, -1, st, pts)])[0].score)
    pick = int(np.argmax(scores))
    assert 0 < pick < len(POINTS) - 1  # neither the input nor where "last" stops
    res = best.refine(random_image, POINTS, LABELS, max_steps=20)
    assert res.steps == pick
    np.testing.assert_array_equal(res.kept, ~np.isin(node, order[:pick]))
    _check_result(res, POINTS, LABELS)
    # the same rollout with "last" returns where it stopped; a budget bounds both
    assert last.refine(random_image, POINTS, LABELS, max_steps=20).steps == len(POINTS) - 1
    short = best.refine(random_image, POINTS, LABELS, max_steps=1)
    assert short.steps == int(np.argmax(scores[:2]))
    with pytest.raises(ValueError, match="select must be one of"):
        PromptDefender(last.model, tiny_segmenter, grid=GRID, select="best")
    # patience p: the rollout ends once p steps in a row found no better score
    visited = {}
    for p in (1, 2, 3):
        seen, best_i, t = 1, 0, 0  # expected: visited states and the best one
        while t < len(POINTS) - 1 and t - best_i < p:
            t += 1
            seen += 1
            if scores[t] > scores[best_i]:
                best_i = t
        impatient = PromptDefender(last.model, tiny_segmenter, grid=GRID, max_steps=12, select="score", patience=p, polish=False,
                                       consensus=False)
        calls = []
        evaluate = impatient.world.evaluate
        impatient.world.evaluate = lambda reqs, **kw: calls.append(len(reqs)) or evaluate(reqs, **kw)
        res = impatient.refine(random_image, POINTS, LABELS, max_steps=20)
        assert res.steps == best_i and len(calls) == seen, (p, res.steps, best_i, len(calls), seen)
        visited[p] = seen
    assert visited[1] <= visited[2] <= visited[3] <= len(POINTS) and visited[1] < len(POINTS), visited
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="patience must be an integer"):
            PromptDefender(last.model, tiny_segmenter, grid=GRID, patience=bad)
    with pytest.raises(ValueError, match='needs select="score"'):
        PromptDefender(last.model, tiny_segmenter, grid=GRID, select="last", patience=2)


def test_bundled_defender_refines_coarse_prompts():
    from ppd.agents.defender import BUNDLED_DEFENDER
    from ppd.prompts import coarse_prompts

    d = PromptDefender.load(device="cpu")  # no path: the defender shipped in the package
    assert d.select == "score" and d.num_nodes == 256 and d.probe
    assert (BUNDLED_DEFENDER / "MODEL_CARD.md").is_file()
    scene = ProceduralScenes("train", 1, seed=123)[0]
    cp = coarse_prompts(scene.masks[0], np.random.default_rng(0)).prompts
    res = d.refine(scene.image, cp.point_coords, cp.point_labels)
    assert res.mask.shape == scene.image.shape[:2] and 1 <= res.kept.sum() <= len(cp.point_coords)
    assert res.steps <= d.default_steps(len(cp.point_coords))
    # the mask is SAM's for the output points
    pred = d.segmenter.predict(scene.image, res.point_coords, res.point_labels)
    np.testing.assert_array_equal(pred.masks[0], res.mask)
    assert res.score == pytest.approx(float(pred.scores[0]), abs=1e-6)
    # it makes masks better, not worse: over fixed coarse sets of its training domain the
    # mean IoU rises (measured: 0.693 -> 0.858 on these 8 scenes)
    from ppd.agents.baselines import NoRefine
    from ppd.metrics import iou

    scenes = ProceduralScenes("train", 8, seed=123)
    before, after = [], []
    for i in range(8):
        s = scenes[i]
        cp = coarse_prompts(s.masks[0], np.random.default_rng(i)).prompts
        before.append(float(iou(NoRefine(d.segmenter).refine(s.image, cp.point_coords, cp.point_labels).mask, s.masks[0])))
        after.append(float(iou(d.refine(s.image, cp.point_coords, cp.point_labels).mask, s.masks[0])))
    assert np.mean(after) >= np.mean(before) + 0.1, (np.mean(before), np.mean(after))


def test_refine_cli_writes_its_files(run_dir, random_image, tmp_path, capsys):
    from ppd.cli import main
    from ppd.cli.common import save_png as _save_png

    _save_png(random_image, tmp_path / "img.png")
    points = ";".join(f"{x:g},{y:g},{lab}" for (x, y), lab in zip(POINTS, LABELS))
    out = tmp_path / "out"
    argv = ["refine", "--defender", str(run_dir), "--image", str(tmp_path / "img.png"), "--points", points]
    assert main(argv + ["--out", str(out), "--select", "last", "--max-steps", "2", "--device", "cpu"]) == 0
    res = json.loads((out / "refined.json").read_text())
    assert res["steps"] == 2 and len(res["kept"]) == len(POINTS) and sum(res["kept"]) >= len(POINTS) - 2
    direct = PromptDefender.load(run_dir, device="cpu", select="last").refine(random_image, POINTS, LABELS, max_steps=2)
    assert res["trace"] == list(direct.trace) and any(t.startswith("rollout: ") for t in res["trace"])
    from ppd.agents.refine_config import RefineConfig

    saved = RefineConfig.from_file(out / "refine_config.yaml")  # the options it ran with, beside its outputs
    assert saved == RefineConfig(select="last", max_steps=2)
    assert len(res["point_coords"]) == len(res["point_labels"]) >= 1
    for f in ("mask.png", "overlay.png", "input_overlay.png"):
        assert (out / f).stat().st_size > 0
    assert "kept" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # an unknown output rule is a usage error
        main(argv + ["--out", str(out), "--select", "best"])


def test_embedding_cache_flag_reuses_embeddings_across_commands(run_dir, random_image, tmp_path, counting_encoder):
    from ppd.cli import main
    from ppd.cli.common import save_png as _save_png

    calls = counting_encoder
    _save_png(random_image, tmp_path / "img.png")
    points = ";".join(f"{x:g},{y:g},{lab}" for (x, y), lab in zip(POINTS, LABELS))
    cache = tmp_path / "emb"
    argv = ["refine", "--defender", str(run_dir), "--image", str(tmp_path / "img.png"), "--points", points,
            "--max-steps", "1", "--embedding-cache", str(cache)]
    assert main(argv + ["--out", str(tmp_path / "a")]) == 0
    assert calls["n"] == 1 and len(list(cache.glob("*/*.pt"))) == 1
    assert main(argv + ["--out", str(tmp_path / "b")]) == 0  # a new defender and segmenter: read from disk
    assert calls["n"] == 1
    assert (json.loads((tmp_path / "a" / "refined.json").read_text())["kept"]
            == json.loads((tmp_path / "b" / "refined.json").read_text())["kept"])
    with pytest.raises(ValueError, match="embedding_cache applies to the segmenter loaded here"):
        PromptDefender.load(run_dir, segmenter=PromptDefender.load(run_dir).segmenter, embedding_cache=cache)


# ----------------------------------------------------------------------------- baselines
class FakeSegmenter:
    """Predicted IoU = 0.5 + the sum of a weight per point (looked up by its x).

    Each row's mask has as many True pixels as the row has points, so a test can tell
    which prompt set a returned mask belongs to. Records the rows of every predict call.
    """

    def __init__(self, weights: dict[int, float]) -> None:
        self.weights = weights
        self.calls: list[int] = []

    def encode(self, image):
        return SimpleNamespace(orig_hw=tuple(image.shape[:2]), key="fake")

    def predict(self, emb, point_coords, point_labels, multimask=False):
        c, lab = np.asarray(point_coords, float), np.asarray(point_labels)
        if c.ndim == 2:
            c, lab = c[None], lab[None]
        self.calls.append(len(c))
        scores, masks = [], np.zeros((len(c), *emb.orig_hw), bool)
        for b, (row, lr) in enumerate(zip(c, lab)):
            real = lr >= 0
            scores.append(0.5 + sum(self.weights[int(x)] for x in row[real, 0]))
            masks[b].flat[: int(real.sum())] = True
        return Prediction(masks, np.asarray(scores, np.float32), np.zeros((len(c), 4, 4), np.float32))

    def predict_batch(self, embeddings, point_coords, point_labels, multimask=False):
        return self.predict(embeddings[0], point_coords, point_labels)


def _xs(xs):
    return np.array([[x, 5] for x in xs], np.float32), np.ones(len(xs), np.int64)


def test_greedy_score_filter_against_a_known_score():
    seg = FakeSegmenter({10: 0.1, 20: -0.2, 30: -0.05, 40: 0.0, 50: -0.3})
    coords, labels = _xs([10, 20, 30, 40, 50])
    res = GreedyScoreFilter(seg).refine(np.zeros((32, 64, 3), np.uint8), coords, labels)
    # drops 50 (+0.3), 20 (+0.2), 30 (+0.05); dropping 40 would not raise the score
    np.testing.assert_array_equal(res.kept, [True, False, False, True, False])
    assert res.score == pytest.approx(0.6) and res.steps == 3
    assert res.mask.sum() == 2  # the mask of the kept set
    # one call for the input set, then ONE batched call per round (all leave-one-outs)
    assert seg.calls == [1, 5, 4, 3, 2]
    # the interface's refine_many: one budget per set, as refine with that budget
    img = np.zeros((32, 64, 3), np.uint8)
    many = GreedyScoreFilter(seg).refine_many([img, img], [coords, coords], [labels, labels], max_steps=[1, None])
    assert [r.steps for r in many] == [1, 3]
    np.testing.assert_array_equal(many[0].kept, [True, True, True, True, False])
    with pytest.raises(ValueError, match="2 budgets for 1 prompt sets"):
        GreedyScoreFilter(seg).refine_many([img], [coords], [labels], max_steps=[1, 2])


def test_greedy_score_filter_keeps_one_point_and_budget():
    seg = FakeSegmenter({10: -0.1, 20: -0.2})
    coords, labels = _xs([10, 20])
    res = GreedyScoreFilter(seg).refine(np.zeros((32, 64, 3), np.uint8), coords, labels)
    np.testing.assert_array_equal(res.kept, [True, False])
    assert seg.calls == [1, 2]  # no round with a single point left
    seg = FakeSegmenter({10: -0.1, 20: -0.2, 30: -0.3})
    res = GreedyScoreFilter(seg).refine(np.zeros((32, 64, 3), np.uint8), *_xs([10, 20, 30]), max_steps=1)
    np.testing.assert_array_equal(res.kept, [True, True, False])
    assert res.steps == 1 and seg.calls == [1, 3]


def test_greedy_score_filter_on_sam(tiny_checkpoint, tiny_segmenter, random_image):
    seg = Segmenter(tiny_segmenter.model, BUNDLED_NAME, device="cpu")
    calls = []
    predict = seg.predict

    def counting(*args, **kwargs):
        calls.append(np.asarray(args[1]).shape)
        return predict(*args, **kwargs)

    seg.predict = counting
    base = NoRefine(tiny_segmenter).refine(random_image, POINTS, LABELS)
    res = GreedyScoreFilter(seg).refine(random_image, POINTS, LABELS)
    _check_result(res, POINTS, LABELS)
    assert res.score >= base.score - 1e-6
    assert len(calls) == res.steps + 2 or (res.kept.sum() == 1 and len(calls) == res.steps + 1)
    k = len(POINTS)
    for r, shape in enumerate(calls[1:]):  # round r: k - r leave-one-out sets at once
        assert shape == (k - r, k - r - 1, 2)


class TwoRegionSegmenter(FakeSegmenter):
    """A FakeSegmenter whose embedding is feature e1 on the image's left half and e2 on
    its right half (a 4 x 8 grid over a 32 x 64 image)."""

    def encode(self, image):
        emb = torch.zeros(1, 2, 4, 8)
        emb[0, 0, :, :4] = 1.0
        emb[0, 1, :, 4:] = 2.0
        return SimpleNamespace(orig_hw=tuple(image.shape[:2]), key="fake", image_embed=emb)


def test_consistency_filter_drops_the_points_that_look_like_the_other_label():
    # positives at x = 4, 12, 20 (left, e1) and 52 (right: looks like the negatives);
    # negatives at x = 44, 60 (right, e2) and 8 (left: looks like the positives)
    xs = [4, 12, 20, 52, 44, 60, 8]
    seg = TwoRegionSegmenter({x: 0.0 for x in xs})
    coords = np.array([[x, 16] for x in xs], np.float32)
    labels = np.array([1, 1, 1, 1, 0, 0, 0])
    image = np.zeros((32, 64, 3), np.uint8)
    feats = point_features(seg.encode(image), coords)
    np.testing.assert_allclose(feats[:3], [[1.0, 0.0]] * 3)  # cell features at the points
    res = ConsistencyFilter(seg).refine(image, coords, labels)
    np.testing.assert_array_equal(res.kept, [True, True, True, False, True, True, False])
    assert res.steps == 2 and seg.calls == [1]  # one decoder call, for the final set
    assert res.mask.sum() == 5
    res = ConsistencyFilter(seg).refine(image, coords, labels, max_steps=1)
    assert res.steps == 1 and res.kept.sum() == 6 and not res.kept[[3, 6]].all()
    # consistent prompts are left alone, and the last point is never dropped
    res = ConsistencyFilter(seg).refine(image, coords[[0, 1, 4]], labels[[0, 1, 4]])
    assert res.kept.all() and res.steps == 0
    res = ConsistencyFilter(seg).refine(image, coords[[0, 6]], labels[[0, 6]])
    assert res.kept.sum() == 1 and res.steps == 1


class ObjectsSegmenter:
    """A fake SAM on a 32 x 64 image with object A (columns 0-23), background (24-39) and
    object B (40-63). One click's three multimask outputs: its region (predicted IoU
    0.9), the whole image (0.5) and a 5 x 5 square around it (0.3). A set of several
    points: the union of its positives' regions. Records the rows of every call."""

    HW = (32, 64)

    def __init__(self) -> None:
        self.calls: list[tuple[int, bool]] = []

    def encode(self, image):
        return SimpleNamespace(orig_hw=self.HW, key="objects")

    @staticmethod
    def region(x: float) -> np.ndarray:
        cols = np.arange(64)
        lo, hi = (0, 24) if x < 24 else (24, 40) if x < 40 else (40, 64)
        return np.broadcast_to((cols >= lo) & (cols < hi), ObjectsSegmenter.HW).copy()

    def predict(self, emb, point_coords, point_labels, multimask=False, return_all=False):
        c, lab = np.asarray(point_coords, float), np.asarray(point_labels)
        if c.ndim == 2:
            c, lab = c[None], lab[None]
        self.calls.append((len(c), bool(return_all)))
        if return_all:  # one click per row
            masks = np.zeros((len(c), 3, *self.HW), bool)
            for b, (x, y) in enumerate(c[:, 0]):
                masks[b, 0] = self.region(x)
                masks[b, 1] = True
                masks[b, 2, max(0, int(y) - 2) : int(y) + 3, max(0, int(x) - 2) : int(x) + 3] = True
            scores = np.tile([0.9, 0.5, 0.3], (len(c), 1)).astype(np.float32)
            return Prediction(masks, scores, np.zeros((len(c), 3, 4, 4), np.float32))
        masks = np.zeros((len(c), *self.HW), bool)
        for b, (row, lr) in enumerate(zip(c, lab)):
            for (x, _), l in zip(row, lr):
                if l == 1:
                    masks[b] |= self.region(x)
        return Prediction(masks, np.full(len(c), 0.5, np.float32), np.zeros((len(c), 4, 4), np.float32))

    def predict_at(self, embs, point_coords, point_labels, query_coords, multimask=False, return_all=False):
        """Segmenter.predict_at: the masks of ``predict`` (one image) read at the queries."""
        pred = self.predict(embs[0], point_coords, point_labels, multimask, return_all)
        xy = np.clip(np.round(np.asarray(query_coords)).astype(int), 0, [self.HW[1] - 1, self.HW[0] - 1])
        rows = np.arange(len(xy))[:, None]
        m = pred.masks if return_all else pred.masks[:, None]
        inside = m[rows, :, xy[..., 1], xy[..., 0]].transpose(0, 2, 1)  # (B, M, Q)
        return (inside if return_all else inside[:, 0]), pred.scores


def test_mask_consensus_filter_drops_what_disagrees_with_the_majority_mask():
    # positives: 4 on A, 2 on B (wrong); negatives: 3 on the background, 1 on A (wrong)
    xs = [2, 8, 14, 20, 44, 56, 26, 30, 36, 10]
    labels = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    coords = np.array([[x, 8 + 4 * (i % 3)] for i, x in enumerate(xs)], np.float32)
    image = np.zeros((32, 64, 3), np.uint8)
    seg = ObjectsSegmenter()
    agree = mask_agreement(np.stack([seg.region(2), seg.region(44)]), coords, labels)
    assert agree.sum(1).tolist() == [7, 6]  # A agrees with 7 of the 10 points, B with 6
    res = MaskConsensusFilter(seg).refine(image, coords, labels)
    np.testing.assert_array_equal(res.kept, [True] * 4 + [False, False] + [True] * 3 + [False])
    assert res.steps == 3 and seg.calls == [(6, True), (1, False)]  # one row per positive, then the mask
    np.testing.assert_array_equal(res.mask, seg.region(2))
    np.testing.assert_array_equal(res.point_coords, coords[res.kept])
    # with a budget, the most-disagreed first: the negative on A agrees with no near-best
    # hypothesis but B; the positives on B with B and the whole image
    res = MaskConsensusFilter(seg).refine(image, coords, labels, max_steps=1)
    np.testing.assert_array_equal(res.kept, np.arange(10) != 9)
    assert MaskConsensusFilter(seg).refine(image, coords, labels, max_steps=0).kept.all()
    # no positive, or a single point: no hypothesis, nothing dropped
    for c, l in ((coords[6:], labels[6:]), (coords[:1], labels[:1])):
        res = MaskConsensusFilter(seg).refine(image, c, l)
        assert res.kept.all() and res.steps == 0
    with pytest.raises(ValueError, match="max_steps"):
        MaskConsensusFilter(seg).refine(image, coords, labels, max_steps=-1)


def test_consensus_refines_again_without_the_minority(tiny_segmenter, random_image, monkeypatch):
    """consensus=True: when the consensus mask agrees with more input points than the
    refined mask, refine again without the points that disagree with it, and return the
    second output only if its mask agrees with more input points."""
    stop = _scripted(tiny_segmenter, lambda obs: 2 * N)  # stops at once: the output is the input
    CLABELS = np.array([1, 1, 1, 0, 1])  # on the random model, dropping point 0 or 2 raises the agreement
    checked = PromptDefender(stop.model, tiny_segmenter, grid=GRID, max_steps=12, select="last", polish=False,
                             consensus=True)

    def agreement(c, l):
        return int(mask_agreement(tiny_segmenter.predict(random_image, c, l).masks[:1], POINTS, CLABELS).sum())

    plain = stop.refine(random_image, POINTS, CLABELS)
    base = agreement(POINTS, CLABELS)
    # each single drop, as the consensus' only disagreeing point
    outcomes = set()
    for k in range(len(POINTS)):
        keep = np.arange(len(POINTS)) != k
        monkeypatch.setattr(MaskConsensusFilter, "votes", lambda self, e, c, l, k=k: [(np.array([k]), len(POINTS))] * len(c))
        res = checked.refine(random_image, POINTS, CLABELS)
        _check_result(res, POINTS, CLABELS)
        better = agreement(POINTS[keep], CLABELS[keep]) > base
        outcomes.add(better)
        np.testing.assert_array_equal(res.kept, keep if better else np.ones(len(POINTS), bool))
        assert res.steps == int(better)
        # the trace says the consensus check acted, and whether its second output was kept
        notes = [t for t in res.trace if t.startswith("consensus: ")]
        assert len(notes) == 1 and notes[0].endswith(", kept" if better else ", not kept"), res.trace
        many = checked.refine_many([random_image] * 2, [POINTS, POINTS], [CLABELS, CLABELS])
        for r in many:
            np.testing.assert_array_equal(r.kept, res.kept)
    assert outcomes == {True, False}, "the test set should have drops on both sides"
    # a consensus that agrees with no more points than the output: the output stands
    monkeypatch.setattr(MaskConsensusFilter, "votes", lambda self, e, c, l: [(np.array([0]), base)] * len(c))
    res = checked.refine(random_image, POINTS, CLABELS)
    np.testing.assert_array_equal(res.kept, plain.kept)
    for bad in (1, "yes", None):
        with pytest.raises(ValueError, match="consensus must be True or False"):
            PromptDefender(stop.model, tiny_segmenter, grid=GRID, consensus=bad)


def test_consensus_quorum_gates_the_check(tiny_segmenter, random_image, monkeypatch):
    """consensus_quorum: the check acts only when the consensus mask agrees with at least
    that share of the input points (a share of exactly the quorum counts)."""
    stop = _scripted(tiny_segmenter, lambda obs: 2 * N)  # the output is the input
    CLABELS = np.ones(len(POINTS), np.int64)  # on the random model, its mask agrees with 2 of 5; dropping point 2 raises that
    n = len(POINTS)

    def agreement(c, l):
        return int(mask_agreement(tiny_segmenter.predict(random_image, c, l).masks[:1], POINTS, CLABELS).sum())

    base = agreement(POINTS, CLABELS)
    k = next(k for k in range(n) if agreement(np.delete(POINTS, k, 0), np.delete(CLABELS, k)) > base)
    count = base + 1  # the consensus beats the output by one point
    monkeypatch.setattr(MaskConsensusFilter, "votes", lambda self, e, c, l: [(np.array([k]), count)] * len(c))
    cases = [(count / n, True), (0.0, True), (1.0, count == n)] + ([((count + 0.5) / n, False)] if count < n else [])
    assert any(not acts for _, acts in cases), f"count {count} of {n}: no case below the quorum"
    for quorum, acts in cases:
        d = PromptDefender(stop.model, tiny_segmenter, grid=GRID, max_steps=12, select="last", consensus=True,
                           consensus_quorum=quorum)
        assert d.consensus_quorum == quorum
        res = d.refine(random_image, POINTS, CLABELS)
        np.testing.assert_array_equal(res.kept, np.arange(n) != k if acts else np.ones(n, bool), err_msg=f"quorum {quorum}")
    assert PromptDefender(stop.model, tiny_segmenter, grid=GRID).consensus_quorum == pytest.approx(2 / 3)
    for bad in (-0.1, 1.5, True, "2/3", None):
        with pytest.raises(ValueError, match=r"consensus_quorum must be a number in \[0, 1\]"):
            PromptDefender(stop.model, tiny_segmenter, grid=GRID, consensus=True, consensus_quorum=bad)


def test_keep_consistent_returns_a_self_consistent_input(tiny_segmenter, random_image, monkeypatch):
    """keep_consistent=True: a set whose one-click vote and whose own SAM mask agree with
    every point comes back unchanged without a rollout; any sign of a wrong click (a
    point outside the vote's majority, a point SAM's mask disagrees with), no vote (one
    point, no positive), a budget of 0 or the switch off: the usual refinement."""
    n = len(POINTS)
    stop = _scripted(tiny_segmenter, lambda obs: 2 * N)
    d = PromptDefender(stop.model, tiny_segmenter, grid=GRID, max_steps=12, select="last", consensus=False,
                       keep_consistent=True)
    assert PromptDefender(stop.model, tiny_segmenter, grid=GRID).keep_consistent is True  # the default
    rollouts = []
    real_refine_states = PromptDefender.refine_states

    def counted(self, items, *args, **kwargs):
        rollouts.append(len(items))
        return real_refine_states(self, items, *args, **kwargs)

    monkeypatch.setattr(PromptDefender, "refine_states", counted)
    vote = [(np.zeros(0, np.int64), n)]
    monkeypatch.setattr(MaskConsensusFilter, "votes", lambda self, e, c, l: [vote[0] if len(ci) == n else (np.zeros(0, np.int64), len(ci)) for ci in c])
    fake = {}  # labels -> the mask SAM "gives" for POINTS with them (a 3 x 3 square on each positive)
    real_predict = tiny_segmenter.predict

    def predict(emb, point_coords, point_labels, *args, **kwargs):
        c, l = np.asarray(point_coords), np.asarray(point_labels)
        if c.shape == POINTS.shape and np.array_equal(c, POINTS) and tuple(l) in fake and not kwargs.get("return_all"):
            return Prediction(fake[tuple(l)][None], np.array([0.77], np.float32), np.zeros((1, 64, 64), np.float32))
        return real_predict(emb, point_coords, point_labels, *args, **kwargs)

    monkeypatch.setattr(tiny_segmenter, "predict", predict)

    def square_mask(labels):
        m = np.zeros(IMAGE_HW, bool)
        for (x, y), lab in zip(POINTS.astype(int), labels):
            if lab == 1:
                m[max(0, y - 1): y + 2, max(0, x - 1): x + 2] = True
        return m

    fake[tuple(LABELS)] = square_mask(LABELS)  # agrees with every point
    res = d.refine(random_image, POINTS, LABELS)
    assert rollouts == [] and res.steps == 0 and res.kept.all() and res.score == pytest.approx(0.77)
    assert len(res.trace) == 1 and res.trace[0].startswith("kept the input: consistent")
    np.testing.assert_array_equal(res.mask, fake[tuple(LABELS)])
    np.testing.assert_array_equal(res.point_coords, POINTS)
    np.testing.assert_array_equal(res.point_labels, LABELS)
    # refine_many: the consistent set is kept, the other (one point off the vote) refined, in order
    other = LABELS.copy()
    other[0] = 0
    fake[tuple(other)] = square_mask(other)
    vote[0] = (np.zeros(0, np.int64), n)
    many = d.refine_many([random_image] * 2, [POINTS, POINTS], [LABELS, LABELS])
    assert rollouts == [] and all(r.steps == 0 and r.score == pytest.approx(0.77) for r in many)
    # signs of a wrong click: a point outside the vote's majority ...
    vote[0] = (np.array([1]), n - 1)
    d.refine(random_image, POINTS, LABELS)
    assert rollouts == [1]
    vote[0] = (np.zeros(0, np.int64), n)
    # ... or SAM's mask of the input disagrees with a point (a negative inside it)
    bad = square_mask(LABELS)
    x, y = POINTS[2].astype(int)
    bad[y, x] = True
    fake[tuple(LABELS)] = bad
    d.refine(random_image, POINTS, LABELS)
    assert rollouts == [1, 1]
    fake[tuple(LABELS)] = square_mask(LABELS)
    # no vote: a single point, or no positive (the fake mask of no positive is empty: consistent)
    negatives = np.zeros(n, np.int64)
    fake[tuple(negatives)] = square_mask(negatives)
    d.refine(random_image, POINTS[:1], LABELS[:1])
    d.refine(random_image, POINTS, negatives)
    assert rollouts == [1, 1, 1, 1]
    # budget 0: the mapped prompts decoded unchanged, no vote needed either
    assert d.refine(random_image, POINTS, LABELS, max_steps=0).steps == 0
    # the switch off: refined as usual
    d.keep_consistent = False
    d.refine(random_image, POINTS, LABELS)
    assert rollouts[-1] == 1 and len(rollouts) >= 5
    for bad_value in (1, "yes", None):
        with pytest.raises(ValueError, match="keep_consistent must be True or False"):
            PromptDefender(stop.model, tiny_segmenter, grid=GRID, keep_consistent=bad_value)


def test_consensus_flags(capsys):
    """--consensus / --no-consensus and --consensus-quorum (ppd refine and the benches):
    defaults from the library, a quorum outside [0, 1] is a usage error."""
    import argparse

    from ppd.agents.defender import DEFAULT_CONSENSUS, DEFAULT_CONSENSUS_QUORUM, add_consensus_argument

    p = argparse.ArgumentParser(prog="x")
    add_consensus_argument(p)
    args = p.parse_args([])
    assert (args.consensus, args.consensus_quorum) == (DEFAULT_CONSENSUS, DEFAULT_CONSENSUS_QUORUM)
    args = p.parse_args(["--no-consensus", "--consensus-quorum", "0.5"])
    assert (args.consensus, args.consensus_quorum) == (False, 0.5)
    for bad, msg in (("2", "must be in [0, 1], got 2"), ("-0.1", "must be in [0, 1]"), ("x", "must be a number in [0, 1], got 'x'")):
        with pytest.raises(SystemExit):
            p.parse_args(["--consensus-quorum", bad])
        assert f"argument --consensus-quorum: {msg}" in capsys.readouterr().err


def test_keep_consistent_flags():
    """--keep-consistent / --no-keep-consistent: the library default, and off; ppd refine has it."""
    import argparse

    from ppd.agents.defender import DEFAULT_KEEP_CONSISTENT, add_keep_consistent_argument
    from ppd.cli.refine import add_arguments as add_refine_arguments

    p = argparse.ArgumentParser(prog="x")
    add_keep_consistent_argument(p)
    assert p.parse_args([]).keep_consistent is DEFAULT_KEEP_CONSISTENT is True
    assert p.parse_args(["--no-keep-consistent"]).keep_consistent is False
    assert p.parse_args(["--keep-consistent"]).keep_consistent is True
    r = argparse.ArgumentParser(prog="ppd refine")
    add_refine_arguments(r)
    assert r.parse_args(["--image", "a.png", "--points", "1,2,1", "--no-keep-consistent"]).keep_consistent is False
    assert "--keep-consistent" in r.format_help()


def test_no_refine_is_identity(tiny_segmenter, random_image):
    res = NoRefine(tiny_segmenter).refine(random_image, POINTS, LABELS)
    _check_result(res, POINTS, LABELS)
    assert res.kept.all() and res.steps == 0
    np.testing.assert_array_equal(res.point_coords, POINTS)
    pred = tiny_segmenter.predict(random_image, POINTS, LABELS)
    np.testing.assert_array_equal(res.mask, pred.masks[0])
    assert res.score == pytest.approx(float(pred.scores[0]))
    with pytest.raises(ValueError, match="outside"):
        NoRefine(tiny_segmenter).refine(random_image, [[500.0, 5.0]], [1])
    with pytest.raises(ValueError, match="empty"):
        NoRefine(tiny_segmenter).refine(random_image, np.zeros((0, 2)), [])


def test_random_drop_is_seeded_and_keeps_one(tiny_segmenter, random_image):
    a = RandomDrop(tiny_segmenter, p=0.5, seed=3)
    b = RandomDrop(tiny_segmenter, p=0.5, seed=3)
    runs_a = [a.refine(random_image, POINTS, LABELS).kept for _ in range(3)]
    runs_b = [b.refine(random_image, POINTS, LABELS).kept for _ in range(3)]
    for ka, kb in zip(runs_a, runs_b):
        np.testing.assert_array_equal(ka, kb)
    assert len({tuple(k) for k in runs_a}) > 1  # successive calls draw anew
    res = RandomDrop(tiny_segmenter, p=1.0).refine(random_image, POINTS, LABELS)
    assert res.kept.sum() == 1 and res.steps == len(POINTS) - 1
    _check_result(res, POINTS, LABELS)
    assert RandomDrop(tiny_segmenter, p=0.0).refine(random_image, POINTS, LABELS).kept.all()
    res = RandomDrop(tiny_segmenter, p=1.0).refine(random_image, POINTS, LABELS, max_steps=2)
    assert res.kept.sum() == len(POINTS) - 2
    with pytest.raises(ValueError, match="p must be"):
        RandomDrop(tiny_segmenter, p=1.5)


# ----------------------------------------------------------------------------- benchmark
def test_bench_sets_are_the_bench_draw(run_dir, tiny_segmenter):
    """bench_sets: the bench's coarse sets (bench_items) on every domain, and on the
    training domain each attacker's sets, named by attacker (own: the run's)."""
    from ppd.bench.defense_sets import DEFENSE_SEED, bench_items, bench_sets, defender_world

    d = PromptDefender.load(run_dir, segmenter=tiny_segmenter, device="cpu")
    sets = bench_sets(d, str(run_dir), "train", 2, (None, str(run_dir)))
    assert list(sets) == ["coarse", "att:own", f"att:{run_dir.name}"]
    items = bench_items(defender_world(d, ProceduralScenes("train", 2, seed=DEFENSE_SEED)), d.config, 2)
    for (rec, obj, coords, labels), it in zip(sets["coarse"], items):
        assert obj == it[1] and np.array_equal(rec.scene.image, it[0].scene.image)
        np.testing.assert_array_equal(coords, it[4].point_coords)
        np.testing.assert_array_equal(labels, it[4].point_labels)
    for a, b in zip(sets["att:own"], sets[f"att:{run_dir.name}"]):  # the same attacker file
        assert a[2].shape[1] == 2 and set(a[3].tolist()) <= {0, 1}
        np.testing.assert_array_equal(a[2], b[2])
        np.testing.assert_array_equal(a[3], b[3])
    assert list(bench_sets(d, str(run_dir), "texture", 1)) == ["coarse"]


def test_bench_attacker_none_without_one_and_clear_error_for_a_bad_path(run_dir, tiny_segmenter, tmp_path):
    from ppd.bench.defense_sets import bench_attacker
    from ppd.robustness.dqn_attack import AttackerError

    d = PromptDefender.load(run_dir, segmenter=tiny_segmenter, device="cpu")
    assert bench_attacker(str(tmp_path), None, d, "cpu") is None  # a folder without attacker.zip
    own = bench_attacker(str(run_dir), None, d, "cpu")
    assert own.observation_space["state"].shape[0] == d.model.observation_space["state"].shape[0]
    with pytest.raises(AttackerError, match="not found"):
        bench_attacker(str(run_dir), str(tmp_path / "missing"), d, "cpu")


def test_oracle_state_removes_exactly_the_wrong_label_prompts():
    from ppd.bench.defense_sets import oracle_state

    gt = np.zeros((20, 20), bool)
    gt[5:15, 5:15] = True
    pts = np.array([[10, 10], [2, 2], [12, 8], [18, 3], [7, 7]], np.float32)  # (x, y)
    st = np.array([POSITIVE, POSITIVE, NEGATIVE, NEGATIVE, INACTIVE], np.int8)
    # in & positive: right; out & positive: wrong; in & negative: wrong; out & negative: right
    assert oracle_state(st, pts, gt).tolist() == [POSITIVE, INACTIVE, INACTIVE, NEGATIVE, INACTIVE]
    all_wrong = np.array([INACTIVE, POSITIVE, NEGATIVE, INACTIVE, INACTIVE], np.int8)
    assert oracle_state(all_wrong, pts, gt).tolist() == [INACTIVE, POSITIVE, INACTIVE, INACTIVE, INACTIVE]
    assert all_wrong.tolist() == [INACTIVE, POSITIVE, NEGATIVE, INACTIVE, INACTIVE]  # input untouched


def test_wrong_label_probability_reads_the_label_head(tiny_segmenter, random_image):
    """A defender with the label head gives, per input point, sigmoid of the head's logit
    at its node (merged points share it), computed without ground truth; refine still
    works on it; a defender without the head refuses."""
    world = PromptWorld(tiny_segmenter, ProceduralScenes("train", 2, seed=0))
    env = DummyVecEnv([lambda: PointPromptEnv("defender", world=world, probe=True, label_target=True)])
    model = make_dqn(env, "defender", hidden_dim=16, n_layers=1, seed=0, device="cpu", buffer_size=64, label_aux=0.5)
    with torch.no_grad():
        model.policy.q_net.label_head.bias.fill_(0.3)
    d = PromptDefender(model, tiny_segmenter, grid=GRID, max_steps=TRAIN_MAX_STEPS)
    assert d.has_label_head and d.label_target
    p = d.wrong_label_probability(random_image, MERGED, MERGED_LABELS)
    assert p.shape == (3,) and p.dtype == np.float32 and ((p > 0) & (p < 1)).all()
    assert p[0] == p[1]  # points 0 and 1 share node 35
    # the same value from the network directly, on the observation with unknown targets
    from ppd.envs.point_prompt_env import UNKNOWN_LABEL, build_observation
    from ppd.envs.world import state_from_prompts

    rec = d.record(random_image)
    st, pts, node = state_from_prompts(MERGED, MERGED_LABELS, rec.grid, rec.hw, rec.centres)
    out = d.world.evaluate([(rec, -1, st, pts)], probe=True)[0]
    obs = build_observation(rec, st, pts, out, 0, TRAIN_MAX_STEPS, probe=True, label_target=True)
    assert (obs["label_target"] == UNKNOWN_LABEL).all()
    with torch.no_grad():
        logits = model.policy.q_net.label_logits(model.policy.obs_to_tensor({k: v[None] for k, v in obs.items()})[0])[0]
    np.testing.assert_allclose(p, torch.sigmoid(logits[node]).numpy(), rtol=1e-5)
    _check_result(d.refine(random_image, POINTS, LABELS), POINTS, LABELS)
    plain = PromptDefender(_make_model(world, "defender"), tiny_segmenter, grid=GRID)
    assert not plain.has_label_head
    with pytest.raises(ValueError, match="no wrong-label network"):
        plain.wrong_label_probability(random_image, POINTS, LABELS)


def test_min_score_gain_guard(run_dir, tiny_segmenter, random_image):
    """The refined set comes back only if SAM's predicted IoU for it is at least the
    input's plus min_score_gain (negative: a tolerated drop), else the input unchanged."""
    from ppd.agents.defender import DEFAULT_MIN_SCORE_GAIN

    kw = dict(segmenter=tiny_segmenter, device="cpu", select="last")
    assert PromptDefender.load(run_dir, **kw).min_score_gain == DEFAULT_MIN_SCORE_GAIN == -0.05  # on by default
    plain = PromptDefender.load(run_dir, min_score_gain=None, **kw)
    ref = NoRefine(tiny_segmenter).refine(random_image, POINTS, LABELS)
    r = plain.refine(random_image, POINTS, LABELS)
    assert r.steps > 0  # the random defender changes this set
    diff = r.score - ref.score

    def refine_with(gain):
        return PromptDefender.load(run_dir, min_score_gain=gain, **kw).refine(random_image, POINTS, LABELS)

    strict = refine_with(0.99)  # no refined set gains 0.99: the input comes back
    assert strict.steps == 0 and strict.kept.all() and strict.score == pytest.approx(ref.score)
    np.testing.assert_array_equal(strict.point_labels, LABELS)
    np.testing.assert_array_equal(strict.mask, ref.mask)
    # just below and just above the refined set's own margin over the input (either sign);
    # above it the input comes back unless the refined mask follows more input clicks
    passes, fails = refine_with(diff - 1e-3), refine_with(diff + 1e-3)
    assert passes.steps == r.steps and passes.score == pytest.approx(r.score)
    np.testing.assert_array_equal(passes.kept, r.kept)
    np.testing.assert_array_equal(passes.mask, r.mask)
    follows_more = mask_agreement(r.mask[None], POINTS, LABELS).sum() > mask_agreement(ref.mask[None], POINTS, LABELS).sum()
    expect = r if follows_more else ref
    assert fails.steps == expect.steps and fails.score == pytest.approx(expect.score)
    np.testing.assert_array_equal(fails.mask, expect.mask)
    for bad in (-1.0, 1.0, 1.5, "0.1", True):
        with pytest.raises(ValueError, match=r"min_score_gain must be a number in \(-1, 1\) or None"):
            PromptDefender.load(run_dir, min_score_gain=bad, **kw)


def test_min_score_gain_guard_yields_to_the_input_clicks(run_dir, tiny_segmenter, random_image):
    """A refined set SAM rates below the input (past the tolerance) is still returned when
    its mask agrees with more input clicks than SAM's mask of the input; else the input,
    with the trace saying which."""
    from ppd.agents.defender import make_result
    from ppd.agents.guards import score_guard

    d = PromptDefender.load(run_dir, segmenter=tiny_segmenter, device="cpu")  # the default guard, -0.05
    prepared = d.prepare(random_image, POINTS, LABELS, None)
    ref = tiny_segmenter.predict(random_image, POINTS, LABELS)
    agree_in = int(mask_agreement(ref.masks[:1], POINTS, LABELS).sum())
    assert agree_in < len(LABELS)  # this model's input mask misses a click: room to follow more
    follows = np.zeros(random_image.shape[:2], bool)  # agrees with every click
    for (x, y), label in zip(POINTS.astype(int), LABELS):
        follows[y, x] = bool(label)
    kept = np.ones(len(LABELS), bool)
    low, high = float(ref.scores[0]) - 0.2, float(ref.scores[0]) - 0.01
    for mask, score, decided in ((follows, low, "agreement"), (~follows, low, "reverted"), (~follows, high, "score")):
        res = make_result(POINTS, LABELS, kept, mask, score, steps=1, trace=("rollout: 1 steps, select=score",))
        out = score_guard(d.segmenter, prepared, res, d.min_score_gain)
        if decided == "score":  # within the tolerance: the result itself
            assert out is res
        elif decided == "agreement":  # below it, but follows more clicks: kept, and said so
            assert out.steps == 1 and out.score == res.score
            np.testing.assert_array_equal(out.mask, res.mask)
            assert out.trace[0] == res.trace[0] and out.trace[-1].startswith("score guard:")
            assert f"kept: its mask agrees with {len(LABELS)} > {agree_in} input prompts" in out.trace[-1]
        else:
            assert out.steps == 0 and out.score == pytest.approx(float(ref.scores[0]))
            np.testing.assert_array_equal(out.mask, ref.masks[0])
            assert out.trace[0] == res.trace[0] and out.trace[-1].startswith("reverted by the score guard")


def test_min_score_gain_flag(capsys):
    """--min-score-gain: a number in (-1, 1) or off, in ppd refine and both benches."""
    import argparse

    from ppd.agents.defender import DEFAULT_MIN_SCORE_GAIN, inference_options
    from ppd.agents.refine_config import refine_config_from_args
    from ppd.cli.refine import add_arguments as add_refine_arguments

    p = argparse.ArgumentParser()
    add_refine_arguments(p)
    base = ["--image", "a.png", "--points", "1,2,1"]
    # ppd refine's flags hold no value when not given (a --config file's stays), so the
    # default shows in the config they make
    assert not hasattr(p.parse_args(base), "min_score_gain")
    assert refine_config_from_args(p.parse_args(base)).min_score_gain == DEFAULT_MIN_SCORE_GAIN
    assert p.parse_args(base + ["--min-score-gain", "off"]).min_score_gain is None
    assert p.parse_args(base + ["--min-score-gain", "None"]).min_score_gain is None
    assert p.parse_args(base + ["--min-score-gain", "-0.1"]).min_score_gain == -0.1
    assert inference_options(p.parse_args(base + ["--min-score-gain", "0.02"]))["min_score_gain"] == 0.02
    for bad in ("1", "-1", "x"):
        with pytest.raises(SystemExit):
            p.parse_args(base + ["--min-score-gain", bad])
    for mod in ("ppd.bench.defense", "ppd.bench.generators"):
        import importlib

        with pytest.raises(SystemExit):  # the flag exists there too, with the same check
            importlib.import_module(mod).main(["--min-score-gain", "2"])
        assert "--min-score-gain: must be in (-1, 1) or 'off', got '2'" in capsys.readouterr().err


def test_polish_is_a_greedy_score_filter_from_the_output(tiny_segmenter, random_image):
    """polish=True: from the rollout's output, drop the prompt whose removal raises the
    rollout's predicted IoU most while one does (checked against the world's scores of
    every leave-one-out state, not its probes), within the step budget."""
    stop = _scripted(tiny_segmenter, lambda obs: 2 * N)  # stops at once: polish alone acts
    polished = PromptDefender(stop.model, tiny_segmenter, grid=GRID, max_steps=12, select="last", polish=True,
                              consensus=False)  # polish alone
    rec = polished.record(random_image)
    from ppd.envs.world import state_from_prompts

    st, pts, node = state_from_prompts(POINTS, LABELS, rec.grid, rec.hw, rec.centres)

    def score(s):
        return polished.world.evaluate([(rec, -1, s, pts)])[0].score

    removed = []
    while (st != 0).sum() > 1:
        cur = score(st)
        gains = {int(i): score(np.where(np.arange(N) == i, 0, st)) - cur for i in np.flatnonzero(st)}
        i = max(gains, key=gains.get)
        if not gains[i] > 0:
            break
        st = np.where(np.arange(N) == i, 0, st)
        removed.append(i)
    assert removed, "the test set should have a removal that raises the score"
    assert stop.refine(random_image, POINTS, LABELS).steps == 0  # without polish: the input
    res = polished.refine(random_image, POINTS, LABELS)
    assert res.steps == len(removed)
    np.testing.assert_array_equal(res.kept, ~np.isin(node, removed))
    _check_result(res, POINTS, LABELS)
    # the removals count against the budget; 0 leaves the input as it is
    assert polished.refine(random_image, POINTS, LABELS, max_steps=1).steps == 1
    np.testing.assert_array_equal(polished.refine(random_image, POINTS, LABELS, max_steps=1).kept, node != removed[0])
    assert polished.refine(random_image, POINTS, LABELS, max_steps=0).kept.all()
    # refine_many polishes each set as refine does
    many = polished.refine_many([random_image] * 2, [POINTS, POINTS[:3]], [LABELS, LABELS[:3]])
    np.testing.assert_array_equal(many[0].kept, res.kept)
    np.testing.assert_array_equal(many[1].kept, polished.refine(random_image, POINTS[:3], LABELS[:3]).kept)
    for bad in (1, "yes", None):
        with pytest.raises(ValueError, match="polish must be True or False"):
            PromptDefender(stop.model, tiny_segmenter, grid=GRID, polish=bad)
