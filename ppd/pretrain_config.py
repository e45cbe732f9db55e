"""Configuration of ``ppd pretrain``: :class:`PretrainConfig`, its learning-rate and
curriculum schedules, and the ``device`` option of the training commands."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from ppd.data.scenes import TRAIN_DOMAIN
from ppd.models import tiny_model_config


@dataclass
class PretrainConfig:
    """Configuration of ``ppd pretrain`` (field docs are the CLI help)."""

    steps: int = 3600
    """optimiser steps"""
    batch_size: int = 8
    """images per step"""
    objects_per_image: int = 3
    """objects (mask rows) decoded per image per step: more supervision per encoder pass"""
    rounds: int = 2
    """prompt rounds decoded per encoded batch (1 initial + corrective clicks)"""
    lr: float = 6e-4
    """peak learning rate (AdamW)"""
    decoder_lr_scale: float = 3.0
    """learning rate of the prompt encoder and mask decoder as a multiple of ``lr``. With
    the encoder frozen, the decoder learned click binding faster at 2e-3 than at 6e-4
    (binding accuracy 0.47 vs 0.43 after 300 steps); the shipped model uses 3"""
    warmup_steps: int = 200
    """linear warm-up steps"""
    min_lr_ratio: float = 0.05
    """final learning rate as a fraction of the peak (cosine decay)"""
    weight_decay: float = 0.05
    """AdamW weight decay"""
    grad_clip: float = 1.0
    """gradient norm clip"""
    focal_weight: float = 5.0
    """weight of the focal loss (SAM uses 20:1 focal:dice with alpha 0.25, gamma 2; from
    scratch that settles on empty masks here, plain cross-entropy does not)"""
    focal_alpha: float = -1.0
    """focal loss class weight of the foreground (-1: no class weighting)"""
    focal_gamma: float = 0.0
    """focal loss focusing exponent (0 with alpha -1: plain binary cross-entropy)"""
    dice_weight: float = 1.0
    """weight of the dice loss"""
    iou_weight: float = 1.0
    """weight of the IoU-prediction MSE"""
    p_box: float = 0.15
    """probability that round 0 uses a box instead of clicks"""
    p_multi_click: float = 0.3
    """probability that round 0 uses several random clicks instead of one"""
    max_clicks: int = 4
    """maximum random clicks in round 0"""
    p_rule_click: float = 0.5
    """probability that a corrective click follows the exact SAM/RITM rule"""
    pool_size: int = 1500
    """scenes kept in memory; one is replaced by a fresh scene every step"""
    scene_size: int = 256
    """side of the procedural images in pixels"""
    loss_size: int = 0
    """side at which the mask losses are computed (0: image size, SAM's choice and the
    shipped model's). 64 = the decoder's low-res logits with area-downsampled soft
    targets: ~25% less time per step here, but with 5 objects x 3 rounds it reached
    1-click mIoU 0.146 at step 1000 against 0.197 for the previous recipe (no instance loss)"""
    instance_weight: float = 1.0
    """weight of an auxiliary dense instance-discrimination loss on the image encoder's
    features (every pixel's feature is classified against its image's per-instance mean
    features, cosine / ``instance_temperature``); training only, nothing is added to the
    model. Without it (0) the model learned to ignore the click (see the model card)"""
    instance_temperature: float = 0.1
    """temperature of the instance-discrimination loss"""
    domain: str = TRAIN_DOMAIN
    """training domain"""
    curriculum_steps: int = 0
    """curriculum: the share of images drawn from the 'simple' generator (flat, untextured,
    well-contrasted objects) falls linearly from 1 at step 0 to 0 at this step (0: none,
    the shipped model). 1500 (with 4800 steps, lr 8e-4, before the instance loss) gave held-out 1-click mIoU 0.187
    at step 1200 and 0.209 at step 2400, no better than without"""
    eval_every: int = 1000
    """evaluate on held-out scenes every N steps (0: only at the end)"""
    eval_scenes: int = 48
    """held-out scenes per evaluation"""
    checkpoint_every: int = 250
    """write last.pt every N steps"""
    seed: int = 0
    """random seed (scenes, clicks, initialisation)"""
    threads: int = 0
    """torch CPU threads (0: leave torch's default)"""
    device: str = "auto"
    """torch device: auto (cuda when available), cpu, cuda, cuda:N"""
    model: dict = field(default_factory=tiny_model_config)
    """model config (sam2 schema)"""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_scenes", "checkpoint_every"):
            if name in {f.name for f in dataclasses.fields(self)} and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "curriculum_steps", "eval_every", "threads"):
            if name in {f.name for f in dataclasses.fields(self)} and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def simple_share(step: int, cfg: PretrainConfig) -> float:
    """Share of training images from the simple generator at ``step`` (curriculum)."""
    if cfg.curriculum_steps <= 0:
        return 0.0
    return max(0.0, 1.0 - step / cfg.curriculum_steps)


def resolve_device(name: str) -> torch.device:
    """A training config's ``device`` (``ppd pretrain``, ``ppd train-ruac``) as a torch
    device; ``auto``: CUDA when available.

    Raises:
        ValueError: an unknown device, or CUDA asked for where torch has none.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r} (auto, cpu, cuda, cuda:N): {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device here (use cpu or auto)")
    return device
