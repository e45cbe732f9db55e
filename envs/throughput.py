"""Env throughput: M batched envs (one decoder call per step) against M envs stepped one by one.

:func:`step_throughput` times both sides; ``python docs/experiments/env_step_speed.py``
prints it. Both sides take random valid actions and auto-reset ended episodes. The
batched side is one :class:`~ppd.envs.PromptVecEnv`; the sequential side is M
:class:`~ppd.envs.PointPromptEnv` whose ``step`` decodes its own state (one decoder call
per env step). Each side has its own :class:`~ppd.envs.PromptWorld` (so neither reuses
the other's cached outcomes) and its own seeds; images are encoded and graphs built
before timing. The two sides alternate in ``rounds`` rounds so that a changing machine
load hits both alike. Counted per side (:class:`SideStats`): env steps/s, decoder calls
and rows, and the share of prompt states answered without decoding (outcome cache hits,
e.g. after invalid or stop actions, and empty prompt sets). ``probe`` gives the defender
envs removal probes (each state's K leave-one-out prompt sets are decoded with it, as
``ppd train`` does by default).

:func:`decoder_ceiling` is the **decoder's own batching gain**, with no env work at all:
M decoder calls of as many rows as a sequential env decodes per step (1, or K + 1 with
probes), one per image, against one call of all their rows. The env ratio cannot exceed
it: the batched side saves decoder calls, not per-row decoder work or env bookkeeping.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ppd.data.scenes import ProceduralScenes
from ppd.envs.point_prompt_env import PointPromptEnv
from ppd.envs.vec_env import PromptVecEnv
from ppd.envs.world import PROMPT_PAD, PromptWorld
from ppd.segmenter import Segmenter


@dataclass
class SideStats:
    """Counters of one side (batched or sequential)."""

    env_steps: int = 0
    seconds: float = 0.0
    episodes: int = 0
    decoder_calls: int = 0
    requests: int = 0  # prompt states asked for (steps + resets, and their probes)
    rows: int = 0  # prompt states actually decoded

    @property
    def steps_per_s(self) -> float:
        return self.env_steps / self.seconds if self.seconds else float("nan")

    @property
    def cache_share(self) -> float:
        return 1.0 - self.rows / self.requests if self.requests else float("nan")


def _count(world: PromptWorld, stats: SideStats) -> None:
    """Count requests and decoded rows of ``world`` into ``stats`` (instance wrappers).

    Requests are counted where the world decodes, so a state's removal probes count as
    requests of their own (and the no-decode share stays in [0, 1] with probes)."""
    evaluate, predict_batch = world._evaluate, world.segmenter.predict_batch

    def counted_evaluate(requests, *args, **kwargs):
        stats.requests += len(requests)
        calls = world.decode_calls
        try:
            return evaluate(requests, *args, **kwargs)
        finally:
            stats.decoder_calls += world.decode_calls - calls

    def counted_predict_batch(embeddings, *args, **kwargs):
        stats.rows += len(embeddings)
        return predict_batch(embeddings, *args, **kwargs)

    world._evaluate = counted_evaluate  # type: ignore[method-assign]
    world.segmenter = _SegmenterView(world.segmenter, counted_predict_batch)


class _SegmenterView:
    """The segmenter with ``predict_batch`` replaced (the model stays shared)."""

    def __init__(self, seg: Segmenter, predict_batch) -> None:
        self._seg, self.predict_batch = seg, predict_batch

    def __getattr__(self, name):
        return getattr(self._seg, name)


def _pick(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.array([rng.choice(np.flatnonzero(m)) for m in masks])


def decoder_ceiling(
    seg: Segmenter, images: list[np.ndarray], n_points: int = 8, prompt_pad: int | None = PROMPT_PAD,
    rows_per_image: int = 1, rounds: int = 9, seed: int = 0,
) -> tuple[float, float]:
    """Median seconds of M ``predict_batch`` calls of ``rows_per_image`` rows each (call i
    on ``images[i]``, as M sequential envs decode) and of one call of all their rows (as
    the batched envs do), same prompts: ``n_points`` random points per row, padded to the
    prompt width the envs decode with (``prompt_pad``). The two alternate ``rounds`` times
    after an untimed warm-up round."""
    rng = np.random.default_rng(seed)
    r = max(1, int(rows_per_image))
    embs = [e for image in images for e in [seg.encode(image)] * r]  # row j on image j // r
    n_rows = len(embs)
    width = n_points if prompt_pad is None else prompt_pad * max(1, -(-n_points // prompt_pad))
    coords = np.zeros((n_rows, width, 2), np.float32)
    labels = np.full((n_rows, width), -1, np.int64)
    for i in range(n_rows):
        h, w = embs[i].orig_hw
        coords[i, :n_points] = rng.uniform((0, 0), (w - 1, h - 1), (n_points, 2))
        labels[i, :n_points] = rng.integers(0, 2, n_points)

    def per_image_calls() -> None:
        for i in range(0, n_rows, r):
            seg.predict_batch(embs[i : i + r], coords[i : i + r], labels[i : i + r])

    def one_call() -> None:
        seg.predict_batch(embs, coords, labels)

    times: dict[str, list[float]] = {"rows": [], "batch": []}
    for round_ in range(rounds + 1):
        for name, fn in (("rows", per_image_calls), ("batch", one_call)):
            t = time.perf_counter()
            fn()
            if round_:  # the first round warms up
                times[name].append(time.perf_counter() - t)
    return float(np.median(times["rows"])), float(np.median(times["batch"]))


def step_throughput(
    seg: Segmenter, n_envs: int = 16, steps: int = 200, role: str = "defender", n_scenes: int = 32,
    rounds: int = 4, seed: int = 0, prompt_pad: int | None = PROMPT_PAD, probe: bool = False,
) -> dict[str, SideStats]:
    """``{"batched": ..., "sequential": ...}``: ``steps`` vector steps (``n_envs * steps``
    env steps) timed and counted on each side, on ``n_scenes`` procedural ``train``
    scenes, alternating in ``rounds`` rounds (module docstring)."""
    scenes = ProceduralScenes("train", n_scenes, seed=seed)
    worlds = {side: PromptWorld(seg, scenes, prompt_pad=prompt_pad) for side in ("batched", "sequential")}
    for world in worlds.values():  # encode + build graphs outside the timing
        for i in range(len(scenes)):
            world.image(i)
    stats = {side: SideStats() for side in worlds}
    for side, world in worlds.items():
        _count(world, stats[side])

    venv = PromptVecEnv(n_envs, role, world=worlds["batched"], seed=seed, probe=probe)
    singles = [PointPromptEnv(role, world=worlds["sequential"], probe=probe) for _ in range(n_envs)]
    venv.reset()
    for i, env in enumerate(singles):
        env.reset(seed=seed + 1000 + i)
    rng = {"batched": np.random.default_rng(seed), "sequential": np.random.default_rng(seed + 1)}

    per_round = [steps // rounds + (r < steps % rounds) for r in range(rounds)]
    for n in per_round:
        s = stats["batched"]
        t = time.perf_counter()
        for _ in range(n):
            _, _, dones, _ = venv.step(_pick(venv.action_masks(), rng["batched"]))
            s.episodes += int(dones.sum())
        s.seconds += time.perf_counter() - t
        s.env_steps += n * n_envs

        s = stats["sequential"]
        t = time.perf_counter()
        for _ in range(n):
            actions = _pick(np.stack([env.action_masks() for env in singles]), rng["sequential"])
            for env, a in zip(singles, actions):
                _, _, terminated, truncated, _ = env.step(a)
                if terminated or truncated:
                    s.episodes += 1
                    env.reset()
        s.seconds += time.perf_counter() - t
        s.env_steps += n * n_envs
    return stats
