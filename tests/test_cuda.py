"""GPU checks: the same work on CUDA as on CPU.

Skipped where no CUDA device is present (CI and the development machines have none;
they were run on an H100, see docs/gpu.md). In fp32, the bundled model's
default, CUDA must reproduce CPU results up to float rounding: masks, rewards and the
defender's choices. Under bf16 autocast (the default for official SAM2 models) the
bundled 256 px model moves boundary pixels and sometimes a whole region, so only
agreement on most masks is asserted (the bench numbers for both are in docs/gpu.md).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ppd.agents.defender import PromptDefender
from ppd.data.scenes import ProceduralScenes
from ppd.envs.vec_env import PromptVecEnv
from ppd.envs.world import PromptWorld
from ppd.metrics import iou
from ppd.prompts import coarse_prompts, ideal_prompts
from ppd.segmenter import load_segmenter

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

SCENES = 8  # held-out procedural scenes (seeds far from training's)
SCENE_SEED = 777_000


@pytest.fixture(scope="module")
def segmenters():
    """CPU, CUDA fp32 (the bundled model's default) and CUDA bf16 segmenters of the bundled model."""
    gpu = load_segmenter(device="cuda")
    assert gpu.precision == "fp32"
    return load_segmenter(device="cpu"), gpu, load_segmenter(device="cuda", precision="bf16")


@pytest.fixture(scope="module")
def scenes():
    return ProceduralScenes("train", SCENES, seed=SCENE_SEED)


def _sets(scenes, kind: str):
    rng = np.random.default_rng(0)
    out = []
    for s in scenes:
        gt = s.masks[0]
        p = ideal_prompts(gt, rng=rng) if kind == "ideal" else coarse_prompts(gt, rng).prompts
        out.append((s.image, gt, p.point_coords, p.point_labels))
    return out


def _agreement(a, b, sets):
    agree, score_gap = [], []
    for image, _gt, coords, labels in sets:
        pa, pb = a.predict(image, coords, labels), b.predict(image, coords, labels)
        assert pa.masks.shape == pb.masks.shape == (1, *image.shape[:2]) and pb.masks.dtype == bool
        agree.append(float(iou(pa.masks[0], pb.masks[0])))
        score_gap.append(abs(float(pa.scores[0]) - float(pb.scores[0])))
    return np.array(agree), np.array(score_gap)


def test_cuda_fp32_predict_matches_cpu(segmenters, scenes):
    cpu, fp32, _ = segmenters
    for kind in ("ideal", "coarse"):
        agree, gap = _agreement(cpu, fp32, _sets(scenes, kind))
        assert agree.min() >= 0.99 and gap.max() <= 0.01, (kind, agree, gap)


def test_cuda_bf16_predict_mostly_matches_cpu(segmenters, scenes):
    cpu, _, bf16 = segmenters
    agree, gap = _agreement(cpu, bf16, _sets(scenes, "ideal") + _sets(scenes, "coarse"))
    assert np.median(agree) >= 0.99, agree
    assert (agree >= 0.9).mean() >= 0.8, agree  # a few masks may lose or gain a region
    assert np.median(gap) <= 0.02, gap


def test_cuda_fp32_refine_matches_cpu(segmenters, scenes):
    """The bundled defender (trained on CPU) makes the same choices on CUDA in fp32."""
    cpu = PromptDefender.load(segmenter=segmenters[0], device="cpu")
    gpu = PromptDefender.load(segmenter=segmenters[1], device="cuda")
    same = 0
    for image, gt, coords, labels in _sets(scenes, "coarse"):
        a, b = cpu.refine(image, coords, labels), gpu.refine(image, coords, labels)
        assert abs(float(iou(a.mask, gt)) - float(iou(b.mask, gt))) <= 0.01
        same += bool(np.array_equal(a.kept, b.kept) and np.array_equal(a.point_labels, b.point_labels))
    assert same >= SCENES - 1  # a near-tie in the Q-values may go the other way once


def test_cuda_fp32_vec_env_rewards_match_cpu(segmenters):
    """One batched decoder call per step on CUDA; rewards as on CPU for the same actions."""
    rewards = []
    for seg in segmenters[:2]:
        world = PromptWorld(seg, ProceduralScenes("train", 4, seed=SCENE_SEED))
        venv = PromptVecEnv(8, "defender", world=world, seed=0, max_steps=6)
        venv.reset()
        rng = np.random.default_rng(0)
        got = []
        for _ in range(6):
            masks = venv.action_masks()
            # a seeded random valid non-stop action (the same on both devices while the
            # states agree), else stop
            acts = [int(np.flatnonzero(m[:-1])[rng.integers(m[:-1].sum())]) if m[:-1].any() else len(m) - 1 for m in masks]
            _, r, _, _ = venv.step(np.array(acts))
            got.append(r)
        rewards.append(np.stack(got))
        venv.close()
    assert rewards[0].shape == rewards[1].shape == (6, 8)
    np.testing.assert_allclose(rewards[1], rewards[0], atol=0.01)


def test_cuda_training_saves_a_defender_that_loads_on_cpu(tmp_path, segmenters, scenes):
    from ppd.agents.train import TrainConfig, train

    cfg = TrainConfig(
        seed=0, device="cuda", n_envs=2, rounds=1, attacker_steps=16, defender_steps=24, scenes=3, eval_scenes=2,
        learning_starts=8, buffer_size=200, batch_size=8, target_update_interval=16, hidden_dim=16, n_examples=1,
        filter_scenes=0,
    )
    metrics = train(cfg, tmp_path / "run", segmenter=segmenters[2])
    assert 0.0 <= metrics["final"]["defended_coarse_iou"] <= 1.0
    d = PromptDefender.load(tmp_path / "run", segmenter=segmenters[0], device="cpu")
    assert next(d.model.policy.parameters()).device.type == "cpu"
    image, gt, coords, labels = _sets(scenes, "coarse")[0]
    r = d.refine(image, coords, labels)
    assert r.mask.shape == gt.shape and len(r.point_coords) == len(r.point_labels) >= 1
