"""What do the input checks of refine see on each prompt set? Per-set records from which
the consensus check's quorum, the keep-consistent rule and the score guard were chosen
offline (``score_guard_grid.py`` replays them).

    python docs/experiments/consensus_records.py DEF_RUN OUT.json [--attackers ATT ...] [--scenes 20]
        [--domains train,texture,alt,thin,clutter,lowcontrast] [--generators]

``--generators``: the prompt-generator bench's sets (``ppd.bench.generators``, kind
``gen:NAME``) instead of the defense bench's.

Per set (the bench's coarse sets on every domain, and each attacker's sets on the
training domain): ``n`` prompts, ``pos`` positives, ``count`` (input prompts that agree with
the winning one-click hypothesis, ``MaskConsensusFilter.votes``), ``ndrop`` (prompts that
disagree with it), ``agree_in``/``agree_D``/``agree_K`` (input prompts that agree with the
input's own mask, with the defender's output mask, and with the mask of the defender's
output on the input without the disagreeing prompts), ``agree_K0`` (SAM's mask of that
reduced input itself), the IoUs ``in``/``D``/``K``/``K0`` against ground truth, SAM's scores
``score_in``/``score_D``/``score_K``/``score_K0``, ``pwrong`` (the label filter's mean
wrong-label probability over the input prompts) and ``iou_DC`` (the IoU of the defender's
output mask with the consensus mask). The defender runs with every input and output check
off (its label filter and rollout only); ``K`` is what the consensus check would compute. Ground truth is used only to score.
"""
import json

import numpy as np

from common import agreement, record_args, record_sets
from ppd.agents.baselines import MaskConsensusFilter
from ppd.agents.defender import PromptDefender
from ppd.metrics import iou


def main():
    a = record_args()
    # D: the label filter and the rollout only; the replay scripts apply the checks themselves
    d = PromptDefender.load(a.run, consensus=False, keep_consistent=False, min_score_gain=None)
    seg = d.segmenter
    mc = MaskConsensusFilter(seg)
    rows = []
    for domain in a.domains.split(","):
        sets = record_sets(d, a, domain)
        for kind, lst in sets.items():
            for img, gt, coords, labels in lst:
                emb = d.record(img).embedding
                pin = seg.predict(emb, coords, labels)
                rd = d.refine(img, coords, labels)
                order, count, cmask = mc.votes([emb], [coords], [labels], with_masks=True)[0]
                row = dict(domain=domain, kind=kind, n=len(coords), pos=int(labels.sum()), count=count,
                           ndrop=len(order), agree_in=agreement(pin.masks[0], coords, labels),
                           agree_D=agreement(rd.mask, coords, labels), score_D=rd.score, score_in=float(pin.scores[0]),
                           pwrong=float(d.wrong_label_probability(img, coords, labels).mean()),
                           iou_DC=None if cmask is None else float(iou(rd.mask, cmask)),
                           **{"in": float(iou(pin.masks[0], gt))}, D=float(iou(rd.mask, gt)))
                if 0 < len(order) < len(coords):
                    keep = np.ones(len(coords), bool)
                    keep[order] = False
                    rk = d.refine(img, coords[keep], labels[keep])
                    row.update(K=float(iou(rk.mask, gt)), agree_K=agreement(rk.mask, coords, labels), score_K=rk.score)
                    pk = seg.predict(emb, coords[keep], labels[keep])  # the consensus filter's own output
                    row.update(K0=float(iou(pk.masks[0], gt)), agree_K0=agreement(pk.masks[0], coords, labels),
                               score_K0=float(pk.scores[0]))
                rows.append(row)
            sub = [r for r in rows if r["domain"] == domain and r["kind"] == kind]
            print(f"{domain}/{kind}: n={len(sub)} D={np.mean([r['D'] for r in sub]):.3f}", flush=True)
    json.dump(rows, open(a.out, "w"), indent=0)


if __name__ == "__main__":
    main()
