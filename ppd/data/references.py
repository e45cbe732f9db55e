"""One-shot references of training objects: an image and mask of each object's class, drawn by seed.

A defender that refines feature-matching (FM) prompts has to see the errors FM makes,
so ``ppd train`` starts some defender episodes from FM sets (``fm_starts``); each needs
a reference of the target object's class. :class:`ReferencePicker` draws one for any
object of a training set, by the rule that fits what the data says about classes (the
rules of the ``oneshot`` bench protocol, :mod:`ppd.bench.protocols.oneshot`):

* a procedural scene (``Scene.seed`` of a ppd domain): the object's class is read off
  the generator (:func:`ppd.data.oneshot_pairs.object_classes`; a photometrically
  jittered copy is read off its unjittered scene) and the reference is a new scene of
  the domain with one instance of that class
  (:func:`~ppd.data.oneshot_pairs.reference_scene`);
* a scene with ``meta["category_ids"]`` (COCO): an instance of the same category in
  another image of the same source, else another instance in the same image;
* any other scene (a folder of images and masks: no classes): the largest object of
  another image of the same source, often of another kind, as FM from a loosely chosen
  reference would be.

The draw for object ``obj`` of scene ``index`` comes from ``default_rng([seed,
REFERENCE_SALT, index, obj])``: the same reference whatever order the objects are asked
in, so a resumed training run sees the same FM sets. None when no reference exists (a
category seen once, a source of one image).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from ppd.data.types import Scene

logger = logging.getLogger(__name__)

__all__ = ["REFERENCE_SALT", "ReferencePicker"]

#: Salt of the reference streams (kept apart from every other stream of a run's seed).
REFERENCE_SALT = 918_273


class ReferencePicker:
    """A reference ``(image, mask)`` for any object of a set of scenes.

    Args:
        scene_of: the ``i``-th scene (e.g. a :class:`~ppd.envs.world.PromptWorld`'s
            record of it, already read), for ``0 <= i < n``.
        n: number of scenes.
        seed: seed of the draws.
    """

    def __init__(self, scene_of: Callable[[int], Scene], n: int, seed: int = 0) -> None:
        if n < 1:
            raise ValueError(f"need at least one scene, got n={n}")
        self.scene_of, self.n, self.seed = scene_of, int(n), int(seed)
        self._classes: dict[int, list[Any] | None] = {}
        self._categories: dict[tuple[str, Any], list[int]] | None = None
        self._by_domain: dict[str, list[int]] | None = None

    def __call__(self, index: int, obj: int) -> tuple[np.ndarray, np.ndarray] | None:
        scene = self.scene_of(index)
        if not 0 <= obj < scene.num_objects:
            raise IndexError(f"object {obj} out of range for scene {index} with {scene.num_objects} objects")
        stream = np.random.default_rng([self.seed, REFERENCE_SALT, int(index), int(obj)])
        classes = self._procedural_classes(index, scene)
        if classes is not None:
            from ppd.data.oneshot_pairs import reference_scene

            ref, k = reference_scene(classes[obj], scene.domain, int(stream.integers(2**31)), scene.image.shape[0])
            return ref.image, ref.masks[k]
        cats = scene.meta.get("category_ids")
        if cats is not None and len(cats) == scene.num_objects:
            return self._category_reference(index, scene, obj, cats[obj], stream)
        return self._other_image_reference(index, scene, stream)

    # -- procedural scenes ---------------------------------------------------------
    def _procedural_classes(self, index: int, scene: Scene) -> list[Any] | None:
        """The class of each object of a procedural scene (None for any other scene)."""
        if index not in self._classes:
            from ppd.data.oneshot_pairs import object_classes
            from ppd.data.scenes import DOMAINS, make_scene

            classes = None
            if scene.seed >= 0 and scene.domain in DOMAINS and scene.image.shape[0] == scene.image.shape[1]:
                full = make_scene(scene.seed, scene.domain, scene.image.shape[0])  # unjittered pixels
                if len(full.masks) == scene.num_objects and np.array_equal(full.masks, scene.masks):
                    classes = object_classes(full, scene.seed, scene.domain)
            self._classes[index] = classes
        return self._classes[index]

    # -- datasets ------------------------------------------------------------------
    def _domains(self) -> dict[str, list[int]]:
        """Scene indices by source (``Scene.domain``)."""
        if self._by_domain is None:
            self._by_domain = {}
            for i in range(self.n):
                self._by_domain.setdefault(self.scene_of(i).domain, []).append(i)
        return self._by_domain

    def _category_reference(self, index: int, scene: Scene, obj: int, cat: Any, stream: np.random.Generator):
        if self._categories is None:
            self._categories = {}
            for i in range(self.n):
                s = self.scene_of(i)
                for c in set(s.meta.get("category_ids") or ()):
                    self._categories.setdefault((s.domain, c), []).append(i)
        others = [i for i in self._categories.get((scene.domain, cat), []) if i != index]
        if others:
            other = self.scene_of(others[int(stream.integers(len(others)))])
            objs = [k for k, c in enumerate(other.meta["category_ids"]) if c == cat]
            return other.image, other.masks[objs[int(stream.integers(len(objs)))]]
        same = [k for k, c in enumerate(scene.meta["category_ids"]) if c == cat and k != obj]
        if same:
            return scene.image, scene.masks[same[int(stream.integers(len(same)))]]
        return None

    def _other_image_reference(self, index: int, scene: Scene, stream: np.random.Generator):
        others = [i for i in self._domains().get(scene.domain, []) if i != index]
        for _ in range(min(len(others), 8)):  # a few tries past images without objects
            other = self.scene_of(others[int(stream.integers(len(others)))])
            if other.num_objects:
                areas = other.masks.reshape(other.num_objects, -1).sum(1)
                return other.image, other.masks[int(np.argmax(areas))]
        return None
