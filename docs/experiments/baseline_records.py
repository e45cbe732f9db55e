"""Can a rule without ground truth pick, per set, between the defender and a no-learning
baseline? Per-set records of the default refiner and the baselines.

    python docs/experiments/baseline_records.py DEF_RUN OUT.json [--generators] [--attackers ATT ...]
        [--scenes N] [--domains train,texture,...]

Per prompt set (the generator bench's sets with ``--generators``, kind ``gen:NAME``; else
the defense bench's coarse sets on every domain and each attacker's sets on the training
domain): ``n``, ``pos``, the consensus vote (``count`` input clicks agree with the winning
one-click mask, ``ndrop`` disagree), and for each candidate output -- ``in`` (the input),
``ppd`` (``PromptDefender.refine`` with the library defaults), ``nf`` (the same without the
run's label filter), ``greedy`` (``GreedyScoreFilter``) and ``mc`` (``MaskConsensusFilter``)
-- its IoU against ground truth (``iou_X``), SAM's predicted IoU (``score_X``), how many
input clicks its mask agrees with (``agree_X``) and how many input clicks it keeps
(``kept_X``). Ground truth is used only to score.
"""
import json
import numpy as np

from common import record_args, record_sets
from ppd.agents.baselines import GreedyScoreFilter, MaskConsensusFilter, mask_agreement
from ppd.agents.defender import PromptDefender
from ppd.metrics import iou


def main():
    a = record_args(scenes=30)
    d = PromptDefender.load(a.run)
    nf = PromptDefender.load(a.run, use_filter=False) if d.label_filter is not None else d
    seg = d.segmenter
    refiners = {"ppd": d, "nf": nf, "greedy": GreedyScoreFilter(seg), "mc": MaskConsensusFilter(seg)}
    rows = []
    for domain in a.domains.split(","):
        sets = record_sets(d, a, domain)
        for kind, lst in sets.items():
            for img, gt, coords, labels in lst:
                emb = d.record(img).embedding
                pin = seg.predict(emb, coords, labels)
                order, count = MaskConsensusFilter(seg).votes([emb], [coords], [labels])[0]
                row = dict(domain=domain, kind=kind, n=len(coords), pos=int(labels.sum()), count=int(count), ndrop=len(order),
                           iou_in=float(iou(pin.masks[0], gt)), score_in=float(pin.scores[0]), kept_in=len(coords),
                           agree_in=int(mask_agreement(pin.masks[:1], coords, labels).sum()))
                for name, ref in refiners.items():
                    r = ref.refine(img, coords, labels)
                    row.update({f"iou_{name}": float(iou(r.mask, gt)), f"score_{name}": float(r.score),
                                f"agree_{name}": int(mask_agreement(r.mask[None], coords, labels).sum()),
                                f"kept_{name}": int(np.sum(r.kept)), f"steps_{name}": int(r.steps)})
                rows.append(row)
            sub = [r for r in rows if r["domain"] == domain and r["kind"] == kind]
            print(f"{domain}/{kind}: n={len(sub)} " + " ".join(
                f"{k}={np.mean([r['iou_' + k] for r in sub]):.3f}" for k in ("in", *refiners)), flush=True)
    json.dump(rows, open(a.out, "w"), indent=0)


if __name__ == "__main__":
    main()
