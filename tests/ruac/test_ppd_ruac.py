"""PPD with the RUAC decoder: per-node uncertainty in the observation, and the defender.

A freshly initialised RUAC head (seeded) on the bundled model is saved to a temporary
folder; its uncertainty is arbitrary but deterministic, which is all these tests need.
Defenders are untrained (random weights, stop biased away) as in ``test_defender.py``.
"""

from __future__ import annotations

import dataclasses
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import DummyVecEnv

import ppd
from ppd.agents.defender import PromptDefender
from ppd.agents.dqn import make_dqn
from ppd.agents.train import TrainConfig, greedy_rollout
from ppd.data.scenes import ProceduralScenes
from ppd.envs import PointPromptEnv, PromptVecEnv, PromptWorld
from ppd.envs.point_prompt_env import build_observation
from ppd.envs.world import INACTIVE, Outcome
from ppd.graphs.dual_space import patch_mean
from ppd.ruac import BayesianMaskDecoder, save_head

POINTS = np.array([[60, 60], [120, 100], [200, 180], [30, 220], [150, 40]], np.float32)
LABELS = np.array([1, 1, 0, 1, 0])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def plain():
    return ppd.load_segmenter(device="cpu")


@pytest.fixture(scope="module")
def head_dir(tmp_path_factory, plain):
    folder = tmp_path_factory.mktemp("ruac_head")
    torch.manual_seed(0)
    save_head(folder, BayesianMaskDecoder(plain.model.sam_mask_decoder), {"model": plain.name})
    return folder


@pytest.fixture(scope="module")
def ruac(head_dir):
    return ppd.load_segmenter(decoder="ruac", ruac_checkpoint=head_dir, device="cpu")


@pytest.fixture(scope="module")
def scenes():
    return ProceduralScenes("train", 3, seed=0)


@pytest.fixture(scope="module")
def world(ruac, scenes):
    return PromptWorld(ruac, scenes)


def _defender_model(world: PromptWorld, node_uncertainty: bool):
    env = DummyVecEnv([lambda: PointPromptEnv("defender", world=world, node_uncertainty=node_uncertainty)])
    model = make_dqn(env, "defender", relabel=True, hidden_dim=16, n_layers=1, seed=0, device="cpu", buffer_size=64)
    with torch.no_grad():  # a random net that keeps acting (stop is the last Q-value)
        model.policy.q_net.stop_head[-1].bias.fill_(-1e3)
    return model


def _run_dir(folder, model, **cfg_kw):
    model.save(folder / "defender.zip")
    cfg = TrainConfig(grid=16, defender_max_steps=4, **cfg_kw)
    (folder / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    return folder


# ----------------------------------------------------------------------------- env
def test_check_env_with_node_uncertainty(world):
    env = gym.make("ppd/PointPromptDefense-v0", world=world, node_uncertainty=True)
    assert env.observation_space["uncertainty"].shape == (256,)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(env.unwrapped)
        sb3_check_env(env, warn=True)
    caught = [w for w in caught if not (issubclass(w.category, DeprecationWarning) and "site-packages" in w.filename)]
    assert not caught, [f"{w.category.__name__}: {w.message}" for w in caught]


def test_uncertainty_is_the_patch_mean_of_the_current_prompts(world, ruac):
    env = PointPromptEnv("defender", world=world, node_uncertainty=True, max_steps=12)
    off = PointPromptEnv("defender", world=world, max_steps=12)
    obs, _ = env.reset(seed=3)
    obs_off, _ = off.reset(seed=3)
    # the switch only adds the key: every other key is unchanged
    assert set(obs) == set(obs_off) | {"uncertainty"}
    for k in obs_off:
        np.testing.assert_array_equal(obs[k], obs_off[k])
    seen = []
    for _ in range(4):
        u = obs["uncertainty"]
        assert u.shape == (256,) and u.dtype == np.uint8 and env.observation_space.contains(obs)
        # = the decoded mask's pixel uncertainty averaged over each patch, x 255
        st, pts = env.prompt_state
        coords, labels = world.decoded_prompts(st, pts)
        pred = ruac.predict(env._rec.embedding, coords, labels)
        assert pred.uncertainty.min() >= 0.0 and pred.uncertainty.max() <= 1.0
        expect = np.round(patch_mean(pred.uncertainty[0], 16) * 255)
        assert np.abs(u.astype(int) - expect).max() <= 1
        assert u.max() > 0  # a random head is never fully certain
        seen.append(u.copy())
        active = np.flatnonzero(st != INACTIVE)
        if len(active) <= 1:
            break
        calls = world.decode_calls
        obs, *_ = env.step(int(active[0]))  # deactivate a prompt: the state changes
        assert world.decode_calls <= calls + 1  # still one decode per step
    assert len(seen) >= 2
    assert any(not np.array_equal(a, b) for a, b in zip(seen, seen[1:]))


def test_vec_env_with_node_uncertainty(world):
    vec = PromptVecEnv(3, "defender", world=world, seed=0, node_uncertainty=True, max_steps=3)
    obs = vec.reset()
    assert obs["uncertainty"].shape == (3, 256)
    calls = world.decode_calls
    rng = np.random.default_rng(0)
    obs, *_ = vec.step([int(rng.choice(np.flatnonzero(m))) for m in vec.action_masks()])
    assert world.decode_calls - calls <= 1 and obs["uncertainty"].shape == (3, 256)


def test_switch_needs_a_segmenter_with_uncertainty(plain, scenes, world):
    plain_world = PromptWorld(plain, scenes)
    with pytest.raises(ValueError, match="node_uncertainty=True needs a segmenter"):
        PointPromptEnv("defender", world=plain_world, node_uncertainty=True)
    with pytest.raises(ValueError, match="node_uncertainty"):
        PromptVecEnv(2, "attacker", world=plain_world, node_uncertainty=True)
    # off (the default) with a RUAC segmenter: the observation is the plain one
    assert "uncertainty" not in PointPromptEnv("defender", world=world).observation_space.spaces
    rec = world.image(0)
    no_unc = Outcome(0.5, np.zeros(256, np.float32), 0.5)
    with pytest.raises(ValueError, match="no uncertainty"):
        build_observation(rec, np.zeros(256, np.uint8), rec.centres, no_unc, 0, 4, node_uncertainty=True)
    assert TrainConfig(node_uncertainty=True).env_kwargs("defender")["node_uncertainty"] is True
    with pytest.raises(ValueError, match="ruac_uncertainty"):
        TrainConfig(ruac_uncertainty="exact")


# ----------------------------------------------------------------------------- agents
def test_qnet_takes_the_uncertainty_as_a_node_input(world):
    with_unc = _defender_model(world, True)
    without = _defender_model(world, False)
    assert with_unc.policy.q_net.dyn_dim == without.policy.q_net.dyn_dim + 1
    env = PointPromptEnv("defender", world=world, node_uncertainty=True)
    obs, _ = env.reset(seed=1)
    batch = {k: v[None] for k, v in obs.items()}
    obs_t, _ = with_unc.policy.obs_to_tensor(batch)
    with torch.no_grad():
        q = with_unc.policy.q_net.q_values(obs_t, masked=False)
        obs_t["uncertainty"] = 255 - obs_t["uncertainty"]
        q2 = with_unc.policy.q_net.q_values(obs_t, masked=False)
    assert q.shape == (1, 2 * 256 + 1) and torch.isfinite(q).all()
    assert not torch.allclose(q, q2)
    start = (env._rec, env._obj, *env.prompt_state)
    res = greedy_rollout(with_unc, world, "defender", [start], max_steps=2)
    assert res[0]["steps"] >= 1 and np.isfinite(res[0]["quality"])


def test_defender_refines_with_a_ruac_segmenter(tmp_path, world, ruac, plain, head_dir, scenes):
    image = scenes[0].image
    run = _run_dir(tmp_path, _defender_model(world, True), node_uncertainty=True, ruac_checkpoint=str(head_dir))
    d = PromptDefender.load(run, segmenter=ruac, device="cpu", select="last", min_score_gain=None)  # the random net acts
    assert d.node_uncertainty
    res = d.refine(image, POINTS, LABELS)
    assert res.steps >= 1 and res.mask.shape == image.shape[:2] and res.mask.dtype == bool
    assert res.uncertainty.shape == image.shape[:2] and res.uncertainty.dtype == np.float32
    assert 0.0 <= res.uncertainty.min() and res.uncertainty.max() <= 1.0
    # mask and uncertainty are the RUAC decoder's for the output points
    pred = ruac.predict(image, res.point_coords, res.point_labels)
    np.testing.assert_array_equal(res.mask, pred.masks[0])
    np.testing.assert_allclose(res.uncertainty, pred.uncertainty[0])
    # the run's config names the head: loading without a segmenter rebuilds it
    d2 = PromptDefender.load(run, device="cpu", select="last", min_score_gain=None)
    assert d2.segmenter.decoder == "ruac"
    np.testing.assert_array_equal(d2.refine(image, POINTS, LABELS).mask, res.mask)
    with pytest.raises(ValueError, match="trained with node_uncertainty=True"):
        PromptDefender.load(run, segmenter=plain, device="cpu")


def test_plain_defender_works_with_a_ruac_segmenter(tmp_path, world, ruac, plain, scenes):
    image = scenes[1].image
    run = _run_dir(tmp_path, _defender_model(world, False))
    d = PromptDefender.load(run, segmenter=ruac, device="cpu")
    assert not d.node_uncertainty
    res = d.refine(image, POINTS, LABELS, max_steps=2)
    assert res.uncertainty is not None and res.uncertainty.shape == image.shape[:2]
    assert PromptDefender.load(run, segmenter=plain, device="cpu").refine(image, POINTS, LABELS, max_steps=2).uncertainty is None


def test_train_with_node_uncertainty_then_load(tmp_path, ruac, plain, head_dir, scenes):
    from ppd.agents.train import train

    kw = dict(
        seed=0, device="cpu", n_envs=2, rounds=1, attacker_steps=8, defender_steps=16, scenes=2, eval_scenes=2,
        learning_starts=8, buffer_size=64, batch_size=8, hidden_dim=16, n_layers=1, n_examples=1,
        node_uncertainty=True, filter_scenes=0,
    )
    with pytest.raises(ValueError, match="--ruac-checkpoint"):
        train(TrainConfig(**kw), tmp_path / "plain", segmenter=plain)
    out = tmp_path / "run"
    metrics = train(TrainConfig(**kw), out, segmenter=ruac)  # the head is recorded from the segmenter
    assert 0.0 <= metrics["final"]["defended_coarse_iou"] <= 1.0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["node_uncertainty"] is True and saved["ruac_checkpoint"] == str(head_dir / "ruac_head.pt")
    d = PromptDefender.load(out, device="cpu")
    assert d.node_uncertainty and d.segmenter.decoder == "ruac"
    res = d.refine(scenes[0].image, POINTS, LABELS)
    assert res.uncertainty.shape == res.mask.shape == scenes[0].image.shape[:2]
