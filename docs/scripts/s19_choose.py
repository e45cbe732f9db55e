"""Session 19: choosing between the defender's output on the input (D) and on the consensus
filter's output (K>D) by agreement with the input prompts (no ground truth).

    python docs/scripts/s19_choose.py DEF_RUN OUT.json [--scenes 20] [--domains train,texture,alt,thin]

Agreement of a mask with a prompt set: the number of positives inside it plus negatives
outside it. ``A``: the output whose mask agrees with more input prompts (ties: D).
"""
import argparse, json, sys
import numpy as np
import torch

sys.path.insert(0, "docs/scripts")
from s19_consensus import consensus
from ppd.agents.baselines import mask_agreement
from ppd.agents.defender import PromptDefender
from ppd.bench.defense import bench_sets
from ppd.metrics import iou


def agreement(mask, coords, labels):
    return int(mask_agreement(np.asarray(mask)[None], coords, labels).sum())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run"); ap.add_argument("out")
    ap.add_argument("--scenes", type=int, default=20); ap.add_argument("--domains", default="train,texture,alt,thin")
    a = ap.parse_args()
    torch.set_num_threads(1)
    d = PromptDefender.load(a.run)
    seg = d.segmenter
    res = {}
    for domain in a.domains.split(","):
        sets = bench_sets(d, a.run, domain, a.scenes)
        for kind, lst in sets.items():
            acc = {}
            for rec, obj, coords, labels in lst:
                gt, img, emb = rec.scene.masks[obj], rec.scene.image, rec.embedding
                rd = d.refine(img, coords, labels)
                ok, ll = consensus(seg, emb, coords, labels)
                rk = d.refine(img, coords[ok], ll[ok])
                ad, ak = agreement(rd.mask, coords, labels), agreement(rk.mask, coords, labels)
                pick = rk if ak > ad else rd
                for k, r in (("D", rd), ("K>D", rk), ("A", pick)):
                    acc.setdefault(k, []).append(float(iou(r.mask, gt)))
                acc.setdefault("picked_K>D", []).append(float(ak > ad))
            res[f"{domain}/{kind}"] = acc
            print(f"{domain}/{kind}", " ".join(f"{k}={np.mean(v):.3f}" for k, v in acc.items()), flush=True)
    json.dump(res, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
