"""Tests of the agents: graph Q-network, masked DQN, adversarial training loop."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest
import torch
import yaml
from stable_baselines3.common.buffers import DictReplayBuffer
from stable_baselines3.common.vec_env import DummyVecEnv

from ppd.agents.dqn import MaskedDQN, label_aux_loss, make_dqn, sample_valid_actions
from ppd.agents.qnet import (
    CONSISTENCY_PRIOR_INIT, MASKED_Q, GraphQNetwork, _batched_adjacency, _graph_tensors, label_disagreement,
    obs_action_mask, relative_features,
)
from ppd.agents.train import TrainConfig, greedy_rollout, train
from ppd.data.scenes import ProceduralScenes
from ppd.data.types import Scene
from ppd.envs.point_prompt_env import (
    RIGHT_LABEL, UNKNOWN_LABEL, WRONG_LABEL, PointPromptEnv, label_targets, valid_action_mask,
)
from ppd.envs.vec_env import PromptVecEnv
from ppd.envs.world import NEGATIVE, POSITIVE, PromptWorld, prompts_from_state
from ppd.graphs.store import GRAPH_STORE, GraphStore
from ppd.segmenter import ImageEmbedding, Prediction


@pytest.fixture(scope="module")
def world(tiny_segmenter) -> PromptWorld:
    """4 procedural 256-px scenes on the random-weight tiny model (16 x 16 = 256 nodes)."""
    return PromptWorld(tiny_segmenter, ProceduralScenes("train", 4, seed=0))


def _random_obs(vec: PromptVecEnv, rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
    """Real observations with random prompt states (some all-inactive, some all-active)."""
    obs = vec.reset()
    obs = {k: np.concatenate([v] * (batch // len(v) + 1))[:batch].copy() for k, v in obs.items()}
    n = obs["state"].shape[1]
    obs["state"] = rng.choice(3, size=(batch, n), p=[0.8, 0.1, 0.1]).astype(np.uint8)
    obs["state"][0] = 0
    obs["state"][1] = rng.integers(1, 3, n)
    return obs


def _net(vec: PromptVecEnv, role: str, relabel: bool = True) -> GraphQNetwork:
    dim = GRAPH_STORE.get(vec.world.image(0).graph_id).x.shape[1]
    torch.manual_seed(0)
    return GraphQNetwork(vec.observation_space, vec.action_space, role=role, relabel=relabel, node_feature_dim=dim)


def _q_on_transformed_graph(nets: dict, obs: dict, transform, tag: str) -> dict:
    """For each net: (Q-values with every observation on image ``obs``'s first graph,
    Q-values on a registered copy of that graph whose node features are ``transform(x)``)."""
    gid = int(obs["image_id"][0, 0])
    g = GRAPH_STORE.get(gid)
    changed = g.clone()
    changed.x = transform(g.x)
    new_id = GRAPH_STORE.register(f"test-{tag}-{gid}", changed)
    obs1 = {k: v.copy() for k, v in obs.items()}
    obs1["image_id"][:] = gid
    obs2 = {k: v.copy() for k, v in obs.items()}
    obs2["image_id"][:] = new_id
    with torch.no_grad():
        return {k: (n(n.obs_to_tensor(obs1)[0]), n(n.obs_to_tensor(obs2)[0])) for k, n in nets.items()}


# ----------------------------------------------------------------------------- Q-network
@pytest.mark.parametrize("role,relabel", [("attacker", True), ("defender", True), ("defender", False)])
def test_qnet_shape_and_exact_mask(world, role, relabel):
    vec = PromptVecEnv(2, role, world=world, seed=0, relabel=relabel)
    obs = _random_obs(vec, np.random.default_rng(0), 6)
    net = _net(vec, role, relabel)
    with torch.no_grad():
        q = net(net.obs_to_tensor(obs)[0]).numpy()
    n = vec.num_nodes
    assert n == 256 and q.shape == (6, 2 * n + 1)
    mask = valid_action_mask(obs["state"], role, relabel)
    assert (q[~mask] == MASKED_Q).all()
    assert np.isfinite(q).all() and (q[mask] > MASKED_Q / 2).all()
    assert mask[:, -1].all() and (q.max(axis=1) > MASKED_Q / 2).all()  # stop keeps every row finite
    assert (obs_action_mask(torch.as_tensor(obs["state"]).float(), role, relabel).numpy() == mask).all()


def test_qnet_batch_equals_single(world):
    """Batching graphs (block-diagonal adjacency) gives each element its own Q-values."""
    vec = PromptVecEnv(4, "defender", world=world, seed=3)
    obs = vec.reset()
    assert len(set(obs["image_id"].ravel().tolist())) > 1
    net = _net(vec, "defender")
    with torch.no_grad():
        q_batch = net(net.obs_to_tensor(obs)[0])
        for i in range(4):
            q_i = net(net.obs_to_tensor({k: v[i] for k, v in obs.items()})[0])
            torch.testing.assert_close(q_batch[i : i + 1], q_i, rtol=1e-4, atol=1e-4)


def test_zero_stop_q_and_instance_norm(world):
    """stop_q='zero': the stop Q-value is exactly 0. node_norm='instance': Q-values do not
    change when an image's node features are scaled and shifted per channel (what a
    global change of appearance does to them), while node_norm='none' does change."""
    vec = PromptVecEnv(2, "defender", world=world, seed=0)
    obs = _random_obs(vec, np.random.default_rng(1), 4)
    dim = GRAPH_STORE.get(vec.world.image(0).graph_id).x.shape[1]
    nets = {}
    for norm in ("instance", "none"):
        torch.manual_seed(0)
        nets[norm] = GraphQNetwork(vec.observation_space, vec.action_space, role="defender",
                                   node_feature_dim=dim, node_norm=norm, stop_q="zero")
    gen = torch.Generator().manual_seed(0)
    q = _q_on_transformed_graph(
        nets, obs, lambda x: x * (0.5 + torch.rand(dim, generator=gen)) + torch.randn(dim, generator=gen), "shifted"
    )
    for a, b in q.values():
        assert (a[:, -1] == 0).all() and (b[:, -1] == 0).all()
    torch.testing.assert_close(q["instance"][0], q["instance"][1], rtol=1e-4, atol=1e-4)
    assert (q["none"][0] - q["none"][1]).abs().max() > 1e-2
    with pytest.raises(ValueError, match="node_norm"):
        GraphQNetwork(vec.observation_space, vec.action_space, role="defender", node_feature_dim=dim, node_norm="batch")
    with pytest.raises(ValueError, match="stop_q"):
        GraphQNetwork(vec.observation_space, vec.action_space, role="defender", node_feature_dim=dim, stop_q="one")


def test_probe_q_prior_adds_weighted_score_gain(world, tmp_path):
    """q_prior='probe': a node's removal Q-value is the head's output plus w times SAM's
    predicted-IoU gain of removing it (decoded from the uint8 observation), w learned
    from 1; relabel and stop Q-values are untouched; it survives save/load; without
    probes in the observation it is refused."""
    vec = PromptVecEnv(2, "defender", world=world, seed=0, probe=True)
    obs = _random_obs(vec, np.random.default_rng(2), 4)
    rng = np.random.default_rng(3)
    obs["probe_score"] = rng.integers(0, 256, obs["probe_score"].shape).astype(np.uint8)
    dim = GRAPH_STORE.get(vec.world.image(0).graph_id).x.shape[1]
    torch.manual_seed(0)
    net = GraphQNetwork(vec.observation_space, vec.action_space, role="defender", node_feature_dim=dim, q_prior="probe")
    assert net.prior_weight.item() == 1.0 and any(p is net.prior_weight for p in net.parameters())
    t = net.obs_to_tensor(obs)[0]
    with torch.no_grad():
        q1 = net(t)
        net.prior_weight.fill_(0.0)
        q0 = net(t)
    n = vec.num_nodes
    gain = (obs["probe_score"].astype(np.float64) / 255.0 - 0.5) / 4.0  # PROBE_SCORE_GAIN
    valid = valid_action_mask(obs["state"], "defender", True)
    diff = (q1 - q0).numpy()
    np.testing.assert_allclose(diff[:, :n][valid[:, :n]], gain[valid[:, :n]], atol=1e-5)
    assert np.abs(gain[valid[:, :n]]).max() > 0.05  # the check is not vacuous
    assert (diff[:, n:] == 0).all()  # relabel, stop and masked entries unchanged
    assert (q1.numpy()[~valid] == MASKED_Q).all()
    # through make_dqn: saved with the policy, loaded back with its learned weight
    model = make_dqn(vec, "defender", hidden_dim=8, seed=0, q_prior="probe", learning_starts=0)
    model.q_net.prior_weight.data.fill_(0.7)
    model.save(tmp_path / "d.zip")
    loaded = MaskedDQN.load(tmp_path / "d.zip", env=vec)
    assert loaded.q_net.q_prior == "probe" and loaded.q_net.prior_weight.item() == pytest.approx(0.7)
    plain = PromptVecEnv(2, "defender", world=world, seed=0)
    with pytest.raises(ValueError, match="q_prior=.probe. needs removal probes"):
        GraphQNetwork(plain.observation_space, plain.action_space, role="defender", node_feature_dim=dim, q_prior="probe")
    with pytest.raises(ValueError, match="q_prior must be one of"):
        GraphQNetwork(vec.observation_space, vec.action_space, role="defender", node_feature_dim=dim, q_prior="greedy")
    with pytest.raises(ValueError, match="q_prior='probe' reads the removal probes"):
        TrainConfig(q_prior="probe", probe=False)
    with pytest.raises(ValueError, match="q_prior='greedy'"):
        TrainConfig(q_prior="greedy")
    with pytest.raises(ValueError, match="coarse_noise='gaussian'"):
        TrainConfig(coarse_noise="gaussian")
    with pytest.raises(ValueError, match="precision='fp16'"):
        TrainConfig(precision="fp16")
    assert TrainConfig(coarse_noise="random").env_kwargs("defender")["coarse_noise"] == "random"
    # the default resolves by the observation: the prior with probes, none without
    assert TrainConfig().dqn_kwargs()["q_prior"] == "probe"
    assert TrainConfig(probe=False).dqn_kwargs()["q_prior"] == "none"


def test_label_disagreement_on_a_hand_made_case():
    """d_i = similarity to the other label's prompts - similarity to its own label's (node
    i left out); 0 for inactive nodes and for a label with no other prompt."""
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])  # unit length is taken
    x = torch.stack([e1, e1, e2, e2, e1])[None]
    state = torch.tensor([[POSITIVE, NEGATIVE, NEGATIVE, NEGATIVE, 0]])
    d = label_disagreement(x, state)[0]
    # node 0 (+, looks like e1): no other positive (0), negatives mean (e1 + 2 e2) / 3 -> 1/3
    # node 1 (-, e1): positive e1 -> 1; other negatives e2 -> 0: d = 1 (a wrong label)
    # nodes 2, 3 (-, e2): positive e1 -> 0; other negatives (e1 + e2) / 2 -> 1/2: d = -1/2
    torch.testing.assert_close(d, torch.tensor([1 / 3, 1.0, -0.5, -0.5, 0.0]))


def test_consistency_q_prior_adds_weighted_disagreement(world, tmp_path):
    """q_prior='consistency': removal and relabel Q-values of node i get w_remove * max(d_i, 0)
    and w_relabel * max(d_i, 0) (d: label_disagreement of the graph's node features); stop and masked
    entries are untouched; the weights are learned and saved; attackers are refused;
    'probe+consistency' adds both priors."""
    vec = PromptVecEnv(2, "defender", world=world, seed=0, probe=True)
    obs = _random_obs(vec, np.random.default_rng(4), 4)
    dim = GRAPH_STORE.get(vec.world.image(0).graph_id).x.shape[1]
    n = vec.num_nodes
    valid = valid_action_mask(obs["state"], "defender", True)
    x = torch.stack([GRAPH_STORE.get(int(g)).x.float() for g in obs["image_id"][:, 0]])
    d = label_disagreement(x, torch.as_tensor(obs["state"]).long()).numpy()
    assert (d > 0.05).any() and (d < -0.05).any() and (d[obs["state"] == 0] == 0).all()
    d = np.maximum(d, 0.0)
    for prior in ("consistency", "probe+consistency"):
        torch.manual_seed(0)
        net = GraphQNetwork(vec.observation_space, vec.action_space, role="defender", node_feature_dim=dim, q_prior=prior)
        assert tuple(net.consistency_weight.tolist()) == pytest.approx(CONSISTENCY_PRIOR_INIT)
        assert hasattr(net, "prior_weight") == (prior == "probe+consistency")
        t = net.obs_to_tensor(obs)[0]
        with torch.no_grad():
            net.consistency_weight.copy_(torch.tensor([0.3, -0.2]))
            q1 = net(t)
            net.consistency_weight.zero_()
            q0 = net(t)
        diff = (q1 - q0).numpy()
        np.testing.assert_allclose(diff[:, :n][valid[:, :n]], 0.3 * d[valid[:, :n]], atol=1e-5)
        np.testing.assert_allclose(diff[:, n:2 * n][valid[:, n:2 * n]], -0.2 * d[valid[:, n:2 * n]], atol=1e-5)
        assert (diff[:, -1] == 0).all() and (q1.numpy()[~valid] == MASKED_Q).all()
    model = make_dqn(vec, "defender", hidden_dim=8, seed=0, q_prior="consistency", learning_starts=0)
    model.q_net.consistency_weight.data.copy_(torch.tensor([0.5, 0.1]))
    model.save(tmp_path / "d.zip")
    loaded = MaskedDQN.load(tmp_path / "d.zip", env=vec)
    assert loaded.q_net.q_prior == "consistency"
    assert loaded.q_net.consistency_weight.tolist() == pytest.approx([0.5, 0.1])
    att = PromptVecEnv(2, "attacker", world=world, seed=0)
    with pytest.raises(ValueError, match="is a defender prior"):
        GraphQNetwork(att.observation_space, att.action_space, role="attacker", node_feature_dim=dim, q_prior="consistency")
    # consistency needs no probes; probe+consistency does
    assert TrainConfig(q_prior="consistency", probe=False).dqn_kwargs()["q_prior"] == "consistency"
    assert TrainConfig(q_prior="consistency").dqn_kwargs("attacker")["q_prior"] == "none"
    with pytest.raises(ValueError, match="reads the removal probes"):
        TrainConfig(q_prior="probe+consistency", probe=False)


def test_label_targets_on_a_hand_made_case():
    """label_target: 1 for a positive outside / a negative inside the object, 0 for the
    right labels, 2 at inactive nodes; points outside the image are clipped to it."""
    gt = np.zeros((10, 10), bool)
    gt[:5] = True  # object: rows 0-4
    state = np.array([1, 1, 2, 2, 0, 1], np.uint8)
    points = np.array([[2, 2], [2, 8], [3, 1], [3, 9], [2, 2], [50, -3]], np.float32)
    np.testing.assert_array_equal(label_targets(state, points, gt), [RIGHT_LABEL, WRONG_LABEL, WRONG_LABEL, RIGHT_LABEL,
                                                                     UNKNOWN_LABEL, RIGHT_LABEL])


def test_label_aux_head_trains_and_never_feeds_the_q_values(world, tmp_path):
    """label_aux: the env's label_target is the ground truth of its state; the Q-values do
    not depend on it (the head is a training signal only); learn() trains the head;
    save/load keeps it; misuse is refused."""
    vec = PromptVecEnv(4, "defender", world=world, seed=0, probe=True, label_target=True)
    obs = vec.reset()
    for i, env in enumerate(vec.envs):
        st, pts = env.prompt_state
        info = env._info(False)
        gt = world.dataset[info["scene_index"]].masks[info["object_index"]]
        np.testing.assert_array_equal(obs["label_target"][i], label_targets(st, pts, gt))
    assert (obs["label_target"][obs["state"] == 0] == UNKNOWN_LABEL).all()
    with pytest.raises(ValueError, match="defender role only"):
        PointPromptEnv("attacker", world=world, label_target=True)

    dim = GRAPH_STORE.get(world.image(0).graph_id).x.shape[1]
    torch.manual_seed(0)
    net = GraphQNetwork(vec.observation_space, vec.action_space, role="defender", node_feature_dim=dim,
                        q_prior="probe", label_aux=True)
    batch = _random_obs(vec, np.random.default_rng(3), 6)
    other = {**batch, "label_target": np.random.default_rng(4).integers(0, 3, batch["label_target"].shape).astype(np.uint8)}
    with torch.no_grad():
        q, logits = net.q_and_label_logits(net.obs_to_tensor(batch)[0])
        q2, _ = net.q_and_label_logits(net.obs_to_tensor(other)[0])
    assert logits.shape == (6, vec.num_nodes)
    torch.testing.assert_close(q, q2, rtol=0, atol=0)
    torch.testing.assert_close(net.label_logits(net.obs_to_tensor(other)[0]), logits)
    with pytest.raises(ValueError, match="no label head"):
        _net(vec, "defender").label_logits(net.obs_to_tensor(batch)[0])
    att = PromptVecEnv(2, "attacker", world=world, seed=0)
    with pytest.raises(ValueError, match="label_aux is for the defender"):
        GraphQNetwork(att.observation_space, att.action_space, role="attacker", node_feature_dim=dim, label_aux=True)

    model = make_dqn(vec, "defender", hidden_dim=8, seed=0, label_aux=0.5, learning_starts=32, batch_size=16)
    head0 = model.q_net.label_head.weight.detach().clone()
    model.learn(160)
    assert model._n_updates > 0 and not torch.equal(model.q_net.label_head.weight, head0)
    model.save(tmp_path / "d.zip")
    loaded = MaskedDQN.load(tmp_path / "d.zip", env=vec)
    assert loaded.label_aux_weight == 0.5 and loaded.q_net.label_aux
    torch.testing.assert_close(loaded.q_net.label_head.weight, model.q_net.label_head.weight)
    plain = PromptVecEnv(2, "defender", world=world, seed=0, probe=True)
    with pytest.raises(ValueError, match="label_target"):
        make_dqn(plain, "defender", hidden_dim=8, seed=0, label_aux=0.5)
    with pytest.raises(ValueError, match="label_aux_weight"):
        make_dqn(vec, "defender", hidden_dim=8, seed=0, label_aux=float("nan"))
    assert TrainConfig(label_aux=0.3).env_kwargs("defender")["label_target"]
    assert TrainConfig(label_aux=0.3).dqn_kwargs("attacker")["label_aux"] == 0.0
    with pytest.raises(ValueError, match="label_aux"):
        TrainConfig(label_aux=-1.0)


def test_label_aux_loss_is_the_bce_of_known_targets():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 0.0, 4.0]])
    targets = torch.tensor([[1, 0, 2], [1, 2, 2]], dtype=torch.uint8)
    loss, acc = label_aux_loss(logits, targets)
    z, y = torch.tensor([2.0, -1.0, -3.0]), torch.tensor([1.0, 0.0, 1.0])
    expected = -(y * torch.log(torch.sigmoid(z)) + (1 - y) * torch.log(1 - torch.sigmoid(z))).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert acc == pytest.approx(2 / 3)
    assert label_aux_loss(logits, torch.full((2, 3), 2, dtype=torch.uint8))[0] is None


def test_relative_features_match_direct_cosines():
    """Each channel is the cosine of a node's feature to a prototype: the coverage- and
    (1 - coverage)-weighted means, and the mean over the OTHER prompts of each label (0
    when there is none)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 5, generator=gen)
    state = torch.tensor([[1, 1, 2, 0, 0, 1, 0], [1, 0, 0, 0, 0, 0, 0]])
    cov = torch.rand(2, 7, generator=gen)
    r = relative_features(x, state, cov)
    assert r.shape == (2, 7, 4)
    u = torch.nn.functional.normalize(x, dim=-1)
    cos = torch.nn.functional.cosine_similarity
    b, i = 0, 0  # a positive node: its positive prototype is the other two positives
    fg = (cov[b, :, None] * u[b]).sum(0) / cov[b].sum()
    bg = ((1 - cov[b])[:, None] * u[b]).sum(0) / (1 - cov[b]).sum()
    pos_others = (u[b, 1] + u[b, 5]) / 2
    neg = u[b, 2]
    want = torch.stack([cos(u[b, i], fg, 0), cos(u[b, i], bg, 0), cos(u[b, i], pos_others, 0), cos(u[b, i], neg, 0)])
    want = want * torch.stack([fg.norm(), bg.norm(), pos_others.norm(), neg.norm()])  # cosine x prototype length
    torch.testing.assert_close(r[b, i], want)
    # an inactive node sees all three positives; the lone negative sees no other negative
    torch.testing.assert_close(r[b, 3, 2], (u[b, 3] * (u[b, 0] + u[b, 1] + u[b, 5]) / 3).sum())
    assert r[b, 2, 3] == 0
    # the only positive of image 1 has no other positive, and image 1 has no negative
    assert r[1, 0, 2] == 0 and (r[1, :, 3] == 0).all()
    # invariant to each node's feature scale
    scale = 0.1 + torch.rand(2, 7, 1, generator=gen)
    torch.testing.assert_close(relative_features(x * scale, state, cov), r)


def test_relative_node_features_network(world):
    """node_features='relative': the network does not read the raw embedding (Q-values
    are unchanged when each node's feature is rescaled) and has no embedding projection;
    'embedding' does change; unknown values are rejected."""
    vec = PromptVecEnv(2, "defender", world=world, seed=0)
    obs = _random_obs(vec, np.random.default_rng(2), 4)
    dim = GRAPH_STORE.get(vec.world.image(0).graph_id).x.shape[1]
    nets = {}
    for kind in ("relative", "embedding", "both"):
        torch.manual_seed(0)
        nets[kind] = GraphQNetwork(vec.observation_space, vec.action_space, role="defender", node_feature_dim=dim,
                                   node_features=kind)
    assert not hasattr(nets["relative"], "x_proj") and hasattr(nets["both"], "x_proj")
    assert nets["both"].dyn_dim == nets["embedding"].dyn_dim + 4
    gen = torch.Generator().manual_seed(1)
    q = _q_on_transformed_graph(nets, obs, lambda x: x * (0.5 + torch.rand(x.shape[0], 1, generator=gen)), "scaled")
    torch.testing.assert_close(q["relative"][0], q["relative"][1], rtol=1e-4, atol=1e-4)
    assert (q["embedding"][0] - q["embedding"][1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="node_features"):
        GraphQNetwork(vec.observation_space, vec.action_space, role="defender", node_feature_dim=dim, node_features="raw")


def test_adjacency_is_mean_over_each_relation(world):
    """adj @ h = per-relation neighbour mean (PyG SAGEConv aggr='mean'), both-type edges in both."""
    gid = world.image(1).graph_id
    g = GRAPH_STORE.get(gid)
    n = g.num_nodes
    adj, adj_t = _batched_adjacency([_graph_tensors(gid, torch.device("cpu"))], torch.zeros(1, dtype=torch.long), n)
    torch.testing.assert_close(adj_t.to_dense(), adj.to_dense().t())
    h = torch.randn(n, 5)
    out = (adj @ h).reshape(2, n, 5)
    for r, types in enumerate(((0, 2), (1, 2))):
        keep = (g.edge_type == types[0]) | (g.edge_type == types[1])
        src, dst = g.edge_index[0, keep], g.edge_index[1, keep]
        expect = torch.zeros(n, 5).index_add_(0, src, h[dst])
        deg = torch.bincount(src, minlength=n).clamp(min=1)[:, None]
        torch.testing.assert_close(out[r], expect / deg, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- masked DQN
def test_sample_valid_actions_uniform():
    rng = np.random.default_rng(0)
    mask = np.zeros((3000, 10), bool)
    mask[:, [1, 4, 9]] = True
    a = sample_valid_actions(mask, rng)
    assert set(np.unique(a)) == {1, 4, 9}
    freq = np.bincount(a, minlength=10)[[1, 4, 9]] / len(a)
    assert np.all(np.abs(freq - 1 / 3) < 0.04)
    with pytest.raises(ValueError):
        sample_valid_actions(np.zeros((1, 4), bool), rng)


@pytest.mark.parametrize("role", ["attacker", "defender"])
def test_exploration_and_greedy_actions_are_valid(world, role):
    vec = PromptVecEnv(2, role, world=world, seed=0, relabel=False)
    model = make_dqn(vec, role, relabel=False, seed=0, learning_starts=50, buffer_size=500)
    rng = np.random.default_rng(1)
    obs = _random_obs(vec, rng, 8)
    mask = valid_action_mask(obs["state"], role, False)
    model.exploration_rate = 1.0
    picks = np.concatenate([model.predict(obs, deterministic=False)[0] for _ in range(125)]).reshape(-1, 8)
    assert picks.size == 1000 and mask[np.arange(8), picks].all()
    assert len(np.unique(picks[:, 2])) > 10  # really random
    # warm-up (before learning_starts) samples valid actions too
    model.num_timesteps = 0
    for _ in range(100):
        model._last_obs = _random_obs(vec, rng, 2)
        action, buffer_action = model._sample_action(learning_starts=50, n_envs=2)
        assert valid_action_mask(model._last_obs["state"], role, False)[np.arange(2), action].all()
        assert (action == buffer_action).all()
    # greedy
    greedy = model.predict(obs, deterministic=True)[0]
    assert mask[np.arange(8), greedy].all()
    single = model.predict({k: v[1] for k, v in obs.items()}, deterministic=True)[0]
    assert np.ndim(single) == 0 and mask[1, int(single)]


@pytest.mark.parametrize("double_q", [False, True])
def test_td_target_is_over_valid_actions(world, double_q):
    vec = PromptVecEnv(2, "defender", world=world, seed=0)
    model = make_dqn(vec, "defender", seed=0, learning_starts=20, buffer_size=200, batch_size=16, double_q=double_q)
    calls = []
    td_target = model.td_target
    model.td_target = lambda *a: calls.append(1) or td_target(*a)  # train() must use it
    model.learn(40)
    assert calls
    batch = model.replay_buffer.sample(16)
    nxt = batch.next_observations
    target = model.td_target(batch.rewards, nxt, batch.dones, model.gamma).numpy()[:, 0]
    with torch.no_grad():
        # by hand: the unmasked Q-values, restricted to the env's valid actions
        raw_target = model.q_net_target.q_values(nxt, masked=False).numpy()
        raw_online = model.q_net.q_values(nxt, masked=False).numpy()
    mask = valid_action_mask(nxt["state"].numpy().astype(np.uint8), "defender", True)
    assert (raw_target[~mask] != MASKED_Q).all()  # the unmasked values really differ
    if double_q:
        best = np.where(mask, raw_online, -np.inf).argmax(axis=1)
        next_q = raw_target[np.arange(16), best]
    else:
        next_q = np.where(mask, raw_target, -np.inf).max(axis=1)
    r, d = batch.rewards.numpy()[:, 0], batch.dones.numpy()[:, 0]
    np.testing.assert_allclose(target, r + (1 - d) * model.gamma * next_q, rtol=1e-5, atol=1e-6)


def test_replay_bytes_per_transition_small(world):
    """Per transition: obs + next_obs of what changes (no node features), <= 8 KB at N = 256."""
    env = PointPromptEnv("defender", world=world)
    assert env.num_nodes == 256
    rb = DictReplayBuffer(1000, env.observation_space, env.action_space, device="cpu", n_envs=1)
    arrays = [*rb.observations.values(), *rb.next_observations.values(), rb.actions, rb.rewards, rb.dones, rb.timeouts]
    per_transition = sum(a.nbytes for a in arrays) / rb.buffer_size
    assert per_transition <= 8 * 1024, per_transition


# the attacker's save/load round trip is also exact in the default run: the label filter's
# selection table is recomputed from the run's saved attacker.zip (test_label_filter.py)
@pytest.mark.parametrize("role", [pytest.param("attacker", marks=pytest.mark.slow), "defender"])
def test_learn_smoke_and_save_load_roundtrip(world, role, tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where SB3 puts logger folders
    vec = PromptVecEnv(4, role, world=world, seed=1)
    model = make_dqn(vec, role, seed=1, learning_starts=64, buffer_size=1000, batch_size=16)
    model.learn(200)
    assert model.num_timesteps >= 200 and model._n_updates > 0
    obs = _random_obs(vec, np.random.default_rng(2), 6)
    before = model.predict(obs, deterministic=True)[0]
    with torch.no_grad():
        q_before = model.q_net(model.policy.obs_to_tensor(obs)[0])
    model.save(tmp_path / "agent.zip")
    loaded = MaskedDQN.load(tmp_path / "agent.zip", env=vec)
    assert loaded.policy.role == role and loaded.policy.relabel
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], before)
    with torch.no_grad():
        torch.testing.assert_close(loaded.q_net(loaded.policy.obs_to_tensor(obs)[0]), q_before)
    loaded.learn(16, reset_num_timesteps=False)  # trains on after loading
    assert list(scratch.iterdir()) == []  # no empty /tmp/SB3-* folder per learn() call
    loaded.tensorboard_log = str(tmp_path / "tb")  # logging asked for: SB3's logger again
    loaded.learn(8, reset_num_timesteps=False)
    assert any((tmp_path / "tb").rglob("events.out.tfevents.*"))


def test_graph_store_reaches_the_network_through_policy_kwargs(world, tmp_path):
    """make_dqn gives the env's graph store to both networks through policy_kwargs; a
    saved model leaves it out, and a loaded one reads the store it is given."""
    import zipfile

    vec = PromptVecEnv(2, "defender", world=world, seed=0)
    model = make_dqn(vec, "defender", seed=0, hidden_dim=16, buffer_size=64, device="cpu")
    assert model.policy_kwargs["graph_store"] is GRAPH_STORE
    assert model.q_net.graph_store is GRAPH_STORE and model.q_net_target.graph_store is GRAPH_STORE
    obs = _random_obs(vec, np.random.default_rng(5), 4)
    with torch.no_grad():
        q = model.q_net(model.policy.obs_to_tensor(obs)[0])
    model.save(tmp_path / "m.zip")
    assert model.policy_kwargs["graph_store"] is GRAPH_STORE  # saving leaves the model's kwargs as they were
    saved = json.loads(zipfile.ZipFile(tmp_path / "m.zip").read("data"))["policy_kwargs"]
    assert "graph_store" not in saved and saved["hidden_dim"] == 16
    used = {int(g) for g in obs["image_id"].ravel()}
    same, other = GraphStore(), GraphStore()
    for gid in range(len(GRAPH_STORE)):  # the same ids; in `other` the used graphs' features differ
        g = GRAPH_STORE.get(gid)
        same.register(f"copy-{gid}", g)
        if gid in used:
            g = g.clone()
            g.x = g.x * 2.0 + 1.0
        other.register(f"changed-{gid}", g)
    qs = {}
    for name, store in (("default", None), ("same", same), ("other", other)):
        loaded = MaskedDQN.load(tmp_path / "m.zip", device="cpu", graph_store=store)
        want = GRAPH_STORE if store is None else store
        assert loaded.q_net.graph_store is want and loaded.q_net_target.graph_store is want
        with torch.no_grad():
            qs[name] = loaded.q_net(loaded.policy.obs_to_tensor(obs)[0])
    torch.testing.assert_close(qs["default"], q, rtol=0, atol=0)
    torch.testing.assert_close(qs["same"], q, rtol=0, atol=0)
    assert (qs["other"] - q).abs().max() > 1e-3  # the network reads the store it was given


# ----------------------------------------------------------------------------- learnability
class DiscSegmenter:
    """Stand-in segmenter whose masks react to points in an obvious way: the union of
    discs around positive points minus discs around negative points. ``encode`` pools
    the image into an 8 x 8 embedding of its 3 colour channels."""

    name = "disc-segmenter"
    info: dict = {"checkpoint": "none"}
    radius = 12

    def encode(self, image: np.ndarray) -> ImageEmbedding:
        t = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        emb = torch.nn.functional.adaptive_avg_pool2d(t, 8)
        key = f"disc:{hash(image.tobytes())}"
        return ImageEmbedding(emb, [], image.shape[:2], key)

    def predict_batch(self, embeddings, point_coords, point_labels, multimask=False) -> Prediction:
        h, w = embeddings[0].orig_hw
        yy, xx = np.mgrid[0:h, 0:w]
        masks = np.zeros((len(embeddings), h, w), bool)
        for b in range(len(embeddings)):
            pos = np.zeros((h, w), bool)
            neg = np.zeros((h, w), bool)
            for (x, y), lab in zip(point_coords[b], point_labels[b]):
                if lab < 0:
                    continue
                disc = (xx - x) ** 2 + (yy - y) ** 2 <= self.radius**2
                if lab == 1:
                    pos |= disc
                else:
                    neg |= disc
            masks[b] = pos & ~neg
        return Prediction(masks, np.full(len(embeddings), 0.5, np.float32), np.zeros((len(embeddings), 1, 1), np.float32))


def _disc_scenes(n: int) -> list[Scene]:
    scenes = []
    yy, xx = np.mgrid[0:64, 0:64]
    for i in range(n):
        rng = np.random.default_rng(i)
        cx, cy = rng.integers(22, 42, 2)
        obj = (xx - cx) ** 2 + (yy - cy) ** 2 <= 16**2
        img = np.zeros((64, 64, 3), np.uint8)
        img[:] = rng.integers(0, 100, 3)
        img[obj] = rng.integers(150, 256, 3)
        scenes.append(Scene(img, obj[None], domain="disc"))
    return scenes


class OneWrongPointEnv(PointPromptEnv):
    """Defender start: a correct positive at the object's centre node and a wrong
    (negative) point on another object node 1-2 patches away."""

    def _draw_start(self):
        rng = self.np_random
        rec = self.world.image(int(rng.integers(len(self.world.dataset))))
        gt = rec.scene.masks[0]
        ys, xs = np.nonzero(gt)
        c = np.array([xs.mean(), ys.mean()])
        d = np.linalg.norm(rec.centres - c, axis=1)
        centre = int(np.argmin(d))
        inside = gt[rec.centres[:, 1].astype(int), rec.centres[:, 0].astype(int)]
        wrong = rng.choice(np.flatnonzero(inside & (d > 6) & (d < 14)))
        st = np.zeros(rec.num_nodes, np.uint8)
        st[centre], st[wrong] = POSITIVE, NEGATIVE
        return rec, 0, st, rec.centres.copy(), "one-wrong"


def _mean_return(policy, world, episodes: int = 24) -> float:
    env = OneWrongPointEnv("defender", world=world, max_steps=2)
    total = 0.0
    for ep in range(episodes):
        obs, info = env.reset(seed=1000 + ep)
        done = False
        while not done:
            obs, r, term, trunc, info = env.step(policy(obs, env))
            total += r
            done = term or trunc
    return total / episodes


def test_defender_learns_to_fix_a_wrong_point():
    world = PromptWorld(DiscSegmenter(), _disc_scenes(6), k_physical=4, k_semantic=4)
    n = world.num_nodes
    assert n == 64

    def oracle(obs, env):  # relabel the wrong (negative) point, then stop
        neg = np.flatnonzero(obs["state"] == NEGATIVE)
        return n + int(neg[0]) if len(neg) else 2 * n

    best = _mean_return(oracle, world)
    rng = np.random.default_rng(0)
    random_return = _mean_return(lambda o, e: int(sample_valid_actions(e.action_masks()[None], rng)[0]), world)
    assert best > 0.25 and random_return < 0.1  # the right move matters

    vec = DummyVecEnv([lambda: OneWrongPointEnv("defender", world=world, max_steps=2) for _ in range(4)])
    vec.seed(0)
    model = make_dqn(
        vec, "defender", seed=0, learning_rate=1e-3, learning_starts=200, buffer_size=5000, batch_size=32,
        target_update_interval=200, exploration_fraction=0.5, hidden_dim=32,
    )
    model.learn(1200)
    trained = _mean_return(lambda o, e: int(model.predict(o, deterministic=True)[0]), world)
    assert trained >= 0.9 * best, (trained, best, random_return)


def test_greedy_rollout_reports_the_best_scored_state(world):
    from ppd.envs.world import state_from_prompts
    from ppd.prompts import coarse_prompts

    env = DummyVecEnv([lambda: PointPromptEnv("defender", world=world)])
    model = make_dqn(env, "defender", hidden_dim=16, n_layers=1, seed=0, device="cpu", buffer_size=64)
    with torch.no_grad():  # a random net that never stops: long rollouts
        model.policy.q_net.stop_head[-1].bias.fill_(-1e3)
    starts = []
    for i in range(3):
        rec = world.image(i)
        cp = coarse_prompts(rec.scene.masks[0], np.random.default_rng(i)).prompts
        starts.append((rec, 0, *state_from_prompts(cp.point_coords, cp.point_labels, rec.grid, rec.hw, rec.centres)[:2]))
    results = greedy_rollout(model, world, "defender", starts, 6)
    picked_inside = 0
    for (rec, obj, st, pts), r in zip(starts, results):
        def outcome(state):
            return world.evaluate([(rec, obj, state, pts)])[0]

        assert r["steps"] == 6 and 0 <= r["score_steps"] <= r["steps"]
        best = outcome(r["score_state"])
        assert best.quality == pytest.approx(r["score_quality"]) and best.score == pytest.approx(r["score"])
        assert best.score >= outcome(st).score and best.score >= outcome(r["state"]).score
        assert int((r["score_state"] != st).sum()) == r["score_steps"]  # one prompt change per step
        picked_inside += 0 < r["score_steps"] < r["steps"]
    assert picked_inside >= 1  # the rule is not just "start" or "end"


# ----------------------------------------------------------------------------- training loop
def _tiny_config(tiny_checkpoint, **kw) -> TrainConfig:
    base = dict(
        seed=0, device="cpu", checkpoint=tiny_checkpoint, n_envs=2, rounds=2, attacker_steps=16, defender_steps=24,
        scenes=3, eval_scenes=2, learning_starts=8, buffer_size=200, batch_size=8, target_update_interval=16,
        hidden_dim=16, n_examples=2, filter_scenes=0, chooser_pairs=2,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_train_writes_run_files_and_resumes(tiny_segmenter, tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    cfg = _tiny_config(tiny_checkpoint, defender_evals=3, threads=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the caller's setting: the run's own (1) is set for the run, then this one restored
    try:
        metrics = train(cfg, out, segmenter=tiny_segmenter)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert metrics["torch_threads"] == 1
    for name in ("config.yaml", "attacker.zip", "defender.zip", "state.json", "metrics.json", "examples.png"):
        assert (out / name).is_file(), name
    assert any((out / "tb").rglob("events.out.tfevents.*"))
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["rounds"] == 2 and saved["grid"] == 16  # resolved grid, for PromptDefender
    assert saved["threads"] == 1 and TrainConfig.from_run(out) == dataclasses.replace(cfg, grid=16)
    assert json.loads((out / "state.json").read_text())["round"] == 2
    final = metrics["final"]
    for k in ("ideal_iou", "attacked_iou", "defended_attacked_iou", "coarse_iou", "defended_coarse_iou"):
        assert 0.0 <= final[k] <= 1.0
    assert json.loads((out / "metrics.json").read_text())["final"] == final
    # refine_*: PromptDefender.refine with its defaults, loaded from the run, on the eval sets
    from ppd.agents.defender import PromptDefender
    from ppd.agents.train import EVAL_SEED, _eval_items
    from ppd.data.scenes import TRAIN_DOMAIN, ProceduralScenes
    from ppd.metrics import iou

    user = PromptDefender.load(out, segmenter=tiny_segmenter)
    assert user.consensus and user.keep_consistent  # the defaults the metric describes
    world = PromptWorld(tiny_segmenter, ProceduralScenes(TRAIN_DOMAIN, cfg.eval_scenes, seed=EVAL_SEED), grid=16)
    items = _eval_items(world, cfg)
    coarse = [user.refine(rec.scene.image, *prompts_from_state(*s_coarse)).mask for rec, _, _, s_coarse in items]
    assert final["refine_coarse_iou"] == pytest.approx(
        np.mean([iou(m, rec.scene.masks[obj]) for m, (rec, obj, _, _) in zip(coarse, items)]), abs=1e-6)
    assert 0.0 <= final["refine_attacked_iou"] <= 1.0
    assert [h["round"] for h in metrics["history"]] == [1, 2]
    # defender selection (defender_evals=3): defender.zip is the best of the
    # 3 evaluations per round, defender_last.zip the latest; final metrics describe the best
    assert (out / "defender_last.zip").is_file()
    points = [p for h in metrics["history"] for p in h["defender_selection"]]
    assert [p["defender_timesteps"] for p in points] == sorted({p["defender_timesteps"] for p in points})
    assert len(points) == 6
    best = max(points, key=lambda p: p["defended_coarse_iou"])
    assert metrics["selected_defender"] == best
    assert final["defended_coarse_iou"] == pytest.approx(best["defended_coarse_iou"])

    # --resume continues from the last completed round with the saved agents; a config
    # whose q_prior disagrees with the saved defender's (a run from before the prior
    # existed reads as the default) keeps and records the saved network's
    assert saved["q_prior"] == "auto"
    # (another thread count is allowed: the run records the one it continued with, here torch's default)
    metrics3 = train(_tiny_config(tiny_checkpoint, rounds=3, defender_evals=3, q_prior="none", threads=0), out,
                     resume=True, segmenter=tiny_segmenter)
    assert yaml.safe_load((out / "config.yaml").read_text())["q_prior"] == "probe"
    assert TrainConfig.from_run(out).threads == 0 and metrics3["torch_threads"] == torch.get_num_threads()
    hist = metrics3["history"]
    assert [h["round"] for h in hist] == [1, 2, 3]
    assert hist[2]["defender_timesteps"] >= hist[1]["defender_timesteps"] + 24
    assert hist[2]["attacker_timesteps"] >= hist[1]["attacker_timesteps"] + 16
    assert json.loads((out / "state.json").read_text())["round"] == 3
    points3 = [p for h in hist for p in h["defender_selection"]]
    assert len(points3) == 9 and points3[:6] == points
    assert metrics3["selected_defender"] == max(points3, key=lambda p: p["defended_coarse_iou"])


class _Records(logging.Handler):
    """Keeps the log records of the loggers it is attached to."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def phase_run(tiny_segmenter, tiny_checkpoint, tmp_path_factory):
    """A 2-round tiny run with the label filter and no defender selection: its metrics,
    the INFO log records of ppd.agents meanwhile, the phase reports, and whether torch ran
    in deterministic mode at each env step (an SB3 callback)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Probe(BaseCallback):
        def _on_step(self) -> bool:
            deterministic.append(torch.are_deterministic_algorithms_enabled())
            return True

    deterministic: list[bool] = []
    reports: list = []
    log, handler = logging.getLogger("ppd.agents"), _Records()
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    assert not torch.are_deterministic_algorithms_enabled()
    out = tmp_path_factory.mktemp("phases") / "run"
    try:
        cfg = _tiny_config(tiny_checkpoint, rounds=2, filter_scenes=2, filter_epochs=1)
        metrics = train(cfg, out, callback=Probe(), segmenter=tiny_segmenter, report=reports.append)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    after = torch.are_deterministic_algorithms_enabled()
    return dict(out=out, metrics=metrics, records=handler.records, reports=reports, deterministic=deterministic,
                deterministic_after=after)


def test_train_logs_and_reports_every_phase(phase_run):
    """A run logs one INFO line per phase, each with its round: the learning phases with
    their steps and recent reward, every evaluation with its numbers, the label filter
    with its selection, the edit chooser with its held-out numbers; ``report`` gets the same
    phases, each started then ended."""
    metrics, reports = phase_run["metrics"], phase_run["reports"]
    records = phase_run["records"]  # what a log handler on "ppd.agents" at INFO received (caplog, module-wide)
    lines = [r.getMessage() for r in records if r.name == "ppd.agents.train_progress" and r.levelno == logging.INFO]
    titles = ["round 1/2 attacker", "round 1/2 defender", "round 1/2 evaluation", "round 2/2 attacker",
              "round 2/2 defender", "round 2/2 evaluation", "round 2/2 label filter", "round 2/2 edit chooser",
              "round 2/2 evaluation (final)"]
    assert [line.split(": ")[0] for line in lines] == titles
    assert [(r.title, r.done) for r in reports] == [(t, done) for t in titles for done in (False, True)]
    ended = [r for r in reports if r.done]
    assert [r.text for r in ended] == lines

    def numbers(values):
        return ", ".join(f"{k} {v:.3f}" for k, v in values.items())

    history = metrics["history"]
    for rnd in (1, 2):
        att, dfd, ev = ended[3 * (rnd - 1): 3 * rnd]
        assert att.numbers["env_steps"] == 16 and att.numbers["timesteps"] == history[rnd - 1]["attacker_timesteps"]
        assert dfd.numbers["env_steps"] == 24 and dfd.numbers["timesteps"] == history[rnd - 1]["defender_timesteps"]
        # 8 steps per attacker env, episodes of at most 4: some ended, and their mean return is shown
        assert att.numbers["episodes"] >= 2 and np.isfinite(att.numbers["reward"])
        assert f"mean episode reward {att.numbers['reward']:.3f} over the last {att.numbers['episodes']} episodes" in att.text
        assert ev.numbers == history[rnd - 1]["eval"]
        assert ev.text == f"round {rnd}/2 evaluation: {numbers(history[rnd - 1]['eval'])}"
    meta = metrics["label_filter"]
    assert ended[6].numbers["threshold"] == meta["threshold"] and ended[6].numbers["action"] == meta["action"]
    assert f"held-out wrong-label AUC {meta['selection_auc']:.3f}, {meta['examples']} examples" in lines[6]
    chooser = metrics["edit_chooser"]  # one-shot starts are on by default
    assert ended[7].numbers["pairs"] == chooser["pairs"] and ended[7].numbers["eval_choice_iou"] == chooser["eval_choice_iou"]
    assert f"held-out one-shot IoU {chooser['eval_fm_iou']:.3f} -> {chooser['eval_choice_iou']:.3f} chosen" in lines[7]
    assert ended[8].final and ended[8].numbers == metrics["final"]
    assert lines[8] == f"round 2/2 evaluation (final): {numbers(metrics['final'])}"


def test_train_runs_torch_in_deterministic_mode_and_restores_it(phase_run):
    """Training runs with torch's deterministic algorithms (two-thread runs of one seed
    drifted apart without them: index_put_ accumulation in the backward passes), and
    the caller's setting comes back afterwards."""
    assert phase_run["deterministic"] and all(phase_run["deterministic"])
    assert not phase_run["deterministic_after"]


def test_train_without_selection_keeps_the_latest_defender(phase_run, tiny_checkpoint):
    out, metrics = phase_run["out"], phase_run["metrics"]  # defender_evals=0
    assert (out / "defender.zip").is_file() and not (out / "defender_last.zip").exists()
    assert metrics["selected_defender"] is None and "defender_selection" not in metrics["history"][0]
    with pytest.raises(ValueError, match="defender_evals"):
        _tiny_config(tiny_checkpoint, defender_evals=-1)


def test_train_bar_shows_round_phase_reward_and_evaluation():
    """ppd train's bar: the phase report's round and phase as description, each agent's
    recent reward (live from the model, then the phase's) and the last evaluation."""
    from types import SimpleNamespace

    from ppd.agents.train_progress import PhaseReport
    from ppd.cli.train import TrainBar

    class FakeBar:
        desc, post, n, total = "", {}, 0, 10

        def set_description(self, desc, refresh=True):
            self.desc = desc

        def set_postfix(self, post, refresh=True):
            self.post = dict(post)

        def update(self, n):
            self.n += n

    fake = FakeBar()
    bar = TrainBar(fake)
    bar.report(PhaseReport(1, 2, "attacker", False))
    assert fake.desc == "round 1/2 attacker"
    model = SimpleNamespace(ep_info_buffer=[{"r": 1.0, "l": 2}, {"r": 0.0, "l": 4}], policy=SimpleNamespace(role="attacker"))
    bar.steps(model, 8)
    assert fake.n == 8 and fake.post == {"att.reward": 0.5}
    bar.report(PhaseReport(1, 2, "defender", True, {"reward": -0.25}))
    bar.report(PhaseReport(1, 2, "evaluation", True, {"ideal_iou": 0.8, "attacked_iou": 0.4, "defended_attacked_iou": 0.6,
                                                      "coarse_iou": 0.5, "defended_coarse_iou": 0.7, "attacker_steps": 3.0}))
    assert fake.post == {"att.reward": 0.5, "def.reward": -0.25, "ideal": 0.8, "attacked": 0.4, "def.attacked": 0.6,
                         "coarse": 0.5, "def.coarse": 0.7}
    bar.report(PhaseReport(2, 2, "evaluation", False, final=True))
    assert fake.desc == "round 2/2 evaluation (final)"
    bar.steps(model, 8)  # a last vector step past the budget: the bar stops at its total
    assert fake.n == 10


def test_train_module_keeps_its_names():
    """Names other code imports from ppd.agents.train, wherever they are defined now."""
    import ppd.agents.train as t
    from ppd.agents import evaluation, rollout, train_config

    for name in ("TrainConfig", "EVAL_SEED", "EVAL_KEYS", "evaluate_agents", "greedy_rollout", "train", "_eval_items",
                 "_parts", "_load_model", "_save_model", "TRAIN_DOMAIN", "defended_coarse_iou", "refine_metrics",
                 "latest_defender_file"):
        assert hasattr(t, name), name
    assert t.TrainConfig is train_config.TrainConfig and t._eval_items is evaluation.eval_items
    assert t.greedy_rollout is rollout.greedy_rollout  # one rollout implementation
    assert t.evaluate_agents is evaluation.evaluate_agents


def test_defender_phase_parts():
    from ppd.agents.train import _parts

    assert _parts(7500, 3) == [2500, 2500, 2500]
    assert _parts(10, 3) == [4, 3, 3] and _parts(10, 0) == [10]


def test_train_cli_and_resume_errors(tiny_checkpoint, tmp_path, capsys):
    from ppd.cli import main

    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump({"checkpoint": tiny_checkpoint, "start_mix": {"coarse": 1.0}}))
    out = tmp_path / "cli"
    flags = ["--n-envs", "2", "--rounds", "1", "--attacker-steps", "8", "--defender-steps", "8", "--scenes", "2",
             "--eval-scenes", "1", "--learning-starts", "4", "--buffer-size", "64", "--batch-size", "4",
             "--hidden-dim", "8", "--n-examples", "1", "--device", "cpu", "--seed", "3", "--filter-scenes", "2",
             "--filter-epochs", "1"]
    assert main(["train", "--config", str(cfg_file), "--out", str(out), *flags]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    final, filt = metrics["final"], metrics["label_filter"]
    printed = capsys.readouterr().out
    assert f"  {'attacked, defended':38s} {final['defended_attacked_iou']:.3f}" in printed
    assert f"  {'coarse, defended without the filter':38s} {final['defended_coarse_iou_nofilter']:.3f}" in printed
    assert f"label filter (2 scenes, {filt['time_s']:.0f} s): wrong-label ROC AUC" in printed
    assert str(out / "label_filter.zip") in printed
    assert final["ideal_iou"] > 0  # seeded: the tiny random model covers some of the object
    pct = 100 * final["defended_attacked_iou"] / final["ideal_iou"]  # the summary's recovery line
    assert f"the defender recovers {pct:.0f}% of the ideal IoU (against this run's attacker" in printed
    assert f"python -m ppd.bench.defense --run {out} --attacker OTHER_RUN" in printed
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["seed"] == 3 and saved["start_mix"] == {"coarse": 1.0} and saved["hidden_dim"] == 8
    with pytest.raises(FileNotFoundError, match="state.json"):
        train(_tiny_config(tiny_checkpoint), tmp_path / "empty", resume=True)
    with pytest.raises(ValueError, match="rounds"):
        TrainConfig(rounds=0)


def test_evaluate_agents_polish(tiny_segmenter, tiny_checkpoint):
    """evaluate_agents(polish=True): the defended outputs are the unpolished ones minus
    removals that each raised the world's predicted IoU, until none does (or one prompt
    is left, or the budget is spent), and their quality is the polished state's."""
    from ppd.agents.train import evaluate_agents

    cfg = _tiny_config(tiny_checkpoint, eval_scenes=3, defender_max_steps=12)
    world = PromptWorld(tiny_segmenter, ProceduralScenes("train", 3, seed=7))
    models = {}
    for role in ("attacker", "defender"):
        env = DummyVecEnv([lambda role=role: PointPromptEnv(role, world=world)])
        models[role] = make_dqn(env, role, relabel=True, hidden_dim=16, n_layers=1, seed=0, device="cpu", buffer_size=64)
    plain, r0 = evaluate_agents(models["attacker"], models["defender"], world, cfg, return_rollouts=True, polish=False)
    polished, r1 = evaluate_agents(models["attacker"], models["defender"], world, cfg, return_rollouts=True, polish=True)
    removed = 0
    for (rec, obj, _, pts), a, b in zip(r1["coarse"], r0["defended_coarse"], r1["defended_coarse"]):
        before, after = a["score_state"], b["score_state"]
        assert not ((after != 0) & (after != before)).any()  # only removals
        removed += int(((before != 0) & (after == 0)).sum())
        assert b["score_steps"] == a["score_steps"] + int(((before != 0) & (after == 0)).sum())
        out = world.evaluate([(rec, obj, after, pts)], probe=True)[0]
        assert b["score_quality"] == pytest.approx(out.quality)
        if (after != 0).sum() > 1 and b["score_steps"] < cfg.defender_max_steps:
            assert (out.probe_score[after != 0] <= 0).all()
    assert polished["defended_coarse_iou"] == pytest.approx(np.mean([b["score_quality"] for b in r1["defended_coarse"]]))
    assert plain["ideal_iou"] == polished["ideal_iou"] and plain["attacked_iou"] == polished["attacked_iou"]
    assert removed > 0, "the random defender's outputs should leave a removal that raises the score"
