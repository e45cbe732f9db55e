"""How well does a run's wrong-label network find the attacker's wrong prompts?

    python docs/experiments/label_filter_detection.py DEF_RUN OUT.json ATT_RUN [ATT_RUN ...] [--scenes 20]

In-domain defense-bench scenes; per attacker: ROC AUC of the wrong-label probability for
wrong-label prompts (ground truth at the point), and IoU of simple no-GT rules on the
attacked set: drop every prompt with probability > t; drop prompts in order of falling
probability while SAM's predicted IoU rises (``pgreedy``).
"""
import argparse
import json

import numpy as np
import torch

from ppd.agents.defender import PromptDefender
from ppd.bench.defense_sets import DEFENSE_SEED, attack, bench_attacker, bench_items, defender_world
from ppd.data.scenes import ProceduralScenes
from ppd.envs.world import prompts_from_state
from ppd.metrics import iou, uncertainty_auroc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run"); ap.add_argument("out"); ap.add_argument("attackers", nargs="+")
    ap.add_argument("--scenes", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(1)
    d = PromptDefender.load(a.run)
    seg = d.segmenter
    world = defender_world(d, ProceduralScenes("train", a.scenes, seed=DEFENSE_SEED))
    items = [it[:4] for it in bench_items(world, d.config, a.scenes)]
    res = {}
    for att in a.attackers:
        rolled = attack(bench_attacker(a.run, att, d, None), world, d.config, items)
        P, Y, rows = [], [], {}
        for (rec, obj, *_), r in zip(items, rolled):
            gt = rec.scene.masks[obj]
            coords, labels = prompts_from_state(r["state"], r["points"])
            xy = np.clip(np.round(coords).astype(int), 0, np.array(gt.shape[::-1]) - 1)
            wrong = gt[xy[:, 1], xy[:, 0]] != labels.astype(bool)
            p = d.wrong_label_probability(rec.scene.image, coords, labels)
            P.append(p); Y.append(wrong)
            for t in (0.3, 0.5, 0.7, 0.9):
                keep = p <= t
                if not keep.any():
                    keep[np.argmin(p)] = True
                rows.setdefault(f"drop>{t}", []).append(float(iou(seg.predict(rec.embedding, coords[keep], labels[keep]).masks[0], gt)))
            # drop by falling probability while SAM's score rises
            keep = np.ones(len(p), bool)
            score = float(seg.predict(rec.embedding, coords, labels).scores[0])
            for k in np.argsort(-p):
                if keep.sum() == 1:
                    break
                trial = keep.copy(); trial[k] = False
                s = float(seg.predict(rec.embedding, coords[trial], labels[trial]).scores[0])
                if s > score:
                    keep, score = trial, s
            rows.setdefault("pgreedy", []).append(float(iou(seg.predict(rec.embedding, coords[keep], labels[keep]).masks[0], gt)))
            rows.setdefault("n_wrong", []).append(int(wrong.sum())); rows.setdefault("n", []).append(len(p))
        P, Y = np.concatenate(P), np.concatenate(Y)
        name = att.rstrip("/").split("/")[-1]
        res[name] = {"auc": uncertainty_auroc(P, Y), **{k: float(np.mean(v)) for k, v in rows.items()}}
        print(name, json.dumps({k: round(v, 3) for k, v in res[name].items()}), flush=True)
    json.dump(res, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
