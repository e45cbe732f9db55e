"""Atomic file writes: a crash mid-write never leaves a half-written file behind.

:func:`atomic_write` writes into a temporary file next to the target
(``.NAME.XXXXXXXX.tmp``, in the same folder), flushes it to disk (``fsync``) and renames
it onto the target, so readers see either the old file or the complete new one, also
after a power cut. The file gets the mode a plain ``open()`` would give a new file (0666
less the process umask, 0644 under the usual umask 022), not ``mkstemp``'s private 0600,
so shared run folders and caches stay readable to the group. A process killed mid-write
leaves its temporary file behind; the next write into that folder (once per folder and
process, then again after :data:`STALE_TMP_SECONDS`) removes such files of ppd's own
naming that are older than :data:`STALE_TMP_SECONDS`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

logger = logging.getLogger(__name__)

#: A temporary file of ppd's naming older than this (seconds since its last change) is an
#: orphan of a killed writer and is removed on the next write into its folder.
STALE_TMP_SECONDS = 15 * 60

#: ``.NAME.XXXXXXXX.tmp``: ``tempfile.mkstemp(prefix=".NAME.", suffix=".tmp")``.
TMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")

_swept: dict[str, float] = {}  # folder -> time.monotonic() of its last sweep
_swept_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the only portable way to read it is to set it
    os.umask(mask)
    return mask


def remove_stale_tmp_files(folder: str | os.PathLike, older_than: float = STALE_TMP_SECONDS) -> list[Path]:
    """Remove the temporary files of :func:`atomic_write` (``.NAME.XXXXXXXX.tmp``,
    regular files only) in ``folder`` not modified for ``older_than`` seconds.

    Returns the removed paths. Files that vanish meanwhile or cannot be removed are
    skipped (the latter logged).
    """
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not TMP_NAME.match(entry.name):
            continue
        try:
            if not entry.is_file(follow_symlinks=False) or now - entry.stat(follow_symlinks=False).st_mtime < older_than:
                continue
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            logger.warning("could not remove the stale temporary file %s: %s", entry.path, exc)
            continue
        removed.append(Path(entry.path))
    if removed:
        logger.info("removed %d stale temporary file(s) left by an interrupted write in %s: %s",
                    len(removed), folder, ", ".join(p.name for p in removed))
    return removed


def _sweep_once(folder: Path) -> None:
    """:func:`remove_stale_tmp_files` on ``folder`` unless done in the last
    :data:`STALE_TMP_SECONDS` by this process (a folder of many files is listed rarely)."""
    key = str(folder.resolve())
    now = time.monotonic()
    with _swept_lock:
        last = _swept.get(key)
        if last is not None and now - last < STALE_TMP_SECONDS:
            return
        _swept[key] = now
    remove_stale_tmp_files(folder)


def _fsync_path(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then move the temp file onto ``path`` (same folder).

    The temp file is given the umask's mode and flushed to disk before the rename; the
    folder is flushed after it (where the OS allows). On any error the temp file is
    removed and the target is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        _fsync_path(str(path.parent), directory=True)
    except OSError:  # not supported for folders on every OS / file system
        pass
    return path


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_text(text: str, path: str | os.PathLike) -> Path:
    def _w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, _w)


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    return save_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def json_safe(x: Any) -> Any:
    """nan/inf -> None, recursively through dicts, lists and tuples (strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x
