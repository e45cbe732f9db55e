"""Is SAM2's mask-decoder attention faster on CPU as two matmuls
(``use_matmul_attention``, the CPU default) than as SAM2's own
``F.scaled_dot_product_attention``, and are the outputs the same? Interleaved so that the
machine's drift hits both alike.

    python docs/experiments/decoder_attention_timing.py [--run DIR] [--scenes 20] [--rounds 3] [--threads 2]

1. Decoder calls on the bundled model: one call of 16 prompt sets on 16 procedural
   images, and 16 calls of one set (8 points padded to 16, as the envs decode), medians
   of 35 alternating rounds after 5 warm-up rounds; and how many mask pixels differ.
2. ``PromptDefender.refine`` on the defense bench's coarse sets of every domain (library
   defaults), each set refined with both back to back per round, the image encoded;
   median per variant and round, and whether the outputs (kept points, mask) agree.
"""
import time
import numpy as np

from common import timing_setup
from ppd.agents.defender import PromptDefender
from ppd.data.scenes import ProceduralScenes
from ppd.segmenter import use_matmul_attention


def attention_switch(decoder):
    """``set(variant)`` for ``"matmul"`` / ``"sdpa"`` on the decoder's attention layers."""
    return lambda name: use_matmul_attention(decoder, on=name == "matmul")


def decoder_calls(seg, rounds=40, warm=5):
    embs = [seg.encode(s.image) for s in ProceduralScenes("train", 16, seed=0)]
    rng = np.random.default_rng(0)
    coords = np.zeros((16, 16, 2), np.float32)
    labels = np.full((16, 16), -1)
    for i, e in enumerate(embs):
        h, w = e.orig_hw
        coords[i, :8] = rng.uniform((0, 0), (w - 1, h - 1), (8, 2))
        labels[i, :8] = rng.integers(0, 2, 8)
    switch = attention_switch(seg.model.sam_mask_decoder)
    calls = {"16 sets, 1 call": lambda: seg.predict_batch(embs, coords, labels),
             "16 calls of 1 set": lambda: [seg.predict_batch(embs[i:i + 1], coords[i:i + 1], labels[i:i + 1]) for i in range(16)]}
    times = {(v, c): [] for v in ("sdpa", "matmul") for c in calls}
    for r in range(rounds):
        for v in ("sdpa", "matmul"):
            switch(v)
            for c, fn in calls.items():
                t = time.perf_counter()
                fn()
                if r >= warm:
                    times[(v, c)].append(1000 * (time.perf_counter() - t))
    for c in calls:
        s, m = np.median(times[("sdpa", c)]), np.median(times[("matmul", c)])
        print(f"decoder, {c:18s}: sdpa {s:6.1f} ms, matmul {m:6.1f} ms ({s / m:.2f}x)")
    outs = {}
    for v in ("sdpa", "matmul"):
        switch(v)
        outs[v] = seg.predict_batch(embs, coords, labels)
    print(f"mask pixels that differ: {int((outs['sdpa'].masks != outs['matmul'].masks).sum())} of {outs['sdpa'].masks.size}; "
          f"largest score difference {np.abs(outs['sdpa'].scores - outs['matmul'].scores).max():.2e}")
    switch("matmul")


def main():
    a, base, sets = timing_setup(__doc__.splitlines()[0])
    decoder_calls(base.segmenter)
    sets = [(im, c, l) for _, im, c, l in sets]
    same = 0
    for r in range(a.rounds):
        d = PromptDefender.load(a.run, segmenter=base.segmenter)  # cold decode cache per round
        switch = attention_switch(d.segmenter.model.sam_mask_decoder)
        times = {"sdpa": [], "matmul": []}
        for im, c, l in sets:
            d.record(im)
            res = {}
            for v in (("sdpa", "matmul") if r % 2 == 0 else ("matmul", "sdpa")):
                switch(v)
                d.world._outcomes.clear()  # each variant decodes for itself
                t = time.perf_counter()
                res[v] = d.refine(im, c, l)
                times[v].append(1000 * (time.perf_counter() - t))
            same += bool(np.array_equal(res["sdpa"].kept, res["matmul"].kept) and np.array_equal(res["sdpa"].mask, res["matmul"].mask))
        print(f"round {r}: refine median sdpa {np.median(times['sdpa']):6.1f} ms, matmul {np.median(times['matmul']):6.1f} ms "
              f"({len(sets)} coarse sets)", flush=True)
        switch("matmul")
    print(f"identical outputs (kept points and mask): {same} of {a.rounds * len(sets)}")


if __name__ == "__main__":
    main()
