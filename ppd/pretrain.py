"""``ppd pretrain``: train the bundled ``sam2-tiny-synthetic`` model from scratch.

A SAM-style interactive recipe on procedural scenes (:mod:`ppd.data.scenes`):

* each step encodes a batch of images once and decodes ``rounds`` prompt rounds on it;
* round 0: a single positive click (multimask output, loss on the best of the three
  masks, as SAM), 1..``max_clicks`` random positive/negative clicks, or a box;
* later rounds add a corrective click from the previous prediction's error (the
  SAM/RITM rule some of the time, a random point of the larger error region otherwise);
* loss = ``focal_weight`` * focal + ``dice_weight`` * dice + ``iou_weight`` * MSE of
  the predicted IoU, summed over rounds, plus ``instance_weight`` * an auxiliary dense
  instance-discrimination loss on the image features (:func:`instance_loss`). Without
  it the model trained from scratch learned to ignore the click: the same mask for every
  click on an image (logits changed by 0.5% between two clicks, the clicked object
  picked as often as chance). With it, and the prompt path at ``decoder_lr_scale`` x
  the learning rate, held-out 1-click mIoU at step 1200 went from ~0.2 to 0.72;
* AdamW (prompt encoder and mask decoder at ``decoder_lr_scale`` x ``lr``), linear
  warm-up then cosine decay; scenes come from a pool that is refreshed
  with new scenes every step (drawing a scene costs ~25 ms, a step ~0.8 s at 2 threads);
* optionally a curriculum: the first ``curriculum_steps`` draw a falling share of their
  images from the ``simple`` generator (flat, untextured, well-contrasted objects). It
  helps early (after 600 steps, 1-click mIoU on 24 held-out training-domain scenes 0.189
  with simple scenes only, 0.154 without) but not later (a 4800-step run with a 1500-step
  curriculum scored 0.209 at step 2400, the previous recipe, without the instance loss, 0.231 at step 2000), so it is
  off by default.

Everything is seeded; a run folder holds ``config.json``, ``last.pt`` (resumable),
``model.pt`` (the shippable fp16 checkpoint) and ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ppd import io
from ppd.data.scenes import (
    CURRICULUM_DOMAIN,
    DOMAINS,
    TRAIN_DOMAIN,
    ProceduralScenes,
    augment,
    draw_augmentation,
    make_scene,
)
from ppd.metrics import iou as iou_metric
from ppd.models import BUNDLED_NAME, new_tiny_model, tiny_model_config
from ppd.prompts import corrective_click, farthest_click
from ppd.ruac.losses import dice_loss, focal_loss
from ppd.segmenter import IMAGENET_MEAN, IMAGENET_STD, Segmenter, image_features

logger = logging.getLogger(__name__)


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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Held-out evaluation scenes use seeds far from any training seed.
EVAL_SEED = 10_000_000


# ----------------------------------------------------------------------------- losses
def hard_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, h, w) logits vs (soft) targets -> (B,) IoU of ``logits > 0`` vs ``target > 0.5``
    (1 when both are empty)."""
    pred = logits > 0
    t = target > 0.5
    inter = (pred & t).flatten(1).sum(1).float()
    union = (pred | t).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


# ----------------------------------------------------------------------------- clicks
def _error_click(pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator, p_rule: float):
    """A corrective click: the SAM/RITM rule, or a random interior point of the larger error."""
    if rng.random() < p_rule:
        return corrective_click(pred, gt)
    fn, fp = gt & ~pred, pred & ~gt
    nfn, nfp = int(fn.sum()), int(fp.sum())
    if nfn + nfp == 0:
        return None
    region, label = (fn, 1) if nfn >= nfp else (fp, 0)
    dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    w = dist[region] ** 2
    ys, xs = np.nonzero(region)
    i = rng.choice(len(ys), p=w / w.sum())
    return np.array([xs[i], ys[i]], dtype=np.float32), label


def _initial_prompt(mask: np.ndarray, rng: np.random.Generator, cfg: PretrainConfig):
    """Round-0 prompt for one object: (points (K,2), labels (K,), multimask flag).

    Boxes are expressed as two points with labels 2 / 3, which is how SAM2's prompt
    encoder receives them (``SAM2ImagePredictor._predict`` does the same).
    """
    H, W = mask.shape
    r = rng.random()
    if r < cfg.p_box:
        ys, xs = np.nonzero(mask)
        x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
        w, h = x1 - x0 + 1, y1 - y0 + 1
        jitter = rng.normal(0, 0.05, 4) * np.array([w, h, w, h])
        box = np.clip(np.array([x0, y0, x1, y1]) + jitter, 0, [W - 1, H - 1, W - 1, H - 1])
        return box.reshape(2, 2).astype(np.float32), np.array([2, 3]), False
    inside = np.argwhere(mask)
    if r < cfg.p_box + cfg.p_multi_click:
        k = int(rng.integers(2, cfg.max_clicks + 1))
        n_pos = int(rng.integers(1, k + 1))
        outside = np.argwhere(~mask)
        pos = inside[rng.integers(0, len(inside), n_pos)]
        neg = outside[rng.integers(0, len(outside), k - n_pos)] if len(outside) else pos[:0]
        pts = np.concatenate([pos, neg])[:, ::-1].astype(np.float32)
        labels = np.array([1] * len(pos) + [0] * len(neg))
        return pts, labels, False
    # one positive click, biased towards the interior (SAM samples uniformly; interior
    # clicks are what users and the farthest-point protocol give)
    if rng.random() < 0.5:
        dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1][mask]
        i = rng.choice(len(inside), p=dist / dist.sum())
    else:
        i = rng.integers(0, len(inside))
    return inside[i][::-1].astype(np.float32)[None], np.array([1]), True


def _pad(points: list[np.ndarray], labels: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    k = max(len(p) for p in points)
    P = np.zeros((len(points), k, 2), np.float32)
    L = -np.ones((len(points), k), np.int64)
    for i, (p, l) in enumerate(zip(points, labels)):
        P[i, : len(p)], L[i, : len(l)] = p, l
    return torch.from_numpy(P), torch.from_numpy(L).int()


# ----------------------------------------------------------------------------- data
class ScenePool:
    """Training examples (image, object masks) drawn from refreshed pools of scenes.

    The main pool holds ``pool_size`` scenes of ``cfg.domain``; with a curriculum a second
    pool of ``pool_size // 3`` scenes of the simple generator serves the share of images
    that :func:`simple_share` gives. Each pool replaces one random scene per
    :meth:`refresh` (the simple pool only while it is still used).
    """

    def __init__(
        self,
        cfg: PretrainConfig,
        rng: np.random.Generator,
        progress: Callable[[str, int, int], None] | None = None,
        state: dict | None = None,
    ):
        """``state`` (from :meth:`state_dict`) rebuilds a pool exactly: scenes are pure
        functions of their seeds, so the seeds are all that is saved."""
        self.cfg, self.rng = cfg, rng
        self.next_seed = cfg.seed * 1_000_000
        self.next_simple_seed = cfg.seed * 1_000_000
        n_simple = max(1, cfg.pool_size // 3) if cfg.curriculum_steps > 0 else 0
        if state is not None:
            self.rng, self.next_seed, self.next_simple_seed = state["rng"], state["next_seed"], state["next_simple_seed"]
        seeds = state["seeds"] if state else range(self.next_seed, self.next_seed + cfg.pool_size)
        simple_seeds = state["simple_seeds"] if state else range(self.next_simple_seed, self.next_simple_seed + n_simple)
        if state is None:
            self.next_seed += len(seeds)
            self.next_simple_seed += len(simple_seeds)
        todo = [(cfg.domain, s) for s in seeds] + [(CURRICULUM_DOMAIN, s) for s in simple_seeds]
        self.scenes, self.simple = [], []
        for i, (domain, seed) in enumerate(todo):
            (self.scenes if i < len(seeds) else self.simple).append(
                make_scene(int(seed), domain, cfg.scene_size)
            )
            if progress and (i % 50 == 0 or i == len(todo) - 1):
                progress("pool", i + 1, len(todo))

    def state_dict(self) -> dict:
        return {
            "rng": self.rng,
            "next_seed": self.next_seed,
            "next_simple_seed": self.next_simple_seed,
            "seeds": [s.seed for s in self.scenes],
            "simple_seeds": [s.seed for s in self.simple],
        }

    def refresh(self, simple: bool = False) -> None:
        """Replace one random scene of the main pool (and of the simple pool if ``simple``)."""
        self.scenes[int(self.rng.integers(len(self.scenes)))] = make_scene(self.next_seed, self.cfg.domain, self.cfg.scene_size)
        self.next_seed += 1
        if simple and self.simple:
            self.simple[int(self.rng.integers(len(self.simple)))] = make_scene(
                self.next_simple_seed, CURRICULUM_DOMAIN, self.cfg.scene_size
            )
            self.next_simple_seed += 1

    def sample(
        self, n: int, objects: int = 1, p_simple: float = 0.0, labels: bool = False
    ) -> tuple[np.ndarray, ...]:
        """n images, randomly rotated/flipped/channel-permuted, and up to ``objects``
        object masks of each: ``(n, S, S, 3) uint8, (R, S, S) bool, owner (R,) int``
        where ``owner[r]`` is the image of mask row r. Each image comes from the simple
        pool with probability ``p_simple``. With ``labels``, a fourth array ``(n, S, S)``
        int16 gives every pixel's instance (0 background, k: the scene's k-th instance)."""
        imgs, masks, owner, lab = [], [], [], []
        for b in range(n):
            pool = self.simple if self.simple and self.rng.random() < p_simple else self.scenes
            s = pool[int(self.rng.integers(len(pool)))]
            pick = self.rng.permutation(s.num_objects)[:objects]
            img, m = augment(s.image, s.masks, draw_augmentation(self.rng))
            imgs.append(img)
            masks.extend(m[pick])
            owner.extend([b] * len(pick))
            if labels:
                lab.append((m * np.arange(1, s.num_objects + 1, dtype=np.int16)[:, None, None]).max(0))
        out = (np.stack(imgs), np.stack(masks), np.asarray(owner))
        return (*out, np.stack(lab)) if labels else out


def simple_share(step: int, cfg: PretrainConfig) -> float:
    """Share of training images from the simple generator at ``step`` (curriculum)."""
    if cfg.curriculum_steps <= 0:
        return 0.0
    return max(0.0, 1.0 - step / cfg.curriculum_steps)


# ----------------------------------------------------------------------------- training
def lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def model_input(imgs: np.ndarray, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, H, W, 3) uint8 batch -> (N, 3, size, size) normalised model input, with the
    ops of :func:`ppd.segmenter.preprocess` (ImageNet mean/std, antialiased bilinear resize)."""
    x = torch.from_numpy(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2).float().to(device) / 255.0
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def instance_onehot(inst: torch.Tensor) -> torch.Tensor:
    """(N, H, W) instance ids -> (N, K, H, W) float one-hot, K = max id + 1."""
    return F.one_hot(inst.long(), int(inst.max()) + 1).permute(0, 3, 1, 2).float()


def instance_loss(feat: torch.Tensor, inst: torch.Tensor, temperature: float) -> torch.Tensor:
    """Dense instance discrimination: (N, C, h, w) features, (N, H, W) instance ids (or
    their :func:`instance_onehot`, (N, K, H, W) float, to share it between feature maps).

    Each feature cell takes the majority instance of its pixels (cells with no majority
    over 60% are skipped); per image, the L2-normalised mean feature of each instance
    is its prototype, and every cell is classified among its image's prototypes by
    cosine similarity / ``temperature`` (cross-entropy). It asks the encoder for what
    SAM's decoder needs to bind a click to an object: features that are alike within an
    object and unlike across objects and the background.
    """
    N, C, h, w = feat.shape
    onehot = inst if inst.dim() == 4 else instance_onehot(inst)
    frac = F.adaptive_avg_pool2d(onehot, (h, w))  # (N, K, h, w) share of each instance
    share, label = frac.max(1)
    valid = share > 0.6
    f = F.normalize(feat, dim=1)
    w_k = frac * valid[:, None]  # prototypes from confidently labelled cells
    proto = F.normalize(torch.einsum("nkhw,nchw->nkc", w_k, f), dim=-1)  # (N, K, C)
    present = w_k.flatten(2).sum(-1) > 0  # (N, K)
    logits = torch.einsum("nchw,nkc->nhwk", f, proto) / temperature
    logits = logits.masked_fill(~present[:, None, None, :], float("-inf"))
    keep = valid & (present.sum(1) > 1)[:, None, None]
    if not bool(keep.any()):
        return feat.sum() * 0.0
    return F.cross_entropy(logits[keep], label[keep])


def train_step(
    model,
    opt,
    imgs: np.ndarray,
    masks: np.ndarray,
    owner: np.ndarray,
    cfg: PretrainConfig,
    rng: np.random.Generator,
    inst: np.ndarray | None = None,
) -> dict:
    """One optimiser step: encode the images once, decode ``cfg.rounds`` prompt rounds
    for every mask row (row r lies on image ``owner[r]``). ``inst`` (N, S, S) instance
    ids feed the auxiliary instance loss when ``cfg.instance_weight`` > 0."""
    S = model.image_size
    dev = next(model.parameters()).device
    x = model_input(imgs, S, dev)
    target = torch.from_numpy(masks).float().to(dev)
    if cfg.loss_size and cfg.loss_size != target.shape[-1]:
        target = F.interpolate(target[:, None], size=(cfg.loss_size, cfg.loss_size), mode="area")[:, 0]
    scale = S / masks.shape[-1]
    embed, high = image_features(model, x)
    total = torch.zeros((), device=dev)
    stats = {}
    if cfg.instance_weight and inst is not None:
        onehot = instance_onehot(torch.from_numpy(inst).to(dev))  # once for both feature maps
        aux = sum(instance_loss(f, onehot, cfg.instance_temperature) for f in (embed, high[1]))
        total = total + cfg.instance_weight * aux
        stats["instance_loss"] = float(aux.detach())
    idx = torch.from_numpy(owner).long().to(dev)
    embed, high = embed[idx], [h[idx] for h in high]
    dec = model.sam_mask_decoder
    pe = model.sam_prompt_encoder.get_dense_pe()

    prompts = [_initial_prompt(m, rng, cfg) for m in masks]
    points = [p for p, _, _ in prompts]
    labels = [l for _, l, _ in prompts]
    multi = torch.tensor([mm for _, _, mm in prompts], device=dev)
    for r in range(cfg.rounds):
        P, L = (t.to(dev) for t in _pad(points, labels))
        sparse, dense = model.sam_prompt_encoder(points=(P * scale, L), boxes=None, masks=None)
        # predict_masks returns all four masks: index 0 single-mask, 1..3 multimask
        logits, iou_pred, _, _ = dec.predict_masks(embed, pe, sparse, dense, repeat_image=False, high_res_features=high)
        up = logits
        if up.shape[-1] != target.shape[-1]:
            up = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        B = up.shape[0]
        tgt = target[:, None].expand_as(up)
        per = cfg.focal_weight * focal_loss(up.flatten(0, 1), tgt.flatten(0, 1), cfg.focal_alpha, cfg.focal_gamma) + cfg.dice_weight * dice_loss(
            up.flatten(0, 1), tgt.flatten(0, 1)
        )
        per = per.view(B, 4)
        true_iou = hard_iou(up.flatten(0, 1).detach(), tgt.flatten(0, 1)).view(B, 4)
        use_multi = multi if r == 0 else torch.zeros(B, dtype=torch.bool, device=dev)
        best = per[:, 1:].detach().argmin(1) + 1
        idx = torch.where(use_multi, best, torch.zeros_like(best))
        rows = torch.arange(B, device=dev)
        mask_loss = per[rows, idx]
        # IoU head: supervise all three multimask outputs on multimask rows, mask 0 otherwise
        iou_err = (iou_pred - true_iou) ** 2
        iou_loss = torch.where(use_multi, iou_err[:, 1:].mean(1), iou_err[:, 0])
        total = total + (mask_loss + cfg.iou_weight * iou_loss).mean()
        stats[f"iou_r{r}"] = float(true_iou[rows, idx].mean())
        if r + 1 < cfg.rounds:
            with torch.no_grad():
                chosen = logits[rows, idx][:, None]
                pred = (F.interpolate(chosen, size=masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0] > 0).cpu().numpy()
            for i in range(B):
                c = _error_click(pred[i], masks[i], rng, cfg.p_rule_click)
                if c is not None:
                    points[i] = np.concatenate([points[i], c[0][None]])
                    labels[i] = np.concatenate([labels[i], [c[1]]])
    opt.zero_grad(set_to_none=True)
    total.backward()
    gn = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    stats["loss"] = float(total.detach())
    stats["grad_norm"] = float(gn)
    return stats


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    """Image encoder, prompt encoder, mask decoder and ``no_mem_embed`` (the image path)."""
    return [p for g in parameter_groups(model) for p in g["params"]]


def parameter_groups(model, decoder_lr_scale: float = 1.0) -> list[dict]:
    """Optimiser groups: the image path (encoder, ``no_mem_embed``) and the prompt path
    (prompt encoder, mask decoder), whose learning rate is ``lr_scale`` times the base."""
    return [
        {"params": [*model.image_encoder.parameters(), model.no_mem_embed], "lr_scale": 1.0},
        {
            "params": [*model.sam_prompt_encoder.parameters(), *model.sam_mask_decoder.parameters()],
            "lr_scale": decoder_lr_scale,
        },
    ]


def export_checkpoint(model, cfg: PretrainConfig, path: Path, meta: dict) -> Path:
    """The shippable checkpoint: ``{"model": fp16 state_dict, "config", "meta"}``."""
    state = {k: (v.half() if v.is_floating_point() else v).cpu() for k, v in model.state_dict().items()}
    return io.save_torch({"model": state, "config": cfg.model, "meta": meta}, path)


def evaluate_clicks(seg: Segmenter, scenes, n_clicks: int = 3, max_objects: int = 3) -> dict:
    """Interactive evaluation: farthest-from-boundary first click (multimask, best
    predicted IoU), then corrective clicks by the SAM/RITM rule.

    Returns ``{"miou@1": .., ..., "miou@n": .., "objects": N}`` over the first
    ``max_objects`` objects of each scene.
    """
    ious = [[] for _ in range(n_clicks)]
    for scene in scenes:
        emb = seg.encode(scene.image)
        for gt in scene.masks[:max_objects]:
            ps = farthest_click(gt)
            pts, lab = ps.point_coords, ps.point_labels
            for k in range(n_clicks):
                pred = seg.predict(emb, pts, lab, multimask=(k == 0)).masks[0]
                ious[k].append(float(iou_metric(pred, gt)))
                c = corrective_click(pred, gt)
                if c is None:  # perfect: the remaining rounds keep the same score
                    for kk in range(k + 1, n_clicks):
                        ious[kk].append(ious[k][-1])
                    break
                pts = np.concatenate([pts, c[0][None]]).astype(np.float32)
                lab = np.concatenate([lab, [c[1]]])
    out = {f"miou@{k + 1}": float(np.mean(v)) for k, v in enumerate(ious)}
    out["objects"] = len(ious[0])
    return out


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


def pretrain(
    cfg: PretrainConfig,
    out: str | Path,
    resume: bool = False,
    progress: Callable[[str, int, int, dict], None] | None = None,
) -> dict:
    """Train the tiny model; returns the final metrics. See the module docstring."""
    if cfg.domain not in DOMAINS:
        raise ValueError(f"unknown domain {cfg.domain!r}; known: {', '.join(DOMAINS)}")
    device = resolve_device(cfg.device)  # a bad device fails before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    io.save_json(cfg.to_dict(), out / "config.json")
    rng = np.random.default_rng(cfg.seed)
    model = new_tiny_model(cfg.model, seed=cfg.seed).to(device)
    opt = torch.optim.AdamW(parameter_groups(model, cfg.decoder_lr_scale), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, history, elapsed = 0, [], 0.0
    last = out / "last.pt"
    if resume and last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, history, elapsed = state["step"], state["history"], state["elapsed"]
        rng = state["rng"]
        logger.info("resumed from %s at step %d", last, step)
    pool = ScenePool(
        cfg,
        np.random.default_rng([cfg.seed, 1]),
        (lambda w, i, n: progress(w, i, n, {})) if progress else None,
        state=state["pool"] if resume and last.is_file() else None,
    )
    eval_scenes = ProceduralScenes(cfg.domain, cfg.eval_scenes, seed=EVAL_SEED, size=cfg.scene_size)
    t0 = time.time() - elapsed
    model.train()
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg) * g.get("lr_scale", 1.0)
        p_simple = simple_share(step, cfg)
        imgs, masks, owner, *inst = pool.sample(cfg.batch_size, cfg.objects_per_image, p_simple, labels=cfg.instance_weight > 0)
        stats = train_step(model, opt, imgs, masks, owner, cfg, rng, inst[0] if inst else None)
        pool.refresh(simple=p_simple > 0)
        step += 1
        stats["lr"] = opt.param_groups[0]["lr"]
        stats["simple_share"] = p_simple
        if step % 50 == 0:
            history.append({"step": step, "time": time.time() - t0, **stats})
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
            model.eval()
            ev = evaluate_clicks(Segmenter(model, BUNDLED_NAME, device=str(device), cache_size=0), eval_scenes)
            model.train()
            history.append({"step": step, "time": time.time() - t0, "eval": ev})
            logger.info("step %d eval %s", step, ev)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            io.save_torch(
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "step": step,
                    "history": history,
                    "elapsed": time.time() - t0,
                    "rng": rng,
                    "pool": pool.state_dict(),
                },
                last,
            )
            # keep a usable fp16 model next to the resumable state at every checkpoint
            export_checkpoint(model, cfg, out / "model.pt", {"steps": step, "partial": step < cfg.steps})
        if progress:  # after the checkpoint: a run killed here resumes from this step
            progress("train", step, cfg.steps, stats)
    wall = time.time() - t0
    model.eval()
    seg = Segmenter(model, BUNDLED_NAME, device=str(device), cache_size=0)
    final = evaluate_clicks(seg, eval_scenes)
    meta = {
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "wall_clock_s": round(wall, 1),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "eval_in_domain": final,
        "seed": cfg.seed,
    }
    export_checkpoint(model, cfg, out / "model.pt", meta)
    io.save_json({"final": final, "history": history, "wall_clock_s": wall}, out / "metrics.json")
    return final
