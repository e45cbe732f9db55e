"""The segmenter's options: decoders, uncertainty modes, precisions, and the default
precision of a model on a device."""

from __future__ import annotations

import torch

from ppd.models import BUNDLED_NAME

DECODERS = ("sam2", "ruac")
UNCERTAINTY_MODES = ("analytic", "mc")
PRECISIONS = ("fp32", "bf16")


def resolve_precision(precision: str | None, device: torch.device | str, name: str | None = None) -> str:
    """The segmenter's precision on ``device`` for the model ``name``.

    None gives ``"bf16"`` autocast on CUDA for official SAM2 models (SAM2's own predictor
    runs them so) and ``"fp32"`` otherwise: on CPU, and for the bundled model, which was
    trained and benchmarked in fp32. Measured on an H100 (``docs/gpu.md``):
    with the bundled model bf16 is slower (refine 109 vs 80 ms: autocast casts weights at
    every one of several hundred small layers) and changes 5 of 20 refinements, while fp32
    reproduces CPU results.

    Raises:
        ValueError: an unknown precision, or ``"bf16"`` on a non-CUDA device (CPU bf16
            autocast is slower than fp32 on most CPUs and was never measured here).
    """
    device = torch.device(device)
    if precision is None:
        return "bf16" if device.type == "cuda" and name != BUNDLED_NAME else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} or None, got {precision!r}")
    if precision == "bf16" and device.type != "cuda":
        raise ValueError(f'precision="bf16" needs a CUDA device, got device {str(device)!r}; use "fp32"')
    return precision
