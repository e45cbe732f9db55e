"""Image transforms: supported image arrays to float RGB, content keys, model input.

The preprocessing is that of ``SAM2ImagePredictor`` (resize to the model size, bilinear
with antialias, ImageNet mean/std), written with plain torch ops so that torchvision is
never needed.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_to_float(image: np.ndarray) -> np.ndarray:
    """Convert a supported image array to (H, W, 3) float32 in [0, 1].

    Accepted inputs and their conversion:

    * (H, W, 3) uint8 RGB: divided by 255 (the reference format);
    * (H, W) or (H, W, 1) grey: repeated to three channels (any supported dtype);
    * (H, W, 4) RGBA: the alpha channel is dropped (not composited);
    * float16/32/64 in [0, 1]: used as is (values outside [0, 1] are an error);
    * uint16: divided by 65535.

    Raises:
        ValueError: for anything else (other dtypes, shapes, NaNs, empty images).
    """
    if not isinstance(image, np.ndarray):
        try:  # PIL images and array-likes
            image = np.asarray(image)
        except Exception as exc:  # pragma: no cover - defensive
            raise ValueError(f"image must be a numpy array, got {type(image).__name__}") from exc
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(
            "image must be HxWx3 (RGB), HxWx4 (RGBA), HxW or HxWx1 (grey); "
            f"got shape {image.shape}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty: shape {image.shape}")
    image = image[..., :3]
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    if image.dtype in (np.float16, np.float32, np.float64):
        out = image.astype(np.float32)
        if not np.isfinite(out).all():
            raise ValueError("float image contains NaN or infinite values")
        if out.min() < 0.0 or out.max() > 1.0:
            raise ValueError(
                f"float images must be in [0, 1]; got range [{out.min():.3g}, {out.max():.3g}]"
            )
        return out
    raise ValueError(
        f"unsupported image dtype {image.dtype}; expected uint8, uint16 or float in [0, 1]"
    )


def image_key(image: np.ndarray) -> str:
    """Content hash of an image array (shape, dtype and bytes)."""
    arr = np.ascontiguousarray(image)
    h = hashlib.blake2b(digest_size=16)
    h.update(str((arr.shape, arr.dtype.str)).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def preprocess(image_float: np.ndarray, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(H, W, 3) float in [0, 1] -> (1, 3, size, size) normalised model input.

    Same ops as ``SAM2Transforms``: torchvision's ``Resize((size, size))`` on a tensor is
    ``F.interpolate(bilinear, align_corners=False, antialias=True)``, then ``Normalize``.
    """
    x = torch.from_numpy(np.ascontiguousarray(image_float)).permute(2, 0, 1)[None].to(device)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
