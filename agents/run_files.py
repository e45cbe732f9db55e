"""Reading training run folders: the config, the saved agents, the segmenter a run was
trained with, and everything a :class:`~ppd.agents.defender.PromptDefender` is built from."""

from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import yaml

from ppd.agents.label_filter import load_label_filter
from ppd.agents.refine_config import RefineConfig
from ppd.models import ASSETS_DIR, BUNDLED_NAME
from ppd.segmenter import Segmenter, load_segmenter

__all__ = ["BUNDLED_DEFENDER", "OBS_KEYS", "defender_arguments", "find_setting", "load_agent", "read_run_config",
           "role_max_steps"]

#: Folder of the defender shipped with the package (``defender.zip`` + ``config.yaml``),
#: used when no run is given.
BUNDLED_DEFENDER = ASSETS_DIR / "defender"

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


def defender_arguments(
    path: str | os.PathLike | None,
    config: RefineConfig,
    segmenter: Segmenter | None = None,
    device: str | None = None,
    precision: str | None = None,
    embedding_cache: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The :class:`~ppd.agents.defender.PromptDefender` constructor's arguments for the
    defender of a training run (``path``: run folder or ``defender.zip``; None: the
    bundled one), with the refine options of ``config``: the model, its grid and graph
    sizes and step budget checked against the run's config, the run's label filter (with
    ``config``'s overrides) and, unless ``segmenter`` is given, the segmenter the run was
    trained with. The arguments and errors of :meth:`PromptDefender.load`."""
    for name, arg, value in (("precision", "precision", precision), ("embedding_cache", "cache_dir", embedding_cache)):
        if value is not None and segmenter is not None:
            raise ValueError(f"{name} applies to the segmenter loaded here; with segmenter=, "
                             f"pass {arg} to load_segmenter instead")
    if path is None:
        if not (BUNDLED_DEFENDER / "defender.zip").is_file():
            raise FileNotFoundError(
                f"no bundled defender at {BUNDLED_DEFENDER}; train one with `ppd train --out DIR` "
                "and pass the run folder"
            )
        path = BUNDLED_DEFENDER
    model, cfg, folder = load_agent(path, "defender.zip", device)
    role = getattr(model.policy, "role", None) or find_setting(cfg, "role")
    if role is not None and role != "defender":
        raise ValueError(f"{folder}: the model's role is {role!r}, expected 'defender'")
    n = int(model.observation_space["state"].shape[0])
    grid = int(round(math.sqrt(n)))
    if grid * grid != n:
        raise ValueError(f"corrupt run folder {folder}: {n} nodes is not a square grid")
    saved_grid = find_setting(cfg, "grid")
    if isinstance(saved_grid, int) and saved_grid != grid:
        raise ValueError(f"corrupt run folder {folder}: config grid {saved_grid} but the model has {n} nodes")
    has_unc = "uncertainty" in (getattr(model.observation_space, "spaces", None) or {})
    saved_unc = find_setting(cfg, "node_uncertainty")
    if isinstance(saved_unc, bool) and saved_unc != has_unc:
        raise ValueError(
            f"corrupt run folder {folder}: config node_uncertainty={saved_unc} but the model's observation "
            f"{'has' if has_unc else 'has no'} per-node uncertainty"
        )
    k_phys = find_setting(cfg, "k_physical")
    k_sem = find_setting(cfg, "k_semantic")
    label_filter = None
    overrides = config.filter_overrides
    if config.use_filter:
        loaded = load_label_filter(folder, device)
        if loaded is None and overrides:
            raise ValueError(f"{folder} has no label filter (label_filter.zip), so {' and '.join(overrides)} "
                             "would do nothing: train one with `ppd train` (its label filter stage)")
        if loaded is not None:
            meta = loaded[1]
            label_filter = (
                loaded[0],
                float(meta["threshold"] if config.filter_threshold is None else config.filter_threshold),
                meta["action"] if config.filter_action is None else config.filter_action,
                float(meta["relabel_gate"] if config.filter_relabel_gate is None else config.filter_relabel_gate),
            )
    if segmenter is None:
        segmenter = _segmenter_from_config(cfg, device, precision, embedding_cache)
    return dict(
        model=model,
        segmenter=segmenter,
        grid=grid,
        k_physical=int(k_phys) if isinstance(k_phys, int) else 8,
        k_semantic=int(k_sem) if isinstance(k_sem, int) else 8,
        max_steps=role_max_steps(cfg, "defender"),
        config=cfg,
        label_filter=label_filter,
        refine_max_steps=config.max_steps,
        **config.defender_options(),
    )

