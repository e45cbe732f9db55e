"""Session-14 experiment script (not part of the package; docs/ppd_experiments.md).

Fine-tune a run's defender on starts its wrong-label filter has acted on, and (MODE
``mixed``) re-select the filter's action and threshold with the fine-tuned defender:

    python docs/scripts/s14_finetune_filtered.py SRC_RUN DST_RUN STEPS MODE [LR]

MODE ``selected``: every start filtered with the run's selected (action, threshold);
``mixed``: each start with one of the candidates drawn at random (off included). The
starts: ideal, attacked, coarse and random-noise coarse sets on the run's 200 training
scenes (which the filter never saw). DST_RUN is a copy of SRC_RUN with the fine-tuned
``defender.zip`` (and, re-selected, ``label_filter.json``).
"""
import sys, time, shutil, json, numpy as np, torch, yaml
from pathlib import Path
src, dst, steps, mode = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
lr = float(sys.argv[5]) if len(sys.argv) > 5 else None
torch.set_num_threads(1)
from stable_baselines3.common.vec_env import VecMonitor
from ppd.agents.train import TrainConfig, _load_model, _save_model
from ppd.agents.dqn import MaskedDQN
from ppd.agents import label_filter as lf
from ppd.data.scenes import TRAIN_DOMAIN, ProceduralScenes
from ppd.envs import PromptWorld, PromptVecEnv
from ppd.segmenter import load_segmenter
from ppd import io
cfg = TrainConfig(**yaml.safe_load((src / "config.yaml").read_text()))
if dst.exists(): shutil.rmtree(dst)
shutil.copytree(src, dst)
seg = load_segmenter(cfg.segmenter, checkpoint=cfg.checkpoint or None)
graph_kw = dict(grid=cfg.grid or None, k_physical=cfg.k_physical, k_semantic=cfg.k_semantic)
world = PromptWorld(seg, ProceduralScenes(TRAIN_DOMAIN, cfg.scenes, seed=cfg.seed * 1_000_000 + 500_000), **graph_kw)
attacker = MaskedDQN.load(str(src / "attacker.zip"))
fmodel, meta = lf.load_label_filter(src)
t0 = time.time()
rng = np.random.default_rng([cfg.seed, 900_000])
starts, kinds = lf.scene_starts(world, attacker, cfg, rng)
prob = lf.node_probabilities(fmodel, world, starts, cfg.defender_max_steps)
cands = [(meta["action"], meta["threshold"])] if mode == "selected" else lf.filter_candidates()
pool = []
for (rec, obj, st, pts), p in zip(starts, prob):
    a, t = cands[int(rng.integers(len(cands)))]
    pool.append((rec.index, obj, lf.apply_filter(st, p, t, a), pts))
world.attack_pool = pool
world.attack_pool_size = len(pool) + 1
print("pool", len(pool), "in", round(time.time() - t0, 1), "s", flush=True)
env = VecMonitor(PromptVecEnv(cfg.n_envs, "defender", world=world, seed=cfg.seed * 10_000 + 777,
                              **{**cfg.env_kwargs("defender"), "start_mix": {"attacked": 1.0}}))
dfd = _load_model(src / "defender.zip", env, cfg, "cpu")
if lr:
    dfd.learning_rate = lr; dfd.lr_schedule = lambda _: lr
dfd.learning_starts = dfd.num_timesteps + 300
dfd.exploration_horizon = max(1, dfd.num_timesteps)
t1 = time.time()
dfd.learn(steps, reset_num_timesteps=False)
print("learn", steps, "in", round(time.time() - t1, 1), "s", flush=True)
_save_model(dfd, dst / "defender.zip", False)
if mode == "mixed":  # re-select the action and threshold with the fine-tuned defender
    t2 = time.time()
    sel_world = PromptWorld(seg, ProceduralScenes(TRAIN_DOMAIN, cfg.eval_scenes, seed=cfg.seed * 1_000_000 + lf.SELECT_SEED_OFFSET), **graph_kw)
    sel_starts, sel_kinds = lf.scene_starts(sel_world, attacker, cfg, np.random.default_rng([cfg.seed, lf.SELECT_SEED_OFFSET]))
    keep = [i for i, k in enumerate(sel_kinds) if k in ("attacked", "coarse")]
    sel = lf.select_threshold(dfd, fmodel, sel_world, [sel_starts[i] for i in keep], [sel_kinds[i] for i in keep], cfg)
    meta.update(threshold=sel["threshold"], action=sel["action"], selection_quality=sel["quality"])
    io.save_json(meta, dst / lf.FILTER_META)
    print("selected", sel["action"], sel["threshold"], "in", round(time.time() - t2, 1), "s", json.dumps(sel["quality"]), flush=True)
