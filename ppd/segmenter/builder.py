"""Building a :class:`~ppd.segmenter.Segmenter`: model, checkpoint, optional RUAC head."""

from __future__ import annotations

import os

import torch

from ppd.models import BUNDLED_NAME, build_sam2_model
from ppd.ruac.decoder import load_head, resolve_head_path
from ppd.segmenter.options import DECODERS, UNCERTAINTY_MODES, resolve_precision
from ppd.segmenter.predictor import Segmenter


def load_segmenter(
    name: str = BUNDLED_NAME,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    cache_size: int = 32,
    decoder: str = "sam2",
    ruac_checkpoint: str | os.PathLike | None = None,
    uncertainty: str = "analytic",
    mc_samples: int = 20,
    precision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Segmenter:
    """Load a SAM2 segmenter, optionally with the RUAC Bayesian decoder.

    Args:
        name: ``"sam2-tiny-synthetic"`` (bundled, CPU-friendly, 256 px) or an official
            config name: ``sam2.1_hiera_t/s/b+/l``, ``sam2_hiera_t/s/b+/l``.
        checkpoint: local checkpoint file in the official format ``{"model": state_dict}``.
            Required for official names; defaults to the shipped file for the bundled one.
        device: ``"cuda"``, ``"cpu"``...; default CUDA when available, else CPU.
        precision: ``"bf16"`` or ``"fp32"``; default ``"bf16"`` autocast on CUDA for official
            models (as SAM2's predictor), ``"fp32"`` on CPU and for the bundled model (see
            :func:`resolve_precision`). ``"fp32"`` on CUDA reproduces CPU results (masks,
            rewards, refinements; tests/test_cuda.py); bf16 moves boundary pixels and, with
            the small bundled model, sometimes a whole region.
        cache_size: number of image embeddings kept (LRU by image content); 0 disables.
        decoder: ``"sam2"`` (SAM2's own mask decoder) or ``"ruac"`` (the Bayesian decoder
            of ``ppd.ruac``: masks from its mean logits plus ``Prediction.uncertainty``).
        ruac_checkpoint: with ``decoder="ruac"``, a run directory of ``ppd train-ruac``
            (holding ``ruac_head.pt``) or the head file itself. The head must have been
            trained on this model's mask decoder.
        uncertainty: ``"analytic"`` (closed form, one pass) or ``"mc"`` (sampled).
        mc_samples: samples per prediction in ``"mc"`` mode.
        cache_dir: a folder to keep image embeddings in across processes (created if
            missing; see :class:`Segmenter`); None: in memory only.

    Raises:
        ValueError: unknown name (the message lists the known ones), a checkpoint that
            does not fit the config (missing / unexpected keys named), an unknown decoder
            or uncertainty mode, ``decoder="ruac"`` without ``ruac_checkpoint``, a head
            that does not fit the model, an unknown precision or bf16 off CUDA, a
            ``cache_dir`` that is a file or cannot be created.
        FileNotFoundError: missing checkpoint file (the message says where the official
            checkpoints are published) or missing RUAC head.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if uncertainty not in UNCERTAINTY_MODES:
        raise ValueError(f"uncertainty must be one of {UNCERTAINTY_MODES}, got {uncertainty!r}")
    resolve_precision(precision, device or ("cuda" if torch.cuda.is_available() else "cpu"), name)  # fail before loading
    head_path = None
    if decoder == "ruac":
        if ruac_checkpoint is None:
            raise ValueError(
                'decoder="ruac" needs ruac_checkpoint: a run directory containing ruac_head.pt '
                "or the file. Train a head on this model with `ppd train-ruac --out DIR` "
                "(see `ppd train-ruac --help`)."
            )
        head_path = resolve_head_path(ruac_checkpoint)
    elif ruac_checkpoint is not None:
        raise ValueError('ruac_checkpoint was given but decoder="sam2"; pass decoder="ruac" to use it')
    model, info = build_sam2_model(name, checkpoint)
    head = None
    if head_path is not None:
        head = load_head(head_path, model.sam_mask_decoder)
        info = {**info, "ruac_checkpoint": str(head_path), "ruac_meta": head.meta}
    return Segmenter(
        model, name, device=device, cache_size=cache_size, info=info,
        ruac_head=head, uncertainty=uncertainty, mc_samples=mc_samples, precision=precision,
        cache_dir=cache_dir,
    )
