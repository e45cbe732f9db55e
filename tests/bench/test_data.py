"""Benchmark datasets: NAME=SOURCE parsing, selection, and one clear error per bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ppd.bench.data import DataError, DataSpec, Selection, open_domain


def domain(text, **sel):
    return open_domain(DataSpec.parse(text), Selection(**sel))


def test_folder_pairs_mixed_sizes_and_instances(folder_data):
    d = domain(f"mine={folder_data}")
    assert d.ids == ["img0", "img1", "img2"]
    shapes = [d.scene(i).image.shape[:2] for i in range(3)]
    assert shapes == [(64, 80), (96, 64), (72, 72)]
    for i in range(3):
        s = d.scene(i)
        assert s.num_objects >= 2 and s.domain == "mine"
        areas = s.masks.sum((1, 2))
        assert list(areas) == sorted(areas, reverse=True)  # largest first
    assert d.scene(1).meta["void"][0].all()  # the 255 border is void, in no object
    assert not d.scene(1).masks[:, 0].any()


def test_selection_sample_min_area_max_objects(folder_data):
    full = domain(f"mine={folder_data}")
    s = full.scene(0)
    small = domain(f"mine={folder_data}", max_objects=1, min_area=int(s.masks.sum((1, 2))[1]) + 1)
    assert small.scene(0).num_objects == 1
    assert np.array_equal(small.scene(0).masks[0], s.masks[0])
    a = domain(f"mine={folder_data}", sample=2, seed=3)
    b = domain(f"mine={folder_data}", sample=2, seed=3)
    assert a.ids == b.ids and len(a.ids) == 2 and set(a.ids) < set(full.ids)


def test_procedural_and_coco(coco_file):
    p = domain("shapes=procedural:thin", sample=3)
    assert len(p) == 3 and p.ids[0].startswith("thin-")
    c = domain(f"coco={coco_file}")
    assert c.ids == ["c0.png", "c1.png"]
    s = c.scene(0)
    assert s.num_objects == 2 and s.image.shape == (64, 64, 3)
    assert s.masks[0].sum() > s.masks[1].sum() > 0


@pytest.mark.parametrize("text, match", [
    ("noequals", "expected NAME=SOURCE"),
    ("=x", "expected NAME=SOURCE"),
    ("bad name=x", "must be letters"),
    ("p=procedural:nowhere", "unknown procedural domain 'nowhere'"),
])
def test_bad_specs(text, match):
    with pytest.raises(DataError, match=match):
        open_domain(DataSpec.parse(text))


def test_missing_path_and_layout(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        domain(f"x={tmp_path / 'nope'}")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="images.*masks.*not found"):
        domain(f"x={tmp_path / 'flat'}")
    (tmp_path / "flat" / "images").mkdir()
    (tmp_path / "flat" / "masks").mkdir()
    with pytest.raises(DataError, match="are empty"):
        domain(f"x={tmp_path / 'flat'}")


def test_unpaired_files_named(folder_data):
    (folder_data / "images" / "img1.png").rename(folder_data / "lonely.png")
    with pytest.raises(DataError, match=r"masks without an image.*img1\.png"):
        domain(f"mine={folder_data}")
    (folder_data / "masks" / "img1.png").unlink()
    (folder_data / "lonely.png").rename(folder_data / "images" / "img9.png")
    with pytest.raises(DataError, match=r"images without a mask.*img9\.png"):
        domain(f"mine={folder_data}")


def test_mask_size_format_and_unreadable(folder_data):
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(folder_data / "masks" / "img2.png")
    with pytest.raises(DataError, match=r"mask .*img2\.png is 10x10 .* image .*img2\.png is 72x72"):
        domain(f"mine={folder_data}")
    (folder_data / "masks" / "img2.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"mask .*img2\.png cannot be read"):
        domain(f"mine={folder_data}")
    (folder_data / "masks" / "img2.png").unlink()
    Image.fromarray(np.zeros((72, 72), np.uint8)).save(folder_data / "masks" / "img2.jpg")
    with pytest.raises(DataError, match=r"masks must be PNG.*img2\.jpg"):
        domain(f"mine={folder_data}")


def test_coco_errors(coco_file):
    data = json.loads(coco_file.read_text())
    data["annotations"][1]["segmentation"] = [[1, 2, 3, 4]]
    coco_file.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"annotation 2 \(image c0\.png\) has a bad polygon"):
        domain(f"c={coco_file}")
    data["annotations"][1]["segmentation"] = [[8, 8, 30, 8, 30, 30]]
    coco_file.write_text(json.dumps(data))
    (coco_file.parent / "images" / "c1.png").unlink()
    with pytest.raises(DataError, match=r"1 image files .* not found .*c1\.png"):
        domain(f"c={coco_file}")
    coco_file.write_text("{not json")
    with pytest.raises(DataError, match="not readable JSON"):
        domain(f"c={coco_file}")
    coco_file.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="not a COCO annotation file"):
        domain(f"c={coco_file}")
