"""Small datasets written by the tests: an image/mask folder, a folder per class and a COCO file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ppd.data.scenes import make_scene


def write_folder(root, sizes=((64, 80), (96, 64), (72, 72))):
    """``root/images`` + ``root/masks``: procedural scenes cropped to mixed sizes, 8-bit
    instance-id masks (ids 1..N), one with a void (255) border."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (h, w) in enumerate(sizes):
        scene = make_scene(500 + i, "clutter", size=128)
        ids = np.zeros((128, 128), np.uint8)
        for k, m in enumerate(scene.masks):
            ids[m] = k + 1
        img, ids = scene.image[:h, :w], ids[:h, :w]
        if i == 1:
            ids[0, :] = 255
        Image.fromarray(img).save(root / "images" / f"img{i}.jpg" if i == 0 else root / "images" / f"img{i}.png")
        Image.fromarray(ids).save(root / "masks" / f"img{i}.png")
    return root


def write_class_folders(root):
    """A folder per class: ``cat`` in FSS-1000's layout (``0.jpg`` + ``0.png``, ...),
    ``dog`` as ``images/`` + ``masks/`` (png images); three images of mixed sizes per
    class, one binary mask (0/255) each, the object a square whose side is known."""
    for cls, (colour, layout) in {"cat": ((200, 60, 60), "fss"), "dog": ((60, 60, 200), "folders")}.items():
        for i, (h, w) in enumerate(((40, 56), (64, 48), (50, 50))):
            img = np.full((h, w, 3), 30, np.uint8)
            mask = np.zeros((h, w), np.uint8)
            side = 12 + 4 * i
            img[5:5 + side, 6:6 + side] = colour
            mask[5:5 + side, 6:6 + side] = 255
            if layout == "fss":
                (root / cls).mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(root / cls / f"{i}.jpg", quality=95)
                Image.fromarray(mask).save(root / cls / f"{i}.png")
            else:
                for sub in ("images", "masks"):
                    (root / cls / sub).mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(root / cls / "images" / f"{i}.png")
                Image.fromarray(mask).save(root / cls / "masks" / f"{i}.png")
    return root


def write_coco(root, n=2):
    """``root/ann.json`` with polygons and ``root/images``: n 64x64 images, two squares each."""
    (root / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(n):
        img = np.full((64, 64, 3), 40, np.uint8)
        img[8:30, 8:30] = (200, 60, 60)
        img[36:60, 30:58] = (60, 200, 60)
        Image.fromarray(img).save(root / "images" / f"c{i}.png")
        images.append({"id": i + 1, "file_name": f"c{i}.png", "height": 64, "width": 64})
        for j, (x0, y0, x1, y1) in enumerate(((8, 8, 30, 30), (30, 36, 58, 60))):
            anns.append({"id": 10 * i + j + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                         "area": float((x1 - x0) * (y1 - y0)), "bbox": [x0, y0, x1 - x0, y1 - y0],
                         "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]})
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": anns,
                                               "categories": [{"id": 1, "name": "thing"}]}))
    return root / "ann.json"


@pytest.fixture
def folder_data(tmp_path):
    return write_folder(tmp_path / "mine")


@pytest.fixture
def class_folders(tmp_path):
    return write_class_folders(tmp_path / "pets")


@pytest.fixture
def coco_file(tmp_path):
    return write_coco(tmp_path / "coco")


@pytest.fixture
def tiny_model_spec(tiny_checkpoint) -> str:
    """A ``--model`` spec of the random-weight tiny model."""
    return f"tiny=sam2-tiny-synthetic:{tiny_checkpoint}"
