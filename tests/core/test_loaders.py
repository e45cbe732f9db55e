import json

import numpy as np
import pytest
from PIL import Image

from ppd.data.loaders import load_coco, load_image_mask_folder
from ppd.data.types import Scene

H, W = 12, 16


def save_image(path, h=H, w=W, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def instance_ids():
    ids = np.zeros((H, W), np.uint8)
    ids[1:4, 1:5] = 3  # 12 px
    ids[6:10, 8:15] = 7  # 28 px
    ids[0, :] = 255  # void row, 16 px
    return ids


@pytest.fixture
def folder(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    pixels = save_image(images / "a.png")
    Image.fromarray(instance_ids()).save(masks / "a.png")
    save_image(images / "b.jpg", seed=1)
    binary = np.zeros((H, W), np.uint8)
    binary[2:5, 3:9] = 255  # 18 px
    Image.fromarray(binary).save(masks / "b.png")
    save_image(images / "unpaired.png")
    return images, masks, pixels


def test_folder_pairs_by_stem_and_reads_instances(folder):
    images, masks, pixels = folder
    data = load_image_mask_folder(images, masks)
    assert len(data) == 2
    a = data[0]
    assert isinstance(a, Scene) and a.domain == "folder"
    np.testing.assert_array_equal(a.image, pixels)
    assert a.masks.shape == (2, H, W) and a.masks.dtype == bool
    assert a.meta["instance_ids"] == [3, 7]
    assert a.masks.sum(axis=(1, 2)).tolist() == [12, 28]
    assert a.meta["void"].sum() == 16 and not (a.masks & a.meta["void"]).any()
    assert a.meta["image_file"].endswith("a.png")


def test_folder_binary_masks(folder):
    images, masks, _ = folder
    data = load_image_mask_folder(images, masks)
    b = data[-1]
    assert b.image.shape == (H, W, 3) and b.image.dtype == np.uint8
    assert b.masks.shape == (1, H, W) and b.masks.sum() == 18
    assert b.masks[0, 2:5, 3:9].all()
    # Forcing binary mode merges the instances (and the void value) into one object.
    forced = load_image_mask_folder(images, masks, mask_mode="binary")[0]
    assert forced.masks.shape == (1, H, W) and forced.masks.sum() == 12 + 28 + 16


def test_folder_all_zero_mask_has_no_object(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    save_image(tmp_path / "images" / "x.png")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "masks" / "x.png")
    scene = load_image_mask_folder(tmp_path / "images", tmp_path / "masks")[0]
    assert scene.masks.shape == (0, H, W)


@pytest.mark.parametrize("mask_mode", ["instance", "auto"])
def test_folder_16_bit_mask_keeps_every_instance_id(tmp_path, mask_mode):
    # 255 is VOC's void value only in 8-bit masks: a 16-bit mask may hold 255 or more instances
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    h, w = 20, 30
    save_image(tmp_path / "images" / "many.png", h=h, w=w)
    ids = np.arange(h * w, dtype=np.uint16).reshape(h, w) // 2  # ids 0..299, two pixels each
    ids[ids == 0] = 300
    ids[0, 0] = 0  # one background pixel
    Image.fromarray(ids).save(tmp_path / "masks" / "many.png")
    scene = load_image_mask_folder(tmp_path / "images", tmp_path / "masks", mask_mode=mask_mode)[0]
    assert scene.meta["instance_ids"] == list(range(1, 301))
    assert scene.masks.shape == (300, h, w) and scene.masks.sum() == h * w - 1
    assert scene.masks[254].sum() == 2 and scene.masks[254, ids == 255].all()  # id 255 is an instance
    assert not scene.meta["void"].any()


def test_folder_8_bit_void_value_in_every_mask_mode(folder):
    images, masks, _ = folder
    a = load_image_mask_folder(images, masks, mask_mode="instance")[0]
    assert a.meta["instance_ids"] == [3, 7] and a.meta["void"].sum() == 16


def test_folder_errors(folder, tmp_path):
    images, masks, _ = folder
    with pytest.raises(FileNotFoundError, match="masks_dir"):
        load_image_mask_folder(images, tmp_path / "nope")
    with pytest.raises(ValueError, match="mask_mode"):
        load_image_mask_folder(images, masks, mask_mode="semantic")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no image/mask pairs"):
        load_image_mask_folder(images, empty)
    Image.fromarray(np.zeros((H + 1, W), np.uint8)).save(masks / "a.png")
    with pytest.raises(ValueError, match=r"a\.png"):
        load_image_mask_folder(images, masks)[0]
    with pytest.raises(IndexError):
        load_image_mask_folder(images, masks)[2]


@pytest.fixture
def coco(tmp_path):
    from pycocotools import mask as mask_utils

    images = tmp_path / "images"
    images.mkdir()
    save_image(images / "one.png")
    save_image(images / "two.png", seed=1)
    save_image(images / "none.png", seed=2)

    rle_mask = np.zeros((H, W), np.uint8, order="F")
    rle_mask[6:10, 1:4] = 1  # 12 px
    compressed = mask_utils.encode(np.asfortranarray(rle_mask))
    compressed["counts"] = compressed["counts"].decode("ascii")
    # Uncompressed RLE: run lengths of the column-major flattened mask, starting with 0s.
    crowd = np.zeros((H, W), np.uint8)
    crowd[8:12, 10:16] = 1  # 24 px
    flat = crowd.flatten(order="F")
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], edges])).tolist()
    uncompressed = {"size": [H, W], "counts": counts}
    assert mask_utils.decode(mask_utils.frPyObjects(uncompressed, H, W)).sum() == 24

    def ann(id_, image_id, cat, segm, area, iscrowd=0):
        return dict(id=id_, image_id=image_id, category_id=cat, segmentation=segm,
                    area=area, iscrowd=iscrowd, bbox=[0, 0, 1, 1])

    square = [[2.0, 2.0, 6.0, 2.0, 6.0, 6.0, 2.0, 6.0]]  # polygon, corners of a 4x4 square
    data = {
        "images": [
            {"id": 1, "file_name": "one.png", "height": H, "width": W},
            {"id": 2, "file_name": "two.png", "height": H, "width": W},
            {"id": 3, "file_name": "none.png", "height": H, "width": W},
        ],
        "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "stuff"}],
        "annotations": [
            ann(10, 1, 1, square, 16.0),
            ann(11, 1, 2, compressed, 12.0),
            ann(12, 1, 1, uncompressed, 24.0, iscrowd=1),
            ann(20, 2, 1, [[0.0, 0.0, 16.0, 0.0, 16.0, 12.0, 0.0, 12.0]], 192.0),  # whole image
            ann(21, 2, 2, square, 16.0),  # on top of the whole-image one
            ann(30, 3, 2, [[0.0, 0.0, 1.0, 0.0, 1.0, 1.0]], 0.5),
        ],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path, images, rle_mask.astype(bool), crowd.astype(bool)


def test_coco_polygon_and_both_rles(coco):
    path, images, rle_mask, crowd = coco
    data = load_coco(path, images, min_area=1)
    assert len(data) == 2  # image 3 holds only a 0.5 px annotation
    scene = data[0]
    assert scene.domain == "coco" and scene.image.shape == (H, W, 3)
    assert scene.meta["image_id"] == 1 and scene.meta["file_name"] == "one.png"
    # Ordered by decreasing area: crowd RLE (24), polygon (16), compressed RLE (12).
    assert scene.meta["annotation_ids"] == [12, 10, 11]
    assert scene.meta["category_ids"] == [1, 1, 2]
    assert scene.meta["iscrowd"] == [True, False, False]
    assert scene.masks.sum(axis=(1, 2)).tolist() == [24, 16, 12]
    np.testing.assert_array_equal(scene.masks[0], crowd)
    np.testing.assert_array_equal(scene.masks[2], rle_mask)
    assert scene.masks[1, 2:6, 2:6].all()


def test_coco_overlap_goes_to_smaller_instance(coco):
    path, images, _, _ = coco
    scene = load_coco(path, images)[1]
    assert scene.meta["annotation_ids"] == [20, 21]
    assert scene.masks.sum(axis=(1, 2)).tolist() == [192 - 16, 16]
    assert scene.masks.sum(axis=0).max() == 1


def test_coco_filters(coco):
    path, images, _, _ = coco
    stuff = load_coco(path, images, category_ids=[2])
    # Annotation 30 (a 0.5 px triangle) covers no pixel centre: dropped, leaving N = 0.
    assert [stuff[i].meta["annotation_ids"] for i in range(len(stuff))] == [[11], [21], []]
    assert stuff[2].masks.shape == (0, H, W)
    assert len(load_coco(path, images, min_area=20)) == 2
    assert len(load_coco(path, images, min_area=100)) == 1
    with pytest.raises(ValueError, match=r"category_ids \[9\]"):
        load_coco(path, images, category_ids=[9])


def test_coco_errors(coco, tmp_path):
    path, images, _, _ = coco
    with pytest.raises(FileNotFoundError, match="annotation_json"):
        load_coco(tmp_path / "missing.json", images)
    with pytest.raises(FileNotFoundError, match="images_dir"):
        load_coco(path, tmp_path / "missing")
    save_image(images / "one.png", h=H + 2)
    with pytest.raises(ValueError, match=r"one\.png"):
        load_coco(path, images)[0]


# ----------------------------------------------------------------------------- masks as users save them
def _one_pair(tmp_path, write_mask, image_name="a.png"):
    """``tmp_path/images/a.png`` (H x W) and the mask ``write_mask(path)`` writes."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    save_image(tmp_path / "images" / image_name)
    write_mask(tmp_path / "masks" / "a.png")
    return load_image_mask_folder(tmp_path / "images", tmp_path / "masks")


def _square(value=255):
    mask = np.zeros((H, W), np.uint8)
    mask[3:9, 4:12] = value  # 48 px
    return mask


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_masks_with_an_alpha_channel_read_their_values(tmp_path, mode):
    def write(path):
        Image.fromarray(_square()).convert(mode).save(path)

    scene = _one_pair(tmp_path, write)[0]
    assert Image.open(tmp_path / "masks" / "a.png").mode == mode
    assert scene.masks.shape == (1, H, W) and scene.masks.sum() == 48 and scene.masks[0, 3:9, 4:12].all()


def test_mask_held_in_the_alpha_channel_is_refused_with_what_to_do(tmp_path):
    def write(path):
        Image.fromarray(np.dstack([np.zeros((H, W, 3), np.uint8), _square()])).save(path)  # black, alpha = object

    data = _one_pair(tmp_path, write)
    with pytest.raises(ValueError, match=r"mask .*a\.png holds its mask in the alpha channel.*single-channel \(L\) PNG"):
        data[0]


def test_colour_mask_is_refused_with_what_to_do(tmp_path):
    def write(path):
        rgb = np.zeros((H, W, 3), np.uint8)
        rgb[3:9, 4:12] = (255, 0, 0)
        Image.fromarray(rgb).save(path)

    with pytest.raises(ValueError, match=r"mask .*a\.png has colours \(RGB\).*single-channel PNGs"):
        _one_pair(tmp_path, write)[0]


def test_truncated_mask_is_a_value_error_naming_it(tmp_path):
    def write(path):
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (H, W), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:120])

    with pytest.raises(ValueError, match=r"cannot read mask .*a\.png: the file is truncated or corrupt") as err:
        _one_pair(tmp_path, write)[0]
    assert "\n" not in str(err.value)


def _disk(size, radius):
    yy, xx = np.mgrid[:size, :size]
    return ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius**2).astype(np.uint8) * 255


@pytest.mark.parametrize("soften", ["resized", "jpeg"])
def test_binary_mask_with_soft_edges_is_refused_not_read_as_instances(tmp_path, soften):
    # read as ids, the object would be void (255) and its edge a dozen one-pixel-wide "instances"
    import io

    sharp = _disk(32, 10)
    if soften == "resized":
        soft = Image.fromarray(sharp).resize((H * 4, W * 4), Image.BILINEAR)
    else:
        buf = io.BytesIO()
        Image.fromarray(sharp).resize((W * 4, H * 4), Image.NEAREST).save(buf, "JPEG", quality=75)
        soft = Image.open(buf)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    save_image(tmp_path / "images" / "a.png", h=soft.height, w=soft.width)
    soft.convert("L").save(tmp_path / "masks" / "a.png")
    values = np.unique(np.asarray(Image.open(tmp_path / "masks" / "a.png")))
    assert len(values) > 3 and values[-1] == 255
    data = load_image_mask_folder(tmp_path / "images", tmp_path / "masks")
    with pytest.raises(ValueError, match=r"mask .*a\.png looks like a binary mask with soft .* edges.*only 0 and 255"):
        data[0]
    # as binary masks they load: every nonzero pixel is the one object
    assert load_image_mask_folder(tmp_path / "images", tmp_path / "masks", mask_mode="binary")[0].num_objects == 1


def test_instance_masks_are_not_taken_for_soft_edges(tmp_path):
    from ppd.data.loaders import soft_edges

    ids = np.zeros((64, 64), np.int64)
    ids[5:30, 5:30], ids[35:60, 10:50] = 1, 2
    ids[4, 4:31] = ids[30, 4:31] = 255  # a thin void border, as VOC draws it
    assert not soft_edges(ids)
    ids[5:30, 5:30] = 255  # a large void region with solid instances beside it
    assert not soft_edges(ids)
    assert not soft_edges(np.where(ids > 0, 255, 0))  # binary: no value in between


def _mask_folder(tmp_path, mask):
    """images/ and masks/ in tmp_path with one image and the PIL image ``mask`` (as a PNG)."""
    (tmp_path / "images").mkdir(parents=True)
    (tmp_path / "masks").mkdir()
    save_image(tmp_path / "images" / "a.png", h=mask.height, w=mask.width)
    mask.save(tmp_path / "masks" / "a.png")
    return tmp_path / "images", tmp_path / "masks"


@pytest.mark.parametrize("top", [65535, 255])
def test_16_bit_binary_mask_with_soft_edges_is_refused(tmp_path, top):
    # read as ids, the disk would be one instance and its edge a band of tiny "instances"
    sharp = Image.fromarray((_disk(32, 10) > 0).astype(np.uint16) * top)
    images, masks = _mask_folder(tmp_path, sharp.resize((64, 64), Image.BILINEAR))
    stored = Image.open(masks / "a.png")
    values = np.unique(np.asarray(stored))
    assert stored.mode == "I;16" and len(values) > 3 and values[-1] == top
    fix = rf"no void value.*only 0 and {top} \(e\.g\. {top} where the value is >= {(top + 1) // 2}\)"
    with pytest.raises(ValueError, match=r"mask .*a\.png looks like a binary mask with soft .* edges.*" + fix):
        load_image_mask_folder(images, masks)[0]
    assert load_image_mask_folder(images, masks, mask_mode="binary")[0].num_objects == 1
    assert load_image_mask_folder(images, masks, mask_mode="instance")[0].num_objects == len(values) - 1


def test_8_bit_soft_edges_keep_the_void_message(tmp_path):
    # the same soft disk, 8-bit: 255 is void, so the message says so (and does not use 16-bit's)
    soft = Image.fromarray(_disk(32, 10)).resize((64, 64), Image.BILINEAR)
    images, masks = _mask_folder(tmp_path, soft)
    assert Image.open(masks / "a.png").mode == "L"
    with pytest.raises(ValueError, match=r"object itself void \(255\); save it with only 0 and 255") as err:
        load_image_mask_folder(images, masks)[0]
    assert "16-bit" not in str(err.value)


def test_16_bit_instance_masks_are_not_taken_for_soft_edges(tmp_path):
    # 300 blobs of 4 x 4 pixels, ids 1..300, the largest id no bigger than the rest
    yy, xx = np.mgrid[:60, :80]
    blobs = (1 + (yy // 4) * 20 + xx // 4).astype(np.uint16)
    blobs[:2, :2] = 0
    images, masks = _mask_folder(tmp_path / "blobs", Image.fromarray(blobs))
    scene = load_image_mask_folder(images, masks)[0]
    assert scene.meta["instance_ids"] == list(range(1, 301)) and scene.masks[-1].sum() == 16
    # a large object with the top id, and smaller instances beside it (one touching it)
    ids = np.where(_disk(64, 20) > 0, 1000, 0).astype(np.uint16)
    ids[2:8, 2:8], ids[2:8, 54:62], ids[56:62, 4:12], ids[30:36, 50:56] = 7, 8, 9, 10
    images, masks = _mask_folder(tmp_path / "big", Image.fromarray(ids))
    scene = load_image_mask_folder(images, masks)[0]
    assert scene.meta["instance_ids"] == [7, 8, 9, 10, 1000]
    assert scene.masks.sum(axis=(1, 2)).tolist() == [36, 48, 48, 36, (ids == 1000).sum()]


def test_hidden_files_are_not_data(tmp_path):
    # macOS writes ._NAME files of extended attributes next to copied files
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    save_image(tmp_path / "images" / "a.png")
    Image.fromarray(_square()).save(tmp_path / "masks" / "a.png")
    (tmp_path / "images" / "._a.png").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    (tmp_path / "masks" / "._a.png").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    data = load_image_mask_folder(tmp_path / "images", tmp_path / "masks")
    assert [p.name for p, _ in data.pairs] == ["a.png"] and data[0].masks.sum() == 48


def test_webp_images_are_read(tmp_path):
    pixels = np.random.default_rng(3).integers(0, 256, (H, W, 3), dtype=np.uint8)

    def write(path):
        Image.fromarray(_square()).save(path)

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(pixels).save(tmp_path / "images" / "a.webp", lossless=True)
    write(tmp_path / "masks" / "a.png")
    scene = load_image_mask_folder(tmp_path / "images", tmp_path / "masks")[0]
    np.testing.assert_array_equal(scene.image, pixels)


def test_coco_rle_of_another_size_names_the_annotation(coco):
    from pycocotools import mask as mask_utils

    path, images, _, _ = coco
    data = json.loads(path.read_text())
    small = mask_utils.encode(np.asfortranarray(np.ones((H // 2, W // 2), np.uint8)))
    data["annotations"][1]["segmentation"] = {"size": small["size"], "counts": small["counts"].decode("ascii")}
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"annotation 11 of image .*one\.png has a mask of size \(6, 8\).*\({H}, {W}\)"):
        load_coco(path, images)[0]
