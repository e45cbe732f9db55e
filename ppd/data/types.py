"""The scene record shared by the procedural generator and the dataset loaders."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Scene:
    """One image with its instance masks.

    Attributes:
        image: (H, W, 3) uint8 RGB image.
        masks: (N, H, W) bool instance masks, one per object (visible part only,
            so instances never overlap). N may be 0 for an image with no object.
        domain: name of the domain or dataset the scene comes from.
        seed: the seed that generated it (procedural scenes), or -1.
        meta: free-form extras (file name, category ids, ...).
    """

    image: np.ndarray
    masks: np.ndarray
    domain: str = "unknown"
    seed: int = -1
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        img, m = self.image, self.masks
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(
                f"Scene.image must be an (H, W, 3) uint8 array, got {img.shape} {img.dtype}"
            )
        if m.ndim != 3 or m.shape[1:] != img.shape[:2]:
            raise ValueError(
                f"Scene.masks must be (N, H, W) with (H, W) = {img.shape[:2]}, got {m.shape}"
            )
        if m.dtype != bool:
            self.masks = m.astype(bool)

    @property
    def num_objects(self) -> int:
        return int(self.masks.shape[0])
