"""Helpers shared by the scripts in docs/experiments (not part of the package).

The scripts run as ``python docs/experiments/NAME.py``; Python puts this folder on the
module path, so they import this module as ``common``.

- :func:`timing_args` / :func:`timing_setup`: the options of the timing scripts and the
  defense bench's coarse sets of every domain;
- :func:`record_args`, :func:`generator_sets`, :func:`as_items`, :func:`agreement`: the
  per-set record scripts (what each refiner and check sees on each prompt set);
- :func:`eval_sets`: ``ppd train``'s own held-out evaluation sets of a run.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from ppd.agents.baselines import mask_agreement
from ppd.agents.defender import BUNDLED_DEFENDER, PromptDefender
from ppd.agents.dqn import MaskedDQN
from ppd.agents.label_filter import LabelFilter, load_label_filter
from ppd.agents.train import EVAL_SEED, TRAIN_DOMAIN, TrainConfig, evaluate_agents
from ppd.bench import run_max_ideal_points
from ppd.bench.defense_sets import bench_sets
from ppd.bench.generators import GENERATOR_SEED, GENERATORS, generator_prompts
from ppd.data.scenes import DOMAINS, ProceduralScenes
from ppd.envs import PromptWorld


def timing_args(description: str | None = None, extra=None) -> argparse.Namespace:
    """``--run --scenes --rounds --threads`` (and whatever ``extra(parser)`` adds),
    parsed, with the torch thread count applied."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--run", default=str(BUNDLED_DEFENDER), help="defender run folder (default: the bundled one)")
    ap.add_argument("--scenes", type=int, default=20, help="defense-bench scenes per domain")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    if extra is not None:
        extra(ap)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    return a


def timing_setup(description: str | None = None, extra=None):
    """``(options, defender of the run, sets)``: the sets are the defense bench's coarse
    sets of every domain as ``(domain, image, coords, labels)``."""
    a = timing_args(description, extra)
    base = PromptDefender.load(a.run)
    sets = [(dom, rec.scene.image, c, l) for dom in DOMAINS for rec, _, c, l in bench_sets(base, a.run, dom, a.scenes)["coarse"]]
    return a, base, sets


def agreement(mask, coords, labels) -> int:
    """Input clicks a mask agrees with: positives inside it plus negatives outside it."""
    return int(mask_agreement(np.asarray(mask)[None], coords, labels).sum())


def generator_sets(d: PromptDefender, domain: str, n_scenes: int) -> dict[str, list[tuple]]:
    """``{"gen:NAME": [(image, gt, coords, labels)]}``: the prompt-generator bench's sets
    (``ppd.bench.generators``) on ``domain``."""
    out: dict[str, list[tuple]] = {}
    scenes = ProceduralScenes(domain, n_scenes, seed=GENERATOR_SEED)
    for i in range(n_scenes):
        scene = scenes[i]
        for g in GENERATORS:
            rng = np.random.default_rng([GENERATOR_SEED, 0, i])
            obj = int(rng.integers(scene.num_objects))
            ps = generator_prompts(g, scene.masks[obj], rng, run_max_ideal_points(d.run_config))
            out.setdefault(f"gen:{g}", []).append((scene.image, scene.masks[obj], ps.point_coords, ps.point_labels))
    return out


def as_items(sets: dict[str, list[tuple]]) -> dict[str, list[tuple]]:
    """``bench_sets``'s ``(record, object, coords, labels)`` as ``(image, gt, coords, labels)``."""
    return {k: [(rec.scene.image, rec.scene.masks[obj], c, l) for rec, obj, c, l in v] for k, v in sets.items()}


def record_args(scenes: int = 20) -> argparse.Namespace:
    """The options of the per-set record scripts (``RUN OUT [--attackers ...] [--scenes N]
    [--domains ...] [--generators]``), parsed, with one torch thread set."""
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="defender run folder (ppd/assets/defender for the bundled one)")
    ap.add_argument("out", help="JSON file for the per-set records")
    ap.add_argument("--attackers", nargs="*", default=None, help="attacker run folders (default: the run's own)")
    ap.add_argument("--scenes", type=int, default=scenes)
    ap.add_argument("--domains", default="train,texture,alt,thin,clutter,lowcontrast")
    ap.add_argument("--generators", action="store_true", help="the prompt-generator bench's sets instead of the defense bench's")
    a = ap.parse_args()
    torch.set_num_threads(1)
    return a


def record_sets(d: PromptDefender, a: argparse.Namespace, domain: str) -> dict[str, list[tuple]]:
    """The sets of one domain for the record scripts: the generator bench's with
    ``--generators``, else the defense bench's (coarse, and each attacker's on ``train``)."""
    if a.generators:
        return generator_sets(d, domain, a.scenes)
    return as_items(bench_sets(d, a.run, domain, a.scenes, tuple(a.attackers or [None])))


def eval_sets(run, seg):
    """``(eval world, rollouts)``: ``ppd train``'s held-out evaluation sets of ``run`` (48
    in-domain scenes; its attacked and coarse sets), rebuilt from its config, attacker,
    defender and label filter."""
    cfg = TrainConfig.from_run(run)
    ew = PromptWorld(seg, ProceduralScenes(TRAIN_DOMAIN, cfg.eval_scenes, seed=EVAL_SEED), grid=cfg.grid,
                     k_physical=cfg.k_physical, k_semantic=cfg.k_semantic)
    att, de = MaskedDQN.load(f"{run}/attacker.zip"), MaskedDQN.load(f"{run}/defender.zip")
    loaded = load_label_filter(run)
    lf = None if loaded is None else LabelFilter(loaded[0], loaded[1]["threshold"], loaded[1]["action"], loaded[1]["relabel_gate"])
    _, rollouts = evaluate_agents(att, de, ew, cfg, return_rollouts=True, label_filter=lf)
    return ew, rollouts
