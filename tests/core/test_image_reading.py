"""Image files of every common kind are read as the pixels a viewer shows, and a file
that is not a readable image is refused with its name (reader, loaders and ``ppd segment``)."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import ppd.data.images as images
from ppd.cli.common import read_image
from ppd.data import load_image_mask_folder
from ppd.data.images import read_rgb

CLI = [sys.executable, "-c", "import sys; from ppd.cli import main; sys.exit(main())"]


def _grey3(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=2)


def _stretched(values: np.ndarray) -> np.ndarray:
    v = values.astype(np.float64)
    return np.round((v - v.min()) / (v.max() - v.min()) * 255).astype(np.uint8)


@pytest.fixture
def twelve_bit_png(tmp_path):
    """A 16-bit grey PNG holding 12-bit data (0..4095), as microscopes and scanners write."""
    values = (np.arange(40 * 50).reshape(40, 50) * 4095 // (40 * 50 - 1)).astype(np.uint16)
    path = tmp_path / "twelve_bit.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    return path, values


def test_16_bit_png_is_scaled_by_its_value_range_not_clipped_white(twelve_bit_png, caplog, monkeypatch):
    path, values = twelve_bit_png
    monkeypatch.setattr(images, "_scaling_reported", False)
    with caplog.at_level(logging.INFO, logger="ppd.data.images"):
        img = read_rgb(path)
    assert img.dtype == np.uint8 and img.shape == (40, 50, 3)
    np.testing.assert_array_equal(img, _grey3(_stretched(values)))
    assert img.min() == 0 and img.max() == 255 and (img == 255).mean() < 0.01
    record = [r for r in caplog.records if "scaled to 8 bit" in r.getMessage()]
    assert len(record) == 1 and record[0].levelno == logging.WARNING
    assert str(path) in record[0].getMessage() and "[0, 4095]" in record[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ppd.data.images"):
        read_rgb(path)
    assert [r.levelno for r in caplog.records if "scaled to 8 bit" in r.getMessage()] == [logging.INFO]


def test_float32_tiff_is_scaled_by_its_value_range(tmp_path):
    values = np.linspace(-3.0, 5.0, 30 * 20, dtype=np.float32).reshape(30, 20)
    path = tmp_path / "float.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "F"
    np.testing.assert_array_equal(read_rgb(path), _grey3(_stretched(values)))


def test_single_valued_images_map_by_their_value(tmp_path):
    Image.fromarray(np.full((8, 9), 0.5, np.float32)).save(tmp_path / "half.tif")
    Image.fromarray(np.full((8, 9), 65535, np.uint16)).save(tmp_path / "white16.png")
    assert (read_rgb(tmp_path / "half.tif") == 128).all()
    assert (read_rgb(tmp_path / "white16.png") == 255).all()


def test_float_tiff_with_nan_is_refused_with_its_name(tmp_path):
    values = np.zeros((6, 6), np.float32)
    values[2, 3] = np.nan
    path = tmp_path / "nan.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(ValueError, match="1 pixels are NaN or infinite") as err:
        read_rgb(path)
    assert str(path) in str(err.value)


def test_grey_and_palette_pngs_become_their_rgb_colours(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (12, 16), dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "grey.png"), _grey3(grey))

    palette = np.array([[10, 20, 30], [200, 100, 0], [0, 255, 128], [77, 77, 77]], np.uint8)
    index = rng.integers(0, 4, (12, 16), dtype=np.uint8)
    pal = Image.fromarray(index, mode="P")
    pal.putpalette(palette.ravel().tolist())
    pal.save(tmp_path / "palette.png")
    assert Image.open(tmp_path / "palette.png").mode == "P"
    np.testing.assert_array_equal(read_rgb(tmp_path / "palette.png"), palette[index])


def test_8_bit_rgb_and_rgba_read_as_before(tmp_path):
    rgba = np.random.default_rng(1).integers(0, 256, (10, 14, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(rgba[..., :3]).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "rgba.png"), rgba[..., :3])
    np.testing.assert_array_equal(read_rgb(tmp_path / "rgb.png"), rgba[..., :3])


def _oriented_jpeg(path, orientation: int) -> None:
    """A 32 x 48 (H x W) dark JPEG with a white 16 x 16 block at its stored top-left."""
    pixels = np.full((32, 48, 3), 20, np.uint8)
    pixels[:16, :16] = 255
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION_TAG] = orientation
    Image.fromarray(pixels).save(path, quality=95, exif=exif)


def test_exif_orientation_is_honoured(tmp_path, caplog):
    path = tmp_path / "rotated.jpg"
    _oriented_jpeg(path, 6)  # 6: the viewer turns the picture 90 degrees clockwise
    with caplog.at_level(logging.INFO, logger="ppd.data.images"):
        img = read_rgb(path)
    assert img.shape == (48, 32, 3)
    assert img[:16, 16:].mean() > 200 and img[:16, :16].mean() < 60  # top-left went to top-right
    assert any("EXIF orientation (6)" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "content, reason",
    [
        pytest.param(b"this is a text file, not a picture\n", "not an image file Pillow can read", id="text"),
        pytest.param(None, "truncated or corrupt", id="truncated"),
        pytest.param(b"", "not an image file Pillow can read", id="empty"),
    ],
)
def test_unreadable_file_is_a_value_error_naming_it(tmp_path, content, reason):
    path = tmp_path / "picture.png"
    if content is None:
        Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        content = path.read_bytes()[:2000]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=reason) as err:
        read_rgb(path)
    assert str(err.value).startswith(f"cannot read image {path}:")
    assert "\n" not in str(err.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="image not found"):
        read_image(str(tmp_path / "nope.png"))
    with pytest.raises(ValueError, match="it is not a file"):
        read_rgb(tmp_path)


# ----------------------------------------------------------------------------- loaders
def _folder(tmp_path, image_writer, mask_hw):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    image_writer(tmp_path / "images")
    mask = np.zeros(mask_hw, np.uint8)
    mask[2:6, 3:9] = 1
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    return load_image_mask_folder(tmp_path / "images", tmp_path / "masks")


def test_folder_loader_reads_16_bit_images_like_the_cli(tmp_path, twelve_bit_png):
    path, values = twelve_bit_png
    data = _folder(tmp_path, lambda d: Image.fromarray(values).save(d / "a.png"), values.shape)
    np.testing.assert_array_equal(data[0].image, read_image(str(path)))


def test_folder_loader_names_an_unreadable_image(tmp_path):
    data = _folder(tmp_path, lambda d: (d / "a.png").write_text("not a picture"), (8, 8))
    with pytest.raises(ValueError, match="cannot read image .*a.png: not an image file"):
        data[0]


def test_folder_loader_explains_a_size_mismatch_from_exif_orientation(tmp_path):
    data = _folder(tmp_path, lambda d: _oriented_jpeg(d / "a.jpg", 6), (32, 48))
    with pytest.raises(ValueError, match=r"has \(48, 32\).*EXIF orientation tag \(6\)"):
        data[0]


# ----------------------------------------------------------------------------- CLI
def test_segment_refuses_a_text_file_named_png_in_one_line(tmp_path):
    bad = tmp_path / "photo.png"
    bad.write_text("hello")
    res = subprocess.run(
        [*CLI, "segment", "--image", str(bad), "--points", "5,5,1", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 2
    assert res.stderr.strip() == (
        f"ppd segment: error: cannot read image {bad}: not an image file Pillow can read (PNG, JPEG, TIFF, BMP, ...)"
    )
    assert not (tmp_path / "out").exists()


def test_segment_on_a_16_bit_image_says_it_scaled_it(tmp_path, twelve_bit_png):
    path, _ = twelve_bit_png
    out = tmp_path / "out"
    res = subprocess.run(
        [*CLI, "segment", "--image", str(path), "--points", "25,20,1", "--out", str(out), "--device", "cpu",
         "--threads", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert f"image {path}: I;16 (uint16) scaled to 8 bit from its value range [0, 4095]" in res.stderr
    overlay = np.asarray(Image.open(out / "overlay.png"))
    assert overlay.shape == (40, 50, 3) and overlay.mean() < 200  # not a white page


def test_mask_carrying_its_images_exif_tag_stays_aligned(tmp_path):
    # a tool that copies the photo's metadata into the mask: both are turned alike
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    _oriented_jpeg(tmp_path / "images" / "a.jpg", 6)
    stored = np.zeros((32, 48), np.uint8)
    stored[:16, :16] = 255  # the white block of the stored pixels
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION_TAG] = 6
    Image.fromarray(stored).save(tmp_path / "masks" / "a.png", exif=exif)
    scene = load_image_mask_folder(tmp_path / "images", tmp_path / "masks")[0]
    assert scene.image.shape == (48, 32, 3) and scene.masks.shape == (1, 48, 32)
    assert scene.masks[0, :16, 16:].all() and scene.masks.sum() == 256
    assert scene.image[scene.masks[0]].mean() > 200 and scene.image[~scene.masks[0]].mean() < 60
