"""Remove or relabel the flagged prompts, per run, per set, or fixed: which choice of the
wrong-label filter's action scores best on scenes the run never saw?

The label filter's selection (agents/label_filter.py) picks one action for a run. On its
selection scenes removal wins on attacked sets and relabelling on coarse ones. This
script compares, on held-out scenes the run never saw (neither training, selection nor
evaluation seeds), the defender's greedy output (select="score") after each fixed
candidate and after two per-set choices that read no ground truth:

- ``best@t``: of the rollouts from ``remove@t`` and ``relabel@t``, the one whose output
  has the higher predicted IoU;
- ``best+off@t``: the same over ``off``, ``remove@t`` and ``relabel@t``;

and two hybrids by the filter's confidence: ``relabel>0.7,remove>0.5`` flips the prompts
above 0.7 and removes those between 0.5 and 0.7; ``remove>0.7,relabel>0.5`` the reverse.

    python docs/experiments/label_filter_action_choice.py RUN [RUN ...] --scenes 64 --out FILE.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from ppd.agents.defender import load_agent
from ppd.agents.label_filter import apply_filter, load_label_filter, node_probabilities, scene_starts
from ppd.agents.train import TrainConfig, greedy_rollout
from ppd.config import load_config_file
from ppd.data.scenes import TRAIN_DOMAIN, ProceduralScenes
from ppd.envs.world import PromptWorld
from ppd.segmenter import load_segmenter

SEED_OFFSET = 950_000  # not DATA (700k), SELECT (800k) or the eval seeds
CANDS = [("remove", 1.0), ("remove", 0.5), ("relabel", 0.5), ("remove", 0.7), ("relabel", 0.7),
         ("relabel>0.7,remove", 0.5), ("remove>0.7,relabel", 0.5)]


def filtered(st, p, c):
    """``st`` after candidate ``c``: a plain (action, threshold), or a hybrid whose
    first action acts above 0.7 and second between the threshold and 0.7."""
    if ">" not in c[0]:
        return apply_filter(st, p, c[1], c[0])
    hi, lo = c[0].split(">0.7,")
    return apply_filter(apply_filter(st, p, 0.7, hi), np.where(p > 0.7, 0.0, p), c[1], lo)
KINDS = ("ideal", "attacked", "coarse", "coarse_random")


def name(c):
    if ">" in c[0]:
        return f"{c[0]}>{c[1]:g}"
    return "off" if c[1] >= 1.0 else f"{c[0]}@{c[1]:g}"


def run_one(run: Path, n_scenes: int, seg, cands=CANDS) -> dict:
    raw = load_config_file(run / "config.yaml")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in raw.items() if k in fields})
    defender, _, _ = load_agent(run, "defender.zip", device="cpu")
    attacker, _, _ = load_agent(run, "attacker.zip", device="cpu")
    filt, meta = load_label_filter(run, "cpu")
    world = PromptWorld(seg, ProceduralScenes(TRAIN_DOMAIN, n_scenes, seed=cfg.seed * 1_000_000 + SEED_OFFSET),
                        grid=cfg.grid or None, k_physical=cfg.k_physical, k_semantic=cfg.k_semantic)
    starts, kinds = scene_starts(world, attacker, cfg, np.random.default_rng([cfg.seed, SEED_OFFSET]))
    prob = node_probabilities(filt, world, starts, cfg.defender_max_steps)
    runs, index = [], {}
    for i, (rec, obj, st, pts) in enumerate(starts):
        for c in cands:
            fs = filtered(st, prob[i], c)
            key = (i, fs.tobytes())
            if key not in index:
                index[key] = len(runs)
                runs.append((rec, obj, fs, pts))
            index[(i, c)] = index[key]
    res = greedy_rollout(defender, world, "defender", runs, cfg.defender_max_steps, cfg.relabel)
    table = {}
    for kind in KINDS:
        rows = [i for i, k in enumerate(kinds) if k == kind]
        t = {name(c): float(np.mean([res[index[(i, c)]]["score_quality"] for i in rows])) for c in cands}
        for th in (0.5, 0.7):
            for label, group in ((f"best@{th:g}", [("remove", th), ("relabel", th)]),
                                 (f"best+off@{th:g}", [("remove", 1.0), ("remove", th), ("relabel", th)])):
                if not set(group) <= set(cands):
                    continue
                picks = [max((res[index[(i, c)]] for c in group), key=lambda r: r["score"]) for i in rows]
                t[label] = float(np.mean([r["score_quality"] for r in picks]))
        table[kind] = t
    return {"selected": f"{meta['action']}@{meta['threshold']:g}", "scenes": n_scenes, "quality": table}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--scenes", type=int, default=40)
    p.add_argument("--out", required=True)
    p.add_argument("--cands", default=None, help="comma-separated candidate names (default: all)")
    args = p.parse_args()
    cands = CANDS if args.cands is None else [c for c in CANDS if name(c) in args.cands.split(",")]
    seg = load_segmenter(device="cpu")
    out = {}
    for run in args.runs:
        t0 = time.time()
        out[run] = r = run_one(Path(run), args.scenes, seg, cands)
        r["time_s"] = round(time.time() - t0, 1)
        cols = list(r["quality"]["coarse"])
        print(f"{run} (selected {r['selected']}, {r['time_s']} s)")
        print(f"{'kind':14s}" + "".join(f"{c:>13s}" for c in cols))
        for kind, t in r["quality"].items():
            print(f"{kind:14s}" + "".join(f"{t[c]:13.3f}" for c in cols))
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
