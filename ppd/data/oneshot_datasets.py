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

from ppd.data.loaders import IMAGE_EXTENSIONS, CocoDataset, ImageMaskFolder, PathLike, is_data_file
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
    """``n`` one-shot pairs of a folder per class (layouts in the module docstring):
    reference and target are two images of the same class folder."""

    def __init__(self, root: PathLike, n: int = 100, seed: int = 0) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"class folder root {root} is not a directory")
        self.n, self.seed = int(n), int(seed)
        self.folders: dict[str, ImageMaskFolder] = {}
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if (folder / "images").is_dir() and (folder / "masks").is_dir():
                data = ImageMaskFolder(folder / "images", folder / "masks", mask_mode="binary", domain=folder.name)
            else:
                data = _SameFolder(folder)
            if len(data):
                self.folders[folder.name] = data
        if not self.folders:
            raise ValueError(f"{root} holds no class folder with image/mask pairs")
        self.by_class = {c: {k: [0] for k in range(len(d))} for c, d in self.folders.items()}
        _draw(np.random.default_rng(0), self.by_class)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> OneShotPair:  # type: ignore[override]
        if not -self.n <= i < self.n:
            raise IndexError(f"pair {i} out of range for {self.n} pairs")
        label, ref_i, _, tgt_i = _draw(np.random.default_rng([self.seed, i % self.n]), self.by_class)
        ref, tgt = self.folders[label][ref_i], self.folders[label][tgt_i]
        if ref.num_objects == 0 or tgt.num_objects == 0:
            raise ValueError(f"class {label}: an empty mask in pair {i} ({ref.meta['mask_file']}, {tgt.meta['mask_file']})")
        return OneShotPair(ref, 0, tgt, [0], label)


class _SameFolder(ImageMaskFolder):
    """FSS-1000's layout: images and their PNG masks side by side, paired by stem (an
    image that is itself a PNG needs another extension, as FSS-1000's jpg images)."""

    def __init__(self, folder: Path) -> None:
        files = [p for p in sorted(folder.iterdir()) if is_data_file(p)]
        masks = {p.stem: p for p in files if p.suffix.lower() == ".png"}
        images = {p.stem: p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS and p.suffix.lower() != ".png"}
        self.pairs = [(images[s], masks[s]) for s in sorted(images.keys() & masks.keys())]
        self.mask_mode, self.domain = "binary", folder.name
