"""Procedural scenes: images with exact instance masks, in named domains.

Every scene is a pure function of ``(domain, seed, size)``: the same arguments give the
same pixels on every machine (numpy's PCG64 generator, no global state).

Domains (see :data:`DOMAINS`):

========== ==============================================================================
train      the training domain: 1-5 objects (ellipses, rotated rectangles, polygons,
           radial blobs, now and then a bar), flat or gently shaded fills, smooth
           backgrounds with mild texture, mild noise.
texture    shifted: strong periodic / noisy textures on background and objects, objects
           told apart from the background by texture as much as by colour.
clutter    shifted: 6-12 objects with heavy occlusion, plus small distractor shapes.
lowcontrast shifted: object colours close to the background, strong noise and blur.
thin       shifted: thin or elongated objects (bars, arcs, rings, needle ellipses).
alt        drawn differently from the training generator (for held-out checks):
           superformula and star shapes, radial-gradient fills, patchwork backgrounds.
========== ==============================================================================

One more generator, ``simple`` (:data:`CURRICULUM_DOMAIN`), is not a benchmark domain and
is not in :data:`DOMAINS`: 1-3 flat-coloured, untextured, well-contrasted objects on
smooth backgrounds. ``ppd pretrain`` starts on it (a curriculum) because a model trained
from scratch learns which object a click selects much sooner on it.

Objects are painted back to front; an instance mask is the visible part of its object.
Instances whose visible area is below ``min_area`` pixels are left in the image but not
returned as instances (they act as clutter).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ppd.data.types import Scene

TRAIN_DOMAIN = "train"
SHIFTED_DOMAINS = ("texture", "clutter", "lowcontrast", "thin")
HELDOUT_DOMAIN = "alt"
DOMAINS = (TRAIN_DOMAIN, *SHIFTED_DOMAINS, HELDOUT_DOMAIN)
#: the pretraining curriculum's first-stage generator (not a benchmark domain)
CURRICULUM_DOMAIN = "simple"

# Domain name -> small integer mixed into the seed, so that seed 0 in two domains
# gives unrelated scenes.
_DOMAIN_SALT = {d: i for i, d in enumerate((*DOMAINS, CURRICULUM_DOMAIN))}


# ----------------------------------------------------------------------------- fields
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return x, y


def value_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 1) -> np.ndarray:
    """Smooth noise in [-1, 1]: a random cells x cells grid upsampled with cubic splines."""
    g = rng.uniform(-1, 1, (1, channels, cells, cells)).astype(np.float32)
    # torch's bicubic upsampling: ~50x faster than scipy.ndimage.zoom(order=3) here.
    out = F.interpolate(torch.from_numpy(g), size=(size, size), mode="bicubic", align_corners=False)
    return np.clip(out[0].permute(1, 2, 0).numpy(), -1.5, 1.5)


def periodic_texture(rng: np.random.Generator, size: int, kind: str | None = None) -> np.ndarray:
    """A (size, size) texture in [-1, 1]: stripes, checker, dots or fine noise."""
    x, y = _grid(size)
    kind = kind or rng.choice(["stripes", "checker", "dots", "noise"])
    period = rng.uniform(5, 18)
    th = rng.uniform(0, np.pi)
    u = x * np.cos(th) + y * np.sin(th)
    v = -x * np.sin(th) + y * np.cos(th)
    if kind == "stripes":
        return np.sin(2 * np.pi * u / period).astype(np.float32)
    if kind == "checker":
        return (np.sign(np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period))).astype(np.float32)
    if kind == "dots":
        return (np.cos(2 * np.pi * u / period) * np.cos(2 * np.pi * v / period) > 0.5).astype(np.float32) * 2 - 1
    return value_noise(rng, size, max(4, int(size / rng.uniform(2, 5))))[..., 0]


# ----------------------------------------------------------------------------- shapes
def _rotated(x, y, cx, cy, th):
    dx, dy = x - cx, y - cy
    c, s = np.cos(th), np.sin(th)
    return dx * c + dy * s, -dx * s + dy * c


def shape_ellipse(rng, x, y, cx, cy, r, aspect=(0.4, 1.0)):
    u, v = _rotated(x, y, cx, cy, rng.uniform(0, np.pi))
    a = r
    b = r * rng.uniform(*aspect)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def shape_rectangle(rng, x, y, cx, cy, r, aspect=(0.35, 1.0)):
    u, v = _rotated(x, y, cx, cy, rng.uniform(0, np.pi))
    return (np.abs(u) <= r) & (np.abs(v) <= r * rng.uniform(*aspect))


def shape_polygon(rng, x, y, cx, cy, r):
    """A random convex polygon: intersection of 3-8 half-planes tangent to a circle."""
    n = int(rng.integers(3, 9))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    angles = angles + np.linspace(0, 2 * np.pi, n, endpoint=False) - angles  # even spread
    angles = angles + rng.normal(0, 0.25, n)
    m = np.ones_like(x, dtype=bool)
    for a in angles:
        d = (x - cx) * np.cos(a) + (y - cy) * np.sin(a)
        m &= d <= r * rng.uniform(0.6, 1.0)
    return m


def shape_blob(rng, x, y, cx, cy, r):
    """A star-shaped blob r(theta) = r0 (1 + sum_k a_k cos(k theta + phi_k))."""
    th = np.arctan2(y - cy, x - cx)
    rad = np.hypot(x - cx, y - cy)
    rr = np.ones_like(th)
    for k in range(2, 6):
        rr += rng.uniform(0, 0.35 / k * 2) * np.cos(k * th + rng.uniform(0, 2 * np.pi))
    return rad <= r * rr / rr.max() * 1.0


def shape_bar(rng, x, y, cx, cy, r, width=(3.0, 8.0)):
    u, v = _rotated(x, y, cx, cy, rng.uniform(0, np.pi))
    return (np.abs(u) <= r * rng.uniform(1.0, 1.8)) & (np.abs(v) <= rng.uniform(*width) / 2)


def shape_arc(rng, x, y, cx, cy, r):
    """A thick circular arc or a full ring."""
    rad = np.hypot(x - cx, y - cy)
    w = rng.uniform(3, 8)
    ring = np.abs(rad - r) <= w / 2
    if rng.random() < 0.4:
        return ring
    th = np.arctan2(y - cy, x - cx)
    start, span = rng.uniform(-np.pi, np.pi), rng.uniform(np.pi * 0.6, np.pi * 1.6)
    return ring & (np.mod(th - start, 2 * np.pi) <= span)


def shape_superformula(rng, x, y, cx, cy, r):
    """Gielis superformula shapes (stars, flowers, rounded polygons)."""
    th = np.arctan2(y - cy, x - cx) + rng.uniform(0, 2 * np.pi)
    rad = np.hypot(x - cx, y - cy)
    m = float(rng.integers(3, 9))
    n1, n2, n3 = rng.uniform(0.5, 4.0), rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0)
    t = np.abs(np.cos(m * th / 4)) ** n2 + np.abs(np.sin(m * th / 4)) ** n3
    rr = t ** (-1.0 / n1)
    rr = rr / np.percentile(rr, 95)
    return rad <= r * np.clip(rr, 0.2, 1.2)


def shape_star(rng, x, y, cx, cy, r):
    th = np.arctan2(y - cy, x - cx)
    rad = np.hypot(x - cx, y - cy)
    k = int(rng.integers(4, 8))
    inner = rng.uniform(0.35, 0.7)
    phase = rng.uniform(0, 2 * np.pi)
    tri = np.abs(((th * k / (2 * np.pi) + phase) % 1.0) - 0.5) * 2  # 0 at tips, 1 between
    return rad <= r * (1 - (1 - inner) * tri)


ShapeFn = Callable[..., np.ndarray]


@dataclass(frozen=True)
class DomainSpec:
    """Parameters of one domain's generator."""

    n_objects: tuple[int, int]  # inclusive range
    radius: tuple[float, float]  # object radius as a fraction of the image size
    shapes: tuple[tuple[ShapeFn, float], ...]  # (shape function, weight)
    contrast: tuple[float, float]  # colour distance object vs local background
    noise: tuple[float, float]  # per-pixel Gaussian noise std (in [0, 1] units)
    blur: tuple[float, float]  # Gaussian blur sigma in pixels
    bg_texture: float  # probability / amplitude of background texture
    obj_texture: float  # probability / amplitude of object texture
    distractors: tuple[int, int] = (0, 0)
    fill: str = "flat"  # "flat" or "radial"
    background: str = "smooth"  # "smooth" or "patches"


_TRAIN_SHAPES = (
    (shape_ellipse, 1.0),
    (shape_rectangle, 0.8),
    (shape_polygon, 1.0),
    (shape_blob, 1.0),
    (shape_bar, 0.15),
)

DOMAIN_SPECS: dict[str, DomainSpec] = {
    "train": DomainSpec((1, 5), (0.08, 0.28), _TRAIN_SHAPES, (0.25, 0.8), (0.0, 0.04), (0.0, 0.8), 0.25, 0.15),
    "texture": DomainSpec((1, 4), (0.1, 0.28), _TRAIN_SHAPES, (0.1, 0.5), (0.0, 0.04), (0.0, 0.6), 1.0, 0.8),
    "clutter": DomainSpec((6, 12), (0.06, 0.2), _TRAIN_SHAPES, (0.2, 0.7), (0.0, 0.04), (0.0, 0.8), 0.3, 0.2, (6, 14)),
    "lowcontrast": DomainSpec((1, 4), (0.1, 0.28), _TRAIN_SHAPES, (0.06, 0.16), (0.06, 0.12), (0.8, 1.8), 0.2, 0.1),
    "thin": DomainSpec(
        (1, 4),
        (0.15, 0.35),
        ((shape_bar, 1.0), (shape_arc, 1.0), (lambda *a: shape_ellipse(*a, aspect=(0.06, 0.15)), 1.0)),
        (0.25, 0.8),
        (0.0, 0.04),
        (0.0, 0.6),
        0.25,
        0.1,
    ),
    CURRICULUM_DOMAIN: DomainSpec((1, 3), (0.12, 0.3), _TRAIN_SHAPES[:4], (0.4, 0.9), (0.0, 0.02), (0.0, 0.5), 0.0, 0.0),
    "alt": DomainSpec(
        (1, 5),
        (0.1, 0.28),
        ((shape_superformula, 1.0), (shape_star, 1.0)),
        (0.2, 0.7),
        (0.0, 0.05),
        (0.0, 1.0),
        0.2,
        0.2,
        fill="radial",
        background="patches",
    ),
}


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.05, 0.95, 3).astype(np.float32)


def _colour_at_distance(rng: np.random.Generator, ref: np.ndarray, dist: float) -> np.ndarray:
    """A colour about ``dist`` (Euclidean, RGB in [0,1]) away from ``ref``, inside the cube."""
    for _ in range(20):
        d = rng.normal(size=3).astype(np.float32)
        c = ref + d / (np.linalg.norm(d) + 1e-8) * dist
        if (c >= 0).all() and (c <= 1).all():
            return c
    return np.clip(ref + np.sign(0.5 - ref) * dist / np.sqrt(3), 0, 1).astype(np.float32)


def _background(rng, spec: DomainSpec, size: int) -> np.ndarray:
    x, y = _grid(size)
    if spec.background == "patches":
        # Voronoi patchwork of flat colours, a look the training generator never makes.
        k = int(rng.integers(4, 10))
        seeds = rng.uniform(0, size, (k, 2))
        cols = np.stack([_random_colour(rng) for _ in range(k)])
        d = (x[..., None] - seeds[:, 0]) ** 2 + (y[..., None] - seeds[:, 1]) ** 2
        img = cols[np.argmin(d, axis=-1)]
    else:
        base = _random_colour(rng)
        g = rng.normal(0, 0.25, 3).astype(np.float32)
        th = rng.uniform(0, 2 * np.pi)
        ramp = ((x * np.cos(th) + y * np.sin(th)) / size - 0.5)[..., None]
        img = base + ramp * g + 0.12 * value_noise(rng, size, int(rng.integers(2, 6)), 3)
    if rng.random() < spec.bg_texture:
        amp = rng.uniform(0.04, 0.1 + 0.2 * spec.bg_texture)
        tint = rng.uniform(0.3, 1.0, 3).astype(np.float32)
        img = img + amp * periodic_texture(rng, size)[..., None] * tint
    return img.astype(np.float32)


def _draw_object(rng, spec: DomainSpec, size: int, x, y) -> tuple[np.ndarray, Callable]:
    fns, weights = zip(*spec.shapes)
    p = np.asarray(weights) / np.sum(weights)
    fn = fns[rng.choice(len(fns), p=p)]
    r = rng.uniform(*spec.radius) * size
    margin = 0.3 * r
    cx, cy = rng.uniform(margin, size - margin, 2)
    return fn(rng, x, y, cx, cy, r), (cx, cy, r)


#: a training augmentation: (quarter turns k, horizontal flip, channel order)
Augmentation = tuple[int, bool, tuple[int, int, int]]


def draw_augmentation(rng: np.random.Generator) -> Augmentation:
    """A random rotation by k quarter turns, a flip half of the time and a channel
    permutation half of the time (what ``ppd pretrain`` and ``ppd train-ruac`` use)."""
    k = int(rng.integers(4))
    flip = bool(rng.random() < 0.5)
    perm = tuple(int(c) for c in rng.permutation(3)) if rng.random() < 0.5 else (0, 1, 2)
    return k, flip, perm  # type: ignore[return-value]


def augment(image: np.ndarray, masks: np.ndarray, aug: Augmentation) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``aug`` to an (H, W, 3) image and its (N, H, W) masks (contiguous copies)."""
    k, flip, perm = aug
    img, m = np.rot90(image, k), np.rot90(masks, k, axes=(1, 2))
    if flip:
        img, m = img[:, ::-1], m[:, :, ::-1]
    return np.ascontiguousarray(img[..., list(perm)]), np.ascontiguousarray(m)


def make_scene(seed: int, domain: str = TRAIN_DOMAIN, size: int = 256, min_area: int = 48) -> Scene:
    """Generate one scene.

    Args:
        seed: any non-negative integer; with ``domain`` and ``size`` it fixes the scene.
        domain: one of :data:`DOMAINS` (or :data:`CURRICULUM_DOMAIN`).
        size: side of the square image in pixels.
        min_area: instances with fewer visible pixels are not returned.

    Returns:
        A :class:`~ppd.data.types.Scene` with at least one instance.
    """
    if domain not in DOMAIN_SPECS:
        raise ValueError(f"unknown domain {domain!r}; known domains: {', '.join(DOMAINS)}")
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    spec = DOMAIN_SPECS[domain]
    for attempt in range(50):
        rng = np.random.default_rng([int(seed), _DOMAIN_SALT[domain], size, attempt])
        scene = _render(rng, spec, size, min_area)
        if scene is not None:
            img, masks = scene
            return Scene(img, masks, domain=domain, seed=int(seed))
    raise RuntimeError(f"could not draw a scene with an object for seed {seed} in {domain!r}")


def _render(rng, spec: DomainSpec, size: int, min_area: int):
    x, y = _grid(size)
    img = _background(rng, spec, size)
    n_obj = int(rng.integers(spec.n_objects[0], spec.n_objects[1] + 1))
    n_dis = int(rng.integers(spec.distractors[0], spec.distractors[1] + 1))
    # Paint order: distractors and objects interleaved at random.
    kinds = np.array([1] * n_obj + [0] * n_dis)
    rng.shuffle(kinds)
    owner = np.full((size, size), -1, dtype=np.int32)
    n_inst = 0
    for is_obj in kinds:
        if is_obj:
            shape, (cx, cy, r) = _draw_object(rng, spec, size, x, y)
        else:
            small = DomainSpec((1, 1), (0.02, 0.05), _TRAIN_SHAPES, *[(0, 0)] * 4, 0, 0)
            shape, (cx, cy, r) = _draw_object(rng, small, size, x, y)
        if shape.sum() < 4:
            continue
        local_bg = img[shape].mean(axis=0)
        col = _colour_at_distance(rng, local_bg, rng.uniform(*spec.contrast))
        if spec.fill == "radial":
            d = np.hypot(x - cx, y - cy)[..., None] / max(r, 1.0)
            col2 = _colour_at_distance(rng, col, rng.uniform(0.1, 0.3))
            fill = col + (col2 - col) * np.clip(d, 0, 1)
        else:
            th = rng.uniform(0, 2 * np.pi)
            shade = ((x - cx) * np.cos(th) + (y - cy) * np.sin(th))[..., None] / max(r, 1.0)
            fill = col + rng.uniform(0, 0.08) * shade
        if rng.random() < spec.obj_texture:
            amp = rng.uniform(0.05, 0.1 + 0.2 * spec.obj_texture)
            fill = fill + amp * periodic_texture(rng, size)[..., None]
        img = np.where(shape[..., None], fill, img)
        if is_obj:
            owner[shape] = n_inst
            n_inst += 1
        else:
            owner[shape] = -1
    sigma = rng.uniform(*spec.blur)
    if sigma > 0.05:
        img = ndimage.gaussian_filter(img, (sigma, sigma, 0))
    img = img + rng.normal(0, rng.uniform(*spec.noise), img.shape).astype(np.float32)
    img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    masks = [owner == i for i in range(n_inst)]
    masks = [m for m in masks if m.sum() >= min_area]
    if not masks:
        return None
    return img, np.stack(masks)


class ProceduralScenes(Sequence[Scene]):
    """A fixed, indexable set of procedural scenes: scene ``i`` is
    ``make_scene(seed + i, domain, size)``. Nothing is stored; scenes are drawn on access.
    """

    def __init__(self, domain: str = TRAIN_DOMAIN, n: int = 100, seed: int = 0, size: int = 256):
        if domain not in DOMAIN_SPECS:
            raise ValueError(f"unknown domain {domain!r}; known domains: {', '.join(DOMAINS)}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.domain, self.n, self.seed, self.size = domain, n, seed, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(f"scene index {i} out of range for {self.n} scenes")
        return make_scene(self.seed + (i % self.n), self.domain, self.size)

    def __iter__(self) -> Iterator[Scene]:
        for i in range(self.n):
            yield self[i]


def photometric_jitter(image: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """A random global change of appearance of an (H, W, 3) uint8 image (masks unchanged).

    In this order, with ``s = strength``: contrast scaled toward the image mean by a
    factor uniform in [1 - 0.6 s, 1]; a per-channel gain uniform in 1 +- 0.2 s and a
    brightness shift uniform in +-0.1 s; a Gaussian blur of sigma uniform in [0, 1.2 s]
    px; Gaussian noise of std uniform in [0, 0.06 s]. Generic photometric augmentation
    (as in any detection or segmentation pipeline), not a copy of one benchmark domain.
    """
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    img = image.astype(np.float32) / 255.0
    mean = img.mean(axis=(0, 1), keepdims=True)
    img = mean + (img - mean) * rng.uniform(1 - 0.6 * strength, 1)
    img = img * rng.uniform(1 - 0.2 * strength, 1 + 0.2 * strength, 3) + rng.uniform(-0.1, 0.1) * strength
    sigma = rng.uniform(0, 1.2 * strength)
    if sigma > 0.05:
        img = ndimage.gaussian_filter(img, (sigma, sigma, 0))
    img = img + rng.normal(0, rng.uniform(0, 0.06 * strength), img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


class JitteredScenes(Sequence[Scene]):
    """Scenes of ``base`` with :func:`photometric_jitter` applied to a fraction ``p`` of
    them. Scene i's jitter is drawn from ``default_rng([seed, i])``, so scene i is the
    same image on every access (an environment encodes it once)."""

    def __init__(self, base: Sequence[Scene], strength: float = 1.0, p: float = 0.5, seed: int = 0) -> None:
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p}")
        if strength < 0:
            raise ValueError(f"strength must be >= 0, got {strength}")
        self.base, self.strength, self.p, self.seed = base, float(strength), float(p), int(seed)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        scene = self.base[i]
        rng = np.random.default_rng([self.seed, i % len(self)])
        if rng.random() >= self.p:
            return scene
        return dataclasses.replace(scene, image=photometric_jitter(scene.image, rng, self.strength))
