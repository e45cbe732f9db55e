"""Session 20: refine time with and without the consensus check, interleaved set by set so
that the machine's drift hits both alike.

    python docs/scripts/s20_timing.py [--run DIR] [--scenes 20] [--rounds 3] [--threads 2]

Each round loads fresh defenders (cold decode caches, as in the defense bench) and, for
every coarse set of the defense bench on every domain, times ``refine`` of each variant
back to back, the image already encoded. Prints the median over all sets per round and
variant, and the median of the per-domain medians (the defense bench's figure).
"""
import argparse, statistics, time
import numpy as np
import torch

from ppd.agents.defender import BUNDLED_DEFENDER, PromptDefender
from ppd.bench.defense import bench_sets
from ppd.data.scenes import DOMAINS

VARIANTS = {"off": dict(consensus=False), "consensus": dict(consensus=True)}


def timing_setup():
    """The options (``--run --scenes --rounds --threads``, threads applied), a defender
    of the run, and the defense bench's coarse sets of every domain as ``(domain, image,
    coords, labels)``; shared by the timing scripts of later sessions."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default=str(BUNDLED_DEFENDER))
    ap.add_argument("--scenes", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    base = PromptDefender.load(a.run)
    sets = [(dom, rec.scene.image, c, l) for dom in DOMAINS for rec, _, c, l in bench_sets(base, a.run, dom, a.scenes)["coarse"]]
    return a, base, sets


def main():
    a, base, sets = timing_setup()
    for r in range(a.rounds):
        ds = {k: PromptDefender.load(a.run, **kw) for k, kw in VARIANTS.items()}
        times = {k: {} for k in ds}
        for dom, im, c, l in sets:
            for k, d in (ds.items() if r % 2 == 0 else reversed(ds.items())):  # alternate who goes first
                d.record(im)
                t = time.perf_counter()
                d.refine(im, c, l)
                times[k].setdefault(dom, []).append(1000 * (time.perf_counter() - t))
        for k, per in times.items():
            allt = [x for v in per.values() for x in v]
            print(f"round {r} {k:10s} median {np.median(allt):6.1f} ms, median of domain medians "
                  f"{statistics.median(np.median(v) for v in per.values()):6.1f} ms, mean {np.mean(allt):6.1f} ms", flush=True)


if __name__ == "__main__":
    main()
