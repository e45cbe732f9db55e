"""Session 21: refine time with ``keep_consistent`` on (the default) and off, and with
both input checks off, interleaved set by set (``s20_timing.py``'s protocol and options).

    python docs/scripts/s21_timing.py [--run DIR] [--scenes 20] [--rounds 3] [--threads 2]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import s20_timing  # noqa: E402

s20_timing.VARIANTS = {
    "default": dict(),
    "no-keep": dict(keep_consistent=False),
    "off": dict(consensus=False, keep_consistent=False),
}

if __name__ == "__main__":
    s20_timing.main()
