"""Reading training run folders: the saved agents, the segmenter a run was trained with,
and everything a :class:`~ppd.agents.defender.PromptDefender` is built from. The run's
configuration is read as a :class:`~ppd.agents.run_config.RunConfig`
(:mod:`ppd.agents.run_config`)."""

from __future__ import annotations

import logging
import math
import os
import zipfile
from pathlib import Path
from typing import Any

from ppd.agents.archive_check import UnsafeArchiveError
from ppd.agents.label_filter import load_label_filter
from ppd.agents.refine_config import RefineConfig
from ppd.agents.run_config import (  # noqa: F401  (re-exported)
    RunConfig, RunConfigLike, find_setting, read_run_config, role_max_steps,
)
from ppd.models import ASSETS_DIR
from ppd.segmenter import Segmenter, load_segmenter

logger = logging.getLogger(__name__)

__all__ = ["BUNDLED_DEFENDER", "OBS_KEYS", "RunConfig", "RunConfigLike", "defender_arguments", "load_agent",
           "read_run_config", "role_max_steps"]

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


def load_agent(path: str | os.PathLike, name: str = "defender.zip", device: str | None = None) -> tuple[Any, dict[str, Any], Path]:
    """Load one agent of a training run.

    Args:
        path: run folder (holding ``name``) or the model ``.zip`` itself.
        name: model file inside a run folder (``defender.zip`` / ``attacker.zip``).
        device: torch device ("cpu", "cuda"; default: SB3's "auto").

    Returns:
        ``(model, config, folder)``: the SB3 model (a
        :class:`~ppd.agents.dqn.MaskedDQN`), the run's config mapping ({} if none;
        :meth:`RunConfig.from_mapping` types it), and the run folder.

    Raises:
        FileNotFoundError: missing folder or model file.
        ValueError: a corrupt run (unreadable zip or config, wrong observation / action
            spaces for a point-prompt agent).
        ~ppd.agents.archive_check.UnsafeArchiveError: (a ValueError) the archive
            references code a ppd agent archive never holds; nothing of it was run.
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
    except UnsafeArchiveError:
        raise  # names the file and what it references; it is no damage to repair
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


def _segmenter_from_config(cfg: RunConfigLike, device: str | None, precision: str | None = None,
                           cache_dir: str | os.PathLike | None = None) -> Segmenter:
    """The segmenter a run was trained with (name / checkpoint and RUAC head in its
    config), else bundled."""
    rc = RunConfig.of(cfg)
    ckpt = rc.saved_value("checkpoint")
    ruac = rc.saved_value("ruac_checkpoint")
    kw: dict[str, Any] = {}
    if isinstance(ruac, str) and ruac:
        mode = rc.saved_value("ruac_uncertainty")
        kw = dict(decoder="ruac", ruac_checkpoint=ruac, uncertainty=mode if isinstance(mode, str) else "analytic")
    return load_segmenter(
        rc.segmenter_name, checkpoint=ckpt if isinstance(ckpt, str) and ckpt else None, device=device,
        precision=precision, cache_dir=cache_dir, **kw
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
    sizes and step budget checked against the run's config (:class:`RunConfig`), the
    run's label filter (with ``config``'s overrides) and, unless ``segmenter`` is given,
    the segmenter the run was trained with. The arguments and errors of
    :meth:`PromptDefender.load`."""
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
    model, raw, folder = load_agent(path, "defender.zip", device)
    try:
        rc = RunConfig.from_mapping(raw, str(folder))
    except ValueError as exc:
        raise ValueError(f"corrupt run folder {exc}") from None
    role = getattr(model.policy, "role", None) or rc.role
    if role is not None and role != "defender":
        raise ValueError(f"{folder}: the model's role is {role!r}, expected 'defender'")
    n = int(model.observation_space["state"].shape[0])
    grid = int(round(math.sqrt(n)))
    if grid * grid != n:
        raise ValueError(f"corrupt run folder {folder}: {n} nodes is not a square grid")
    saved_grid = rc.saved_value("grid")
    if isinstance(saved_grid, int) and saved_grid != grid:
        raise ValueError(f"corrupt run folder {folder}: config grid {saved_grid} but the model has {n} nodes")
    has_unc = "uncertainty" in (getattr(model.observation_space, "spaces", None) or {})
    saved_unc = rc.saved_value("node_uncertainty")
    if isinstance(saved_unc, bool) and saved_unc != has_unc:
        raise ValueError(
            f"corrupt run folder {folder}: config node_uncertainty={saved_unc} but the model's observation "
            f"{'has' if has_unc else 'has no'} per-node uncertainty"
        )
    k_phys, k_sem = rc.saved_value("k_physical"), rc.saved_value("k_semantic")
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
        segmenter = _segmenter_from_config(rc, device, precision, embedding_cache)
    return dict(
        model=model,
        segmenter=segmenter,
        grid=grid,
        k_physical=int(k_phys) if isinstance(k_phys, int) else 8,
        k_semantic=int(k_sem) if isinstance(k_sem, int) else 8,
        max_steps=rc.max_steps("defender"),
        config=rc,
        label_filter=label_filter,
        refine_max_steps=config.max_steps,
        **config.defender_options(),
    )
