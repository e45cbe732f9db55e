"""RUAC's Bayesian mask decoder: head checkpoints (save, find, load) and the decoder's
public names.

The head itself (:class:`BayesianMaskDecoder`, its config and output) is defined in
:mod:`ppd.ruac.head`, its Weibull maths in :mod:`ppd.ruac.weibull`; both are re-exported
here, so ``ppd.ruac.decoder`` holds everything needed to build, save and load a head.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ppd.io import save_torch
from ppd.ruac.head import (  # noqa: F401  (re-exported)
    GELU_MIN,
    MODES,
    BayesianMaskDecoder,
    RuacDecoderOutput,
    RuacHeadConfig,
    _hypernet_dims,
)
from ppd.ruac.weibull import (  # noqa: F401  (re-exported)
    EULER_GAMMA,
    LN2,
    PI_OVER_8,
    _binary_entropy_from_logit,
    binary_entropy,
    kl_weibull_gamma,
    mackay_probit,
    ste_relu,
    weibull_mean,
    weibull_sample,
    weibull_var,
)
from ppd.torch_files import load_torch

logger = logging.getLogger(__name__)

#: file name of a head inside a run directory
HEAD_FILENAME = "ruac_head.pt"
HEAD_FORMAT = "ppd-ruac-head"
HEAD_VERSION = 1


def base_signature(mask_decoder: nn.Module) -> dict[str, Any]:
    """What a head needs from its base decoder: dimensions and a weight fingerprint."""
    hyper = mask_decoder.output_hypernetworks_mlps
    h = hashlib.blake2b(digest_size=12)
    for k, v in sorted(mask_decoder.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return {
        "transformer_dim": int(mask_decoder.transformer_dim),
        "num_mask_tokens": int(mask_decoder.num_mask_tokens),
        "hypernet_dims": _hypernet_dims(hyper[0]),
        "use_high_res_features": bool(mask_decoder.use_high_res_features),
        "pred_obj_scores": bool(mask_decoder.pred_obj_scores),
        "fingerprint": h.hexdigest(),
    }


def save_head(
    path: str | os.PathLike, head: BayesianMaskDecoder, meta: dict | None = None, include_base: bool = False
) -> Path:
    """Write a head checkpoint atomically: its own parameters, config and base signature.

    Args:
        path: a file, or a directory (an existing one, or a path without a suffix) in
            which ``ruac_head.pt`` is written.
        head: the trained head.
        meta: JSON-like extras (training config, metrics...), stored as is.
        include_base: also store the wrapped decoder's weights (needed when the base
            decoder was fine-tuned with the head; :func:`load_head` then uses a copy of
            the given decoder with these weights, leaving the original untouched).

    Returns:
        The path written.
    """
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / HEAD_FILENAME
    ckpt = {
        "format": HEAD_FORMAT,
        "version": HEAD_VERSION,
        "config": asdict(head.config),
        "state": {k: v.cpu() for k, v in head.head_state_dict().items()},
        "base": base_signature(head.base),
        "meta": dict(meta or {}),
    }
    if include_base:
        ckpt["base_state"] = {k: v.detach().cpu().clone() for k, v in head.base.state_dict().items()}
    out = save_torch(ckpt, path)
    logger.info("saved RUAC head to %s", out)
    return out


def resolve_head_path(path: str | os.PathLike) -> Path:
    """A run directory (holding ``ruac_head.pt``) or a head file -> the file path."""
    p = Path(path)
    if p.is_dir():
        p = p / HEAD_FILENAME
        if not p.is_file():
            raise FileNotFoundError(
                f"no RUAC head in run directory {Path(path)}: expected {HEAD_FILENAME} "
                "(train one with `ppd train-ruac --out DIR`)"
            )
    elif not p.is_file():
        raise FileNotFoundError(
            f"RUAC head checkpoint not found: {p} (pass a run directory containing "
            f"{HEAD_FILENAME} or the file; train one with `ppd train-ruac --out DIR`)"
        )
    return p


def load_head(
    path: str | os.PathLike, mask_decoder: nn.Module, strict: bool = True, map_location: str | torch.device = "cpu"
) -> BayesianMaskDecoder:
    """Load a head saved by :func:`save_head` onto a SAM2 mask decoder.

    Args:
        path: the head file or a run directory containing ``ruac_head.pt``.
        mask_decoder: the decoder to wrap (``model.sam_mask_decoder``).
        strict: a decoder whose weights differ from those the head was trained on is an
            error; with ``strict=False`` only a warning (dimensions must match always).

    Raises:
        FileNotFoundError: no such file / no head in the directory.
        ValueError: not a head checkpoint, or a base decoder of other dimensions or
            (with ``strict``) other weights.
    """
    p = resolve_head_path(path)
    ckpt = load_torch(p, "RUAC head", map_location)  # ValueError naming the file and why
    if not isinstance(ckpt, dict) or ckpt.get("format") != HEAD_FORMAT:
        raise ValueError(f"{p} is not a RUAC head checkpoint (written by ppd.ruac.save_head)")
    if int(ckpt.get("version", -1)) > HEAD_VERSION:
        raise ValueError(f"{p} has head format version {ckpt['version']}; this ppd reads <= {HEAD_VERSION}")

    saved = ckpt["base"]
    if "base_state" in ckpt:
        mask_decoder = copy.deepcopy(mask_decoder)
        _load_base_state(mask_decoder, ckpt["base_state"], p)
    sig = base_signature(mask_decoder)
    dims = ("transformer_dim", "num_mask_tokens", "hypernet_dims", "use_high_res_features", "pred_obj_scores")
    diff = [f"{k}: head {saved.get(k)} vs decoder {sig[k]}" for k in dims if saved.get(k) != sig[k]]
    if diff:
        raise ValueError(f"RUAC head {p} does not fit this mask decoder ({'; '.join(diff)})")
    if saved.get("fingerprint") != sig["fingerprint"]:
        trained_on = (ckpt.get("meta") or {}).get("model")
        msg = (
            f"RUAC head {p} was trained on another base decoder (weight fingerprint "
            f"{saved.get('fingerprint')} vs {sig['fingerprint']}); load the SAM2 model it "
            "was trained with" + (f" ({trained_on})" if trained_on else "")
        )
        if strict:
            raise ValueError(msg + ", or pass strict=False to use it anyway")
        logger.warning(msg)

    known = {f.name for f in fields(RuacHeadConfig)}
    config = RuacHeadConfig(**{k: v for k, v in ckpt["config"].items() if k in known})
    head = BayesianMaskDecoder(mask_decoder, config)
    state = ckpt["state"]
    _check_state_fits(head.head_state_dict(), state, f"RUAC head {p} does not match the head architecture")
    head.load_state_dict(state, strict=False)
    head.meta = dict(ckpt.get("meta") or {})
    logger.info("loaded RUAC head from %s", p)
    return head.eval()


def _check_state_fits(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], what: str) -> None:
    """ValueError ``"{what}: missing [..], unexpected [..], wrong shape [..]"`` (first five
    keys of each) unless ``state`` has exactly the keys and shapes of ``own``."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or bad:
        raise ValueError(f"{what}: missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {bad[:5]}")


def _load_base_state(mask_decoder: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    _check_state_fits(mask_decoder.state_dict(), state, f"the base decoder weights stored in {path} do not fit this mask decoder")
    mask_decoder.load_state_dict(state)
