"""Session 16: what the defender's rollout does after the label filter, on attacked and coarse sets.

    python docs/scripts/s16_gate.py runs/ppd_q0h runs/ppd_q2h --scenes 40

For each run: 40 in-domain scenes from seed 20,000,000 (never trained or benched on),
the run's attacker on their ideal prompts, and a coarse set per scene. Both filter
actions at the run's threshold, then the greedy rollout (select="score") as refine
runs it, or with relabels off, or with relabels allowed only where the filter's
wrong-label probability on the input exceeds a gate (optionally also never flipping
back what the filter relabelled). Printed per variant: (mean IoU, wrong-label prompts
per set by the ground truth). A copy of PromptDefender.refine_states with those
switches, kept for the record (the library now has the gate: relabel_ok).
"""
import sys, json, argparse, numpy as np, torch
from ppd.agents.defender import PromptDefender, load_agent, greedy_actions
from ppd.agents.label_filter import apply_filter
from ppd.bench.defense import defender_world, ideal_start, attack, state_iou, oracle_state
from ppd.data.scenes import ProceduralScenes
from ppd.envs.point_prompt_env import label_targets, WRONG_LABEL, rollout_action_mask, defender_step
from ppd.envs.world import INACTIVE, state_from_prompts
from ppd.prompts import coarse_prompts
ap = argparse.ArgumentParser(); ap.add_argument("runs", nargs="+"); ap.add_argument("--scenes", type=int, default=40)
ap.add_argument("--seed", type=int, default=20_000_000); ap.add_argument("--domain", default="train"); ap.add_argument("--out")
a = ap.parse_args(); torch.set_num_threads(1)

def rollout(d, items, relabel=True, origins=None, gate=None):
    """copy of refine_states (select=score) with relabel switch and relabel-once counted from origins."""
    n = d.num_nodes
    states = [st.copy() for _, st, _, _ in items]
    outs = d.world.evaluate([(rec, -1, st, pts) for st, (rec, _, pts, _) in zip(states, items)], probe=d.probe)
    visited = [[(st, out)] for st, out in zip(states, outs)]
    best = [0] * len(items); running = list(range(len(items)))
    while running:
        acting, obs, masks = [], [], []
        for i in running:
            rec, start, pts, budget = items[i]
            steps = len(visited[i]) - 1
            if steps >= budget: continue
            st, out = visited[i][-1]
            mask = rollout_action_mask(st, start if origins is None else origins[i], relabel)
            if origins is not None:  # nodes the filter relabelled: not again
                mask[n:2 * n] &= st == start
            if gate is not None: mask[n:2 * n] &= gate[i]
            if not mask[:-1].any(): continue
            env_steps = d.train_max_steps or budget or 1
            obs.append(d._observation(rec, st, pts, out, min(steps, env_steps), env_steps)); masks.append(mask); acting.append(i)
        if not acting: break
        batch = {k: np.stack([o[k] for o in obs]) for k in obs[0]}
        actions = greedy_actions(d.model, batch, np.stack(masks))
        moved = [(i, defender_step(visited[i][-1][0], int(a_))) for i, a_ in zip(acting, actions) if a_ != 2 * n]
        if not moved: break
        outs = d.world.evaluate([(items[i][0], -1, st, items[i][2]) for i, st in moved], probe=d.probe)
        for (i, st), out in zip(moved, outs):
            visited[i].append((st, out))
            if out.score > visited[i][best[i]][1].score: best[i] = len(visited[i]) - 1
        running = [i for i, _ in moved]
    return [v[b][0] for v, b in zip(visited, best)]

for run in a.runs:
    d = PromptDefender.load(run)
    att, cfg, _ = load_agent(run, "attacker.zip")
    seg = d.segmenter; lf = d.label_filter
    world = defender_world(d, ProceduralScenes(a.domain, a.scenes, seed=a.seed))
    items = []
    for i in range(a.scenes):
        rec = world.image(i); rng = np.random.default_rng([a.seed, 0, i]); obj = int(rng.integers(rec.scene.num_objects))
        st, pts = ideal_start(rec, obj, cfg)
        cp = coarse_prompts(rec.scene.masks[obj], rng).prompts
        cst, cpts, _ = state_from_prompts(cp.point_coords, cp.point_labels, rec.grid, rec.hw, rec.centres)
        items.append((rec, obj, st, pts, cst, cpts))
    attacked = attack(att, world, cfg, [it[:4] for it in items])
    budget = d.default_steps(8)
    for kind in ("attacked", "coarse"):
        starts = [(it[0], it[1], at["state"], at["points"]) if kind == "attacked" else (it[0], it[1], it[4], it[5]) for it, at in zip(items, attacked)]
        gts = [rec.scene.masks[obj] for rec, obj, _, _ in starts]
        prob = d._node_probabilities([(rec, s, p) for rec, _, s, p in starts])
        filt = {act: [apply_filter(s, pr, lf.threshold, act) for (_, _, s, _), pr in zip(starts, prob)] for act in ("remove", "relabel")}
        res = {}
        def score(name, sts):
            v = [state_iou(seg, rec, s, p, gt) for s, (rec, _, _, p), gt in zip(sts, starts, gts)]
            w = [int((label_targets(s, p, gt) == WRONG_LABEL).sum()) for s, (rec, _, _, p), gt in zip(sts, starts, gts)]
            res[name] = (round(float(np.mean(v)), 3), round(float(np.mean(w)), 2))
        for act in ("remove", "relabel"):
            f = filt[act]
            it_ = [(rec, s, p, budget) for s, (rec, _, _, p) in zip(f, starts)]
            score(f"{act}", f)
            out = rollout(d, it_); score(f"{act}+roll", out)
            score(f"{act}+roll_norelabel", rollout(d, it_, relabel=False))
            for tr in (0.2, 0.3, 0.5):
                score(f"{act}+roll_gate{tr}", rollout(d, it_, gate=[pr > tr for pr in prob]))
            for tr in (0.3, 0.5):
                score(f"{act}+roll_gate{tr}_origin", rollout(d, it_, gate=[pr > tr for pr in prob], origins=[s for _, _, s, _ in starts]))
        print(run, kind, f"sel {lf.action}@{lf.threshold}", res, flush=True)
