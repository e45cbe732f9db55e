"""Training data and losses of ``ppd pretrain``: the scene pool, round-0 prompts and
corrective clicks, the model input, and the IoU and instance-discrimination losses.

``ppd train-ruac`` (:mod:`ppd.ruac.trainer`) draws its prompts and model inputs with the
same functions.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ppd.data.scenes import CURRICULUM_DOMAIN, augment, draw_augmentation, make_scene
from ppd.pretrain_config import PretrainConfig
from ppd.prompts import corrective_click
from ppd.segmenter import IMAGENET_MEAN, IMAGENET_STD


# ----------------------------------------------------------------------------- losses
def hard_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, h, w) logits vs (soft) targets -> (B,) IoU of ``logits > 0`` vs ``target > 0.5``
    (1 when both are empty)."""
    pred = logits > 0
    t = target > 0.5
    inter = (pred & t).flatten(1).sum(1).float()
    union = (pred | t).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


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
