"""Reading image files as (H, W, 3) uint8 RGB, whatever their bit depth, mode or orientation.

One reader for the ``ppd`` commands and the dataset loaders:

* 8-bit images (RGB, RGBA, grey ``L``, palette ``P``, ``LA``, ``PA``, 1-bit, CMYK, ...)
  are converted by Pillow, exactly as ``Image.convert("RGB")`` does (alpha is dropped,
  palettes are applied, grey is repeated to three channels);
* 16-bit and 32-bit integer images (``I;16`` PNGs, ``I`` TIFFs) and float images (``F``
  TIFFs) are scaled linearly from their value range [min, max] to [0, 255] (an image of
  one value maps as value / 65535 for integers, clipped to [0, 1] for floats), and a log
  line says so (a warning for the first such image of a process, then info). Pillow itself would clip them to 255: a 16-bit image would turn white;
* the EXIF orientation tag is honoured (the pixels are turned as a photo viewer shows
  them), with a log line;
* a file that cannot be read (not an image, truncated, unsupported mode, NaN pixels)
  raises ``ValueError`` naming the file and the reason; a missing one
  ``FileNotFoundError``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

#: Pillow modes read through :func:`_scale_to_uint8` instead of ``convert("RGB")``.
HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
EXIF_ORIENTATION_TAG = 0x0112
_scaling_reported = False  # the first scaled image of a process is logged as a warning


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """The image file ``path`` as an (H, W, 3) uint8 RGB array (see the module docstring).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file cannot be read as an image (the message names it).
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"image not found: {p}")
    if not p.is_file():
        raise ValueError(f"cannot read image {p}: it is not a file")
    try:
        with Image.open(p) as im:
            im = upright(im, p)
            if im.mode in HIGH_DEPTH_MODES:
                return _scale_to_uint8(np.asarray(im), p, im.mode)
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise ValueError(
            f"cannot read image {p}: not an image file Pillow can read (PNG, JPEG, TIFF, BMP, ...)"
        ) from None
    except PermissionError as exc:
        raise ValueError(f"cannot read image {p}: permission denied ({exc.strerror})") from None
    except ValueError as exc:
        if str(exc).startswith(f"cannot read image {p}"):
            raise
        raise ValueError(f"cannot read image {p}: {_first_line(exc)}") from None
    except Image.DecompressionBombError as exc:
        raise ValueError(f"cannot read image {p}: {_first_line(exc)}") from None
    except (OSError, SyntaxError, EOFError, IndexError, KeyError, TypeError) as exc:
        # Pillow reports truncated or damaged files with all of these
        raise ValueError(
            f"cannot read image {p}: the file is truncated or corrupt ({type(exc).__name__}: {_first_line(exc)})"
        ) from None


def upright(im, path: str | os.PathLike | None = None):
    """The open Pillow image ``im``, loaded and turned by its EXIF orientation tag as a
    photo viewer shows it (``ImageOps.exif_transpose``; ``im`` itself when it has no
    tag, or tag 1). With ``path``, the turn is logged (info) naming it."""
    from PIL import ImageOps

    orientation = _orientation(im)
    im.load()
    if orientation in (None, 1):
        return im
    if path is not None:
        logger.info("image %s: turned upright as its EXIF orientation (%d) says", path, orientation)
    return ImageOps.exif_transpose(im)


def exif_orientation(path: str | os.PathLike) -> int | None:
    """The EXIF orientation tag of an image file (1..8), or None (no tag, unreadable)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return _orientation(im)
    except Exception:  # only a hint for error messages: never fail here
        return None


def _orientation(im) -> int | None:
    try:
        value = im.getexif().get(EXIF_ORIENTATION_TAG)
    except Exception:  # a damaged EXIF block: read the pixels as stored
        return None
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else None


def _scale_to_uint8(arr: np.ndarray, path: Path, mode: str) -> np.ndarray:
    """(H, W) 16/32-bit or float grey -> (H, W, 3) uint8, linear from [min, max]."""
    a = arr.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.all():
        raise ValueError(
            f"cannot read image {path}: {int((~finite).sum())} pixels are NaN or infinite"
        )
    lo, hi = float(a.min()), float(a.max())
    if hi > lo:
        scaled = (a - lo) / (hi - lo)
    else:  # one value everywhere: no range to stretch
        ref = 1.0 if np.issubdtype(arr.dtype, np.floating) else 65535.0
        scaled = np.full(a.shape, min(max(lo / ref, 0.0), 1.0))
    out = np.round(scaled * 255.0).astype(np.uint8)
    global _scaling_reported
    level = logging.INFO if _scaling_reported else logging.WARNING  # shown once by default
    _scaling_reported = True
    logger.log(
        level, "image %s: %s (%s) scaled to 8 bit from its value range [%g, %g]", path, mode, arr.dtype, lo, hi
    )
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    return out


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or ["no details"])[0][:200]
