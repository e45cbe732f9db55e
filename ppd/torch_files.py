"""Reading torch files safely: tensors and plain data only, one clear reason per failure.

Every ``.pt`` file ppd reads (SAM2 checkpoints, RUAC heads, cached embeddings) goes
through :func:`load_torch`, which uses ``torch.load(weights_only=True)``: the file can
hold tensors, numbers, strings, lists and dicts, never objects whose loading would run
code. A file that cannot be read raises ``ValueError("could not read <what> <path>:
<reason>")`` with a reason a user can act on (empty, truncated, not a PyTorch file, holds
Python objects) instead of torch's advice to load untrusted files with
``weights_only`` off.

Resume files (``last.pt`` of ``ppd pretrain`` and ``ppd train-ruac``) hold numpy random
generators: they are stored as their ``bit_generator.state`` dicts (plain ints and
strings, :func:`generator_state`) and read back with :func:`generator_from_state`.
:func:`load_resume` reads them, and the resume files of earlier versions (which pickled
the ``Generator`` objects themselves), with ``weights_only=True`` too.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

logger = logging.getLogger(__name__)

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"
_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def unreadable_reason(path: Path, exc: BaseException) -> str:
    """Why torch could not read ``path`` (``exc`` is torch's error), in one line."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        size = path.stat().st_size
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
    if size == 0:
        return "the file is empty (0 bytes); it was probably cut off while being written or copied"
    text = str(exc)
    found = _GLOBAL.search(text)
    if found:
        return (
            f"it holds Python objects ({found.group(1)}), not only tensors and plain data; ppd does "
            "not load such files, since loading them could run code"
        )
    if head.startswith(_ZIP_MAGIC):
        return f"it is truncated or corrupt (torch: {_first_line(text).split('. ')[0]})"
    if head.startswith(_PICKLE_PROTO):
        return "it is truncated or corrupt (an old-format PyTorch file that ends early or holds unexpected data)"
    return f"it is not a PyTorch file (it starts with the bytes {head!r})"


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or ["no details"])[0][:200]


def load_torch(path: str | os.PathLike, what: str = "checkpoint", map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; any failure is ``ValueError("could not read
    {what} {path}: {reason}")`` (a missing file stays ``FileNotFoundError``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        raise ValueError(f"could not read {what} {path}: {unreadable_reason(path, exc)}") from exc


def warn_nonfinite(state: Mapping[str, Any], path: str | os.PathLike, what: str = "checkpoint") -> list[str]:
    """Log a warning naming ``path`` when floating tensors of ``state`` hold NaN or
    infinite values (a diverged training); returns their keys. Such weights load (the
    file is what it is), but the masks they give are meaningless."""
    bad = [
        k for k, v in state.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        few = ", ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        logger.warning(
            "%s %s has NaN or infinite weights in %d tensor(s): %s; its predictions will be "
            "meaningless (was it saved after the training diverged?)", what, path, len(bad), few,
        )
    return bad


#: numpy bit generators a stored generator state may name (numpy's own).
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


def generator_state(rng: np.random.Generator) -> dict[str, Any]:
    """``rng``'s ``bit_generator.state``: a dict of ints and strings that
    ``torch.load(weights_only=True)`` reads (a pickled ``Generator`` it refuses)."""
    return rng.bit_generator.state


def generator_from_state(state: Any) -> np.random.Generator:
    """The generator of a :func:`generator_state` dict, continuing where it stood; a
    ``Generator`` (read from a resume file of an earlier version) is returned as it is.

    Raises:
        ValueError: anything else, or a bit generator that is not numpy's.
    """
    if isinstance(state, np.random.Generator):
        return state
    name = state.get("bit_generator") if isinstance(state, Mapping) else None
    if name not in _BIT_GENERATORS:
        raise ValueError(f"not a numpy random generator state: bit generator {name!r}")
    bit = getattr(np.random, name)()
    bit.state = dict(state)
    return np.random.Generator(bit)


def _old_generator_globals() -> list[Any]:
    """What a pickled numpy ``Generator`` (PCG64, as ``default_rng`` makes it) references:
    numpy's reconstruction functions and classes, nothing that runs other code."""
    from numpy.random import _pickle, bit_generator  # noqa: PLC0415 - numpy's pickle support

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return [
        _pickle.__generator_ctor, _pickle.__bit_generator_ctor, np.random.PCG64, bit_generator.SeedSequence,
        bit_generator.__pyx_unpickle_SeedSequence, np.ndarray, _reconstruct, np.dtype,
        *{type(np.dtype(t)) for t in (np.uint32, np.uint64, np.int64)},
    ]


def load_resume(path: str | os.PathLike, what: str = "resume file") -> Any:
    """:func:`load_torch` of a resume file. Files of earlier versions hold pickled numpy
    generators; torch's ``weights_only`` reader accepts them with numpy's generator and
    array reconstruction allowed (:func:`_old_generator_globals`) and still refuses any
    other global, so those runs resume without turning ``weights_only`` off, which would run
    whatever a crafted file names. Their generators come back as ``Generator`` objects,
    which :func:`generator_from_state` passes through."""
    with torch.serialization.safe_globals(_old_generator_globals()):
        return load_torch(path, what)
