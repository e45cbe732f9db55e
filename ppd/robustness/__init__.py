"""Robustness of promptable segmentation: image corruptions (and, later, attacks).

``from ppd.robustness import corrupt, CORRUPTIONS``: names resolve lazily, so importing
the package costs nothing until a corruption is used.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> module that defines it
_EXPORTS = {
    "corrupt": "ppd.robustness.corruptions",
    "CORRUPTIONS": "ppd.robustness.corruptions",
    "SEVERITIES": "ppd.robustness.corruptions",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ppd.robustness' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
