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


def test_class_folders_both_layouts(class_folders):
    """A folder per class opens as one domain: images named CLASS/STEM, one object per
    mask, the class in meta["category_ids"]; hidden files and an empty class ignored."""
    root = class_folders
    (root / "cat" / ".DS_Store").write_bytes(b"x")
    (root / "empty").mkdir()
    dom = domain(f"pets={root}")
    assert dom.ids == ["cat/0", "cat/1", "cat/2", "dog/0", "dog/1", "dog/2"]
    for k, name in enumerate(dom.ids):
        scene = dom.scene(k)
        side = 12 + 4 * int(name[-1])
        assert scene.num_objects == 1 and int(scene.masks[0].sum()) == side * side
        assert scene.meta["category_ids"] == [name.split("/")[0]] and scene.domain == "pets"
    assert dom.scene(1).image.shape == (64, 48, 3)


def test_class_folder_errors_name_the_file(class_folders):
    root = class_folders
    (root / "cat" / "2.png").unlink()
    with pytest.raises(DataError, match=r"images without a mask in .*cat.*2\.jpg"):
        domain(f"pets={root}")
    (root / "cat" / "2.jpg").unlink()
    (root / "dog" / "masks" / "1.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"mask .*dog.*1\.png cannot be read"):
        domain(f"pets={root}")
    (root / "dog" / "masks" / "1.png").unlink()
    Image.fromarray(np.zeros((40, 56), np.uint8)).save(root / "cat" / "3.png")  # a mask alone
    with pytest.raises(DataError, match=r"masks without an image in .*cat.*3\.png"):
        domain(f"pets={root}")
    (root / "cat" / "3.png").unlink()
    (root / "bird" / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "bird" / "images" / "0.png")
    with pytest.raises(DataError, match=r"bird.masks not found; a class folder holds images/ and masks/"):
        domain(f"pets={root}")


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


def test_coco_image_and_rle_sizes_are_checked_before_any_work(coco_file):
    from pycocotools import mask as mask_utils

    data = json.loads(coco_file.read_text())
    data["images"][1]["height"] = 70
    coco_file.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"image .*c1\.png is 64x64 \(W x H\) but .*ann\.json lists it as 64x70"):
        domain(f"c={coco_file}")
    data["images"][1]["height"] = 64
    rle = mask_utils.encode(np.asfortranarray(np.ones((32, 32), np.uint8)))
    data["annotations"][0]["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    coco_file.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"annotation 1 \(image c0\.png\) is an RLE of size \[32, 32\] but its image "
                                        r"is listed as \[64, 64\]"):
        domain(f"c={coco_file}")


def _oriented(path, pixels, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, quality=95, exif=exif)


def test_exif_turned_images_explain_a_size_mismatch_and_are_logged(folder_data, caplog):
    pixels = np.asarray(Image.open(folder_data / "images" / "img0.jpg"))  # 64 x 80 (H x W), mask alike
    _oriented(folder_data / "images" / "img0.jpg", pixels, 6)  # read as 80 x 64
    with pytest.raises(DataError, match=r"mask .*img0\.png is 80x64 .* image .*img0\.jpg is 64x80; .*EXIF "
                                        r"orientation tag 6; annotations made on the stored, unturned pixels"):
        domain(f"mine={folder_data}")
    _oriented(folder_data / "images" / "img0.jpg", pixels, 3)  # turned 180 degrees: the size alone cannot tell
    with caplog.at_level("WARNING", logger="ppd.bench.data"):
        d = domain(f"mine={folder_data}")
    assert len(d) == 3
    warned = [r.getMessage() for r in caplog.records if "EXIF orientation" in r.getMessage()]
    assert len(warned) == 1 and "1 image(s)" in warned[0] and "img0.jpg" in warned[0] and "upright" in warned[0]


def test_image_of_an_unread_type_is_named(folder_data):
    img = folder_data / "images" / "img2.png"
    Image.open(img).save(folder_data / "images" / "img2.gif")
    img.unlink()
    with pytest.raises(DataError, match=r"masks without an image.*img2\.png; .*img2\.gif not read: images are png, jpg"):
        domain(f"mine={folder_data}")


def test_hidden_files_are_ignored(folder_data):
    for sub in ("images", "masks"):
        (folder_data / sub / "._img1.png").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
        (folder_data / sub / ".DS_Store").write_bytes(bytes(8))
    d = domain(f"mine={folder_data}")
    assert d.ids == ["img0", "img1", "img2"] and all(d.scene(i).num_objects for i in range(3))
