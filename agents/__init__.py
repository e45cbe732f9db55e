"""DQN agents: graph Q-networks, masked DQN, adversarial training, the prompt defender.

Modules: ``graph_qnet`` / ``graph_tensors`` (the graph Q-network), ``qnet`` (its
Stable-Baselines3 policy), ``dqn`` (masked DQN), ``train_config`` / ``train`` /
``train_progress`` / ``evaluation`` (``ppd train``), ``label_filter`` (and its
``_apply``, ``_data`` and ``_fit`` parts: the wrong-label filter), ``defender`` and
``baselines`` (refinement).

Names are loaded on first access (PEP 562), so importing one submodule (say
``ppd.agents.defender``) does not import the training loop.
"""

from __future__ import annotations

import importlib
from typing import Any

# Exported names -> defining module. (The training function stays ``ppd.agents.train.train``:
# a package attribute named ``train`` would clash with the submodule of that name.)
_LAZY = {
    "GraphDQNPolicy": "ppd.agents.qnet",
    "GraphQNetwork": "ppd.agents.graph_qnet",
    "MASKED_Q": "ppd.agents.graph_qnet",
    "obs_action_mask": "ppd.agents.graph_qnet",
    "MaskedDQN": "ppd.agents.dqn",
    "make_dqn": "ppd.agents.dqn",
    "sample_valid_actions": "ppd.agents.dqn",
    "DEFAULT_DQN_KWARGS": "ppd.agents.dqn",
    "TrainConfig": "ppd.agents.train_config",
    "evaluate_agents": "ppd.agents.evaluation",
    "greedy_rollout": "ppd.agents.train",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
