"""The run folder of ``ppd train`` as training writes and continues it: the agents' and
replay buffers' files, clearing a folder for a new run, checking and opening a run to
resume (which settings a resumed run may change), and committing the files of a round.

What a run folder holds is listed in :mod:`ppd.agents.train`; how a round's files are
committed together, in :mod:`ppd.agents.run_commit`; the state that continues a round, in
:mod:`ppd.agents.train_resume`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ppd import io
from ppd.agents import train_resume
from ppd.agents.archive_check import UnsafeArchiveError
from ppd.agents.dqn import MaskedDQN
from ppd.agents.label_filter import FILTER_META, remove_label_filter
from ppd.agents.run_commit import STATE_FILE, commit_round, discard_uncommitted, finish_commit, read_state, stage
from ppd.agents.train_config import TrainConfig
from ppd.oneshot_quality import CHOOSER_FILE
from ppd.envs.world import PromptWorld

logger = logging.getLogger(__name__)

__all__ = ["RESUME_FREE_FIELDS", "check_resume", "clear_run", "latest_defender_file", "load_model", "open_run",
           "replay_file", "resume_conflicts", "save_model", "save_round"]

#: Fields ``--resume`` may change: they decide where and how fast a run computes, or
#: what it saves beside its results, never what its networks learn (``rounds`` may grow;
#: the ``filter_*`` fields may change while the run has no label filter yet; see
#: :func:`resume_conflicts`). ``q_prior`` is not compared: the saved defender's prior is
#: kept, whatever the config says (a run written before the field existed reads as the
#: default).
RESUME_FREE_FIELDS = ("device", "threads", "n_examples", "save_replay_buffer", "q_prior", "embedding_cache")


def replay_file(name: str) -> str:
    """The replay buffer file of agent file ``name`` (``attacker.zip`` ->
    ``attacker_replay.pkl``)."""
    return Path(name).stem + "_replay.pkl"


def save_model(model: MaskedDQN, path: Path, replay: bool) -> None:
    """``model.save`` to a temp file renamed onto ``path`` (and the replay buffer). One
    file at a time: the training loop commits a round's files together instead
    (:func:`save_round`)."""
    io.atomic_write(path, lambda tmp: model.save(tmp))
    if replay:
        io.atomic_write(path.with_name(replay_file(path.name)), lambda tmp: model.save_replay_buffer(tmp))


def load_model(out: Path, name: str, env, cfg: TrainConfig, device: str, state: dict[str, Any],
               graph_ids: dict[int, int] | None) -> MaskedDQN:
    """An agent of the run's last committed round, with its replay buffer when that
    round saved one and the graph ids of its transitions can be mapped (``graph_ids``;
    else the agent collects ``learning_starts`` fresh transitions before it updates)."""
    path = out / name
    try:
        model = MaskedDQN.load(str(path), env=env, device=device)
    except UnsafeArchiveError:
        raise  # it names the file and what it holds
    except Exception as exc:  # SB3 raises many kinds for a damaged archive
        raise ValueError(f"corrupt run folder {out}: cannot load {name}: {type(exc).__name__}: {exc}") from None
    model.tensorboard_log = str(out / "tb")  # the run folder may have moved
    rb = out / replay_file(name)
    if cfg.save_replay_buffer and state.get("replay_buffers") and rb.is_file() and graph_ids is not None:
        model.load_replay_buffer(str(rb), graph_ids=graph_ids)
        return model
    if cfg.save_replay_buffer and rb.is_file():
        logger.warning("%s: not loaded (saved by an earlier version of ppd, without the table of the graphs its "
                       "transitions name); the agent collects %d new transitions before it learns again",
                       rb, cfg.learning_starts)
    # Empty buffer: collect learning_starts fresh transitions before updating again.
    model.learning_starts = model.num_timesteps + cfg.learning_starts
    return model


def latest_defender_file(cfg: TrainConfig) -> str:
    """Run-folder file of the latest defender (the one training and ``--resume``
    continue): ``defender_last.zip`` with ``defender_evals`` (``defender.zip`` is then the
    selected one), else ``defender.zip``."""
    return "defender_last.zip" if cfg.defender_evals else "defender.zip"


def clear_run(out: Path) -> None:
    """A new run in ``out``: the files of an earlier run there go first (its state
    first, then its configuration: no step of this, nor a stop before the new
    ``config.yaml`` is written, leaves a folder that resumes the old run)."""
    (out / STATE_FILE).unlink(missing_ok=True)
    agents = ("attacker.zip", "defender.zip", "defender_last.zip")
    for name in ("config.yaml", "metrics.json", train_resume.RESUME_FILE, *agents, *map(replay_file, agents)):
        (out / name).unlink(missing_ok=True)
    remove_label_filter(out)
    (out / CHOOSER_FILE).unlink(missing_ok=True)
    discard_uncommitted(out, None)


def check_resume(out: str | Path, cfg: TrainConfig, segmenter_given: bool = False) -> dict[str, Any] | None:
    """Whether ``cfg`` may resume the run in ``out``: its ``state.json`` (None: the run
    has no completed round yet, but its ``config.yaml``, so it starts again from the
    first round).

    Raises:
        FileNotFoundError: no run in ``out``.
        ValueError: an unreadable ``state.json``, or settings of ``cfg`` that contradict
            the run's ``config.yaml``, named (:func:`resume_conflicts`).
    """
    out = Path(out)
    state = read_state(out)
    config_file = out / "config.yaml"
    if state is None and not config_file.is_file():
        raise FileNotFoundError(f"cannot resume: {out / STATE_FILE} not found (no completed round in {out})")
    if config_file.is_file():
        from ppd.config import load_config_file

        if state is None:
            has_filter = False
        elif "label_filter" in state:
            has_filter = bool(state["label_filter"])
        else:  # a state written before filters were committed with it
            has_filter = (out / FILTER_META).is_file()
        done = int(state["round"]) if state else 0
        conflicts = resume_conflicts(load_config_file(config_file), cfg, done, has_filter, segmenter_given)
        if conflicts:
            raise ValueError(
                f"cannot resume {out}: settings differ from the run's config.yaml ({'; '.join(conflicts)}). "
                "--resume may change rounds (to more), device, threads, n_examples and save_replay_buffer, and the "
                "filter_* settings while the run has no label filter yet; for other settings start a new run "
                "with another --out"
            )
    return state


def open_run(out: Path, cfg: TrainConfig, segmenter_given: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The state of the run ``out`` that ``cfg`` resumes (:func:`check_resume`; its last
    commit finished, the files of an uncommitted round deleted) and its resume state
    (None: a run saved before resume states existed, or with no completed round)."""
    state = check_resume(out, cfg, segmenter_given)
    finish_commit(out, state)
    discard_uncommitted(out, state)
    if state is None:
        logger.warning("%s: no round was completed before the run stopped; starting it from the first round", out)
        return {"round": 0, "history": [], "wall_time_s": 0.0}, None
    done = int(state["round"])
    for name in ("attacker.zip", latest_defender_file(cfg)):
        if not (out / name).is_file():
            raise ValueError(f"corrupt run folder {out}: state.json says round {done} but {name} is missing")
    resume_state = None
    if state.get("resume_state"):
        resume_state = train_resume.load_state(out / train_resume.RESUME_FILE)
    return state, resume_state


def save_round(out: Path, rnd: int, state: dict[str, Any], staged: dict[str, str], cfg: TrainConfig,
               worlds: dict[str, PromptWorld], agents: dict[str, tuple[MaskedDQN, Any]]) -> dict[str, Any]:
    """Stage the files of round ``rnd`` (1-based) beside those ``staged`` already, then
    commit them with ``state`` (:mod:`ppd.agents.run_commit`); returns the state
    committed. A label filter of earlier rounds no longer describes the defender: the
    state says the run has none, and its files go."""
    files = dict(staged)
    names = {"attacker": "attacker.zip", "defender": latest_defender_file(cfg)}
    for role, (model, _) in agents.items():
        files[names[role]] = stage(out, names[role], rnd, model.save)
        if cfg.save_replay_buffer:
            name = replay_file(names[role])
            files[name] = stage(out, name, rnd, model.save_replay_buffer)
    snapshot = train_resume.capture(worlds, agents)
    files[train_resume.RESUME_FILE] = stage(out, train_resume.RESUME_FILE, rnd,
                                            lambda tmp: train_resume.save_state(snapshot, tmp))
    state = {**state, "round": rnd, "replay_buffers": bool(cfg.save_replay_buffer), "resume_state": True,
             "label_filter": None}
    commit_round(out, state, files)
    remove_label_filter(out)
    return state


def _comparable(value: Any) -> Any:
    """A value as ``config.yaml`` holds it (tuples as lists, ints where floats are
    integral stay ints), so that a saved and a new value compare equal when YAML would
    write them alike."""
    import yaml

    return yaml.safe_load(yaml.safe_dump(value))


def resume_conflicts(saved: dict[str, Any], cfg: TrainConfig, done: int, has_filter: bool,
                     segmenter_given: bool = False) -> list[str]:
    """The settings of ``cfg`` that contradict the run it would continue, one line each
    (``name: run V, now W``); empty when ``cfg`` may resume it.

    Args:
        saved: the run's ``config.yaml`` (keys that are not fields, or fields it lacks,
            are not compared: a run of another version of ppd).
        cfg: the configuration of the resumed run.
        done: the rounds the run completed.
        has_filter: whether the run has its label filter (then the ``filter_*`` fields
            are fixed unless more rounds retrain it).

    Free (:data:`RESUME_FREE_FIELDS`): where the run computes and what it saves beside
    its results. ``rounds`` may be any count >= ``done`` (more rounds extend the run);
    ``grid`` 0 means "the segmenter's", the grid the run resolved; with
    ``segmenter_given`` (``train(segmenter=...)``) an empty ``ruac_checkpoint`` is the
    given segmenter's head.
    """
    now = _comparable(cfg.to_dict())
    lines = []
    filter_free = not has_filter or cfg.rounds > done
    for name in cfg.to_dict():  # field order
        if name not in saved or name in RESUME_FREE_FIELDS:
            continue
        old, new = _comparable(saved[name]), now[name]
        if name == "rounds":
            if int(new) < done:
                lines.append(f"rounds: the run completed {done}, now {new}")
            continue
        if name == "grid" and new == 0:
            continue
        if name.startswith("filter_") and filter_free:
            continue
        if segmenter_given and name in ("ruac_checkpoint", "ruac_uncertainty") and not cfg.ruac_checkpoint:
            continue
        if old != new:
            lines.append(f"{name}: run {old!r}, now {new!r}")
    return lines
