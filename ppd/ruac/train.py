"""``ppd train-ruac``: train the RUAC Bayesian mask head (and its attackers) on a frozen SAM2.

Only :class:`~ppd.ruac.head.BayesianMaskDecoder`'s own parameters and the two attackers
are trained; the image encoder, prompt encoder and SAM2's mask decoder are frozen
(``requires_grad`` off). Because the encoder is frozen, every training image is encoded
ONCE, with no gradient, when it enters the scene pool (:class:`EmbeddedScenePool`), and the
clean branch of every step starts from those cached features: the main CPU saving.

The options are :class:`~ppd.ruac.train_config.RuacTrainConfig`, the training data
:class:`~ppd.ruac.scene_pool.EmbeddedScenePool`, one step
:meth:`~ppd.ruac.trainer.RuacTrainer.step` (its module docstring describes the losses and
their cost), the held-out check :func:`~ppd.ruac.evaluation.evaluate_heldout`; this module
runs the loop and writes the run folder.

Run folder (``out``): ``config.yaml`` (first), ``last.pt`` (every ``checkpoint_every``
steps and at the end: head, attackers, optimiser, random states, pool, step; ``resume``
continues from it and gives the same result as an uninterrupted run), ``ruac_head.pt``
(:func:`~ppd.ruac.decoder.save_head`; written with ``last.pt``, loadable with
``ppd.load_segmenter(decoder="ruac", ruac_checkpoint=out)``), ``metrics.json`` (held-out
3-click evaluation of the base decoder vs the trained head on the training domain, and
the training history) and TensorBoard events under ``tb/`` (``ruac/train/*``,
``ruac/eval/*``).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from ppd import io
from ppd.pretrain_config import resolve_device
from ppd.ruac.decoder import HEAD_FILENAME, save_head
from ppd.ruac.evaluation import EVAL_SEED, evaluate_heldout
from ppd.ruac.scene_pool import EmbeddedScenePool, RuacBatch
from ppd.ruac.train_config import (
    CONFIG_FILENAME,
    LAST_FILENAME,
    METRICS_FILENAME,
    PROMPT_MODES,
    RESUME_FREE_FIELDS,
    RuacTrainConfig,
    config_differences,
)
from ppd.ruac.trainer import RuacTrainer
from ppd.segmenter import Segmenter, load_segmenter
from ppd.torch_files import generator_from_state, generator_state, load_resume

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIG_FILENAME",
    "LAST_FILENAME",
    "METRICS_FILENAME",
    "PROMPT_MODES",
    "RESUME_FREE_FIELDS",
    "EmbeddedScenePool",
    "RuacBatch",
    "RuacTrainConfig",
    "RuacTrainer",
    "config_differences",
    "evaluate_heldout",
    "train_ruac",
]


def train_ruac(
    cfg: RuacTrainConfig,
    out: str | Path,
    resume: bool = False,
    progress: Callable[[str, int, int, dict], None] | None = None,
) -> dict[str, Any]:
    """Train a RUAC head; writes the run folder ``out`` (see the module docstring).

    Args:
        cfg: the configuration.
        out: run folder.
        resume: continue from ``out/last.pt``; the folder's ``config.yaml`` must match
            ``cfg`` (except :data:`RESUME_FREE_FIELDS`).
        progress: ``progress(what, i, n, stats)`` with ``what`` in ``"pool"`` (scenes
            encoded), ``"train"`` (steps, with the step's statistics), ``"eval"``.

    Returns:
        The metrics written to ``metrics.json``: ``final`` (``base`` / ``ruac`` /
        ``ruac_mc`` held-out metrics, empty if ``eval_scenes`` is 0), ``history``,
        ``steps``, ``wall_clock_s``, ``s_per_step`` and ``cpu_s_per_step`` (wall and
        process CPU seconds by curriculum phase, this process), ``torch_threads``.

    Raises:
        FileNotFoundError: ``resume`` without ``out/last.pt``.
        ValueError: ``resume`` with a config that differs from the folder's, a corrupt
            ``last.pt``, a head/model mismatch, or a bad ``device``.
    """
    device = resolve_device(cfg.device)  # a bad device fails before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    last = out / LAST_FILENAME
    cfg_file = out / CONFIG_FILENAME
    state = None
    if resume:
        if not last.is_file():
            raise FileNotFoundError(f"cannot resume: {last} not found (start the run without --resume)")
        if cfg_file.is_file():
            diff = config_differences(yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}, cfg)
            if diff:
                raise ValueError(f"cannot resume {out}: its config.yaml differs from this config ("
                                 + "; ".join(diff) + "); resume with the run's own config, or use a new --out")
        try:
            state = load_resume(last)  # tensors and plain data only: the generators are stored as their states
            int(state["step"])
            state["pool"] = {**state["pool"], "rng": generator_from_state(state["pool"]["rng"])}
        except Exception as exc:  # corrupt or foreign file
            raise ValueError(f"corrupt run folder {out}: cannot read {LAST_FILENAME}: {exc}") from None
    if not cfg_file.is_file() or not resume:
        io.save_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), cfg_file)

    seg = load_segmenter(cfg.model, checkpoint=cfg.checkpoint or None, device=device, cache_size=0)
    trainer = RuacTrainer(cfg, seg.model, device)
    step, history, elapsed = 0, [], 0.0
    if state is not None:
        trainer.load_state_dict(state)
        step, history, elapsed = int(state["step"]), list(state["history"]), float(state["elapsed"])
        logger.info("resuming %s at step %d", out, step)
    pool_cb = (lambda i, n: progress("pool", i, n, {})) if progress else None
    pool = EmbeddedScenePool(seg.model, cfg, device, state["pool"] if state is not None else None, pool_cb)

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "tb"), purge_step=step if state is not None else None)
    meta = {"model": cfg.model, "checkpoint": cfg.checkpoint, "aue": cfg.aue, "seed": cfg.seed}

    def checkpoint(partial: bool) -> None:
        io.save_torch({**trainer.state_dict(), "step": step, "history": history, "elapsed": time.time() - t0,
                       "pool": {**pool.state(), "rng": generator_state(pool.rng)}, "config": cfg.to_dict()}, last)
        save_head(out / HEAD_FILENAME, trainer.head, meta={**meta, "steps": step, "partial": partial})

    t0 = time.time() - elapsed
    phase_time: dict[int, list[float]] = {p: [0.0, 0, 0.0] for p in (1, 2, 3)}  # wall s, steps, CPU s
    window: dict[str, list[float]] = {}
    while step < cfg.steps:
        ts, tc = time.perf_counter(), time.process_time()
        batch = pool.sample(cfg.batch_size, cfg.objects_per_image)
        stats = trainer.step(batch, step)
        if cfg.refresh_every and (step + 1) % cfg.refresh_every == 0:
            pool.refresh()
        dt, dc = time.perf_counter() - ts, time.process_time() - tc
        ph = cfg.phase(step)
        phase_time[ph][0] += dt
        phase_time[ph][1] += 1
        phase_time[ph][2] += dc
        stats["step_s"] = dt
        stats["step_cpu_s"] = dc
        step += 1
        for k, v in stats.items():
            window.setdefault(k, []).append(v)
        if step % cfg.log_every == 0 or step == cfg.steps:
            avg = {k: float(np.mean(v)) for k, v in window.items()}
            for k, v in avg.items():
                writer.add_scalar(f"ruac/train/{k}", v, step)
            history.append({"step": step, "time_s": round(time.time() - t0, 1), **avg})
            window = {}
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpoint(partial=step < cfg.steps)
        if progress:
            progress("train", step, cfg.steps, stats)
    wall = time.time() - t0
    writer.flush()

    final: dict[str, dict[str, float]] = {}
    if cfg.eval_scenes:
        if progress:
            progress("eval", 0, 1, {})
        eval_seg = Segmenter(seg.model, cfg.model, device=device, cache_size=0, precision=seg.precision)
        final = evaluate_heldout(eval_seg, trainer.head, cfg)
        trainer.train_mode()
        for method, res in final.items():
            for k, v in res.items():
                if isinstance(v, float) and math.isfinite(v):
                    writer.add_scalar(f"ruac/eval/{method}_{k}", v, step)
        logger.info("held-out %s: %s", cfg.domain, {m: round(r["pavpu"], 4) for m, r in final.items()})
        if progress:
            progress("eval", 1, 1, {})
    writer.close()
    metrics = {
        "final": final,
        "history": history,
        "steps": cfg.steps,
        "wall_clock_s": round(wall, 1),
        "s_per_step": {f"phase{p}": round(t / n, 3) for p, (t, n, _) in phase_time.items() if n},
        "cpu_s_per_step": {f"phase{p}": round(c / n, 3) for p, (_, n, c) in phase_time.items() if n},
        "torch_threads": torch.get_num_threads(),
        "eval_domain": cfg.domain,
        "eval_seed": EVAL_SEED,
    }
    save_head(out / HEAD_FILENAME, trainer.head, meta={**meta, "steps": step, "partial": False, "eval": final})
    io.save_json(io.json_safe(metrics), out / METRICS_FILENAME)
    return metrics
