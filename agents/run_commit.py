"""Committing the files of a training round as one unit, and reading the run's state.

A round of ``ppd train`` ends with several files that belong together: ``attacker.zip``,
the defender files, the replay buffers and the resume state. Each is written atomically,
but a kill between two of them would leave a mix of rounds. So they are written in three
steps:

1. **stage**: every file is written (atomically) under a staged name,
   ``.NAME.roundR`` (:func:`staged_name`), beside its final name; the files of the last
   committed round are untouched;
2. **commit**: ``state.json`` is replaced atomically by one naming the round and its
   staged files (``state["commit"]``); this is the moment the round is done;
3. **finish**: each staged file is renamed onto its final name (:func:`finish_commit`).

A kill before step 2 leaves the previous round committed (its staged leftovers are
deleted on the next start, :func:`discard_uncommitted`); a kill during step 3 leaves
staged files that the commit names, and :func:`finish_commit` (run when the run is
resumed) renames them. Loading a run reads the final names only, which always hold whole
files of committed rounds. A ``state.json`` without ``commit`` (written before commits
existed) names no staged files: its final names are the round's files.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable

from ppd import io

logger = logging.getLogger(__name__)

__all__ = ["STATE_FILE", "commit_round", "committed_files", "committed_path", "discard_uncommitted", "finish_commit",
           "read_state", "stage", "staged_name"]

#: The run's state file: completed rounds, history, and the committed files.
STATE_FILE = "state.json"

_STAGED = re.compile(r"^\.(?P<name>.+)\.round(?P<round>\d+)$")


def staged_name(name: str, rnd: int) -> str:
    """The staged name of run file ``name`` written in round ``rnd`` (1-based)."""
    return f".{name}.round{int(rnd)}"


def stage(out: Path, name: str, rnd: int, write: Callable[[str], None]) -> str:
    """Write run file ``name`` of round ``rnd`` under its staged name (atomically, by
    ``write(tmp_path)``); returns the staged name."""
    staged = staged_name(name, rnd)
    io.atomic_write(Path(out) / staged, write)
    return staged


def read_state(out: str | os.PathLike) -> dict[str, Any] | None:
    """``out/state.json`` as a dict, None when there is none.

    Raises:
        ValueError: a file that is not a JSON object with an integer ``round``, naming it.
    """
    path = Path(out) / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
        state["round"] = int(state.get("round", 0))
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(f"corrupt run folder {path.parent}: cannot read {path}: {exc}") from None
    return state


def committed_files(state: dict[str, Any] | None) -> dict[str, str]:
    """Final name -> staged name of the files the state's last commit names ({} for a
    state written before commits existed)."""
    commit = (state or {}).get("commit") or {}
    files = commit.get("files") or {}
    return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}


def committed_path(out: str | os.PathLike, state: dict[str, Any] | None, name: str) -> Path:
    """Where run file ``name`` of the last commit is now: its staged name while a kill
    has left it there (before :func:`finish_commit`), else its final name."""
    out = Path(out)
    staged = committed_files(state).get(name)
    if staged and (out / staged).is_file():
        return out / staged
    return out / name


def commit_round(out: Path, state: dict[str, Any], files: dict[str, str]) -> None:
    """Commit a round: write ``state`` (its ``round`` the round just completed) with
    ``commit`` naming the staged ``files`` (final name -> staged name) to
    ``state.json`` atomically, then rename the staged files onto their final names."""
    state = {**state, "commit": {"round": int(state["round"]), "files": dict(files)}}
    io.save_json(state, Path(out) / STATE_FILE)
    finish_commit(out, state)


def finish_commit(out: Path, state: dict[str, Any] | None) -> None:
    """Rename the staged files of the state's commit that are still staged onto their
    final names (all of them after :func:`commit_round`; after a kill in its renames,
    the rest). Idempotent."""
    out = Path(out)
    for final, staged in committed_files(state).items():
        src = out / staged
        if src.is_file():
            os.replace(src, out / final)


def discard_uncommitted(out: Path, state: dict[str, Any] | None) -> list[str]:
    """Delete staged files that the state's commit does not name (written by a round
    that a kill stopped before its commit); returns their names."""
    out = Path(out)
    keep = set(committed_files(state).values())
    gone = []
    if not out.is_dir():
        return gone
    for path in out.iterdir():
        if _STAGED.match(path.name) and path.name not in keep and path.is_file():
            path.unlink(missing_ok=True)
            gone.append(path.name)
    if gone:
        logger.info("%s: deleted the files of a round that was not completed: %s", out, ", ".join(sorted(gone)))
    return gone
