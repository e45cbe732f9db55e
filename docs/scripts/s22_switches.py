"""Session 22: PromptDefender.refine with each inference switch off, on a run's own
`ppd train` eval sets (48 in-domain scenes, attacked and coarse), and a per-set replay of
the score guard's tolerance (without its agreement test).

    python docs/scripts/s22_switches.py RUN
"""
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from s22_eval_records import eval_sets  # noqa: E402
from ppd.agents.defender import PromptDefender  # noqa: E402
from ppd.envs.world import prompts_from_state  # noqa: E402
from ppd.segmenter import load_segmenter  # noqa: E402

torch.set_num_threads(2)
run = sys.argv[1]
seg = load_segmenter()
ew, ro = eval_sets(run, seg)
variants = {"default": {}, "no guard": dict(min_score_gain=None), "no keep": dict(keep_consistent=False),
            "no consensus": dict(consensus=False), "none": dict(min_score_gain=None, keep_consistent=False, consensus=False)}
for name, kw in variants.items():
    d = PromptDefender.load(run, segmenter=seg, **kw)
    row = []
    for part in ("attacked", "coarse"):
        sets = ro[part]
        cl = [prompts_from_state(st, pts) for _, _, st, pts in sets]
        res = d.refine_many([rec.scene.image for rec, *_ in sets], [c for c, _ in cl], [l for _, l in cl])
        row.append(np.mean([ew.quality_fn(r.mask, rec.scene.masks[obj]) for (rec, obj, *_), r in zip(sets, res)]))
    print(f"{name:14s} attacked {row[0]:.3f} coarse {row[1]:.3f}")
print("--- per-set replay of the guard")
d = PromptDefender.load(run, segmenter=seg, min_score_gain=None)
for part in ("attacked", "coarse"):
    sets = ro[part]
    cl = [prompts_from_state(st, pts) for _, _, st, pts in sets]
    res = d.refine_many([rec.scene.image for rec, *_ in sets], [c for c, _ in cl], [l for _, l in cl])
    rows = []
    for (rec, obj, *_), r, (c, l) in zip(sets, res, cl):
        pin = seg.predict(rec.scene.image, c, l)
        rows.append((float(ew.quality_fn(r.mask, rec.scene.masks[obj])), r.score, float(ew.quality_fn(pin.masks[0], rec.scene.masks[obj])), float(pin.scores[0]), r.steps))
    for g in (None, 0.0, -0.05, -0.1, -0.15, -0.2):
        vals = [(qi if (g is not None and st > 0 and so < si + g) else qo) for qo, so, qi, si, st in rows]
        n = sum(1 for qo, so, qi, si, st in rows if g is not None and st > 0 and so < si + g)
        print(part, g, f"{np.mean(vals):.3f} reverted {n}")
    for qo, so, qi, si, st in rows:
        if st > 0 and so < si - 0.05: print(f"   revert: out iou {qo:.2f} score {so:.2f} | in iou {qi:.2f} score {si:.2f}")
