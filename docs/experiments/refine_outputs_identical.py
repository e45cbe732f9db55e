"""Does a code change keep refinement's outputs bit-identical?

    ppd train --out RUN --rounds 1 --attacker-steps 1200 --defender-steps 300 --scenes 24 \
        --eval-scenes 8 --filter-scenes 40 --learning-starts 100
    python docs/experiments/refine_outputs_identical.py --run RUN --save before.npz
    python docs/experiments/refine_outputs_identical.py --run RUN --compare before.npz

The fixed sets are those of the defense record scripts (``ppd.bench.defense_sets``): on the ``train``,
``texture`` and ``thin`` domains, per held-out scene the coarse prompt set and the set the
attacker of ``RUN`` (a small ``ppd train`` run: the bundled run ships no attacker) leaves
after acting greedily on the ideal prompts. Each set is refined by the bundled defender
(default options, its other output rule, and without its label filter), by ``RUN``'s
defender and by ``GreedyScoreFilter``; the refined points, labels, kept flags, masks,
scores and step counts are saved, or compared exactly with a saved file.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources

import numpy as np
import torch

from ppd.agents.baselines import GreedyScoreFilter
from ppd.agents.defender import PromptDefender
from ppd.bench import defender_variant
from ppd.bench.defense_sets import (
    DEFENSE_SEED, attack, bench_attacker, bench_items, defender_world, other_rule,
)
from ppd.data.scenes import ProceduralScenes
from ppd.envs.world import prompts_from_state

DOMAINS = ("train", "texture", "thin")


def refine_outputs(run_dir: str, n_scenes: int) -> dict[str, np.ndarray]:
    run = str(resources.files("ppd") / "assets" / "defender")
    defender = PromptDefender.load(run)
    refiners = {
        "ppd": defender,
        "ppd_other": defender_variant(defender, select=other_rule(defender.select)),
        "ppd_nofilter": defender_variant(defender, label_filter=None),
        "run": PromptDefender.load(run_dir),
        "greedy": GreedyScoreFilter(defender.segmenter),
    }
    attacker = bench_attacker(run_dir, None, defender, None)
    out: dict[str, np.ndarray] = {}
    for domain in DOMAINS:
        world = defender_world(defender, ProceduralScenes(domain, n_scenes, seed=DEFENSE_SEED))
        items = bench_items(world, defender.run_config, n_scenes, 0)
        attacked = attack(attacker, world, defender.run_config, [it[:4] for it in items])
        for i, (it, att) in enumerate(zip(items, attacked)):
            image = it[0].scene.image
            sets = {"coarse": (it[4].point_coords, it[4].point_labels),
                    "attacked": prompts_from_state(att["state"], att["points"])}
            for set_name, (coords, labels) in sets.items():
                for name, refiner in refiners.items():
                    res = refiner.refine(image, coords, labels)
                    key = f"{domain}/{i}/{set_name}/{name}"
                    out[key + "/coords"] = np.asarray(res.point_coords)
                    out[key + "/labels"] = np.asarray(res.point_labels)
                    out[key + "/kept"] = np.asarray(res.kept)
                    out[key + "/mask"] = np.packbits(np.asarray(res.mask))
                    out[key + "/score_steps"] = np.asarray([res.score, res.steps], np.float64)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--save", metavar="FILE.npz")
    g.add_argument("--compare", metavar="FILE.npz")
    p.add_argument("--run", required=True, help="a ppd train run folder with attacker.zip")
    p.add_argument("--scenes", type=int, default=12, help="held-out scenes per domain (default: 12)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = refine_outputs(args.run, args.scenes)
    if args.save:
        np.savez_compressed(args.save, **out)
        print(f"saved {len(out)} arrays to {args.save}")
        return 0
    ref = np.load(args.compare)
    differ = sorted(k for k in set(ref.files) | set(out) if k not in ref.files or k not in out
                    or ref[k].shape != out[k].shape or not np.array_equal(ref[k], out[k]))
    sets = {k.rsplit("/", 1)[0] for k in out}
    print(f"{len(sets)} refined sets, {len(out)} arrays: {len(differ)} differ")
    for k in differ[:20]:
        print("  differs:", k)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
