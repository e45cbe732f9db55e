"""Session 20: what the consensus check sees on each prompt set, to choose a more
selective trigger for it.

    python docs/scripts/s20_trigger.py DEF_RUN OUT.json [--attackers ATT ...] [--scenes 20]
        [--domains train,texture,alt,thin,clutter,lowcontrast] [--generators]

``--generators``: the prompt-generator bench's sets (``ppd.bench.generators``, kind
``gen:NAME``) instead of the defense bench's.

Per set (the bench's coarse sets on every domain, and each attacker's sets on the
training domain): ``n`` prompts, ``pos`` positives, ``count`` (input prompts that agree with
the winning one-click hypothesis, ``MaskConsensusFilter.vote``), ``agree_in``/``agree_D``/
``agree_K`` (input prompts that agree with the input's own mask, the defender's output mask
the mask of the defender's output on the input without the disagreeing prompts, and
``agree_K0`` SAM's mask of that reduced input itself), the IoUs ``in``/``D``/``K``/``K0``
against ground truth, SAM's scores of D and K, and ``pwrong``,
the label filter's mean wrong-label probability over the input prompts, and ``iou_DC``, the
IoU of the defender's output mask with the consensus mask. The defender is
run with ``consensus`` off; ``K`` is what the check would compute. No ground truth is used
except to score.
"""
import argparse, json
import numpy as np
import torch

from ppd.agents.baselines import MaskConsensusFilter, mask_agreement
from ppd.agents.defender import PromptDefender
from ppd.bench import run_max_ideal_points
from ppd.bench.defense import bench_sets
from ppd.bench.generators import GENERATOR_SEED, GENERATORS, generator_prompts
from ppd.data.scenes import ProceduralScenes
from ppd.metrics import iou


def agreement(mask, coords, labels) -> int:
    return int(mask_agreement(np.asarray(mask)[None], coords, labels).sum())


def generator_sets(d, domain, n_scenes):
    """``{"gen:NAME": [(image, gt, coords, labels)]}``: the generator bench's sets."""
    out = {}
    scenes = ProceduralScenes(domain, n_scenes, seed=GENERATOR_SEED)
    for i in range(n_scenes):
        scene = scenes[i]
        for g in GENERATORS:
            rng = np.random.default_rng([GENERATOR_SEED, 0, i])
            obj = int(rng.integers(scene.num_objects))
            ps = generator_prompts(g, scene.masks[obj], rng, run_max_ideal_points(d.config))
            out.setdefault(f"gen:{g}", []).append((scene.image, scene.masks[obj], ps.point_coords, ps.point_labels))
    return out


def as_items(sets):
    return {k: [(rec.scene.image, rec.scene.masks[obj], c, l) for rec, obj, c, l in v] for k, v in sets.items()}


def record_args(scenes: int = 20):
    """The options of the per-set record scripts (``RUN OUT [--attackers ...] [--scenes N]
    [--domains ...] [--generators]``), parsed, with one torch thread set."""
    ap = argparse.ArgumentParser()
    ap.add_argument("run"); ap.add_argument("out")
    ap.add_argument("--attackers", nargs="*", default=None)
    ap.add_argument("--scenes", type=int, default=scenes)
    ap.add_argument("--domains", default="train,texture,alt,thin,clutter,lowcontrast")
    ap.add_argument("--generators", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    return a


def main():
    a = record_args()
    d = PromptDefender.load(a.run, consensus=False)
    seg = d.segmenter
    mc = MaskConsensusFilter(seg)
    rows = []
    for domain in a.domains.split(","):
        sets = generator_sets(d, domain, a.scenes) if a.generators else as_items(bench_sets(d, a.run, domain, a.scenes, tuple(a.attackers or [None])))
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
