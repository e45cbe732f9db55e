"""Robustness of promptable segmentation: image corruptions, prompt attacks (BREPS), image attacks.

``from ppd.robustness import corrupt, box_attack, point_attack, run_attack, load_attacker,
dqn_point_attack``: names resolve lazily,
so importing the package costs nothing until one is used.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> module that defines it
_EXPORTS = {
    "corrupt": "ppd.robustness.corruptions",
    "CORRUPTIONS": "ppd.robustness.corruptions",
    "SEVERITIES": "ppd.robustness.corruptions",
    "box_attack": "ppd.robustness.breps",
    "point_attack": "ppd.robustness.breps",
    "run_attack": "ppd.robustness.attacks",
    "named_attack": "ppd.robustness.attacks",
    "dqn_point_attack": "ppd.robustness.dqn_attack",
    "load_attacker": "ppd.robustness.dqn_attack",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ppd.robustness' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
