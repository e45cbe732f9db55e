"""Checking agent archives and replay buffers for code before anything in them is unpickled.

Stable-Baselines3 saves an agent as a zip whose ``data`` JSON holds some values as
base64 cloudpickle (``{":serialized:": ...}``: the policy class, the spaces, the last
observations, ...), and a replay buffer as one pickle. Unpickling runs whatever callable
the pickle names, so a crafted ``defender.zip`` or ``*_replay.pkl`` would run code the
moment SB3 loads it. SB3 offers no safe mode, and ``custom_objects`` cannot stand in for
the spaces (their shapes differ from run to run), so these files are checked instead:
:func:`check_archive` and :func:`check_replay_buffer` walk each pickle's opcodes with
:func:`pickletools.genops` (which only parses, never unpickles) and accept a file only
when every global it references (``GLOBAL``, ``STACK_GLOBAL``, ``INST``) is one of the
(module, name) pairs ppd's own files hold (:data:`ARCHIVE_GLOBALS`,
:data:`REPLAY_GLOBALS`). A callable can only enter a pickle through such a reference, so
``REDUCE`` / ``NEWOBJ`` / ``BUILD`` can only call allowed ones. Anything else (``os.system``,
``builtins.eval``, ``subprocess.Popen``, a function pickled by value, a reference the
check cannot resolve, the extension-registry and persistent-id opcodes) is refused with
:class:`UnsafeArchiveError` naming the file, the entry and the global.

The lists were collected from real archives (runs of every ppd version, the bundled
defender and its earlier versions, the files the test suite writes); the ``numpy.core``
spellings are what the same objects pickle to under numpy 1.x.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import pickletools
import zipfile
from typing import IO, Iterable, Iterator

__all__ = ["ARCHIVE_GLOBALS", "REPLAY_GLOBALS", "RECREATED_ENTRIES", "UnsafeArchiveError", "check_archive",
           "check_replay_buffer", "pickle_globals"]


class UnsafeArchiveError(ValueError):
    """An agent archive or replay buffer references something ppd's files never hold."""


#: What numpy and gymnasium objects (arrays, dtypes, scalars, spaces, their generators)
#: pickle to: shared by archives and replay buffers.
_NUMPY_GYM = frozenset({
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "scalar"),  # numpy 1.x spellings of the same three
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pcg64", "PCG64"),
    ("numpy.random.bit_generator", "SeedSequence"),
    ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
    ("gymnasium.spaces.box", "Box"),
    ("gymnasium.spaces.dict", "Dict"),
    ("gymnasium.spaces.discrete", "Discrete"),
})

#: Globals the serialized entries of a ppd agent archive (``defender.zip``,
#: ``attacker.zip``, ``defender_last.zip``, ``label_filter.zip``) may reference.
ARCHIVE_GLOBALS = _NUMPY_GYM | frozenset({
    ("ppd.agents.qnet", "GraphDQNPolicy"),
    ("collections", "deque"),
    ("stable_baselines3.common.buffers", "DictReplayBuffer"),
    ("stable_baselines3.common.type_aliases", "TrainFreq"),
    ("stable_baselines3.common.type_aliases", "TrainFrequencyUnit"),
    ("stable_baselines3.common.utils", "ConstantSchedule"),
    ("stable_baselines3.common.utils", "FloatSchedule"),
    ("stable_baselines3.common.utils", "LinearSchedule"),
})

#: Globals a replay buffer file (``--save-replay-buffer``) may reference.
REPLAY_GLOBALS = _NUMPY_GYM | frozenset({
    ("stable_baselines3.common.buffers", "DictReplayBuffer"),
    ("torch", "device"),
})

#: Archive entries that SB3's ``load`` recreates from plain settings of the same archive
#: (``_setup_model`` rebuilds both schedules from ``learning_rate`` and the
#: ``exploration_*`` numbers), so their pickles are never needed: the loader passes them
#: as ``custom_objects`` and SB3 does not unpickle them. Older SB3 versions (2.4, 2.5)
#: pickled these schedules as closures, by value (code objects), which no allow-list
#: could accept; replacing them keeps such archives loading.
RECREATED_ENTRIES = ("lr_schedule", "exploration_schedule")

_STRINGS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
                      "SHORT_BINSTRING"})
_MEMO_PUT = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MEMO_GET = frozenset({"GET", "BINGET", "LONG_BINGET"})
_NO_STACK = frozenset({"PROTO", "FRAME"})
# Opcodes that fetch a callable or object from outside the pickle.
_FORBIDDEN = {"EXT1": "the copyreg extension registry", "EXT2": "the copyreg extension registry",
              "EXT4": "the copyreg extension registry", "PERSID": "a persistent id", "BINPERSID": "a persistent id"}


def pickle_globals(data: bytes | IO[bytes]) -> Iterator[str | tuple[str, str]]:
    """The globals a pickle references, in order, without unpickling it: ``(module,
    name)`` pairs, or a string describing a reference that cannot be resolved statically
    (a ``STACK_GLOBAL`` whose operands are not plain strings, a forbidden opcode).

    ``STACK_GLOBAL`` takes its module and name from the stack: the check follows the
    strings pushed (directly or through the memo) just before it; anything it cannot
    follow is reported, never guessed.

    Raises:
        ValueError: not a valid pickle (truncated, unknown opcode).
    """
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    memo: dict[int, str | None] = {}
    pushed: list[str | None] = []  # recent stack pushes: the string, or None for any other object
    for op, arg, _pos in pickletools.genops(stream):
        name = op.name
        if name in _FORBIDDEN:
            yield f"{name} ({_FORBIDDEN[name]})"
            pushed.append(None)
        elif name in ("GLOBAL", "INST"):
            module, _, attr = str(arg).partition(" ")
            yield module, attr
            pushed.append(None)
        elif name == "STACK_GLOBAL":
            if len(pushed) >= 2 and isinstance(pushed[-2], str) and isinstance(pushed[-1], str):
                yield pushed[-2], pushed[-1]  # type: ignore[misc]
            else:
                yield "STACK_GLOBAL with computed operands"
            pushed.append(None)
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in _MEMO_PUT:
            memo[int(arg)] = pushed[-1] if pushed else None
        elif name in _MEMO_GET:
            pushed.append(memo.get(int(arg)))
        elif name in _STRINGS:
            pushed.append(arg if isinstance(arg, str) else None)
        elif name not in _NO_STACK:
            pushed.append(None)
        del pushed[:-2]  # STACK_GLOBAL only reads the last two


def _refuse(label: str, where: str, ref: str | tuple[str, str], what: str) -> UnsafeArchiveError:
    shown = f"{ref[0]}.{ref[1]}" if isinstance(ref, tuple) else ref
    return UnsafeArchiveError(
        f"{label}: {where} references {shown}, which {what} never holds; refusing to load it "
        "(the file may have been tampered with)"
    )


def _check_pickle(data: bytes | IO[bytes], allowed: frozenset[tuple[str, str]], label: str, where: str,
                  what: str) -> None:
    try:
        for ref in pickle_globals(data):
            if ref not in allowed:
                raise _refuse(label, where, ref, what)
    except UnsafeArchiveError:
        raise
    except Exception as exc:  # genops raises ValueError (and others) for a damaged pickle
        raise ValueError(f"{label}: {where} is not a readable pickle ({exc})") from None


def _serialized_entries(raw: bytes) -> Iterable[tuple[str, str]]:
    """(key, base64 text) of the ``:serialized:`` entries of an archive's ``data`` JSON,
    exactly those SB3's ``json_to_data`` would unpickle. Unparseable JSON yields nothing:
    SB3 then fails on it the same way, before unpickling anything."""
    try:
        entries = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError):
        return []
    if not isinstance(entries, dict):
        return []
    return [(k, v[":serialized:"]) for k, v in entries.items() if isinstance(v, dict) and ":serialized:" in v]


def check_archive(file: str | os.PathLike | IO[bytes], label: str | None = None,
                  skip: Iterable[str] = RECREATED_ENTRIES) -> None:
    """Refuse an SB3 agent archive whose serialized entries reference globals outside
    :data:`ARCHIVE_GLOBALS` (``skip``: entries the loader replaces without unpickling).
    A file object is read from its current position and left there.

    Raises:
        UnsafeArchiveError: a disallowed global, named with the file and entry.
        ValueError: a serialized entry that is not valid base64 or pickle.
    """
    label = label or (os.fspath(file) if isinstance(file, (str, os.PathLike)) else "agent archive")
    start = None if isinstance(file, (str, os.PathLike)) else file.tell()
    try:
        with zipfile.ZipFile(file) as archive:
            if "data" not in archive.namelist():
                return
            raw = archive.read("data")
    except (zipfile.BadZipFile, OSError, KeyError, EOFError):
        return  # not a readable zip: SB3's own error says so, with nothing unpickled
    finally:
        if start is not None:
            file.seek(start)  # type: ignore[union-attr]
    skipped = set(skip)
    for key, text in _serialized_entries(raw):
        if key in skipped:
            continue
        try:
            blob = base64.b64decode(str(text).encode(), validate=False)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"{label}: entry {key!r} is not valid base64 ({exc})") from None
        _check_pickle(blob, ARCHIVE_GLOBALS, label, f"entry {key!r}", "a ppd agent archive")


def check_replay_buffer(file: str | os.PathLike | IO[bytes], label: str | None = None) -> None:
    """Refuse a replay buffer pickle that references globals outside
    :data:`REPLAY_GLOBALS`. A file object is read from its current position and put back.

    Raises:
        UnsafeArchiveError: a disallowed global, named with the file.
        ValueError: not a readable pickle.
    """
    if isinstance(file, (str, os.PathLike)):
        with open(file, "rb") as fh:
            return check_replay_buffer(fh, label or os.fspath(file))
    start = file.tell()
    try:
        _check_pickle(file, REPLAY_GLOBALS, label or "replay buffer", "the replay buffer", "a ppd replay buffer")
    finally:
        file.seek(start)
