"""Configuration of ``ppd train-ruac``: :class:`RuacTrainConfig`, the run folder's file
names, and the check that a resumed run keeps its configuration."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from ppd.data.scenes import DOMAINS, TRAIN_DOMAIN
from ppd.models import BUNDLED_NAME
from ppd.ruac.head import RuacHeadConfig
from ppd.ruac.losses import CurriculumSchedule

PROMPT_MODES = ("mixed", "protocol")
#: Config fields that may differ between a run folder's config.yaml and a --resume: they
#: change where or how often things happen, not what is trained.
RESUME_FREE_FIELDS = ("device", "threads", "checkpoint_every", "log_every", "eval_scenes", "eval_objects")
LAST_FILENAME = "last.pt"
CONFIG_FILENAME = "config.yaml"
METRICS_FILENAME = "metrics.json"


@dataclass
class RuacTrainConfig:
    """Configuration of ``ppd train-ruac`` (field docs are the CLI help).

    Default run: 2000 steps. Measured on the 2-core development CPU with 1 torch thread
    and the other core free (bundled model, batch 8 images x 2 objects, 3 protocol rounds,
    4 attacked images, pool refreshes included; ``ppd train-ruac --steps 60``): 0.51 s
    per phase-1 step, 0.84 s per phase-2 step (sampling + KL), 0.99 s per phase-3 step
    (adversarial branch), so 500 x 0.51 + 200 x 0.84 + 1300 x 0.99 = ~1710 s of steps,
    + ~25 s to encode the pool + ~15 s of evaluation: ~29 min at 1 thread, less at 2.
    With the machine shared (3-4 busy processes on 2 cores) wall time was up to 1.5x
    the CPU time. ``--no-aue``: ~17 min at 1 thread.
    """

    model: str = BUNDLED_NAME
    """segmenter name: the bundled sam2-tiny-synthetic or an official SAM2 config"""
    checkpoint: str = ""
    """checkpoint file of --model (empty: the bundled model's own file)"""
    device: str = "auto"
    """torch device: auto (cuda when available), cpu, cuda"""
    seed: int = 0
    """random seed (scenes, prompts, head and attacker initialisation, Weibull draws)"""
    threads: int = 0
    """torch CPU threads (0: leave torch's default)"""
    steps: int = 2000
    """optimiser steps (the curriculum phases are fractions of it)"""
    batch_size: int = 8
    """images per step"""
    objects_per_image: int = 2
    """objects (prompted mask rows) per image per step"""
    rounds: int = 3
    """prompt rounds per step: the initial prompt, then corrective clicks"""
    prompt_mode: str = "protocol"
    """mixed: ppd pretrain's prompts (1 click multimask / several clicks / box, then
    corrective clicks); protocol: RUAC's 3-click protocol (random GT pixel, then
    error-region clicks)"""
    p_box: float = 0.15
    """mixed prompts: probability that round 0 is a box"""
    p_multi_click: float = 0.3
    """mixed prompts: probability that round 0 has several random clicks"""
    max_clicks: int = 4
    """mixed prompts: most random clicks in round 0"""
    p_rule_click: float = 0.5
    """mixed prompts: probability that a corrective click follows the SAM/RITM rule
    (else a random interior point of the larger error region)"""
    lr_head: float = 1e-3
    """peak learning rate of the head's Weibull-shape networks (pixel kappa CNN, token
    shape MLP), the new parameters (RUAC: 1e-4 for its Bayesian head on a pretrained
    SAM2; 3e-3 moved the shapes within 60 steps here, 1e-3 suits a 2000-step run)"""
    lr_head_mean: float = 1e-5
    """peak learning rate of the head's mean path (evidence 1x1 conv, per-token weight
    MLPs), initialised from SAM2's decoder (RUAC fine-tunes its decoder at 1e-6). Measured
    on the bundled model, 150 steps: 1e-3 took held-out 3-click IoU from 0.25 to 0.07,
    1e-4 to 0.13, 1e-5 kept 0.24"""
    lr_attackers: float = 1e-3
    """peak learning rate of the style and deformation attackers (RUAC: 1e-3; after 60
    phase-3 steps the mean style shift was 6 percent of its bound at 1e-3, 75 percent at 1e-2)"""
    weight_decay: float = 0.01
    """AdamW weight decay"""
    warmup_steps: int = 50
    """linear learning-rate warm-up steps"""
    min_lr_ratio: float = 0.05
    """final learning rate as a fraction of the peak (cosine decay)"""
    grad_clip: float = 1.0
    """gradient-norm clip, applied to the head and to the attackers separately"""
    focal_weight: float = 5.0
    """weight of the focal term (with alpha -1 and gamma 0: plain cross-entropy, the loss
    the bundled model was pretrained with; SAM/RUAC use 20 x focal(0.25, 2))"""
    focal_alpha: float = -1.0
    """focal loss foreground weight (-1: none)"""
    focal_gamma: float = 0.0
    """focal loss focusing exponent"""
    dice_weight: float = 1.0
    """weight of the dice term"""
    phase1_mean: bool = True
    """curriculum phase 1 (the paper's "standard SAM segmentation loss") trains the mean
    path on the analytic mean logits; Weibull sampling starts with the KL in phase 2.
    Sampled logits without the KL drive every Weibull shape to kappa_max, where the
    clamp stops their gradient for the rest of the run (measured)"""
    aue: bool = True
    """adversarial uncertainty estimation (attackers + calibration loss); --no-aue is the
    Bayes-only ablation (segmentation + KL)"""
    kl_start: float = 5 / 20
    """fraction of the steps at which the KL term starts (curriculum phase 2)"""
    adv_start: float = 7 / 20
    """fraction of the steps at which the adversarial branch starts (phase 3)"""
    kl_weight: float = 0.001
    """weight of the KL term (clean and adversarial). The head's KL is summed over the
    32 evidence channels (~70 per pixel at the start of phase 2): at the authors' 0.05 it
    outweighed the segmentation loss and the held-out 3-click J&F fell from 31.5 to 2.8
    (600-step --no-aue run); at 0.001 it stayed at 31.8"""
    adv_weight: float = 0.2
    """weight of the adversarial branch in phase 3"""
    seg_weight_adv: float = 0.8
    """weight of the clean segmentation loss in phase 3"""
    cal_weight: float = 0.1
    """weight of the calibration loss inside the adversarial branch"""
    style_eps: float = 0.3
    """style attacker: bound on the mean shift (normalised image units)"""
    style_r: float = 0.5
    """style attacker: bound on the relative std change"""
    style_gcn: bool = True
    """style attacker: coordinate objects with the object-graph GCN"""
    deform_max_displacement: float = 2.4 / 1024
    """deformation attacker: bound on the displacement, as a fraction of the image side"""
    grl_scale: float = 1.0
    """gradient reversal scale of both attackers"""
    adv_images: int = 4
    """images of each batch (the first N, with their prompted objects) that also go
    through the adversarial branch (0: all); re-encoding with input gradients is the
    costly part of a phase-3 step"""
    pool_size: int = 300
    """scenes (with cached embeddings) kept in memory"""
    refresh_every: int = 1
    """replace one pool scene by a new one every N steps (0: never)"""
    scene_size: int = 256
    """side of the procedural scenes in pixels"""
    domain: str = TRAIN_DOMAIN
    """training domain (the single source domain)"""
    eval_scenes: int = 32
    """held-out scenes of the training domain evaluated at the end (0: no evaluation)"""
    eval_objects: int = 3
    """objects per held-out scene"""
    checkpoint_every: int = 100
    """write last.pt and ruac_head.pt every N steps"""
    log_every: int = 10
    """TensorBoard / history interval in steps (averages over the interval)"""
    head: dict = field(default_factory=dict)
    """RuacHeadConfig fields of the new head (file only)"""

    def __post_init__(self) -> None:
        checks = {
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 1,
            "objects_per_image": self.objects_per_image >= 1,
            "rounds": self.rounds >= 1,
            "prompt_mode": self.prompt_mode in PROMPT_MODES,
            "pool_size": self.pool_size >= 1,
            "refresh_every": self.refresh_every >= 0,
            "domain": self.domain in DOMAINS,
            "eval_scenes": self.eval_scenes >= 0,
            "eval_objects": self.eval_objects >= 1,
            "checkpoint_every": self.checkpoint_every >= 1,
            "log_every": self.log_every >= 1,
            "lr_head": self.lr_head > 0,
            "lr_head_mean": self.lr_head_mean >= 0,
            "lr_attackers": self.lr_attackers > 0,
            "max_clicks": self.max_clicks >= 2,
            "warmup_steps": self.warmup_steps >= 0,
            "grad_clip": self.grad_clip > 0,
            "adv_images": self.adv_images >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError("invalid RuacTrainConfig value(s): " + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad)
                             + f" (prompt_mode in {PROMPT_MODES}, domain in {DOMAINS})")
        known = {f.name for f in dataclasses.fields(RuacHeadConfig)}
        unknown = sorted(set(self.head) - known)
        if unknown:
            raise ValueError(f"unknown head field(s) {unknown}; known: {sorted(known)}")
        self.schedule()  # validates the curriculum fractions

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def schedule(self) -> CurriculumSchedule:
        return CurriculumSchedule(
            kl_start=self.kl_start, adv_start=self.adv_start, kl_weight=self.kl_weight,
            adv_weight=self.adv_weight, seg_weight_adv=self.seg_weight_adv, cal_weight=self.cal_weight,
        )

    def weights(self, step: int) -> dict[str, float]:
        """Loss weights at a 0-based step; ``aue=False`` keeps seg 1 and drops adv/cal."""
        w = self.schedule().weights(step, self.steps)
        if not self.aue:
            w.update(seg=1.0, adv=0.0, cal=0.0)
        return w

    def phase(self, step: int) -> int:
        return self.schedule().phase(step, self.steps)

    def lr_factor(self, step: int) -> float:
        """Learning-rate multiplier: linear warm-up, then cosine decay to ``min_lr_ratio``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        t = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def _normalised(d: dict) -> dict:
    return yaml.safe_load(yaml.safe_dump(d))


def config_differences(saved: dict, cfg: RuacTrainConfig) -> list[str]:
    """Fields (other than :data:`RESUME_FREE_FIELDS`) where ``saved`` and ``cfg`` differ."""
    now = _normalised(cfg.to_dict())
    keys = sorted((set(saved) | set(now)) - set(RESUME_FREE_FIELDS))
    return [f"{k}: run folder {saved.get(k)!r} vs now {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]
