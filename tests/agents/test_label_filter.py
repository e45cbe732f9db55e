"""The wrong-label filter (``ppd.agents.label_filter``): its pieces, its stage in
``ppd train``, and how ``PromptDefender`` applies it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ppd.agents.defender import PromptDefender
from ppd.agents.label_filter import (
    FILTER_FILE,
    FILTER_META,
    FILTER_ACTIONS,
    RELABEL_GATES,
    THRESHOLDS,
    apply_filter,
    candidate_name,
    collect_examples,
    filter_probabilities,
    fit_label_head,
    label_auc,
    load_label_filter,
    random_walk,
    relabel_gate_mask,
)
from ppd.agents.train import TrainConfig, train
from ppd.data.scenes import ProceduralScenes
from ppd.envs.point_prompt_env import RIGHT_LABEL, UNKNOWN_LABEL, WRONG_LABEL, label_targets
from ppd.envs.world import INACTIVE, NEGATIVE, POSITIVE, PromptWorld, state_from_prompts
from ppd.prompts import coarse_prompts

# four points in four different 8 x 6 px patches of the (96, 128) test image
POINTS = np.array([[10, 10], [50, 40], [100, 80], [120, 5]], np.float32)
LABELS = np.array([1, 1, 0, 1])


def _config(tiny_checkpoint, **kw) -> TrainConfig:
    base = dict(
        seed=0, device="cpu", checkpoint=tiny_checkpoint, n_envs=2, rounds=1, attacker_steps=16, defender_steps=24,
        scenes=3, eval_scenes=2, learning_starts=8, buffer_size=200, batch_size=8, target_update_interval=16,
        hidden_dim=16, n_examples=1, filter_scenes=3, filter_walk=1, filter_epochs=2, chooser_pairs=0,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_segmenter, tiny_checkpoint):
    """A tiny trained run with its label filter, and its metrics."""
    out = tmp_path_factory.mktemp("filtered") / "run"
    bars: dict[str, list[int]] = {}  # description -> [total, ticks]

    def progress(desc, total):
        bars[desc] = [total, 0]
        return lambda n=1: bars[desc].__setitem__(1, bars[desc][1] + n)

    metrics = train(_config(tiny_checkpoint), out, segmenter=tiny_segmenter, progress=progress)
    metrics["_bars"] = bars
    return out, metrics


# ----------------------------------------------------------------------------- pieces
def test_apply_filter_removes_above_threshold_and_keeps_one():
    st = np.array([POSITIVE, NEGATIVE, INACTIVE, POSITIVE], np.uint8)
    prob = np.array([0.9, 0.2, 0.99, 0.6], np.float32)
    assert apply_filter(st, prob, 0.5).tolist() == [INACTIVE, NEGATIVE, INACTIVE, INACTIVE]
    assert apply_filter(st, prob, 1.0).tolist() == st.tolist()  # 1.0: off
    # every prompt above the threshold: the least suspect active one stays (not the inactive node)
    assert apply_filter(st, prob, 0.1).tolist() == [INACTIVE, NEGATIVE, INACTIVE, INACTIVE]
    assert apply_filter(st, prob, 0.1) is not st and st[0] == POSITIVE  # input untouched


def test_apply_filter_relabels_above_threshold():
    st = np.array([POSITIVE, NEGATIVE, INACTIVE, POSITIVE, NEGATIVE], np.uint8)
    prob = np.array([0.9, 0.2, 0.99, 0.6, 0.8], np.float32)
    # flagged prompts flip (positive <-> negative); inactive nodes stay inactive; nothing is removed
    assert apply_filter(st, prob, 0.5, "relabel").tolist() == [NEGATIVE, NEGATIVE, INACTIVE, NEGATIVE, POSITIVE]
    assert apply_filter(st, prob, 0.1, "relabel").tolist() == [NEGATIVE, POSITIVE, INACTIVE, NEGATIVE, POSITIVE]
    assert apply_filter(st, prob, 1.0, "relabel").tolist() == st.tolist()
    assert st[0] == POSITIVE  # input untouched
    # flipping would leave no positive (both flagged, no flagged negative): the least
    # suspect positive (node 3, 0.6) keeps its label
    st2 = np.array([POSITIVE, NEGATIVE, INACTIVE, POSITIVE], np.uint8)
    prob2 = np.array([0.9, 0.2, 0.99, 0.6], np.float32)
    assert apply_filter(st2, prob2, 0.5, "relabel").tolist() == [NEGATIVE, NEGATIVE, INACTIVE, POSITIVE]
    # a set of negatives only is relabelled as flagged (there was no positive to keep)
    neg = np.array([NEGATIVE, NEGATIVE], np.uint8)
    assert apply_filter(neg, np.array([0.9, 0.1], np.float32), 0.5, "relabel").tolist() == [POSITIVE, NEGATIVE]
    with pytest.raises(ValueError, match="filter action must be one of"):
        apply_filter(st, prob, 0.5, "drop")


def test_label_auc_uses_known_nodes_only():
    targets = np.array([[WRONG_LABEL, RIGHT_LABEL, UNKNOWN_LABEL], [RIGHT_LABEL, WRONG_LABEL, UNKNOWN_LABEL]])
    good = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 1.0]])  # the unknown nodes would spoil a ranking
    assert label_auc(good, targets) == pytest.approx(1.0)
    assert label_auc(1.0 - good, targets) == pytest.approx(0.0)


def test_random_walk_changes_one_prompt_per_step(tiny_segmenter):
    world = PromptWorld(tiny_segmenter, ProceduralScenes("train", 1, seed=0))
    rec = world.image(0)
    st, pts, _ = state_from_prompts(POINTS, LABELS, rec.grid, rec.hw, rec.centres)
    states = random_walk([(rec, 0, st, pts)], 3, relabel=True, rng=np.random.default_rng(0))
    assert len(states) == 4 and states[0][2] is st
    for (_, _, a, _), (_, _, b, _) in zip(states, states[1:]):
        (node,) = np.flatnonzero(a != b)  # one prompt changes per step
        assert a[node] != INACTIVE
        if b[node] != INACTIVE:  # a relabel: of a prompt not relabelled before (rollout rule)
            assert a[node] == st[node]
    # without relabelling every step is a removal, and the last prompt is never removed
    only = random_walk([(rec, 0, st, pts)], 10, relabel=False, rng=np.random.default_rng(1))
    assert len(only) == 4 and (only[-1][2] != INACTIVE).sum() == 1


def test_examples_carry_ground_truth_targets(tiny_segmenter):
    world = PromptWorld(tiny_segmenter, ProceduralScenes("train", 2, seed=0))
    rng = np.random.default_rng(0)
    states = []
    for i in range(2):
        rec = world.image(i)
        cp = coarse_prompts(rec.scene.masks[0], rng).prompts
        st, pts, _ = state_from_prompts(cp.point_coords, cp.point_labels, rec.grid, rec.hw, rec.centres)
        states.append((rec, 0, st, pts))
    opts = {"probe": True, "node_uncertainty": False, "label_target": True}
    data = collect_examples(world, states, opts, max_steps=12)
    assert data["state"].shape == (2, world.image(0).num_nodes) and data["probe_score"].shape == data["state"].shape
    for k, (rec, obj, st, pts) in enumerate(states):
        assert data["label_target"][k].tolist() == label_targets(st, pts, rec.scene.masks[obj]).tolist()
        assert data["step_frac"][k, 0] == 0.0


def test_fit_label_head_lowers_the_loss(tiny_segmenter, tiny_checkpoint, tmp_path):
    from ppd.agents.dqn import make_dqn
    from ppd.envs.vec_env import PromptVecEnv

    cfg = _config(tiny_checkpoint)
    world = PromptWorld(tiny_segmenter, ProceduralScenes("train", 4, seed=0))
    rng = np.random.default_rng(0)
    starts = []
    for i in range(4):
        rec = world.image(i)
        for _ in range(3):
            cp = coarse_prompts(rec.scene.masks[0], rng, p_flip=0.4).prompts
            starts.append((rec, 0, *state_from_prompts(cp.point_coords, cp.point_labels, rec.grid, rec.hw, rec.centres)[:2]))
    venv = PromptVecEnv(1, "defender", world=world, seed=0, **{**cfg.env_kwargs("defender"), "label_target": True})
    model = make_dqn(venv, "defender", seed=0, device="cpu", **{**cfg.dqn_kwargs("defender"), "label_aux": 1.0})
    from ppd.envs.point_prompt_env import observation_options

    data = collect_examples(world, random_walk(starts, 2, True, rng), observation_options(model.observation_space), 12)
    ticks = []
    losses = fit_label_head(model, data, 120, seed=0, tick=lambda: ticks.append(1))
    assert len(losses) == len(ticks) == 120
    assert losses[-1] < 0.5 * losses[0]
    prob = filter_probabilities(model, data)
    assert prob.shape == data["state"].shape and ((prob >= 0) & (prob <= 1)).all()
    assert label_auc(prob, data["label_target"]) > 0.8  # fits its own examples


# ----------------------------------------------------------------------------- the stage in ppd train
def test_train_writes_the_filter_and_its_metrics(run):
    out, metrics = run
    meta = json.loads((out / FILTER_META).read_text())
    assert (out / FILTER_FILE).is_file() and metrics["label_filter"] == meta
    assert meta["threshold"] in THRESHOLDS and meta["action"] in FILTER_ACTIONS
    assert meta["scenes"] == 3 and meta["selection_scenes"] == 2
    assert len(meta["loss"]) == 2 and meta["examples"] > 3 * 4  # 4 starts per scene, walks after them
    names = {f"{a}@{t:g}" for a in FILTER_ACTIONS for t in THRESHOLDS if t < 1.0} | {"off"}
    assert meta["relabel_gate"] == 0.0  # the default: no gate
    for kind in ("coarse", "attacked"):
        assert set(meta["selection_quality"][kind]) == names
    mean = {n: (meta["selection_quality"]["coarse"][n] + meta["selection_quality"]["attacked"][n]) / 2 for n in names}
    chosen = candidate_name(meta["action"], meta["threshold"], meta["relabel_gate"])
    assert mean[chosen] == pytest.approx(max(mean.values()))
    # a progress bar per part of the stage, none overrun (the rollout ends when all episodes do)
    bars = metrics["_bars"]
    assert list(bars) == ["label filter: examples", "label filter: epochs", "label filter: selection, observations",
                          "label filter: selection, rollout steps"]
    assert bars["label filter: examples"] == [meta["examples"]] * 2 and bars["label filter: epochs"] == [2, 2]
    assert 1 <= bars["label filter: selection, rollout steps"][1] <= bars["label filter: selection, rollout steps"][0]


def test_selection_table_and_unfiltered_metrics_recomputed(run, tiny_segmenter):
    """The selection's table and the final metrics without the filter, recomputed from the
    run folder alone: the defender's greedy rollouts on the held-out selection scenes,
    unfiltered ("off") and after the saved filter removed the prompts above 0.5 (its
    probabilities taken without ground truth, as refine does), and on the eval scenes'
    coarse sets."""
    from ppd.agents.dqn import MaskedDQN
    from ppd.agents.evaluation import EVAL_SEED, eval_items
    from ppd.agents.label_filter import SELECT_SEED_OFFSET, node_probabilities, scene_starts
    from ppd.agents.train import greedy_rollout
    from ppd.data.scenes import TRAIN_DOMAIN

    out, metrics = run
    cfg = TrainConfig.from_run(out)
    assert cfg.grid == 16 and cfg.filter_scenes == 3
    graph_kw = dict(grid=cfg.grid, k_physical=cfg.k_physical, k_semantic=cfg.k_semantic)
    attacker = MaskedDQN.load(out / "attacker.zip", device="cpu")
    defender = MaskedDQN.load(out / "defender.zip", device="cpu")
    network, _ = load_label_filter(out, "cpu")

    def mean_output(world, starts):
        res = greedy_rollout(defender, world, "defender", starts, cfg.defender_max_steps, cfg.relabel)
        return float(np.mean([r["score_quality"] for r in res]))

    world = PromptWorld(tiny_segmenter, ProceduralScenes(TRAIN_DOMAIN, cfg.eval_scenes,
                                                         seed=cfg.seed * 1_000_000 + SELECT_SEED_OFFSET), **graph_kw)
    starts, kinds = scene_starts(world, attacker, cfg, np.random.default_rng([cfg.seed, SELECT_SEED_OFFSET]))
    table = metrics["label_filter"]["selection_quality"]
    for kind in ("coarse", "attacked"):
        part = [s for s, k in zip(starts, kinds) if k == kind]
        assert len(part) == cfg.eval_scenes
        assert table[kind]["off"] == pytest.approx(mean_output(world, part), abs=1e-6)
        prob = node_probabilities(network, world, part, cfg.defender_max_steps)
        removed = [(rec, obj, apply_filter(st, p, 0.5), pts) for (rec, obj, st, pts), p in zip(part, prob)]
        assert table[kind]["remove@0.5"] == pytest.approx(mean_output(world, removed), abs=1e-6)
    eval_world = PromptWorld(tiny_segmenter, ProceduralScenes(TRAIN_DOMAIN, cfg.eval_scenes, seed=EVAL_SEED), **graph_kw)
    coarse = [(rec, obj, *s_coarse) for rec, obj, _, s_coarse in eval_items(eval_world, cfg)]
    assert metrics["final"]["defended_coarse_iou_nofilter"] == pytest.approx(mean_output(eval_world, coarse), abs=1e-9)


def test_defender_applies_the_filter(run, tiny_segmenter):
    out, metrics = run
    d = PromptDefender.load(out, segmenter=tiny_segmenter, device="cpu")
    meta = metrics["label_filter"]
    assert d.label_filter is not None and d.label_filter[1:] == (meta["threshold"], meta["action"], meta["relabel_gate"])
    assert PromptDefender.load(out, segmenter=tiny_segmenter, device="cpu", use_filter=False).label_filter is None
    image = ProceduralScenes("train", 1, seed=5)[0].image
    p = d.wrong_label_probability(image, POINTS, LABELS)
    assert p.shape == (4,) and ((p >= 0) & (p <= 1)).all()
    # a threshold below every probability removes all prompts but the least suspect one
    strict = PromptDefender.load(out, segmenter=tiny_segmenter, device="cpu", filter_threshold=float(p.min()) / 2)
    res = strict.refine(image, POINTS, LABELS, max_steps=1)
    assert res.kept.tolist() == (np.arange(4) == np.argmin(p)).tolist()
    assert res.steps >= 3  # the filter's removals count as changes
    # max_steps=0: the input decoded as is, no filter either
    assert strict.refine(image, POINTS, LABELS, max_steps=0).kept.all()
    # relabelling instead: every prompt stays, each with its label flipped (the defender gets no step)
    flip = PromptDefender.load(out, segmenter=tiny_segmenter, device="cpu", filter_threshold=float(p.min()) / 2,
                               filter_action="relabel")
    flip.refine_states = lambda items, *_: [(st, None, 0) for _, st, _, _ in items]  # a defender that stops at once
    res = flip.refine(image, POINTS, LABELS, max_steps=1)
    assert res.kept.all() and res.point_labels.tolist() == (1 - LABELS).tolist() and res.relabeled.all()
    assert res.steps == 4  # the filter's relabels count as changes
    with pytest.raises(ValueError, match="action must be one of"):
        PromptDefender.load(out, segmenter=tiny_segmenter, device="cpu", filter_action="drop")
    with pytest.raises(ValueError, match="filter_threshold set with use_filter=False"):
        PromptDefender.load(out, segmenter=tiny_segmenter, device="cpu", use_filter=False, filter_threshold=0.5)
    with pytest.raises(ValueError, match="threshold"):
        PromptDefender.load(out, segmenter=tiny_segmenter, device="cpu", filter_threshold=1.5)


def test_load_label_filter_errors(run, tmp_path):
    out, _ = run
    assert load_label_filter(tmp_path) is None  # a run without a filter
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(out / FILTER_FILE, half / FILTER_FILE)
    with pytest.raises(ValueError, match="go together"):
        load_label_filter(half)
    shutil.copy(out / FILTER_META, half / FILTER_META)
    (half / FILTER_META).write_text(json.dumps({"threshold": 0.0}))
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
        load_label_filter(half)
    (half / FILTER_META).write_text(json.dumps({"threshold": 0.5, "action": "drop"}))
    with pytest.raises(ValueError, match="action must be one of"):
        load_label_filter(half)
    (half / FILTER_META).write_text(json.dumps({"threshold": 0.5}))  # written before the action and the gate existed
    assert load_label_filter(half)[1]["action"] == "remove" and load_label_filter(half)[1]["relabel_gate"] == 0.0
    for bad in (1.0, -0.1, "x"):
        (half / FILTER_META).write_text(json.dumps({"threshold": 0.5, "relabel_gate": bad}))
        with pytest.raises(ValueError, match=r"relabel_gate must be in \[0, 1\)"):
            load_label_filter(half)
    (half / FILTER_META).write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        load_label_filter(half)


def test_filter_actions_restrict_the_selection(tiny_segmenter, tiny_checkpoint, tmp_path):
    from ppd.agents.label_filter import filter_candidates

    assert filter_candidates(("remove",)) == [("remove", t, 0.0) for t in THRESHOLDS]
    cfg = _config(tiny_checkpoint, filter_scenes=2, filter_epochs=1, filter_actions="remove", filter_thresholds="0.5",
                  filter_relabel_gates="0,0.5")
    metrics = train(cfg, tmp_path / "r", segmenter=tiny_segmenter)
    meta = metrics["label_filter"]
    assert meta["action"] == "remove" and meta["threshold"] in (0.5, 1.0) and meta["relabel_gate"] in RELABEL_GATES
    names = {"remove@0.5", "off", "remove@0.5+gate0.5", "off+gate0.5"}
    assert set(meta["selection_quality"]["coarse"]) == set(meta["selection_quality"]["attacked"]) == names
    for bad in ("", "drop", "remove,flip"):
        with pytest.raises(ValueError, match="filter_actions"):
            _config(tiny_checkpoint, filter_actions=bad)
    assert filter_candidates(("relabel",), (0.5,)) == [("relabel", 0.5, 0.0), ("remove", 1.0, 0.0)]
    assert filter_candidates(("relabel",), (0.5,), (0.5, 0.0)) == [
        ("relabel", 0.5, 0.0), ("relabel", 0.5, 0.5), ("remove", 1.0, 0.0), ("remove", 1.0, 0.5)]
    assert _config(tiny_checkpoint, filter_thresholds="0.7, 0.5").filter_threshold_list == (0.7, 0.5)
    for bad in ("", "1.0", "0", "0.5,x", "1.5"):
        with pytest.raises(ValueError, match="filter_thresholds"):
            _config(tiny_checkpoint, filter_thresholds=bad)
    assert _config(tiny_checkpoint, filter_relabel_gates="0, 0.3").filter_relabel_gate_list == (0.0, 0.3)
    for bad in ("", "1.0", "-0.1", "0.5,x"):
        with pytest.raises(ValueError, match="filter_relabel_gates"):
            _config(tiny_checkpoint, filter_relabel_gates=bad)


def test_rollout_action_mask_relabel_gate():
    from ppd.envs.point_prompt_env import rollout_action_mask

    st = np.array([POSITIVE, NEGATIVE, INACTIVE, POSITIVE], np.int8)
    free = rollout_action_mask(st, st, relabel=True)
    gated = rollout_action_mask(st, st, relabel=True, relabel_ok=np.array([True, False, True, False]))
    n = len(st)
    assert free[n:2 * n].tolist() == [True, True, False, True]
    assert gated[n:2 * n].tolist() == [True, False, False, False]  # only allowed and active nodes
    assert (gated[:n] == free[:n]).all() and gated[-1] == free[-1]  # removals and stop untouched
    assert relabel_gate_mask(np.array([0.2, 0.6]), 0.0) is None
    assert relabel_gate_mask(np.array([0.2, 0.6]), 0.5).tolist() == [False, True]


def test_defender_relabel_gate_reaches_the_rollout(run, tiny_segmenter, monkeypatch):
    import ppd.agents.rollout as dmod

    out, _ = run
    seen = []
    real = dmod.rollout_action_mask
    monkeypatch.setattr(dmod, "rollout_action_mask", lambda *a: seen.append(a[3]) or real(*a))
    image = ProceduralScenes("train", 1, seed=5)[0].image
    # filter off (threshold 1.0) and a gate above every probability: no relabel is valid
    d = PromptDefender.load(out, segmenter=tiny_segmenter, device="cpu", filter_threshold=1.0, filter_relabel_gate=0.999)
    p = d.wrong_label_probability(image, POINTS, LABELS)
    assert (p <= 0.999).all()
    res = d.refine(image, POINTS, LABELS, max_steps=4)
    assert seen and all(ok is not None and not ok.any() for ok in seen)
    assert not res.relabeled.any()
    seen.clear()
    PromptDefender.load(out, segmenter=tiny_segmenter, device="cpu", filter_relabel_gate=0.0).refine(image, POINTS, LABELS)
    assert seen and all(ok is None for ok in seen)
    with pytest.raises(ValueError, match="relabel gate must be in"):
        PromptDefender.load(out, segmenter=tiny_segmenter, device="cpu", filter_relabel_gate=1.0)


def test_resume_with_more_rounds_drops_a_stale_filter(tiny_segmenter, tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    train(_config(tiny_checkpoint, filter_scenes=2, filter_epochs=1), out, segmenter=tiny_segmenter)
    assert (out / FILTER_FILE).is_file()
    # a further round changes the defender: the old filter goes (and, with filter_scenes=0, no new one)
    metrics = train(_config(tiny_checkpoint, rounds=2, filter_scenes=0), out, resume=True, segmenter=tiny_segmenter)
    assert not (out / FILTER_FILE).exists() and not (out / FILTER_META).exists()
    assert metrics["label_filter"] is None and "defended_coarse_iou_nofilter" not in metrics["final"]
    # overriding a filter the run does not have is an error, not a silent no-op
    assert PromptDefender.load(out, segmenter=tiny_segmenter, device="cpu").label_filter is None
    with pytest.raises(ValueError, match="has no label filter"):
        PromptDefender.load(out, segmenter=tiny_segmenter, device="cpu", filter_action="relabel")


def test_refine_cli_filter_flags(run, tmp_path, capsys):
    from ppd.cli import main

    out, _ = run
    from PIL import Image

    img = tmp_path / "img.png"
    Image.fromarray(ProceduralScenes("train", 1, seed=5)[0].image).save(img)
    pts = ";".join(f"{x:.0f},{y:.0f},{l}" for (x, y), l in zip(POINTS, LABELS))
    assert main(["refine", "--defender", str(out), "--image", str(img), "--points", pts, "--out", str(tmp_path / "a"),
                 "--no-filter", "--device", "cpu"]) == 0
    assert main(["refine", "--defender", str(out), "--image", str(img), "--points", pts, "--out", str(tmp_path / "b"),
                 "--filter-threshold", "2", "--device", "cpu"]) != 0
    assert "--filter-threshold must be in (0, 1]" in capsys.readouterr().err
    assert main(["refine", "--defender", str(out), "--image", str(img), "--points", pts, "--out", str(tmp_path / "c"),
                 "--no-filter", "--filter-action", "relabel", "--device", "cpu"]) != 0
    assert "no effect with --no-filter" in capsys.readouterr().err
    assert main(["refine", "--defender", str(out), "--image", str(img), "--points", pts, "--out", str(tmp_path / "d"),
                 "--filter-action", "relabel", "--device", "cpu"]) == 0
    assert len(json.loads((tmp_path / "d" / "refined.json").read_text())["kept"]) == 4
    assert not (tmp_path / "b").exists()


def test_filter_setting_checks():
    """The one range check of the filter's threshold (0, 1] and relabel gate [0, 1)."""
    from ppd.agents.label_filter import check_relabel_gate, check_threshold

    assert check_threshold(1) == 1.0 and check_threshold("0.25") == 0.25
    assert check_relabel_gate(0) == 0.0 and check_relabel_gate(0.999) == 0.999
    for bad in (0, 0.0, 1.0001, -1, "x", None, True, float("nan")):
        with pytest.raises(ValueError, match=r"--t must be in \(0, 1\], got"):
            check_threshold(bad, "--t")
    for bad in (1, 1.0, -0.01, "x", None, False, float("nan")):
        with pytest.raises(ValueError, match=r"gate must be in \[0, 1\), got"):
            check_relabel_gate(bad, "gate")
