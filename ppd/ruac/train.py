"""``ppd train-ruac``: train the RUAC Bayesian mask head (and its attackers) on a frozen SAM2.

Only :class:`~ppd.ruac.decoder.BayesianMaskDecoder`'s own parameters and the two attackers
are trained; the image encoder, prompt encoder and SAM2's mask decoder are frozen
(``requires_grad`` off). Because the encoder is frozen, every training image is encoded
ONCE, with no gradient, when it enters the scene pool (:class:`EmbeddedScenePool`), and the
clean branch of every step starts from those cached features: the main CPU saving.

One step (``batch_size`` images, ``objects_per_image`` objects each, seeded):

1. prompts as in ``ppd pretrain`` (``prompt_mode="mixed"``: one click with multimask
   output, several random clicks, or a box; then ``rounds - 1`` corrective clicks from the
   head's own mean prediction) or RUAC's protocol (``"protocol"``: a random GT pixel,
   then error-region clicks, :func:`ppd.ruac.evaluation.protocol_click`);
2. clean branch: every round is decoded by the head; loss = ``focal_weight`` x focal +
   ``dice_weight`` x dice at the decoder's low resolution (multimask rows: the best of
   the three masks, as SAM), mean over rows and rounds. Curriculum phase 1 (the paper's
   "standard SAM segmentation loss") scores the analytic mean logits (``phase1_mean``);
   from phase 2 on the head runs in ``"sample"`` mode (one Weibull draw, the
   reparameterised path), the loss scores the sampled logits and the head's KL term is
   added. The head's mean path (initialised from SAM2's decoder) learns at
   ``lr_head_mean``, far below its new Weibull-shape networks (``lr_head``), as RUAC
   fine-tunes the pretrained decoder far slower than its new parts;
3. adversarial branch (phase 3 of the curriculum, skipped with ``aue=False``): the style
   attacker restyles every object of each image (AdaIN, GCN-coordinated) and the
   deformation attacker warps image and masks with one field; the attacked image is
   re-encoded by the frozen encoder WITH autograd enabled (w.r.t. its input only: the
   encoder's parameters stay frozen), so the attackers receive the gradient of the loss
   through the encoder and the decoder, reversed by their gradient reversal layers; the
   final round's prompts are decoded on it and scored with segmentation + KL + the
   calibration loss with its two stop-gradients (``ppd.ruac.losses.calibration_loss``:
   prob = sigmoid(sampled logit), ``u_s`` = entropy of the sample, ``u_a`` = the analytic
   uncertainty);
4. total = ``seg * L_seg + kl * KL + adv * (L_seg_adv + kl * KL_adv + cal * L_cal)`` with
   the weights of :class:`~ppd.ruac.losses.CurriculumSchedule` (phases at 5/20 and 7/20 of
   the steps, as the authors' 20 epochs); ONE backward pass updates the head (downhill)
   and the attackers (uphill, through the GRL); AdamW with separate learning rates, linear
   warm-up and cosine decay.

Cost of the adversarial branch, measured on the bundled model with the default config
(process CPU time, 1 thread): re-encoding the 4 attacked images with input gradients
(forward + backward) 0.24 s, vs 0.11 s for the forward pass alone; attackers 0.10 s; the
whole adversarial branch (forward + backward) 0.39 s, vs 0.20 s for the clean branch (3
rounds, 14 rows) and 0.16 s for the prompts; a phase-3 step takes ~1.0 s, a clean step
0.3-0.45 s. Attacking the cached *features* instead would skip the encoder but is not
RUAC (its attackers act in image space, Sec. 3.3 and App. B), so the encoder runs.

Run folder (``out``): ``config.yaml`` (first), ``last.pt`` (every ``checkpoint_every``
steps and at the end: head, attackers, optimiser, random states, pool, step; ``resume``
continues from it and gives the same result as an uninterrupted run), ``ruac_head.pt``
(:func:`~ppd.ruac.decoder.save_head`; written with ``last.pt``, loadable with
``ppd.load_segmenter(decoder="ruac", ruac_checkpoint=out)``), ``metrics.json`` (held-out
3-click evaluation of the base decoder vs the trained head on the training domain, and
the training history) and TensorBoard events under ``tb/`` (``ruac/train/*``,
``ruac/eval/*``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from ppd import io
from ppd.data.scenes import DOMAINS, TRAIN_DOMAIN, ProceduralScenes, augment, draw_augmentation, make_scene
from ppd.models import BUNDLED_NAME
from ppd.pretrain import _error_click, _initial_prompt, _pad, hard_iou, model_input, resolve_device
from ppd.ruac.adversaries import DeformationAttacker, StyleAttacker
from ppd.ruac.decoder import HEAD_FILENAME, BayesianMaskDecoder, RuacDecoderOutput, RuacHeadConfig, save_head
from ppd.ruac.evaluation import (
    EVAL_SEED,
    MIN_CLICK_SEPARATION,
    evaluate_method,
    first_click,
    protocol_click,
    three_click_protocol,
)
from ppd.ruac.losses import CurriculumSchedule, calibration_loss, dice_loss, focal_loss
from ppd.segmenter import Segmenter, image_features

logger = logging.getLogger(__name__)

__all__ = [
    "PROMPT_MODES",
    "RESUME_FREE_FIELDS",
    "EmbeddedScenePool",
    "RuacBatch",
    "RuacTrainConfig",
    "RuacTrainer",
    "train_ruac",
]

PROMPT_MODES = ("mixed", "protocol")
#: Config fields that may differ between a run folder's config.yaml and a --resume: they
#: change where or how often things happen, not what is trained.
RESUME_FREE_FIELDS = ("device", "threads", "checkpoint_every", "log_every", "eval_scenes", "eval_objects")
LAST_FILENAME = "last.pt"
CONFIG_FILENAME = "config.yaml"
METRICS_FILENAME = "metrics.json"
# Training pool seeds: far from the pretraining pool (seed * 1e6 + i) and the eval seeds.
_POOL_SEED_OFFSET = 500_000


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


# ----------------------------------------------------------------------------- data
@dataclass
class _Entry:
    spec: tuple[int, int, bool, tuple[int, int, int]]  # scene seed, rot90 k, flip, channel order
    image: np.ndarray  # (Ss, Ss, 3) uint8, augmented
    masks: np.ndarray  # (K, Ss, Ss) bool
    embed: torch.Tensor  # (C, h, w)
    high: list[torch.Tensor]  # [(C0, 4h, 4w), (C1, 2h, 2w)]


@dataclass
class RuacBatch:
    """A training batch: N images, R prompted objects.

    Attributes:
        images: (N, Ss, Ss, 3) uint8 scenes (Ss = scene size).
        x: (N, 3, S, S) normalised model input (S = the model's image size).
        embed: (N, C, h, w) cached frozen image embedding; high: its high-res features.
        image_masks: per image, (K_i, S, S) float {0, 1} masks of ALL its objects at model
            size (what the attackers restyle and warp).
        owner: (R,) int64 image of each row; obj: (R,) index of the row's object in its
            image's masks.
        gt: (R, Ss, Ss) bool ground truth of each row (for clicks).
        target: (R, S/4, S/4) float soft targets at the decoder's low resolution.
    """

    images: np.ndarray
    x: torch.Tensor
    embed: torch.Tensor
    high: list[torch.Tensor]
    image_masks: list[torch.Tensor]
    owner: torch.Tensor
    obj: torch.Tensor
    gt: np.ndarray
    target: torch.Tensor


    def subset(self, n: int) -> tuple["RuacBatch", torch.Tensor]:
        """The first ``n`` images and their rows: ``(batch, row indices)``."""
        if n <= 0 or n >= len(self.images):
            return self, torch.arange(len(self.owner), device=self.owner.device)
        rows = (self.owner < n).nonzero()[:, 0]
        sub = RuacBatch(
            images=self.images[:n], x=self.x[:n], embed=self.embed[:n], high=[h[:n] for h in self.high],
            image_masks=self.image_masks[:n], owner=self.owner[rows], obj=self.obj[rows],
            gt=self.gt[rows.cpu().numpy()], target=self.target[rows],
        )
        return sub, rows


def _resize_masks(m: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """(K, H, W) float masks -> (K, size, size); ``area`` gives soft targets."""
    if m.shape[-1] == size:
        return m
    return F.interpolate(m[:, None], size=(size, size), mode=mode)[:, 0]


class EmbeddedScenePool:
    """Procedural training scenes with their frozen-encoder features, encoded once.

    Every entry is a scene of ``cfg.domain``, randomly rotated by a multiple of 90 degrees,
    flipped and channel-permuted (``ppd pretrain``'s augmentation, fixed per entry so the
    cached embedding stays valid), encoded alone (batch 1: an embedding does not depend on
    what it was batched with, so a resumed pool is bit-identical). Every
    ``cfg.refresh_every`` steps one random entry is replaced by a new scene.

    Memory: ``pool_size`` x (image + masks + embedding + high-res features), about 0.45 MB
    per entry for the bundled model.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: RuacTrainConfig,
        device: torch.device,
        state: dict | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.model, self.cfg, self.device = model, cfg, device
        self.size = int(model.image_size)
        if state is None:
            self.rng = np.random.default_rng([cfg.seed, 7])
            self.next_seed = cfg.seed * 1_000_000 + _POOL_SEED_OFFSET
            specs = [self._draw_spec() for _ in range(cfg.pool_size)]
        else:
            self.rng, self.next_seed, specs = state["rng"], int(state["next_seed"]), [tuple(s) for s in state["specs"]]
        self.entries: list[_Entry] = []
        for i, spec in enumerate(specs):
            self.entries.append(self._make(spec))
            if progress and (i % 25 == 0 or i == len(specs) - 1):
                progress(i + 1, len(specs))

    def _draw_spec(self) -> tuple[int, int, bool, tuple[int, int, int]]:
        spec = (self.next_seed, *draw_augmentation(self.rng))
        self.next_seed += 1
        return spec  # type: ignore[return-value]

    @torch.no_grad()
    def _make(self, spec) -> _Entry:
        seed, *aug = spec
        s = make_scene(seed, self.cfg.domain, self.cfg.scene_size)
        img, m = augment(s.image, s.masks, tuple(aug))
        embed, high = image_features(self.model, model_input(img[None], self.size, self.device))
        return _Entry(tuple(spec), img, m, embed[0], [h[0] for h in high])

    def refresh(self) -> None:
        """Replace one random entry by a new scene."""
        i = int(self.rng.integers(len(self.entries)))
        self.entries[i] = self._make(self._draw_spec())

    def state(self) -> dict:
        """What :meth:`__init__` needs to rebuild this exact pool."""
        return {"rng": self.rng, "next_seed": self.next_seed, "specs": [e.spec for e in self.entries]}

    def sample(self, n: int, objects: int) -> RuacBatch:
        """n images (with replacement) and up to ``objects`` of each image's objects."""
        picks = self.rng.integers(0, len(self.entries), n)
        entries = [self.entries[int(j)] for j in picks]
        owner, obj, gts = [], [], []
        for b, e in enumerate(entries):
            chosen = self.rng.permutation(len(e.masks))[:objects]
            owner.extend([b] * len(chosen))
            obj.extend(int(c) for c in chosen)
            gts.extend(e.masks[chosen])
        images = np.stack([e.image for e in entries])
        gt = np.stack(gts)
        dev, s = self.device, self.size
        target = _resize_masks(torch.from_numpy(gt).float().to(dev), s // 4, "area")
        return RuacBatch(
            images=images,
            x=model_input(images, s, dev),
            embed=torch.stack([e.embed for e in entries]),
            high=[torch.stack([e.high[i] for e in entries]) for i in range(len(entries[0].high))],
            image_masks=[_resize_masks(torch.from_numpy(e.masks).float().to(dev), s, "nearest") for e in entries],
            owner=torch.as_tensor(owner, dtype=torch.long, device=dev),
            obj=torch.as_tensor(obj, dtype=torch.long, device=dev),
            gt=gt,
            target=target,
        )


# ----------------------------------------------------------------------------- trainer
@dataclass
class _Round:
    coords: torch.Tensor  # (R, K, 2) model-input pixels
    labels: torch.Tensor  # (R, K) int: 1, 0, 2/3 (box corners), -1 padding
    multi: torch.Tensor  # (R,) bool: multimask output (round 0 single clicks only)


class RuacTrainer:
    """The trainable parts (head + attackers), their optimiser and one training step.

    Args:
        cfg: the run configuration.
        model: a SAM2 model; it is frozen here (``requires_grad_(False)``, eval mode).
        device: where everything runs.

    Attributes:
        head: the :class:`BayesianMaskDecoder` on ``model.sam_mask_decoder``.
        style, deform: the attackers.
        opt: AdamW with the groups ``head_mean`` (``lr_head_mean``), ``head_shape``
            (``lr_head``) and ``attackers`` (``lr_attackers``).
        rng: numpy generator of the prompts; gen: torch generator of the Weibull draws.
    """

    def __init__(self, cfg: RuacTrainConfig, model: torch.nn.Module, device: torch.device) -> None:
        self.cfg, self.model, self.device = cfg, model, device
        model.requires_grad_(False)
        model.eval()
        torch.manual_seed(cfg.seed)
        self.head = BayesianMaskDecoder(model.sam_mask_decoder, RuacHeadConfig(**cfg.head)).to(device)
        c = int(model.sam_mask_decoder.transformer_dim)
        self.style = StyleAttacker(feature_dim=c, eps=cfg.style_eps, r=cfg.style_r, use_gcn=cfg.style_gcn,
                                   grl_scale=cfg.grl_scale).to(device)
        self.deform = DeformationAttacker(feature_dim=c, max_displacement=cfg.deform_max_displacement,
                                          grl_scale=cfg.grl_scale).to(device)
        mean_p, shape_p = self.head_parameter_groups()
        self.peak_lr = {"head_mean": cfg.lr_head_mean, "head_shape": cfg.lr_head, "attackers": cfg.lr_attackers}
        self.opt = torch.optim.AdamW(
            [
                {"params": mean_p, "lr": cfg.lr_head_mean, "name": "head_mean"},
                {"params": shape_p, "lr": cfg.lr_head, "name": "head_shape"},
                {"params": self.attacker_parameters(), "lr": cfg.lr_attackers, "name": "attackers"},
            ],
            weight_decay=cfg.weight_decay,
        )
        self.rng = np.random.default_rng([cfg.seed, 11])
        self.gen = torch.Generator(device=device).manual_seed(cfg.seed)
        self.size = int(model.image_size)
        self.pe = None
        self.train_mode()

    def head_parameter_groups(self) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
        """``(mean path, shape networks)``: the head's parameters initialised from SAM2's
        decoder (evidence conv, per-token weight MLPs) and its new Weibull-shape ones."""
        mean_p, shape_p = [], []
        for n, p in self.head.named_parameters():
            if n.startswith("base."):
                continue
            (mean_p if n.startswith(("evidence.", "token_mean.")) else shape_p).append(p)
        return mean_p, shape_p

    def attacker_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.style.parameters(), *self.deform.parameters()]

    def train_mode(self) -> None:
        """Head and attackers in training mode; the wrapped SAM2 decoder stays in eval."""
        self.head.train()
        self.head.base.eval()
        self.style.train()
        self.deform.train()

    # -- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "head": self.head.head_state_dict(),
            "style": self.style.state_dict(),
            "deform": self.deform.state_dict(),
            "opt": self.opt.state_dict(),
            "rng": self.rng,
            "gen": self.gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.head.load_state_dict(state["head"], strict=False)
        self.style.load_state_dict(state["style"])
        self.deform.load_state_dict(state["deform"])
        self.opt.load_state_dict(state["opt"])
        self.rng = state["rng"]
        self.gen.set_state(state["gen"])

    # -- decoding ---------------------------------------------------------------------
    def decode(
        self, embed: torch.Tensor, high: list[torch.Tensor], coords: torch.Tensor, labels: torch.Tensor,
        multimask: bool, mode: str, compute_kl: bool = False,
    ) -> RuacDecoderOutput:
        """Prompt encoder + head on one embedding per row."""
        sparse, dense = self.model.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        return self.head(
            image_embeddings=embed, image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask,
            repeat_image=False, high_res_features=high, mode=mode, generator=self.gen, compute_kl=compute_kl,
        )

    def _row_losses(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, M, h, w) logits vs (B, h, w) targets -> (B, M) per-mask losses."""
        b, m = logits.shape[:2]
        lg = logits.flatten(0, 1)
        tg = target[:, None].expand_as(logits).flatten(0, 1)
        cfg = self.cfg
        per = cfg.focal_weight * focal_loss(lg, tg, cfg.focal_alpha, cfg.focal_gamma) + cfg.dice_weight * dice_loss(lg, tg)
        return per.view(b, m)

    @torch.no_grad()
    def _mean_masks(self, batch: RuacBatch, rnd: _Round) -> np.ndarray:
        """(R, Ss, Ss) bool masks of the head's analytic mean (multimask rows: best
        predicted IoU), the prediction a user would correct."""
        r = len(rnd.multi)
        low = torch.empty(r, 1, self.size // 4, self.size // 4, device=self.device)
        for mm in (True, False):
            idx = (rnd.multi == mm).nonzero()[:, 0]
            if len(idx) == 0:
                continue
            own = batch.owner[idx]
            out = self.decode(batch.embed[own], [h[own] for h in batch.high], rnd.coords[idx], rnd.labels[idx], mm, "analytic")
            best = out.iou_pred.argmax(1)
            low[idx] = out.logits[torch.arange(len(idx), device=self.device), best][:, None]
        ss = batch.gt.shape[-1]
        return (F.interpolate(low, size=(ss, ss), mode="bilinear", align_corners=False)[:, 0] > 0).cpu().numpy()

    def make_prompts(self, batch: RuacBatch) -> list[_Round]:
        """The ``cfg.rounds`` prompt sets of every row (module docstring, step 1)."""
        cfg, rng = self.cfg, self.rng
        scale = self.size / batch.gt.shape[-1]
        if cfg.prompt_mode == "mixed":
            init = [_initial_prompt(m, rng, cfg) for m in batch.gt]
            points = [p for p, _, _ in init]
            labels = [np.asarray(l) for _, l, _ in init]
            multi = torch.tensor([bool(mm) for _, _, mm in init], device=self.device)
        else:
            points = [first_click(m, rng)[None] for m in batch.gt]
            labels = [np.ones(1, np.int64) for _ in batch.gt]
            multi = torch.ones(len(points), dtype=torch.bool, device=self.device)
        rounds = []
        for r in range(cfg.rounds):
            coords, labs = _pad(points, labels)
            rnd = _Round(
                (coords * scale).to(self.device), labs.to(self.device),
                multi if r == 0 else torch.zeros_like(multi),
            )
            rounds.append(rnd)
            if r + 1 == cfg.rounds:
                break
            pred = self._mean_masks(batch, rnd)
            for i in range(len(points)):
                if cfg.prompt_mode == "mixed":
                    c = _error_click(pred[i], batch.gt[i], rng, cfg.p_rule_click)
                else:
                    c = protocol_click(pred[i], batch.gt[i], points[i], MIN_CLICK_SEPARATION)
                if c is not None:
                    points[i] = np.concatenate([points[i], c[0][None]]).astype(np.float32)
                    labels[i] = np.concatenate([labels[i], [c[1]]])
        return rounds

    # -- losses -------------------------------------------------------------------------
    def clean_losses(
        self, batch: RuacBatch, rounds: list[_Round], with_kl: bool, mode: str = "sample"
    ) -> dict[str, torch.Tensor]:
        """Segmentation loss on sampled (``mode="sample"``) or mean (``"analytic"``) logits
        and the KL, mean over rows and rounds."""
        seg_sum = torch.zeros((), device=self.device)
        unc_sum = torch.zeros((), device=self.device)
        kl_sum = torch.zeros((), device=self.device)
        hits = torch.zeros((), device=self.device)
        r_total = 0
        for rnd in rounds:
            for mm in (True, False):
                idx = (rnd.multi == mm).nonzero()[:, 0]
                if len(idx) == 0:
                    continue
                own = batch.owner[idx]
                out = self.decode(batch.embed[own], [h[own] for h in batch.high], rnd.coords[idx], rnd.labels[idx],
                                  mm, mode, with_kl)
                tgt = batch.target[idx]
                per = self._row_losses(out.logits, tgt)
                best = per.detach().argmin(1)
                rows = torch.arange(len(idx), device=self.device)
                seg_sum = seg_sum + per[rows, best].sum()
                kl_sum = kl_sum + out.kl * len(idx)
                with torch.no_grad():
                    hits = hits + hard_iou(out.logits[rows, best], tgt).sum()
                    unc_sum = unc_sum + out.uncertainty[rows, best].mean((1, 2)).sum()
            r_total += len(rnd.multi)
        return {"seg": seg_sum / r_total, "kl": kl_sum / r_total, "iou_sample": hits / r_total, "unc": unc_sum / r_total}

    def adversarial_losses(
        self, batch: RuacBatch, rnd: _Round, with_kl: bool, keep_outputs: bool = False
    ) -> dict[str, Any]:
        """Attack the batch's images, re-encode them, decode ``rnd`` on them.

        Returns:
            ``seg``, ``kl``, ``cal`` (0-d tensors) and detached diagnostics; with
            ``keep_outputs`` also ``out`` (:class:`RuacDecoderOutput`), ``target`` and
            ``attacked`` (the attacked images), for tests.
        """
        xs, sdiag = self.style(batch.x, batch.image_masks, batch.embed)
        xa, warped, ddiag = self.deform(xs, batch.image_masks, batch.embed)
        # Frozen encoder, autograd on: the gradient reaches the attacked image (and the
        # attackers behind it), never the encoder's parameters (requires_grad off).
        embed_a, high_a = image_features(self.model, xa)
        own = batch.owner
        tgt_full = torch.stack([warped[int(o)][int(j)] for o, j in zip(own, batch.obj)])
        target = _resize_masks(tgt_full.float(), self.size // 4, "area")
        out = self.decode(embed_a[own], [h[own] for h in high_a], rnd.coords, rnd.labels, False, "sample", with_kl)
        logits = out.logits[:, 0]
        seg = self._row_losses(out.logits, target)[:, 0].mean()
        cal = calibration_loss(torch.sigmoid(logits), target, out.sampled_entropy[:, 0], out.uncertainty[:, 0])
        res: dict[str, Any] = {"seg": seg, "kl": out.kl, "cal": cal}
        with torch.no_grad():
            res["iou_sample_adv"] = hard_iou(logits, target).mean()
            res["unc_adv"] = out.uncertainty.mean()
            res["style_shift"] = sdiag["mean_abs_shift"]
            res["style_scale"] = sdiag["mean_abs_scale_delta"]
            res["deform_px"] = ddiag["mean_displacement_px"]
            res["image_delta"] = (xa - batch.x).abs().mean()
        if keep_outputs:
            res.update(out=out, target=target, attacked=xa)
        return res

    def losses(self, batch: RuacBatch, rounds: list[_Round], step: int) -> dict[str, Any]:
        """All loss terms of a step and their weighted total (module docstring, step 4)."""
        w = self.cfg.weights(step)
        mode = "analytic" if self.cfg.phase1_mean and self.cfg.phase(step) == 1 else "sample"
        clean = self.clean_losses(batch, rounds, with_kl=w["kl"] > 0, mode=mode)
        total = w["seg"] * clean["seg"] + w["kl"] * clean["kl"]
        parts: dict[str, Any] = dict(clean)
        if w["adv"] > 0:
            sub, rows = batch.subset(self.cfg.adv_images)
            last = rounds[-1]
            rnd = _Round(last.coords[rows], last.labels[rows], last.multi[rows])
            adv = self.adversarial_losses(sub, rnd, with_kl=w["kl"] > 0)
            total = total + w["adv"] * (adv["seg"] + w["kl"] * adv["kl"] + w["cal"] * adv["cal"])
            parts.update({"seg_adv" if k == "seg" else "kl_adv" if k == "kl" else k: v for k, v in adv.items()})
        parts["total"] = total
        parts["weights"] = w
        return parts

    def step(self, batch: RuacBatch, step: int) -> dict[str, float]:
        """One optimiser step at 0-based ``step``; returns scalar statistics."""
        cfg = self.cfg
        f = cfg.lr_factor(step)
        for g in self.opt.param_groups:
            g["lr"] = self.peak_lr[g["name"]] * f
        rounds = self.make_prompts(batch)
        parts = self.losses(batch, rounds, step)
        self.opt.zero_grad(set_to_none=True)
        parts["total"].backward()
        gh = torch.nn.utils.clip_grad_norm_(self.head.head_parameters(), cfg.grad_clip)
        stats = {"grad_norm_head": float(gh)}
        if parts["weights"]["adv"] > 0:
            ga = torch.nn.utils.clip_grad_norm_(self.attacker_parameters(), cfg.grad_clip)
            stats["grad_norm_attackers"] = float(ga)
        self.opt.step()
        for k, v in parts.items():
            if isinstance(v, torch.Tensor):
                stats[k] = float(v.detach())
        stats["phase"] = float(cfg.phase(step))
        stats["lr_head"] = self.peak_lr["head_shape"] * f
        return stats


# ----------------------------------------------------------------------------- run folder
def _normalised(d: dict) -> dict:
    return yaml.safe_load(yaml.safe_dump(d))


def config_differences(saved: dict, cfg: RuacTrainConfig) -> list[str]:
    """Fields (other than :data:`RESUME_FREE_FIELDS`) where ``saved`` and ``cfg`` differ."""
    now = _normalised(cfg.to_dict())
    keys = sorted((set(saved) | set(now)) - set(RESUME_FREE_FIELDS))
    return [f"{k}: run folder {saved.get(k)!r} vs now {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


def evaluate_heldout(
    seg: Segmenter, head: BayesianMaskDecoder, cfg: RuacTrainConfig, mc_samples: int = 20
) -> dict[str, dict[str, float]]:
    """3-click protocol on ``cfg.eval_scenes`` held-out scenes of the training domain:
    the base decoder vs the head (analytic and MC uncertainty), same clicks for all."""
    scenes = ProceduralScenes(cfg.domain, cfg.eval_scenes, seed=EVAL_SEED, size=cfg.scene_size)
    scenes = [scenes[i] for i in range(len(scenes))]
    embs = [seg.encode(s.image) for s in scenes]
    clicks = three_click_protocol(seg, scenes, max_objects=cfg.eval_objects, seed=cfg.seed, embeddings=embs)
    head.eval()
    out = {
        "base": evaluate_method(seg, None, scenes, clicks, "base", embeddings=embs),
        "ruac": evaluate_method(seg, head, scenes, clicks, "analytic", embeddings=embs),
        "ruac_mc": evaluate_method(seg, head, scenes, clicks, "mc", mc_samples, seed=cfg.seed, embeddings=embs),
    }
    return out


def train_ruac(
    cfg: RuacTrainConfig,
    out: str | Path,
    resume: bool = False,
    progress: Callable[[str, int, int, dict], None] | None = None,
) -> dict[str, Any]:
    """Train a RUAC head; writes the run folder ``out`` (see the module docstring).

    Args:
        cfg: the configuration.
        out: run folder.
        resume: continue from ``out/last.pt``; the folder's ``config.yaml`` must match
            ``cfg`` (except :data:`RESUME_FREE_FIELDS`).
        progress: ``progress(what, i, n, stats)`` with ``what`` in ``"pool"`` (scenes
            encoded), ``"train"`` (steps, with the step's statistics), ``"eval"``.

    Returns:
        The metrics written to ``metrics.json``: ``final`` (``base`` / ``ruac`` /
        ``ruac_mc`` held-out metrics, empty if ``eval_scenes`` is 0), ``history``,
        ``steps``, ``wall_clock_s``, ``s_per_step`` and ``cpu_s_per_step`` (wall and
        process CPU seconds by curriculum phase, this process), ``torch_threads``.

    Raises:
        FileNotFoundError: ``resume`` without ``out/last.pt``.
        ValueError: ``resume`` with a config that differs from the folder's, a corrupt
            ``last.pt``, a head/model mismatch, or a bad ``device``.
    """
    device = resolve_device(cfg.device)  # a bad device fails before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    last = out / LAST_FILENAME
    cfg_file = out / CONFIG_FILENAME
    state = None
    if resume:
        if not last.is_file():
            raise FileNotFoundError(f"cannot resume: {last} not found (start the run without --resume)")
        if cfg_file.is_file():
            diff = config_differences(yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}, cfg)
            if diff:
                raise ValueError(f"cannot resume {out}: its config.yaml differs from this config ("
                                 + "; ".join(diff) + "); resume with the run's own config, or use a new --out")
        try:
            state = torch.load(last, map_location="cpu", weights_only=False)
            int(state["step"])
        except Exception as exc:  # corrupt or foreign file
            raise ValueError(f"corrupt run folder {out}: cannot read {LAST_FILENAME}: {exc}") from None
    if not cfg_file.is_file() or not resume:
        io.save_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), cfg_file)

    from ppd.segmenter import load_segmenter

    seg = load_segmenter(cfg.model, checkpoint=cfg.checkpoint or None, device=device, cache_size=0)
    trainer = RuacTrainer(cfg, seg.model, device)
    step, history, elapsed = 0, [], 0.0
    if state is not None:
        trainer.load_state_dict(state)
        step, history, elapsed = int(state["step"]), list(state["history"]), float(state["elapsed"])
        logger.info("resuming %s at step %d", out, step)
    pool_cb = (lambda i, n: progress("pool", i, n, {})) if progress else None
    pool = EmbeddedScenePool(seg.model, cfg, device, state["pool"] if state is not None else None, pool_cb)

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "tb"), purge_step=step if state is not None else None)
    meta = {"model": cfg.model, "checkpoint": cfg.checkpoint, "aue": cfg.aue, "seed": cfg.seed}

    def checkpoint(partial: bool) -> None:
        io.save_torch({**trainer.state_dict(), "step": step, "history": history, "elapsed": time.time() - t0,
                       "pool": pool.state(), "config": cfg.to_dict()}, last)
        save_head(out / HEAD_FILENAME, trainer.head, meta={**meta, "steps": step, "partial": partial})

    t0 = time.time() - elapsed
    phase_time: dict[int, list[float]] = {p: [0.0, 0, 0.0] for p in (1, 2, 3)}  # wall s, steps, CPU s
    window: dict[str, list[float]] = {}
    while step < cfg.steps:
        ts, tc = time.perf_counter(), time.process_time()
        batch = pool.sample(cfg.batch_size, cfg.objects_per_image)
        stats = trainer.step(batch, step)
        if cfg.refresh_every and (step + 1) % cfg.refresh_every == 0:
            pool.refresh()
        dt, dc = time.perf_counter() - ts, time.process_time() - tc
        ph = cfg.phase(step)
        phase_time[ph][0] += dt
        phase_time[ph][1] += 1
        phase_time[ph][2] += dc
        stats["step_s"] = dt
        stats["step_cpu_s"] = dc
        step += 1
        for k, v in stats.items():
            window.setdefault(k, []).append(v)
        if step % cfg.log_every == 0 or step == cfg.steps:
            avg = {k: float(np.mean(v)) for k, v in window.items()}
            for k, v in avg.items():
                writer.add_scalar(f"ruac/train/{k}", v, step)
            history.append({"step": step, "time_s": round(time.time() - t0, 1), **avg})
            window = {}
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpoint(partial=step < cfg.steps)
        if progress:
            progress("train", step, cfg.steps, stats)
    wall = time.time() - t0
    writer.flush()

    final: dict[str, dict[str, float]] = {}
    if cfg.eval_scenes:
        if progress:
            progress("eval", 0, 1, {})
        eval_seg = Segmenter(seg.model, cfg.model, device=device, cache_size=0, precision=seg.precision)
        final = evaluate_heldout(eval_seg, trainer.head, cfg)
        trainer.train_mode()
        for method, res in final.items():
            for k, v in res.items():
                if isinstance(v, float) and math.isfinite(v):
                    writer.add_scalar(f"ruac/eval/{method}_{k}", v, step)
        logger.info("held-out %s: %s", cfg.domain, {m: round(r["pavpu"], 4) for m, r in final.items()})
        if progress:
            progress("eval", 1, 1, {})
    writer.close()
    metrics = {
        "final": final,
        "history": history,
        "steps": cfg.steps,
        "wall_clock_s": round(wall, 1),
        "s_per_step": {f"phase{p}": round(t / n, 3) for p, (t, n, _) in phase_time.items() if n},
        "cpu_s_per_step": {f"phase{p}": round(c / n, 3) for p, (_, n, c) in phase_time.items() if n},
        "torch_threads": torch.get_num_threads(),
        "eval_domain": cfg.domain,
        "eval_seed": EVAL_SEED,
    }
    save_head(out / HEAD_FILENAME, trainer.head, meta={**meta, "steps": step, "partial": False, "eval": final})
    io.save_json(io.json_safe(metrics), out / METRICS_FILENAME)
    return metrics
