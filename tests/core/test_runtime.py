"""glibc allocator tuning (ppd.runtime): its effect on where large blocks come from, the
opt-out, and that it is applied once."""

import json
import os
import platform
import subprocess
import sys

import pytest

import ppd.runtime as runtime

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocates a 4 MiB block and reports how many bytes glibc holds in mmapped blocks while
# it lives (mallinfo2().hblkhd): above glibc's default 128 KiB threshold it is its own mmap.
_PROBE = r"""
import ctypes, json, sys
import ppd.runtime as rt
tuned = rt.tune_cpu_allocator()
class MI(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split())]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MI
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
before = libc.mallinfo2().hblkhd
p = libc.malloc(4 << 20)
during = libc.mallinfo2().hblkhd
libc.free(p)
print(json.dumps({"tuned": tuned, "mmapped_growth": during - before}))
"""


def _probe(env_value):
    env = {**os.environ, runtime.ENV_VAR: env_value}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_tuning_moves_large_blocks_from_mmap_to_the_heap():
    default = _probe("0")
    tuned = _probe("1")
    assert default["tuned"] is False and set(default) == {"tuned", "mmapped_growth"}
    assert default["mmapped_growth"] >= 4 << 20  # glibc default: its own mmap
    assert tuned == {"tuned": True, "mmapped_growth": 0}  # tuned: from the heap


def test_opt_out_and_applied_once(monkeypatch):
    monkeypatch.setattr(runtime, "_state", {})
    monkeypatch.setenv(runtime.ENV_VAR, "off")
    assert runtime.tune_cpu_allocator() is False
    monkeypatch.setenv(runtime.ENV_VAR, "1")
    assert runtime.tune_cpu_allocator() is False  # decided once per process
    monkeypatch.setattr(runtime, "_state", {})
    assert runtime.tune_cpu_allocator() is GLIBC
