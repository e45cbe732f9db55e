"""Does the score guard need its agreement test? Per-set records on a run's own
``ppd train`` evaluation sets, and a replay of the guard on them.

    python docs/experiments/train_eval_records.py RUN OUT.json     # one run
    python docs/experiments/train_eval_records.py --grid OUT1.json OUT2.json ...   # replay guards

The eval sets are ``ppd train``'s (48 in-domain scenes; the attacker's sets and the
coarse sets, rebuilt from the run's config, attacker and defender). Per set: the input's
and ``PromptDefender.refine``'s output (guard off) IoU, SAM score and agreement with the
input clicks, and the output's step count. ``--grid`` replays the guard with tolerance g
(and with the agreement test) on these records: mean IoU per run, attacked / coarse.
"""
import json
import sys

import numpy as np
import torch

from common import eval_sets
from ppd.agents.baselines import mask_agreement
from ppd.agents.defender import PromptDefender
from ppd.envs.world import prompts_from_state
from ppd.segmenter import load_segmenter


def grid(files):
    def out(r, g, agree):
        if (g is not None and r["steps"] > 0 and r["score_out"] < r["score_in"] + g
                and (not agree or r["agree_out"] <= r["agree_in"])):
            return r["iou_in"]
        return r["iou_out"]
    print("rule".ljust(20), " ".join(f.split("/")[-1][:-5].rjust(13) for f in files), "  mean")
    for g, agree in [(None, False)] + [(g, a) for g in (0.0, -0.05, -0.1, -0.2) for a in (False, True)]:
        cells, vals = [], []
        for f in files:
            d = json.load(open(f))
            a, c = (np.mean([out(r, g, agree) for r in d if r["kind"] == k]) for k in ("attacked", "coarse"))
            cells.append(f"{a:.3f}/{c:.3f}")
            vals += [a, c]
        print(f"g={g}{' agree' if agree else ''}".ljust(20), " ".join(x.rjust(13) for x in cells), f"  {np.mean(vals):.4f}")


def records(run, outf):
    seg = load_segmenter()
    ew, ro = eval_sets(run, seg)
    d = PromptDefender.load(run, segmenter=seg, min_score_gain=None)
    rows = []
    for part in ("attacked", "coarse"):
        sets = ro[part]
        cl = [prompts_from_state(st, pts) for _, _, st, pts in sets]
        res = d.refine_many([rec.scene.image for rec, *_ in sets], [c for c, _ in cl], [l for _, l in cl])
        for (rec, obj, *_), r, (c, l) in zip(sets, res, cl):
            gt = rec.scene.masks[obj]
            pin = seg.predict(rec.scene.image, c, l)
            rows.append(dict(kind=part, n=len(l), steps=int(r.steps), iou_out=float(ew.quality_fn(r.mask, gt)), score_out=float(r.score),
                             agree_out=int(mask_agreement(r.mask[None], c, l).sum()), iou_in=float(ew.quality_fn(pin.masks[0], gt)),
                             score_in=float(pin.scores[0]), agree_in=int(mask_agreement(pin.masks[:1], c, l).sum())))
    json.dump(rows, open(outf, "w"))
    for part in ("attacked", "coarse"):
        rs = [r for r in rows if r["kind"] == part]
        print(run, part, "in %.3f out %.3f" % (np.mean([r["iou_in"] for r in rs]), np.mean([r["iou_out"] for r in rs])))


if __name__ == "__main__":
    torch.set_num_threads(1)
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    if sys.argv[1] == "--grid":
        grid(sys.argv[2:])
    else:
        records(sys.argv[1], sys.argv[2])
