"""``ppd train``'s loop: adversarial attacker / defender training (PPD Algorithm 1).

One :class:`~ppd.envs.world.PromptWorld` (segmenter, scenes, graphs, decode cache) is
shared by an attacker and a defender :class:`~ppd.envs.vec_env.PromptVecEnv`. Each round:

1. the attacker learns for ``attacker_steps`` env steps, starting from ideal prompts;
   every attacker episode's final prompt set goes into ``world.attack_pool``;
2. the defender learns for ``defender_steps`` env steps, starting from attacked sets
   (the pool), coarse noisy sets and ideal ones (``start_mix``);
3. every ``eval_every`` rounds (and after the last) both agents are evaluated greedily
   on held-out scenes: mean IoU of ideal prompts, ideal after the attack, the attacked
   set after the defence, coarse prompts, and coarse after the defence
   (:mod:`ppd.agents.evaluation`).

After the last round the wrong-label filter is trained (``filter_scenes``;
:mod:`ppd.agents.label_filter`), with one-shot starts the one-shot edit chooser is fitted
(``chooser_pairs``; :mod:`ppd.agents.train_chooser`), and the final agents are evaluated once more, with
``PromptDefender.refine`` as a user loads it. Every phase's end is logged (round, phase,
recent reward, evaluation numbers) and reported to the caller
(:mod:`ppd.agents.train_progress`). The configuration is
:class:`~ppd.agents.train_config.TrainConfig`.

With ``defender_evals`` > 0 (default 0) the defender's phase is split into that many
parts, each followed by a greedy evaluation of the defender on the held-out coarse
prompt sets; ``defender.zip`` is the best defender seen (model selection on held-out
in-domain scenes: DQN's greedy policy can get worse between evaluations) and
``defender_last.zip`` the latest, which training (and ``--resume``) continues from. The
final metrics describe ``defender.zip``.

A run folder holds ``config.yaml`` (written before training starts; read back with
:meth:`TrainConfig.from_run <ppd.agents.train_config.TrainConfig.from_run>`), after every
round ``attacker.zip`` / ``defender.zip``, the replay buffers (``save_replay_buffer``)
and ``resume_state.npz`` (:mod:`ppd.agents.train_resume`), committed together by
``state.json`` (:mod:`ppd.agents.run_commit`: a kill at any moment leaves the last
completed round), ``metrics.json`` and ``examples.png`` (at the end), and TensorBoard
logs under ``tb/`` (``eval/*`` keys with the defender's env steps as x axis). The folder's
files are written, cleared and opened again by :mod:`ppd.agents.train_folder`.

``resume`` continues from the last completed round: the agents, and where the round
left them, their episodes, generators and attack pool; with the replay buffers the
result is the uninterrupted run's. It refuses a configuration that contradicts the
run's (:func:`~ppd.agents.train_folder.check_resume`); a run with no completed round
starts again from the first.

With ``ruac_checkpoint`` the segmenter decodes with the RUAC Bayesian decoder, and
``node_uncertainty`` adds each patch's mean pixel uncertainty of the current mask to both
agents' observations (the ``uncertainty`` key of
:class:`~ppd.envs.point_prompt_env.PointPromptEnv`). Both are saved in ``config.yaml``, so
:meth:`ppd.agents.defender.PromptDefender.load` rebuilds the same segmenter and
observation.

The greedy rollout that evaluation, the label filter, the defense bench and
``PromptDefender`` share lives in :mod:`ppd.agents.rollout`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from PIL import Image
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecMonitor

from ppd import io

from ppd.agents.dqn import MaskedDQN, make_dqn
from ppd.agents.evaluation import (  # re-exported
    EVAL_KEYS,
    EVAL_SEED,
    defended_coarse_iou,
    evaluate_agents,
    examples_image,
    refine_metrics,
)
from ppd.agents.evaluation import eval_items as _eval_items  # re-exported
from ppd.agents.label_filter import FILTER_FILE, FILTER_META, LabelFilter, load_label_filter, train_label_filter
from ppd.agents.run_commit import commit_round, stage
from ppd.agents.train_config import TrainConfig  # re-exported
from ppd.agents import train_resume
from ppd.agents.train_folder import check_resume, clear_run, latest_defender_file, load_model, open_run, save_round
from ppd.agents.train_folder import load_model as _load_model, save_model as _save_model  # noqa: F401  re-exported
from ppd.agents.train_progress import PhaseReport, TrainReporter
from ppd.agents.train_data import open_training_data
from ppd.data.references import ReferencePicker
from ppd.data.scenes import TRAIN_DOMAIN  # noqa: F401  re-exported
from ppd.agents.train_chooser import fit_run_chooser, load_run_chooser
from ppd.envs.fm_starts import FeatureMatchStarts
from ppd.oneshot_quality import CHOOSER_FILE
from ppd.agents.rollout import greedy_rollout  # re-exported
from ppd.envs.vec_env import PromptVecEnv
from ppd.envs.world import PromptWorld, segmenter_gives_uncertainty
from ppd.pretrain_config import resolve_device
from ppd.segmenter import Segmenter, load_segmenter

logger = logging.getLogger(__name__)

__all__ = [
    "EVAL_SEED",
    "EVAL_KEYS",
    "TrainConfig",
    "check_resume",
    "evaluate_agents",
    "greedy_rollout",
    "train",
]


# ----------------------------------------------------------------------------- training
def _ruac_kwargs(ruac_checkpoint: str | None, ruac_uncertainty: str | None) -> dict[str, Any]:
    """``load_segmenter`` arguments for a RUAC head (none without one)."""
    if not ruac_checkpoint:
        return {}
    return dict(decoder="ruac", ruac_checkpoint=ruac_checkpoint, uncertainty=ruac_uncertainty or "analytic")


def _parts(total: int, n: int) -> list[int]:
    """``total`` steps in ``max(n, 1)`` near-equal parts."""
    n = max(n, 1)
    return [total // n + (i < total % n) for i in range(n)]


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return cfg.to_dict()


def train(
    cfg: TrainConfig,
    out: str | Path,
    resume: bool = False,
    callback: BaseCallback | None = None,
    segmenter: Segmenter | None = None,
    progress: Any = None,
    report: Callable[[PhaseReport], Any] | None = None,
) -> dict[str, Any]:
    """Adversarial training; writes the run folder ``out`` (see the module docstring).

    Args:
        cfg: the configuration.
        out: run folder.
        resume: continue from ``out/state.json`` (the last completed round).
        callback: an SB3 callback passed to every ``learn`` call (e.g. a progress bar).
        segmenter: use this segmenter instead of loading ``cfg.segmenter`` /
            ``cfg.checkpoint``.
        progress: ``progress(description, total) -> tick(n=1)`` for the label filter's
            stage (the CLI passes tqdm bars).
        report: ``report(PhaseReport)`` at the start and the end of every phase (round,
            phase, recent reward, evaluation numbers; see
            :mod:`ppd.agents.train_progress`). Each phase's end is also logged (INFO).

    Returns:
        ``{"final": {eval metrics}, "history": [...], "rounds": int, "env_steps": int,
        "wall_time_s": float, "steps_per_s": float, "torch_threads": int, ...}`` (also
        written to ``metrics.json``).

    Torch runs in deterministic mode meanwhile, with ``cfg.threads`` CPU threads when it
    is set (both restored after): with more than one CPU thread, two runs of one seed
    drifted apart in the defender phase without it; some CPU kernels sum in thread order
    by default (``index_put_`` with ``accumulate=True``, which indexing backward passes
    use, is one), and this mode picks their ordered ones. A seed reruns bit-identically
    with the same thread count on the same machine type.
    """
    was = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, out, resume, callback, segmenter, progress, TrainReporter(cfg.rounds, report))
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])
        if cfg.threads:
            torch.set_num_threads(threads)


def _train(cfg: TrainConfig, out: str | Path, resume: bool, callback: BaseCallback | None,
           segmenter: Segmenter | None, progress: Any, reporter: TrainReporter) -> dict[str, Any]:
    """:func:`train`'s body."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"round": 0, "history": [], "wall_time_s": 0.0}
    saved: dict[str, Any] | None = None  # the resume state of the last completed round
    if resume:
        state, saved = open_run(out, cfg, segmenter is not None)

    device = cfg.device
    if device != "auto":
        resolve_device(device)  # an unknown device, or CUDA where torch has none: one message
    if segmenter is None:
        segmenter = load_segmenter(
            cfg.segmenter,
            checkpoint=cfg.checkpoint or None,
            device=None if device == "auto" else device,
            precision=None if cfg.precision == "auto" else cfg.precision,
            cache_dir=cfg.embedding_cache or None,
            **_ruac_kwargs(cfg.ruac_checkpoint, cfg.ruac_uncertainty),
        )
    elif segmenter_gives_uncertainty(segmenter) and not cfg.ruac_checkpoint:
        # record the given RUAC head so that the run (and its defender) can be reloaded
        head = segmenter.info.get("ruac_checkpoint")
        if head:
            cfg = dataclasses.replace(cfg, ruac_checkpoint=str(head), ruac_uncertainty=segmenter.uncertainty_mode)
    if cfg.node_uncertainty and not segmenter_gives_uncertainty(segmenter):
        raise ValueError(
            "node_uncertainty needs a segmenter that gives pixel uncertainty: set ruac_checkpoint "
            "(--ruac-checkpoint DIR_OR_FILE, a head from `ppd train-ruac`) or pass a RUAC segmenter"
        )
    graph_kw = dict(grid=cfg.grid or None, k_physical=cfg.k_physical, k_semantic=cfg.k_semantic)
    data = open_training_data(cfg)
    logger.info("training data: %s", data.description)
    world = PromptWorld(segmenter, data.train, **graph_kw)
    eval_world = PromptWorld(segmenter, data.eval, **graph_kw)
    if cfg.fm_starts > 0:  # and their evaluation (fm_iou, defended_fm_iou)
        for w in (world, eval_world):
            w.fm_starts = FeatureMatchStarts(w, ReferencePicker(lambda i, w=w: w.image(i).scene, len(w.dataset),
                                                                seed=cfg.seed))
    worlds = {"train": world, "eval": eval_world}
    # the saved images first, in the order the run registered them: the same graph ids
    # in a fresh process, and a map of the saved ids onto this process's in any other
    graph_ids = train_resume.restore_graph_ids(saved["graphs"], worlds) if saved else None
    cfg = dataclasses.replace(cfg, grid=world.image(0).grid)  # save the resolved grid

    start_round = int(state["round"])
    env_seed = cfg.seed * 10_000 + start_round * 100
    att_env = VecMonitor(PromptVecEnv(cfg.n_envs, "attacker", world=world, seed=env_seed, **cfg.env_kwargs("attacker")))
    def_env = VecMonitor(PromptVecEnv(cfg.n_envs, "defender", world=world, seed=env_seed + 50, **cfg.env_kwargs("defender")))
    tb = str(out / "tb")
    if start_round:
        attacker = load_model(out, "attacker.zip", att_env, cfg, device, state, graph_ids)
        defender = load_model(out, latest_defender_file(cfg), def_env, cfg, device, state, graph_ids)
        saved_prior = defender.q_net.q_prior
        if saved_prior != cfg.resolved_q_prior:  # e.g. a run from before q_prior existed
            logger.warning("resuming a defender built with q_prior=%r (config: %r): the saved network's is kept",
                           saved_prior, cfg.q_prior)
            cfg = dataclasses.replace(cfg, q_prior=saved_prior)
        if saved is not None:  # continue the episodes, generators and attack pool where the round ended
            for role, model, env in (("attacker", attacker, att_env), ("defender", defender, def_env)):
                train_resume.restore_agent(saved["agents"][role], model, env, world, graph_ids)
            train_resume.restore_pool(saved, world)
    else:
        attacker = make_dqn(
            att_env, "attacker", relabel=cfg.relabel, seed=cfg.seed, device=device, tensorboard_log=tb,
            **cfg.dqn_kwargs("attacker"),
        )
        defender = make_dqn(
            def_env, "defender", relabel=cfg.relabel, seed=cfg.seed + 1, device=device, tensorboard_log=tb,
            **cfg.dqn_kwargs("defender"),
        )
    agents = {"attacker": (attacker, att_env), "defender": (defender, def_env)}
    if not resume:  # set up without an error: an earlier run in this folder goes now
        clear_run(out)
    # written before any training, and again on --resume: it describes the run as last
    # continued (more rounds, the saved networks' settings; resume_conflicts allows no other change)
    io.save_text(yaml.safe_dump(_config_dict(cfg), sort_keys=False), out / "config.yaml")
    attacker.exploration_horizon = max(cfg.rounds * cfg.attacker_steps, 1)
    defender.exploration_horizon = cfg.rounds * cfg.defender_steps

    history: list[dict[str, Any]] = list(state.get("history", []))
    t0 = time.time() - float(state.get("wall_time_s", 0.0))
    steps_before = start_round * (cfg.attacker_steps + cfg.defender_steps)
    t_start = time.time()
    last_eval: dict[str, float] | None = None
    rollouts: dict[str, list] | None = None
    coarse_items = []  # held-out coarse starts of the defender selection
    if cfg.defender_evals:
        coarse_items = [(rec, obj, *s_coarse) for rec, obj, _, s_coarse in _eval_items(eval_world, cfg)]
    best = dict(state.get("best_defender") or {"defended_coarse_iou": -1.0})
    if saved is not None:
        train_resume.restore_rngs(saved)  # last: loading the agents seeded them
    for rnd in range(start_round, cfg.rounds):
        staged: dict[str, str] = {}  # files of this round written before its end (the selected defender)
        if cfg.attacker_steps:
            reporter.start("attacker", rnd + 1)
            t_phase = time.time()
            attacker.learn(cfg.attacker_steps, callback=callback, reset_num_timesteps=False, tb_log_name="attacker")
            reporter.learned("attacker", rnd + 1, attacker, cfg.attacker_steps, time.time() - t_phase)
        reporter.start("defender", rnd + 1)
        t_phase = time.time()
        selection = []
        parts = _parts(cfg.defender_steps, cfg.defender_evals)
        for i, part in enumerate(parts):
            defender.learn(part, callback=callback, reset_num_timesteps=False, tb_log_name="defender")
            if cfg.defender_evals:
                value = defended_coarse_iou(defender, eval_world, cfg, coarse_items)
                point = {"defender_timesteps": int(defender.num_timesteps), "defended_coarse_iou": value}
                selection.append(point)
                defender.logger.record("eval/selection_defended_coarse_iou", value)
                if value > best["defended_coarse_iou"]:
                    best = point
                    staged["defender.zip"] = stage(out, "defender.zip", rnd + 1, defender.save)
                logger.info("round %d/%d defender, selection %d/%d: defended_coarse_iou %.3f at %d steps (best %.3f)",
                            rnd + 1, cfg.rounds, i + 1, len(parts), value, point["defender_timesteps"],
                            best["defended_coarse_iou"])
        reporter.learned("defender", rnd + 1, defender, cfg.defender_steps, time.time() - t_phase)
        entry: dict[str, Any] = {
            "round": rnd + 1,
            "attacker_timesteps": int(attacker.num_timesteps),
            "defender_timesteps": int(defender.num_timesteps),
            "time_s": round(time.time() - t0, 1),
        }
        if selection:
            entry["defender_selection"] = selection
        last = rnd + 1 == cfg.rounds
        if last or (cfg.eval_every and (rnd + 1) % cfg.eval_every == 0):
            reporter.start("evaluation", rnd + 1)
            last_eval, rollouts = evaluate_agents(attacker, defender, eval_world, cfg, return_rollouts=True)  # type: ignore[misc]
            entry["eval"] = last_eval
            for k, v in last_eval.items():
                defender.logger.record(f"eval/{k}", v)
            defender.logger.dump(defender.num_timesteps)
            reporter.evaluated(rnd + 1, last_eval)
        history.append(entry)
        round_state: dict[str, Any] = {**state, "history": history, "wall_time_s": time.time() - t0}
        if cfg.defender_evals:
            round_state["best_defender"] = best
        state = save_round(out, rnd + 1, round_state, staged, cfg, worlds, agents)

    t_rounds = time.time()
    # the final metrics describe defender.zip (the selected one with defender_evals)
    final_defender = MaskedDQN.load(str(out / "defender.zip"), device=device) if cfg.defender_evals else defender
    filter_meta = None
    if cfg.filter_scenes:
        reporter.start("label filter", cfg.rounds)
        loaded = load_label_filter(out, device)  # present only if this run's rounds were all done before
        was_saved = loaded is not None
        if loaded is None:
            loaded = train_label_filter(cfg, out, segmenter, attacker, final_defender, progress=progress, write=False)
            meta_text = json.dumps(loaded[1], indent=2, sort_keys=True) + "\n"  # as io.save_json writes it
            files = {FILTER_FILE: stage(out, FILTER_FILE, cfg.rounds, loaded[0].save),
                     FILTER_META: stage(out, FILTER_META, cfg.rounds,
                                        lambda tmp: Path(tmp).write_text(meta_text, encoding="utf-8"))}
            state = {**state, "label_filter": {"files": sorted(files)}}
            commit_round(out, state, files)
        filter_model, filter_meta = loaded
        reporter.filtered(cfg.rounds, filter_meta, loaded=was_saved)
    chooser_meta = None
    if cfg.fm_starts > 0 and cfg.chooser_pairs:
        reporter.start("edit chooser", cfg.rounds)
        chooser = load_run_chooser(out, cfg.chooser_pairs)  # present when an earlier call got this far
        was_saved = chooser is not None
        if chooser is None:
            chooser = fit_run_chooser(cfg, segmenter, world, eval_world, progress)
            files = {CHOOSER_FILE: stage(out, CHOOSER_FILE, cfg.rounds, chooser.save)}
            state = {**state, "edit_chooser": {"files": sorted(files)}}
            commit_round(out, state, files)
        chooser_meta = chooser.meta
        reporter.chose(cfg.rounds, chooser_meta, loaded=was_saved)
    wall = time.time() - t0
    steps_now = cfg.total_steps - steps_before
    reporter.start("evaluation", cfg.rounds, final=True)
    if filter_meta is not None:
        last_eval, rollouts = evaluate_agents(  # type: ignore[misc]
            attacker, final_defender, eval_world, cfg, return_rollouts=True, label_filter=LabelFilter(
                filter_model, filter_meta["threshold"], filter_meta["action"], filter_meta["relabel_gate"])
        )
    elif cfg.defender_evals:
        last_eval, rollouts = evaluate_agents(attacker, final_defender, eval_world, cfg, return_rollouts=True)  # type: ignore[misc]
        logger.info("selected defender: %s", best)
    elif last_eval is None or rollouts is None:  # resumed a run whose rounds were all done
        last_eval, rollouts = evaluate_agents(attacker, defender, eval_world, cfg, return_rollouts=True)  # type: ignore[misc]
    last_eval = {**last_eval, **refine_metrics(out, segmenter, eval_world, rollouts, device)}
    if chooser_meta is not None and chooser_meta.get("eval_choice_iou") is not None:
        last_eval["fm_choice_iou"] = chooser_meta["eval_choice_iou"]
    reporter.evaluated(cfg.rounds, last_eval, final=True)
    img = examples_image(eval_world, rollouts, cfg.n_examples)
    io.atomic_write(out / "examples.png", lambda tmp: Image.fromarray(img).save(tmp, format="PNG"))
    metrics = {
        "final": last_eval,
        "selected_defender": best if cfg.defender_evals else None,
        "history": history,
        "rounds": cfg.rounds,
        "env_steps": cfg.total_steps,
        "wall_time_s": round(wall, 1),
        "steps_per_s": round(steps_now / max(t_rounds - t_start, 1e-9), 1),
        "decode_calls": world.decode_calls,
        "train_images": len(world.dataset),
        "eval_images": len(eval_world.dataset),
        "label_filter": filter_meta,
        "edit_chooser": chooser_meta,
        "torch_threads": torch.get_num_threads(),
    }
    io.save_json(metrics, out / "metrics.json")
    att_env.close()
    def_env.close()
    return metrics
