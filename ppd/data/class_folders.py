"""A folder per class: each sub-folder holds the images and masks of one object class.

Two layouts per class folder, the first FSS-1000's (the one-shot data of the PPD paper),
the second ppd's image/mask folder one level down::

    ROOT/CLASS/1.jpg  ROOT/CLASS/1.png  ...              (image and mask PNG by file stem)
    ROOT/CLASS/images/1.jpg  ROOT/CLASS/masks/1.png  ...

:class:`ClassFolders` reads the whole tree as one dataset (a sequence of
:class:`~ppd.data.types.Scene`). Every mask PNG is one object, its nonzero pixels
(:class:`~ppd.data.loaders.ImageMaskFolder` in binary mode), and the object's class is
its folder's name, kept in ``scene.meta["category_ids"]`` as a COCO scene keeps its
categories. So everything that pairs objects by class treats it as it treats COCO:
``ppd bench --protocol oneshot`` draws each target's reference from another image of its
class, and so do ``ppd train``'s one-shot start sets (:mod:`ppd.data.references`); every
other protocol sees an image/mask dataset.

In FSS-1000's layout an image must not itself be a PNG (a PNG there is a mask); hidden
files (``.DS_Store``, ``._NAME``) are never data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ppd.data.loaders import IMAGE_EXTENSIONS, ImageMaskFolder, PathLike, is_data_file
from ppd.data.types import Scene

logger = logging.getLogger(__name__)

__all__ = ["ClassFolders", "class_dirs", "class_files", "is_class_tree"]


def class_dirs(root: Path) -> list[Path]:
    """The class folders of ``root``: its sub-folders (not hidden), by name."""
    return sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))


def class_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """``(images, masks)``: the data files of one class folder, in either layout (module
    docstring), unpaired; images are the readable image types, masks every other file
    of the masks' place (so a mask that is not a PNG shows up to be refused)."""
    if (folder / "images").is_dir() or (folder / "masks").is_dir():
        files = lambda d: sorted(p for p in d.iterdir() if is_data_file(p)) if d.is_dir() else []  # noqa: E731
        return [p for p in files(folder / "images") if p.suffix.lower() in IMAGE_EXTENSIONS], files(folder / "masks")
    files = sorted(p for p in folder.iterdir() if is_data_file(p))
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS and p.suffix.lower() != ".png"]
    return images, [p for p in files if p.suffix.lower() == ".png"]


def is_class_tree(root: Path) -> bool:
    """Whether ``root`` looks like a folder per class: no ``images/`` or ``masks/`` of its
    own, and at least one sub-folder holding an image in either layout."""
    root = Path(root)
    if (root / "images").is_dir() or (root / "masks").is_dir():
        return False
    return any(class_files(d)[0] for d in class_dirs(root))


class _SameFolder(ImageMaskFolder):
    """FSS-1000's layout: images and their PNG masks side by side, paired by stem."""

    def __init__(self, folder: Path, domain: str) -> None:
        images, masks = class_files(folder)
        by_stem = {p.stem: p for p in masks}
        self.pairs = [(p, by_stem[p.stem]) for p in images if p.stem in by_stem]
        self.mask_mode, self.domain = "binary", domain


class ClassFolders(Sequence):
    """The images of a folder per class as one dataset (module docstring).

    Attributes:
        pairs: ``(image file, mask file)`` of every item, class by class.

    Args:
        root: the folder of class folders.
        domain: the ``Scene.domain`` of every scene.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        ValueError: no class folder holds an image/mask pair.
    """

    def __init__(self, root: PathLike, domain: str = "folder") -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"class folder root {root} is not a directory")
        self.root, self.domain = root, domain
        self._items: list[tuple[str, ImageMaskFolder, int]] = []
        for folder in class_dirs(root):
            if (folder / "images").is_dir() and (folder / "masks").is_dir():
                try:
                    data: ImageMaskFolder = ImageMaskFolder(folder / "images", folder / "masks", mask_mode="binary",
                                                            domain=domain)
                except ValueError:  # no pair in this class folder
                    data = None
            else:
                data = _SameFolder(folder, domain)
            if data is None or not len(data):
                logger.warning("class folder %s holds no image/mask pair; left out", folder)
                continue
            self._items += [(folder.name, data, k) for k in range(len(data))]
        if not self._items:
            raise ValueError(f"{root} holds no class folder with image/mask pairs (ROOT/CLASS/1.jpg + 1.png, or "
                             "ROOT/CLASS/images/ + masks/)")
        self.pairs = [data.pairs[k] for _, data, k in self._items]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> Scene:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        cls, data, k = self._items[index]
        scene = data[k]
        meta = {**scene.meta, "class": cls, "category_ids": [cls] * scene.num_objects}
        return Scene(scene.image, scene.masks, domain=self.domain, seed=scene.seed, meta=meta)

    def image_class(self, index: int) -> str:
        """The class of item ``index`` (its folder), without reading it."""
        return self._items[index][0]

    def image_categories(self, index: int) -> list[str]:
        """The categories of item ``index``'s objects, without reading it: its class
        (one object per mask)."""
        return [self.image_class(index)]

    def image_id(self, index: int) -> str:
        """``CLASS/STEM``: the item's name in a benchmark's tables."""
        cls, data, k = self._items[index]
        return f"{cls}/{data.pairs[k][0].stem}"
