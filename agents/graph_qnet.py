"""Graph Q-network for the point-prompt environments: a relational GNN over the image's
dual-space graph that gives every prompt action its Q-value.

The observation (see :class:`ppd.envs.point_prompt_env.PointPromptEnv`) holds only what
changes during an episode: the prompt state of each node, the mask coverage, the prompt
offsets, the step fraction, SAM's score and the image's graph id. The static graph (node
features from SAM2's embedding, physical and semantic edges) is looked up by that id in
the network's graph store (``graph_store``, given through the policy's
``policy_kwargs``; default :data:`ppd.graphs.store.GRAPH_STORE`), so the replay buffer
stays small. :mod:`ppd.agents.qnet` wraps the network as a Stable-Baselines3 DQN policy.

Network (per node i, hidden width H):

* input: ``LayerNorm(Linear(x_i)) + Linear([onehot(state_i), coverage_i, offset_i,
  pos_i, step_frac, score])``, then ReLU (with ``node_features="relative"`` the first
  term is dropped and the node's four prompt-relative similarities,
  :func:`relative_features`, join the second; ``"both"`` keeps both); when the observation has the optional
  ``uncertainty`` key (env ``node_uncertainty=True``: the patch's mean pixel uncertainty
  under the current prompts, RUAC decoder), ``uncertainty_i`` follows ``coverage_i``;
  so do the removal probes ``probe_score_i`` and ``probe_change_i`` (env ``probe=True``).
  The width of these per-node inputs is derived from the observation space
  (:func:`dynamic_input_dim`), so a saved network rebuilds for the observation it was
  trained on;
* ``n_layers`` relational SAGE layers with separate weights per edge relation,
  ``h' = h + ReLU(LayerNorm(W0 h + W_phys mean_phys(h) + W_sem mean_sem(h)))`` (mean
  over the node's neighbours in that relation, as PyG ``SAGEConv``; edges of type
  "both" belong to both relations);
* heads: a per-node MLP over ``[h_i, mean_j h_j]`` gives the node's two Q-values
  (kind 0 and kind 1); an MLP over ``[mean h, max h]`` gives the stop Q-value;
* with ``q_prior="probe"`` (defender with removal probes; beyond the paper) the removal
  Q-value of node i is the head's output plus ``w * probe_score_i``, SAM's predicted-IoU
  gain of removing the prompt, with a learned scalar ``w`` that starts at 1. The
  untrained greedy policy is then close to :class:`~ppd.agents.baselines.GreedyScoreFilter`
  and the network learns the residual (residual policy learning);
* with ``q_prior="consistency"`` (defender; beyond the paper) the removal and the relabel
  Q-values of node i get ``w_remove * max(d_i, 0)`` and ``w_relabel * max(d_i, 0)``, where
  ``d_i`` is the prompt's label disagreement with the image (:func:`label_disagreement`:
  how much more its patch looks like the prompts of the other label than like those of
  its own), with learned scalars that start at :data:`CONSISTENCY_PRIOR_INIT`. Only
  disagreeing prompts get a prior: with the signed ``d`` the weights were fitted on the
  many consistent prompts, whose returns ``d`` does not predict, and trained to ~0.
  ``"probe+consistency"`` adds both priors.

Output: ``(B, 2N + 1)`` Q-values in the environment's action order (``kind * N + node``,
stop last). Invalid actions (see :func:`obs_action_mask`) are set to :data:`MASKED_Q`
inside ``forward``, so the greedy action and DQN's target ``max`` only ever see valid
actions; stop is always valid, so every row has a finite maximum.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
from gymnasium import spaces
from stable_baselines3.dqn.policies import QNetwork

from ppd.agents.graph_tensors import SparseMean, batched_adjacency, graph_tensors
from ppd.envs.point_prompt_env import ROLES, decode_probe_score, valid_action_mask
from ppd.envs.world import INACTIVE, NEGATIVE, POSITIVE
from ppd.graphs.store import GRAPH_STORE, GraphStore

__all__ = [
    "CONSISTENCY_PRIOR_INIT", "MASKED_Q", "NODE_FEATURES", "NODE_NORMS", "OPTIONAL_NODE_KEYS", "Q_PRIORS", "RELATIVE_DIM",
    "STOP_QS", "GraphQNetwork", "dynamic_input_dim", "label_disagreement", "obs_action_mask", "prior_terms",
    "relative_features",
]

#: Q-value given to invalid actions: far below any real value but finite, so that losses
#: and targets stay finite (a row always has the valid stop action).
MASKED_Q = -1e9
#: Node-feature normalisations of :class:`GraphQNetwork` (``node_norm``).
NODE_NORMS = ("none", "instance")
#: Stop-action Q-values of :class:`GraphQNetwork` (``stop_q``).
STOP_QS = ("learned", "zero")
#: Q-value priors of :class:`GraphQNetwork` (``q_prior``): terms joined by ``+``.
Q_PRIORS = ("none", "probe", "consistency", "probe+consistency")


def prior_terms(q_prior: str) -> set[str]:
    """The priors a ``q_prior`` value adds: a subset of {"probe", "consistency"}."""
    return set(q_prior.split("+")) - {"none"}


#: Initial weights (removal, relabel) of the ``consistency`` prior: a clearly wrong
#: prompt (disagreement ~0.5) starts ~0.25 above a consistent one (0), the size of the
#: IoU gain of fixing one.
CONSISTENCY_PRIOR_INIT = (0.5, 0.5)
#: Node-feature inputs of :class:`GraphQNetwork` (``node_features``).
NODE_FEATURES = ("embedding", "relative", "both")
#: Channels of the prompt-relative semantic features (see :func:`relative_features`).
RELATIVE_DIM = 4

#: Per-node dynamic inputs every observation has: one-hot state (3), coverage, offset
#: (2), pos (2), step_frac, score.
_BASE_DYN_DIM = 10
#: Optional per-node observation keys, in the order they follow ``coverage`` in the
#: network's input (one channel each).
OPTIONAL_NODE_KEYS = ("uncertainty", "probe_score", "probe_change")


def dynamic_input_dim(observation_space: spaces.Dict) -> int:
    """Width of the per-node dynamic inputs for an observation space: the base inputs
    plus one channel per optional per-node key it has (see :data:`OPTIONAL_NODE_KEYS`)."""
    keys = getattr(observation_space, "spaces", {}) or {}
    return _BASE_DYN_DIM + sum(k in keys for k in OPTIONAL_NODE_KEYS)


def obs_action_mask(state: np.ndarray | torch.Tensor, role: str, relabel: bool) -> np.ndarray | torch.Tensor:
    """Valid-action mask ``(..., 2N + 1)`` bool from the observation's ``state`` ``(..., N)``.

    The one rule shared by the Q-network (masking inside ``forward``) and by
    :class:`~ppd.agents.dqn.MaskedDQN`'s exploration. It is
    :func:`ppd.envs.point_prompt_env.valid_action_mask`, also for torch tensors (any
    dtype: SB3 may hand the state over as float).
    """
    if role not in ROLES:
        raise ValueError(f"role must be 'attacker' or 'defender', got {role!r}")
    if not isinstance(state, torch.Tensor):
        return valid_action_mask(np.asarray(state).round().astype(np.uint8), role, relabel)
    active = state.round().long() != INACTIVE if state.is_floating_point() else state.long() != INACTIVE
    if role == "attacker":
        kinds = [~active, ~active]
    else:
        kinds = [active, active & bool(relabel)]
    stop = torch.ones(*state.shape[:-1], 1, dtype=torch.bool, device=state.device)
    return torch.cat([*kinds, stop], dim=-1)


def relative_features(x: torch.Tensor, state: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """Prompt-relative semantic features ``(B, N, 4)`` of each node (beyond the paper).

    With ``u_i`` node i's feature scaled to unit length, the channels are the dot
    products of ``u_i`` with four prototypes of the same image, each a weighted mean of
    unit vectors (so a cosine similarity scaled by how much the prototype's members agree):

    0. the current mask: the coverage-weighted mean of ``u`` (``coverage`` in [0, 1]);
    1. the background: the mean of ``u`` weighted by ``1 - coverage``;
    2. the positive prompts: the mean of ``u`` over positive nodes other than i;
    3. the negative prompts: the same over negative nodes other than i.

    A prototype with no weight (no other prompt of that label, an empty mask) is the zero
    vector, so its channel is 0. These values say how well a prompt agrees with the rest
    of its image ("this positive looks like the background"), not what the image looks
    like. Measured: a defender trained on them transferred no better to
    the shifted domains than one on the raw embedding (docs/training.md, "Options measured and left off"), so the default stays
    ``"embedding"``.

    Args:
        x: (B, N, C) node features; state: (B, N) long prompt state; coverage: (B, N).
    """
    u = nn.functional.normalize(x, dim=-1)
    cov = coverage.clamp(0.0, 1.0)

    def proto(w: torch.Tensor) -> torch.Tensor:  # (B, N) weights -> (B, C) weighted mean
        return (w[..., None] * u).sum(1) / w.sum(1, keepdim=True).clamp(min=1e-6)

    fg, bg = proto(cov), proto(1.0 - cov)
    out = [(u * fg[:, None]).sum(-1), (u * bg[:, None]).sum(-1), *_prompt_similarities(u, state)]
    return torch.stack(out, dim=-1)


def _prompt_similarities(u: torch.Tensor, state: torch.Tensor) -> list[torch.Tensor]:
    """[positive, negative] (B, N) each: the dot product of unit feature ``u_i`` with the
    mean of ``u`` over the nodes of that label other than i (0 when there are none)."""
    out = []
    for label in (POSITIVE, NEGATIVE):
        w = (state == label).to(u.dtype)
        total, count = (w[..., None] * u).sum(1, keepdim=True), w.sum(1, keepdim=True)
        # leave node i out of its own label's prototype
        others = (total - w[..., None] * u) / (count - w).clamp(min=1.0)[..., None]
        out.append((u * others).sum(-1))
    return out


def label_disagreement(x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """How much each prompt's label disagrees with the image's other prompts, ``(B, N)``.

    With :func:`relative_features`' prototypes of the positive and the negative prompts
    (node i left out of its own), ``d_i = s_other_i - s_own_i``: the similarity of node
    i's feature to the prompts of the other label minus that to the prompts of its own
    label. A positive prompt on background looks like the negatives: ``d > 0``. Inactive
    nodes get 0. It needs no ground truth and no decoder call: measured on the attacked
    prompt sets of two trained attackers (20 held-out scenes), it ranks wrong-label
    prompts above right ones with ROC AUC 0.80 and 0.91 in-domain (clutter 0.66 and
    0.74), where SAM's predicted-IoU gain of removing them reaches 0.57-0.69.

    Args:
        x: (B, N, C) node features; state: (B, N) long prompt state.
    """
    sim_pos, sim_neg = _prompt_similarities(nn.functional.normalize(x, dim=-1), state)
    d = torch.where(state == POSITIVE, sim_neg - sim_pos, sim_pos - sim_neg)
    return torch.where(state == INACTIVE, torch.zeros_like(d), d)


class _RelationalSAGE(nn.Module):
    """``h + ReLU(LayerNorm(W0 h + W_phys mean_phys(h) + W_sem mean_sem(h)))``.

    Per relation this is PyG's ``SAGEConv(aggr="mean")``; the neighbour means of both
    relations come from one block-sparse matmul (``adj @ h``), measured ~4x faster on CPU
    than message passing by gather + scatter.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.lin = nn.Linear(3 * hidden, hidden)  # [W0 | W_phys | W_sem]
        self.norm = nn.LayerNorm(hidden)

    def forward(self, h: torch.Tensor, adj: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """h (B, N, H), adj ((B 2N, B N), transpose) -> (B, N, H)."""
        B, N, H = h.shape
        agg = SparseMean.apply(adj[0], adj[1], h.reshape(B * N, H)).reshape(B, 2, N, H)
        return h + torch.relu(self.norm(self.lin(torch.cat([h, agg[:, 0], agg[:, 1]], dim=-1))))


class GraphQNetwork(QNetwork):
    """Per-node Q-values from a relational GNN over the image's dual-space graph.

    Args:
        observation_space: the environment's ``Dict`` observation space (``state`` (N,)...;
            with an ``uncertainty`` (N,) key the network takes it as a node input).
        action_space: ``Discrete(2N + 1)``.
        role: ``"attacker"`` or ``"defender"``: which actions are valid.
        relabel: whether the defender's relabel actions (kind 1) are valid.
        node_feature_dim: channels C of the graphs' node features ``x`` (N, C).
        hidden_dim: width H of the GNN.
        n_layers: message-passing layers.
        node_norm: ``"none"`` or ``"instance"``: standardise each graph's node features
            per channel over its nodes before the input projection (zero mean, unit
            variance within the image; beyond the paper). The network then sees how a
            patch differs from the rest of its image, not the image's overall appearance,
            which is what shifts between domains (texture, contrast).
        node_features: which image features enter the node inputs: ``"embedding"``
            (the graph's pooled SAM2 embedding ``x``, projected), ``"relative"`` (only the
            four prompt-relative similarities of :func:`relative_features`, appended to
            the dynamic inputs; the raw embedding is not used) or ``"both"``.
        stop_q: ``"learned"`` (the stop head over pooled graph features) or ``"zero"``:
            the stop action's Q-value is the constant 0, which is its exact value in
            these environments (stop ends the episode with reward 0). The agent then
            changes a prompt only when it expects a positive return from the change, and
            no learned head can drift on images unlike the training ones.
        q_prior: ``"none"``, ``"probe"``: add ``w * probe_score_i`` (learned ``w``,
            initially 1) to node i's removal Q-value, needs the ``probe_score`` key
            (defender env with ``probe=True``); ``"consistency"``: add learned multiples
            of ``max(d_i, 0)`` (:func:`label_disagreement`) to node i's removal and relabel Q-values
            (defender); ``"probe+consistency"``: both.
        label_aux: add the auxiliary label head (defender; beyond the paper): a logit per
            node that its prompt's label is wrong, from the same hidden node features as
            the Q-values (:meth:`label_logits`), trained by
            :class:`~ppd.agents.dqn.MaskedDQN` against the observation's
            ``label_target`` (ground truth, training only). It shapes the shared
            features; the Q-values never read ``label_target``.
        graph_store: the :class:`~ppd.graphs.store.GraphStore` whose graphs the
            observations' ``image_id`` name (None: :data:`~ppd.graphs.store.GRAPH_STORE`,
            where :class:`~ppd.envs.world.PromptWorld` registers them). It is not saved
            with the network: graph ids belong to one process.
        features_extractor, features_dim, net_arch, activation_fn, normalize_images:
            accepted for SB3 compatibility, unused.

    ``forward(obs) -> (B, 2N + 1)``; invalid actions hold exactly :data:`MASKED_Q`.
    """

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        role: str,
        relabel: bool = True,
        node_feature_dim: int = 64,
        hidden_dim: int = 32,
        n_layers: int = 2,
        node_norm: str = "none",
        stop_q: str = "learned",
        node_features: str = "embedding",
        q_prior: str = "none",
        label_aux: bool = False,
        graph_store: GraphStore | None = None,
        features_extractor: Any = None,
        features_dim: int = 0,
        net_arch: list[int] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = False,
    ) -> None:
        # Skip QNetwork.__init__ (it builds an MLP over flat features); set up the BasePolicy.
        super(QNetwork, self).__init__(observation_space, action_space, features_extractor=None, normalize_images=False)
        if role not in ROLES:
            raise ValueError(f"role must be 'attacker' or 'defender', got {role!r}")
        if not isinstance(observation_space, spaces.Dict) or "state" not in observation_space.spaces:
            raise ValueError("GraphQNetwork needs the point-prompt Dict observation space (with 'state', ...)")
        n = int(observation_space["state"].shape[0])
        if int(action_space.n) != 2 * n + 1:
            raise ValueError(f"action space Discrete({action_space.n}) does not match 2N + 1 = {2 * n + 1}")
        if node_norm not in NODE_NORMS:
            raise ValueError(f"node_norm must be one of {NODE_NORMS}, got {node_norm!r}")
        self.node_norm = node_norm
        if stop_q not in STOP_QS:
            raise ValueError(f"stop_q must be one of {STOP_QS}, got {stop_q!r}")
        self.stop_q = stop_q
        if node_features not in NODE_FEATURES:
            raise ValueError(f"node_features must be one of {NODE_FEATURES}, got {node_features!r}")
        self.node_features = node_features
        if q_prior not in Q_PRIORS:
            raise ValueError(f"q_prior must be one of {Q_PRIORS}, got {q_prior!r}")
        terms = prior_terms(q_prior)
        if "probe" in terms and "probe_score" not in observation_space.spaces:
            raise ValueError(f"q_prior={q_prior!r} needs removal probes in the observation (a defender env with probe=True)")
        if terms and role != "defender":
            raise ValueError(f"q_prior={q_prior!r} is a defender prior; the {role} takes q_prior='none'")
        if label_aux and role != "defender":
            raise ValueError(f"label_aux is for the defender; the {role} takes label_aux=False")
        self.label_aux = bool(label_aux)
        self.graph_store = GRAPH_STORE if graph_store is None else graph_store
        self.q_prior = q_prior
        self._prior_terms = terms
        self.num_nodes = n
        self.role = role
        self.relabel = bool(relabel)
        self.node_feature_dim = int(node_feature_dim)
        self.hidden_dim = int(hidden_dim)
        self.n_layers = int(n_layers)
        self.net_arch = net_arch or []
        self.activation_fn = activation_fn
        self.features_dim = features_dim
        H = self.hidden_dim
        if node_features != "relative":
            self.x_proj = nn.Sequential(nn.Linear(self.node_feature_dim, H), nn.LayerNorm(H))
        # optional per-node keys the observation carries (e.g. "uncertainty")
        self.node_keys = tuple(k for k in OPTIONAL_NODE_KEYS if k in observation_space.spaces)
        for k in self.node_keys:
            if tuple(observation_space[k].shape) != (n,):
                raise ValueError(f"observation key {k!r} must have shape ({n},), got {observation_space[k].shape}")
        self.dyn_dim = dynamic_input_dim(observation_space) + (RELATIVE_DIM if node_features != "embedding" else 0)
        self.dyn_proj = nn.Linear(self.dyn_dim, H)
        self.layers = nn.ModuleList(_RelationalSAGE(H) for _ in range(self.n_layers))
        # node head: MLP over [h_i, mean h]; its first layer is split so that the graph
        # context is projected once per graph, not once per node
        self.node_head_h = nn.Linear(H, H)
        self.node_head_ctx = nn.Linear(H, H, bias=False)
        self.node_head_out = nn.Linear(H, 2)
        self.stop_head = nn.Sequential(nn.Linear(2 * H, H), nn.ReLU(), nn.Linear(H, 1))
        if "probe" in terms:
            self.prior_weight = nn.Parameter(torch.tensor(1.0))
        if "consistency" in terms:
            self.consistency_weight = nn.Parameter(torch.tensor(CONSISTENCY_PRIOR_INIT))
        if self.label_aux:
            self.label_head = nn.Linear(H, 1)

    # -- inputs -----------------------------------------------------------------------
    def _node_inputs(
        self, obs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        """(B, N, H) initial node states, (B, N) long prompt state, batched adjacency, and
        each node's positive part of :func:`label_disagreement` (B, N) when the
        consistency prior needs it."""
        device = self.dyn_proj.weight.device
        state = obs["state"].to(device)
        B, N = state.shape
        if N != self.num_nodes:
            raise ValueError(f"observation has {N} nodes, the network was built for {self.num_nodes}")
        state = state.round().long() if state.is_floating_point() else state.long()
        ids = obs["image_id"].reshape(B).round().long().cpu()
        uniq, inv = torch.unique(ids, return_inverse=True)
        graphs = [graph_tensors(int(g), device, self.graph_store) for g in uniq.tolist()]
        if graphs[0].x.shape != (N, self.node_feature_dim):
            raise ValueError(
                f"graph {int(uniq[0])} has node features {tuple(graphs[0].x.shape)}, expected "
                f"({N}, {self.node_feature_dim}) (node_feature_dim must match the segmenter's embedding)"
            )
        inv = inv.to(device)
        x = torch.stack([g.x for g in graphs])
        if self.node_norm == "instance":
            x = (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + 1e-5)
        pos = torch.stack([g.pos for g in graphs])[inv]
        cov = obs["coverage"].to(device).float().unsqueeze(-1) / 255.0
        x_b = x[inv] if self.node_features != "embedding" or "consistency" in self._prior_terms else None
        extra = [relative_features(x_b, state, cov[..., 0])] if self.node_features != "embedding" else []
        disagree = label_disagreement(x_b, state).clamp(min=0.0) if "consistency" in self._prior_terms else None
        if self.node_keys:  # optional per-node channels (uint8 x 255, like coverage)
            cov = torch.cat([cov, *(obs[k].to(device).float().unsqueeze(-1) / 255.0 for k in self.node_keys)], dim=-1)
        off = obs["offset"].to(device).float().reshape(B, N, 2) / 255.0 - 0.5  # flat (2N,) or (N, 2)
        glob = torch.cat([obs["step_frac"].to(device).float(), obs["score"].to(device).float()], dim=-1)
        dyn = torch.cat(
            [nn.functional.one_hot(state.clamp(0, 2), 3).float(), cov, off, pos, glob[:, None, :].expand(B, N, 2), *extra],
            dim=-1,
        )
        h = self.dyn_proj(dyn)
        if self.node_features != "relative":
            h = h + self.x_proj(x)[inv]  # project unique graphs only
        h = torch.relu(h)
        return h, state, batched_adjacency(graphs, inv, N), disagree

    # -- forward ----------------------------------------------------------------------
    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Masked Q-values ``(B, 2N + 1)`` for a batch of observations."""
        return self.q_values(obs, masked=True)

    def q_values(self, obs: dict[str, torch.Tensor], masked: bool = True) -> torch.Tensor:
        """Q-values ``(B, 2N + 1)``; with ``masked``, invalid actions hold :data:`MASKED_Q`."""
        return self.q_and_label_logits(obs, masked)[0]

    def label_logits(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, N) logits that each node's prompt has the wrong label (``label_aux``
        networks; meaningful at active nodes only)."""
        logits = self.q_and_label_logits(obs)[1]
        if logits is None:
            raise ValueError("this network has no label head (built with label_aux=False)")
        return logits

    def q_and_label_logits(
        self, obs: dict[str, torch.Tensor], masked: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Q-values as :meth:`q_values` and, with ``label_aux``, the (B, N) label logits
        of :meth:`label_logits`, from one pass (else None)."""
        h, state, adj, disagree = self._node_inputs(obs)
        B, N, H = h.shape
        for layer in self.layers:
            h = layer(h, adj)
        mean, mx = h.mean(dim=1), h.amax(dim=1)
        hidden = torch.relu(self.node_head_h(h) + self.node_head_ctx(mean)[:, None, :])
        q_nodes = self.node_head_out(hidden)  # (B, N, 2)
        if "probe" in self._prior_terms:
            gain = decode_probe_score(obs["probe_score"].to(h.device).float())
            q_nodes = torch.stack([q_nodes[..., 0] + self.prior_weight * gain, q_nodes[..., 1]], dim=-1)
        if disagree is not None:
            q_nodes = q_nodes + disagree[..., None] * self.consistency_weight
        if self.stop_q == "zero":
            q_stop = hidden.new_zeros(B, 1)
        else:
            q_stop = self.stop_head(torch.cat([mean, mx], dim=-1))  # (B, 1)
        q = torch.cat([q_nodes.transpose(1, 2).reshape(B, 2 * N), q_stop], dim=1)
        logits = self.label_head(hidden)[..., 0] if self.label_aux else None
        if masked:
            q = q.masked_fill(~obs_action_mask(state, self.role, self.relabel), MASKED_Q)
        return q, logits

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super(QNetwork, self)._get_constructor_parameters()
        data.update(
            role=self.role,
            relabel=self.relabel,
            node_feature_dim=self.node_feature_dim,
            hidden_dim=self.hidden_dim,
            n_layers=self.n_layers,
            node_norm=self.node_norm,
            stop_q=self.stop_q,
            node_features=self.node_features,
            q_prior=self.q_prior,
            label_aux=self.label_aux,
        )
        return data
