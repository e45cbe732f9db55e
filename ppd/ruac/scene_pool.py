"""Training data of ``ppd train-ruac``: procedural scenes encoded once by the frozen
encoder (:class:`EmbeddedScenePool`) and the batches drawn from them (:class:`RuacBatch`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ppd.data.scenes import augment, draw_augmentation, make_scene
from ppd.pretrain_data import model_input
from ppd.ruac.train_config import RuacTrainConfig
from ppd.segmenter import image_features

# Training pool seeds: far from the pretraining pool (seed * 1e6 + i) and the eval seeds.
_POOL_SEED_OFFSET = 500_000


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
