"""Overlays of masks and point prompts on images (PIL only)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

POSITIVE = (40, 220, 60)
NEGATIVE = (235, 40, 40)
MASK = (30, 144, 255)
GROUND_TRUTH = (255, 215, 0)
DROPPED = (150, 150, 150)
RELABELED = (255, 0, 255)


def outline(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels of ``mask`` with a 4-neighbour outside it."""
    m = mask.astype(bool)
    p = np.pad(m, 1)
    return m & ~(p[2:, 1:-1] & p[:-2, 1:-1] & p[1:-1, 2:] & p[1:-1, :-2])


def overlay(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    point_coords: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    color: tuple[int, int, int] = MASK,
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
        out[outline(m)] = color
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
    """Tile (H, W, 3) images into a grid with white padding; each cell has the largest
    image's size, a smaller image sits in its cell's top-left corner."""
    h = max(im.shape[0] for im in images)
    w = max(im.shape[1] for im in images)
    rows = (len(images) + cols - 1) // cols
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        out[y : y + im.shape[0], x : x + im.shape[1]] = im
    return out


def shrink(image: np.ndarray, max_side: int, *masks: np.ndarray | None, coords: np.ndarray | None = None):
    """``image`` (and its ``masks``, and pixel ``coords`` (K, 2) x, y) scaled down so that
    the long side is at most ``max_side`` (unchanged when it already is): a picture of
    many photographs stays a readable size. Returns ``(image, *masks, coords)``."""
    import cv2

    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return (image, *masks, coords)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    out_masks = [None if m is None else cv2.resize(np.asarray(m, np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
                 for m in masks]
    return (small, *out_masks, None if coords is None else np.asarray(coords, np.float32) * scale)


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


def refine_tile(
    image: np.ndarray,
    gt: np.ndarray,
    mask: np.ndarray,
    point_coords: np.ndarray,
    point_labels: np.ndarray,
    dropped: np.ndarray | None = None,
    relabeled: np.ndarray | None = None,
    text: str = "",
) -> np.ndarray:
    """One tile of a refinement picture: the predicted ``mask`` filled in blue, the ground
    truth ``gt`` outlined in yellow (a 2-px line drawn over everything else), the points
    (green positive, red negative), dropped points as grey discs crossed in black,
    relabelled points (drawn with their new label) in a magenta ring, and ``text`` as a
    caption. All arrays are at image size; ``dropped`` / ``relabeled`` are (K,) bool over
    the points."""
    out = np.array(overlay(image, mask))  # writable copy
    edge = outline(gt)
    edge |= np.pad(edge, 1)[2:, 1:-1] | np.pad(edge, 1)[1:-1, 2:]  # 2 px wide: visible on any mask
    out[edge] = GROUND_TRUTH
    img = Image.fromarray(out)
    draw = ImageDraw.Draw(img)
    r = max(3, round(min(image.shape[:2]) / 64))
    k = len(point_coords)
    dropped = np.zeros(k, bool) if dropped is None else np.asarray(dropped, bool)
    relabeled = np.zeros(k, bool) if relabeled is None else np.asarray(relabeled, bool)
    for (x, y), lab, gone, flip in zip(np.asarray(point_coords), np.asarray(point_labels), dropped, relabeled):
        ring = RELABELED if flip else (255, 255, 255)
        width = 2 if flip else 1
        draw.ellipse([x - r - width, y - r - width, x + r + width, y + r + width], fill=ring)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=DROPPED if gone else (POSITIVE if lab == 1 else NEGATIVE))
        if gone:
            draw.line([x - r, y - r, x + r, y + r], fill=(0, 0, 0), width=2)
            draw.line([x - r, y + r, x + r, y - r], fill=(0, 0, 0), width=2)
    out = np.asarray(img)
    return caption(out, text) if text else out


def legend(width: int, items: list[tuple[tuple[int, int, int], str]]) -> np.ndarray:
    """A white (h, ``width``, 3) uint8 strip with a colour swatch and a label per item,
    for the foot of a figure."""
    font = ImageFont.load_default()
    img = Image.new("RGB", (width, 20), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    x = 6
    for color, label in items:
        draw.rectangle([x, 5, x + 10, 15], fill=color, outline=(0, 0, 0))
        draw.text((x + 14, 4), label, fill=(0, 0, 0), font=font)
        x += 24 + int(draw.textlength(label, font=font))
    return np.asarray(img)
