"""The 15 ImageNet-C common corruptions at severities 1-5, for RGB images of any size.

``corrupt(image, "gaussian_noise", 3, rng=0)`` takes and returns (H, W, 3) uint8. The
definitions and the per-severity constants are those of ImageNet-C (Hendrycks &
Dietterich, ICLR 2019, ``make_imagenet_c.py``), written here with numpy, SciPy, OpenCV and
Pillow; the random draws come from a numpy Generator (or a seed), so an output is a
function of (image, name, severity, seed). The float result is clipped to [0, 255] and
truncated to uint8, as the reference's ``np.uint8`` (up to float rounding: a value a hair
below an integer counts as that integer).

Image size. The reference is written for 224 x 224 images. Parameters in pixels scale
with ``scale`` (default ``max(1, min(H, W) / 224)``), so a large image corrupted looks like
the 224-pixel corruption resized to it (smaller images keep the reference's pixel
parameters, as the ``imagecorruptions`` package: scaled down, the mild blurs would
vanish). Scaled: blur radii and sigmas (defocus, glass, motion, and the snow's motion
blur), glass blur's pixel shuffle distance, the snow flake size, the elastic transform's
affine and smoothing scale (its displacement amplitude by ``scale**2``, since smoothing
white noise with a ``scale`` times wider Gaussian shrinks it by ``scale``), the fog's
fractal (made at the size ``H / scale`` and resized) and the frost crystals. Pixelate
keeps the reference's output resolution: the image is reduced by ``c / scale``
(``int(224 * c)`` pixels on the short side of a large image, the reference's relative
factor on small ones). Not scaled: the noises (per pixel, a sensor property), zoom blur
(relative zoom factors), brightness, contrast and JPEG (8 x 8 blocks of the codec).
``scale=1`` gives the reference's pixel parameters at any size (what the
``imagecorruptions`` package does).

Departures from the reference, all stated where they happen: ``frost`` uses a procedural
texture (:func:`ppd.robustness.textures.frost_texture`) instead of ImageNet-C's frost
photographs; motion blur is ImageMagick's kernel (which the reference calls) applied with
OpenCV; ImageNet-C's final re-encoding of every image as JPEG (quality 85) when it saved
the data set is not applied.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

logger = logging.getLogger(__name__)

#: The corruptions, in ImageNet-C's order (noise, blur, weather, digital).
CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog",
    "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
SEVERITIES = (1, 2, 3, 4, 5)
#: Corruptions that draw nothing: the same output for every seed.
DETERMINISTIC = frozenset({"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression"})
#: The reference image side the published parameters are set for.
REFERENCE_SIZE = 224

# ImageNet-C's constants per severity 1..5.
GAUSSIAN_NOISE = (0.08, 0.12, 0.18, 0.26, 0.38)  # std on [0, 1]
SHOT_NOISE = (60, 25, 12, 5, 3)  # photons per unit intensity
IMPULSE_NOISE = (0.03, 0.06, 0.09, 0.17, 0.27)  # fraction of values set to 0 or 1
DEFOCUS_BLUR = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))  # disk radius, anti-alias sigma
GLASS_BLUR = ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))  # sigma, max shift, iterations
MOTION_BLUR = ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))  # radius, sigma
ZOOM_BLUR = ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03))  # np.arange args
SNOW = (  # mean, std, zoom, threshold, blur radius, blur sigma, image weight
    (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
    (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
    (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
    (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
    (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
)
FROST = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))  # image weight, frost weight
FOG = ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))  # fog weight, fractal decay
BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)  # added to HSV value
CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)  # factor on the deviation from the channel mean
ELASTIC = tuple((244 * a, 244 * s, 244 * f) for a, s, f in  # alpha, sigma, affine shift (px at 224)
                ((2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02), (0.12, 0.01, 0.02)))
PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)  # resolution factor
JPEG_QUALITY = (25, 18, 15, 10, 7)


def corrupt(image: np.ndarray, name: str, severity: int,
            rng: np.random.Generator | int | None = None, scale: float | None = None) -> np.ndarray:
    """``image`` under corruption ``name`` at ``severity`` (1-5).

    Args:
        image: (H, W, 3) uint8 RGB.
        name: one of :data:`CORRUPTIONS`.
        severity: 1 (mild) to 5 (strong).
        rng: a Generator or a seed (None: fresh entropy); ignored by :data:`DETERMINISTIC`.
        scale: the image's size relative to the reference 224 px (module docstring);
            None: ``max(1, min(H, W) / 224)``.

    Returns:
        (H, W, 3) uint8.

    Raises:
        ValueError: an unknown name, a severity outside 1-5, or not an (H, W, 3) uint8 image.
    """
    if name not in _FUNCTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    return _FUNCTIONS[name](image, severity, rng, scale)


def reference_scale(shape: tuple[int, ...]) -> float:
    """The default ``scale`` of an image of this shape: ``max(1, min(H, W) / 224)``."""
    return max(1.0, min(shape[0], shape[1]) / REFERENCE_SIZE)


def _inputs(image, severity, rng, scale):
    """Checked ``(image as float64 in [0, 1], severity index, Generator, scale)``."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"image must be an (H, W, 3) uint8 array, got {image.dtype} {image.shape}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")
    scale = reference_scale(image.shape) if scale is None else float(scale)
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    return image.astype(np.float64) / 255.0, int(severity) - 1, np.random.default_rng(rng), scale


def _to_uint8(x255: np.ndarray) -> np.ndarray:
    return np.minimum(np.floor(np.clip(x255, 0.0, 255.0) + 1e-6), 255).astype(np.uint8)


# ------------------------------------------------------------------------------ noise
def gaussian_noise(image, severity, rng=None, scale=None):
    x, s, rng, _ = _inputs(image, severity, rng, scale)
    return _to_uint8(np.clip(x + rng.normal(0.0, GAUSSIAN_NOISE[s], x.shape), 0, 1) * 255)


def shot_noise(image, severity, rng=None, scale=None):
    x, s, rng, _ = _inputs(image, severity, rng, scale)
    c = SHOT_NOISE[s]
    return _to_uint8(np.clip(rng.poisson(x * c) / c, 0, 1) * 255)


def impulse_noise(image, severity, rng=None, scale=None):
    """Salt and pepper as scikit-image's ``random_noise(mode='s&p')``: each value (pixel
    and channel) is hit with probability c, then set to 1 or 0 with equal odds."""
    x, s, rng, _ = _inputs(image, severity, rng, scale)
    hit = rng.random(x.shape) < IMPULSE_NOISE[s]
    salt = rng.random(x.shape) < 0.5
    x = np.where(hit, salt.astype(np.float64), x)
    return _to_uint8(x * 255)


# ------------------------------------------------------------------------------- blur
def defocus_blur(image, severity, rng=None, scale=None):
    import cv2

    x, s, _, scale = _inputs(image, severity, rng, scale)
    radius, alias = DEFOCUS_BLUR[s]
    kernel = _disk(radius * scale, alias * scale, radius <= 8)
    return _to_uint8(np.clip(cv2.filter2D(x.astype(np.float32), -1, kernel), 0, 1) * 255)


def _disk(radius: float, alias_blur: float, small: bool) -> np.ndarray:
    """ImageNet-C's defocus kernel: a normalised disk (on a grid of at least 17 x 17),
    blurred by a Gaussian (3 x 3 for the reference's radii <= 8, else 5 x 5; wider when
    the scaled sigma needs it)."""
    import cv2

    half = max(8, int(np.ceil(radius)))
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    disk = (xx**2 + yy**2 <= radius**2).astype(np.float32)
    disk /= disk.sum()
    k = max(3 if small else 5, 2 * int(round(2 * alias_blur)) + 1)
    return cv2.GaussianBlur(disk, (k, k), alias_blur)


def glass_blur(image, severity, rng=None, scale=None):
    """Blur, shuffle pixels locally, blur. The shuffle is the reference's loop: from the
    bottom-right to the top-left, pixel (h, w) takes the value of (h + dy, w + dx) with
    dx, dy uniform in [-d, d - 1]. The reference writes a swap as a tuple assignment of
    numpy views, which copies instead of swapping; that copy is what ImageNet-C's
    images show and what is done here."""
    from scipy.ndimage import gaussian_filter

    x, s, rng, scale = _inputs(image, severity, rng, scale)
    sigma, delta, iterations = GLASS_BLUR[s]
    sigma, delta = sigma * scale, max(1, int(round(delta * scale)))
    h, w = x.shape[:2]
    x = np.uint8(gaussian_filter(x, (sigma, sigma, 0), mode="nearest", truncate=4.0) * 255)
    rows, cols = np.arange(h - delta, delta, -1), np.arange(w - delta, delta, -1)
    source = list(range(h * w))
    if rows.size and cols.size:
        here = (rows[:, None] * w + cols[None, :]).ravel()
        for _ in range(iterations):
            d = rng.integers(-delta, delta, size=(here.size, 2))  # (dx, dy) per pixel, loop order
            there = here + d[:, 1] * w + d[:, 0]
            # A plain Python loop: each copy reads what earlier ones wrote, so the loop
            # is sequential; on an index list it takes ~0.1 s per million pixels.
            for a, b in zip(here.tolist(), there.tolist()):
                source[a] = source[b]
    x = x.reshape(h * w, 3)[np.asarray(source)].reshape(h, w, 3)
    return _to_uint8(np.clip(gaussian_filter(x / 255.0, (sigma, sigma, 0), mode="nearest", truncate=4.0), 0, 1) * 255)


def motion_kernel(radius: float, sigma: float, angle_deg: float) -> np.ndarray:
    """ImageMagick's MotionBlurImage kernel as a 2-D correlation kernel (anchor at the
    centre): weights ``exp(-i² / 2 sigma²)``, normalised, at the integer offsets
    ``(ceil(i cos a - 1/2), ceil(i sin a - 1/2))`` for i = 0 .. 2 radius (one-sided)."""
    width = 2 * int(round(radius)) + 1
    weights = np.exp(-np.arange(width) ** 2 / (2.0 * sigma**2))
    weights /= weights.sum()
    a = np.deg2rad(angle_deg)
    kernel = np.zeros((2 * width - 1, 2 * width - 1), np.float32)
    for i, wt in enumerate(weights):
        u, v = int(np.ceil(i * np.cos(a) - 0.5)), int(np.ceil(i * np.sin(a) - 0.5))
        kernel[width - 1 + v, width - 1 + u] += wt
    return kernel


def _motion(x: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    import cv2

    return cv2.filter2D(x.astype(np.float32), -1, motion_kernel(radius, sigma, angle), borderType=cv2.BORDER_REPLICATE)


def motion_blur(image, severity, rng=None, scale=None):
    x, s, rng, scale = _inputs(image, severity, rng, scale)
    radius, sigma = MOTION_BLUR[s]
    return _to_uint8(np.clip(_motion(x, radius * scale, sigma * scale, rng.uniform(-45, 45)), 0, 1) * 255)


def clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """The centre of ``x`` (H, W[, C]) zoomed by ``factor`` >= 1 back to (H, W): the
    reference's crop of ``ceil(H / factor)`` rows, SciPy ``zoom`` (order 1, corners
    aligned) and centred trim, done as one bilinear OpenCV warp (faster on large images;
    equal up to OpenCV's 1/32 px interpolation grid)."""
    import cv2

    h, w = x.shape[:2]
    m = np.zeros((2, 3))
    for row, n in ((1, h), (0, w)):  # row 1 of the matrix maps y, row 0 maps x
        crop = int(np.ceil(n / factor))
        zoomed = int(round(crop * factor))
        step = (crop - 1) / (zoomed - 1) if zoomed > 1 else 0.0
        m[row, row] = step
        m[row, 2] = (n - crop) // 2 + ((zoomed - n) // 2) * step
    out = cv2.warpAffine(np.ascontiguousarray(x, np.float32), m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(x.shape)


def zoom_blur(image, severity, rng=None, scale=None):
    x, s, _, _ = _inputs(image, severity, rng, scale)
    x = x.astype(np.float32)
    factors = np.arange(*ZOOM_BLUR[s])
    out = x.copy()
    for f in factors:
        out += clipped_zoom(x, f)
    return _to_uint8(np.clip(out / (len(factors) + 1), 0, 1) * 255)


# ---------------------------------------------------------------------------- weather
def snow(image, severity, rng=None, scale=None):
    import cv2

    x, s, rng, scale = _inputs(image, severity, rng, scale)
    mean, std, zoom, threshold, radius, sigma, keep = SNOW[s]
    x = x.astype(np.float32)
    layer = rng.normal(mean, std, x.shape[:2])
    layer = clipped_zoom(layer, max(1.0, zoom * scale))
    layer[layer < threshold] = 0
    layer = np.floor(np.clip(layer, 0, 1) * 255) / 255  # the reference passes it through 8 bits
    layer = _motion(layer, radius * scale, sigma * scale, rng.uniform(-135, -45))
    layer = (np.round(np.clip(layer, 0, 1) * 255) / 255)[..., None]
    gray = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., None]
    x = keep * x + (1 - keep) * np.maximum(x, gray * 1.5 + 0.5)
    return _to_uint8(np.clip(x + layer + np.rot90(layer, k=2), 0, 1) * 255)


def frost(image, severity, rng=None, scale=None):
    """``c0 * image + c1 * frost`` with a procedural frost layer (module docstring of
    :mod:`ppd.robustness.textures`) instead of a crop of the reference's photographs."""
    from ppd.robustness.textures import frost_texture

    x, s, rng, scale = _inputs(image, severity, rng, scale)
    keep, amount = FROST[s]
    layer = frost_texture(x.shape[0], x.shape[1], rng, scale)
    return _to_uint8(keep * x * 255 + amount * layer)


def fog(image, severity, rng=None, scale=None):
    from ppd.robustness.textures import fog_layer

    x, s, rng, scale = _inputs(image, severity, rng, scale)
    amount, decay = FOG[s]
    top = x.max()
    x = x + amount * fog_layer(x.shape[0], x.shape[1], decay, rng, scale)[..., None]
    return _to_uint8(np.clip(x * top / (top + amount), 0, 1) * 255)


# ---------------------------------------------------------------------------- digital
def brightness(image, severity, rng=None, scale=None):
    """HSV value + c, clipped to 1, hue and saturation kept. With H and S fixed every RGB
    channel is proportional to V, so the HSV round trip is a per-pixel rescaling by
    ``V' / V`` (a black pixel, S = 0, becomes grey V')."""
    x, s, _, _ = _inputs(image, severity, rng, scale)
    v = x.max(axis=2, keepdims=True)
    v_new = np.minimum(v + BRIGHTNESS[s], 1.0)
    out = np.where(v > 0, x * (v_new / np.where(v > 0, v, 1.0)), v_new)
    return _to_uint8(np.clip(out, 0, 1) * 255)


def contrast(image, severity, rng=None, scale=None):
    x, s, _, _ = _inputs(image, severity, rng, scale)
    means = x.mean(axis=(0, 1), keepdims=True)
    return _to_uint8(np.clip((x - means) * CONTRAST[s] + means, 0, 1) * 255)


def elastic_transform(image, severity, rng=None, scale=None):
    """ImageNet-C's version (not the ``imagecorruptions`` package's, which differs): a
    random affine warp (three points ``min(H, W) // 3`` from the centre each moved by up
    to c2 px), then a displacement field of uniform noise smoothed by a Gaussian (sigma
    c1, truncated at 3 sigma, reflected borders) times c0, sampled bilinearly."""
    import cv2

    x, s, rng, scale = _inputs(image, severity, rng, scale)
    alpha, sigma, shift = ELASTIC[s]
    alpha, sigma, shift = alpha * scale**2, sigma * scale, shift * scale
    h, w = x.shape[:2]
    x = x.astype(np.float32)
    centre = np.float32([w // 2, h // 2])
    side = min(h, w) // 3
    pts1 = np.float32([centre + side, [centre[0] + side, centre[1] - side], centre - side])
    pts2 = pts1 + rng.uniform(-shift, shift, size=pts1.shape).astype(np.float32)
    x = cv2.warpAffine(x, cv2.getAffineTransform(pts1, pts2), (w, h), borderMode=cv2.BORDER_REFLECT_101)
    dx = (gaussian_reflect(rng.uniform(-1, 1, (h, w)), sigma, 3.0) * alpha).astype(np.float32)
    dy = (gaussian_reflect(rng.uniform(-1, 1, (h, w)), sigma, 3.0) * alpha).astype(np.float32)
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    out = cv2.remap(x, gx + dx, gy + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return _to_uint8(np.clip(out, 0, 1) * 255)


def gaussian_reflect(a: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """SciPy's ``gaussian_filter(a, sigma, mode='reflect', truncate=truncate)`` of a 2-D
    array, by FFT along an axis when the kernel is long: ImageNet-C's elastic severities
    1-2 smooth with sigma = 171 and 20 px at 224 (more on larger images), where direct
    convolution takes seconds."""
    from scipy import fft
    from scipy.ndimage import gaussian_filter1d

    radius = int(truncate * sigma + 0.5)
    if radius <= 32:
        return gaussian_filter1d(gaussian_filter1d(a, sigma, 0, mode="reflect", truncate=truncate),
                                 sigma, 1, mode="reflect", truncate=truncate)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(a, pad, mode="symmetric")  # SciPy's "reflect": d c b a | a b c d
        n = fft.next_fast_len(padded.shape[axis] + kernel.size - 1, real=True)
        shape = [1, 1]
        shape[axis] = -1
        full = fft.irfft(fft.rfft(padded, n, axis=axis) * fft.rfft(kernel, n).reshape(shape), n, axis=axis)
        a = np.take(full, np.arange(2 * radius, 2 * radius + a.shape[axis]), axis=axis)
    return a


def pixelate(image, severity, rng=None, scale=None):
    from PIL import Image

    x, s, _, scale = _inputs(image, severity, rng, scale)
    h, w = x.shape[:2]
    f = PIXELATE[s] / scale
    small = Image.fromarray(np.asarray(image)).resize((max(1, int(w * f)), max(1, int(h * f))), Image.BOX)
    return np.asarray(small.resize((w, h), Image.BOX), dtype=np.uint8).copy()


def jpeg_compression(image, severity, rng=None, scale=None):
    """Pillow's JPEG encoder (libjpeg, 4:2:0 chroma) at the reference's quality."""
    from io import BytesIO

    from PIL import Image

    _, s, _, _ = _inputs(image, severity, rng, scale)
    buffer = BytesIO()
    Image.fromarray(np.asarray(image)).save(buffer, "JPEG", quality=JPEG_QUALITY[s])
    buffer.seek(0)
    return np.asarray(Image.open(buffer).convert("RGB"), dtype=np.uint8).copy()


_FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {name: globals()[name] for name in CORRUPTIONS}
