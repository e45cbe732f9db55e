"""Loaders that read real datasets as :class:`ppd.data.types.Scene` sequences.

Both loaders index the files when built and read an image only when it is indexed, so a
large dataset costs nothing until used. Images are read as RGB uint8 by
:func:`ppd.data.images.read_rgb` (16-bit and float images scaled by their value range,
EXIF orientation applied, unreadable files named in a ``ValueError``). Mask PNGs follow
the same EXIF rule as images (a mask that carries its image's orientation tag stays
aligned with it). Hidden files (names starting with ``.``, such as macOS's ``._a.png``)
are never data.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np
from PIL import Image

from ppd.data.images import exif_orientation, read_rgb, upright
from ppd.data.types import Scene

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MASK_MODES = ("auto", "instance", "binary")
#: Void ("ignore") value of 8-bit instance masks.
VOID_ID = 255


class ImageMaskFolder(Sequence):
    """Images and mask PNGs in two folders, paired by file stem (``a.jpg`` <-> ``a.png``).

    Mask modes:
        * ``"binary"``: any nonzero pixel belongs to the one object (N = 1, or N = 0 for
          an all-zero mask).
        * ``"instance"``: each nonzero id is one instance, in increasing id order; 0 is
          background. In 8-bit masks 255 is void (VOC's "ignore" border), kept out of
          every instance and returned as ``meta["void"]``, so ids run 1..254; 16-bit
          masks have no void value (255 is an instance like any other).
        * ``"auto"``: binary when the mask's values are within {0, 255} or {0, 1},
          instance otherwise (so a one-instance id mask {0, 1} loads the same either way).
          A mask that looks like a binary mask with soft (anti-aliased, resized or
          JPEG-compressed) edges, whose edge read as ids would be dozens of tiny
          instances (and, in an 8-bit mask, the object itself void), is refused with a
          ``ValueError`` that says how to fix it (:func:`soft_edges`; its top value is
          255 in 8-bit masks and the largest value in 16-bit ones).

    Masks must be single-channel (L, P, I, 1) PNGs; an RGB mask is accepted only if its
    three channels are equal, and an alpha channel (LA, PA, RGBA) is ignored unless it
    is the only channel that varies (then the mask is refused, as its values are in the
    alpha channel). ``scene.meta`` holds ``image_file``, ``mask_file``,
    ``instance_ids`` (the mask value of each instance; [1] for binary masks) and ``void``
    ((H, W) bool, all False in binary mode and for 16-bit masks).

    Args:
        images_dir: folder of images (png, jpg, jpeg, bmp, tif, tiff).
        masks_dir: folder of mask PNGs.
        mask_mode: "auto", "instance" or "binary".
        domain: the ``Scene.domain`` of every scene.

    Raises:
        FileNotFoundError: if a folder does not exist.
        ValueError: for a bad ``mask_mode``, two images with the same stem, or no pair.
    """

    def __init__(
        self,
        images_dir: PathLike,
        masks_dir: PathLike,
        mask_mode: str = "auto",
        domain: str = "folder",
    ) -> None:
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
        images = _files_by_stem(_existing_dir(images_dir, "images_dir"), IMAGE_EXTENSIONS)
        masks = _files_by_stem(_existing_dir(masks_dir, "masks_dir"), (".png",))
        stems = sorted(images.keys() & masks.keys())
        if not stems:
            raise ValueError(
                f"no image/mask pairs found: {len(images)} images in {images_dir} and "
                f"{len(masks)} mask PNGs in {masks_dir} share no file stem"
            )
        unpaired = len(images) + len(masks) - 2 * len(stems)
        if unpaired:
            logger.warning("%d files in %s / %s have no partner", unpaired, images_dir, masks_dir)
        self.pairs = [(images[s], masks[s]) for s in stems]
        self.mask_mode = mask_mode
        self.domain = domain

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Scene:
        image_file, mask_file = self.pairs[_check_index(index, len(self))]
        image = _read_rgb(image_file)
        ids, eight_bit = _read_mask(mask_file)
        if ids.shape != image.shape[:2]:
            raise ValueError(
                f"mask {mask_file} has size {ids.shape} (H, W) but image {image_file} has "
                f"{image.shape[:2]}" + _orientation_hint(image_file)
            )
        values = np.unique(ids)
        binary = self.mask_mode == "binary" or (
            self.mask_mode == "auto" and (set(values) <= {0, 255} or set(values) <= {0, 1})
        )
        top = VOID_ID if eight_bit else int(values[-1])
        if not binary and self.mask_mode == "auto" and soft_edges(ids, top):
            raise ValueError(_soft_edges_message(mask_file, ids, values, top, eight_bit))
        if binary:
            instance_ids = [1] if values.max() > 0 else []
            masks = (ids > 0)[None] if instance_ids else np.zeros((0, *ids.shape), bool)
            void = np.zeros(ids.shape, bool)
        else:
            not_instances = (0, VOID_ID) if eight_bit else (0,)
            instance_ids = [int(v) for v in values if v not in not_instances]
            masks = ids[None] == np.array(instance_ids, dtype=ids.dtype)[:, None, None]
            void = ids == VOID_ID if eight_bit else np.zeros(ids.shape, bool)
        meta = {
            "image_file": str(image_file),
            "mask_file": str(mask_file),
            "instance_ids": instance_ids,
            "void": void,
        }
        return Scene(image=image, masks=masks, domain=self.domain, meta=meta)


def load_image_mask_folder(
    images_dir: PathLike, masks_dir: PathLike, mask_mode: str = "auto", domain: str = "folder"
) -> ImageMaskFolder:
    """Open an image folder and a mask folder as a lazy sequence of scenes.

    See :class:`ImageMaskFolder` for the pairing rule, the mask modes and ``meta``.
    """
    return ImageMaskFolder(images_dir, masks_dir, mask_mode, domain)


class CocoDataset(Sequence):
    """A COCO-format instance segmentation dataset, read with pycocotools.

    Polygons, uncompressed RLE and compressed RLE (including ``iscrowd`` annotations,
    which are kept) are all decoded by ``COCO.annToMask``. An annotation is kept when its
    category is in ``category_ids`` and its ``area`` field is at least ``min_area``;
    images left with no annotation are skipped, the rest are in increasing image id.

    COCO annotations may overlap, but a Scene's masks do not: overlapping pixels go to
    the smaller instance (larger instances are painted first), and an instance left with
    no pixel is dropped. Instances are ordered by decreasing annotation area.

    ``scene.meta`` holds ``image_id``, ``file_name``, and per instance ``category_ids``,
    ``annotation_ids`` and ``iscrowd``.

    Args:
        annotation_json: COCO annotation file.
        images_dir: folder the images' ``file_name`` is relative to.
        category_ids: categories to keep (all if None).
        min_area: least annotation area, in pixels, to keep an annotation.
        domain: the ``Scene.domain`` of every scene.

    Raises:
        FileNotFoundError: if the annotation file or the images folder does not exist.
        ValueError: for an unknown category id.
    """

    def __init__(
        self,
        annotation_json: PathLike,
        images_dir: PathLike,
        category_ids: Optional[Iterable[int]] = None,
        min_area: float = 0,
        domain: str = "coco",
    ) -> None:
        from pycocotools.coco import COCO

        if not Path(annotation_json).is_file():
            raise FileNotFoundError(f"annotation_json {annotation_json} is not a file")
        self.images_dir = _existing_dir(images_dir, "images_dir")
        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints its progress
            self.coco = COCO(str(annotation_json))
        if category_ids is None:
            keep_cats = set(self.coco.getCatIds())
        else:
            keep_cats = set(category_ids)
            unknown = keep_cats - set(self.coco.getCatIds())
            if unknown:
                raise ValueError(f"category_ids {sorted(unknown)} are not in {annotation_json}")
        self.anns: dict[int, list[dict]] = {}
        for image_id in sorted(self.coco.getImgIds()):
            anns = [
                a
                for a in self.coco.imgToAnns[image_id]
                if a["category_id"] in keep_cats and a["area"] >= min_area
            ]
            if anns:
                self.anns[image_id] = sorted(anns, key=lambda a: -a["area"])
        self.image_ids = list(self.anns)
        skipped = len(self.coco.getImgIds()) - len(self.image_ids)
        if skipped:
            logger.info("skipped %d images with no annotation kept in %s", skipped, annotation_json)
        self.domain = domain

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_categories(self, index: int) -> list:
        """The categories of image ``index``'s kept annotations, without reading it."""
        return [a["category_id"] for a in self.anns[self.image_ids[_check_index(index, len(self))]]]

    def __getitem__(self, index: int) -> Scene:
        image_id = self.image_ids[_check_index(index, len(self))]
        info = self.coco.imgs[image_id]
        image_file = self.images_dir / info["file_name"]
        image = _read_rgb(image_file)
        if image.shape[:2] != (info["height"], info["width"]):
            raise ValueError(
                f"image {image_file} has size {image.shape[:2]} (H, W) but the annotations "
                f"say {(info['height'], info['width'])}" + _orientation_hint(image_file)
            )
        anns = self.anns[image_id]
        # Paint larger instances first so that smaller ones stay visible where they overlap.
        label = np.full(image.shape[:2], -1, np.int64)
        for i, ann in enumerate(anns):
            mask = self.coco.annToMask(ann)
            if mask.shape != label.shape:  # an RLE whose 'size' is not its image's
                raise ValueError(
                    f"annotation {ann.get('id')} of image {image_file} has a mask of size {mask.shape} (H, W) "
                    f"but the image is {label.shape}; an RLE's 'size' must be its image's [height, width]"
                )
            label[mask > 0] = i
        masks = label[None] == np.arange(len(anns))[:, None, None]
        visible = masks.any(axis=(1, 2))
        kept = [a for a, v in zip(anns, visible) if v]
        meta = {
            "image_id": image_id,
            "file_name": info["file_name"],
            "category_ids": [a["category_id"] for a in kept],
            "annotation_ids": [a["id"] for a in kept],
            "iscrowd": [bool(a.get("iscrowd", 0)) for a in kept],
        }
        return Scene(image=image, masks=masks[visible], domain=self.domain, meta=meta)


def load_coco(
    annotation_json: PathLike,
    images_dir: PathLike,
    category_ids: Optional[Iterable[int]] = None,
    min_area: float = 0,
    domain: str = "coco",
) -> CocoDataset:
    """Open a COCO-format dataset as a lazy sequence of scenes.

    See :class:`CocoDataset` for the filtering, the overlap rule and ``meta``.
    """
    return CocoDataset(annotation_json, images_dir, category_ids, min_area, domain)


def _existing_dir(path: PathLike, name: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{name} {path} is not a directory")
    return path


def is_data_file(path: Path) -> bool:
    """Whether ``path`` can be a dataset file: a file whose name does not start with a
    dot (not ``.DS_Store``, nor macOS's ``._NAME`` copies of extended attributes)."""
    return not path.name.startswith(".") and path.is_file()


def _files_by_stem(folder: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    """Map file stem -> path for the data files of a folder with one of the extensions."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in extensions or not is_data_file(path):
            continue
        if path.stem in files:
            raise ValueError(f"two files share the stem {path.stem!r}: {files[path.stem]}, {path}")
        files[path.stem] = path
    return files


def _check_index(index: int, length: int) -> int:
    if not -length <= index < length:
        raise IndexError(f"index {index} out of range for {length} scenes")
    return index % length


def _read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB image (see :func:`ppd.data.images.read_rgb`)."""
    return read_rgb(path)


def _orientation_hint(path: Path) -> str:
    """'' or a note that ``path`` was turned by its EXIF orientation (for size errors)."""
    tag = exif_orientation(path)
    if tag in (None, 1):
        return ""
    return (
        f"; the image was turned upright by its EXIF orientation tag ({tag}), so annotations "
        "made on the stored (unturned) pixels do not fit: remove the tag or re-annotate"
    )


def _read_mask(path: Path) -> tuple[np.ndarray, bool]:
    """(H, W) int64 mask values of a single-channel PNG (or an RGB one with equal
    channels; alpha ignored), turned by its EXIF orientation as images are, and whether
    the PNG holds 8-bit values (where 255 means void)."""
    from PIL import UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = upright(img)
            mode, ids = img.mode, np.asarray(img)
    except UnidentifiedImageError:
        raise ValueError(f"cannot read mask {path}: not an image file Pillow can read (masks are PNG files)") from None
    except (OSError, SyntaxError, EOFError, ValueError) as exc:  # truncated or damaged
        detail = (str(exc).strip().splitlines() or ["no details"])[0][:200]
        raise ValueError(f"cannot read mask {path}: the file is truncated or corrupt ({type(exc).__name__}: {detail})") from None
    if ids.ndim == 3:
        has_alpha = mode in ("LA", "La", "PA", "RGBA", "RGBa")
        colour = ids[..., :-1] if has_alpha else ids
        alpha = ids[..., -1]
        if has_alpha and (colour == colour.flat[0]).all() and not (alpha == alpha.flat[0]).all():
            raise ValueError(f"mask {path} holds its mask in the alpha channel (its {mode} colour is the same "
                             "everywhere); save the mask values as a single-channel (L) PNG")
        if not (colour == colour[..., :1]).all():
            raise ValueError(f"mask {path} has colours ({mode}), not one value per pixel: save binary or instance-id "
                             "masks as single-channel PNGs (mode L or P, 16-bit for more than 254 instances)")
        ids = colour[..., 0]
    return ids.astype(np.int64), ids.dtype.itemsize == 1


def read_object_mask(path: PathLike) -> np.ndarray:
    """(H, W) bool mask of one object from a PNG: its nonzero pixels (8-bit 255, void
    in instance masks, counts as object here: a binary mask saved as 0 / 255).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a readable single-channel mask, or no object pixel.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no mask file {path}")
    ids, _ = _read_mask(path)
    mask = ids > 0
    if not mask.any():
        raise ValueError(f"mask {path} is empty: the object's pixels must be nonzero")
    return mask


def soft_edges(ids: np.ndarray, top: int = VOID_ID) -> bool:
    """Whether a mask looks like a binary mask with soft edges rather than an
    instance-id mask: it holds ``top`` (its object's value: 255 in 8-bit masks, the
    largest value in 16-bit ones) and values between 1 and ``top - 1``, ``top`` covers
    more pixels than those values together, and nine in ten of their pixels touch
    (4-neighbours) a pixel of another value, as the band along an interpolated or
    compressed edge does and an instance's area does not."""
    inner = (ids > 0) & (ids < top)
    n_inner = int(inner.sum())
    if n_inner == 0 or int((ids == top).sum()) <= n_inner:
        return False
    from scipy import ndimage

    cross = ndimage.generate_binary_structure(2, 1)  # a pixel and its 4 neighbours
    differs = ((ndimage.grey_dilation(ids, footprint=cross, mode="nearest") != ids)
               | (ndimage.grey_erosion(ids, footprint=cross, mode="nearest") != ids))
    return int((differs & inner).sum()) >= 0.9 * n_inner


def _soft_edges_message(path: Path, ids: np.ndarray, values: np.ndarray, top: int, eight_bit: bool) -> str:
    """The error for a mask that :func:`soft_edges` finds soft-edged, with what to do."""
    inner = int(((ids > 0) & (ids < top)).sum())
    levels = int(((values > 0) & (values < top)).sum())
    soft = "anti-aliased, resized or JPEG" if eight_bit else "anti-aliased or resized"
    found = (f"mask {path} looks like a binary mask with soft ({soft}) edges: {int((ids == top).sum())} "
             f"pixels are {top} and {inner} pixels along its edges hold {levels} values between 1 and "
             f"{top - 1}, which would read as that many tiny instances")
    if eight_bit:
        return found + (" with the object itself void (255); save it with only 0 and 255 (e.g. 255 where "
                        "the value is >= 128), or as instance ids 1..254 with 255 only for void")
    return found + (f" beside the object (16-bit masks have no void value); save it with only 0 and {top} "
                    f"(e.g. {top} where the value is >= {(top + 1) // 2}), or as instance ids 1, 2, 3, ...")
