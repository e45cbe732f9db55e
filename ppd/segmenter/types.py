"""What the segmenter returns: an image's embedding and the prediction for prompt sets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class ImageEmbedding:
    """Image features of one image, as ``SAM2ImagePredictor.set_image`` keeps them.

    Attributes:
        image_embed: (1, C, h, w) lowest-resolution features (with ``no_mem_embed``
            added), what the mask decoder attends to; h = w = image_size / 16.
        high_res_feats: the two higher-resolution feature maps, (1, C/8, 4h, 4w) and
            (1, C/4, 2h, 2w), already projected by the decoder's ``conv_s0/conv_s1``.
        orig_hw: (H, W) of the original image in pixels.
        key: content hash of the image; identifies the image in caches.
    """

    image_embed: torch.Tensor
    high_res_feats: list[torch.Tensor]
    orig_hw: tuple[int, int]
    key: str

    @property
    def grid_size(self) -> tuple[int, int]:
        """(h, w) of the embedding grid."""
        return tuple(self.image_embed.shape[-2:])  # type: ignore[return-value]


@dataclass
class Prediction:
    """Output of :meth:`Segmenter.predict` for B prompt sets.

    Attributes:
        masks: (B, H, W) bool masks at image size ((B, 3, H, W) with ``return_all``).
        scores: (B,) predicted IoU of each mask ((B, 3) with ``return_all``).
        logits: (B, h, w) low-resolution mask logits, clamped to [-32, 32] like
            ``SAM2ImagePredictor`` (h = w = image_size / 4); (B, 3, h, w) with ``return_all``.
        uncertainty: (B, H, W) float32 pixel-wise uncertainty in [0, 1] at image size
            ((B, 3, H, W) with ``return_all``), or None (RUAC decoder only).
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray
    uncertainty: np.ndarray | None = None
