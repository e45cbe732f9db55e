"""The 15 corruptions: shape, dtype, determinism, severity ordering of a measure that fits
each one, hand-computed cases, errors, and the helpers against SciPy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from ppd.robustness import CORRUPTIONS, SEVERITIES, corrupt
from ppd.robustness.corruptions import (
    CONTRAST, DETERMINISTIC, FROST, clipped_zoom, gaussian_reflect, motion_kernel, reference_scale,
)
from ppd.robustness.textures import FROST_STYLES, frost_texture, plasma_fractal


def _test_image() -> np.ndarray:
    """A 256 x 256 procedural scene (shapes, shading, texture): scale 256 / 224."""
    from ppd.data.scenes import make_scene

    return make_scene(11, "train").image.copy()


IMG = _test_image()


def mad(a, b) -> float:
    return float(np.abs(a.astype(np.float64) - b).mean())


def sharpness(a) -> float:
    g = a.astype(np.float64).mean(-1)
    return float(np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean())


def decorrelation(a, b) -> float:
    return 1.0 - float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_shape_dtype_and_determinism(name):
    for img in (IMG, IMG[100:137, 60:83].copy()):  # and a 37 x 23 crop
        for sev in SEVERITIES:
            out = corrupt(img, name, sev, rng=5)
            assert out.shape == img.shape and out.dtype == np.uint8, (name, sev)
            assert np.array_equal(out, corrupt(img, name, sev, rng=np.random.default_rng(5)))
            assert not np.array_equal(out, img), (name, sev, img.shape)
            other = corrupt(img, name, sev, rng=6)
            if name in DETERMINISTIC:
                assert np.array_equal(out, other)
            else:
                assert not np.array_equal(out, other), (name, sev)
    assert np.array_equal(IMG, _test_image())  # the input is never written to


def _ordered(values, strict=True):
    d = np.diff(values)
    return bool(np.all(d > 0) if strict else np.all(d >= 0))


def _measure(name, sev, seed=0, img=IMG):
    return corrupt(img, name, sev, rng=seed)


@pytest.mark.parametrize("seed", [0, 1])
def test_distortion_grows_with_severity(seed):
    """Per corruption a measure its parameters order; where the published parameters do
    not order a measure for all five severities, what they do order (see the comments)."""
    by = {n: [_measure(n, s, seed) for s in SEVERITIES] for n in CORRUPTIONS}
    for name in ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur", "zoom_blur",
                 "pixelate", "jpeg_compression"):
        assert _ordered([mad(o, IMG) for o in by[name]]), name
    # glass blur: the pixel shuffle of severity 3 (3 passes) moves more pixels than that of
    # severity 4 (2 passes, larger shifts), so the difference to the image is not ordered;
    # the loss of sharpness is (the blur's sigma grows).
    assert _ordered([-sharpness(o) for o in by["glass_blur"]])
    assert _ordered([-sharpness(o) for o in by["defocus_blur"]])
    # brightness: the mean grows (strictly here: no pixel reaches V = 1 before severity 5)
    assert _ordered([o.mean() for o in by["brightness"]])
    # contrast: the spread around the channel means shrinks by the published factors
    stds = np.array([o.astype(np.float64).std(axis=(0, 1)) for o in by["contrast"]])
    assert _ordered(-stds.mean(1))
    np.testing.assert_allclose(stds / IMG.astype(np.float64).std(axis=(0, 1)), np.outer(CONTRAST, [1, 1, 1]), atol=0.02)
    # snow: severity 2 (mean 0.2, threshold 0.5: many small flakes) covers about as much
    # as severity 3 (mean 0.55, threshold 0.9, larger flakes); 1 < 2 and 3 < 4 < 5 hold.
    snow = [mad(o, IMG) for o in by["snow"]]
    assert snow[0] < snow[1] and _ordered(snow[2:]) and snow[4] > snow[1]
    # frost: out = c0 * image + c1 * frost; the frost's share c1 / c0 grows, so the
    # correlation with the image falls (on a dark image, where nothing clips)
    dark = IMG // 3
    assert _ordered([decorrelation(_measure("frost", s, seed, dark), dark) for s in SEVERITIES])
    # fog: severities 3 and 4 add the same amount (2.5) and differ in the fractal's
    # roughness only; the amount grows 1 < 2 < 3 and 4 < 5
    fog = [decorrelation(o, IMG) for o in by["fog"]]
    assert fog[0] < fog[1] < fog[2] and fog[3] < fog[4]
    # elastic: ImageNet-C's severities 1-2 are large affine warps with smooth fields,
    # 3-5 a small affine and a fine field of growing amplitude: 3 < 4 < 5, and 1, 2 > 3
    el = [mad(o, IMG) for o in by["elastic_transform"]]
    assert _ordered(el[2:]) and min(el[:2]) > el[2]


@pytest.mark.parametrize("bad", [0, 6, -1, 2.5, True, "3"])
def test_bad_severity(bad):
    with pytest.raises(ValueError, match="severity must be an integer in 1..5"):
        corrupt(IMG, "fog", bad)


def test_bad_name_and_image():
    with pytest.raises(ValueError, match="unknown corruption 'rain'.*gaussian_noise"):
        corrupt(IMG, "rain", 3)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        corrupt(IMG.astype(np.float32), "fog", 3)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        corrupt(IMG[..., 0], "fog", 3)


def test_hand_computed_cases():
    img = IMG
    x = img.astype(np.float64) / 255
    # contrast: (x - mean) * c + mean, truncated to uint8
    want = np.floor(np.clip((x - x.mean((0, 1))) * 0.2 + x.mean((0, 1)), 0, 1) * 255 + 1e-6)
    assert np.array_equal(corrupt(img, "contrast", 3), want.astype(np.uint8))
    # brightness = the HSV round trip with V + 0.3 (OpenCV's float conversion)
    import cv2

    hsv = cv2.cvtColor(x.astype(np.float32), cv2.COLOR_RGB2HSV)
    hsv[..., 2] = np.clip(hsv[..., 2] + 0.3, 0, 1)
    ref = np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0, 1) * 255
    assert np.abs(corrupt(img, "brightness", 3).astype(float) - ref).max() <= 1.0
    # gaussian noise: the noise is the Generator's normal draws times 0.08
    out = corrupt(img, "gaussian_noise", 1, rng=3)
    want = np.floor(np.clip(x + np.random.default_rng(3).normal(0, 0.08, x.shape), 0, 1) * 255 + 1e-6)
    assert np.array_equal(out, want.astype(np.uint8))
    # impulse noise: about 27% of the values become 0 or 255, the rest stay
    out = corrupt(img, "impulse_noise", 5, rng=0)
    hit = out != img
    assert 0.24 < hit.mean() < 0.29 and set(np.unique(out[hit])) <= {0, 255}
    # frost on a dark image (no clipping): c0 * image + c1 * the seed's frost layer
    dark = (img // 4).astype(np.uint8)
    layer = frost_texture(*dark.shape[:2], np.random.default_rng(9), reference_scale(dark.shape))
    for sev in (1, 5):
        c0, c1 = FROST[sev - 1]
        want = np.floor(np.clip(c0 * dark + c1 * layer, 0, 255) + 1e-6)
        assert np.abs(corrupt(dark, "frost", sev, rng=9).astype(float) - want).max() <= 1


def test_pixelate_and_scale():
    img = np.kron(IMG[:112, :144], np.ones((4, 4, 1), np.uint8))  # 448 x 576: scale 2
    out = corrupt(img, "pixelate", 5)  # factor 0.25 / 2: blocks of 8 px
    assert np.array_equal(out[:8, :8], np.broadcast_to(out[0, 0], (8, 8, 3)))
    assert len(np.unique(out[:, :, 0][::8, ::8])) > 10
    # scale=1 keeps the reference's pixel parameters: a smaller blur
    assert mad(corrupt(img, "defocus_blur", 3, scale=1.0), img) < mad(corrupt(img, "defocus_blur", 3), img)
    assert reference_scale((448, 576, 3)) == 2.0 and reference_scale((32, 500, 3)) == 1.0


def test_helpers_against_scipy():
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (50, 70))
    for sigma in (2.0, 17.0, 120.0):  # the last one's radius exceeds the array: repeated reflection
        want = gaussian_filter(a, sigma, mode="reflect", truncate=3.0)
        np.testing.assert_allclose(gaussian_reflect(a, sigma, 3.0), want, atol=1e-12)
    from scipy.ndimage import zoom

    img = rng.uniform(0, 1, (40, 40, 3)).astype(np.float32)
    for f in (1.1, 1.27):
        ch = int(np.ceil(40 / f))
        top = (40 - ch) // 2
        z = zoom(img[top:top + ch, top:top + ch], (f, f, 1), order=1)
        trim = (z.shape[0] - 40) // 2
        np.testing.assert_allclose(clipped_zoom(img, f), z[trim:trim + 40, trim:trim + 40], atol=0.02)
    k = motion_kernel(3, 2.0, 0.0)  # horizontal: weights along +x from the centre
    centre = k.shape[0] // 2
    assert k.sum() == pytest.approx(1.0) and np.count_nonzero(k) == 7 and k[centre, centre:].sum() == pytest.approx(1.0)
    w = np.exp(-np.arange(7) ** 2 / 8.0)
    np.testing.assert_allclose(k[centre, centre:], w / w.sum(), rtol=1e-6)
    p = plasma_fractal(64, 2.0, np.random.default_rng(0))
    assert p.shape == (64, 64) and p.min() == 0.0 and p.max() == 1.0
    with pytest.raises(ValueError, match="power of 2"):
        plasma_fractal(48, 2.0, rng)


def test_frost_texture_has_a_reference_style():
    t = frost_texture(96, 128, np.random.default_rng(1))
    assert t.shape == (96, 128, 3) and 0 <= t.min() and t.max() <= 255
    means = np.array([s[0] for s in FROST_STYLES])
    assert np.abs(means - t.mean((0, 1))).sum(1).min() < 6  # clipping moves it a little
