"""Does a consensus of SAM's own one-click masks (RANSAC over the input clicks) find the
wrong clicks the defender misses? The consensus filter alone and with the defender.

    python docs/experiments/consensus_filter_compare.py DEF_RUN OUT.json [--attackers ATT_RUN ...] [--scenes 20] [--domains train,...]

Hypotheses: the three multimask outputs of every positive point alone. A prompt agrees with
a hypothesis mask when a positive lies inside it or a negative outside. The hypothesis with
the most agreeing prompts wins (ties: SAM's predicted IoU); the prompts that disagree with
it are removed (``K``), or relabelled (``KR``). ``K>D``: the defender on K's output;
``D>K``: K on the defender's output. Also D, G (GreedyScoreFilter) and C
(ConsistencyFilter). No ground truth except to score.
"""
import argparse
import json

import numpy as np
import torch

from ppd.agents.baselines import ConsistencyFilter, GreedyScoreFilter, MaskConsensusFilter
from ppd.agents.defender import PromptDefender
from ppd.bench.defense_sets import bench_sets
from ppd.metrics import iou


def consensus(seg, emb, coords, labels, relabel=False):
    """ppd.MaskConsensusFilter's vote: (kept, labels); with ``relabel``, every point
    kept and the disagreeing ones flipped (``KR``)."""
    order, _ = MaskConsensusFilter(seg).vote(emb, coords, labels)
    ok = np.ones(len(coords), bool)
    ok[order] = False
    if relabel:
        return np.ones(len(coords), bool), np.where(ok, labels, 1 - labels)
    if not ok.any():
        ok[np.flatnonzero(labels == 1)[0]] = True
    return ok, labels.copy()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run"); ap.add_argument("out")
    ap.add_argument("--attackers", nargs="*", default=None)
    ap.add_argument("--scenes", type=int, default=20); ap.add_argument("--domains", default="train")
    a = ap.parse_args()
    torch.set_num_threads(1)
    d = PromptDefender.load(a.run)
    seg = d.segmenter
    g, c = GreedyScoreFilter(seg), ConsistencyFilter(seg)
    res = {}
    for domain in a.domains.split(","):
        sets = bench_sets(d, a.run, domain, a.scenes, tuple(a.attackers or [None]))
        for kind, lst in sets.items():
            acc = {}
            for rec, obj, coords, labels in lst:
                gt, img, emb = rec.scene.masks[obj], rec.scene.image, rec.embedding
                score = lambda cc, ll: float(iou(seg.predict(emb, cc, ll).masks[0], gt))
                out = {"in": score(coords, labels)}
                rd = d.refine(img, coords, labels)
                out["D"] = float(iou(rd.mask, gt))
                out["G"] = float(iou(g.refine(img, coords, labels).mask, gt))
                out["C"] = float(iou(c.refine(img, coords, labels).mask, gt))
                ok, ll = consensus(seg, emb, coords, labels)
                out["K"] = score(coords[ok], ll[ok])
                out["K>D"] = float(iou(d.refine(img, coords[ok], ll[ok]).mask, gt))
                out["K>G"] = float(iou(g.refine(img, coords[ok], ll[ok]).mask, gt))
                ok2, ll2 = consensus(seg, emb, rd.point_coords, rd.point_labels)
                out["D>K"] = score(rd.point_coords[ok2], ll2[ok2])
                _, llr = consensus(seg, emb, coords, labels, relabel=True)
                out["KR"] = score(coords, llr)
                for k, v in out.items():
                    acc.setdefault(k, []).append(v)
            res[f"{domain}/{kind}"] = acc
            print(f"{domain}/{kind}", " ".join(f"{k}={np.mean(v):.3f}" for k, v in acc.items()), flush=True)
    json.dump(res, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
