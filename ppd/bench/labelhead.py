"""How well can a wrong-label detector do? A label head trained by supervision alone.

    python -m ppd.bench.labelhead --run DIR [--scenes 800] [--steps 1000] [--epochs 8] [--sweep-scenes 40]

Recovery from attacked prompts is a detection problem: removing exactly the prompts whose
label is wrong by the ground truth recovers the ideal IoU (the defense bench's
``attacked+oracle`` column). The RL-trained label head (``ppd train --label-aux``) sees
the states of a few hundred training scenes. This bench asks how far the same network
gets with plain supervision on more scenes:

1. Defender envs (removal probes, ``label_target``) on ``--scenes`` procedural training
   scenes (seed 30,000,000; never used by training, evaluation or the defense bench),
   half of the starts attacked by the run's attacker, half coarse, take ``--steps``
   random valid vector steps (16 envs); every observation is a training example.
2. A fresh network of the run's defender architecture trains its label head (and trunk)
   on the binary cross-entropy of the known labels, ``--epochs`` passes (Adam 1e-3).
3. ROC AUC of wrong vs right labels, on observations gathered the same way from the
   training's 48 evaluation scenes (``EVAL_SEED``): the run's own head against the
   supervised one.
4. With ``--sweep-scenes N``: on N selection scenes (seed 20,000,000), mean IoU of the
   run's ``refine`` and of dropping / relabelling every prompt whose supervised
   probability exceeds each threshold, on coarse and on attacked sets.

Not a test: it prints a table (and writes ``--out`` with the supervised network's
weights and the numbers).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from ppd.bench import add_threads_argument, apply_threads

#: Seeds of the supervised training scenes and of the threshold-selection scenes.
TRAIN_SEED = 30_000_000
SWEEP_SEED = 20_000_000
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
N_ENVS = 16


def attacked_world(defender: Any, attacker: Any, n_scenes: int, seed: int) -> tuple[Any, list]:
    """A :class:`PromptWorld` of ``n_scenes`` training-domain scenes whose attack pool
    holds the attacker's greedy result on each scene's ideal prompts (one object per
    scene, drawn from ``default_rng(seed)``); returns it and the ``(rec, obj, ideal
    state, points)`` starts with the attacked results."""
    from ppd.bench.defense import attack, defender_world, ideal_start
    from ppd.data.scenes import ProceduralScenes

    world = defender_world(defender, ProceduralScenes("train", n_scenes, seed=seed))
    rng = np.random.default_rng(seed)
    starts = []
    for i in range(n_scenes):
        rec = world.image(i)
        obj = int(rng.integers(rec.scene.num_objects))
        starts.append((rec, obj, *ideal_start(rec, obj, defender.config)))
    results = attack(attacker, world, defender.config, starts)
    for (rec, obj, _, _), r in zip(starts, results):
        world.add_attacked(rec.index, obj, r["state"], r["points"])
    return world, list(zip(starts, results))


def collect(defender: Any, world: Any, steps: int, seed: int) -> tuple[dict[str, np.ndarray], Any]:
    """Observations of ``N_ENVS`` defender envs taking ``steps`` random valid vector steps
    (starts: half attacked, half coarse), stacked; and the vector env."""
    from ppd.bench.envs import _pick
    from ppd.envs import PromptVecEnv

    venv = PromptVecEnv(N_ENVS, "defender", world=world, seed=seed, probe=defender.probe, label_target=True,
                        node_uncertainty=defender.node_uncertainty, relabel=defender.relabel,
                        start_mix={"attacked": 0.5, "coarse": 0.5})
    rng = np.random.default_rng(seed)
    obs, out = venv.reset(), []
    for _ in range(steps):
        out.append({k: v.copy() for k, v in obs.items()})
        obs, _, _, _ = venv.step(_pick(venv.action_masks(), rng))
    return {k: np.concatenate([o[k] for o in out]) for k in out[0]}, venv


def label_auc(net: Any, data: dict[str, np.ndarray]) -> float:
    """ROC AUC of ``net``'s wrong-label logits for the known labels of ``data``."""
    import torch

    from ppd.envs.point_prompt_env import UNKNOWN_LABEL, WRONG_LABEL
    from ppd.metrics import uncertainty_auroc

    zs, ys = [], []
    with torch.no_grad():
        for i in range(0, len(data["state"]), 256):
            batch = {k: torch.as_tensor(v[i : i + 256]) for k, v in data.items()}
            z = net.label_logits(batch).float()
            y = batch["label_target"].round().long()
            known = y != UNKNOWN_LABEL
            zs.append(z[known].numpy())
            ys.append((y[known] == WRONG_LABEL).numpy())
    return float(uncertainty_auroc(np.concatenate(zs), np.concatenate(ys)))


def train_head(model: Any, data: dict[str, np.ndarray], epochs: int, seed: int, tick=None) -> list[float]:
    """Supervised passes over ``data`` (label BCE only, Adam 1e-3, batch 64); mean loss per epoch."""
    import torch

    from ppd.agents.dqn import label_aux_loss

    net = model.policy.q_net
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    n, history = len(data["state"]), []
    for _ in range(epochs):
        losses = []
        perm = rng.permutation(n)
        for i in range(0, n, 64):
            idx = perm[i : i + 64]
            batch = {k: torch.as_tensor(v[idx]) for k, v in data.items()}
            loss, _ = label_aux_loss(net.label_logits(batch), batch["label_target"])
            if loss is None:
                continue
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        history.append(float(np.mean(losses)) if losses else float("nan"))
        if tick:
            tick()
    model.policy.q_net_target.load_state_dict(net.state_dict())
    return history


def sweep(defender: Any, supervised: Any, attacker: Any, n_scenes: int) -> dict[str, float]:
    """Mean IoU on ``n_scenes`` selection scenes (coarse and attacked sets): the run's
    ``refine`` and, per threshold, dropping or relabelling the prompts whose supervised
    wrong-label probability exceeds it (one decoder call; the least suspect prompt
    stays if all exceed it). Keys ``"{coarse|attacked}:{refine|drop@t|relabel@t}"``, and
    ``"ideal"``: the ideal prompts the attacks started from (recovery's reference)."""
    from ppd.agents.defender import PromptDefender
    from ppd.bench.defense import state_iou
    from ppd.envs.world import prompts_from_state
    from ppd.metrics import iou
    from ppd.prompts import coarse_prompts

    world, attacked = attacked_world(defender, attacker, n_scenes, SWEEP_SEED)
    probe = PromptDefender(supervised, defender.segmenter, grid=defender.world.grid, k_physical=defender.world.k_physical,
                           k_semantic=defender.world.k_semantic, max_steps=defender.train_max_steps)
    seg = defender.segmenter
    vals: dict[str, list[float]] = {}
    rng = np.random.default_rng([SWEEP_SEED, 1])
    for (rec, obj, ideal_state, ideal_points), res in attacked:
        gt, image = rec.scene.masks[obj], rec.scene.image
        vals.setdefault("ideal", []).append(state_iou(seg, rec, ideal_state, ideal_points, gt))
        cp = coarse_prompts(gt, rng).prompts
        sets = {"coarse": (cp.point_coords, cp.point_labels), "attacked": prompts_from_state(res["state"], res["points"])}
        for name, (coords, labels) in sets.items():
            coords, labels = np.asarray(coords, np.float32), np.asarray(labels, np.int64)
            vals.setdefault(f"{name}:refine", []).append(float(iou(defender.refine(image, coords, labels).mask, gt)))
            p = probe.wrong_label_probability(image, coords, labels)
            for t in THRESHOLDS:
                keep = p <= t
                if not keep.any():
                    keep[np.argmin(p)] = True
                drop = seg.predict(rec.embedding, coords[keep], labels[keep]).masks[0]
                flip = seg.predict(rec.embedding, coords, np.where(p > t, 1 - labels, labels)).masks[0]
                vals.setdefault(f"{name}:drop@{t}", []).append(float(iou(drop, gt)))
                vals.setdefault(f"{name}:relabel@{t}", []).append(float(iou(flip, gt)))
    return {k: float(np.mean(v)) for k, v in vals.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="training run folder (defender.zip with a label head, attacker.zip)")
    p.add_argument("--scenes", type=int, default=800, help="supervised training scenes (default 800)")
    p.add_argument("--steps", type=int, default=1000, help=f"random vector steps of {N_ENVS} envs collected (default 1000)")
    p.add_argument("--epochs", type=int, default=8, help="supervised passes over the data (default 8)")
    p.add_argument("--sweep-scenes", type=int, default=0, help="selection scenes of the threshold sweep (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="write the numbers (JSON) and the network (OUT.pt) here")
    add_threads_argument(p)
    args = p.parse_args(argv)
    apply_threads(p, args)
    for name in ("scenes", "steps", "epochs"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    import torch
    from tqdm import tqdm

    from ppd.agents.defender import PromptDefender, load_agent
    from ppd.agents.dqn import make_dqn
    from ppd.agents.train import EVAL_SEED

    defender = PromptDefender.load(args.run, device=args.device)
    if not defender.has_label_head:
        p.error(f"{args.run}: the defender has no label head (train it with ppd train --label-aux WEIGHT)")
    attacker, _, _ = load_agent(args.run, "attacker.zip", device=args.device)
    t0 = time.time()
    with tqdm(total=4, desc="scenes, attacks, data", unit="part") as bar:
        train_world, _ = attacked_world(defender, attacker, args.scenes, TRAIN_SEED)
        bar.update()
        train_data, venv = collect(defender, train_world, args.steps, args.seed)
        bar.update()
        test_world, _ = attacked_world(defender, attacker, 48, EVAL_SEED)
        bar.update()
        test_data, _ = collect(defender, test_world, 120, args.seed + 1)
        bar.update()
    net = defender.model.policy.q_net  # the same architecture, fresh weights
    kw = {k: getattr(net, k) for k in ("hidden_dim", "n_layers", "node_norm", "stop_q", "node_features", "q_prior")}
    model = make_dqn(venv, "defender", relabel=defender.relabel, label_aux=1.0, seed=args.seed, device=args.device, **kw)
    with tqdm(total=args.epochs, desc="supervised epochs", unit="epoch") as bar:
        losses = train_head(model, train_data, args.epochs, args.seed, bar.update)
    res: dict[str, Any] = {
        "run": args.run, "scenes": args.scenes, "train_observations": int(len(train_data["state"])),
        "test_observations": int(len(test_data["state"])), "epochs": args.epochs, "loss": losses,
        "auc_run_head": label_auc(defender.model.policy.q_net, test_data),
        "auc_supervised": label_auc(model.policy.q_net, test_data),
        "auc_supervised_train": label_auc(model.policy.q_net, train_data),
    }
    print(f"{res['train_observations']} training observations from {args.scenes} scenes, "
          f"{res['test_observations']} test observations from 48 evaluation scenes ({time.time() - t0:.0f} s)")
    print(f"wrong-label ROC AUC on the test observations: run's RL-trained head {res['auc_run_head']:.3f}, "
          f"supervised head {res['auc_supervised']:.3f} (on its training data {res['auc_supervised_train']:.3f})")
    if args.sweep_scenes:
        res["sweep"] = sweep(defender, model, attacker, args.sweep_scenes)
        print(f"mean IoU on {args.sweep_scenes} selection scenes (seed {SWEEP_SEED}); ideal prompts {res['sweep']['ideal']:.3f}:")
        print(f"{'set':9s} {'refine':>7s} " + " ".join(f"{f'drop@{t}':>8s}" for t in THRESHOLDS) + " "
              + " ".join(f"{f'relab@{t}':>9s}" for t in THRESHOLDS))
        for name in ("coarse", "attacked"):
            sw = res["sweep"]
            print(f"{name:9s} {sw[f'{name}:refine']:7.3f} " + " ".join(f"{sw[f'{name}:drop@{t}']:8.3f}" for t in THRESHOLDS)
                  + " " + " ".join(f"{sw[f'{name}:relabel@{t}']:9.3f}" for t in THRESHOLDS))
    if args.out:
        from ppd import io

        io.save_json(res, args.out if args.out.endswith(".json") else args.out + ".json")
        torch.save(model.policy.q_net.state_dict(), (args.out[:-5] if args.out.endswith(".json") else args.out) + ".pt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
