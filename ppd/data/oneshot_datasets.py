"""One-shot pairs from datasets: reference and target of the same COCO category or class folder.

* :class:`CocoPairs`: a COCO annotation file; a pair is a reference instance and a
  target image holding instances of the same category (the target's objects are all
  of its instances of that category).
* :class:`ClassFolderPairs`: a folder per class, the layout of FSS-1000 (the paper's
  training data) or ppd's image/mask folders one level down::

      ROOT/CLASS/1.jpg  ROOT/CLASS/1.png  ...          (image and binary mask by stem), or
      ROOT/CLASS/images/1.jpg  ROOT/CLASS/masks/1.png  ...

  Every mask PNG is one object (nonzero pixels; :class:`ppd.data.loaders.ImageMaskFolder`
  in binary mode); a class needs at least two images.

Pair ``i`` is drawn from ``default_rng([seed, i])``: a class uniformly among those with
instances in at least two images, then two distinct images of it, the reference
instance uniformly among the reference image's instances of the class. Images are read
when a pair is indexed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ppd.data.loaders import CocoDataset, PathLike
from ppd.data.oneshot_pairs import OneShotPair

__all__ = ["ClassFolderPairs", "CocoPairs"]


def _draw(rng: np.random.Generator, by_class: dict[Any, dict[int, list[int]]]) -> tuple[Any, int, int, int]:
    """``(class, reference image, reference object, target image)`` by the module rule;
    ``by_class``: class -> image index -> object indices of the class in that image."""
    classes = sorted((c for c, imgs in by_class.items() if len(imgs) >= 2), key=str)
    if not classes:
        raise ValueError("no class has objects in two images: a one-shot pair needs two")
    label = classes[int(rng.integers(len(classes)))]
    images = sorted(by_class[label])
    ref, tgt = (images[int(k)] for k in rng.choice(len(images), 2, replace=False))
    objs = by_class[label][ref]
    return label, ref, objs[int(rng.integers(len(objs)))], tgt


class CocoPairs(Sequence):
    """``n`` one-shot pairs of a COCO dataset (:class:`~ppd.data.loaders.CocoDataset`
    arguments), the same category in reference and target. Which instance is which is
    read from the annotations (``category_id``), so indexing only decodes two images."""

    def __init__(self, annotation_json: PathLike, images_dir: PathLike, n: int = 100, seed: int = 0,
                 min_area: float = 0) -> None:
        self.dataset = CocoDataset(annotation_json, images_dir, min_area=min_area)
        self.n, self.seed = int(n), int(seed)
        by_class: dict[Any, dict[int, list[int]]] = {}
        for index, image_id in enumerate(self.dataset.image_ids):
            for obj, ann in enumerate(self.dataset.anns[image_id]):
                by_class.setdefault(ann["category_id"], {}).setdefault(index, []).append(obj)
        self.by_class = by_class
        _draw(np.random.default_rng(0), by_class)  # fails now, not at the first pair, without two images

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> OneShotPair:  # type: ignore[override]
        if not -self.n <= i < self.n:
            raise IndexError(f"pair {i} out of range for {self.n} pairs")
        label, ref_i, ref_obj, tgt_i = _draw(np.random.default_rng([self.seed, i % self.n]), self.by_class)
        ref, tgt = self.dataset[ref_i], self.dataset[tgt_i]
        # Scenes drop instances hidden by overlap: find them again by annotation id.
        ref_ann = self.dataset.anns[self.dataset.image_ids[ref_i]][ref_obj]["id"]
        if ref_ann not in ref.meta["annotation_ids"]:
            ref_ann = next(a for a, c in zip(ref.meta["annotation_ids"], ref.meta["category_ids"]) if c == label)
        targets = [k for k, c in enumerate(tgt.meta["category_ids"]) if c == label]
        return OneShotPair(ref, ref.meta["annotation_ids"].index(ref_ann), tgt, targets, label)


class ClassFolderPairs(Sequence):
    """``n`` one-shot pairs of a folder per class (:class:`~ppd.data.class_folders.ClassFolders`,
    layouts in the module docstring): reference and target are two images of the same
    class folder."""

    def __init__(self, root: PathLike, n: int = 100, seed: int = 0) -> None:
        from ppd.data.class_folders import ClassFolders

        self.n, self.seed = int(n), int(seed)
        self.dataset = ClassFolders(root, domain=Path(root).name)
        self.by_class: dict[Any, dict[int, list[int]]] = {}
        for i in range(len(self.dataset)):
            self.by_class.setdefault(self.dataset.image_class(i), {})[i] = [0]
        _draw(np.random.default_rng(0), self.by_class)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> OneShotPair:  # type: ignore[override]
        if not -self.n <= i < self.n:
            raise IndexError(f"pair {i} out of range for {self.n} pairs")
        label, ref_i, _, tgt_i = _draw(np.random.default_rng([self.seed, i % self.n]), self.by_class)
        ref, tgt = self.dataset[ref_i], self.dataset[tgt_i]
        if ref.num_objects == 0 or tgt.num_objects == 0:
            raise ValueError(f"class {label}: an empty mask in pair {i} ({ref.meta['mask_file']}, {tgt.meta['mask_file']})")
        return OneShotPair(ref, 0, tgt, [0], label)
