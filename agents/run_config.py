"""A training run's configuration (:class:`RunConfig`): its ``config.yaml`` read through
:class:`~ppd.agents.train_config.TrainConfig`, the dataclass ``ppd train`` writes it
from, with the fields the run saved.

A field the run did not save means "as trained": the loaders then use what the saved
networks carry, or their fallback (a bare ``defender.zip`` with no config has no saved
setting at all). One small fallback, :func:`_legacy_settings`, reads the layouts
``TrainConfig`` cannot: settings in nested sections, and the other key names earlier
loaders accepted (:data:`_LEGACY_NAMES`).

Importing this module loads neither torch nor Stable-Baselines3.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Union

import yaml

from ppd.agents.train_config import ABSENT_MEANS, BUNDLED_SEGMENTER, RUN_CONFIG_FILES, TrainConfig

logger = logging.getLogger(__name__)

__all__ = ["RunConfig", "RunConfigLike", "read_run_config", "role_max_steps"]

#: ``TrainConfig`` fields that loading a run's agents reads (the segmenter, the graph,
#: the step budgets, the attacker's start).
_LOADER_FIELDS = ("segmenter", "checkpoint", "ruac_checkpoint", "ruac_uncertainty", "grid", "node_uncertainty",
                  "k_physical", "k_semantic", "attacker_max_steps", "defender_max_steps", "max_ideal_points")

#: Key names of run configs that are not ``TrainConfig`` fields but that earlier loaders
#: read: ``role``, ``model`` (the segmenter's name), ``max_steps_{role}``, a
#: ``{role}: {max_steps: N}`` section and a ``max_steps: {role: N}`` mapping. A config
#: holding one of them, or holding a loader setting inside a section that is not a
#: ``TrainConfig`` field, is read by :func:`_legacy_settings`.
_LEGACY_NAMES = frozenset({"role", "model", "max_steps", "max_steps_attacker", "max_steps_defender", "attacker",
                           "defender"})


def _find_setting(cfg: Any, key: str, depth: int = 0) -> Any:
    """First value under ``key`` in a nested mapping: the top level first, then each
    section in order (depth-first), None when absent (the legacy layouts' key search)."""
    if not isinstance(cfg, dict) or depth > 4:
        return None
    if key in cfg:
        return cfg[key]
    for v in cfg.values():
        hit = _find_setting(v, key, depth + 1)
        if hit is not None:
            return hit
    return None


#: The former public name of the key search; it reads no ``TrainConfig``: use
#: :class:`RunConfig` (``RunConfig.read(folder).segmenter_name``, ``.saved_value(name)``).
find_setting = _find_setting


def _holds_any(value: Any, names: frozenset[str], depth: int = 0) -> bool:
    """Whether a nested mapping has a key among ``names`` at any depth (to 4, as the key search)."""
    if not isinstance(value, dict) or depth > 4:
        return False
    return any(k in names or _holds_any(v, names, depth + 1) for k, v in value.items())


def _needs_legacy(raw: Mapping[str, Any]) -> bool:
    """Whether a run config is in a layout ``TrainConfig`` cannot read (:data:`_LEGACY_NAMES`)."""
    names = {f.name for f in fields(TrainConfig)}
    searched = _LEGACY_NAMES | set(_LOADER_FIELDS) | {"attacker_steps", "defender_steps"}
    return any(k in _LEGACY_NAMES or (k not in names and _holds_any(v, searched)) for k, v in raw.items())


def _legacy_max_steps(cfg: Mapping[str, Any], role: str) -> int | None:
    """The step budget of ``role`` in a legacy layout: a ``{role}_max_steps``,
    ``max_steps_{role}`` or ``{role}_steps`` key, a ``{role}: {max_steps: ...}`` section or
    a ``max_steps: {role: ...}`` mapping, at any depth; None if absent."""
    for key in (f"{role}_max_steps", f"max_steps_{role}", f"{role}_steps"):
        v = _find_setting(cfg, key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return int(v)
    section = _find_setting(cfg, role)
    if isinstance(section, dict) and isinstance(section.get("max_steps"), (int, float)):
        return int(section["max_steps"])
    v = _find_setting(cfg, "max_steps")
    if isinstance(v, dict) and isinstance(v.get(role), (int, float)):
        return int(v[role])
    return None


def _legacy_settings(raw: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The fallback for layouts ``TrainConfig`` cannot read: the loader's settings found
    by a key search (the top level first, then each section depth-first), with the types
    the loader accepts, as ``(TrainConfig field values, role)``.

    A setting of the wrong type is left out (not saved), as is a step budget below 1
    (earlier loaders read 0 as "none saved").
    """
    cfg = dict(raw)
    out: dict[str, Any] = {}
    name = _find_setting(cfg, "segmenter")
    if not isinstance(name, str):
        name = _find_setting(cfg, "model")
    if isinstance(name, str):
        out["segmenter"] = name
    for key in ("checkpoint", "ruac_checkpoint", "ruac_uncertainty"):
        v = _find_setting(cfg, key)
        if isinstance(v, str):
            out[key] = v
    for key in ("grid", "k_physical", "k_semantic", "max_ideal_points"):
        v = _find_setting(cfg, key)
        if isinstance(v, int):
            out[key] = v
    v = _find_setting(cfg, "node_uncertainty")
    if isinstance(v, bool):
        out["node_uncertainty"] = v
    for role in ("attacker", "defender"):
        steps = _legacy_max_steps(cfg, role)
        if steps is not None and steps >= 1:
            out[f"{role}_max_steps"] = steps
    role = _find_setting(cfg, "role")
    return out, role if isinstance(role, str) else None


@dataclass(frozen=True)
class RunConfig:
    """A training run's configuration as its agents are loaded with it: the typed
    :class:`TrainConfig` and which of its fields the run saved.

    Build one with :meth:`read` (a run folder), :meth:`from_mapping` (a config's mapping)
    or :meth:`of` (any of the forms callers hold).
    """

    train: TrainConfig | None = None
    """the run's settings (None: it saved none, e.g. a bare ``defender.zip``); a field it
    did not save holds TrainConfig's default, which is not always what the run did"""
    saved: frozenset[str] = frozenset()
    """the ``TrainConfig`` fields the run saved; :meth:`saved_value` is None for the others"""
    role: str | None = None
    """the agent role a legacy config names (``TrainConfig`` has none)"""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """the config's mapping as read (``PromptDefender.config``)"""

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None, source: str = "config") -> RunConfig:
        """A run config from its file's mapping (``{}`` or None: nothing saved).

        Read through :meth:`TrainConfig.from_dict` as :meth:`TrainConfig.from_run` reads
        it (a key that is not a field is left out with a warning); a layout it cannot read
        (:data:`_LEGACY_NAMES`), or values its checks reject, go through the fallback
        :func:`_legacy_settings`, which keeps only the settings the loader reads.

        Raises:
            ValueError: settings that even the fallback's TrainConfig rejects (a
                negative grid, an unknown ``ruac_uncertainty``), naming ``source``.
        """
        raw = dict(raw or {})
        if not raw:
            return cls(raw=raw)
        names = {f.name for f in fields(TrainConfig)}
        absent = {k: v for k, v in ABSENT_MEANS.items() if k not in raw}  # what an older run did
        if not _needs_legacy(raw):
            try:
                train = TrainConfig.from_dict({**absent, **raw}, source, unknown="ignore")
            except (ValueError, TypeError) as exc:
                logger.info("%s: TrainConfig rejects it (%s); reading the loader's settings only", source, exc)
            else:
                return cls(train, frozenset(set(raw) & names), None, raw)
        settings, role = _legacy_settings(raw)
        try:
            train = TrainConfig.from_dict({**absent, **settings}, source)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{source}: {exc}") from None
        return cls(train, frozenset(settings), role, raw)

    @classmethod
    def read(cls, folder: str | os.PathLike) -> RunConfig:
        """The config of the run folder ``folder`` (nothing saved when it has none).

        Raises:
            ValueError: a config file that cannot be parsed, or settings it rejects
                (:meth:`from_mapping`), as a corrupt run folder.
        """
        raw = read_run_config(folder)
        try:
            return cls.from_mapping(raw, str(folder))
        except ValueError as exc:
            raise ValueError(f"corrupt run folder {exc}") from None

    @classmethod
    def of(cls, cfg: RunConfigLike) -> RunConfig:
        """``cfg`` as a RunConfig: itself; a :class:`TrainConfig` (every field saved); a
        config's mapping (:meth:`from_mapping`); None (nothing saved)."""
        if isinstance(cfg, RunConfig):
            return cfg
        if isinstance(cfg, TrainConfig):
            return cls(cfg, frozenset(f.name for f in fields(TrainConfig)), None, cfg.to_dict())
        return cls.from_mapping(cfg)

    def saved_value(self, name: str) -> Any:
        """The value of the ``TrainConfig`` field ``name`` if the run saved it, else None."""
        return getattr(self.train, name) if self.train is not None and name in self.saved else None

    def max_steps(self, role: str) -> int | None:
        """The training env's step budget of ``role`` (``"attacker"`` / ``"defender"``);
        None if not saved."""
        v = self.saved_value(f"{role}_max_steps")
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    @property
    def segmenter_name(self) -> str:
        """The name of the segmenter the run was trained with (the bundled one if not saved)."""
        name = self.saved_value("segmenter")
        return name if isinstance(name, str) else BUNDLED_SEGMENTER

    @property
    def max_ideal_points(self) -> int:
        """Ideal prompts per label of the attacker's start states (6 if not saved)."""
        v = self.saved_value("max_ideal_points")
        return int(v) if isinstance(v, int) else 6


#: What :meth:`RunConfig.of` takes: a RunConfig, a TrainConfig, a config's mapping, or None.
RunConfigLike = Union[RunConfig, TrainConfig, Mapping[str, Any], None]


def role_max_steps(cfg: RunConfigLike, role: str) -> int | None:
    """The training env's step budget of ``role`` (``"attacker"`` / ``"defender"``) in a
    run config (:meth:`RunConfig.max_steps`); None if not saved."""
    return RunConfig.of(cfg).max_steps(role)


def read_run_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The mapping of the run's config file (the first of
    :data:`~ppd.agents.train_config.RUN_CONFIG_FILES` it has); {} when there is none or
    it is empty. :meth:`RunConfig.read` gives it typed.

    Raises:
        ValueError: the file exists but cannot be parsed (a corrupt run folder).
    """
    folder = Path(folder)
    for name in RUN_CONFIG_FILES:
        f = folder / name
        if not f.is_file():
            continue
        try:
            with open(f, encoding="utf-8") as fh:
                cfg = json.load(fh) if name.endswith(".json") else yaml.safe_load(fh)
        except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"corrupt run folder {folder}: cannot parse {name}: {exc}") from None
        if cfg is None:
            return {}
        if not isinstance(cfg, dict):
            raise ValueError(f"corrupt run folder {folder}: {name} must hold a mapping, got {type(cfg).__name__}")
        return cfg
    return {}

