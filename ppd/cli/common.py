"""What every ``ppd`` command shares: reading images and prompts, writing PNGs, the
device, model and thread flags."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def parse_points(text: str) -> tuple[np.ndarray, np.ndarray]:
    """'x,y,l;x,y,l' -> coords (K, 2) float32, labels (K,) int64."""
    coords, labels = [], []
    for i, part in enumerate(p for p in text.split(";") if p.strip()):
        fields = [f.strip() for f in part.split(",")]
        if len(fields) != 3:
            raise ValueError(f"point {i} {part!r}: expected 'x,y,label' (label 1 = foreground, 0 = background)")
        try:
            x, y, lab = float(fields[0]), float(fields[1]), int(fields[2])
        except ValueError:
            raise ValueError(f"point {i} {part!r}: x and y must be numbers and label 0 or 1") from None
        if lab not in (0, 1):
            raise ValueError(f"point {i} {part!r}: label must be 1 (foreground) or 0 (background)")
        coords.append((x, y))
        labels.append(lab)
    if not coords:
        raise ValueError("--points is empty; give at least one 'x,y,label'")
    return np.asarray(coords, np.float32), np.asarray(labels, np.int64)


def read_image(path: str) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB: 16-bit and float images scaled by their value
    range, EXIF orientation applied (see :mod:`ppd.data.images`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file cannot be read as an image (the message names it).
    """
    from ppd.data.images import read_rgb

    return read_rgb(path)


def save_png(array: np.ndarray, path: Path) -> None:
    """Write ``array`` (uint8, (H, W) or (H, W, 3)) as a PNG, atomically."""
    from PIL import Image

    from ppd.io import atomic_write

    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


#: Segmenter precisions (``ppd.segmenter.PRECISIONS``), spelled here so that building a
#: parser does not import torch; a test checks that the two agree.
PRECISIONS = ("fp32", "bf16")


def device_arg(text: str) -> str:
    """A ``--device`` value: a torch device this machine has (a usage error otherwise:
    ``tpu``, or ``cuda`` where torch sees no GPU)."""
    import argparse

    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r}: ppd runs on cpu or cuda (cuda:N), not {device.type}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: torch sees no CUDA GPU on this machine (torch {torch.__version__}); "
                                         "use --device cpu, or install a CUDA build of torch (docs/gpu.md)")
    return text


def add_device_arguments(p: argparse.ArgumentParser, embedding_cache: bool = True) -> None:
    """``--device``, ``--precision`` and (unless ``embedding_cache`` is False: commands
    that time encoding) ``--embedding-cache``, the same in every command that loads a
    segmenter."""
    p.add_argument("--device", type=device_arg, default=None, help="cuda / cpu (default: cuda when available)")
    p.add_argument(
        "--precision", choices=PRECISIONS, default=None,
        help="segmenter precision: bf16 autocast (CUDA only; the default there for official SAM2 models, as "
        "SAM2's predictor) or fp32 (CPU, the bundled model; on CUDA it reproduces CPU results)",
    )
    if not embedding_cache:
        return
    p.add_argument(
        "--embedding-cache", metavar="DIR", default=None,
        help="keep image embeddings in DIR (created if missing) and reuse them in later runs: an image is "
        "encoded once per model, precision and device type, not once per process (default: in memory only)",
    )


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--checkpoint`` and the device flags."""
    p.add_argument("--model", default="sam2-tiny-synthetic", help="segmenter name (default: the bundled sam2-tiny-synthetic)")
    p.add_argument("--checkpoint", default=None, help="checkpoint file for --model (required for official SAM2 names)")
    add_device_arguments(p)


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    """``--threads``: torch CPU threads. On a busy machine torch's default (one per core)
    can make small decoder calls many times slower than one thread."""
    p.add_argument(
        "--threads", type=int, default=0,
        help="torch CPU threads (default 0: torch's default, one per core; on a busy machine 1 or 2 can be much faster). "
        "A seed reruns bit-identically only with the same thread count on the same machine type",
    )


def apply_threads(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Set torch's CPU threads from ``args.threads`` (0 keeps torch's default); a negative
    value is a usage error."""
    threads = getattr(args, "threads", 0) or 0
    if threads < 0:
        p.error(f"--threads must be >= 0, got {threads}")
    if threads:
        import torch

        torch.set_num_threads(threads)
