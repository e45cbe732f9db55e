"""Procedural one-shot pairs: a reference and a target scene that share an object class.

An object class (:class:`ObjectClass`) is a shape family (ellipse, rectangle, polygon,
blob, bar, arc, needle, superformula, star: the shape functions of
:mod:`ppd.data.scenes`) and an appearance family (a base colour, jittered by at most
~0.05 per instance, and a texture of one kind and strength). Instances of a class differ
in size, pose, shape parameters and shading, as the domain's objects do.

* :func:`make_pair` draws a pair by seed in any procedural domain: a class, a reference
  scene with one instance (painted last, so whole), a target scene with one or two; both scenes hold other
  objects (of other classes) and distractors as the domain does, on the domain's
  backgrounds, blur and noise, with the class's contrast to the background in the
  domain's range (``lowcontrast`` stays low contrast).
* :func:`object_classes` gives the classes of the instances of an existing
  :func:`~ppd.data.scenes.make_scene` scene (the shape family as drawn, the appearance
  measured on the image), and :func:`reference_scene` draws a reference for one of them:
  how a benchmark pairs its own procedural targets.

Everything is a pure function of its seeds (numpy PCG64), as :mod:`ppd.data.scenes`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ppd.data import scenes as sc
from ppd.data.types import Scene

__all__ = ["ObjectClass", "OneShotPair", "domain_families", "draw_class", "make_pair", "object_classes",
           "reference_scene", "render_class_scene"]

#: Salts of the random streams of this module (kept apart from make_scene's).
PAIR_SALT, REFERENCE_SALT = 734_211, 734_212
TEXTURE_KINDS = ("stripes", "checker", "dots", "noise")
#: Least RGB distance of another object's colour to the class colour when it has the class's shape.
OTHER_CLASS_COLOUR = 0.3
#: Per-channel colour jitter (std) of one instance around its class colour.
COLOUR_JITTER = 0.03
_NAMES = {sc.shape_ellipse: "ellipse", sc.shape_rectangle: "rectangle", sc.shape_polygon: "polygon",
          sc.shape_blob: "blob", sc.shape_bar: "bar", sc.shape_arc: "arc", sc.shape_superformula: "superformula",
          sc.shape_star: "star"}


@dataclass(frozen=True)
class ObjectClass:
    """A shape family and an appearance family.

    Attributes:
        shape: the shape family's name (see :func:`domain_families`).
        colour: base RGB fill colour in [0, 1].
        texture: texture amplitude added to the fill (0: flat).
        texture_kind: one of :data:`TEXTURE_KINDS` (used when ``texture > 0``).
    """

    shape: str
    colour: tuple[float, float, float]
    texture: float = 0.0
    texture_kind: str = "noise"


@dataclass
class OneShotPair:
    """A reference with its object and a target with the objects of the same class.

    ``label`` names the shared class: an :class:`ObjectClass` for procedural pairs, the
    category id (COCO) or class folder name for dataset pairs."""

    reference: Scene
    ref_object: int
    target: Scene
    target_objects: list[int]
    label: Any

    @property
    def ref_mask(self) -> np.ndarray:
        return self.reference.masks[self.ref_object]

    @property
    def target_mask(self) -> np.ndarray:
        """Union of the target's objects of the class."""
        return self.target.masks[self.target_objects].any(axis=0)


def domain_families(domain: str) -> list[tuple[str, Any, float]]:
    """``(name, shape function, weight)`` of the shape families a domain draws (the
    ``thin`` domain's needle-thin ellipse is ``needle``)."""
    spec = _spec(domain)
    return [(_NAMES.get(fn, "needle"), fn, float(w)) for fn, w in spec.shapes]


def _spec(domain: str) -> sc.DomainSpec:
    if domain not in sc.DOMAIN_SPECS:
        raise ValueError(f"unknown domain {domain!r}; known domains: {', '.join(sc.DOMAINS)}")
    return sc.DOMAIN_SPECS[domain]


def draw_class(rng: np.random.Generator, domain: str) -> ObjectClass:
    """A random class of ``domain``: a shape family by the domain's weights, a colour,
    and a texture with the domain's probability and strength of object texture."""
    spec = _spec(domain)
    fams = domain_families(domain)
    w = np.array([f[2] for f in fams])
    name = fams[int(rng.choice(len(fams), p=w / w.sum()))][0]
    colour = tuple(float(c) for c in rng.uniform(0.1, 0.9, 3))
    texture, kind = 0.0, "noise"
    if rng.random() < spec.obj_texture:
        texture = float(rng.uniform(0.05, 0.1 + 0.2 * spec.obj_texture))
        kind = str(rng.choice(TEXTURE_KINDS))
    return ObjectClass(name, colour, texture, kind)


def _paint(rng, img, owner, index, fn, colour, texture, kind, spec, size, x, y):
    """Paint one object of shape ``fn`` and base ``colour`` (the domain's shading or
    radial fill, plus texture); returns the new image. ``owner`` marks its pixels."""
    r = rng.uniform(*spec.radius) * size
    cx, cy = rng.uniform(0.3 * r, size - 0.3 * r, 2)
    shape = fn(rng, x, y, cx, cy, r)
    col = np.asarray(colour, np.float32)
    if spec.fill == "radial":
        d = np.hypot(x - cx, y - cy)[..., None] / max(r, 1.0)
        col2 = sc._colour_at_distance(rng, col, rng.uniform(0.1, 0.3))
        fill = col + (col2 - col) * np.clip(d, 0, 1)
    else:
        th = rng.uniform(0, 2 * np.pi)
        fill = col + rng.uniform(0, 0.08) * ((x - cx) * np.cos(th) + (y - cy) * np.sin(th))[..., None] / max(r, 1.0)
    if texture > 0:
        fill = fill + texture * sc.periodic_texture(rng, size, kind)[..., None]
    owner[shape] = index
    return np.where(shape[..., None], fill, img)


def _other_object(rng, cls: ObjectClass, domain: str, local_bg: np.ndarray) -> tuple[Any, np.ndarray]:
    """The shape function and colour of an object of another class than ``cls``: the
    domain's shapes and contrast, but never the class's shape with a colour within
    :data:`OTHER_CLASS_COLOUR` of the class colour."""
    spec, fams = _spec(domain), domain_families(domain)
    w = np.array([f[2] for f in fams])
    name, fn, _ = fams[int(rng.choice(len(fams), p=w / w.sum()))]
    col = sc._colour_at_distance(rng, local_bg, rng.uniform(*spec.contrast))
    if name == cls.shape:
        for _ in range(20):
            if np.linalg.norm(col - np.asarray(cls.colour)) >= OTHER_CLASS_COLOUR:
                break
            col = sc._random_colour(rng)
        else:
            col = np.clip(1.0 - np.asarray(cls.colour, np.float32), 0, 1)
    return fn, col


def render_class_scene(rng: np.random.Generator, domain: str, cls: ObjectClass, size: int = 256, n_class: int = 1,
                       min_area: int = 48, seed: int = -1, on_top: bool = False) -> Scene:
    """A scene of ``domain`` with ``n_class`` instances of ``cls`` among the domain's
    other objects and distractors (painted in random order, so instances may be
    occluded; ``on_top``: painted last, whole, as a reference example should be), on a
    background whose colour is at the domain's contrast from the class colour. Redrawn (up to 50 times) until every class instance shows ``min_area`` pixels.

    ``scene.meta``: ``class_objects`` (indices of the class's instances among the
    masks) and ``object_class`` (``cls`` as a dict).
    """
    spec = _spec(domain)
    fn = dict((n, f) for n, f, _ in domain_families(domain)).get(cls.shape)
    if fn is None:
        raise ValueError(f"domain {domain!r} has no shape family {cls.shape!r}; it has "
                         f"{', '.join(n for n, _, _ in domain_families(domain))}")
    x, y = sc._grid(size)
    for _ in range(50):
        img = sc._background(rng, spec, size)
        bg = sc._colour_at_distance(rng, np.asarray(cls.colour, np.float32), rng.uniform(*spec.contrast))
        img = np.clip(img - img.mean(axis=(0, 1)) + bg, 0, 1)
        lo, hi = spec.n_objects
        n_other = int(rng.integers(max(lo - n_class, 0), max(hi - n_class, 0) + 1))
        n_dis = int(rng.integers(spec.distractors[0], spec.distractors[1] + 1))
        kinds = np.array([2] * n_class + [1] * n_other + [0] * n_dis)
        rng.shuffle(kinds)
        if on_top:
            kinds = np.concatenate([kinds[kinds != 2], kinds[kinds == 2]])
        owner = np.full((size, size), -1, np.int32)
        n_inst, is_class = 0, []
        small = sc.DomainSpec((1, 1), (0.02, 0.05), sc._TRAIN_SHAPES, *[(0, 0)] * 4, 0, 0)
        for kind in kinds:
            if kind == 2:
                col = np.clip(np.asarray(cls.colour) + rng.normal(0, COLOUR_JITTER, 3), 0, 1)
                img = _paint(rng, img, owner, n_inst, fn, col, cls.texture, cls.texture_kind, spec, size, x, y)
            else:
                s = spec if kind == 1 else small
                probe = rng.uniform(0.3, 0.7, 2) * size
                local = img[int(probe[1]), int(probe[0])]
                other_fn, col = _other_object(rng, cls, domain, local) if kind == 1 else (
                    sc._TRAIN_SHAPES[int(rng.integers(4))][0], sc._random_colour(rng))
                tex = float(rng.uniform(0.05, 0.1 + 0.2 * spec.obj_texture)) if rng.random() < spec.obj_texture else 0.0
                img = _paint(rng, img, owner, n_inst if kind == 1 else -1, other_fn, col, tex,
                             str(rng.choice(TEXTURE_KINDS)), s, size, x, y)
            if kind > 0:
                is_class.append(kind == 2)
                n_inst += 1
        sigma = rng.uniform(*spec.blur)
        if sigma > 0.05:
            img = ndimage.gaussian_filter(img, (sigma, sigma, 0))
        img = img + rng.normal(0, rng.uniform(*spec.noise), img.shape).astype(np.float32)
        areas = np.bincount(owner[owner >= 0].ravel(), minlength=n_inst)
        if not all(areas[i] >= min_area for i in range(n_inst) if is_class[i]):
            continue
        keep = [i for i in range(n_inst) if areas[i] >= min_area]
        masks = np.stack([owner == i for i in keep])
        image = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
        meta = {"class_objects": [k for k, i in enumerate(keep) if is_class[i]], "object_class": dataclasses.asdict(cls)}
        return Scene(image, masks, domain=domain, seed=seed, meta=meta)
    raise RuntimeError(f"could not draw a scene with {n_class} visible instances of {cls} in {domain!r}")


def make_pair(seed: int, domain: str = sc.TRAIN_DOMAIN, size: int = 256, max_targets: int = 2) -> OneShotPair:
    """The one-shot pair ``seed`` of ``domain``: a class (:func:`draw_class`), a
    reference scene with one instance and a target scene with 1..``max_targets``
    instances (:func:`render_class_scene`), each from its own stream of the seed."""
    _spec(domain)
    salt = sc._DOMAIN_SALT[domain]
    rng = np.random.default_rng([PAIR_SALT, int(seed), salt, size])
    cls = draw_class(rng, domain)
    n_target = int(rng.integers(1, max_targets + 1))
    ref = render_class_scene(np.random.default_rng([PAIR_SALT, int(seed), salt, size, 1]), domain, cls, size, 1,
                             seed=int(seed), on_top=True)
    tgt = render_class_scene(np.random.default_rng([PAIR_SALT, int(seed), salt, size, 2]), domain, cls, size, n_target,
                             seed=int(seed))
    return OneShotPair(ref, ref.meta["class_objects"][0], tgt, list(tgt.meta["class_objects"]), cls)


def object_classes(scene: Scene, seed: int, domain: str, min_area: int = 48) -> list[ObjectClass] | None:
    """The class of each instance of ``scene``, the scene ``make_scene(seed, domain,
    size)`` (None when it is not: other pixels, e.g. a jittered copy).

    The shape family is the one the generator drew: the scene is rendered again with
    recording shape functions (same random stream, so the same pixels). The appearance
    is measured on the image: the colour is the median of the instance's pixels at
    least 2 px inside it, the texture strength their mean per-channel standard
    deviation less the domain's largest noise (0 below 0.02), its kind ``noise``.
    """
    spec = _spec(domain)
    size = scene.image.shape[0]
    for attempt in range(50):
        calls: list[tuple[str, np.ndarray]] = []

        def recorder(name, fn):
            def draw(*args, **kwargs):
                shape = fn(*args, **kwargs)
                calls.append((name, shape))
                return shape
            return draw

        shapes = tuple((recorder(n, f), w) for n, f, w in domain_families(domain))
        rng = np.random.default_rng([int(seed), sc._DOMAIN_SALT[domain], size, attempt])
        out = sc._render(rng, dataclasses.replace(spec, shapes=shapes), size, min_area)
        if out is not None:
            break
    else:
        return None
    img, masks = out
    if img.shape != scene.image.shape or not np.array_equal(img, scene.image) or len(masks) != len(scene.masks):
        return None
    painted = [(n, s) for n, s in calls if s.sum() >= 4]  # _render skips smaller shapes
    classes = []
    for m in scene.masks:
        # A pixel belongs to the last object painted over it, so an instance is the
        # latest painted shape that contains all of its visible pixels.
        name = next(n for n, s in reversed(painted) if not (m & ~s).any())
        inner = ndimage.binary_erosion(m, iterations=2)
        pix = scene.image[inner if inner.sum() >= 8 else m].astype(np.float32) / 255.0
        colour = tuple(float(c) for c in np.median(pix, axis=0))
        texture = float(pix.std(axis=0).mean()) - spec.noise[1]
        classes.append(ObjectClass(name, colour, texture if texture >= 0.02 else 0.0, "noise"))
    return classes


def reference_scene(cls: ObjectClass, domain: str, seed: int, size: int = 256) -> tuple[Scene, int]:
    """A reference for class ``cls``: a scene of ``domain`` with one instance of it
    (:func:`render_class_scene`, drawn from ``seed``) and that instance's index."""
    _spec(domain)
    rng = np.random.default_rng([REFERENCE_SALT, int(seed), sc._DOMAIN_SALT[domain], size])
    ref = render_class_scene(rng, domain, cls, size, 1, seed=int(seed), on_top=True)
    return ref, ref.meta["class_objects"][0]
