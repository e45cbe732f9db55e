"""What does each optional refine stage cost? ``PromptDefender.refine`` timed with and
without it, interleaved set by set so that the machine's drift hits both alike.

    python docs/experiments/refine_timing.py --compare consensus        # the consensus check
    python docs/experiments/refine_timing.py --compare keep-consistent  # the input checks
    python docs/experiments/refine_timing.py --compare guard            # the score guard
        [--run DIR] [--scenes 20] [--rounds 3] [--threads 2]

Each round loads fresh defenders (cold decode caches, as in the defense bench) and, for
every coarse set of the defense bench on every domain, times ``refine`` of each variant
back to back (the order alternates between rounds), the image already encoded. Prints,
per round and variant, the median over all sets, the median of the per-domain medians
(the defense bench's figure) and the mean.
"""

import statistics
import time

import numpy as np

from common import timing_setup
from ppd.agents.defender import PromptDefender

#: Variants per comparison: PromptDefender.load options (the library defaults first).
COMPARISONS = {
    "consensus": {"default": {}, "no-consensus": dict(consensus=False)},
    "keep-consistent": {"default": {}, "no-keep-consistent": dict(keep_consistent=False),
                        "no-input-checks": dict(consensus=False, keep_consistent=False)},
    "guard": {"default": {}, "no-guard": dict(min_score_gain=None)},
}


def main() -> None:
    a, _, sets = timing_setup(__doc__.splitlines()[0], lambda ap: ap.add_argument(
        "--compare", choices=sorted(COMPARISONS), default="consensus", help="which stage to time with and without"))
    variants = COMPARISONS[a.compare]
    for r in range(a.rounds):
        ds = {k: PromptDefender.load(a.run, **kw) for k, kw in variants.items()}
        times: dict[str, dict[str, list[float]]] = {k: {} for k in ds}
        order = list(ds.items()) if r % 2 == 0 else list(reversed(ds.items()))
        for dom, im, c, l in sets:
            for k, d in order:
                d.record(im)
                t = time.perf_counter()
                d.refine(im, c, l)
                times[k].setdefault(dom, []).append(1000 * (time.perf_counter() - t))
        for k, per in times.items():
            allt = [x for v in per.values() for x in v]
            print(f"round {r} {k:18s} median {np.median(allt):6.1f} ms, median of domain medians "
                  f"{statistics.median(np.median(v) for v in per.values()):6.1f} ms, mean {np.mean(allt):6.1f} ms", flush=True)


if __name__ == "__main__":
    main()
