"""The graph Q-network as a Stable-Baselines3 DQN policy (:class:`GraphDQNPolicy`).

The network itself (inputs, relational SAGE layers, heads, priors) is
:class:`~ppd.agents.graph_qnet.GraphQNetwork`; its graph tensors are in
:mod:`ppd.agents.graph_tensors`. The policy builds the online and target networks from
its ``policy_kwargs`` and hands them the graph store (``graph_store``) whose graphs the
observations name. Saved model files (``defender.zip``, ``attacker.zip``) name this
module's :class:`GraphDQNPolicy` as their policy class.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.dqn.policies import DQNPolicy

from ppd.agents.graph_qnet import (
    CONSISTENCY_PRIOR_INIT,
    MASKED_Q,
    NODE_FEATURES,
    NODE_NORMS,
    OPTIONAL_NODE_KEYS,
    Q_PRIORS,
    RELATIVE_DIM,
    STOP_QS,
    GraphQNetwork,
    dynamic_input_dim,
    label_disagreement,
    obs_action_mask,
    prior_terms,
    relative_features,
)
from ppd.agents.graph_tensors import batched_adjacency as _batched_adjacency  # re-exported
from ppd.agents.graph_tensors import graph_tensors as _graph_tensors  # re-exported
from ppd.graphs.store import GraphStore

__all__ = [
    "CONSISTENCY_PRIOR_INIT", "MASKED_Q", "NODE_FEATURES", "NODE_NORMS", "OPTIONAL_NODE_KEYS", "Q_PRIORS", "RELATIVE_DIM",
    "STOP_QS", "GraphDQNPolicy", "GraphQNetwork", "dynamic_input_dim", "label_disagreement", "obs_action_mask",
    "prior_terms", "relative_features",
]


class GraphDQNPolicy(DQNPolicy):
    """:class:`DQNPolicy` whose online and target networks are :class:`GraphQNetwork` s.

    Extra keyword arguments (give them through ``policy_kwargs``): ``role``,
    ``relabel``, ``node_feature_dim``, ``hidden_dim``, ``n_layers``, ``node_norm``,
    ``stop_q``, ``node_features``, ``q_prior``, ``label_aux`` (saved with the model) and
    ``graph_store`` (the :class:`~ppd.graphs.store.GraphStore` of the observations'
    graphs; None: :data:`~ppd.graphs.store.GRAPH_STORE`). The store is not saved: it
    holds this process's graphs, and a loaded model is given one again
    (:meth:`ppd.agents.dqn.MaskedDQN.load`).
    """

    q_net: GraphQNetwork
    q_net_target: GraphQNetwork

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Discrete,
        lr_schedule,
        role: str = "defender",
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
        **kwargs: Any,
    ) -> None:
        # Read by make_q_net(), which DQNPolicy.__init__ calls. node_norm, stop_q,
        # node_features and q_prior default to the original network so that networks saved
        # before they existed load unchanged.
        self._graph_kwargs = dict(
            role=role, relabel=bool(relabel), node_feature_dim=int(node_feature_dim), hidden_dim=int(hidden_dim),
            n_layers=int(n_layers), node_norm=str(node_norm), stop_q=str(stop_q), node_features=str(node_features),
            q_prior=str(q_prior), label_aux=bool(label_aux),
        )
        self.graph_store = graph_store  # not a constructor parameter that is saved
        kwargs.setdefault("normalize_images", False)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    @property
    def role(self) -> str:
        return self._graph_kwargs["role"]

    @property
    def relabel(self) -> bool:
        return self._graph_kwargs["relabel"]

    def make_q_net(self) -> GraphQNetwork:
        return GraphQNetwork(
            self.observation_space, self.action_space, **self._graph_kwargs, graph_store=self.graph_store
        ).to(self.device)

    def action_mask(self, state: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Valid-action mask of observation states (see :func:`obs_action_mask`)."""
        return obs_action_mask(state, self.role, self.relabel)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(self._graph_kwargs)
        return data
