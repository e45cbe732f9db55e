"""Gymnasium environments for point-prompt attack and defence, and their registered ids."""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium

#: Registered ids -> constructor kwargs (``gymnasium.make(id, segmenter=..., ...)``).
ENV_IDS = {
    "ppd/PointPromptAttack-v0": {"role": "attacker"},
    "ppd/PointPromptDefense-v0": {"role": "defender"},
}

# Exported names -> defining module. Loaded on first access (PEP 562) so that
# ``import ppd`` (which calls register_envs) does not pull in torch_geometric.
_LAZY = {
    "PointPromptEnv": "ppd.envs.point_prompt_env",
    "ROLES": "ppd.envs.point_prompt_env",
    "valid_action_mask": "ppd.envs.point_prompt_env",
    "PromptWorld": "ppd.envs.world",
    "PromptVecEnv": "ppd.envs.vec_env",
}

__all__ = [*_LAZY, "ENV_IDS", "register_envs"]


def register_envs() -> None:
    """Register the ``ppd/...-v0`` ids with gymnasium (idempotent).

    ``import ppd`` calls this, so ``gymnasium.make("ppd/PointPromptDefense-v0")`` works
    after it. The envs end their episodes themselves (``max_steps``), so no
    ``TimeLimit`` wrapper is added.
    """
    for env_id, kwargs in ENV_IDS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point="ppd.envs.point_prompt_env:PointPromptEnv", kwargs=dict(kwargs))


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
