"""Reading training run folders: the config, the saved agents and the segmenter a run
was trained with."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import yaml

from ppd.models import BUNDLED_NAME
from ppd.segmenter import Segmenter, load_segmenter

__all__ = ["OBS_KEYS", "find_setting", "load_agent", "read_run_config", "role_max_steps"]

#: Observation keys the defender's network must have been trained on.
OBS_KEYS = ("state", "coverage", "offset", "step_frac", "score", "image_id")


def _resolve_file(path: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """``path`` (a run folder or the model file) -> (model file, run folder)."""
    p = Path(path)
    if p.is_dir():
        f = p / name
        if not f.is_file():
            raise FileNotFoundError(
                f"{p} is not a training run folder with {name}: the file is missing "
                f"(train one with `ppd train --out {p}`, or pass the .zip file itself)"
            )
        return f, p
    if p.is_file():
        return p, p.parent
    if p.with_suffix(".zip").is_file():  # SB3 style: "runs/x/defender" for defender.zip
        return p.with_suffix(".zip"), p.parent
    raise FileNotFoundError(f"run folder or model file not found: {p}")


def read_run_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The run's ``config.yaml`` (or ``config.json``) as a dict; {} when there is none.

    Raises:
        ValueError: the file exists but cannot be parsed (a corrupt run folder).
    """
    folder = Path(folder)
    for name in ("config.yaml", "config.yml", "config.json"):
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


def find_setting(cfg: Any, key: str, depth: int = 0) -> Any:
    """First value under ``key`` in a nested run config: the top level first, then each
    section in order (depth-first), None when absent."""
    if not isinstance(cfg, dict) or depth > 4:
        return None
    if key in cfg:
        return cfg[key]
    for v in cfg.values():
        hit = find_setting(v, key, depth + 1)
        if hit is not None:
            return hit
    return None


def role_max_steps(cfg: dict[str, Any], role: str) -> int | None:
    """The training env's step budget of ``role`` (``"attacker"`` / ``"defender"``) from
    a run config: a ``{role}_max_steps`` key, a ``{role}: {max_steps: ...}`` section or a
    ``max_steps: {role: ...}`` mapping; None if not saved."""
    for key in (f"{role}_max_steps", f"max_steps_{role}", f"{role}_steps"):
        v = find_setting(cfg, key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return int(v)
    section = find_setting(cfg, role)
    if isinstance(section, dict) and isinstance(section.get("max_steps"), (int, float)):
        return int(section["max_steps"])
    v = find_setting(cfg, "max_steps")
    if isinstance(v, dict) and isinstance(v.get(role), (int, float)):
        return int(v[role])
    return None


def load_agent(path: str | os.PathLike, name: str = "defender.zip", device: str | None = None) -> tuple[Any, dict[str, Any], Path]:
    """Load one agent of a training run.

    Args:
        path: run folder (holding ``name``) or the model ``.zip`` itself.
        name: model file inside a run folder (``defender.zip`` / ``attacker.zip``).
        device: torch device ("cpu", "cuda"; default: SB3's "auto").

    Returns:
        ``(model, config, folder)``: the SB3 model (a
        :class:`~ppd.agents.dqn.MaskedDQN`), the run's config dict ({} if none), and
        the run folder.

    Raises:
        FileNotFoundError: missing folder or model file.
        ValueError: a corrupt run (unreadable zip or config, wrong observation / action
            spaces for a point-prompt agent).
    """
    file, folder = _resolve_file(path, name)
    cfg = read_run_config(folder)
    if not zipfile.is_zipfile(file):
        raise ValueError(f"corrupt run folder {folder}: {file.name} is not a Stable-Baselines3 model archive (zip)")
    try:
        from ppd.agents.dqn import MaskedDQN as Algo
    except ImportError:  # pragma: no cover - the agents core is part of the package
        from stable_baselines3 import DQN as Algo
    try:
        model = Algo.load(str(file), device=device or "auto")
    except Exception as exc:  # SB3 raises many kinds for a damaged archive
        raise ValueError(f"corrupt run folder {folder}: cannot load {file.name}: {type(exc).__name__}: {exc}") from exc
    obs_space, act_space = model.observation_space, model.action_space
    keys = set(getattr(obs_space, "spaces", {}) or {})
    if not set(OBS_KEYS) <= keys or not hasattr(act_space, "n"):
        raise ValueError(
            f"{file} is not a point-prompt agent: observation keys {sorted(keys)}, expected {list(OBS_KEYS)}"
        )
    n = int(obs_space["state"].shape[0])
    if int(act_space.n) != 2 * n + 1:
        raise ValueError(f"{file}: action space Discrete({act_space.n}) does not match 2N + 1 = {2 * n + 1} nodes")
    return model, cfg, folder


def _segmenter_from_config(cfg: dict[str, Any], device: str | None, precision: str | None = None,
                           cache_dir: str | os.PathLike | None = None) -> Segmenter:
    """The segmenter a run was trained with (name / checkpoint and RUAC head in its
    config), else bundled."""
    name = find_setting(cfg, "segmenter")
    if not isinstance(name, str):
        name = find_setting(cfg, "model") if isinstance(find_setting(cfg, "model"), str) else BUNDLED_NAME
    ckpt = find_setting(cfg, "checkpoint")
    ruac = find_setting(cfg, "ruac_checkpoint")
    kw: dict[str, Any] = {}
    if isinstance(ruac, str) and ruac:
        mode = find_setting(cfg, "ruac_uncertainty")
        kw = dict(decoder="ruac", ruac_checkpoint=ruac, uncertainty=mode if isinstance(mode, str) else "analytic")
    return load_segmenter(
        name, checkpoint=ckpt if isinstance(ckpt, str) and ckpt else None, device=device, precision=precision,
        cache_dir=cache_dir, **kw
    )
