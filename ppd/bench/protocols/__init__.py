"""The registry of ``ppd bench`` protocols.

Each entry names the module and class of one protocol; modules are imported on first
use and import nothing heavy at module level, so ``ppd bench --help`` stays fast. To add
a protocol: write a module with a :class:`~ppd.bench.protocols.base.Protocol` subclass
and its config dataclass, and add a line here.
"""

from __future__ import annotations

import importlib

from ppd.bench.protocols.base import BenchModel, Protocol, config_fields

#: protocol name -> "module:Class"
REGISTRY: dict[str, str] = {
    "clicks": "ppd.bench.protocols.clicks:ClicksProtocol",
    "refine": "ppd.bench.protocols.refine:RefineProtocol",
    "uncertainty": "ppd.bench.protocols.uncertainty:UncertaintyProtocol",
    "corruptions": "ppd.bench.protocols.corruptions:CorruptionsProtocol",
    "breps": "ppd.bench.protocols.breps:BrepsProtocol",
    "attacks": "ppd.bench.protocols.attacks:AttacksProtocol",
    "oneshot": "ppd.bench.protocols.oneshot:OneShotProtocol",
}

__all__ = ["REGISTRY", "BenchModel", "Protocol", "config_fields", "protocol_class", "protocol_names"]


def protocol_names() -> list[str]:
    """The registered protocols, in registry order."""
    return list(REGISTRY)


def protocol_class(name: str) -> type[Protocol]:
    """The :class:`Protocol` subclass registered as ``name``.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    target = REGISTRY.get(name)
    if target is None:
        raise ValueError(f"unknown protocol {name!r}; known protocols: {', '.join(REGISTRY)}")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)
