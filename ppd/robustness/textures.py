"""Procedural textures of the weather corruptions: the fog's plasma fractal and a frost layer.

:func:`plasma_fractal` is the diamond-square height map ImageNet-C's ``fog`` adds to an
image (same recursion, amplitude 100 at the first level divided by ``decay`` at every
level, normalised to [0, 1]), drawn from a numpy Generator.

:func:`frost_texture` replaces the photographs of frost ImageNet-C's ``frost`` crops (five
files that cannot ship with ppd): a layer of feather-like ice crystals over a hazy
plasma background, generated deterministically from the Generator. Its first two moments
per channel are those of one of the reference photographs (picked uniformly, as the
reference picks one of its five files), measured once and kept in :data:`FROST_STYLES`,
so ``c0 * image + c1 * frost`` adds the same mean brightness and tint per severity; the
crystal shapes are only an imitation of real frost.
"""

from __future__ import annotations

import numpy as np

#: (mean RGB, std RGB) of ImageNet-C's frost photographs frost1.png, frost2.png,
#: frost3.png (the same picture as frost2.png), frost4.jpg, frost5.jpg (the reference
#: draws one of these five), measured over all their pixels.
FROST_STYLES = (
    ((77.7, 149.1, 165.7), (26.9, 16.5, 15.3)),
    ((200.8, 205.4, 214.5), (21.4, 22.1, 22.6)),
    ((200.8, 205.4, 214.5), (21.4, 22.1, 22.6)),
    ((137.6, 152.8, 165.2), (28.5, 28.5, 29.9)),
    ((112.4, 123.4, 134.8), (44.4, 43.3, 41.7)),
)
#: Ice crystals per reference-size (224 x 224) image area.
CRYSTALS_PER_224 = 420


def plasma_fractal(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """A (size, size) float64 diamond-square height map in [0, 1]; ``size`` a power of 2.

    Each level sets the centres of the squares, then the edge midpoints, to the mean of
    their four neighbours (wrapping around) plus uniform noise in [-w², w²] with
    ``w = 100 / decay**level``; the map is then shifted and scaled to [0, 1].
    """
    if size < 2 or size & (size - 1):
        raise ValueError(f"size must be a power of 2 >= 2, got {size}")
    height = np.zeros((size, size))
    step, wibble = size, 100.0

    def noisy_mean(total: np.ndarray) -> np.ndarray:
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = height[0:size:step, 0:size:step]
        total = corners + np.roll(corners, -1, axis=0)
        total = total + np.roll(total, -1, axis=1)
        height[half:size:step, half:size:step] = noisy_mean(total)
        centres = height[half:size:step, half:size:step]
        corners = height[0:size:step, 0:size:step]
        across = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        height[0:size:step, half:size:step] = noisy_mean(across)
        down = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        height[half:size:step, 0:size:step] = noisy_mean(down)
        step //= 2
        wibble /= decay
    height -= height.min()
    return height / height.max()


def next_power_of_2(n: int) -> int:
    """The smallest power of 2 >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def fog_layer(h: int, w: int, decay: float, rng: np.random.Generator, scale: float) -> np.ndarray:
    """An (h, w) plasma fractal whose structure is that of a ``h / scale`` x ``w / scale``
    image (a 224-pixel image at scale 1 uses a 256 map, as ImageNet-C), upsampled
    bilinearly to (h, w) when ``scale`` is not 1."""
    import cv2

    rh, rw = max(1, int(np.ceil(h / scale))), max(1, int(np.ceil(w / scale)))
    plasma = plasma_fractal(max(2, next_power_of_2(max(rh, rw))), decay, rng)[:rh, :rw]
    if (rh, rw) != (h, w):
        plasma = cv2.resize(plasma, (w, h), interpolation=cv2.INTER_LINEAR)
    return plasma


def frost_texture(h: int, w: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """An (h, w, 3) float64 frost layer with values in [0, 255] (module docstring).

    Crystals: :data:`CRYSTALS_PER_224` per 224 x 224 image area at ``scale`` 1 (their
    number in an image stays the same at other scales, their size grows with ``scale``),
    each a straight stem 6-30 px long (times ``scale``) with side branches at about 60
    degrees that shorten towards its tip, drawn anti-aliased with a random brightness.
    Over them a plasma haze varies the brightness at large scale.
    """
    import cv2

    style = FROST_STYLES[int(rng.integers(len(FROST_STYLES)))]
    # Drawn at a reference-like size and resized, so the drawing cost does not grow
    # with the image and a stroke keeps its look (1 px at 224 px) at any size.
    rh, rw = max(8, int(round(h / scale))), max(8, int(round(w / scale)))
    canvas = np.zeros((rh, rw), np.uint8)
    n = max(1, int(round(CRYSTALS_PER_224 * rh * rw / 224**2)))
    cx, cy = rng.uniform(0, rw, n), rng.uniform(0, rh, n)
    angle = rng.uniform(0, 2 * np.pi, n)
    length = rng.uniform(6, 30, n)
    bright = rng.integers(90, 256, n)
    spread = rng.uniform(np.pi / 4, np.pi / 2.6, n)  # branch angle to the stem

    # All segments as arrays, drawn with one cv2.polylines call per brightness level
    # (a Python call per segment would cost ~20 us each, thousands per image).
    starts, ends, values = [], [], []
    for i in range(n):
        d = np.array([np.cos(angle[i]), np.sin(angle[i])])
        c = np.array([cx[i], cy[i]])
        t = np.arange(2.0, length[i], 2.5)
        base = c + t[:, None] * d
        arm = (0.45 * (length[i] - t) + 1.0)[:, None]
        starts += [c[None], base, base]
        ends.append((c + length[i] * d)[None])
        values.append(np.full(1 + 2 * t.size, bright[i], np.float64))
        for sign in (-1.0, 1.0):
            a = angle[i] + sign * spread[i]
            ends.append(base + arm * np.array([np.cos(a), np.sin(a)]))
        values[-1][1:] *= 0.8
    p0, p1, value = np.concatenate(starts), np.concatenate(ends), np.concatenate(values)
    level = np.minimum((value / 32).astype(int), 7)  # 8 brightness levels
    for lv in np.unique(level):
        sel = level == lv
        lines = np.round(np.stack([p0[sel], p1[sel]], axis=1) * 16).astype(np.int32)  # shift 4: 1/16 px
        cv2.polylines(canvas, list(lines), False, int(32 * lv + 16), 1, cv2.LINE_AA, 4)
    crystals = canvas.astype(np.float64) / 255.0
    haze = fog_layer(rh, rw, 2.0, rng, 1.0)
    layer = 0.8 * crystals + 0.6 * haze + 0.25 * cv2.GaussianBlur(crystals, (0, 0), 2.0)
    if (rh, rw) != (h, w):
        layer = cv2.resize(layer, (w, h), interpolation=cv2.INTER_LINEAR)
    z = (layer - layer.mean()) / max(layer.std(), 1e-6)
    mean, std = np.asarray(style[0]), np.asarray(style[1])
    return np.clip(mean + std * z[..., None], 0.0, 255.0)
