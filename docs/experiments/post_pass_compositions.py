"""Does a no-ground-truth post-pass, or a choice by SAM's score, add to the defender?
(The origin of ``polish``: D>G below.)

    python docs/experiments/post_pass_compositions.py DEF_RUN OUT.json ATT_RUN [ATT_RUN ...] [--scenes 20] [--domains train,...]

On the defense bench's scenes (ppd.bench.defense_sets.bench_items), for each attacker's
attacked sets and for the coarse sets, IoU of: D (the defender), G (GreedyScoreFilter),
C (ConsistencyFilter), D>G (G on D's output), G>D, C>D, D>C, and best-of by SAM's
predicted IoU among {D, G, D>G} and {D, G, C, D>G, C>D}.
"""
import argparse
import json

import numpy as np
import torch

from ppd.agents.baselines import ConsistencyFilter, GreedyScoreFilter
from ppd.agents.defender import PromptDefender
from ppd.bench.defense_sets import bench_sets
from ppd.metrics import iou


def variants(d, g, c, image, coords, labels):
    out = {}
    rd = d.refine(image, coords, labels); out["D"] = rd
    rg = g.refine(image, coords, labels); out["G"] = rg
    rc = c.refine(image, coords, labels); out["C"] = rc
    out["D>G"] = g.refine(image, rd.point_coords, rd.point_labels)
    out["G>D"] = d.refine(image, rg.point_coords, rg.point_labels)
    out["C>D"] = d.refine(image, rc.point_coords, rc.point_labels)
    out["D>C"] = c.refine(image, rd.point_coords, rd.point_labels)
    out["C>D>G"] = g.refine(image, out["C>D"].point_coords, out["C>D"].point_labels)
    out["G>D>G"] = g.refine(image, out["G>D"].point_coords, out["G>D"].point_labels)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("run"); p.add_argument("out"); p.add_argument("attackers", nargs="+")
    p.add_argument("--scenes", type=int, default=20); p.add_argument("--domains", default="train")
    a = p.parse_args()
    torch.set_num_threads(1)
    d = PromptDefender.load(a.run)
    g, c = GreedyScoreFilter(d.segmenter), ConsistencyFilter(d.segmenter)
    res = {}
    for domain in a.domains.split(","):
        sets = bench_sets(d, a.run, domain, a.scenes, tuple(a.attackers))
        for kind, lst in sets.items():
            acc = {}
            for rec, obj, coords, labels in lst:
                gt = rec.scene.masks[obj]
                for k, r in variants(d, g, c, rec.scene.image, coords, labels).items():
                    acc.setdefault(k, []).append((float(iou(r.mask, gt)), float(r.score), len(r.point_labels)))
            res[f"{domain}/{kind}"] = acc
            print(f"{domain}/{kind}", " ".join(f"{k}={np.mean([x[0] for x in v]):.3f}" for k, v in acc.items()), flush=True)
    json.dump(res, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
