"""Overlays of masks and point prompts on images (PIL only)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

POSITIVE = (40, 220, 60)
NEGATIVE = (235, 40, 40)


def overlay(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    point_coords: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    color: tuple[int, int, int] = (30, 144, 255),
    alpha: float = 0.45,
    uncertainty: np.ndarray | None = None,
    radius: int | None = None,
) -> np.ndarray:
    """Blend a mask onto an (H, W, 3) uint8 image and draw the points.

    Positive points are green discs, negative points red discs, both with a white ring;
    the mask boundary is drawn in the mask colour at full opacity.
    """
    out = image.astype(np.float32).copy()
    if mask is not None:
        m = mask.astype(bool)
        out[m] = (1 - alpha) * out[m] + alpha * np.asarray(color, np.float32)
        edge = m & ~(
            np.pad(m, 1)[2:, 1:-1] & np.pad(m, 1)[:-2, 1:-1] & np.pad(m, 1)[1:-1, 2:] & np.pad(m, 1)[1:-1, :-2]
        )
        out[edge] = color
    if uncertainty is not None:
        u = np.clip(uncertainty, 0, 1)[..., None]
        out = (1 - 0.6 * u) * out + 0.6 * u * np.array([255, 200, 0], np.float32)
    img = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    if point_coords is not None and len(point_coords):
        draw = ImageDraw.Draw(img)
        r = radius or max(2, round(min(image.shape[:2]) / 80))
        for (x, y), lab in zip(np.asarray(point_coords), np.asarray(point_labels)):
            if lab < 0:
                continue
            fill = POSITIVE if lab == 1 else NEGATIVE
            draw.ellipse([x - r - 1, y - r - 1, x + r + 1, y + r + 1], fill=(255, 255, 255))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    return np.asarray(img)


def grid(images: list[np.ndarray], cols: int, pad: int = 2) -> np.ndarray:
    """Tile equally sized (H, W, 3) images into a grid with white padding."""
    h, w = images[0].shape[:2]
    rows = (len(images) + cols - 1) // cols
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = im
    return out


def caption(image: np.ndarray, text: str) -> np.ndarray:
    """A copy of an (H, W, 3) uint8 image with ``text`` in white on a dark box at its top
    left (PIL's built-in font; lines split on ``\\n``). The size does not change, so
    captioned tiles still fit :func:`grid`."""
    img = Image.fromarray(np.ascontiguousarray(image[..., :3]).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, top, right, bottom = draw.multiline_textbbox((3, 2), text, font=font, spacing=1)
    draw.rectangle([0, 0, right + 3, bottom + 2], fill=(20, 20, 20))
    draw.multiline_text((3, 2), text, fill=(255, 255, 255), font=font, spacing=1)
    return np.asarray(img)
