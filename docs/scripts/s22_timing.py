"""Session 22: refine time with the ``min_score_gain`` guard at its default (-0.05) and
off, interleaved set by set (``s20_timing.py``'s protocol and options).

    python docs/scripts/s22_timing.py [--run DIR] [--scenes 20] [--rounds 3] [--threads 2]
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import s20_timing  # noqa: E402

s20_timing.VARIANTS = {
    "default": dict(),
    "no-guard": dict(min_score_gain=None),
}

if __name__ == "__main__":
    s20_timing.main()
