"""Process-level CPU tuning: glibc's allocator settings for PyTorch inference.

PyTorch allocates every CPU tensor with ``posix_memalign`` and frees it at once (it has
no CPU caching allocator). With glibc's defaults a block above 128 KiB is its own
``mmap`` (glibc raises that threshold as such blocks are freed, but trims freed heap
above twice of it back to the OS), so a decoder call on many prompt sets (activations of
several MB each) page-faults much of its memory in afresh. Raising the mmap and trim
thresholds keeps those blocks in the heap for reuse. Measured on the 2-core CI-class CPU
(bundled model, SAM2's mask decoder, 2 threads;
``python docs/experiments/allocator_tuning_speed.py --threads 2 --rounds 7 --reps 20``): at 72 prompt sets per call (8 training envs with removal probes)
page faults per call 10386 -> 108 and 1.20x faster; at 1 and 9 sets per call (refine)
1.07x and 1.05x, within this machine's noise. The settings only change where freed
memory waits, not any result.

Written with :mod:`ctypes` because no maintained package exposes ``mallopt``; the usual
alternative (jemalloc / tcmalloc through ``LD_PRELOAD``) must be set before the process
starts, which a library cannot do.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

logger = logging.getLogger(__name__)

#: Environment variable that turns the tuning off (``0``, ``false``, ``no``, ``off``).
ENV_VAR = "PPD_MALLOC_TUNING"
# mallopt parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
#: (parameter, value): blocks up to 32 MiB (glibc's largest mmap threshold on 64-bit)
#: come from the heap; up to 256 MiB of free heap top is kept; the heap grows 64 MiB
#: at a time.
SETTINGS = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 256 << 20), (_M_TOP_PAD, 64 << 20))

_state: dict[str, bool] = {}


def tune_cpu_allocator() -> bool:
    """Apply :data:`SETTINGS` to glibc's malloc, once per process.

    Called by :class:`~ppd.segmenter.Segmenter` for a CPU model. A no-op (returns False)
    off glibc (macOS, musl, Windows), when the environment variable ``PPD_MALLOC_TUNING``
    is ``0`` / ``false`` / ``no`` / ``off``, or when glibc refuses a setting.

    Returns:
        Whether the settings are in effect.
    """
    if "done" in _state:
        return _state["done"]
    _state["done"] = _apply()
    return _state["done"]


def _apply() -> bool:
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        logger.info("malloc tuning off (%s=%s)", ENV_VAR, os.environ[ENV_VAR])
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        logger.debug("malloc tuning skipped: not glibc (%s %s)", platform.system(), platform.libc_ver())
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError) as exc:  # pragma: no cover - glibc always has it
        logger.debug("malloc tuning skipped: %s", exc)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    for param, value in SETTINGS:
        if mallopt(param, value) != 1:
            logger.warning("malloc tuning: glibc refused mallopt(%d, %d); keeping its defaults", param, value)
            return False
    logger.info("glibc malloc tuned for PyTorch CPU inference (%s=0 turns this off)", ENV_VAR)
    return True
