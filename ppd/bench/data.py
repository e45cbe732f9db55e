"""The datasets of a benchmark: ``NAME=SOURCE`` specs, checked up front, read lazily.

A source is one of

* ``procedural:DOMAIN``: held-out procedural scenes of a ppd domain (``train``,
  ``texture`` ...; scene seeds from :data:`BENCH_SEED` on, never used in training);
* ``DIR``: a folder holding ``images/`` and ``masks/``, paired by file stem, masks binary
  or instance-id PNGs (:class:`ppd.data.loaders.ImageMaskFolder`); or a folder per
  class, each holding images and mask PNGs (one object each) side by side as FSS-1000,
  or ``images/`` and ``masks/`` (:class:`ppd.data.class_folders.ClassFolders`);
* ``FILE.json``: a COCO annotation file whose images are in an ``images/`` folder beside
  it, or beside the file itself (:class:`ppd.data.loaders.CocoDataset`).

Everything that can be checked without decoding images is checked when a domain opens,
so a bad path, an unpaired or unreadable file, a mask (or a COCO image or RLE) of the
wrong size or a bad polygon stops the run before any work with one message naming the file; a problem found later is
the runner's to skip and count.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ppd.data.images import EXIF_ORIENTATION_TAG
from ppd.data.class_folders import ClassFolders, class_dirs, class_files, is_class_tree
from ppd.data.loaders import IMAGE_EXTENSIONS, CocoDataset, ImageMaskFolder, is_data_file
from ppd.data.scenes import DOMAINS, ProceduralScenes
from ppd.data.types import Scene

logger = logging.getLogger(__name__)

#: Seed of the first procedural benchmark scene of every domain.
BENCH_SEED = 10_000_000 + 40_000
#: Scenes per procedural domain when no sample size is given.
DEFAULT_PROCEDURAL_IMAGES = 50
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
#: At most this many offending files are named in one message.
SHOWN = 5


class DataError(ValueError):
    """A dataset that cannot be benchmarked as given (the message names the file)."""


@dataclass(frozen=True)
class DataSpec:
    """One ``--data NAME=SOURCE``."""

    name: str
    source: str

    @classmethod
    def parse(cls, text: str) -> DataSpec:
        name, sep, source = text.partition("=")
        if not sep or not name or not source:
            raise DataError(f"--data {text!r}: expected NAME=SOURCE, e.g. coco=val/instances.json, "
                            "mine=data/ (holding images/ and masks/) or shapes=procedural:train")
        if not NAME_PATTERN.match(name):
            raise DataError(f"--data {text!r}: the name {name!r} must be letters, digits and _ . + - (it labels the domain)")
        return cls(name, source)

    @property
    def kind(self) -> str:
        if self.source.startswith("procedural:"):
            return "procedural"
        return "coco" if self.source.lower().endswith(".json") else "folder"


@dataclass(frozen=True)
class Selection:
    """Which images and objects of each domain are measured."""

    sample: int | None = None  # images per domain (None: all; procedural: DEFAULT_PROCEDURAL_IMAGES)
    seed: int = 0  # of the image sample
    min_area: int = 0  # least object area in pixels
    max_objects: int | None = None  # per image, the largest first


class Domain:
    """One dataset as the benchmark sees it: image ids, and the scene of each with only
    the objects to measure (at least ``min_area`` pixels, the ``max_objects`` largest,
    in decreasing area)."""

    def __init__(self, spec: DataSpec, scenes: Sequence[Scene], ids: list[str], selection: Selection) -> None:
        self.spec, self.name, self._scenes, self.selection = spec, spec.name, scenes, selection
        n = len(ids)
        order = np.arange(n)
        if selection.sample is not None and selection.sample < n:
            order = np.sort(np.random.default_rng([selection.seed, n]).choice(n, selection.sample, replace=False))
        self._index = [int(i) for i in order]
        self.ids = [ids[i] for i in self._index]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dataset(self) -> Sequence[Scene]:
        """The whole dataset the sample is drawn from (one-shot references come from
        any of its images)."""
        return self._scenes

    def dataset_index(self, index: int) -> int:
        """The dataset index of the ``index``-th image of the sample."""
        return self._index[index]

    def scene(self, index: int) -> Scene:
        """The scene of the ``index``-th image with its measured objects (raises
        ``OSError`` / ``ValueError`` for a file that cannot be read)."""
        return self.scene_at(self._index[index])

    def scene_at(self, dataset_index: int) -> Scene:
        """:meth:`scene` of any image of the dataset, sampled or not."""
        scene = self._scenes[dataset_index]
        areas = scene.masks.sum(axis=(1, 2))  # (0,) for an image without objects
        keep = [int(i) for i in np.argsort(-areas, kind="stable") if areas[i] >= max(self.selection.min_area, 1)]
        if self.selection.max_objects is not None:
            keep = keep[: self.selection.max_objects]
        meta = {**scene.meta, "objects": keep}
        return Scene(scene.image, scene.masks[keep], domain=self.name, seed=scene.seed, meta=meta)


def open_domain(spec: DataSpec, selection: Selection = Selection(), check: bool = True) -> Domain:
    """Open ``spec`` as a :class:`Domain`; with ``check`` (the driver) every file is
    checked first (headers only), without (a worker that re-opens it) not.

    Raises:
        DataError: the first problem found, naming the file and what was expected.
    """
    if spec.kind == "procedural":
        return _procedural(spec, selection)
    path = Path(spec.source).expanduser()
    if not path.exists():
        raise DataError(f"--data {spec.name}: {path} does not exist (expected a folder with images/ and masks/, "
                        "a COCO .json file, or procedural:DOMAIN)")
    if spec.kind == "coco":
        return _coco(spec, path, selection, check)
    return _folder(spec, path, selection, check)


def _procedural(spec: DataSpec, selection: Selection) -> Domain:
    domain = spec.source.split(":", 1)[1]
    if domain not in DOMAINS:
        raise DataError(f"--data {spec.name}: unknown procedural domain {domain!r}; known: {', '.join(DOMAINS)}")
    n = selection.sample or DEFAULT_PROCEDURAL_IMAGES
    scenes = ProceduralScenes(domain, n, seed=BENCH_SEED)
    # every scene is measured: the sample size is the number of scenes drawn
    return Domain(spec, scenes, [f"{domain}-{BENCH_SEED + i}" for i in range(n)], Selection(None, selection.seed,
                                                                                         selection.min_area, selection.max_objects))


def _folder(spec: DataSpec, path: Path, selection: Selection, check: bool) -> Domain:
    if not path.is_dir():
        raise DataError(f"--data {spec.name}: {path} is a file; expected a folder holding images/ and masks/ "
                        "(or a COCO annotation file ending in .json)")
    images_dir, masks_dir = path / "images", path / "masks"
    if not images_dir.is_dir() and not masks_dir.is_dir() and is_class_tree(path):
        return _class_folders(spec, path, selection, check)
    missing = [str(d) for d in (images_dir, masks_dir) if not d.is_dir()]
    if missing:
        raise DataError(f"--data {spec.name}: {' and '.join(missing)} not found; a dataset folder holds images/ "
                        "(png, jpg, ...) and masks/ (PNG masks with the same file stems), or one folder per class "
                        "(CLASS/1.jpg + CLASS/1.png, or CLASS/images/ + CLASS/masks/)")
    if check:
        check_folder(spec.name, images_dir, masks_dir)
    dataset = ImageMaskFolder(images_dir, masks_dir, domain=spec.name)
    ids = [image.stem for image, _ in dataset.pairs]
    return Domain(spec, dataset, ids, selection)


def _class_folders(spec: DataSpec, path: Path, selection: Selection, check: bool) -> Domain:
    """A folder per class (:class:`ppd.data.class_folders.ClassFolders`): every class
    folder checked as a dataset folder is; images named ``CLASS/STEM``."""
    if check:
        for folder in class_dirs(path):
            images, masks = class_files(folder)
            if not images and not masks:
                continue
            split = (folder / "images").is_dir() or (folder / "masks").is_dir()
            images_dir, masks_dir = (folder / "images", folder / "masks") if split else (folder, folder)
            missing = [str(d) for d in (images_dir, masks_dir) if not d.is_dir()]
            if missing:
                raise DataError(f"--data {spec.name}: {' and '.join(missing)} not found; a class folder holds "
                                "images/ and masks/, or images and their PNG masks side by side")
            others = sorted(p for p in images_dir.iterdir() if is_data_file(p) and p not in images and p not in masks)
            check_pairs(spec.name, images, masks, others, images_dir, masks_dir)
    dataset = ClassFolders(path, domain=spec.name)
    return Domain(spec, dataset, [dataset.image_id(i) for i in range(len(dataset))], selection)


def check_folder(name: str, images_dir: Path, masks_dir: Path) -> None:
    """Every image has a mask and every mask an image (by stem), masks are PNG files,
    every file opens, and each mask has its image's size (read from the headers).
    Images that carry an EXIF orientation tag are logged (a warning): they are read
    turned upright, and their masks must be drawn on the upright image."""
    files = lambda d: sorted(p for p in d.iterdir() if is_data_file(p))  # noqa: E731
    images = [p for p in files(images_dir) if p.suffix.lower() in IMAGE_EXTENSIONS]
    check_pairs(name, images, files(masks_dir), [p for p in files(images_dir) if p not in images], images_dir, masks_dir)


def check_pairs(name: str, images: list[Path], masks: list[Path], others: list[Path], images_dir: Path,
                masks_dir: Path) -> None:
    """:func:`check_folder`'s checks on listed files: ``images`` (readable types) and
    ``masks`` found in ``images_dir`` and ``masks_dir`` (one folder in FSS-1000's
    layout), ``others`` the files beside the images that are not read."""
    if not images and not masks:
        raise DataError(f"--data {name}: {images_dir} and {masks_dir} are empty")
    not_png = [p for p in masks if p.suffix.lower() != ".png"]
    if not_png:
        raise DataError(f"--data {name}: masks must be PNG files (lossless, one id per pixel); not PNG: {_few(not_png)}")
    image_stems, mask_stems = {p.stem: p for p in images}, {p.stem: p for p in masks}
    if len(image_stems) < len(images):
        dup = sorted(p.name for p in images if sum(q.stem == p.stem for q in images) > 1)
        raise DataError(f"--data {name}: two images share a file stem, so their mask is ambiguous: {', '.join(dup[:SHOWN])}")
    lonely_masks = [mask_stems[s] for s in sorted(mask_stems.keys() - image_stems.keys())]
    if lonely_masks:
        other = [p for p in others if p.stem in {m.stem for m in lonely_masks}]
        hint = (f"; {_few(other)} not read: images are {', '.join(e[1:] for e in IMAGE_EXTENSIONS)} files"
                if other else "")
        raise DataError(f"--data {name}: masks without an image in {images_dir} (same file stem expected): "
                        f"{_few(lonely_masks)}{hint}")
    lonely_images = [image_stems[s] for s in sorted(image_stems.keys() - mask_stems.keys())]
    if lonely_images:
        raise DataError(f"--data {name}: images without a mask in {masks_dir} (expected <stem>.png): {_few(lonely_images)}")
    turned = []
    for stem in sorted(image_stems):
        image_size, orientation = _header(name, image_stems[stem], "image")
        mask_size, _ = _header(name, mask_stems[stem], "mask")
        if image_size != mask_size:
            raise DataError(f"--data {name}: mask {mask_stems[stem]} is {mask_size[0]}x{mask_size[1]} (W x H) but its "
                            f"image {image_stems[stem]} is {image_size[0]}x{image_size[1]}; a mask must have its image's "
                            f"size{_turned_hint(orientation)}")
        if orientation not in (None, 1):
            turned.append(image_stems[stem])
    _warn_turned(name, turned)


def _turned_hint(orientation: int | None) -> str:
    """'' or why a size can differ: the image is read turned by its EXIF orientation."""
    if orientation in (None, 1):
        return ""
    return (f" (the image's size as read, turned upright by its EXIF orientation tag {orientation}; annotations "
            "made on the stored, unturned pixels do not fit: remove the tag or re-annotate)")


def _warn_turned(name: str, turned: list[Path]) -> None:
    """One warning for a dataset's images that carry an EXIF orientation tag: a turn of
    180 degrees or a mirror keeps the size, so a mask drawn on the stored pixels would
    be misaligned without any size mismatch to show it."""
    if turned:
        logger.warning("--data %s: %d image(s) carry an EXIF orientation tag and are read turned upright, as a photo "
                       "viewer shows them; their masks must be drawn on the upright image: %s", name, len(turned),
                       _few(turned))


def _coco(spec: DataSpec, path: Path, selection: Selection, check: bool) -> Domain:
    images_dir = path.parent / "images" if (path.parent / "images").is_dir() else path.parent
    if check:
        check_coco(spec.name, path, images_dir)
    dataset = CocoDataset(path, images_dir, min_area=0, domain=spec.name)
    ids = [str(dataset.coco.imgs[i]["file_name"]) for i in dataset.image_ids]
    if not ids:
        raise DataError(f"--data {spec.name}: {path} has no image with an annotation")
    return Domain(spec, dataset, ids, selection)


def check_coco(name: str, path: Path, images_dir: Path) -> None:
    """The file is COCO json (``images``, ``annotations``), every annotated image file
    exists and has the size the file lists (read from its header), every polygon has at
    least three points (an even number of coordinates) and every RLE its image's size."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"--data {name}: {path} is not readable JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise DataError(f"--data {name}: {path} is not a COCO annotation file (expected the lists 'images' and 'annotations')")
    files, sizes = {}, {}
    for img in data["images"]:
        if not isinstance(img, dict) or not {"id", "file_name", "height", "width"} <= img.keys():
            raise DataError(f"--data {name}: {path}: an image entry lacks id, file_name, height or width: {str(img)[:120]}")
        files[img["id"]] = img["file_name"]
        sizes[img["id"]] = (img["width"], img["height"])
    annotated = set()
    for ann in data["annotations"]:
        if not isinstance(ann, dict) or ann.get("image_id") not in files or "segmentation" not in ann:
            raise DataError(f"--data {name}: {path}: annotation {ann.get('id') if isinstance(ann, dict) else ann!r} "
                            "needs an image_id of a listed image and a segmentation")
        seg = ann["segmentation"]
        if isinstance(seg, list):
            bad = [poly for poly in seg if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2]
            if bad or not seg:
                raise DataError(f"--data {name}: {path}: annotation {ann.get('id')} (image {files[ann['image_id']]}) has a "
                                "bad polygon: each polygon is a list of x, y pairs with at least 3 points")
        elif not (isinstance(seg, dict) and "counts" in seg and "size" in seg):
            raise DataError(f"--data {name}: {path}: annotation {ann.get('id')} has a segmentation that is neither "
                            "polygons nor RLE ({'size', 'counts'})")
        elif list(seg["size"]) != [sizes[ann["image_id"]][1], sizes[ann["image_id"]][0]]:
            w, h = sizes[ann["image_id"]]
            raise DataError(f"--data {name}: {path}: annotation {ann.get('id')} (image {files[ann['image_id']]}) is an "
                            f"RLE of size {list(seg['size'])} but its image is listed as [{h}, {w}] (height, width); "
                            "an RLE's 'size' must be its image's")
        if "area" not in ann:
            raise DataError(f"--data {name}: {path}: annotation {ann.get('id')} has no 'area'")
        annotated.add(ann["image_id"])
    missing = [images_dir / files[i] for i in sorted(annotated) if not (images_dir / files[i]).is_file()]
    if missing:
        raise DataError(f"--data {name}: {len(missing)} image files of {path} not found in {images_dir} "
                        f"(looked in images/ beside the file, else beside it): {_few(missing)}")
    turned = []
    for i in sorted(annotated):
        size, orientation = _header(name, images_dir / files[i], "image")
        if size != sizes[i]:
            raise DataError(f"--data {name}: image {images_dir / files[i]} is {size[0]}x{size[1]} (W x H) but {path} "
                            f"lists it as {sizes[i][0]}x{sizes[i][1]} (width x height){_turned_hint(orientation)}")
        if orientation not in (None, 1):
            turned.append(images_dir / files[i])
    _warn_turned(name, turned)


def _header(name: str, path: Path, what: str) -> tuple[tuple[int, int], int | None]:
    """(W, H) of an image file as the readers see it (turned by its EXIF orientation),
    and its orientation tag (None without one), from the file's header."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            try:
                orientation = img.getexif().get(EXIF_ORIENTATION_TAG)
            except (OSError, ValueError, SyntaxError):  # a damaged file: its pixels fail later, counted
                orientation = None
        orientation = orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else None
        # the readers honour EXIF orientation: tags 5-8 turn the image by 90 degrees
        return ((h, w) if orientation in (5, 6, 7, 8) else (w, h)), orientation
    except (OSError, ValueError) as e:
        raise DataError(f"--data {name}: {what} {path} cannot be read as an image: {e}") from e


def _few(paths: list[Path]) -> str:
    shown = ", ".join(str(p) for p in paths[:SHOWN])
    return shown + (f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")
