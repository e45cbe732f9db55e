"""Session 19: the wrong-label network used step by step instead of once.

    python docs/scripts/s19_iterative.py DEF_RUN OUT.json [--attackers ATT_RUN ...] [--scenes 20] [--domains train,...]

On the defense bench's scenes (ppd.bench.defense.bench_items), for the attacked sets of each
attacker (default: the run's own) and for the coarse sets of each domain, IoU of:
- ``D``: ``refine`` as shipped (one-shot filter, then the defender's rollout);
- ``I@t``: iterative filter: read the wrong-label probabilities of the current state, remove
  the most probable wrong prompt if its probability exceeds t, re-read, repeat (the last
  prompt and the last positive stay; at most the defender's budget of steps);
- ``I@t>R``: the defender's rollout (filter off) from ``I@t``'s output;
- ``IR@t``: as ``I@t``, but a prompt above 0.9 that was not relabelled yet is relabelled, not
  removed.
No ground truth is used by any of them; the ground truth only scores.
"""
import argparse, json
import numpy as np
import torch

from ppd.agents.defender import PromptDefender
from ppd.bench import defender_variant
from ppd.bench.defense import DEFENSE_SEED, attack, bench_attacker, bench_items, defender_world, state_iou
from ppd.data.scenes import ProceduralScenes
from ppd.envs.world import INACTIVE, NEGATIVE, POSITIVE, prompts_from_state, state_from_prompts


def iterative(d, items, t, budget, relabel_above=None):
    """items: [(rec, st, pts)] -> output states."""
    states = [st.copy() for _, st, _ in items]
    flipped = [np.zeros_like(st, bool) for st in states]
    running = list(range(len(items)))
    for _ in range(budget):
        if not running:
            break
        prob = d._node_probabilities([(items[i][0], states[i], items[i][2]) for i in running])
        nxt = []
        for i, p in zip(running, prob):
            st = states[i]
            active = st != INACTIVE
            cand = active.copy()
            if active.sum() <= 1:
                continue
            pos = st == POSITIVE
            if pos.sum() == 1:
                cand &= ~pos  # the last positive stays
            if relabel_above is None:
                cand &= True
            if not cand.any():
                continue
            k = int(np.flatnonzero(cand)[np.argmax(p[cand])])
            if p[k] <= t:
                continue
            if relabel_above is not None and p[k] > relabel_above and not flipped[i][k]:
                st[k] = NEGATIVE if st[k] == POSITIVE else POSITIVE
                flipped[i][k] = True
            else:
                st[k] = INACTIVE
            nxt.append(i)
        running = nxt
    return states


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run"); ap.add_argument("out")
    ap.add_argument("--attackers", nargs="*", default=None)
    ap.add_argument("--scenes", type=int, default=20); ap.add_argument("--domains", default="train")
    ap.add_argument("--thresholds", default="0.3,0.5,0.7")
    a = ap.parse_args()
    torch.set_num_threads(1)
    d = PromptDefender.load(a.run)
    plain = defender_variant(d, label_filter=None)
    seg, cfg = d.segmenter, d.config
    ts = [float(x) for x in a.thresholds.split(",")]
    res = {}
    for domain in a.domains.split(","):
        world = defender_world(d, ProceduralScenes(domain, a.scenes, seed=DEFENSE_SEED))
        items = bench_items(world, cfg, a.scenes)
        sets = {"coarse": [(it[0], it[1], *state_from_prompts(it[4].point_coords, it[4].point_labels,
                                                              it[0].grid, it[0].hw, it[0].centres)[:2]) for it in items]}
        if domain == "train":
            for att in (a.attackers or [None]):
                rolled = attack(bench_attacker(a.run, att, d, None), world, cfg, [it[:4] for it in items])
                name = "own" if att is None else att.rstrip("/").split("/")[-1]
                sets[f"att:{name}"] = [(it[0], it[1], r["state"], r["points"]) for it, r in zip(items, rolled)]
        for kind, lst in sets.items():
            # the defender's own records of the same images (same graphs): its world decodes
            gts = [rec.scene.masks[obj] for rec, obj, _, _ in lst]
            images = [rec.scene.image for rec, *_ in lst]
            lst = [(d.record(rec.scene.image), obj, st, pts) for rec, obj, st, pts in lst]
            acc = {}
            score = lambda sts: [state_iou(seg, rec, st, pts, gt) for (rec, _, _, pts), st, gt in zip(lst, sts, gts)]
            acc["in"] = score([st for _, _, st, _ in lst])
            pr = [prompts_from_state(st, pts) for _, _, st, pts in lst]
            rr = d.refine_many(images, [c for c, _ in pr], [l for _, l in pr])
            from ppd.metrics import iou
            acc["D"] = [float(iou(r.mask, gt)) for r, gt in zip(rr, gts)]
            budgets = [d.default_steps(int((st != INACTIVE).sum())) for _, _, st, _ in lst]
            budget = max(budgets)
            for t in ts:
                sts = iterative(d, [(rec, st, pts) for rec, _, st, pts in lst], t, budget)
                acc[f"I@{t:g}"] = score(sts)
                out = plain.refine_states([(rec, st, pts, b) for (rec, _, _, pts), st, b in zip(lst, sts, budgets)])
                acc[f"I@{t:g}>R"] = score([o[0] for o in out])
                sts = iterative(d, [(rec, st, pts) for rec, _, st, pts in lst], t, budget, relabel_above=0.9)
                acc[f"IR@{t:g}"] = score(sts)
            res[f"{domain}/{kind}"] = acc
            print(f"{domain}/{kind}", " ".join(f"{k}={np.mean(v):.3f}" for k, v in acc.items()), flush=True)
    json.dump(res, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
