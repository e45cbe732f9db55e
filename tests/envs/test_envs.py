"""Point-prompt environments: spec checks, seeding, rewards, masks, episode ends, vec env.

Every world here runs the random-weight tiny model of ``conftest.py`` on 6 procedural
scenes: masks are arbitrary but deterministic, which is all these tests need.
"""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import ppd  # noqa: F401  (registers the ppd/... env ids)
from ppd.data.scenes import ProceduralScenes
from ppd.envs import ROLES, PointPromptEnv, PromptVecEnv, PromptWorld, register_envs, valid_action_mask
from ppd.envs.world import INACTIVE, NEGATIVE, POSITIVE, prompts_from_state, state_from_prompts
from ppd.graphs.dual_space import patch_centres
from ppd.metrics import iou

ENV_IDS = {"attacker": "ppd/PointPromptAttack-v0", "defender": "ppd/PointPromptDefense-v0"}
DISCRETE_KEYS = ("state", "offset", "step_frac", "image_id")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scenes():
    return ProceduralScenes("train", 6, seed=0)


@pytest.fixture
def make_world(tiny_segmenter, scenes):
    """Fresh worlds (own outcome cache and attack pool) on the shared model and scenes."""
    return lambda **kw: PromptWorld(tiny_segmenter, scenes, **kw)


@pytest.fixture(scope="module")
def world(tiny_segmenter, scenes):
    """A world shared by tests that depend neither on its caches nor on its attack pool."""
    return PromptWorld(tiny_segmenter, scenes)


def random_valid(mask: np.ndarray, rng: np.random.Generator, allow_stop: bool = True) -> int:
    valid = np.flatnonzero(mask if allow_stop else mask[:-1])
    return int(rng.choice(valid)) if len(valid) else len(mask) - 1


def assert_obs_close(a: dict, b: dict, what: str = "") -> None:
    """Equal observations, up to the float noise of decoding in batches of other sizes
    (logits differ by ~1e-7, so a pixel at the threshold may flip)."""
    for k in DISCRETE_KEYS:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{what} {k}")
    assert np.abs(a["coverage"].astype(int) - b["coverage"].astype(int)).max() <= 1, what
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-5, err_msg=what)


def direct_quality(seg, scenes, env: PointPromptEnv, info: dict, prompts_fn) -> float:
    """IoU of SAM's mask for the env's current prompt state, recomputed from scratch."""
    state, points = env.prompt_state
    if not (state != INACTIVE).any():
        return 0.0
    scene = scenes[info["scene_index"]]
    coords, labels = prompts_fn(state, points)
    mask = seg.predict(scene.image, coords, labels).masks[0]
    return float(iou(mask, scene.masks[info["object_index"]]))


# -- spec ----------------------------------------------------------------------------
@pytest.mark.parametrize("role", ROLES)
def test_check_env_gymnasium_and_sb3_without_warnings(role, world):
    env = gym.make(ENV_IDS[role], world=world)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(env.unwrapped)  # made through gym.make: has a spec, checks rgb_array rendering
        sb3_check_env(env, warn=True)
    caught = [
        w for w in caught
        if not (issubclass(w.category, DeprecationWarning) and "site-packages" in w.filename)
    ]
    assert not caught, [f"{w.category.__name__}: {w.message}" for w in caught]


@pytest.mark.parametrize("role", ROLES)
def test_gym_make_both_ids(role, tiny_segmenter, scenes):
    env = gym.make(ENV_IDS[role], segmenter=tiny_segmenter, dataset=scenes)
    assert env.unwrapped.role == role
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert info["action_mask"].shape == (env.action_space.n,) and info["action_mask"][-1]
    n_ids = len(gym.registry)
    register_envs()  # idempotent
    assert len(gym.registry) == n_ids


def test_replay_memory_per_transition_is_small(world):
    env = PointPromptEnv("defender", world=world)
    assert env.num_nodes == 256
    obs, _ = env.reset(seed=0)
    assert set(obs) == set(env.observation_space.spaces)
    per_obs = sum(v.nbytes for v in obs.values())
    # obs + next_obs, action (int64), reward (float32), done (bool)
    per_transition = 2 * per_obs + 8 + 4 + 1
    assert per_transition <= 8 * 1024, per_transition


# -- seeding and rewards -----------------------------------------------------------
@pytest.mark.parametrize("role", ROLES)
def test_same_seed_same_rollout(role, make_world):
    runs = []
    for _ in range(2):
        env = PointPromptEnv(role, world=make_world())
        rng = np.random.default_rng(5)
        obs, info = env.reset(seed=11)
        trace = [(obs, 0.0, False, False, info)]
        for _ in range(10):
            obs, r, term, trunc, info = env.step(random_valid(env.action_masks(), rng))
            trace.append((obs, r, term, trunc, info))
            if term or trunc:
                obs, info = env.reset()
                trace.append((obs, 0.0, False, False, info))
        runs.append(trace)
    assert len(runs[0]) == len(runs[1])
    for (o1, r1, te1, tr1, i1), (o2, r2, te2, tr2, i2) in zip(*runs):
        assert (r1, te1, tr1) == (r2, te2, tr2)
        assert o1.keys() == o2.keys() and all(np.array_equal(o1[k], o2[k]) for k in o1)
        assert i1.keys() == i2.keys()
        for k in i1:
            assert np.array_equal(i1[k], i2[k]), k


@pytest.mark.parametrize("prompt_pad", [16, None])
@pytest.mark.parametrize("role", ROLES)
def test_reward_is_the_quality_change(role, prompt_pad, make_world, tiny_segmenter, scenes):
    world = make_world(prompt_pad=prompt_pad)
    env = PointPromptEnv(role, world=world, max_steps=50)
    # prompt_pad=None decodes exactly the K active prompts, prompt_pad=16 pads them to 16
    prompts_fn = prompts_from_state if prompt_pad is None else world.decoded_prompts
    _, info = env.reset(seed=3)
    before = direct_quality(tiny_segmenter, scenes, env, info, prompts_fn)
    assert info["quality"] == pytest.approx(before, abs=1e-9)
    rng = np.random.default_rng(0)
    sign = 1.0 if role == "defender" else -1.0
    for _ in range(3):
        _, reward, _, _, info = env.step(random_valid(env.action_masks(), rng, allow_stop=False))
        after = direct_quality(tiny_segmenter, scenes, env, info, prompts_fn)
        assert reward == pytest.approx(sign * (after - before), abs=1e-9)
        assert info["quality"] == pytest.approx(after, abs=1e-9)
        before = after


def test_outcome_does_not_depend_on_the_batch(make_world):
    """A state's mask is the same decoded alone or beside states with more prompts."""
    world = make_world()
    env = PointPromptEnv("defender", world=world, start_mix={"ideal": 1.0})
    _, info = env.reset(seed=0)
    state, points = env.prompt_state
    rec, obj = world.image(info["scene_index"]), info["object_index"]
    few = state.copy()
    few[np.flatnonzero(few != INACTIVE)[2:]] = INACTIVE  # keep 2 prompts
    assert (state != INACTIVE).sum() > 4
    alone = world.evaluate([(rec, obj, few, points)], want_mask=True)[0]
    batched = make_world().evaluate([(rec, obj, state, points), (rec, obj, few, points)], want_mask=True)[1]
    assert (alone.mask != batched.mask).mean() < 1e-3
    assert abs(alone.quality - batched.quality) < 1e-3
    assert abs(alone.score - batched.score) < 1e-5


@pytest.mark.parametrize("mixed_sizes", [False, True])
def test_batched_row_stats_equal_the_per_row_values(mixed_sizes, tiny_segmenter, scenes):
    """One decoder call's quality and coverage, computed for all rows at once (same
    image size) or row by row (sizes differ), equal iou / patch_mean of each row's mask;
    rows without ground truth get nan."""
    from ppd.data.types import Scene
    from ppd.graphs.dual_space import patch_mean

    data = [scenes[i] for i in range(4)]
    if mixed_sizes:  # a cropped copy of scene 0: another image size, the same grid
        s0 = scenes[0]
        data.append(Scene(s0.image[:200, :224].copy(), s0.masks[:, :200, :224].copy(), domain=s0.domain))
    world = PromptWorld(tiny_segmenter, data, grid=8)
    rng = np.random.default_rng(1)
    requests = []
    for i in range(len(data)):
        rec = world.image(i)
        for obj in (0, -1):
            st = np.zeros(rec.num_nodes, np.int8)
            st[rng.choice(rec.num_nodes, 4, replace=False)] = rng.choice([POSITIVE, NEGATIVE], 4)
            requests.append((rec, obj, st, rec.centres.copy()))
    calls = world.decode_calls
    outs = world.evaluate(requests, want_mask=True)
    assert world.decode_calls == calls + 1  # one batch (one prompt width)
    for (rec, obj, _, _), out in zip(requests, outs):
        assert out.mask.shape == rec.hw
        np.testing.assert_array_equal(out.coverage, patch_mean(out.mask, rec.grid))
        if obj >= 0:
            assert out.quality == float(iou(out.mask, rec.scene.masks[obj]))
        else:
            assert np.isnan(out.quality)


def test_large_images_get_per_node_values_from_smaller_masks(tiny_segmenter, scenes, monkeypatch):
    """mask_max_side: states without ground truth on an image larger than it are decoded
    at a reduced mask size for coverage (close to the full-size values, same score);
    states with ground truth and masks asked for keep the full size."""
    from ppd.data.types import Scene
    from ppd.graphs.dual_space import patch_mean

    s0 = scenes[0]
    f = 5  # 1280 x 1000 (not square: catches swapped sides)
    big = Scene(np.repeat(np.repeat(s0.image, f, 0), f, 1)[:, :1000].copy(),
                np.repeat(np.repeat(s0.masks, f, 1), f, 2)[:, :, :1000].copy(), domain=s0.domain)
    reduced, full = PromptWorld(tiny_segmenter, [big]), PromptWorld(tiny_segmenter, [big], mask_max_side=None)
    rec = reduced.image(0)
    assert reduced.stats_size(rec) == (512, 400) and full.stats_size(full.image(0)) == (1280, 1000)
    sizes = []
    real = tiny_segmenter.predict_batch

    def spy(embs, coords, labels, **kw):
        sizes.append(kw.get("mask_sizes"))
        return real(embs, coords, labels, **kw)

    monkeypatch.setattr(tiny_segmenter, "predict_batch", spy)
    rng = np.random.default_rng(0)
    for _ in range(4):
        st = np.zeros(rec.num_nodes, np.uint8)
        st[rng.choice(rec.num_nodes, 5, replace=False)] = rng.choice([POSITIVE, NEGATIVE], 5)
        (a,), (b,) = reduced.evaluate([(rec, -1, st, rec.centres)]), full.evaluate([(full.image(0), -1, st, rec.centres)])
        assert sizes[-2:] == [[(512, 400)], None]
        assert a.score == b.score and np.abs(a.coverage - b.coverage).max() < 0.03
        (g,) = reduced.evaluate([(rec, 0, st, rec.centres)])  # ground truth: the full mask, for its IoU
        (m,) = reduced.evaluate([(rec, -1, st, rec.centres)], want_mask=True)
        assert sizes[-2:] == [None, None] and m.mask.shape == (1280, 1000)
        assert g.quality == float(iou(m.mask, big.masks[0]))
        np.testing.assert_array_equal(m.coverage, patch_mean(m.mask, rec.grid))
    assert PromptWorld(tiny_segmenter, scenes).stats_size(PromptWorld(tiny_segmenter, scenes).image(0)) == scenes[0].image.shape[:2]
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="mask_max_side must be an integer >= 1 or None"):
            PromptWorld(tiny_segmenter, scenes, mask_max_side=bad)


# -- masks, invalid actions, episode ends ------------------------------------------
def test_action_masks_follow_the_roles(world):
    n = world.num_nodes
    for role, relabel in [("attacker", True), ("defender", True), ("defender", False)]:
        env = PointPromptEnv(role, world=world, relabel=relabel)
        _, info = env.reset(seed=2)
        state, _ = env.prompt_state
        active = state != INACTIVE
        mask = env.action_masks()
        assert mask.shape == (2 * n + 1,) and mask.dtype == bool
        np.testing.assert_array_equal(mask, info["action_mask"])
        assert mask[-1]  # stop
        if role == "attacker":  # activate inactive nodes only, as positive or negative
            np.testing.assert_array_equal(mask[:n], ~active)
            np.testing.assert_array_equal(mask[n : 2 * n], ~active)
        else:  # touch active nodes only; relabel only if allowed
            np.testing.assert_array_equal(mask[:n], active)
            np.testing.assert_array_equal(mask[n : 2 * n], active & relabel)
    # batched form, and stop stays valid when nothing else is
    states = np.stack([np.zeros(n, np.uint8), np.full(n, POSITIVE, np.uint8)])
    m = valid_action_mask(states, "attacker", True)
    assert m.shape == (2, 2 * n + 1) and m[0].all() and not m[1, :-1].any() and m[1, -1]
    assert not valid_action_mask(states[0], "defender", True)[:-1].any()


@pytest.mark.parametrize("role", ROLES)
def test_invalid_action_gives_zero_and_changes_nothing(role, world):
    env = PointPromptEnv(role, world=world, relabel=False, max_steps=10)
    obs, _ = env.reset(seed=4)
    state, points = env.prompt_state
    n = env.num_nodes
    active, inactive = np.flatnonzero(state != INACTIVE), np.flatnonzero(state == INACTIVE)
    invalid = [int(active[0]), n + int(active[0])] if role == "attacker" else [int(inactive[0]), n + int(active[0])]
    for a in invalid:
        assert not env.action_masks()[a]
        new, reward, term, trunc, info = env.step(a)
        assert reward == 0.0 and info["invalid_action"] and not term and not trunc
        s2, p2 = env.prompt_state
        np.testing.assert_array_equal(s2, state)
        np.testing.assert_array_equal(p2, points)
        for k in ("state", "coverage", "offset", "score", "image_id"):
            np.testing.assert_array_equal(new[k], obs[k])


@pytest.mark.parametrize("role", ROLES)
def test_episode_ends(role, world):
    rng = np.random.default_rng(1)
    # stop: terminated, reward 0
    env = PointPromptEnv(role, world=world, max_steps=2)
    env.reset(seed=6)
    _, r, term, trunc, info = env.step(2 * env.num_nodes)
    assert (r, term, trunc, info["invalid_action"]) == (0.0, True, False, False)
    # step budget: truncated
    env.reset(seed=7)
    _, _, term, trunc, _ = env.step(random_valid(env.action_masks(), rng, allow_stop=False))
    assert not term and not trunc
    obs, _, term, trunc, _ = env.step(random_valid(env.action_masks(), rng, allow_stop=False))
    assert not term and trunc and obs["step_frac"][0] == 1.0


def test_terminated_when_nothing_valid_remains(world):
    env = PointPromptEnv("defender", world=world, relabel=False, max_steps=100)
    env.reset(seed=8)
    while True:
        active = np.flatnonzero(env.prompt_state[0] != INACTIVE)
        _, _, term, trunc, info = env.step(int(active[0]))  # deactivate
        if len(active) == 1:
            break
        assert not term and not trunc
    assert term and not trunc and info["num_prompts"] == 0 and info["quality"] == 0.0
    assert not env.action_masks()[:-1].any()


def test_attacked_states_seed_defender_episodes(make_world):
    world = make_world()
    attacker = PointPromptEnv("attacker", world=world, max_steps=2)
    rng = np.random.default_rng(2)
    attacker.reset(seed=0)
    finals = []
    while len(finals) < 2:
        _, _, term, trunc, info = attacker.step(random_valid(attacker.action_masks(), rng, allow_stop=False))
        if term or trunc:
            finals.append((info["scene_index"], info["object_index"], *attacker.prompt_state))
            attacker.reset()
    assert len(world.attack_pool) == 2
    for (i, o, s, p), (i2, o2, s2, p2) in zip(finals, world.attack_pool):
        assert (i, o) == (i2, o2) and np.array_equal(s, s2) and np.array_equal(p, p2)

    defender = PointPromptEnv("defender", world=world, start_mix={"attacked": 1.0})
    for seed in range(3):
        _, info = defender.reset(seed=seed)
        assert info["start_kind"] == "attacked"
        state, points = defender.prompt_state
        assert any(
            (info["scene_index"], info["object_index"]) == (i, o) and np.array_equal(state, s) and np.array_equal(points, p)
            for i, o, s, p in finals
        )


def test_random_coarse_noise_starts(make_world):
    world = make_world()

    def starts(noise, seed):
        env = PointPromptEnv("defender", world=world, start_mix={"coarse": 1.0}, coarse_noise=noise, label_target=True)
        out = []
        for s in range(40):
            obs, info = env.reset(seed=seed + s)
            active = obs["state"] > 0
            out.append((int(active.sum()), int((obs["label_target"][active] == 1).sum())))
        return out

    fixed, rand = starts("fixed", 0), starts("random", 0)
    assert rand == starts("random", 0)  # deterministic by seed
    assert max(n for n, _ in fixed) <= 8  # coarse_prompts' default: 8 points
    assert max(n for n, _ in rand) > 8 and min(n for n, _ in rand) < 6  # 3-16 points
    # clean sets (no wrong label) are far more common than with the fixed noise
    assert sum(w == 0 for _, w in rand) > sum(w == 0 for _, w in fixed)
    with pytest.raises(ValueError, match="coarse_noise"):
        PointPromptEnv("defender", world=world, coarse_noise="gaussian")


def test_state_from_prompts_several_points_in_one_patch():
    grid, hw = 4, (96, 128)  # patches of 32 x 24 px (w x h); patch 0 centred at (16, 12)
    centres = patch_centres(grid, *hw).astype(np.float32)
    coords = np.array([[2, 2], [15, 11], [30, 20], [100, 90]], np.float32)
    labels = np.array([1, 0, 1, 1])
    for perm in [np.arange(4), np.array([3, 1, 0, 2]), np.array([2, 0, 3, 1])]:
        state, points, point_node = state_from_prompts(coords[perm], labels[perm], grid, hw, centres)
        np.testing.assert_array_equal(point_node, np.array([0, 0, 0, 15])[perm])
        # patch 0 takes the point nearest to its centre: (15, 11), negative
        assert state[0] == NEGATIVE and tuple(points[0]) == (15.0, 11.0)
        assert state[15] == POSITIVE and tuple(points[15]) == (100.0, 90.0)
        assert (state != INACTIVE).sum() == 2
        np.testing.assert_array_equal(points[1:15], centres[1:15])  # inactive nodes sit at their centres
        c, lab = prompts_from_state(state, points)
        np.testing.assert_array_equal(c, [[15, 11], [100, 90]])
        np.testing.assert_array_equal(lab, [0, 1])


# -- vector env ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "role, predicted_ends", [("attacker", "real"), ("defender", "real"), ("defender", "never"), ("attacker", "always")]
)
def test_vec_env_matches_single_envs(role, predicted_ends, make_world, monkeypatch):
    n, seed = 3, 7
    venv = PromptVecEnv(n, role, world=make_world(), seed=seed)
    if predicted_ends != "real":  # the fallbacks: resets in a second call / draws ahead discarded
        monkeypatch.setattr(venv, "_ends", lambda *args: predicted_ends == "always")
    single_world = make_world()
    singles = [PointPromptEnv(role, world=single_world) for _ in range(n)]
    obs = venv.reset()
    for i, env in enumerate(singles):
        assert_obs_close(env.reset(seed=seed + i)[0], {k: v[i] for k, v in obs.items()}, f"reset {i}")
    rng = np.random.default_rng(3)
    ended = 0
    for t in range(10):
        actions = np.array([random_valid(m, rng) for m in venv.action_masks()])
        obs, rewards, dones, infos = venv.step(actions)
        for i, env in enumerate(singles):
            o, r, term, trunc, info = env.step(actions[i])
            assert dones[i] == (term or trunc)
            assert rewards[i] == pytest.approx(r, abs=1e-3)
            assert infos[i]["TimeLimit.truncated"] == (trunc and not term)
            if dones[i]:
                ended += 1
                assert_obs_close(o, infos[i]["terminal_observation"], f"terminal {t} {i}")
                o, info = env.reset()
                assert venv.reset_infos[i]["start_kind"] == info["start_kind"]
            else:
                assert "terminal_observation" not in infos[i]
            assert_obs_close(o, {k: v[i] for k, v in obs.items()}, f"step {t} env {i}")
    assert ended > 0
    if role == "attacker":
        assert len(venv.world.attack_pool) == len(single_world.attack_pool) == ended


def test_vec_env_one_decoder_call_per_step(make_world):
    world = make_world()
    n = 4
    venv = PromptVecEnv(n, "defender", world=world, seed=0, max_steps=50, relabel=False,
                        start_mix={"coarse": 1.0}, coarse_kwargs={"n_points": 12})
    calls = world.decode_calls
    obs = venv.reset()
    assert world.decode_calls == calls + 1
    assert all(obs[k].shape == (n, *s.shape) for k, s in venv.observation_space.spaces.items())
    assert (obs["state"] != INACTIVE).sum(axis=1).min() >= 4
    for _ in range(2):  # deactivate a prompt everywhere: new states, no episode ends
        actions = np.array([np.flatnonzero(m[:-1])[0] for m in venv.action_masks()])
        calls = world.decode_calls
        obs, rewards, dones, infos = venv.step(actions)
        assert world.decode_calls == calls + 1 and not dones.any()
    # env 0 stops: its reset is decoded in the same call as the others' steps
    actions = np.array([np.flatnonzero(m[:-1])[0] for m in venv.action_masks()])
    actions[0] = 2 * venv.num_nodes
    calls = world.decode_calls
    obs, rewards, dones, infos = venv.step(actions)
    assert world.decode_calls == calls + 1
    np.testing.assert_array_equal(dones, [True, False, False, False])
    assert infos[0]["terminal_observation"]["step_frac"][0] == pytest.approx(3 / 50)
    assert not infos[0]["TimeLimit.truncated"] and rewards[0] == 0.0
    assert obs["step_frac"][0, 0] == 0.0 and obs["step_frac"][1, 0] == pytest.approx(3 / 50)


def test_vec_env_truncation_and_api(world):
    n = 3
    venv = PromptVecEnv(n, "attacker", world=world, max_steps=1)
    assert venv.seed(5) == [5, 6, 7]
    venv.reset()
    masks = venv.action_masks()
    assert masks.shape == (n, 2 * venv.num_nodes + 1) and masks.dtype == bool
    np.testing.assert_array_equal(masks, np.stack(venv.env_method("action_masks")))
    actions = np.array([np.flatnonzero(m[:-1])[0] for m in masks])
    obs, rewards, dones, infos = venv.step(actions)
    assert dones.all() and all(info["TimeLimit.truncated"] for info in infos)
    assert all(info["terminal_observation"]["step_frac"][0] == 1.0 for info in infos)
    assert (obs["step_frac"] == 0.0).all()
    assert venv.get_attr("role") == ["attacker"] * n
    venv.set_attr("max_steps", 3, indices=[1])
    assert venv.get_attr("max_steps") == [1, 3, 1]
    assert venv.env_is_wrapped(gym.Wrapper) == [False] * n
    with pytest.raises(ValueError, match="either world"):
        PromptVecEnv(2, world=world, grid=8)
    with pytest.raises(ValueError, match="3 actions"):
        venv.step(np.zeros(2, int))
    venv.close()


def test_step_cost_is_charged_per_change_not_on_stop(world):
    """step_cost c: a valid change earns (quality change - c), stop and invalid earn 0."""
    plain = PointPromptEnv("defender", world=world, max_steps=50)
    costly = PointPromptEnv("defender", world=world, max_steps=50, step_cost=0.01)
    plain.reset(seed=5)
    costly.reset(seed=5)
    rng = np.random.default_rng(1)
    for _ in range(2):
        a = random_valid(plain.action_masks(), rng, allow_stop=False)
        _, r0, *_ = plain.step(a)
        _, r1, *_ = costly.step(a)
        assert r1 == pytest.approx(r0 - 0.01, abs=1e-9)
    stop = len(costly.action_masks()) - 1
    _, r_stop, terminated, _, _ = costly.step(stop)
    assert r_stop == 0.0 and terminated
    with pytest.raises(ValueError, match="step_cost"):
        PointPromptEnv("defender", world=world, step_cost=-0.1)


# -- removal probes --------------------------------------------------------------------
def test_removal_probes_are_the_leave_one_out_decodes(make_world):
    """probe_score[i] = SAM's score without node i's prompt - with it; probe_change[i] =
    1 - soft IoU of the two coverages; one decoder call for the state and its probes."""
    world = make_world()
    env = PointPromptEnv("defender", world=world, probe=True, start_mix={"coarse": 1.0})
    calls = world.decode_calls
    obs, _ = env.reset(seed=3)
    assert world.decode_calls == calls + 1
    assert env.observation_space.contains(obs)
    state, points = env.prompt_state
    rec = world.image(env._rec.index)
    base = world.evaluate([(rec, env._obj, state, points)])[0]
    active = np.flatnonzero(state != INACTIVE)
    assert len(active) >= 3
    for i in active:
        without = state.copy()
        without[i] = INACTIVE
        coords, labels = world.decoded_prompts(without, points)
        pred = world.segmenter.predict(rec.embedding, coords, labels)
        cov = pred.masks[0].reshape(rec.grid, rec.hw[0] // rec.grid, rec.grid, -1).mean(axis=(1, 3))
        d = float(pred.scores[0]) - base.score
        expected = np.round(np.clip(0.5 + 4.0 * d, 0, 1) * 255)
        assert abs(int(obs["probe_score"][i]) - expected) <= 1
        union = np.maximum(cov.ravel(), base.coverage).sum()
        change = 1 - np.minimum(cov.ravel(), base.coverage).sum() / union
        assert abs(int(obs["probe_change"][i]) - round(change * 255)) <= 1
    inactive = state == INACTIVE
    assert (obs["probe_score"][inactive] == 128).all() and (obs["probe_change"][inactive] == 0).all()
    # the removal action leads to a probed (cached) state: no new decode of that state
    a = int(active[0])
    rows = world.decode_calls
    env.step(a)
    assert world.decode_calls == rows + 1  # one call: the new state's own probes


def test_probes_are_defender_only_and_keep_replay_small(world):
    with pytest.raises(ValueError, match="defender role only"):
        PointPromptEnv("attacker", world=world, probe=True)
    env = PointPromptEnv("defender", world=world, probe=True)
    assert {"probe_score", "probe_change"} <= set(env.observation_space.spaces)
    obs, _ = env.reset(seed=0)
    per_transition = 2 * sum(v.nbytes for v in obs.values()) + 8 + 4 + 1
    assert per_transition <= 8 * 1024, per_transition
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(gym.make(ENV_IDS["defender"], world=world, probe=True).unwrapped)
        sb3_check_env(PointPromptEnv("defender", world=world, probe=True), warn=True)
    caught = [w for w in caught if not issubclass(w.category, DeprecationWarning)]
    assert not caught, [f"{w.category.__name__}: {w.message}" for w in caught]


def test_vec_env_with_probes_matches_single_envs(make_world):
    n, seed = 2, 4
    venv = PromptVecEnv(n, "defender", world=make_world(), seed=seed, probe=True)
    singles = [PointPromptEnv("defender", world=make_world(), probe=True) for _ in range(n)]
    obs = venv.reset()
    for i, env in enumerate(singles):
        o, _ = env.reset(seed=seed + i)
        assert np.abs(o["probe_score"].astype(int) - obs["probe_score"][i].astype(int)).max() <= 1
    rng = np.random.default_rng(0)
    for _ in range(4):
        actions = np.array([random_valid(m, rng) for m in venv.action_masks()])
        calls = venv.world.decode_calls
        obs, _, dones, _ = venv.step(actions)
        assert venv.world.decode_calls <= calls + 1
        for i, env in enumerate(singles):
            o, *_ , term, trunc, _ = env.step(actions[i])
            if term or trunc:
                o, _ = env.reset()
            assert np.abs(o["probe_change"].astype(int) - obs["probe_change"][i].astype(int)).max() <= 1


# ----------------------------------------------------------------------------- bench
def test_decoder_ceiling_times_one_row_calls_against_one_batched_call(tiny_segmenter, random_image, monkeypatch):
    """ppd.envs.throughput's decoder-only ceiling: per round, M calls of r rows (call i on
    image i) and one call of all M r rows, prompts padded to the envs' width; warm-up
    round untimed; each side's time is the median over the timed rounds."""
    import types

    import ppd.envs.throughput as throughput
    from ppd.envs.throughput import decoder_ceiling
    from ppd.segmenter import Segmenter

    seg = Segmenter(tiny_segmenter.model, tiny_segmenter.name, device="cpu")
    calls = []
    predict_batch = seg.predict_batch
    # A fake clock that only the decoder calls advance: in round k (0 = warm-up) a call
    # on one image takes (k + 1)^2 seconds, the batched call (k + 1)^2 / 4.
    clock = [0.0]
    monkeypatch.setattr(throughput, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))

    def recorded(embeddings, coords, labels, **kw):
        calls.append((len(embeddings), coords.shape, int((labels >= 0).sum(axis=1).max())))
        round_ = (len(calls) - 1) // (len(images) + 1)
        clock[0] += (round_ + 1) ** 2 * (1.0 if len(embeddings) == 1 else 0.25)
        return predict_batch(embeddings, coords, labels, **kw)

    seg.predict_batch = recorded
    images = [np.roll(random_image, 7 * i, axis=1) for i in range(3)]
    rows_s, batch_s = decoder_ceiling(seg, images, n_points=5, prompt_pad=4, rounds=3)
    # timed rounds 1-3: the 3 one-image calls take 12, 27, 48 s, the batched call 1, 2.25, 4 s
    # (a mean would give 29, timing the warm-up too 19.5, timing one call per round 9)
    assert (rows_s, batch_s) == (27.0, 2.25)
    one_round = [(1, (1, 8, 2), 5)] * 3 + [(3, (3, 8, 2), 5)]  # 5 points padded to width 8
    assert calls == one_round * 4  # warm-up + 3 timed rounds
    calls.clear()
    decoder_ceiling(seg, images[:2], n_points=5, prompt_pad=None, rounds=1)
    assert calls == ([(1, (1, 5, 2), 5)] * 2 + [(2, (2, 5, 2), 5)]) * 2
    calls.clear()  # K + 1 rows per env, as with removal probes
    decoder_ceiling(seg, images[:2], n_points=5, prompt_pad=None, rows_per_image=3, rounds=1)
    assert calls == ([(3, (3, 5, 2), 5)] * 2 + [(6, (6, 5, 2), 5)]) * 2


def test_step_throughput_counts_both_sides_alike(tiny_segmenter):
    """Both sides take as many env steps; the batched side decodes at most once per
    vector step (plus its first reset), the sequential side once per env step unless an
    outcome is cached; the counters stay consistent."""
    from ppd.envs.throughput import SideStats, step_throughput

    stats = step_throughput(tiny_segmenter, n_envs=3, steps=5, role="defender", n_scenes=3, rounds=2)
    batched, seq = stats["batched"], stats["sequential"]
    assert batched.env_steps == seq.env_steps == 15
    assert 1 <= batched.decoder_calls <= 5 + 1  # one per vector step, and the first reset's
    assert seq.decoder_calls >= 5
    for s in (batched, seq):
        assert s.seconds > 0 and s.steps_per_s == pytest.approx(s.env_steps / s.seconds)
        assert 0 < s.rows <= s.requests and 0.0 <= s.cache_share < 1.0
    assert np.isnan(SideStats().steps_per_s) and np.isnan(SideStats().cache_share)
